//! Using a model end to end: import/export, reconstruct, encode, decode, on real CIFAR-10 JPEGs
//! and Debian's Fashion-MNIST.

use crate::common;

use common::{cae, cae_error, s};

use std::path::{Path, PathBuf};
use std::process::Command;

/// The reference seed model imported into a cae model file.
fn imported_seed_model(dir: &Path) -> PathBuf {
    let model = dir.join("seed.safetensors");
    let stdout = cae(&[
        "import",
        "--from",
        s(&common::reference_dir().join("seed_latent200_init.pt")),
        "--out",
        s(&model),
    ]);
    assert!(
        stdout.contains("latent 200, channels 16, 3x32x32"),
        "{stdout}"
    );
    model
}

fn python(script: &str) -> String {
    let output = Command::new("python3")
        .args(["-c", script])
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "python3 failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn export_then_import_is_bit_exact() {
    let dir = tempfile::tempdir().unwrap();
    let model = imported_seed_model(dir.path());
    let pt = dir.path().join("exported.pt");
    cae(&["export", "--model", s(&model), "--to", s(&pt)]);
    let back = dir.path().join("back.safetensors");
    cae(&["import", "--from", s(&pt), "--out", s(&back)]);
    let original = cae::io::weights::read_weights(
        &common::reference_dir().join("seed_latent200_init.safetensors"),
    )
    .unwrap();
    let round_tripped = cae::io::weights::read_weights(&back).unwrap();
    assert!(
        original.tensors == round_tripped.tensors,
        "tensors changed in export -> import"
    );
    assert_eq!(
        round_tripped.config,
        Some(cae::model::ModelConfig::default())
    );
}

#[test]
fn misshapen_or_missing_tensors_are_refused_with_names_and_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let mut dict = cae::io::weights::read_weights(
        &common::reference_dir().join("seed_latent200_init.safetensors"),
    )
    .unwrap()
    .tensors;
    dict.get_mut("decoder.conv.4.bias").unwrap().shape = vec![16, 2];
    let bad = dir.path().join("bad.safetensors");
    cae::io::weights::save_safetensors(&bad, &dict, None, &[]).unwrap();
    let out = dir.path().join("x.safetensors");
    let import = ["import", "--from", s(&bad), "--out", s(&out)];
    let shapes = ["bad.safetensors", "decoder.conv.4.bias", "[16, 2]", "[32]"];
    common::cae_clean_error(&import, &shapes);
    assert!(!out.exists());

    dict.remove("decoder.conv.4.bias");
    cae::io::weights::save_safetensors(&bad, &dict, None, &[]).unwrap();
    let pt = dir.path().join("x.pt");
    let export = ["export", "--model", s(&bad), "--to", s(&pt)];
    common::cae_clean_error(&export, &["decoder.conv.4.bias", "missing"]);
}

#[test]
fn reconstruct_writes_images_grid_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let model = imported_seed_model(dir.path());
    let data = common::cifar_jpg_dir();
    let cat = data.join("test/cat/0000.jpg");
    let ship = data.join("test/ship/0000.jpg");
    // A larger image (64x64) is resized to the model's 32x32.
    let big = dir.path().join("big.png");
    image::open(&ship)
        .unwrap()
        .resize_exact(64, 64, image::imageops::FilterType::Nearest)
        .save(&big)
        .unwrap();
    let out = dir.path().join("recon");
    let stdout = cae(&[
        "reconstruct",
        "--model",
        s(&model),
        s(&cat),
        s(&big),
        "--out",
        s(&out),
    ]);
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.contains("0000.jpg") || l.contains("big.png"))
            .count(),
        2,
        "{stdout}"
    );
    for name in ["0000_recon.png", "big_recon.png"] {
        let image = image::open(out.join(name)).unwrap();
        assert_eq!((image.width(), image.height()), (32, 32));
    }
    let grid = image::open(out.join("grid.png")).unwrap();
    // Two columns, originals above reconstructions: (2 * (32 + 1) + 1) pixels, enlarged 4x.
    assert_eq!((grid.width(), grid.height()), (268, 268));

    let err = cae_error(&[
        "reconstruct",
        "--model",
        s(&model),
        s(&big),
        "--out",
        s(&out),
        "--no-resize",
    ]);
    assert!(
        err.contains("big.png") && err.contains("64x64") && err.contains("32x32"),
        "{err}"
    );
}

#[test]
fn encode_dataset_to_npy_and_decode_back() {
    let dir = tempfile::tempdir().unwrap();
    let model = imported_seed_model(dir.path());
    let data = common::cifar_jpg_dir();
    let latents = dir.path().join("latents.npy");
    cae(&[
        "encode",
        "--model",
        s(&model),
        "--dataset",
        "folder",
        "--data-dir",
        s(&data),
        "--limit",
        "30",
        "--out",
        s(&latents),
    ]);
    let report = python(&format!(
        "import numpy as np; a = np.load('{}'); l = np.load('{}'); print(a.shape, a.dtype, l.shape, l.dtype, int(l.min()), int(l.max()))",
        s(&latents),
        s(&dir.path().join("labels.npy"))
    ));
    assert_eq!(
        report.trim(),
        "(30, 200) float32 (30,) int64 0 0",
        "the first 30 sorted test images are airplanes"
    );

    // The codes match the library's encoder on the same images.
    let (shape, codes) = cae::io::npy::read_f32(&latents).unwrap();
    assert_eq!(shape, vec![30, 200]);
    let device = burn::tensor::Device::flex();
    let (net, config) = cae::io::weights::load_model(&model, &device).unwrap();
    let first =
        cae::io::imageio::read_model_input(&data.join("test/airplane/0000.jpg"), &config, false)
            .unwrap();
    let expected = cae::eval::inference::encode(&net, &config, &first, &device);
    assert!(
        expected
            .iter()
            .zip(&codes[..200])
            .all(|(a, b)| (a - b).abs() < 1e-5)
    );

    let csv = dir.path().join("latents.csv");
    cae(&[
        "encode",
        "--model",
        s(&model),
        s(&data.join("test/cat/0000.jpg")),
        "--format",
        "csv",
        "--out",
        s(&csv),
    ]);
    let text = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(text.lines().count(), 2);
    assert!(text.starts_with("source,label,z0,z1,"));
    assert_eq!(text.lines().nth(1).unwrap().split(',').count(), 2 + 200);

    let out = dir.path().join("decoded");
    cae(&[
        "decode",
        "--model",
        s(&model),
        s(&latents),
        "--out",
        s(&out),
    ]);
    assert!(
        out.join("000000.png").is_file()
            && out.join("000029.png").is_file()
            && out.join("grid.png").is_file()
    );

    let wrong = dir.path().join("wrong.npy");
    cae::io::npy::write_f32(&wrong, &[2, 7], &[0.0; 14]).unwrap();
    let err = cae_error(&["decode", "--model", s(&model), s(&wrong), "--out", s(&out)]);
    assert!(
        err.contains("wrong.npy") && err.contains("[2, 7]") && err.contains("200"),
        "{err}"
    );
}

#[test]
fn fashion_mnist_trains_and_is_used_through_the_same_commands() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::train_fashion_mnist(&dir.path().join("run"), &[]);
    let config = cae::io::weights::read_weights(&model)
        .unwrap()
        .config
        .unwrap();
    assert_eq!(
        (
            config.in_channels,
            config.height,
            config.width,
            config.latent
        ),
        (1, 28, 28, 32)
    );

    let latents = dir.path().join("codes.npy");
    cae(&[
        "encode",
        "--model",
        s(&model),
        "--dataset",
        "fashion-mnist",
        "--limit",
        "10",
        "--out",
        s(&latents),
    ]);
    assert_eq!(cae::io::npy::read_f32(&latents).unwrap().0, vec![10, 32]);
    let out = dir.path().join("decoded");
    cae(&[
        "decode",
        "--model",
        s(&model),
        s(&latents),
        "--out",
        s(&out),
    ]);
    let image = image::open(out.join("000000.png")).unwrap();
    assert_eq!(
        (image.width(), image.height(), image.color()),
        (28, 28, image::ColorType::L8)
    );

    // A colour CIFAR image goes through a grayscale 28x28 model after conversion and resizing.
    let recon = dir.path().join("recon");
    cae(&[
        "reconstruct",
        "--model",
        s(&model),
        s(&common::cifar_jpg_dir().join("test/dog/0000.jpg")),
        "--out",
        s(&recon),
    ]);
    assert!(recon.join("0000_recon.png").is_file());
}

#[test]
fn image_size_resizes_a_folder_dataset_for_training_and_eval() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let jpgs = common::cifar_jpg_dir();
    for (split, class, file) in [
        ("train", "cat", "0000.jpg"),
        ("train", "dog", "0000.jpg"),
        ("test", "cat", "0001.jpg"),
        ("test", "dog", "0001.jpg"),
    ] {
        std::fs::create_dir_all(data.join(split).join(class)).unwrap();
        std::fs::copy(
            jpgs.join("test").join(class).join(file),
            data.join(split).join(class).join(file),
        )
        .unwrap();
    }
    let run = dir.path().join("run");
    cae(&[
        "train",
        "--dataset",
        "folder",
        "--data-dir",
        s(&data),
        "--image-size",
        "16x24",
        "--epochs",
        "1",
        "--no-report",
        "--out",
        s(&run),
    ]);
    let config = cae::io::weights::read_weights(&run.join("model.safetensors"))
        .unwrap()
        .config
        .unwrap();
    assert_eq!((config.width, config.height), (16, 24));
    // eval reads the folder at the model's size.
    let json = cae(&[
        "eval",
        "--model",
        s(&run.join("model.safetensors")),
        "--dataset",
        "folder",
        "--data-dir",
        s(&data),
        "--json",
    ]);
    assert!(json.contains("\"n\":2"), "{json}");
    let err = cae_error(&[
        "train",
        "--dataset",
        "folder",
        "--data-dir",
        s(&data),
        "--image-size",
        "0x3",
        "--out",
        s(&dir.path().join("x")),
    ]);
    assert!(err.contains("0x3"), "{err}");
}
