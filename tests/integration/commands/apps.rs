//! The applications end to end on real CIFAR-10 JPEGs: denoising, anomaly detection,
//! generation. Each test works on a small copy of the image folders so that it stays fast.

use crate::common;

use common::{cae, cae_error, s};

use std::path::{Path, PathBuf};

const CLASSES: usize = 10;

/// `dir/cifar`: the first `train` training and `test` test JPEGs of every CIFAR-10 class.
fn small_cifar(dir: &Path, train: usize, test: usize) -> PathBuf {
    let source = common::cifar_jpg_dir();
    let root = dir.join("cifar");
    for (split, n) in [("train", train), ("test", test)] {
        let mut classes: Vec<PathBuf> = std::fs::read_dir(source.join(split))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        classes.sort();
        assert_eq!(classes.len(), CLASSES);
        for class in classes {
            let mut files: Vec<PathBuf> = std::fs::read_dir(&class)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            files.sort();
            let target = root.join(split).join(class.file_name().unwrap());
            std::fs::create_dir_all(&target).unwrap();
            for file in &files[..n] {
                std::fs::copy(file, target.join(file.file_name().unwrap())).unwrap();
            }
        }
    }
    root
}

fn train(data: &Path, out: &Path, extra: &[&str]) -> PathBuf {
    let mut args = vec![
        "train",
        "--dataset",
        "folder",
        "--data-dir",
        s(data),
        "--no-report",
        "--out",
        s(out),
    ];
    args.extend_from_slice(extra);
    cae(&args);
    out.join("model.safetensors")
}

#[test]
fn denoiser_trains_on_noisy_inputs_and_reports_psnr_and_ssim() {
    let dir = tempfile::tempdir().unwrap();
    let data = small_cifar(dir.path(), 30, 10);
    let run = dir.path().join("run");
    let model = train(
        &data,
        &run,
        &["--epochs", "2", "--noise", "gaussian:0.1", "--shuffle"],
    );
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["settings"]["noise"], "gaussian:0.1");

    let report_args = [
        "denoise",
        "--model",
        s(&model),
        "--dataset",
        "folder",
        "--data-dir",
        s(&data),
        "--noise",
        "gaussian:0.1",
        "--report",
    ];
    let text = cae(&[&report_args[..], &["--out", s(&dir.path().join("report"))]].concat());
    for expected in [
        "noisy input",
        "denoised",
        "clean reconstruction",
        "PSNR gain",
    ] {
        assert!(text.contains(expected), "{expected} missing: {text}");
    }
    let grid = image::open(dir.path().join("report/denoise_grid.png")).unwrap();
    assert_eq!(
        (grid.width(), grid.height()),
        (4 * (10 * 33 + 1), 4 * (3 * 33 + 1))
    );

    let json = cae(&[&report_args[..], &["--json"]].concat());
    let report: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(report["n"], 100);
    let psnr = |row: &str| report[row]["psnr"].as_f64().unwrap();
    let ssim = |row: &str| report[row]["ssim"].as_f64().unwrap();
    // Unclipped noise of sigma 0.1 has an MSE of 0.01, i.e. 20 dB; clipping only removes error.
    assert!(
        (20.0..21.5).contains(&psnr("noisy")),
        "noisy PSNR {}",
        psnr("noisy")
    );
    for row in ["noisy", "denoised", "reconstructed"] {
        assert!(psnr(row).is_finite() && psnr(row) > 10.0, "{row}: {report}");
        assert!(ssim(row) > 0.0 && ssim(row) < 1.0, "{row}: {report}");
    }
    // The same seed gives the same noise, another seed other noise.
    let again = cae(&[&report_args[..], &["--json"]].concat());
    assert_eq!(json, again);
    let other = cae(&[&report_args[..], &["--json", "--seed", "1"]].concat());
    assert_ne!(json, other);
    assert!(report["self_ensembled"].is_null());

    // The self-ensemble adds a row; the single pass stays as it was.
    let ensembled = cae(&[&report_args[..], &["--json", "--self-ensemble"]].concat());
    let ensembled: serde_json::Value = serde_json::from_str(ensembled.trim()).unwrap();
    for row in ["noisy", "denoised", "reconstructed"] {
        assert_eq!(ensembled[row], report[row], "{row}");
    }
    let psnr = ensembled["self_ensembled"]["psnr"].as_f64().unwrap();
    assert!(psnr > 10.0 && psnr != report["denoised"]["psnr"].as_f64().unwrap());
    let text = cae(&[&report_args[..], &["--self-ensemble"]].concat());
    assert!(text.contains("denoised, self-ensemble"), "{text}");

    // Image files: corrupted, denoised, written beside a grid.
    let files = dir.path().join("files");
    let cat = data.join("test/cat/0000.jpg");
    let ship = data.join("test/ship/0000.jpg");
    let stdout = cae(&[
        "denoise",
        "--model",
        s(&model),
        s(&cat),
        s(&ship),
        "--noise",
        "salt-pepper:0.1",
        "--out",
        s(&files),
    ]);
    assert_eq!(stdout.matches("PSNR noisy").count(), 2, "{stdout}");
    for name in [
        "0000_noisy.png",
        "0000_denoised.png",
        "0000_2_noisy.png",
        "0000_2_denoised.png",
    ] {
        let image = image::open(files.join(name)).unwrap();
        assert_eq!((image.width(), image.height()), (32, 32), "{name}");
    }
    let grid = image::open(files.join("grid.png")).unwrap();
    assert_eq!(
        (grid.width(), grid.height()),
        (4 * (2 * 33 + 1), 4 * (3 * 33 + 1))
    );

    let err = cae_error(&["denoise", "--model", s(&model), s(&cat)]);
    assert!(err.contains("--out"), "{err}");
}

#[test]
fn noisy_training_resumes_with_the_same_noise() {
    let dir = tempfile::tempdir().unwrap();
    let data = small_cifar(dir.path(), 12, 2);
    let flags = [
        "--noise",
        "mask:0.3",
        "--shuffle",
        "--latent",
        "16",
        "--channels",
        "4",
    ];
    let whole = dir.path().join("whole");
    let split = dir.path().join("split");
    let clean = dir.path().join("clean");
    train(&data, &whole, &[&flags[..], &["--epochs", "2"]].concat());
    train(&data, &split, &[&flags[..], &["--epochs", "1"]].concat());
    train(
        &data,
        &split,
        &[&flags[..], &["--epochs", "2", "--resume"]].concat(),
    );
    train(
        &data,
        &clean,
        &[
            "--shuffle",
            "--latent",
            "16",
            "--channels",
            "4",
            "--epochs",
            "2",
        ],
    );
    let weights = |run: &Path| std::fs::read(run.join("model.safetensors")).unwrap();
    assert!(
        weights(&whole) == weights(&split),
        "the resumed run drew other noise"
    );
    assert!(
        weights(&whole) != weights(&clean),
        "the noise changed nothing"
    );

    // Resuming with another noise is refused.
    let err = cae_error(&[
        "train",
        "--dataset",
        "folder",
        "--data-dir",
        s(&data),
        "--out",
        s(&split),
        "--noise",
        "mask:0.2",
        "--shuffle",
        "--latent",
        "16",
        "--channels",
        "4",
        "--epochs",
        "3",
        "--resume",
    ]);
    assert!(err.contains("different settings"), "{err}");
    assert!(err.contains(", now mask:0.2"), "{err}");
    assert!(
        !err.contains("saved:"),
        "names the flag instead of printing the JSON: {err}"
    );
    let err = cae_error(&["train", "--noise", "blur:2", "--out", s(&clean)]);
    assert!(err.contains("blur"), "{err}");
}

#[test]
fn anomaly_eval_fit_and_score_on_one_class() {
    let dir = tempfile::tempdir().unwrap();
    let data = small_cifar(dir.path(), 40, 10);
    let out = dir.path().join("anomaly");
    let stdout = cae(&[
        "anomaly",
        "eval",
        "--dataset",
        "folder",
        "--data-dir",
        s(&data),
        "--normal-class",
        "0",
        "--epochs",
        "1",
        "--out",
        s(&out),
    ]);
    assert!(
        stdout.contains("class 0 (airplane): trained on 40 images"),
        "{stdout}"
    );
    let (header, rows) = common::csv_cells(&out.join("auroc.csv"));
    assert_eq!(
        header[5..],
        [
            "mse",
            "relative-mse",
            "ssim",
            "latent-mahalanobis",
            "combined"
        ]
        .map(String::from)
    );
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0][..5],
        ["0", "airplane", "40", "10", "90"].map(String::from)
    );
    for value in &rows[0][5..] {
        let auc: f64 = value.parse().unwrap();
        assert!((0.0..=1.0).contains(&auc), "{value}");
    }
    let run = out.join("class-0-airplane");
    assert_eq!(common::event_files(&run).len(), 1, "TensorBoard by default");
    let (header, scores) = common::csv_cells(&run.join("test_scores.csv"));
    assert_eq!(header[..3], ["source", "label", "normal"].map(String::from));
    assert_eq!(scores.len(), 100, "one score per test image");
    assert_eq!(scores.iter().filter(|r| r[2] == "1").count(), 10);
    assert!(scores.iter().all(|r| (r[1] == "0") == (r[2] == "1")));
    // The AUROC in auroc.csv is the one the scores give.
    let mse_auc = pairwise_auc(&scores, 3);
    let reported: f64 = rows[0][5].parse().unwrap();
    assert!((mse_auc - reported).abs() < 1e-9, "{mse_auc} vs {reported}");
    let combined_auc = pairwise_auc(&scores, 7);
    let reported: f64 = rows[0][9].parse().unwrap();
    assert!(
        (combined_auc - reported).abs() < 1e-9,
        "{combined_auc} vs {reported}"
    );

    // Running again reuses the finished run and reproduces the figures.
    let before = std::fs::read_to_string(out.join("auroc.csv")).unwrap();
    let again = cae(&[
        "anomaly",
        "eval",
        "--dataset",
        "folder",
        "--data-dir",
        s(&data),
        "--normal-class",
        "airplane",
        "--epochs",
        "1",
        "--out",
        s(&out),
    ]);
    assert!(!again.contains("epoch   1/1"), "retrained: {again}");
    assert_eq!(
        before,
        std::fs::read_to_string(out.join("auroc.csv")).unwrap()
    );

    // Fit on the model's own class, then score.
    let model = run.join("model.safetensors");
    let stdout = cae(&[
        "anomaly",
        "fit",
        "--model",
        s(&model),
        "--dataset",
        "folder",
        "--data-dir",
        s(&data),
        "--normal-class",
        "airplane",
        "--fpr",
        "0.1",
    ]);
    assert!(
        stdout.contains("40 training images of class 0 (airplane)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("relative-mse measures from ln(mse) = "),
        "{stdout}"
    );
    assert!(run.join("model.latent.safetensors").is_file());
    assert!(run.join("model.anomaly.json").is_file());
    let csv = dir.path().join("scores.csv");
    cae(&[
        "anomaly",
        "score",
        "--model",
        s(&model),
        "--dataset",
        "folder",
        "--data-dir",
        s(&data),
        "--score",
        "combined",
        "--out",
        s(&csv),
    ]);
    let (header, rows) = common::csv_cells(&csv);
    assert_eq!(
        header,
        ["source", "label", "combined", "anomalous"].map(String::from)
    );
    assert_eq!(rows.len(), 100);
    assert!(rows.iter().all(|r| r[3] == "0" || r[3] == "1"));
    // The calibration images are the 10 airplanes: at most 10% of them may be flagged.
    let flagged_normal = rows.iter().filter(|r| r[1] == "0" && r[3] == "1").count();
    assert!(
        flagged_normal <= 1,
        "{flagged_normal} of 10 normal images flagged"
    );

    // Image files, with the scores that need the fitted statistics.
    let files = [
        data.join("test/cat/0000.jpg"),
        data.join("test/airplane/0003.jpg"),
    ];
    for score in ["latent-mahalanobis", "relative-mse"] {
        cae(&[
            "anomaly",
            "score",
            "--model",
            s(&model),
            s(&files[0]),
            s(&files[1]),
            "--score",
            score,
            "--out",
            s(&csv),
        ]);
        let (header, rows) = common::csv_cells(&csv);
        assert_eq!(header[2], score);
        assert_eq!(rows.len(), 2);
        let values: Vec<f64> = rows.iter().map(|r| r[2].parse().unwrap()).collect();
        assert!(values.iter().all(|v| v.is_finite()), "{values:?}");
        if score == "latent-mahalanobis" {
            assert!(values.iter().all(|&v| v > 0.0), "{values:?}");
        }
    }

    // Without the fitted statistics the latent scores are refused with advice.
    let bare = dir.path().join("bare.safetensors");
    std::fs::copy(&model, &bare).unwrap();
    for score in ["latent-mahalanobis", "relative-mse"] {
        let err = cae_error(&[
            "anomaly",
            "score",
            "--model",
            s(&bare),
            s(&files[0]),
            "--score",
            score,
            "--out",
            s(&csv),
        ]);
        assert!(err.contains("anomaly fit"), "{score}: {err}");
    }
}

/// The AUROC of column `col` of `test_scores.csv` by counting pairs.
fn pairwise_auc(rows: &[Vec<String>], col: usize) -> f64 {
    let values = |normal: &str| -> Vec<f64> {
        rows.iter()
            .filter(|r| r[2] == normal)
            .map(|r| r[col].parse().unwrap())
            .collect()
    };
    common::pairwise_auc(&values("1"), &values("0"))
}

#[test]
fn anomaly_eval_over_all_classes_prints_the_table_and_mean() {
    let dir = tempfile::tempdir().unwrap();
    let data = small_cifar(dir.path(), 8, 3);
    let out = dir.path().join("all");
    let stdout = cae(&[
        "anomaly",
        "eval",
        "--dataset",
        "folder",
        "--data-dir",
        s(&data),
        "--all-classes",
        "--score",
        "ssim",
        "--epochs",
        "1",
        "--latent",
        "16",
        "--channels",
        "4",
        "--test-per-class",
        "2",
        "--no-tensorboard",
        "--out",
        s(&out),
    ]);
    let class_run = out.join("class-0-airplane");
    assert!(class_run.join("model.safetensors").is_file());
    assert_eq!(common::event_files(&class_run), Vec::<String>::new());
    let table = &stdout[stdout.find("ROC AUC").expect("a table")..];
    assert!(
        table.contains("9 truck") && table.contains("mean"),
        "{table}"
    );
    assert!(
        !table.contains("latent-mahalanobis"),
        "--score shows one column: {table}"
    );
    let (_, rows) = common::csv_cells(&out.join("auroc.csv"));
    assert_eq!(rows.len(), CLASSES + 1);
    assert_eq!(rows[CLASSES][0], "mean");
    for col in 5..9 {
        let values: Vec<f64> = rows[..CLASSES]
            .iter()
            .map(|r| r[col].parse().unwrap())
            .collect();
        let mean: f64 = rows[CLASSES][col].parse().unwrap();
        assert!((values.iter().sum::<f64>() / CLASSES as f64 - mean).abs() < 1e-9);
        assert!(values.iter().all(|v| (0.0..=1.0).contains(v)));
    }
    for row in &rows[..CLASSES] {
        assert_eq!(
            row[3..5],
            ["2", "18"].map(String::from),
            "2 normal, 18 anomalous"
        );
    }
}

#[test]
fn generate_and_interpolate_write_pictures_of_the_right_size() {
    let dir = tempfile::tempdir().unwrap();
    let data = small_cifar(dir.path(), 20, 2);
    let model = train(&data, &dir.path().join("run"), &["--epochs", "1"]);
    let grid = dir.path().join("grid.png");
    let generate = |n: &str, seed: &str, out: &Path| {
        cae(&[
            "generate",
            "--model",
            s(&model),
            "--n",
            n,
            "--seed",
            seed,
            "--out",
            s(out),
        ])
    };
    let err = cae_error(&["generate", "--model", s(&model), "--out", s(&grid)]);
    assert!(err.contains("fit-latent"), "{err}");

    let stdout = cae(&[
        "fit-latent",
        "--model",
        s(&model),
        "--dataset",
        "folder",
        "--data-dir",
        s(&data),
    ]);
    assert!(stdout.contains("200 training images"), "{stdout}");
    generate("64", "0", &grid);
    let image = image::open(&grid).unwrap();
    // 8 x 8 cells of 32 pixels, 1 pixel of padding, enlarged 4 times.
    assert_eq!(
        (image.width(), image.height()),
        (4 * (8 * 33 + 1), 4 * (8 * 33 + 1))
    );
    let other = dir.path().join("other.png");
    generate("10", "0", &other);
    let image = image::open(&other).unwrap();
    assert_eq!(
        (image.width(), image.height()),
        (4 * (4 * 33 + 1), 4 * (3 * 33 + 1))
    );
    let again = dir.path().join("again.png");
    generate("64", "0", &again);
    assert_eq!(
        std::fs::read(&grid).unwrap(),
        std::fs::read(&again).unwrap()
    );
    generate("64", "1", &again);
    assert_ne!(
        std::fs::read(&grid).unwrap(),
        std::fs::read(&again).unwrap()
    );
    cae(&[
        "generate",
        "--model",
        s(&model),
        "--n",
        "64",
        "--temperature",
        "0.5",
        "--out",
        s(&again),
    ]);
    assert_ne!(
        std::fs::read(&grid).unwrap(),
        std::fs::read(&again).unwrap()
    );

    let strip = dir.path().join("strip.png");
    cae(&[
        "interpolate",
        "--model",
        s(&model),
        s(&data.join("test/cat/0000.jpg")),
        s(&data.join("test/ship/0001.jpg")),
        "--steps",
        "10",
        "--out",
        s(&strip),
    ]);
    let image = image::open(&strip).unwrap();
    // A, ten decoded points, B in one row.
    assert_eq!(
        (image.width(), image.height()),
        (4 * (12 * 33 + 1), 4 * (33 + 1))
    );
}
