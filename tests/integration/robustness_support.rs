//! Helpers of the robustness tests: running the `cae` binary, judging how it failed, and a small
//! folder of real CIFAR-10 images that loads in a blink.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Once;

/// Training images per class in [`cifar_subset`] (640 in all).
pub const TRAIN_PER_CLASS: usize = 64;
/// Validation images per class in [`cifar_subset`] (200 in all).
pub const TEST_PER_CLASS: usize = 20;

/// A `cae` command with `RUST_BACKTRACE=1`, so a panic or a debug-printed error would show its
/// backtrace and fail [`assert_clean_failure`].
pub fn cae_command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cae"));
    command.args(args).env("RUST_BACKTRACE", "1");
    command
}

pub fn run_cae(args: &[&str]) -> Output {
    cae_command(args).output().expect("cae runs")
}

/// Runs `cae` and returns its stdout; fails the test when it fails.
pub fn cae_ok(args: &[&str]) -> String {
    let output = run_cae(args);
    assert!(
        output.status.success(),
        "cae {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs `cae`, checks it failed cleanly (see [`assert_clean_failure`]) and returns its stderr.
pub fn cae_error(args: &[&str], needles: &[&str]) -> String {
    assert_clean_failure(&run_cae(args), needles)
}

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
        copy_subset(&super::common::cifar_jpg_dir(), &staging);
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
        .filter(|n| cae::atomic::is_temp_name(n))
        .collect()
}

pub fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}
