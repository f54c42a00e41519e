//! Where the test fixtures are (PyTorch's reference files, the CIFAR-10 JPEGs, the committed
//! fixtures), the small files tests fabricate (IDX, gzip) and the small checks every test uses.
//! One file for both test trees: the integration tests include it as a module, and so do the
//! `cae` library's unit tests (by path), so that neither keeps a copy.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Once;

/// The workspace's root folder (the one holding `Cargo.lock`), whichever crate's tests run.
/// `cargo test` names the crate's folder at run time too; that one comes first, since a build
/// reused from a checkout elsewhere (one shared `CARGO_TARGET_DIR`, a moved clone) still holds
/// the old checkout's path from compile time.
pub fn workspace_root() -> PathBuf {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest_dir
        .ancestors()
        .find(|dir| dir.join("Cargo.lock").is_file())
        .unwrap_or_else(|| panic!("no Cargo.lock above {}", manifest_dir.display()))
        .to_path_buf()
}

/// A fixture committed under `tests/fixtures/`.
pub fn committed_fixture(name: &str) -> PathBuf {
    workspace_root().join("tests/fixtures").join(name)
}

/// A scratch folder kept between test runs: Cargo's for integration tests, else one under the
/// system's temporary folder.
pub fn scratch_dir() -> PathBuf {
    option_env!("CARGO_TARGET_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("cae-tests"))
}

/// `../shared/reference` (or `$CAE_REFERENCE`): the PyTorch fixtures.
pub fn reference_dir() -> PathBuf {
    let dir = std::env::var_os("CAE_REFERENCE")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("../shared/reference"));
    assert!(
        dir.join("batch.safetensors").exists(),
        "PyTorch reference fixtures not found in {}; set CAE_REFERENCE",
        dir.display()
    );
    dir
}

/// The CIFAR-10 JPEG folders (train/<class>/*.jpg, test/<class>/*.jpg): `$CAE_CIFAR_JPG`, else
/// `../shared/datasets/cifar10-jpg.tar.gz` unpacked once into the scratch folder.
pub fn cifar_jpg_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CAE_CIFAR_JPG") {
        let dir = PathBuf::from(dir);
        assert!(
            dir.join("test").is_dir(),
            "CAE_CIFAR_JPG={} has no test/ folder",
            dir.display()
        );
        return dir;
    }
    let dir = scratch_dir().join("cifar10-jpg");
    static UNPACK: std::sync::Once = std::sync::Once::new();
    UNPACK.call_once(|| {
        if dir.join("test").is_dir() {
            return;
        }
        let tarball = workspace_root().join("../shared/datasets/cifar10-jpg.tar.gz");
        let file = fs::File::open(&tarball).unwrap_or_else(|e| {
            panic!(
                "CIFAR-10 JPEGs needed: {} ({e}); or set CAE_CIFAR_JPG to an unpacked copy",
                tarball.display()
            )
        });
        let partial = dir.with_extension(format!("partial-{}", std::process::id()));
        let _ = fs::remove_dir_all(&partial);
        tar::Archive::new(flate2::read::GzDecoder::new(file))
            .unpack(&partial)
            .expect("unpack the CIFAR-10 JPEG tarball");
        // The other test binary may have won the race; its copy is as good.
        if fs::rename(&partial, &dir).is_err() {
            let _ = fs::remove_dir_all(&partial);
        }
    });
    dir
}

/// The largest absolute difference between two slices of the same length.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The ROC AUC by counting pairs: P(anomalous > normal) + P(tie) / 2, the definition the
/// library's rank formula must agree with.
pub fn pairwise_auc(normal: &[f64], anomalous: &[f64]) -> f64 {
    let mut wins = 0.0;
    for a in anomalous {
        for n in normal {
            wins += if a > n {
                1.0
            } else if a == n {
                0.5
            } else {
                0.0
            };
        }
    }
    wins / (normal.len() * anomalous.len()) as f64
}

/// The TensorBoard event files in `dir`, by name (the order TensorBoard reads them in).
pub fn event_files(dir: &Path) -> Vec<String> {
    names(dir)
        .into_iter()
        .filter(|name| name.starts_with("events.out.tfevents."))
        .collect()
}

/// The names in `dir`, sorted.
pub fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// An IDX file (the MNIST format): the magic number, the dimensions as big-endian `u32`s, then
/// `data`.
pub fn idx_file(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut bytes = magic.to_be_bytes().to_vec();
    bytes.extend(dims.iter().flat_map(|d| d.to_be_bytes()));
    bytes.extend(data);
    bytes
}

/// `bytes` gzipped.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut encoder, bytes).unwrap();
    encoder.finish().unwrap()
}

/// Training images per class in [`cifar_subset`] (640 in all).
pub const TRAIN_PER_CLASS: usize = 64;
/// Validation images per class in [`cifar_subset`] (200 in all).
pub const TEST_PER_CLASS: usize = 20;

/// `train/<class>/` with the first [`TRAIN_PER_CLASS`] and `test/<class>/` with the first
/// [`TEST_PER_CLASS`] real CIFAR-10 JPEGs of each class, built once per target folder.
pub fn cifar_subset() -> PathBuf {
    let dir = scratch_dir().join("robustness-cifar-subset");
    static BUILD: Once = Once::new();
    BUILD.call_once(|| {
        if dir.join("test").is_dir() {
            return;
        }
        let staging = dir.with_extension(format!("partial-{}", std::process::id()));
        let _ = fs::remove_dir_all(&staging);
        copy_subset(&cifar_jpg_dir(), &staging);
        // Another test binary may have won the race; its copy is as good.
        if fs::rename(&staging, &dir).is_err() {
            let _ = fs::remove_dir_all(&staging);
        }
        assert!(dir.join("test").is_dir(), "{} was not built", dir.display());
    });
    dir
}

fn copy_subset(source: &Path, dest: &Path) {
    for (split, count) in [("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)] {
        for class in fs::read_dir(source.join(split)).unwrap() {
            let class = class.unwrap().file_name();
            let to = dest.join(split).join(&class);
            fs::create_dir_all(&to).unwrap();
            let mut files: Vec<_> = fs::read_dir(source.join(split).join(&class))
                .unwrap()
                .map(|f| f.unwrap().file_name())
                .collect();
            files.sort();
            for file in files.iter().take(count) {
                fs::copy(source.join(split).join(&class).join(file), to.join(file)).unwrap();
            }
        }
    }
}
