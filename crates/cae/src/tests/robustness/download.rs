//! What the download tests of `tests::data` leave out: archives that pass their checksums but break or
//! misbehave while being unpacked leave no partial dataset behind.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::thread;

use crate::data::cifar::{self, ARCHIVE_NAME, BATCHES_DIR, TEST_FILE, TRAIN_FILES};
use crate::tests::data::download::spec_for;
use flate2::Compression;
use flate2::write::GzEncoder;
use tar::{EntryType, Header};

use crate::tests::fixtures::names;

const RECORD: usize = 3073;

fn member(tar: &mut tar::Builder<impl Write>, name: &str, kind: EntryType, data: &[u8]) {
    let mut header = Header::new_gnu();
    header.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
    header.set_entry_type(kind);
    header.set_mode(0o644);
    header.set_size(data.len() as u64);
    header.set_cksum();
    tar.append(&header, data).unwrap();
}

/// A gzipped tar of the six batches (two records each) followed by `extra` members.
fn archive(extra: &[(&str, EntryType)]) -> Vec<u8> {
    let mut tar = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
    for name in TRAIN_FILES.iter().chain([&TEST_FILE]) {
        let mut batch = vec![3u8; 2 * RECORD];
        batch[RECORD] = 4;
        member(
            &mut tar,
            &format!("{BATCHES_DIR}/{name}"),
            EntryType::Regular,
            &batch,
        );
    }
    for (name, kind) in extra {
        member(&mut tar, name, *kind, b"x");
    }
    tar.into_inner().unwrap().finish().unwrap()
}

/// Serves `body` once on 127.0.0.1; returns its URL.
fn serve_once(body: Vec<u8>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/{ARCHIVE_NAME}", listener.local_addr().unwrap());
    thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut request = [0u8; 4096];
        let _ = stream.read(&mut request);
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let _ = stream
            .write_all(head.as_bytes())
            .and_then(|()| stream.write_all(&body));
    });
    url
}

#[test]
fn a_downloaded_archive_that_breaks_off_while_unpacking_leaves_nothing() {
    let mut body = archive(&[]);
    body.truncate(body.len() * 3 / 5);
    // The checksums are those of the broken body, so only unpacking can notice.
    let spec = spec_for(&serve_once(body.clone()), &body);
    let tmp = tempfile::tempdir().unwrap();
    let error = format!("{:#}", cifar::ensure_with(tmp.path(), &spec).unwrap_err());
    assert!(
        error.contains("cannot unpack the CIFAR-10 archive"),
        "{error}"
    );
    assert_eq!(names(tmp.path()), Vec::<String>::new());
}

/// Puts `body` into a data folder as the archive it already holds, runs `ensure_with` and checks
/// the refusal has `needle` and that nothing but the archive is left.
fn assert_local_archive_refused(body: Vec<u8>, needle: &str) {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join(ARCHIVE_NAME), &body).unwrap();
    let spec = spec_for("http://127.0.0.1:9/unused", &body);
    let error = format!("{:#}", cifar::ensure_with(tmp.path(), &spec).unwrap_err());
    assert!(error.contains(needle), "{error}");
    assert_eq!(names(tmp.path()), [ARCHIVE_NAME]);
}

#[test]
fn a_member_that_appears_twice_is_refused() {
    let name = format!("{BATCHES_DIR}/{TEST_FILE}");
    let body = archive(&[(&name, EntryType::Regular)]);
    assert_local_archive_refused(body, &format!("archive member {name}: appears twice"));
}

#[test]
fn a_fifo_member_is_refused() {
    let name = format!("{BATCHES_DIR}/readme.html");
    let body = archive(&[(&name, EntryType::Fifo)]);
    assert_local_archive_refused(body, &format!("archive member {name}: refused"));
}

#[test]
fn a_member_in_a_subfolder_or_outside_the_batches_folder_is_refused() {
    for name in [
        format!("{BATCHES_DIR}/sub/{TEST_FILE}"),
        "readme.html".to_string(),
        format!("{BATCHES_DIR}/./../{BATCHES_DIR}x/readme.html"),
    ] {
        let body = archive(&[(&name, EntryType::Regular)]);
        assert_local_archive_refused(body, &format!("archive member {name}: refused"));
    }
}

#[test]
fn leftovers_of_a_killed_download_are_removed_and_those_of_a_running_one_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let body = archive(&[]);
    fs::write(tmp.path().join(ARCHIVE_NAME), &body).unwrap();
    // No process has PID 4000000000 (Linux's limit is 2^22); PID 1 always runs.
    let gone_download = format!(".{ARCHIVE_NAME}.part-4000000000");
    let gone_unpacking = format!(".{BATCHES_DIR}.partial-4000000000");
    let running_download = format!(".{ARCHIVE_NAME}.part-1");
    fs::write(tmp.path().join(&gone_download), b"half an archive").unwrap();
    fs::create_dir(tmp.path().join(&gone_unpacking)).unwrap();
    fs::write(tmp.path().join(&gone_unpacking).join(TEST_FILE), b"x").unwrap();
    fs::write(tmp.path().join(&running_download), b"still coming").unwrap();

    let spec = spec_for("http://127.0.0.1:9/unused", &body);
    cifar::ensure_with(tmp.path(), &spec).unwrap();
    assert_eq!(
        names(tmp.path()),
        [running_download.as_str(), BATCHES_DIR, ARCHIVE_NAME]
    );
}
