//! The helpers every integration test shares: running the `cae` binary and judging how it
//! failed, and the fixtures (PyTorch's reference files, the CIFAR-10 JPEGs, a small subset of
//! them that loads in a blink).
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Once;

/// `../shared/reference` (or `$CAE_REFERENCE`): the PyTorch fixtures.
pub fn reference_dir() -> PathBuf {
    let dir = std::env::var_os("CAE_REFERENCE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/reference"));
    assert!(
        dir.join("batch.safetensors").exists(),
        "PyTorch reference fixtures not found in {}; set CAE_REFERENCE",
        dir.display()
    );
    dir
}

/// The CIFAR-10 JPEG folders (train/<class>/*.jpg, test/<class>/*.jpg): `$CAE_CIFAR_JPG`, else
/// `../shared/datasets/cifar10-jpg.tar.gz` unpacked once into Cargo's test scratch folder.
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
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cifar10-jpg");
    static UNPACK: std::sync::Once = std::sync::Once::new();
    UNPACK.call_once(|| {
        if dir.join("test").is_dir() {
            return;
        }
        let tarball =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/datasets/cifar10-jpg.tar.gz");
        let file = std::fs::File::open(&tarball).unwrap_or_else(|e| {
            panic!(
                "CIFAR-10 JPEGs needed: {} ({e}); or set CAE_CIFAR_JPG to an unpacked copy",
                tarball.display()
            )
        });
        let partial = dir.with_extension("partial");
        let _ = std::fs::remove_dir_all(&partial);
        tar::Archive::new(flate2::read::GzDecoder::new(file))
            .unpack(&partial)
            .expect("unpack the CIFAR-10 JPEG tarball");
        std::fs::rename(&partial, &dir).expect("move the unpacked images into place");
    });
    dir
}

/// A `cae` command of this build with `RUST_BACKTRACE=1`, so that a panic or a debug-printed
/// error would show its backtrace and fail the checks below.
pub fn cae_command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cae"));
    command.args(args).env("RUST_BACKTRACE", "1");
    command
}

/// Runs `cae` and returns what it did.
pub fn cae_output(args: &[&str]) -> Output {
    cae_command(args).output().expect("cae runs")
}

/// Runs `cae`, which must succeed; returns its stdout.
pub fn cae(args: &[&str]) -> String {
    let output = cae_output(args);
    assert!(
        output.status.success(),
        "cae {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs `cae`, which must fail without panicking (a usage error from clap included); returns
/// its stderr.
pub fn cae_error(args: &[&str]) -> String {
    let output = cae_output(args);
    assert!(!output.status.success(), "cae {args:?} should fail");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

/// Runs `cae`, checks it failed cleanly (see [`assert_clean_failure`]) and returns its stderr.
pub fn cae_clean_error(args: &[&str], needles: &[&str]) -> String {
    assert_clean_failure(&cae_output(args), needles)
}

/// The largest absolute difference between two slices of the same length.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// `cae train` for one epoch on 128 training and 64 validation images into `run`, with `args`
/// (the dataset and any other flags); returns its stdout.
pub fn train_quick(run: &Path, args: &[&str]) -> String {
    let quick = [
        "--train-limit",
        "128",
        "--val-limit",
        "64",
        "--epochs",
        "1",
        "--out",
        s(run),
    ];
    cae(&[&["train"][..], args, &quick].concat())
}

/// [`train_quick`] of a 1x28x28 Fashion-MNIST model with latent 32 and the `extra` flags;
/// returns its model file.
pub fn train_fashion_mnist(run: &Path, extra: &[&str]) -> PathBuf {
    let fashion = ["--dataset", "fashion-mnist", "--latent", "32"];
    train_quick(run, &[&fashion[..], extra].concat());
    run.join("model.safetensors")
}

/// A path as a command-line argument.
pub fn s(path: &std::path::Path) -> &str {
    path.to_str().unwrap()
}

/// Training images per class in [`cifar_subset`] (640 in all).
pub const TRAIN_PER_CLASS: usize = 64;
/// Validation images per class in [`cifar_subset`] (200 in all).
pub const TEST_PER_CLASS: usize = 20;

/// A failure as users should see it: exit code 1, one `error:` message holding every needle,
/// and no panic or backtrace.
pub fn assert_clean_failure(output: &Output, needles: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("error: "), "{stderr}");
    for bad in ["panicked", "backtrace", "RUST_BACKTRACE"] {
        assert!(!stderr.contains(bad), "`{bad}` in: {stderr}");
    }
    for needle in needles {
        assert!(stderr.contains(needle), "`{needle}` missing from: {stderr}");
    }
    stderr
}

/// `train/<class>/` with the first [`TRAIN_PER_CLASS`] and `test/<class>/` with the first
/// [`TEST_PER_CLASS`] real CIFAR-10 JPEGs of each class, built once per target folder.
pub fn cifar_subset() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("robustness-cifar-subset");
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

/// The names in `dir`, sorted.
pub fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The temporary files of interrupted atomic writes in `dir`.
pub fn temp_files(dir: &Path) -> Vec<String> {
    names(dir)
        .into_iter()
        .filter(|n| cae::io::atomic::is_temp_name(n))
        .collect()
}
