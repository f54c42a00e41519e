//! `cae sweep` end to end on real CIFAR-10 images: every run trained, the summary consistent
//! with the runs, the figures made of the right rows, and interrupted sweeps continued.

use crate::common;

use common::{cae, cae_output};

use std::path::Path;

use cae::model::ModelConfig;

/// The pictures' geometry (crates/cae/src/viz): one source pixel of padding around the cells,
/// enlarged four times, and the loss plot's size.
const RECON_PADDING: u32 = 1;
const RECON_SCALE: u32 = 4;
const PLOT_SIZE: (u32, u32) = (1000, 600);
use image::RgbImage;

const SUMMARY_HEADER: &str = "run,latent,channels,lr,batch_size,epochs,params,train_loss,val_mse,val_psnr,val_ssim,gap,seconds";

/// `cae <command> --dataset folder ... --train-limit 256 --val-limit 100 <extra>`.
fn quick_args(command: &str, extra: &[&str]) -> Vec<String> {
    let data = common::cifar_jpg_dir();
    let mut args: Vec<String> = [
        command,
        "--dataset",
        "folder",
        "--data-dir",
        data.to_str().unwrap(),
        "--train-limit",
        "256",
        "--val-limit",
        "100",
    ]
    .map(str::to_owned)
    .to_vec();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn quick(command: &str, extra: &[&str]) -> String {
    let args = quick_args(command, extra);
    cae(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// A sweep of the one latent size 8 into `out`, without its report.
fn sweep_latent_8(out: &str, epochs: &str) {
    quick(
        "sweep",
        &[
            "--latent",
            "8",
            "--epochs",
            epochs,
            "--out",
            out,
            "--no-report",
        ],
    );
}

fn number(cell: &str) -> f64 {
    cell.parse()
        .unwrap_or_else(|_| panic!("`{cell}` is not a number"))
}

fn rgb(path: &Path) -> RgbImage {
    image::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8()
}

/// Row `row` (with the padding above it) of a grid of 32-pixel images, taking only the
/// rightmost `width` pixels (the comparison figures have a label column on the left).
fn band(image: &RgbImage, row: u32, width: u32) -> RgbImage {
    let band = (32 + RECON_PADDING) * RECON_SCALE;
    image::imageops::crop_imm(image, image.width() - width, row * band, width, band).to_image()
}

/// Height of a grid of `rows` rows of 32-pixel images.
fn grid_height(rows: u32) -> u32 {
    (rows * (32 + RECON_PADDING) + RECON_PADDING) * RECON_SCALE
}

#[test]
fn sweep_trains_every_latent_and_compares_them() {
    let dir = tempfile::tempdir().unwrap();
    let sweep = dir.path().join("sweep");
    let stdout = quick(
        "sweep",
        &[
            "--latent",
            "8,16",
            "--epochs",
            "2",
            "--out",
            sweep.to_str().unwrap(),
        ],
    );
    assert_eq!(
        stdout.matches("data: ").count(),
        1,
        "data loaded once: {stdout}"
    );
    assert!(sweep.join("report.html").is_file(), "report by default");

    let (header, rows) = common::csv_cells(&sweep.join("summary.csv"));
    assert_eq!(header.join(","), SUMMARY_HEADER);
    assert_eq!(rows.len(), 2);
    for (row, latent) in rows.iter().zip([8usize, 16]) {
        let run = sweep.join(format!("latent-{latent}"));
        assert_eq!(row[0], format!("latent-{latent}"));
        assert_eq!(number(&row[1]) as usize, latent);
        assert!(run.join("model.safetensors").is_file());
        let config = ModelConfig {
            latent,
            ..ModelConfig::default()
        };
        assert_eq!(number(&row[6]) as usize, config.num_params());

        // The last epoch of the run's own epochs.csv.
        let (_, epochs) = common::csv_cells(&run.join("epochs.csv"));
        assert_eq!(epochs.len(), 2);
        let last = &epochs[1];
        let (train_loss, val_mse) = (number(&row[7]), number(&row[8]));
        assert!((train_loss - number(&last[1])).abs() < 1e-6);
        assert!((val_mse - number(&last[2])).abs() < 1e-6);
        assert!((number(&row[9]) - number(&last[3])).abs() < 1e-3);
        assert!(
            (number(&row[11]) - (train_loss - val_mse)).abs() < 2e-6,
            "gap"
        );
        let seconds: f64 = epochs.iter().map(|e| number(&e[4])).sum();
        assert!((number(&row[12]) - seconds).abs() < 0.1);
        let ssim = number(&row[10]);
        assert!(ssim > 0.0 && ssim < 0.9, "SSIM {ssim} after a few batches");

        // `cae eval` agrees on the same 100 validation images.
        let data = common::cifar_jpg_dir();
        let model = run.join("model.safetensors");
        let json = cae(&[
            "eval",
            "--model",
            model.to_str().unwrap(),
            "--dataset",
            "folder",
            "--data-dir",
            data.to_str().unwrap(),
            "--val-limit",
            "100",
            "--json",
        ]);
        let eval: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
        assert!((eval["mse"].as_f64().unwrap() - val_mse).abs() < 1e-6);
    }

    let losses = rgb(&sweep.join("losses.png"));
    assert_eq!((losses.width(), losses.height()), PLOT_SIZE);

    let grid_width = (10 * (32 + RECON_PADDING) + RECON_PADDING) * RECON_SCALE;
    let compare = rgb(&sweep.join("recon_compare.png"));
    assert_eq!(compare.height(), grid_height(3), "originals and two runs");
    assert!(
        compare.width() > grid_width,
        "a label column left of the grid"
    );

    // epochs_compare is cut from the runs' own grids: originals, then epoch 1 and epoch 2 of
    // each run.
    let epochs = rgb(&sweep.join("epochs_compare.png"));
    assert_eq!(epochs.height(), grid_height(5));
    let expected = [
        ("latent-8/recon_epoch_01.png", 0),
        ("latent-8/recon_epoch_01.png", 1),
        ("latent-8/recon_epoch_02.png", 1),
        ("latent-16/recon_epoch_01.png", 1),
        ("latent-16/recon_epoch_02.png", 1),
    ];
    for (row, (file, source_row)) in expected.into_iter().enumerate() {
        let source = rgb(&sweep.join(file));
        assert!(
            band(&epochs, row as u32, grid_width) == band(&source, source_row, grid_width),
            "row {row} of epochs_compare.png is not row {source_row} of {file}"
        );
    }
    // The final rows of recon_compare come from the final models: as the last epoch's grid
    // shows them (up to the shared min-max normalisation), and closer to their own run's grid
    // than to the other run's.
    let last_rows = ["latent-8", "latent-16"].map(|run| {
        band(
            &rgb(&sweep.join(run).join("recon_epoch_02.png")),
            1,
            grid_width,
        )
    });
    for (row, run) in [(1usize, "latent-8"), (2, "latent-16")] {
        let ours = band(&compare, row as u32, grid_width);
        let same = mean_difference(&ours, &last_rows[row - 1]);
        let other = mean_difference(&ours, &last_rows[2 - row]);
        assert!(same < 4.0, "{run}: mean difference {same} levels");
        assert!(
            same < other,
            "{run}: {same} levels from its own grid, {other} from the other run's"
        );
    }
}

fn mean_difference(a: &RgbImage, b: &RgbImage) -> f64 {
    let sum: f64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| f64::from(x.abs_diff(*y)))
        .sum();
    sum / a.as_raw().len() as f64
}

#[test]
fn resume_skips_finished_runs_and_continues_a_half_finished_one() {
    let dir = tempfile::tempdir().unwrap();
    let sweep = dir.path().join("sweep");
    let out = sweep.to_str().unwrap();
    // As if the sweep had been stopped during its second run: latent 8 finished, latent 16
    // after its first epoch.
    sweep_latent_8(out, "2");
    let half = sweep.join("latent-16");
    quick(
        "train",
        &[
            "--latent",
            "16",
            "--epochs",
            "1",
            "--out",
            half.to_str().unwrap(),
            "--no-report",
        ],
    );
    let finished_model = std::fs::read(sweep.join("latent-8/model.safetensors")).unwrap();
    let (_, half_epochs) = common::csv_cells(&half.join("epochs.csv"));

    let again = quick_args(
        "sweep",
        &["--latent", "8,16", "--epochs", "2", "--out", out],
    );
    let output = cae_output(&again.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        !output.status.success(),
        "a sweep folder with runs needs --resume"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--resume") && stderr.contains("latent-8"),
        "{stderr}"
    );

    let stdout = quick(
        "sweep",
        &[
            "--latent", "8,16", "--epochs", "2", "--out", out, "--resume",
        ],
    );
    assert!(stdout.contains("latent-8; skipped"), "{stdout}");
    assert!(stdout.contains("resuming"), "{stdout}");
    assert!(
        !stdout.contains("epoch   1/2"),
        "no epoch is trained twice: {stdout}"
    );
    assert_eq!(stdout.matches("epoch   2/2").count(), 1, "{stdout}");
    assert_eq!(
        std::fs::read(sweep.join("latent-8/model.safetensors")).unwrap(),
        finished_model,
        "the finished run is left alone"
    );
    let (_, epochs) = common::csv_cells(&half.join("epochs.csv"));
    assert_eq!(epochs.len(), 2);
    assert_eq!(epochs[0], half_epochs[0], "epoch 1 kept, not retrained");
    let (_, rows) = common::csv_cells(&sweep.join("summary.csv"));
    let runs: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(runs, ["latent-8", "latent-16"]);
    assert!(rows.iter().all(|r| r[5] == "2"), "both runs at epoch 2");
    assert!(sweep.join("report.html").is_file());

    // Both runs are finished now: the same sweep again trains nothing. Records newer than the
    // model mean the run went on after that model was written: then the sweep resumes that
    // run from its checkpoint instead of taking it as finished.
    let again = || {
        quick(
            "sweep",
            &[
                "--latent", "8,16", "--epochs", "2", "--out", out, "--resume",
            ],
        )
    };
    let stdout = again();
    assert!(stdout.contains("latent-16; skipped"), "{stdout}");
    std::thread::sleep(std::time::Duration::from_millis(20));
    let records = std::fs::read(half.join("epochs.csv")).unwrap();
    std::fs::write(half.join("epochs.csv"), records).unwrap();
    let stdout = again();
    assert!(stdout.contains("latent-8; skipped"), "{stdout}");
    assert!(stdout.contains("latent-16 from its checkpoint"), "{stdout}");
}

#[test]
fn a_finished_run_with_other_settings_is_not_reused() {
    let dir = tempfile::tempdir().unwrap();
    let sweep = dir.path().join("sweep");
    let out = sweep.to_str().unwrap();
    sweep_latent_8(out, "1");
    let again = quick_args(
        "sweep",
        &[
            "--latent", "8", "--epochs", "1", "--lr", "0.01", "--out", out, "--resume",
        ],
    );
    let output = cae_output(&again.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("other settings"), "{stderr}");
}
