//! CIFAR-10 in its binary version: the reader of the batch files, and the verified download and
//! safe extraction of the official archive.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};
use flate2::read::GzDecoder;

use super::download::{self, Expected, Unreachable};
use super::{ImageSet, Splits};
use crate::io::atomic;

/// The class names, in label order.
pub(crate) const CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// The official archive of the binary version.
pub(crate) const URL: &str = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz";
/// The archive's file name, downloaded into (or picked up from) the data folder.
pub(crate) const ARCHIVE_NAME: &str = "cifar-10-binary.tar.gz";
pub(crate) const ARCHIVE_BYTES: u64 = 170_052_171;
pub(crate) const ARCHIVE_MD5: &str = "c32a1d4ab5d03f1284b67883e8d87530";
pub(crate) const ARCHIVE_SHA256: &str =
    "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd";

/// The folder the archive unpacks to.
pub(crate) const BATCHES_DIR: &str = "cifar-10-batches-bin";
pub(crate) const TRAIN_FILES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];
pub(crate) const TEST_FILE: &str = "test_batch.bin";
/// Files of the archive that are extracted besides the batches.
const EXTRA_FILES: [&str; 2] = ["batches.meta.txt", "readme.html"];

const SIDE: usize = 32;
const IMAGE_BYTES: usize = 3 * SIDE * SIDE;
/// One label byte, then the red, green and blue 32x32 planes.
const RECORD_BYTES: usize = 1 + IMAGE_BYTES;

fn batch_files() -> impl Iterator<Item = &'static str> {
    TRAIN_FILES.into_iter().chain([TEST_FILE])
}

fn missing_batches(dir: &Path) -> Vec<&'static str> {
    batch_files()
        .filter(|name| !dir.join(name).is_file())
        .collect()
}

/// The folder holding the six batch files: `data_dir/cifar-10-batches-bin`, or `data_dir` itself.
pub(crate) fn find_batches_dir(data_dir: &Path) -> Option<PathBuf> {
    [data_dir.join(BATCHES_DIR), data_dir.to_path_buf()]
        .into_iter()
        .find(|dir| missing_batches(dir).is_empty())
}

/// Reads the five training batches (in order) and the test batch from `batches_dir`.
pub(crate) fn load(batches_dir: &Path) -> Result<Splits> {
    let missing = missing_batches(batches_dir);
    if !missing.is_empty() {
        bail!(
            "{} is not a CIFAR-10 binary folder: it lacks {}",
            batches_dir.display(),
            missing.join(", ")
        );
    }
    Ok(Splits {
        train: load_files(batches_dir, &TRAIN_FILES)?,
        test: load_files(batches_dir, &[TEST_FILE])?,
    })
}

fn load_files(dir: &Path, names: &[&str]) -> Result<ImageSet> {
    let mut set = ImageSet {
        channels: 3,
        height: SIDE,
        width: SIDE,
        class_names: CLASSES.iter().map(|c| c.to_string()).collect(),
        ..ImageSet::default()
    };
    set.pixels.reserve(total_records(dir, names) * IMAGE_BYTES);
    for name in names {
        append_file(&mut set, &dir.join(name), name)?;
    }
    Ok(set)
}

/// A best guess of the record count, only to allocate once.
fn total_records(dir: &Path, names: &[&str]) -> usize {
    let bytes: u64 = names
        .iter()
        .filter_map(|name| fs::metadata(dir.join(name)).ok())
        .map(|m| m.len())
        .sum();
    usize::try_from(bytes).unwrap_or(0) / RECORD_BYTES
}

fn append_file(set: &mut ImageSet, path: &Path, name: &str) -> Result<()> {
    let bytes = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    check_file_size(path, bytes.len())?;
    for (index, record) in bytes.chunks_exact(RECORD_BYTES).enumerate() {
        let label = record[0];
        if usize::from(label) >= CLASSES.len() {
            bail!(
                "{} record {index}: label {label} is not a CIFAR-10 class (0..=9)",
                path.display()
            );
        }
        set.labels.push(u16::from(label));
        set.pixels.extend_from_slice(&record[1..]);
        set.sources.push(format!("{name}#{index}"));
    }
    Ok(())
}

fn check_file_size(path: &Path, len: usize) -> Result<()> {
    if len == 0 {
        bail!(
            "{} is empty; a CIFAR-10 batch holds 10000 records",
            path.display()
        );
    }
    if !len.is_multiple_of(RECORD_BYTES) {
        bail!(
            "{}: {len} bytes is not a multiple of the {RECORD_BYTES}-byte record size \
             ({} whole records and {} bytes more: the file is truncated, has trailing bytes, \
             or is not a CIFAR-10 batch)",
            path.display(),
            len / RECORD_BYTES,
            len % RECORD_BYTES
        );
    }
    Ok(())
}

/// Where and what to download: the official archive, or a stand-in for tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ArchiveSpec {
    pub url: String,
    pub bytes: u64,
    pub md5: String,
    pub sha256: String,
}

impl ArchiveSpec {
    pub(crate) fn official() -> Self {
        Self {
            url: URL.to_string(),
            bytes: ARCHIVE_BYTES,
            md5: ARCHIVE_MD5.to_string(),
            sha256: ARCHIVE_SHA256.to_string(),
        }
    }

    fn expected(&self) -> Expected<'_> {
        Expected {
            bytes: Some(self.bytes),
            md5: Some(&self.md5),
            sha256: Some(&self.sha256),
        }
    }
}

/// The batches folder under `data_dir`, downloading the official archive if it is not there.
pub(crate) fn ensure(data_dir: &Path) -> Result<PathBuf> {
    ensure_with(data_dir, &ArchiveSpec::official())
}

/// Like [`ensure`], with the download described by `spec`.
///
/// A `cifar-10-binary.tar.gz` already in `data_dir` is used (and kept) instead of downloading.
/// The archive is checked (size, MD5, SHA-256) before anything is extracted; the batches are
/// unpacked into a temporary folder that is renamed to `data_dir/cifar-10-batches-bin` only when
/// complete. On failure neither a downloaded archive nor a partial folder is left behind, and
/// what a killed cae left (a `.tmp-PID` download, a `.partial-PID` folder) is removed.
pub(crate) fn ensure_with(data_dir: &Path, spec: &ArchiveSpec) -> Result<PathBuf> {
    remove_leftovers(data_dir);
    if let Some(dir) = find_batches_dir(data_dir) {
        return Ok(dir);
    }
    let target = data_dir.join(BATCHES_DIR);
    if target.exists() {
        bail!(
            "{} exists but lacks {}; complete it or remove it so cae can download CIFAR-10 again",
            target.display(),
            missing_batches(&target).join(", ")
        );
    }
    let archive = data_dir.join(ARCHIVE_NAME);
    if archive.is_file() {
        unpack_local(&archive, spec, &target)?;
    } else {
        fs::create_dir_all(data_dir)
            .with_context(|| format!("cannot create the data folder {}", data_dir.display()))?;
        let result = download_and_unpack(spec, &archive, &target);
        let _ = fs::remove_file(&archive);
        result.map_err(|e| with_offline_advice(e, data_dir))?;
    }
    Ok(target)
}

/// Removes the partial downloads and unpackings in `data_dir` whose process is gone (killed
/// midway); those of a running cae are left alone.
fn remove_leftovers(data_dir: &Path) {
    let Ok(entries) = fs::read_dir(data_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if leftover_pid(&name).is_some_and(process_is_gone) {
            let path = entry.path();
            let _ = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
        }
    }
}

/// The PID in the name of a partial download (`.cifar-10-binary.tar.gz.tmp-PID`, or
/// `.part-PID` as cae wrote it before its downloads went through [`atomic::write_with`]) or
/// unpacking (`.cifar-10-batches-bin.partial-PID`).
fn leftover_pid(name: &str) -> Option<u32> {
    let rest = name
        .strip_prefix(&format!(".{ARCHIVE_NAME}{}", atomic::TEMP_MARK))
        .or_else(|| name.strip_prefix(&format!(".{ARCHIVE_NAME}.part-")))
        .or_else(|| name.strip_prefix(&format!(".{BATCHES_DIR}{}", atomic::STAGING_MARK)))?;
    rest.parse().ok()
}

/// Whether no process `pid` runs. Only Linux's /proc tells; elsewhere none is taken for gone.
fn process_is_gone(pid: u32) -> bool {
    let proc = Path::new("/proc");
    cfg!(target_os = "linux") && proc.join("self").exists() && !proc.join(pid.to_string()).exists()
}

fn unpack_local(archive: &Path, spec: &ArchiveSpec, target: &Path) -> Result<()> {
    download::verify_file(archive, &spec.expected()).with_context(|| {
        format!(
            "{} is not the expected CIFAR-10 archive; delete it so cae can download it again",
            archive.display()
        )
    })?;
    unpack(archive, target)
}

fn download_and_unpack(spec: &ArchiveSpec, archive: &Path, target: &Path) -> Result<()> {
    let expected = spec.expected();
    download::download(
        &spec.url,
        archive,
        expected.bytes,
        expected.md5,
        expected.sha256,
    )?;
    unpack(archive, target)
}

fn with_offline_advice(error: anyhow::Error, data_dir: &Path) -> anyhow::Error {
    let Some(unreachable) = error.chain().find_map(|e| e.downcast_ref::<Unreachable>()) else {
        return error;
    };
    let advice = format!(
        "cae is offline or could not reach {host}, so it cannot download CIFAR-10. \
         Download cifar-10-binary.tar.gz ({URL}) on a machine with internet access, unpack it \
         (tar xzf cifar-10-binary.tar.gz), and pass --data-dir pointing at the folder holding \
         cifar-10-batches-bin (or put cifar-10-binary.tar.gz or that folder into {dir})",
        host = unreachable.host,
        dir = data_dir.display()
    );
    error.context(advice)
}

/// Extracts the archive's batch files into a temporary folder beside `target`, then renames it
/// to `target` ([`atomic::create_dir_with`]).
fn unpack(archive: &Path, target: &Path) -> Result<()> {
    atomic::create_dir_with(target, |staging| {
        extract_members(archive, staging)?;
        let missing = missing_batches(staging);
        if !missing.is_empty() {
            bail!("the archive lacks {BATCHES_DIR}/{}", missing.join(", "));
        }
        Ok(())
    })
    .with_context(|| format!("cannot unpack the CIFAR-10 archive {}", archive.display()))
}

/// Writes the expected regular files of the archive into `dest`, refusing anything else.
fn extract_members(archive: &Path, dest: &Path) -> Result<()> {
    let file = File::open(archive).with_context(|| format!("cannot open {}", archive.display()))?;
    let mut tar = tar::Archive::new(GzDecoder::new(file));
    let mut seen = HashSet::new();
    for entry in tar.entries().context("cannot read the archive")? {
        let mut entry = entry.context("cannot read the archive")?;
        let member = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let Some(name) = accepted_file(&entry, &member)? else {
            continue;
        };
        if !seen.insert(name.clone()) {
            bail!("archive member {member}: appears twice");
        }
        let path = dest.join(&name);
        let mut out =
            File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        io::copy(&mut entry, &mut out)
            .and_then(|_| out.sync_all())
            .with_context(|| format!("cannot extract archive member {member}"))?;
    }
    Ok(())
}

/// The file name to extract `entry` to, `None` for entries to skip (the batches folder itself),
/// or an error naming the member when it is not one of the expected regular files.
fn accepted_file<R: io::Read>(entry: &tar::Entry<R>, member: &str) -> Result<Option<String>> {
    let kind = entry.header().entry_type();
    if kind.is_pax_global_extensions() {
        return Ok(None);
    }
    if kind.is_symlink() || kind.is_hard_link() {
        bail!("archive member {member}: refused, it is a link");
    }
    if !kind.is_file() && !kind.is_dir() {
        bail!("archive member {member}: refused, it is a {kind:?} entry, not a regular file");
    }
    let parts = member_parts(entry, member)?;
    match (parts.as_slice(), kind.is_dir()) {
        ([dir], true) if dir == BATCHES_DIR => Ok(None),
        ([dir, name], false) if dir == BATCHES_DIR && is_expected_file(name) => {
            Ok(Some(name.clone()))
        }
        _ => bail!(
            "archive member {member}: refused, not one of the expected CIFAR-10 files \
             ({BATCHES_DIR}/data_batch_1..5.bin, test_batch.bin, batches.meta.txt, readme.html)"
        ),
    }
}

fn is_expected_file(name: &str) -> bool {
    batch_files().chain(EXTRA_FILES).any(|f| f == name)
}

/// The member's path as plain names, refusing absolute paths and `..`.
fn member_parts<R: io::Read>(entry: &tar::Entry<R>, member: &str) -> Result<Vec<String>> {
    let path = entry
        .path()
        .with_context(|| format!("archive member {member}: unreadable path"))?;
    let mut parts = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => parts.push(part.to_string_lossy().into_owned()),
            Component::CurDir => {}
            Component::ParentDir => bail!("archive member {member}: refused, its path has `..`"),
            Component::RootDir | Component::Prefix(_) => {
                bail!("archive member {member}: refused, its path is absolute")
            }
        }
    }
    Ok(parts)
}
