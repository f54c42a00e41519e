//! `cae train --init` from the PyTorch reference `.pt`, on the reference's own 20 images, follows
//! PyTorch's losses step by step.

use crate::common;

#[test]
fn training_from_the_reference_init_follows_pytorch_losses() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(common::reference_dir().join("batch.json")).unwrap())
            .unwrap();
    let jpgs = common::cifar_jpg_dir();
    // The 20 reference images, as both the training and the validation set.
    for name in meta["images"].as_array().unwrap() {
        let name = name.as_str().unwrap();
        for split in ["train", "test"] {
            let target = data.join(name.replacen("test/", &format!("{split}/"), 1));
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            std::fs::copy(jpgs.join(name), &target).unwrap();
        }
    }
    let run = dir.path().join("run");
    let init = common::reference_dir().join("seed_latent200_init.pt");
    common::cae(&[
        "train",
        "--dataset",
        "folder",
        "--data-dir",
        data.to_str().unwrap(),
        "--init",
        init.to_str().unwrap(),
        "--batch-size",
        "20",
        "--epochs",
        "3",
        "--out",
        run.to_str().unwrap(),
    ]);

    // One batch per epoch holds all 20 images, so its loss (a mean) does not depend on their order.
    let metrics = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    let ours: Vec<f64> = metrics
        .lines()
        .filter(|l| l.contains(",train,"))
        .map(|l| l.rsplit(',').next().unwrap().parse().unwrap())
        .collect();
    let theirs: Vec<f64> = meta["losses_before_each_step"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(ours.len(), 3);
    for (step, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        // The JPEG decoder differs from Pillow's by up to 4 levels on a quarter of the values (see
        // data_folder), which moves these losses by about 1.4e-3 relative (measured).
        let relative = (a - b).abs() / b;
        eprintln!(
            "loss before step {}: cae {a}, PyTorch {b}, relative difference {relative:e}",
            step + 1
        );
        assert!(relative < 3e-3, "step {}: {a} vs {b}", step + 1);
    }
}
