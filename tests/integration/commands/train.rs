//! `cae train` and `cae eval` end to end on real CIFAR-10 images (the shared JPEG folders).

use crate::common::{self, cae};

use std::path::Path;

/// `cae train` on 640 training and 200 validation images into `out`, with `extra`.
fn quick_args(out: &Path, extra: &[&str]) -> Vec<String> {
    let data = common::cifar_jpg_dir();
    let quick = [
        "train",
        "--dataset",
        "folder",
        "--data-dir",
        common::s(&data),
        "--train-limit",
        "640",
        "--val-limit",
        "200",
        "--out",
        common::s(out),
    ];
    quick.iter().chain(extra).map(|a| a.to_string()).collect()
}

fn quick_run(out: &Path, extra: &[&str]) -> String {
    let args = quick_args(out, extra);
    cae(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

#[test]
fn short_run_learns_and_writes_every_artifact() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let stdout = quick_run(&run, &["--epochs", "1"]);
    assert!(stdout.contains("epoch   1/1"), "{stdout}");

    for file in [
        "config.json",
        "metrics.csv",
        "epochs.csv",
        "recon_epoch_01.png",
        "loss.png",
        "model.safetensors",
        "checkpoint.safetensors",
    ] {
        assert!(run.join(file).is_file(), "{file} missing");
    }
    assert_eq!(
        common::event_files(&run).len(),
        1,
        "one TensorBoard event file"
    );
    let grid = image::open(run.join("recon_epoch_01.png")).unwrap();
    // Ten classes side by side, originals above reconstructions, enlarged.
    assert!(grid.width() > 10 * 32 && grid.height() > 2 * 32 && grid.width() > grid.height());
    image::open(run.join("loss.png")).unwrap();

    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["settings"]["latent"], 200);
    assert_eq!(config["adam"]["eps"], 1e-8);
    assert_eq!(config["versions"]["burn"], locked_version("burn"));

    let metrics = common::csv_cells(&run.join("metrics.csv")).1;
    let train: Vec<f64> = metrics
        .iter()
        .filter(|r| r[2] == "train")
        .map(|r| r[3].parse().unwrap())
        .collect();
    let val = metrics.iter().filter(|r| r[2] == "val").count();
    assert_eq!(train.len(), 10, "640 images in batches of 64");
    assert_eq!(val, 1, "200 validation images in one batch of 256");
    let tail = train[train.len() - 3..].iter().sum::<f64>() / 3.0;
    assert!(
        tail < train[0] * 0.95,
        "the loss did not go down: first batch {}, last three {tail}",
        train[0]
    );

    // `cae eval` on the same images reproduces the run's validation loss.
    let epochs = common::csv_cells(&run.join("epochs.csv")).1;
    let val_loss: f64 = epochs[0][2].parse().unwrap();
    let data = common::cifar_jpg_dir();
    let json = cae(&[
        "eval",
        "--model",
        run.join("model.safetensors").to_str().unwrap(),
        "--dataset",
        "folder",
        "--data-dir",
        data.to_str().unwrap(),
        "--val-limit",
        "200",
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(report["n"], 200);
    let mse = report["mse"].as_f64().unwrap();
    assert!(
        (mse - val_loss).abs() < 1e-6,
        "eval MSE {mse} vs run's val loss {val_loss}"
    );
    let psnr = report["psnr"].as_f64().unwrap();
    assert!((psnr - cae::eval::psnr_from_normalized_mse(mse)).abs() < 1e-9);
}

#[test]
fn resumed_run_equals_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("whole");
    let split = dir.path().join("split");
    // Without TensorBoard's files, which leave the results as they are.
    quick_run(&whole, &["--epochs", "2", "--shuffle", "--no-tensorboard"]);
    assert_eq!(common::event_files(&whole), Vec::<String>::new());
    quick_run(&split, &["--epochs", "1", "--shuffle"]);
    quick_run(&split, &["--epochs", "2", "--shuffle", "--resume"]);
    assert_eq!(
        common::event_files(&split).len(),
        2,
        "one event file per start"
    );
    let a = std::fs::read(whole.join("model.safetensors")).unwrap();
    let b = std::fs::read(split.join("model.safetensors")).unwrap();
    assert!(
        a == b,
        "final weights differ between the resumed and the uninterrupted run"
    );
    let metrics = |run: &Path| std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    assert_eq!(metrics(&whole), metrics(&split));
}

#[test]
fn existing_run_is_not_overwritten_without_resume() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    quick_run(&run, &["--epochs", "1"]);
    let before = std::fs::read(run.join("model.safetensors")).unwrap();
    let args = quick_args(&run, &["--epochs", "1"]);
    let output = common::cae_output(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("already holds a run") && stderr.contains("--resume"),
        "{stderr}"
    );
    assert_eq!(
        before,
        std::fs::read(run.join("model.safetensors")).unwrap()
    );
}

/// The version of `package` in the workspace's Cargo.lock.
fn locked_version(package: &str) -> String {
    let lock =
        std::fs::read_to_string(crate::fixtures::workspace_root().join("Cargo.lock")).unwrap();
    let entry = format!("name = \"{package}\"\nversion = \"");
    let start = lock
        .find(&entry)
        .unwrap_or_else(|| panic!("{package} not in Cargo.lock"))
        + entry.len();
    lock[start..].split('"').next().unwrap().to_string()
}
