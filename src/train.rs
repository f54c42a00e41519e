//! The training loop: epochs of Adam steps on MSE, validation, and every artifact of a run.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand::rngs::Xoshiro256PlusPlus;
use rand::seq::SliceRandom;
use serde::Serialize;

use crate::apps::noise::TrainingNoise;
use crate::checkpoint::{self, RunState};
use crate::data::batcher::{Prefetcher, normalized_batch};
use crate::data::{ImageSet, Splits};
use crate::eval::{EVAL_BATCH, evaluate};
use crate::history::{EpochRecord, History};
use crate::lock::RunLock;
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
    // Held until training returns: a second process on this folder fails instead of mixing files.
    let _lock = RunLock::acquire(run_dir)?;
    atomic::remove_stale_temps(run_dir)?;
    let device = settings.device.device()?.autodiff();
    let config = model_config(settings, &splits.train);
    config.validate()?;
    let checkpoint_path = run_dir.join(CHECKPOINT_FILE);

    let (mut model, mut adam, mut state) = if resume && has_checkpoint(&checkpoint_path, run_dir) {
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
        let (adam, mut state) = (restored.adam, restored.state);
        // The epoch loop sets the rate itself, and says so when it changes.
        if settings.lr != state.settings.lr {
            println!(
                "resuming with --lr {} (the run so far used {})",
                settings.lr, state.settings.lr
            );
        }
        state.settings = settings.clone();
        (restored.model, adam, state)
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
        let lr = settings.lr_at(epoch);
        if adam.config.lr != lr {
            println!("epoch {epoch}: learning rate {lr} (was {})", adam.config.lr);
            adam.config.lr = lr;
            state.adam.lr = lr;
        }
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
            settings.noise.map(|spec| TrainingNoise {
                spec,
                seed: settings.seed,
            }),
        )
        .map_err(|d| d.into_error(run_dir, state.epochs_done))?;
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
        if let Some(divergence) = Divergence::in_validation(epoch, &val_losses, quality.mse) {
            return Err(divergence.into_error(run_dir, state.epochs_done));
        }
        let not_saved = || {
            format!(
                "cannot save epoch {epoch} ({})",
                what_is_kept(epoch - 1, run_dir)
            )
        };
        save_showcase(
            &run_dir.join(format!("recon_epoch_{epoch:02}.png")),
            &valid,
            &config,
            &showcase_pixels,
            showcase.len(),
            &inner,
        )
        .with_context(not_saved)?;

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
        save_epoch_files(run_dir, &model, &config, &adam, &state).with_context(not_saved)?;
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

/// Writes the files of a finished epoch, the checkpoint last: until it is replaced, the run
/// resumes from the epoch before, and the other files are rewritten then.
fn save_epoch_files(
    run_dir: &Path,
    model: &Autoencoder,
    config: &ModelConfig,
    adam: &Adam,
    state: &RunState,
) -> Result<()> {
    let history = &state.history;
    history.write_metrics_csv(&run_dir.join("metrics.csv"))?;
    history.write_epochs_csv(&run_dir.join("epochs.csv"))?;
    viz::loss_plot::save_loss_plot(&run_dir.join("loss.png"), &history.loss_history())?;
    checkpoint::save(&run_dir.join(CHECKPOINT_FILE), model, config, adam, state)
}

/// Which checkpoint a run that stops now leaves behind, for error messages.
fn what_is_kept(epochs_done: usize, run_dir: &Path) -> String {
    if epochs_done == 0 {
        "no epoch had finished, so there is no checkpoint".to_string()
    } else {
        format!(
            "the checkpoint of epoch {epochs_done} in {} is kept",
            run_dir.display()
        )
    }
}

/// Whether `--resume` has a checkpoint to go on from. A run killed before its first epoch
/// ended has none, and then starts from scratch (saying so): nothing of it was kept.
fn has_checkpoint(path: &Path, run_dir: &Path) -> bool {
    if path.exists() {
        return true;
    }
    println!(
        "no checkpoint in {} yet (no epoch of it has finished): starting from scratch",
        run_dir.display()
    );
    false
}

/// Where the loss stopped being a finite number.
#[derive(Debug)]
struct Divergence {
    epoch: usize,
    /// 1-based.
    batch: usize,
    loss: f64,
    validation: bool,
}

impl Divergence {
    /// The first non-finite validation batch loss, or the mean when only that overflowed.
    fn in_validation(epoch: usize, batch_losses: &[f64], mean: f64) -> Option<Self> {
        let found = batch_losses.iter().position(|l| !l.is_finite());
        let (batch, loss) = match found {
            Some(i) => (i + 1, batch_losses[i]),
            None if !mean.is_finite() => (batch_losses.len(), mean),
            None => return None,
        };
        Some(Self {
            epoch,
            batch,
            loss,
            validation: true,
        })
    }

    /// The error the run stops with: where, what survives, and how to go on.
    fn into_error(self, run_dir: &Path, epochs_done: usize) -> anyhow::Error {
        let phase = if self.validation {
            "validation batch"
        } else {
            "training batch"
        };
        let advice = if epochs_done == 0 {
            "start again with a lower --lr"
        } else {
            "go on from it with --resume and a lower --lr"
        };
        anyhow!(
            "training diverged: the loss is {} at epoch {}, {phase} {}; {}; {advice}",
            self.loss,
            self.epoch,
            self.batch,
            what_is_kept(epochs_done, run_dir)
        )
    }
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
    train_step_pair(model, adam, batch.clone(), batch)
}

/// [`train_step`] from `input` towards `target`: a denoiser gets noisy inputs and clean targets.
pub fn train_step_pair(
    model: Autoencoder,
    adam: &mut Adam,
    input: Tensor<4>,
    target: Tensor<4>,
) -> (Autoencoder, f64) {
    let output = model.reconstruct(input);
    let loss = (output - target).square().mean();
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
    noise: Option<TrainingNoise>,
) -> Result<(Autoencoder, Vec<f64>), Divergence> {
    let shape = [set.channels, set.height, set.width];
    let bar = progress_bar(show_progress, set.len(), format!("epoch {epoch} train"));
    let started = Instant::now();
    let mut losses = Vec::with_capacity(order.len().div_ceil(batch_size));
    for (i, batch) in Prefetcher::new(set.clone(), order, batch_size, 3).enumerate() {
        let dims = [batch.len, shape[0], shape[1], shape[2]];
        let noisy = noise.map(|n| n.corrupt_batch(&batch.data, epoch, i));
        let x = Tensor::<4>::from_data(TensorData::new(batch.data, dims), device);
        let input = match noisy {
            Some(data) => Tensor::<4>::from_data(TensorData::new(data, dims), device),
            None => x.clone(),
        };
        let (next, loss) = train_step_pair(model, adam, input, x);
        model = next;
        if !loss.is_finite() {
            return Err(Divergence {
                epoch,
                batch: i + 1,
                loss,
                validation: false,
            });
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
