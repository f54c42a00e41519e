//! `cae sweep`: one training run per combination of the swept settings (latent size, channels,
//! learning rate, batch size), each in its own run folder, then a summary table and figures
//! that compare them. The dataset is loaded once for all runs.

pub(crate) mod figures;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use serde::Serialize;

use crate::data::batcher::{denormalize, normalized_batch};
use crate::data::{ImageSet, Splits};
use crate::eval::EVAL_BATCH;
use crate::model::{Autoencoder, ModelConfig};
use crate::optim::OptimiserSettings;
use crate::run_folder::{
    CHECKPOINT_FILE, EPOCHS_COMPARE, EPOCHS_CSV, LOSSES_COMPARE, MODEL_FILE, RECON_COMPARE,
    RunFolder, SUMMARY_FILE, SWEEP_FILE,
};
use crate::settings::TrainSettings;
use crate::training::{Event, Observer, RunOptions};
use crate::{eval::inference, eval::metrics, io::atomic, io::weights};

/// The values to sweep; every combination becomes one run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SweepGrid {
    /// Latent sizes (`--latent`).
    #[serde(rename = "latent")]
    pub latents: Vec<usize>,
    /// Widths of the first convolutions (`--channels`).
    pub channels: Vec<usize>,
    /// Adam learning rates (`--lr`).
    #[serde(rename = "lr")]
    pub lrs: Vec<f64>,
    /// Batch sizes (`--batch-size`).
    #[serde(rename = "batch_size")]
    pub batch_sizes: Vec<usize>,
}

impl SweepGrid {
    #[cfg(test)]
    /// A grid of one point: the settings themselves.
    pub(crate) fn single(settings: &TrainSettings) -> Self {
        Self {
            latents: vec![settings.model.latent],
            channels: vec![settings.model.channels],
            lrs: vec![settings.optimiser.lr],
            batch_sizes: vec![settings.optimiser.batch_size],
        }
    }
}

/// One run of a sweep.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct PlannedRun {
    /// Folder name inside the sweep folder, from the swept values: `latent-200`, `latent-200_lr-0.001`.
    pub name: String,
    /// The same for people: `latent 200`, `latent 200, lr 0.001`.
    pub label: String,
    pub settings: TrainSettings,
}

/// Every combination of `grid` applied to `base`, latent varying slowest. Names and labels
/// mention the settings with more than one value (the latent size when none has).
pub(crate) fn plan(base: &TrainSettings, grid: &SweepGrid) -> Result<Vec<PlannedRun>> {
    let lengths = [
        grid.latents.len(),
        grid.channels.len(),
        grid.lrs.len(),
        grid.batch_sizes.len(),
    ];
    if lengths.contains(&0) {
        bail!("every swept setting needs at least one value");
    }
    let varied = lengths.map(|n| n > 1);
    let mut runs = Vec::new();
    for &latent in &grid.latents {
        for &channels in &grid.channels {
            for &lr in &grid.lrs {
                for &batch_size in &grid.batch_sizes {
                    let mut settings = base.clone();
                    settings.model.latent = latent;
                    settings.model.channels = channels;
                    settings.optimiser = OptimiserSettings { lr, batch_size };
                    settings.validate()?;
                    let values = [
                        ("latent", latent.to_string()),
                        ("channels", channels.to_string()),
                        ("lr", lr.to_string()),
                        ("batch", batch_size.to_string()),
                    ];
                    runs.push(named_run(settings, &values, varied));
                }
            }
        }
    }
    for (i, run) in runs.iter().enumerate() {
        if runs[..i].iter().any(|r| r.name == run.name) {
            bail!("{} is listed twice; give each value once", run.label);
        }
    }
    Ok(runs)
}

fn named_run(
    settings: TrainSettings,
    values: &[(&str, String); 4],
    varied: [bool; 4],
) -> PlannedRun {
    let shown: Vec<&(&str, String)> = if varied.iter().any(|&v| v) {
        values
            .iter()
            .zip(varied)
            .filter(|(_, v)| *v)
            .map(|(kv, _)| kv)
            .collect()
    } else {
        vec![&values[0]]
    };
    let join = |sep_kv: &str, sep: &str| {
        shown
            .iter()
            .map(|(k, v)| format!("{k}{sep_kv}{v}"))
            .collect::<Vec<_>>()
            .join(sep)
    };
    PlannedRun {
        name: join("-", "_"),
        label: join(" ", ", "),
        settings,
    }
}

/// How to run a sweep.
#[derive(Debug, Clone)]
pub struct SweepOptions {
    /// The settings of every run, but for the swept ones, which the grid replaces.
    pub base: TrainSettings,
    /// The values to sweep.
    pub grid: SweepGrid,
    /// The sweep folder (`--out`): a run folder per combination, `summary.csv` and the figures.
    pub out: PathBuf,
    /// Continue an interrupted sweep: skip finished runs, resume half-finished ones.
    pub resume: bool,
    /// Write TensorBoard event files into every run folder.
    pub tensorboard: bool,
}

/// One line of `summary.csv`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SummaryRow {
    /// The run's folder in the sweep folder: `latent-200_lr-0.001`.
    pub run: String,
    /// Size of the latent code.
    pub latent: usize,
    /// Width of the first convolutions.
    pub channels: usize,
    /// Adam learning rate, before any `--lr-drop`.
    pub lr: f64,
    /// Training images per Adam step.
    pub batch_size: usize,
    /// Epochs the run trained.
    pub epochs: usize,
    /// Trainable parameters of the model.
    pub params: usize,
    /// Mean training batch loss of the last epoch (a variational run's: the negative ELBO per value).
    pub train_loss: f64,
    /// Validation MSE of the last epoch, on normalized [-1, 1] pixels (the loss).
    pub val_mse: f64,
    /// Validation PSNR in dB on [0, 1] pixels.
    pub val_psnr: f64,
    /// Mean SSIM of the final model over the validation images, on [0, 1] pixels.
    pub val_ssim: f64,
    /// `train_loss - val_mse`; the more negative, the better the model fits its training images
    /// compared with unseen ones. The training loss is averaged while the weights still change
    /// during the epoch, so it is biased upwards. NaN for a variational run, whose training
    /// loss is the negative ELBO, not an MSE.
    pub gap: f64,
    /// Wall time of the run's epochs (training, validation and the grids), summed over its
    /// epochs across resumes.
    pub seconds: f64,
}

const SUMMARY_HEADER: &str = "run,latent,channels,lr,batch_size,epochs,params,train_loss,val_mse,val_psnr,val_ssim,gap,seconds";

/// Trains every run of the sweep that is not finished yet, then writes `summary.csv`,
/// `losses.png`, `recon_compare.png` and `epochs_compare.png` into the sweep folder.
/// Reports what it does (and every run's training) to `observer`.
pub fn run(options: &SweepOptions, observer: &mut dyn Observer) -> Result<Vec<SummaryRow>> {
    let runs = plan(&options.base, &options.grid)?;
    check_init_fits(&options.base, &runs)?;
    if !options.resume {
        refuse_existing_runs(&options.out, &runs)?;
    }
    crate::io::create_output_dir(&options.out)
        .with_context(|| format!("cannot create the sweep folder {}", options.out.display()))?;
    write_sweep_json(&options.out, options, &runs)?;

    let started = Instant::now();
    let base = &options.base;
    let (splits, source) =
        crate::data::load_located(base.data.dataset, &base.data.data_dir, base.run.seed)?;
    observer.on_event(&Event::SweepData {
        train: base
            .data
            .train_limit
            .map_or(splits.train.len(), |n| n.min(splits.train.len())),
        validation: base
            .data
            .val_limit
            .map_or(splits.test.len(), |n| n.min(splits.test.len())),
        source: &source,
        seconds: started.elapsed().as_secs_f64(),
    });
    for (i, run) in runs.iter().enumerate() {
        observer.on_event(&Event::SweepRun {
            index: i + 1,
            count: runs.len(),
            label: &run.label,
        });
        train_run(
            run,
            &splits,
            &options.out.join(&run.name),
            options.tensorboard,
            observer,
        )?;
    }
    let device = base.run.device.device()?;
    let rows = summarize(&runs, &splits, &options.out, &device)?;
    write_summary_csv(&options.out.join(SUMMARY_FILE), &rows)?;
    Ok(rows)
}

/// `--init` weights fit one model shape only.
fn check_init_fits(base: &TrainSettings, runs: &[PlannedRun]) -> Result<()> {
    let shapes = |r: &PlannedRun| (r.settings.model.latent, r.settings.model.channels);
    if base.model.init.is_some() && runs.iter().any(|r| shapes(r) != shapes(&runs[0])) {
        bail!("--init weights fit one model shape; do not sweep --latent or --channels with it");
    }
    Ok(())
}

fn refuse_existing_runs(out: &Path, runs: &[PlannedRun]) -> Result<()> {
    let existing: Vec<&str> = runs
        .iter()
        .filter(|r| {
            let dir = out.join(&r.name);
            dir.join(CHECKPOINT_FILE).exists() || dir.join(MODEL_FILE).exists()
        })
        .map(|r| r.name.as_str())
        .collect();
    if !existing.is_empty() {
        bail!(
            "{} already holds runs of a sweep ({}); continue it with --resume or choose another --out",
            out.display(),
            existing.join(", ")
        );
    }
    Ok(())
}

/// `sweep.json`: the settings all runs share, the swept values, and the run folders in order.
#[derive(Serialize)]
struct SweepSpec<'a> {
    fixed: serde_json::Value,
    swept: &'a SweepGrid,
    runs: Vec<RunName<'a>>,
}

#[derive(Serialize)]
struct RunName<'a> {
    name: &'a str,
    label: &'a str,
}

fn write_sweep_json(out: &Path, options: &SweepOptions, runs: &[PlannedRun]) -> Result<()> {
    let mut fixed = serde_json::to_value(&options.base)?;
    if let Some(map) = fixed.as_object_mut() {
        for swept in ["latent", "channels", "lr", "batch_size"] {
            map.remove(swept);
        }
    }
    let spec = SweepSpec {
        fixed,
        swept: &options.grid,
        runs: runs
            .iter()
            .map(|r| RunName {
                name: &r.name,
                label: &r.label,
            })
            .collect(),
    };
    atomic::write_bytes(
        &out.join(SWEEP_FILE),
        serde_json::to_string_pretty(&spec)?.as_bytes(),
    )
}

/// Where a run of a sweep stands on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RunProgress {
    NotStarted,
    /// A checkpoint to resume from.
    Partial,
    /// The final model is written and every requested epoch is recorded.
    Finished,
}

pub(crate) fn run_progress(dir: &Path, settings: &TrainSettings) -> Result<RunProgress> {
    if is_finished(dir, settings)? {
        return Ok(RunProgress::Finished);
    }
    if dir.join(CHECKPOINT_FILE).is_file() {
        Ok(RunProgress::Partial)
    } else {
        Ok(RunProgress::NotStarted)
    }
}

fn is_finished(dir: &Path, settings: &TrainSettings) -> Result<bool> {
    let modified = |file: &str| std::fs::metadata(dir.join(file)).and_then(|m| m.modified());
    let (Ok(model), Ok(epochs)) = (modified(MODEL_FILE), modified(EPOCHS_CSV)) else {
        return Ok(false);
    };
    // Training writes the model after the last epoch's records: an older model is left over
    // from an earlier, shorter run of this folder that was then continued and interrupted.
    if model < epochs {
        return Ok(false);
    }
    let folder = RunFolder::open(dir)?;
    if folder.last_epoch().map_or(0, |r| r.epoch) < settings.schedule.epochs {
        return Ok(false);
    }
    check_same_settings(&folder, settings)?;
    Ok(true)
}

/// A finished run is only reused when it was trained as asked now.
fn check_same_settings(folder: &RunFolder, settings: &TrainSettings) -> Result<()> {
    let saved = folder
        .config
        .as_ref()
        .and_then(|c| serde_json::from_value::<TrainSettings>(c["settings"].clone()).ok())
        .with_context(|| {
            format!(
                "{} has no readable settings in config.json",
                folder.dir.display()
            )
        })?;
    // Stricter than resume_conflict, which lets the learning rate change: a finished run is
    // reused as it is, so every training setting must match.
    let mut comparable = saved.clone();
    comparable.schedule.epochs = settings.schedule.epochs;
    comparable.data.data_dir = settings.data.data_dir.clone();
    comparable.run.device = settings.run.device;
    if comparable != *settings {
        bail!(
            "cannot reuse the finished run {}: it was trained with other settings ({}); \
             use the sweep's original flags or another --out",
            folder.dir.display(),
            serde_json::to_string(&saved).unwrap_or_default()
        );
    }
    Ok(())
}

fn train_run(
    run: &PlannedRun,
    splits: &Splits,
    dir: &Path,
    tensorboard: bool,
    observer: &mut dyn Observer,
) -> Result<()> {
    let progress = run_progress(dir, &run.settings)?;
    match progress {
        RunProgress::Finished => {
            observer.on_event(&Event::SweepRunFinishedAlready { run_dir: dir });
            return Ok(());
        }
        RunProgress::Partial => observer.on_event(&Event::SweepRunResumed { run_dir: dir }),
        RunProgress::NotStarted => {}
    }
    let resume = progress == RunProgress::Partial;
    crate::training::train(
        &run.settings,
        splits.clone(),
        dir,
        RunOptions {
            resume,
            tensorboard,
        },
        observer,
    )
    .with_context(|| format!("run {} of the sweep failed", run.name))?;
    Ok(())
}

/// The summary rows, and the figures drawn from the finished runs.
fn summarize(
    runs: &[PlannedRun],
    splits: &Splits,
    out: &Path,
    device: &Device,
) -> Result<Vec<SummaryRow>> {
    let test = &splits.test;
    let showcase = normalized_batch(test, &test.first_of_each_class());
    let val_count = runs[0]
        .settings
        .data
        .val_limit
        .map_or(test.len(), |n| n.min(test.len()));
    let mut rows = Vec::new();
    let mut finals = Vec::new();
    let mut folders = Vec::new();
    for run in runs {
        let dir = out.join(&run.name);
        let folder = RunFolder::open(&dir)?;
        let (model, config) = weights::load_model(&dir.join(MODEL_FILE), device)?;
        let val_ssim = validation_ssim(&model, &config, test, val_count, device)?;
        rows.push(summary_row(run, &folder, &config, val_ssim)?);
        finals.push(inference::reconstruct(&model, &config, &showcase, device));
        folders.push(folder);
    }
    let labels: Vec<String> = runs.iter().map(|r| r.label.clone()).collect();
    let shape = (test.channels, test.height, test.width);
    figures::save_losses_plot(&out.join(LOSSES_COMPARE), &labels, &folders)?;
    figures::save_recon_compare(&out.join(RECON_COMPARE), &showcase, &labels, &finals, shape)?;
    figures::save_epochs_compare(&out.join(EPOCHS_COMPARE), &labels, &folders, shape)?;
    Ok(rows)
}

fn summary_row(
    run: &PlannedRun,
    folder: &RunFolder,
    config: &ModelConfig,
    val_ssim: f64,
) -> Result<SummaryRow> {
    let last = folder
        .last_epoch()
        .with_context(|| format!("{} has no finished epoch", folder.dir.display()))?;
    let s = &run.settings;
    Ok(SummaryRow {
        run: run.name.clone(),
        latent: s.model.latent,
        channels: s.model.channels,
        lr: s.optimiser.lr,
        batch_size: s.optimiser.batch_size,
        epochs: last.epoch,
        params: config.num_params(),
        train_loss: last.train_loss,
        val_mse: last.val_loss,
        val_psnr: last.val_psnr,
        val_ssim,
        gap: if config.variational {
            f64::NAN
        } else {
            last.train_loss - last.val_loss
        },
        seconds: folder.history.epochs.iter().map(|r| r.seconds).sum(),
    })
}

/// Mean SSIM of the reconstructions of the first `count` validation images, on [0, 1]
/// pixels (reconstructions clamped to that range).
pub(crate) fn validation_ssim(
    model: &Autoencoder,
    config: &ModelConfig,
    test: &ImageSet,
    count: usize,
    device: &Device,
) -> Result<f64> {
    let indices: Vec<usize> = (0..count).collect();
    let mut total = 0.0;
    for chunk in indices.chunks(EVAL_BATCH) {
        let input = normalized_batch(test, chunk);
        let output = inference::reconstruct(model, config, &input, device);
        let unit = |v: &[f32]| v.iter().map(|&x| denormalize(x)).collect::<Vec<f32>>();
        let ssim = metrics::mean_ssim(
            &unit(&input),
            &unit(&output),
            config.in_channels,
            config.height,
            config.width,
        )?;
        total += ssim * chunk.len() as f64;
    }
    Ok(total / count.max(1) as f64)
}

pub(crate) fn write_summary_csv(path: &Path, rows: &[SummaryRow]) -> Result<()> {
    atomic::write_with(path, |w| {
        writeln!(w, "{SUMMARY_HEADER}")?;
        for r in rows {
            writeln!(
                w,
                "{},{},{},{},{},{},{},{:.6},{:.6},{:.3},{:.4},{:.6},{:.1}",
                r.run,
                r.latent,
                r.channels,
                r.lr,
                r.batch_size,
                r.epochs,
                r.params,
                r.train_loss,
                r.val_mse,
                r.val_psnr,
                r.val_ssim,
                r.gap,
                r.seconds
            )?;
        }
        Ok(())
    })
}
