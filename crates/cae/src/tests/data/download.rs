//! The verified download and safe extraction of the CIFAR-10 archive, against a tiny local HTTP
//! server that serves archives built here with the layout of the official one.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use crate::data::cifar::{self, ArchiveSpec, TEST_FILE, TRAIN_FILES};
use crate::data::download::{self, DownloadOptions, Expected};
use flate2::Compression;
use flate2::write::GzEncoder;
use md5::Md5;
use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

use crate::tests::fixtures::names;

const RECORD: usize = 3073;

/// `records` records whose labels are `first_label`, `first_label + 1`, ... (mod 10).
fn batch(first_label: usize, records: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; records * RECORD];
    for (i, record) in bytes.chunks_exact_mut(RECORD).enumerate() {
        record[0] = ((first_label + i) % 10) as u8;
        record[1..].fill((i * 40 + first_label) as u8);
    }
    bytes
}

/// Appends a member with a raw name, so even names `tar::Builder` would refuse can be written.
fn member(
    tar: &mut tar::Builder<impl Write>,
    name: &str,
    kind: EntryType,
    link: &str,
    data: &[u8],
) {
    let mut header = Header::new_gnu();
    let gnu = header.as_gnu_mut().unwrap();
    gnu.name[..name.len()].copy_from_slice(name.as_bytes());
    gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
    header.set_entry_type(kind);
    header.set_mode(if kind == EntryType::Directory {
        0o755
    } else {
        0o644
    });
    header.set_size(data.len() as u64);
    header.set_cksum();
    tar.append(&header, data).unwrap();
}

/// A gzipped tar like the official archive (2 records per batch), plus `extra` members.
fn archive(extra: impl FnOnce(&mut tar::Builder<GzEncoder<Vec<u8>>>)) -> Vec<u8> {
    let mut tar = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
    member(
        &mut tar,
        "cifar-10-batches-bin/",
        EntryType::Directory,
        "",
        b"",
    );
    for (i, name) in TRAIN_FILES.iter().enumerate() {
        let path = format!("cifar-10-batches-bin/{name}");
        member(&mut tar, &path, EntryType::Regular, "", &batch(i, 2));
    }
    let test = format!("cifar-10-batches-bin/{TEST_FILE}");
    member(&mut tar, &test, EntryType::Regular, "", &batch(7, 3));
    let meta = "airplane\nautomobile\n";
    member(
        &mut tar,
        "cifar-10-batches-bin/batches.meta.txt",
        EntryType::Regular,
        "",
        meta.as_bytes(),
    );
    extra(&mut tar);
    tar.into_inner().unwrap().finish().unwrap()
}

fn good_archive() -> Vec<u8> {
    archive(|_| {})
}

/// The archive spec that `body`, served at `url`, meets.
pub(in crate::tests) fn spec_for(url: &str, body: &[u8]) -> ArchiveSpec {
    ArchiveSpec {
        url: url.to_string(),
        bytes: body.len() as u64,
        md5: download::hex(&Md5::digest(body)),
        sha256: download::hex(&Sha256::digest(body)),
    }
}

/// How the test server answers every request.
#[derive(Clone)]
enum Reply {
    Body(Vec<u8>),
    /// Sends the body without a Content-Length, ending it by closing the connection.
    Unsized(Vec<u8>),
    /// Announces more bytes than it sends, then closes the connection.
    Truncated {
        body: Vec<u8>,
        announced: usize,
    },
    /// Sends the headers and a few bytes, then goes silent.
    Stall,
    Status(u16),
}

/// Serves `reply` on 127.0.0.1 from a background thread; returns the archive's URL.
fn serve(reply: Reply) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://{}/cifar-10-binary.tar.gz",
        listener.local_addr().unwrap()
    );
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let reply = reply.clone();
            thread::spawn(move || answer(stream, &reply));
        }
    });
    url
}

fn answer(mut stream: TcpStream, reply: &Reply) {
    read_request(&mut stream);
    let headers = |status: &str, length: usize| {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/octet-stream\r\n\
             Content-Length: {length}\r\nConnection: close\r\n\r\n"
        )
    };
    let _ = match reply {
        Reply::Body(body) => stream
            .write_all(headers("200 OK", body.len()).as_bytes())
            .and_then(|()| stream.write_all(body)),
        Reply::Unsized(body) => stream
            .write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
            .and_then(|()| stream.write_all(body)),
        Reply::Truncated { body, announced } => stream
            .write_all(headers("200 OK", *announced).as_bytes())
            .and_then(|()| stream.write_all(body)),
        Reply::Stall => {
            let sent = stream
                .write_all(headers("200 OK", 100_000).as_bytes())
                .and_then(|()| stream.write_all(&[0u8; 10]))
                .and_then(|()| stream.flush());
            thread::sleep(Duration::from_secs(30));
            sent
        }
        Reply::Status(code) => stream.write_all(headers(&format!("{code} Nope"), 0).as_bytes()),
    };
}

fn read_request(stream: &mut TcpStream) {
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
}

fn assert_nothing_left(data_dir: &Path) {
    assert_eq!(
        names(data_dir),
        Vec::<String>::new(),
        "{}",
        data_dir.display()
    );
}

fn ensure_error(data_dir: &Path, spec: &ArchiveSpec) -> String {
    format!(
        "{:#}",
        cifar::ensure_with(data_dir, spec).expect_err("ensure_with should fail")
    )
}

#[test]
fn ensure_downloads_verifies_and_unpacks_the_archive() {
    let body = good_archive();
    let url = serve(Reply::Body(body.clone()));
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");

    let dir = cifar::ensure_with(&data_dir, &spec_for(&url, &body)).unwrap();

    assert_eq!(dir, data_dir.join("cifar-10-batches-bin"));
    assert_eq!(names(&data_dir), ["cifar-10-batches-bin"]);
    let splits = cifar::load(&dir).unwrap();
    assert_eq!(splits.train.len(), 10);
    assert_eq!(splits.test.len(), 3);
    assert_eq!(splits.test.labels, [7, 8, 9]);
    assert_eq!(splits.train.labels[..4], [0, 1, 1, 2]);
    assert!(dir.join("batches.meta.txt").is_file());
}

#[test]
fn ensure_uses_an_existing_folder_without_the_network() {
    let body = good_archive();
    let tmp = tempfile::tempdir().unwrap();
    let url = serve(Reply::Body(body.clone()));
    let dir = cifar::ensure_with(tmp.path(), &spec_for(&url, &body)).unwrap();
    let unreachable = spec_for("http://127.0.0.1:1/cifar-10-binary.tar.gz", &body);
    assert_eq!(cifar::ensure_with(tmp.path(), &unreachable).unwrap(), dir);
}

#[test]
fn ensure_unpacks_and_keeps_an_archive_already_in_the_data_folder() {
    let body = good_archive();
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("cifar-10-binary.tar.gz"), &body).unwrap();
    let offline = spec_for("http://127.0.0.1:1/cifar-10-binary.tar.gz", &body);

    let dir = cifar::ensure_with(tmp.path(), &offline).unwrap();

    assert_eq!(cifar::load(&dir).unwrap().test.len(), 3);
    assert_eq!(
        names(tmp.path()),
        ["cifar-10-batches-bin", "cifar-10-binary.tar.gz"]
    );
}

#[test]
fn ensure_refuses_a_local_archive_with_the_wrong_checksum() {
    let body = good_archive();
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("cifar-10-binary.tar.gz"), &body).unwrap();
    let mut spec = spec_for("http://127.0.0.1:1/cifar-10-binary.tar.gz", &body);
    spec.md5 = "0".repeat(32);

    let error = ensure_error(tmp.path(), &spec);

    assert!(
        error.contains("cifar-10-binary.tar.gz is not the expected CIFAR-10 archive"),
        "{error}"
    );
    assert!(error.contains("MD5 mismatch"), "{error}");
    assert_eq!(names(tmp.path()), ["cifar-10-binary.tar.gz"]);
}

#[test]
fn ensure_refuses_an_incomplete_existing_folder() {
    let tmp = tempfile::tempdir().unwrap();
    fs::create_dir(tmp.path().join("cifar-10-batches-bin")).unwrap();
    fs::write(
        tmp.path().join("cifar-10-batches-bin/data_batch_1.bin"),
        batch(0, 1),
    )
    .unwrap();
    let spec = spec_for("http://127.0.0.1:1/cifar-10-binary.tar.gz", b"");
    let error = ensure_error(tmp.path(), &spec);
    assert!(
        error.contains("exists but lacks data_batch_2.bin"),
        "{error}"
    );
}

#[test]
fn checksum_mismatch_is_refused_and_leaves_nothing() {
    let body = good_archive();
    let url = serve(Reply::Body(body.clone()));
    let tmp = tempfile::tempdir().unwrap();
    let mut spec = spec_for(&url, &body);
    let right = spec.sha256.clone();
    spec.sha256 = "0".repeat(64);

    let error = ensure_error(tmp.path(), &spec);

    assert!(error.contains("SHA-256 mismatch"), "{error}");
    assert!(
        error.contains(&right) && error.contains(&spec.sha256),
        "{error}"
    );
    assert_nothing_left(tmp.path());
}

#[test]
fn md5_mismatch_is_refused_and_leaves_nothing() {
    let body = good_archive();
    let url = serve(Reply::Body(body.clone()));
    let tmp = tempfile::tempdir().unwrap();
    let mut spec = spec_for(&url, &body);
    spec.md5 = "f".repeat(32);
    let error = ensure_error(tmp.path(), &spec);
    assert!(error.contains("MD5 mismatch"), "{error}");
    assert_nothing_left(tmp.path());
}

#[test]
fn wrong_size_is_refused_and_leaves_nothing() {
    let body = good_archive();
    let url = serve(Reply::Body(body.clone()));
    let tmp = tempfile::tempdir().unwrap();
    let mut spec = spec_for(&url, &body);
    spec.bytes += 1;
    let error = ensure_error(tmp.path(), &spec);
    assert!(
        error.contains(&format!("announces {} bytes", body.len())),
        "{error}"
    );
    assert_nothing_left(tmp.path());
}

#[test]
fn truncated_transfer_is_refused_and_leaves_nothing() {
    let body = good_archive();
    let announced = body.len() + 5000;
    let url = serve(Reply::Truncated {
        body: body.clone(),
        announced,
    });
    let tmp = tempfile::tempdir().unwrap();
    let mut spec = spec_for(&url, &body);
    spec.bytes = announced as u64;

    let error = ensure_error(tmp.path(), &spec);

    assert!(error.contains(&format!("of {announced}")), "{error}");
    assert_nothing_left(tmp.path());
}

#[test]
fn body_longer_than_expected_is_cut_off() {
    let url = serve(Reply::Unsized(vec![7u8; 100_000]));
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("file.bin");
    let expected = Expected {
        bytes: Some(5),
        ..Expected::default()
    };
    let error = download::download_with(&url, &dest, &expected, &DownloadOptions::default())
        .expect_err("an oversized download should fail");
    let error = format!("{error:#}");
    assert!(error.contains("more than the 5 expected bytes"), "{error}");
    assert_nothing_left(tmp.path());
}

#[test]
fn unknown_host_says_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = spec_for("http://no-such-host.invalid/cifar-10-binary.tar.gz", b"x");
    let error = ensure_error(tmp.path(), &spec);
    assert!(
        error.contains("could not reach no-such-host.invalid"),
        "{error}"
    );
    assert!(error.contains("--data-dir"), "{error}");
    assert_nothing_left(tmp.path());
}

#[test]
fn http_error_status_is_reported() {
    let url = serve(Reply::Status(404));
    let tmp = tempfile::tempdir().unwrap();
    let error = ensure_error(tmp.path(), &spec_for(&url, b"x"));
    assert!(error.contains("HTTP 404"), "{error}");
    assert_nothing_left(tmp.path());
}

#[test]
fn stalled_server_fails_after_the_read_timeout() {
    let url = serve(Reply::Stall);
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("archive.tar.gz");
    let options = DownloadOptions {
        read_timeout: Duration::from_secs(2),
        ..DownloadOptions::default()
    };
    let start = Instant::now();

    let error = download::download_with(&url, &dest, &Expected::default(), &options)
        .expect_err("a stalled download should fail");

    assert!(
        start.elapsed() < Duration::from_secs(15),
        "{:?}",
        start.elapsed()
    );
    let error = format!("{error:#}");
    assert!(error.contains("stalled"), "{error}");
    assert_nothing_left(tmp.path());
}

#[test]
fn download_writes_dest_when_everything_matches() {
    let body = b"hello, archive".to_vec();
    let url = serve(Reply::Body(body.clone()));
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("file.bin");
    let spec = spec_for(&url, &body);
    download::download(
        &url,
        &dest,
        Some(spec.bytes),
        Some(&spec.md5),
        Some(&spec.sha256),
    )
    .unwrap();
    assert_eq!(fs::read(&dest).unwrap(), body);
    assert_eq!(names(tmp.path()), ["file.bin"]);
}

#[test]
fn unreachable_host_says_offline_and_how_to_get_the_data() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{port}/cifar-10-binary.tar.gz");
    let error = ensure_error(tmp.path(), &spec_for(&url, b"x"));
    assert!(error.contains("offline"), "{error}");
    assert!(error.contains("cifar-10-binary.tar.gz"), "{error}");
    assert!(error.contains("--data-dir"), "{error}");
    assert_nothing_left(tmp.path());
}

/// Serves `body`, runs `ensure_with` into `base/data` and checks the refusal names `member` and
/// that nothing was extracted anywhere.
fn assert_archive_refused(body: Vec<u8>, member: &str) {
    let url = serve(Reply::Body(body.clone()));
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let error = ensure_error(&data_dir, &spec_for(&url, &body));
    assert!(
        error.contains(&format!("archive member {member}: refused")),
        "{error}"
    );
    assert_nothing_left(&data_dir);
    assert_eq!(names(tmp.path()), ["data"]);
}

#[test]
fn member_escaping_with_dot_dot_is_refused() {
    let body = archive(|tar| member(tar, "../evil", EntryType::Regular, "", b"pwned"));
    assert_archive_refused(body, "../evil");
}

#[test]
fn member_with_nested_dot_dot_is_refused() {
    let name = "cifar-10-batches-bin/../../evil";
    let body = archive(|tar| member(tar, name, EntryType::Regular, "", b"pwned"));
    assert_archive_refused(body, name);
}

#[test]
fn member_with_absolute_path_is_refused() {
    let body = archive(|tar| member(tar, "/tmp/cae-evil", EntryType::Regular, "", b"pwned"));
    assert_archive_refused(body, "/tmp/cae-evil");
}

#[test]
fn symlink_member_is_refused() {
    let name = "cifar-10-batches-bin/readme.html";
    let body = archive(|tar| member(tar, name, EntryType::Symlink, "/etc/passwd", b""));
    assert_archive_refused(body, name);
}

#[test]
fn hard_link_member_is_refused() {
    let name = "cifar-10-batches-bin/readme.html";
    let body = archive(|tar| member(tar, name, EntryType::Link, "/etc/passwd", b""));
    assert_archive_refused(body, name);
}

#[test]
fn device_member_is_refused() {
    let name = "cifar-10-batches-bin/readme.html";
    let body = archive(|tar| member(tar, name, EntryType::Char, "", b""));
    assert_archive_refused(body, name);
}

#[test]
fn unexpected_member_is_refused() {
    let name = "cifar-10-batches-bin/extra.bin";
    let body = archive(|tar| member(tar, name, EntryType::Regular, "", b"?"));
    assert_archive_refused(body, name);
}

#[test]
fn archive_without_the_test_batch_is_refused() {
    let mut tar = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
    for name in TRAIN_FILES {
        let path = format!("cifar-10-batches-bin/{name}");
        member(&mut tar, &path, EntryType::Regular, "", &batch(0, 1));
    }
    let body = tar.into_inner().unwrap().finish().unwrap();
    let url = serve(Reply::Body(body.clone()));
    let tmp = tempfile::tempdir().unwrap();
    let error = ensure_error(tmp.path(), &spec_for(&url, &body));
    assert!(
        error.contains("the archive lacks cifar-10-batches-bin/test_batch.bin"),
        "{error}"
    );
    assert_nothing_left(tmp.path());
}

#[test]
fn archive_that_is_not_gzip_is_refused() {
    let body = b"this is not a gzipped tar".to_vec();
    let url = serve(Reply::Body(body.clone()));
    let tmp = tempfile::tempdir().unwrap();
    let error = ensure_error(tmp.path(), &spec_for(&url, &body));
    assert!(error.contains("cannot read the archive"), "{error}");
    assert_nothing_left(tmp.path());
}

/// What the progress receiver of this test binary saw, per thread (tests download in parallel).
static SEEN: std::sync::Mutex<Vec<(thread::ThreadId, String)>> = std::sync::Mutex::new(Vec::new());

struct Recorder;

impl download::DownloadProgress for Recorder {
    fn started(&self, total: Option<u64>) {
        let event = format!("started {total:?}");
        SEEN.lock().unwrap().push((thread::current().id(), event));
    }
    fn advanced(&self, bytes: u64) {
        SEEN.lock()
            .unwrap()
            .push((thread::current().id(), format!("+{bytes}")));
    }
    fn finished(&self) {
        SEEN.lock()
            .unwrap()
            .push((thread::current().id(), "finished".into()));
    }
}

#[test]
fn a_download_reports_its_progress_to_the_installed_receiver() {
    download::set_progress(Box::new(Recorder));
    let body = good_archive();
    let url = serve(Reply::Body(body.clone()));
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("archive.tar.gz");
    download::download(&url, &dest, Some(body.len() as u64), None, None).unwrap();

    let me = thread::current().id();
    let seen: Vec<String> = SEEN
        .lock()
        .unwrap()
        .iter()
        .filter(|(thread, _)| *thread == me)
        .map(|(_, event)| event.clone())
        .collect();
    assert_eq!(
        seen.first().unwrap(),
        &format!("started Some({})", body.len())
    );
    assert_eq!(seen.last().unwrap(), "finished");
    let received: u64 = seen[1..seen.len() - 1]
        .iter()
        .map(|e| e.strip_prefix('+').unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(received, body.len() as u64);
}
