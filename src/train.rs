//! The training loop: epochs of Adam steps on MSE, validation, and every artifact of a run.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand::rngs::Xoshiro256PlusPlus;
use rand::seq::SliceRandom;
use serde::Serialize;

use crate::checkpoint::{self, RunState};
use crate::data::batcher::{Prefetcher, normalized_batch};
use crate::data::{ImageSet, Splits};
use crate::eval::{EVAL_BATCH, evaluate};
use crate::history::{EpochRecord, History};
use crate::model::{Autoencoder, ModelConfig};
use crate::optim::{Adam, AdamConfig};
use crate::settings::{BURN_VERSION, TrainSettings};
use crate::{atomic, init, viz, weights};

pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
pub const MODEL_FILE: &str = "model.safetensors";

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    pub run_dir: PathBuf,
    pub last: EpochRecord,
    pub history: History,
}

/// The model configuration a dataset and the settings call for.
pub fn model_config(settings: &TrainSettings, train: &ImageSet) -> ModelConfig {
    ModelConfig {
        latent: settings.latent,
        channels: settings.channels,
        in_channels: train.channels,
        height: train.height,
        width: train.width,
    }
}

/// Trains as `settings` say on `splits`, writing every artifact into `run_dir`.
pub fn train(
    settings: &TrainSettings,
    mut splits: Splits,
    run_dir: &Path,
    resume: bool,
    show_progress: bool,
) -> Result<TrainOutcome> {
    settings.validate()?;
    // The showcase is the first test image of every class, even when --val-limit cuts classes off.
    let showcase = splits.test.first_of_each_class();
    let showcase_pixels = normalized_batch(&splits.test, &showcase);
    if let Some(n) = settings.train_limit {
        splits.train.truncate(n);
    }
    if let Some(n) = settings.val_limit {
        splits.test.truncate(n);
    }
    if splits.train.is_empty() || splits.test.is_empty() {
        bail!(
            "the dataset has {} training and {} validation images; both must be non-empty",
            splits.train.len(),
            splits.test.len()
        );
    }
    std::fs::create_dir_all(run_dir)
        .with_context(|| format!("cannot create run folder {}", run_dir.display()))?;
    let device = settings.device.device()?.autodiff();
    let config = model_config(settings, &splits.train);
    config.validate()?;
    let checkpoint_path = run_dir.join(CHECKPOINT_FILE);

    let (mut model, mut adam, mut state) = if resume {
        let restored = checkpoint::load(&checkpoint_path, &device)
            .with_context(|| format!("cannot resume the run in {}", run_dir.display()))?;
        if let Some(conflict) = settings.resume_conflict(&restored.state.settings) {
            bail!("cannot resume {}: {conflict}", run_dir.display());
        }
        if restored.config != config {
            bail!(
                "cannot resume {}: the checkpoint's model {:?} does not fit this dataset ({:?})",
                run_dir.display(),
                restored.config,
                config
            );
        }
        let mut state = restored.state;
        state.settings = settings.clone();
        (restored.model, restored.adam, state)
    } else {
        if checkpoint_path.exists() {
            bail!(
                "{} already holds a run; continue it with --resume or choose another --out",
                run_dir.display()
            );
        }
        let model = initial_model(settings, &config, &device)?;
        let adam = Adam::new(AdamConfig {
            lr: settings.lr,
            ..AdamConfig::default()
        });
        let state = RunState {
            settings: settings.clone(),
            epochs_done: 0,
            adam_step: 0,
            adam: adam.config,
            history: History::default(),
        };
        (model, adam, state)
    };
    write_config_json(&run_dir.join("config.json"), settings, &config)?;

    let train_set = Arc::new(splits.train);
    let test_set = Arc::new(splits.test);

    for epoch in state.epochs_done + 1..=settings.epochs {
        let started = Instant::now();
        let order = epoch_order(train_set.len(), settings, epoch);
        let (next_model, batch_losses) = train_epoch(
            model,
            &mut adam,
            &train_set,
            order,
            settings.batch_size,
            &device,
            epoch,
            show_progress,
        )?;
        model = next_model;
        let train_seconds = started.elapsed().as_secs_f64();

        let valid = model.valid();
        let inner = device.clone().inner();
        let bar = progress_bar(show_progress, test_set.len(), format!("epoch {epoch} val"));
        let mut val_losses = Vec::new();
        let quality = evaluate(&valid, &test_set, &inner, EVAL_BATCH, |_, loss, n| {
            val_losses.push(loss);
            bar.inc(n as u64);
            bar.set_message(format!("loss {loss:.5}"));
        });
        bar.finish_and_clear();
        save_showcase(
            &run_dir.join(format!("recon_epoch_{epoch:02}.png")),
            &valid,
            &config,
            &showcase_pixels,
            showcase.len(),
            &inner,
        )?;

        let train_loss = batch_losses.iter().sum::<f64>() / batch_losses.len() as f64;
        let record = EpochRecord {
            epoch,
            train_loss,
            val_loss: quality.mse,
            val_psnr: quality.psnr,
            seconds: started.elapsed().as_secs_f64(),
            images_per_second: train_set.len() as f64 / train_seconds,
        };
        println!(
            "epoch {epoch:>3}/{}  train loss {:.6}  val loss {:.6}  val PSNR {:.2} dB  {:.1} s  {:.0} img/s",
            settings.epochs,
            record.train_loss,
            record.val_loss,
            record.val_psnr,
            record.seconds,
            record.images_per_second
        );
        state.history.train_batches.push(batch_losses);
        state.history.val_batches.push(val_losses);
        state.history.epochs.push(record);
        state.epochs_done = epoch;
        state.adam_step = adam.step;
        state
            .history
            .write_metrics_csv(&run_dir.join("metrics.csv"))?;
        state
            .history
            .write_epochs_csv(&run_dir.join("epochs.csv"))?;
        viz::loss_plot::save_loss_plot(&run_dir.join("loss.png"), &state.history.loss_history())?;
        checkpoint::save(&checkpoint_path, &model, &config, &adam, &state)?;
    }
    weights::save_model(&run_dir.join(MODEL_FILE), &model, &config)?;
    let last = state
        .history
        .epochs
        .last()
        .cloned()
        .context("no epoch was run")?;
    Ok(TrainOutcome {
        run_dir: run_dir.to_path_buf(),
        last,
        history: state.history,
    })
}

fn initial_model(
    settings: &TrainSettings,
    config: &ModelConfig,
    device: &Device,
) -> Result<Autoencoder> {
    let dict = match &settings.init {
        Some(path) => {
            let file = weights::read_weights(path)?;
            if let Some(saved) = file.config
                && saved != *config
            {
                bail!(
                    "--init {}: the weights are for {saved:?}, but this run needs {config:?}",
                    path.display()
                );
            }
            weights::check_state_dict(config, &file.tensors)
                .with_context(|| format!("--init {}", path.display()))?;
            file.tensors
        }
        None => init::seed_state_dict(config, settings.seed),
    };
    weights::build_model(config, &dict, device)
}

/// Training order of an epoch: the dataset order, or with `--shuffle` a permutation that depends
/// only on the seed and the epoch (so a resumed run sees the same order).
fn epoch_order(n: usize, settings: &TrainSettings, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if settings.shuffle {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(
            settings.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        order.shuffle(&mut rng);
    }
    order
}

/// One training step: forward, MSE, backward, Adam. Returns the updated model and the loss.
pub fn train_step(model: Autoencoder, adam: &mut Adam, batch: Tensor<4>) -> (Autoencoder, f64) {
    let output = model.reconstruct(batch.clone());
    let loss = (output - batch).square().mean();
    let loss_value = f64::from(loss.clone().into_scalar::<f32>());
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    (adam.step(model, grads), loss_value)
}

#[allow(clippy::too_many_arguments)]
fn train_epoch(
    mut model: Autoencoder,
    adam: &mut Adam,
    set: &Arc<ImageSet>,
    order: Vec<usize>,
    batch_size: usize,
    device: &Device,
    epoch: usize,
    show_progress: bool,
) -> Result<(Autoencoder, Vec<f64>)> {
    let shape = [set.channels, set.height, set.width];
    let bar = progress_bar(show_progress, set.len(), format!("epoch {epoch} train"));
    let started = Instant::now();
    let mut losses = Vec::with_capacity(order.len().div_ceil(batch_size));
    for (i, batch) in Prefetcher::new(set.clone(), order, batch_size, 3).enumerate() {
        let x = Tensor::<4>::from_data(
            TensorData::new(batch.data, [batch.len, shape[0], shape[1], shape[2]]),
            device,
        );
        let (next, loss) = train_step(model, adam, x);
        model = next;
        if !loss.is_finite() {
            bail!(
                "training diverged: the loss is {loss} at epoch {epoch}, batch {}; lower --lr (the last checkpoint is kept)",
                i + 1
            );
        }
        losses.push(loss);
        bar.inc(batch.len as u64);
        let rate = bar.position() as f64 / started.elapsed().as_secs_f64().max(1e-9);
        bar.set_message(format!("loss {loss:.5}  {rate:.0} img/s"));
    }
    bar.finish_and_clear();
    Ok((model, losses))
}

fn progress_bar(show: bool, len: usize, prefix: String) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>16} [{bar:30}] {pos}/{len} {msg} ETA {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(prefix);
    bar
}

/// Saves the first test image of every class above its reconstruction.
fn save_showcase(
    path: &Path,
    model: &Autoencoder,
    config: &ModelConfig,
    pixels: &[f32],
    n: usize,
    device: &Device,
) -> Result<()> {
    let x = Tensor::<4>::from_data(
        TensorData::new(
            pixels.to_vec(),
            [n, config.in_channels, config.height, config.width],
        ),
        device,
    );
    let y = model
        .reconstruct(x)
        .into_data()
        .try_into_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let size = config.in_channels * config.height * config.width;
    let originals: Vec<Vec<f32>> = pixels.chunks(size).map(<[f32]>::to_vec).collect();
    let recons: Vec<Vec<f32>> = y.chunks(size).map(<[f32]>::to_vec).collect();
    viz::grid::save_recon_grid(
        path,
        &originals,
        &recons,
        config.in_channels,
        config.height,
        config.width,
    )
}

#[derive(Serialize)]
struct ConfigJson<'a> {
    settings: &'a TrainSettings,
    model: &'a ModelConfig,
    params: usize,
    adam: AdamConfig,
    normalization: Normalization,
    versions: Versions,
}

#[derive(Serialize)]
struct Normalization {
    mean: f32,
    std: f32,
}

#[derive(Serialize)]
struct Versions {
    cae: &'static str,
    burn: &'static str,
}

fn write_config_json(path: &Path, settings: &TrainSettings, config: &ModelConfig) -> Result<()> {
    let json = ConfigJson {
        settings,
        model: config,
        params: config.num_params(),
        adam: AdamConfig {
            lr: settings.lr,
            ..AdamConfig::default()
        },
        normalization: Normalization {
            mean: crate::data::batcher::MEAN,
            std: crate::data::batcher::STD,
        },
        versions: Versions {
            cae: env!("CARGO_PKG_VERSION"),
            burn: BURN_VERSION,
        },
    };
    atomic::write_bytes(path, serde_json::to_string_pretty(&json)?.as_bytes())
}
