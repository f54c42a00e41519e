//! The [`Trainer`]: one training run, from its start (or resumption) through its epochs to the
//! final model, each step a method: [`Trainer::start`], then per epoch
//! [`Trainer::train_epoch`], [`Trainer::validate`] and [`Trainer::save_epoch`] (which
//! [`Trainer::run_epoch`] chains), and [`Trainer::finish`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};

use super::divergence::{Divergence, Interrupted, what_is_kept};
use super::events::{Event, Observer, Phase};
use super::step::{epoch_order, train_step_pair, train_step_variational};
use crate::data::augment::TrainingNoise;
use crate::data::batcher::{Prefetcher, normalized_batch};
use crate::data::{ImageSet, Splits};
use crate::device::Backend;
use crate::eval::{EVAL_BATCH, Quality, evaluate};
use crate::history::{EpochRecord, History};
use crate::model::{Autoencoder, ModelConfig};
use crate::optim::{Adam, AdamConfig};
use crate::run_folder::checkpoint::{self, RunState};
use crate::run_folder::{CHECKPOINT_FILE, RunWriter, recon_file};
use crate::settings::TrainSettings;
use crate::{init, io::weights, variational, viz};

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    /// The run folder.
    pub run_dir: PathBuf,
    /// The figures of the last epoch.
    pub last: EpochRecord,
    /// Every epoch's figures and batch losses, those before a resume included.
    pub history: History,
}

/// The model configuration a dataset and the settings call for.
pub fn model_config(settings: &TrainSettings, train: &ImageSet) -> ModelConfig {
    ModelConfig {
        latent: settings.model.latent,
        channels: settings.model.channels,
        in_channels: train.channels,
        height: train.height,
        width: train.width,
        variational: settings.model.variational,
    }
}

/// How a run starts, besides its settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunOptions {
    /// Continue the run in the folder from its checkpoint.
    pub resume: bool,
    /// Write TensorBoard event files into the run folder as it goes.
    pub tensorboard: bool,
}

impl Default for RunOptions {
    /// A new run, with TensorBoard event files.
    fn default() -> Self {
        Self {
            resume: false,
            tensorboard: true,
        }
    }
}

/// Trains as `settings` say on `splits`, writing every artifact into `run_dir`: the whole run,
/// [`Trainer::start`] then [`Trainer::run`].
pub fn train(
    settings: &TrainSettings,
    splits: Splits,
    run_dir: &Path,
    options: RunOptions,
    observer: &mut dyn Observer,
) -> Result<TrainOutcome> {
    Trainer::start(settings, splits, run_dir, options, observer)?.run(observer)
}

/// Why an epoch ended before its end.
enum EpochStop {
    Diverged(Divergence),
    /// After training batch `batch` (1-based), or after validation when `None`.
    Interrupted {
        epoch: usize,
        batch: Option<usize>,
    },
}

/// The first test image of every class, shown before and after every epoch.
struct Showcase {
    pixels: Vec<f32>,
    images: usize,
}

/// A training run in progress: the model, Adam, the run's state and its folder.
pub struct Trainer {
    settings: TrainSettings,
    config: ModelConfig,
    /// Between steps always `Some`: Burn's optimiser step takes the model by value.
    model: Option<Autoencoder>,
    adam: Adam,
    state: RunState,
    folder: RunWriter,
    device: Device,
    train_set: Arc<ImageSet>,
    test_set: Arc<ImageSet>,
    showcase: Showcase,
}

impl Trainer {
    /// Opens `run_dir` (locked while the trainer lives) and starts a run there, or with
    /// `options.resume` continues the one its checkpoint holds.
    pub fn start(
        settings: &TrainSettings,
        mut splits: Splits,
        run_dir: &Path,
        options: RunOptions,
        observer: &mut dyn Observer,
    ) -> Result<Self> {
        settings.validate()?;
        // The showcase is the first test image of every class, even when --val-limit cuts
        // classes off.
        let showcase_images = splits.test.first_of_each_class();
        let showcase = Showcase {
            pixels: normalized_batch(&splits.test, &showcase_images),
            images: showcase_images.len(),
        };
        if let Some(n) = settings.data.train_limit {
            splits.train.truncate(n);
        }
        if let Some(n) = settings.data.val_limit {
            splits.test.truncate(n);
        }
        if splits.train.is_empty() || splits.test.is_empty() {
            bail!(
                "the dataset has {} training and {} validation images; both must be non-empty",
                splits.train.len(),
                splits.test.len()
            );
        }
        let mut folder = RunWriter::open(run_dir)?;
        let device = settings.run.device.device()?.autodiff();
        let config = model_config(settings, &splits.train);
        config.validate()?;
        if settings.run.device == Backend::Flex {
            super::memory::check_fits(
                &config,
                settings.optimiser.batch_size.min(splits.train.len()),
            )?;
        }

        let (model, adam, state) = if options.resume && folder.resumable(observer)? {
            resumed(settings, &config, &folder, &device, observer)?
        } else {
            folder.refuse_existing_run()?;
            fresh(settings, &config, &device)?
        };
        folder.write_config_json(settings, &config)?;
        if options.tensorboard {
            let per_epoch = splits.train.len().div_ceil(settings.optimiser.batch_size);
            folder.start_tensorboard((state.epochs_done * per_epoch) as i64 + 1)?;
        }
        Ok(Self {
            settings: settings.clone(),
            config,
            model: Some(model),
            adam,
            state,
            folder,
            device,
            train_set: Arc::new(splits.train),
            test_set: Arc::new(splits.test),
            showcase,
        })
    }

    /// Runs the epochs not done yet, then saves the final model.
    pub fn run(mut self, observer: &mut dyn Observer) -> Result<TrainOutcome> {
        for epoch in self.state.epochs_done + 1..=self.settings.schedule.epochs {
            self.run_epoch(epoch, observer)?;
        }
        self.finish()
    }

    /// One epoch: the learning rate it runs at, training, validation, and its files.
    pub(crate) fn run_epoch(
        &mut self,
        epoch: usize,
        observer: &mut dyn Observer,
    ) -> Result<EpochRecord> {
        self.set_learning_rate(epoch, observer);
        let started = Instant::now();
        let train_losses = self
            .train_epoch(epoch, observer)
            .map_err(|stop| self.stop_error(stop))?;
        let train_seconds = started.elapsed().as_secs_f64();
        let (quality, val_losses) = self.validate(epoch, observer)?;
        let record = EpochRecord {
            epoch,
            train_loss: train_losses.iter().sum::<f64>() / train_losses.len() as f64,
            val_loss: quality.mse,
            val_psnr: quality.psnr,
            seconds: 0.0,
            images_per_second: self.train_set.len() as f64 / train_seconds,
        };
        self.save_epoch(record, started, train_losses, val_losses, observer)
    }

    /// The epoch's learning rate from `--lr` and `--lr-drop`, announced when it changes.
    fn set_learning_rate(&mut self, epoch: usize, observer: &mut dyn Observer) {
        let lr = self.settings.lr_at(epoch);
        if self.adam.config.lr != lr {
            observer.on_event(&Event::LrChanged {
                epoch,
                lr,
                previous: self.adam.config.lr,
            });
            self.adam.config.lr = lr;
            self.state.adam.lr = lr;
        }
    }

    /// The Adam steps of one epoch, with `--noise` applied to the inputs; every batch's loss
    /// (the MSE, or a variational model's negative ELBO per value).
    fn train_epoch(
        &mut self,
        epoch: usize,
        observer: &mut dyn Observer,
    ) -> Result<Vec<f64>, EpochStop> {
        let set = &self.train_set;
        let order = epoch_order(set.len(), &self.settings, epoch);
        let batch_size = self.settings.optimiser.batch_size;
        let noise = self.settings.data.noise.map(|spec| TrainingNoise {
            spec,
            seed: self.settings.run.seed,
        });
        let shape = [set.channels, set.height, set.width];
        let mut model = self.model.take().expect("the trainer holds its model");
        observer.on_event(&Event::PhaseStarted {
            epoch,
            phase: Phase::Train,
            images: set.len(),
        });
        let per_epoch = order.len().div_ceil(batch_size);
        let mut losses = Vec::with_capacity(per_epoch);
        for (i, batch) in Prefetcher::new(set.clone(), order, batch_size, 3).enumerate() {
            let dims = [batch.len, shape[0], shape[1], shape[2]];
            let noisy = noise.map(|n| n.corrupt_batch(&batch.data, epoch, i));
            let x = Tensor::<4>::from_data(TensorData::new(batch.data, dims), &self.device);
            let input = match noisy {
                Some(data) => Tensor::<4>::from_data(TensorData::new(data, dims), &self.device),
                None => x.clone(),
            };
            let step = (epoch - 1) * per_epoch + i + 1;
            let (next, loss) = if self.config.variational {
                let latent = self.config.latent;
                let eps = variational::reparameterisation_noise(
                    self.settings.run.seed,
                    epoch,
                    i,
                    batch.len,
                    latent,
                );
                let eps =
                    Tensor::<2>::from_data(TensorData::new(eps, [batch.len, latent]), &self.device);
                let model_settings = &self.settings.model;
                let kl_weight = variational::kl_weight(
                    model_settings.beta,
                    model_settings.kl_warmup,
                    per_epoch,
                    step,
                );
                train_step_variational(model, &mut self.adam, input, x, eps, kl_weight)
            } else {
                train_step_pair(model, &mut self.adam, input, x)
            };
            model = next;
            if !loss.is_finite() {
                self.model = Some(model);
                return Err(EpochStop::Diverged(Divergence {
                    epoch,
                    batch: i + 1,
                    loss,
                    validation: false,
                }));
            }
            losses.push(loss);
            self.folder.log_batch_loss(step as i64, loss);
            observer.on_event(&Event::Batch {
                phase: Phase::Train,
                images: batch.len,
                loss,
            });
            if observer.stop_requested() {
                self.model = Some(model);
                return Err(EpochStop::Interrupted {
                    epoch,
                    batch: Some(i + 1),
                });
            }
        }
        observer.on_event(&Event::PhaseFinished {
            phase: Phase::Train,
        });
        self.model = Some(model);
        Ok(losses)
    }

    /// The validation MSE and PSNR over the test images, and every batch's loss; a run whose
    /// validation loss is not finite stops here.
    fn validate(&self, epoch: usize, observer: &mut dyn Observer) -> Result<(Quality, Vec<f64>)> {
        let valid = self.model().valid();
        observer.on_event(&Event::PhaseStarted {
            epoch,
            phase: Phase::Validate,
            images: self.test_set.len(),
        });
        let mut val_losses = Vec::new();
        let inner = self.device.clone().inner();
        let quality = evaluate(&valid, &self.test_set, &inner, EVAL_BATCH, |_, loss, n| {
            val_losses.push(loss);
            observer.on_event(&Event::Batch {
                phase: Phase::Validate,
                images: n,
                loss,
            });
        });
        observer.on_event(&Event::PhaseFinished {
            phase: Phase::Validate,
        });
        if let Some(divergence) = Divergence::in_validation(epoch, &val_losses, quality.mse) {
            return Err(self.stop_error(EpochStop::Diverged(divergence)));
        }
        if observer.stop_requested() {
            return Err(self.stop_error(EpochStop::Interrupted { epoch, batch: None }));
        }
        Ok((quality, val_losses))
    }

    /// The error a run that stops in an epoch ends with.
    fn stop_error(&self, stop: EpochStop) -> anyhow::Error {
        let (run_dir, epochs_done) = (self.folder.dir(), self.state.epochs_done);
        match stop {
            EpochStop::Diverged(divergence) => divergence.into_error(run_dir, epochs_done),
            EpochStop::Interrupted { epoch, batch } => Interrupted {
                run_dir: run_dir.to_path_buf(),
                epoch,
                batch,
                epochs_done,
            }
            .into(),
        }
    }

    /// Saves the epoch: its reconstruction grid, then its record in the history, the metrics,
    /// the loss plot and, last, the checkpoint (until it is replaced, the run resumes from the
    /// epoch before and rewrites the other files then).
    fn save_epoch(
        &mut self,
        mut record: EpochRecord,
        started: Instant,
        train_losses: Vec<f64>,
        val_losses: Vec<f64>,
        observer: &mut dyn Observer,
    ) -> Result<EpochRecord> {
        let epoch = record.epoch;
        let run_dir = self.folder.dir().to_path_buf();
        let not_saved = || {
            format!(
                "cannot save epoch {epoch} ({})",
                what_is_kept(epoch - 1, &run_dir)
            )
        };
        self.save_showcase(&run_dir.join(recon_file(epoch)))
            .with_context(not_saved)?;
        record.seconds = started.elapsed().as_secs_f64();
        observer.on_event(&Event::EpochDone {
            epochs: self.settings.schedule.epochs,
            record: &record,
        });
        self.state.history.train_batches.push(train_losses);
        self.state.history.val_batches.push(val_losses);
        self.state.history.epochs.push(record.clone());
        self.state.epochs_done = epoch;
        self.state.adam_step = self.adam.step;
        let model = self.model.as_ref().expect("the trainer holds its model");
        self.folder
            .save_epoch(model, &self.config, &self.adam, &self.state)
            .with_context(not_saved)?;
        Ok(record)
    }

    /// Saves the final model and returns what the run measured.
    pub(crate) fn finish(self) -> Result<TrainOutcome> {
        self.folder.save_model(self.model(), &self.config)?;
        let last = self
            .state
            .history
            .epochs
            .last()
            .cloned()
            .context("no epoch was run")?;
        Ok(TrainOutcome {
            run_dir: self.folder.dir().to_path_buf(),
            last,
            history: self.state.history,
        })
    }

    fn model(&self) -> &Autoencoder {
        self.model.as_ref().expect("the trainer holds its model")
    }

    /// Saves the first test image of every class above its reconstruction.
    fn save_showcase(&self, path: &Path) -> Result<()> {
        let config = &self.config;
        let device = self.device.clone().inner();
        let pixels = &self.showcase.pixels;
        let x = Tensor::<4>::from_data(
            TensorData::new(
                pixels.clone(),
                [
                    self.showcase.images,
                    config.in_channels,
                    config.height,
                    config.width,
                ],
            ),
            &device,
        );
        let y = self
            .model()
            .valid()
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
}

/// The model, Adam and run state of a run that starts now.
fn fresh(
    settings: &TrainSettings,
    config: &ModelConfig,
    device: &Device,
) -> Result<(Autoencoder, Adam, RunState)> {
    let model = initial_model(settings, config, device)?;
    let adam = Adam::new(AdamConfig {
        lr: settings.optimiser.lr,
        ..AdamConfig::default()
    });
    let state = RunState {
        settings: settings.clone(),
        epochs_done: 0,
        adam_step: 0,
        adam: adam.config,
        history: History::default(),
    };
    Ok((model, adam, state))
}

/// The model, Adam and run state of the checkpoint in `folder`, checked against `settings`.
fn resumed(
    settings: &TrainSettings,
    config: &ModelConfig,
    folder: &RunWriter,
    device: &Device,
    observer: &mut dyn Observer,
) -> Result<(Autoencoder, Adam, RunState)> {
    let run_dir = folder.dir();
    let restored = match checkpoint::load(&folder.checkpoint_path(), device) {
        Ok(restored) => restored,
        Err(error) => bail!(
            "cannot resume the run in {}: its {CHECKPOINT_FILE} is damaged or unreadable ({error:#}); \
             the metrics and pictures of its finished epochs are intact. {}",
            run_dir.display(),
            folder.way_out()
        ),
    };
    if let Some(conflict) = settings.resume_conflict(&restored.state.settings) {
        bail!("cannot resume {}: {conflict}", run_dir.display());
    }
    if restored.config != *config {
        bail!(
            "cannot resume {}: the checkpoint's model {:?} does not fit this dataset ({:?})",
            run_dir.display(),
            restored.config,
            config
        );
    }
    let (adam, mut state) = (restored.adam, restored.state);
    // The epoch loop sets the rate itself, and says so when it changes.
    if settings.optimiser.lr != state.settings.optimiser.lr {
        observer.on_event(&Event::ResumedWithLr {
            lr: settings.optimiser.lr,
            previous: state.settings.optimiser.lr,
        });
    }
    state.settings = settings.clone();
    Ok((restored.model, adam, state))
}

/// The weights a new run starts from: `--init`, checked against the model, or the seed init.
fn initial_model(
    settings: &TrainSettings,
    config: &ModelConfig,
    device: &Device,
) -> Result<Autoencoder> {
    let dict = match &settings.model.init {
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
        None => init::seed_state_dict(config, settings.run.seed),
    };
    weights::build_model(config, &dict, device)
}
