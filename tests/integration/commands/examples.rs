//! The library examples (`examples/`) run on real images: train on a folder, encode a folder,
//! score images for anomalies. `cargo test` builds them beside this test binary.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{cifar_subset, s};

/// The built example `name`: `target/<profile>/examples/<name>`, beside `deps/` where this test
/// binary lies.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let path = profile_dir.join("examples").join(name);
    assert!(
        path.is_file(),
        "{} was not built: run `cargo test --release` at the workspace root, which builds the examples",
        path.display()
    );
    path
}

fn run(name: &str, args: &[&str]) -> String {
    let output = Command::new(example(name))
        .args(args)
        .output()
        .expect("the example runs");
    assert!(
        output.status.success(),
        "example {name} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn the_examples_train_encode_and_score_real_images() {
    let data = cifar_subset();
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("run");

    let trained = run("train_folder", &[s(&data), s(&run_dir), "1", "128"]);
    assert!(trained.contains("epoch 1/1: train loss"), "{trained}");
    let model = run_dir.join(cae::run_folder::MODEL_FILE);
    assert!(trained.contains(s(&model)), "{trained}");
    let (_, config) = cae::load_model(&model, &burn::tensor::Device::flex()).unwrap();
    assert_eq!(config.latent, 200);

    let cats = data.join("test").join("cat");
    let codes = tmp.path().join("codes.npy");
    let encoded = run("encode_folder", &[s(&model), s(&cats), s(&codes)]);
    assert!(encoded.contains("20 codes of size 200"), "{encoded}");
    let (shape, values) = cae::io::npy::read_f32(&codes).unwrap();
    assert_eq!(shape, [20, 200]);
    assert!(
        values.iter().all(|v| v.is_finite() && *v >= 0.0),
        "codes pass a ReLU"
    );

    let mut images: Vec<PathBuf> = std::fs::read_dir(&cats)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    images.sort();
    let mut args = vec![s(&model).to_string()];
    args.extend(images.iter().take(5).map(|p| s(p).to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let scored = run("anomaly_scores", &args);
    let lines: Vec<&str> = scored.lines().collect();
    assert_eq!(lines[0], "mse,one_minus_ssim,image");
    assert_eq!(lines.len(), 6, "{scored}");
    let mses: Vec<f64> = lines[1..]
        .iter()
        .map(|l| l.split(',').next().unwrap().parse().unwrap())
        .collect();
    assert!(
        mses.windows(2).all(|w| w[0] >= w[1]),
        "sorted by mse: {mses:?}"
    );
    assert!(mses.iter().all(|&m| m > 0.0));
}
