//! Writing a run folder: opening it (locked), `config.json`, the files of every epoch and the
//! final model.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use super::{
    CHECKPOINT_FILE, CONFIG_JSON, CONFIG_TOML, EPOCHS_CSV, LOSS_PLOT, METRICS_CSV, MODEL_FILE,
    RunLock, read_epochs_csv, recon_grids,
};
use crate::history::History;
use crate::io::tensorboard::{self as tb, EventWriter};
use crate::model::{Autoencoder, ModelConfig};
use crate::optim::{Adam, AdamConfig};
use crate::run_folder::checkpoint::{self, RunState};
use crate::settings::{BURN_VERSION, TrainSettings};
use crate::training::{Event, Observer};
use crate::{io::atomic, io::weights, viz};

/// A run folder open for writing: it exists, and this process holds its lock until dropped
/// (a second process on the folder fails instead of mixing files).
#[derive(Debug)]
pub(crate) struct RunWriter {
    dir: PathBuf,
    _lock: RunLock,
    /// The TensorBoard event file this start (or resume) of the run writes, if any.
    tensorboard: Option<EventWriter>,
    /// A failure to log a batch, reported when the epoch is saved (the batch loop has no way
    /// to stop with an error; the run's other files must not be left behind either).
    tensorboard_failure: Option<anyhow::Error>,
}

impl RunWriter {
    /// Creates `dir` if needed, locks it, and removes temporary files a killed run left.
    pub(crate) fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create run folder {}", dir.display()))?;
        let lock = RunLock::acquire(dir)?;
        atomic::remove_stale_temps(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            _lock: lock,
            tensorboard: None,
            tensorboard_failure: None,
        })
    }

    /// Starts a TensorBoard event file for the steps from `first_step` on (a resumed run's
    /// first batch): TensorBoard then drops anything an earlier, interrupted session logged
    /// from there, and the curves go on without duplicate steps.
    pub(crate) fn start_tensorboard(&mut self, first_step: i64) -> Result<()> {
        self.tensorboard = Some(EventWriter::create(&self.dir, first_step)?);
        Ok(())
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn checkpoint_path(&self) -> PathBuf {
        self.dir.join(CHECKPOINT_FILE)
    }

    /// Whether `--resume` has a checkpoint to go on from. A run killed before its first
    /// checkpoint has none and holds at most the files of epoch 1; it starts from scratch
    /// (saying so), which reproduces what it would have written. A folder without a checkpoint
    /// that holds more (a final model, later epochs) lost its checkpoint: starting again would
    /// overwrite that, so it is refused, with the way to go on from its weights.
    pub(crate) fn resumable(&self, observer: &mut dyn Observer) -> Result<bool> {
        if self.checkpoint_path().exists() {
            return Ok(true);
        }
        let kept = self.files_of_a_later_run();
        if kept.is_empty() {
            observer.on_event(&Event::NoCheckpointYet { run_dir: &self.dir });
            return Ok(false);
        }
        bail!(
            "cannot resume {}: it has no {CHECKPOINT_FILE}, but holds {} of a run that got past its \
             first epoch; starting again would overwrite them. {}",
            self.dir.display(),
            kept.join(", "),
            self.way_out()
        )
    }

    /// The files that show a run got further than a run killed before its first checkpoint
    /// can: the final model, epochs after the first.
    fn files_of_a_later_run(&self) -> Vec<String> {
        let mut kept = Vec::new();
        if self.dir.join(MODEL_FILE).is_file() {
            kept.push(MODEL_FILE.to_string());
        }
        let epochs = read_epochs_csv(&self.dir.join(EPOCHS_CSV)).map_or(0, |e| e.len());
        if epochs > 1 {
            kept.push(format!("{EPOCHS_CSV} with {epochs} epochs"));
        }
        let grids = recon_grids(&self.dir).map_or(0, |g| g.len());
        if grids > 1 {
            kept.push(format!("{grids} reconstruction grids"));
        }
        kept
    }

    /// How to go on when the checkpoint cannot be used: from the final weights if there are
    /// any, otherwise from scratch elsewhere.
    pub(crate) fn way_out(&self) -> String {
        let model = self.dir.join(MODEL_FILE);
        if model.is_file() {
            format!(
                "To go on from its weights, train into another folder: --init {} --out NEW_RUN",
                model.display()
            )
        } else {
            "It has no model.safetensors to go on from: train from scratch with another --out"
                .to_string()
        }
    }

    /// Fails when the folder already holds a run that a new start would overwrite.
    pub(crate) fn refuse_existing_run(&self) -> Result<()> {
        if self.checkpoint_path().exists() {
            bail!(
                "{} already holds a run; continue it with --resume or choose another --out",
                self.dir.display()
            );
        }
        Ok(())
    }

    /// `config.json`: every setting, the model shape and size, Adam, normalization, versions;
    /// and `config.toml`, the settings as a `--config` file.
    pub(crate) fn write_config_json(
        &self,
        settings: &TrainSettings,
        config: &ModelConfig,
    ) -> Result<()> {
        let json = ConfigJson {
            settings,
            model: config,
            params: config.num_params(),
            adam: AdamConfig {
                lr: settings.optimiser.lr,
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
            variational: settings.model.variational.then_some(Objective {
                beta: settings.model.beta,
                kl_warmup: settings.model.kl_warmup,
                likelihood: crate::variational::LIKELIHOOD,
            }),
        };
        atomic::write_bytes(
            &self.dir.join(CONFIG_JSON),
            serde_json::to_string_pretty(&json)?.as_bytes(),
        )?;
        atomic::write_bytes(
            &self.dir.join(CONFIG_TOML),
            crate::config_file::to_toml(settings).as_bytes(),
        )
    }

    /// Logs one training batch's loss to TensorBoard at `step` (batches since the run began),
    /// flushed at once so that `tensorboard --logdir` shows a running epoch live. A failure
    /// stops the logging and fails the next [`Self::save_epoch`].
    pub(crate) fn log_batch_loss(&mut self, step: i64, loss: f64) {
        let Some(events) = self.tensorboard.as_mut() else {
            return;
        };
        let written = events
            .summary(step, vec![tb::scalar("train/batch_loss", loss)])
            .and_then(|()| events.flush());
        if let Err(error) = written {
            self.tensorboard = None;
            self.tensorboard_failure = Some(error);
        }
    }

    /// Writes the files of a finished epoch, the checkpoint last: until it is replaced, the run
    /// resumes from the epoch before, and the other files are rewritten then.
    pub(crate) fn save_epoch(
        &mut self,
        model: &Autoencoder,
        config: &ModelConfig,
        adam: &Adam,
        state: &RunState,
    ) -> Result<()> {
        let history = &state.history;
        write_metrics_csv(&self.dir.join(METRICS_CSV), history)?;
        write_epochs_csv(&self.dir.join(EPOCHS_CSV), history)?;
        viz::loss_plot::save_loss_plot(
            &self.dir.join(LOSS_PLOT),
            &history.loss_history(config.variational),
        )?;
        if let Some(error) = self.tensorboard_failure.take() {
            return Err(error.context("cannot log to TensorBoard"));
        }
        self.write_tensorboard(model, state)?;
        checkpoint::save(&self.checkpoint_path(), model, config, adam, state)
    }

    /// The last epoch of `state` as TensorBoard events at the epoch's last step (its batches
    /// were logged as they ran, [`Self::log_batch_loss`]): the mean training and validation
    /// loss, validation PSNR, learning rate, speed, reconstruction grid and a histogram of every
    /// parameter.
    fn write_tensorboard(&mut self, model: &Autoencoder, state: &RunState) -> Result<()> {
        let Some(events) = self.tensorboard.as_mut() else {
            return Ok(());
        };
        let history = &state.history;
        let (Some(record), Some(batches)) = (history.epochs.last(), history.train_batches.last())
        else {
            return Ok(());
        };
        let step = record.epoch as i64 * batches.len() as i64;
        let mut values = vec![
            tb::scalar("train/loss", record.train_loss),
            tb::scalar("val/loss", record.val_loss),
            tb::scalar("val/psnr", record.val_psnr),
            tb::scalar("learning_rate", state.adam.lr),
            tb::scalar("images_per_second", record.images_per_second),
        ];
        let grid = self.dir.join(super::recon_file(record.epoch));
        if let (Ok(png), Ok((width, height))) =
            (std::fs::read(&grid), image::image_dimensions(&grid))
        {
            values.push(tb::png_image("reconstructions", png, width, height, 3));
        }
        for (name, tensor) in weights::state_dict(model) {
            values.push(tb::histogram(&format!("weights/{name}"), &tensor.data));
        }
        events.summary(step, values)?;
        events.flush()
    }

    /// `model.safetensors`: the final weights.
    pub(crate) fn save_model(&self, model: &Autoencoder, config: &ModelConfig) -> Result<()> {
        weights::save_model(&self.dir.join(MODEL_FILE), model, config)
    }
}

#[derive(Serialize)]
struct ConfigJson<'a> {
    settings: &'a TrainSettings,
    model: &'a ModelConfig,
    params: usize,
    adam: AdamConfig,
    normalization: Normalization,
    versions: Versions,
    /// A variational run's objective, its defaults spelled out (`settings` leaves them out).
    #[serde(skip_serializing_if = "Option::is_none")]
    variational: Option<Objective>,
}

#[derive(Serialize)]
struct Objective {
    beta: f64,
    kl_warmup: usize,
    likelihood: &'static str,
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

/// `metrics.csv`: epoch, batch, split, loss for every batch.
pub(crate) fn write_metrics_csv(path: &Path, history: &History) -> Result<()> {
    atomic::write_with(path, |w| {
        writeln!(w, "epoch,batch,split,loss")?;
        for (split, runs) in [
            ("train", &history.train_batches),
            ("val", &history.val_batches),
        ] {
            for (e, losses) in runs.iter().enumerate() {
                for (b, loss) in losses.iter().enumerate() {
                    writeln!(w, "{},{},{split},{loss}", e + 1, b + 1)?;
                }
            }
        }
        Ok(())
    })
}

/// `epochs.csv`: one row per finished epoch.
pub(crate) fn write_epochs_csv(path: &Path, history: &History) -> Result<()> {
    atomic::write_with(path, |w| {
        writeln!(
            w,
            "epoch,train_loss,val_loss,val_psnr,seconds,images_per_second"
        )?;
        for r in &history.epochs {
            writeln!(
                w,
                "{},{},{},{:.4},{:.2},{:.1}",
                r.epoch, r.train_loss, r.val_loss, r.val_psnr, r.seconds, r.images_per_second
            )?;
        }
        Ok(())
    })
}
