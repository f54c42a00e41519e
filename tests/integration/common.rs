//! The helpers every integration test shares: running the `cae` binary and judging how it
//! failed, reading the CSV files it writes, and (from `fixtures`) where the fixtures are.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub use crate::fixtures::{
    cifar_jpg_dir, cifar_subset, event_files, gzip, idx_file, max_abs_diff, names, pairwise_auc,
    reference_dir,
};

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
    stdout_of(&mut cae_command(args))
}

/// Runs `command` (a [`cae_command`] with more set on it), which must succeed; returns its
/// stdout.
pub fn stdout_of(command: &mut Command) -> String {
    let output = command.output().expect("cae runs");
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
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

/// A CSV file cae wrote (its cells hold no quoted commas): the header's cells and every row's.
pub fn csv_cells(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let text = fs::read_to_string(path).unwrap();
    let mut rows = text
        .lines()
        .map(|l| l.split(',').map(str::to_owned).collect::<Vec<_>>());
    let header = rows.next().unwrap();
    (header, rows.collect())
}

/// A run folder's checkpoint, as `cae train --resume` looks for it.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";

/// The temporary files of interrupted atomic writes in `dir`.
pub fn temp_files(dir: &Path) -> Vec<String> {
    names(dir)
        .into_iter()
        .filter(|n| cae::io::atomic::is_temp_name(n))
        .collect()
}
