//! Flag groups shared by several commands: which images a command reads (files or one split of
//! a dataset), and how a model is trained.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};

use super::choice::choice;
use cae::data::DataSettings;
use cae::data::DatasetKind;
use cae::data::ImageSet;
use cae::data::augment::NoiseSpec;
use cae::model::ModelConfig;
use cae::model::ModelSettings;
use cae::optim::OptimiserSettings;
use cae::schedule::LrDrop;
use cae::schedule::ScheduleSettings;
use cae::settings::{RunSettings, TrainSettings};

use super::DataArgs;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Split {
    Train,
    Test,
}

/// Image files, or one split of a dataset (`cae encode`, `cae anomaly score`).
#[derive(Args)]
pub struct ImageInputs {
    /// Image files (instead of a dataset).
    pub images: Vec<PathBuf>,
    /// Read this dataset instead of image files.
    #[arg(long, conflicts_with = "images", value_parser = choice::<DatasetKind>())]
    pub dataset: Option<DatasetKind>,
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Which part of the dataset.
    #[arg(long, value_enum, default_value = "test")]
    pub split: Split,
    /// Only the first N images of the dataset.
    #[arg(long)]
    pub limit: Option<usize>,
    #[command(flatten)]
    pub resize: super::ResizeArg,
}

/// What [`ImageInputs::load`] read.
pub enum Inputs {
    /// The chosen split, cut to `--limit`, checked against the model's input shape.
    Dataset(ImageSet),
    /// Normalised model inputs, one image after another, and the file each came from.
    Files {
        pixels: Vec<f32>,
        sources: Vec<String>,
    },
}

impl ImageInputs {
    /// Reads the images for the model at `model_path`; `verb` names the command's action in
    /// the error for a call without inputs ("encode", "score").
    pub fn load(&self, model_path: &Path, config: &ModelConfig, verb: &str) -> Result<Inputs> {
        let Some(kind) = self.dataset else {
            if self.images.is_empty() {
                bail!("give image files or --dataset to {verb}");
            }
            let mut pixels = Vec::new();
            for path in &self.images {
                pixels.extend(self.resize.read(path, config)?);
            }
            let sources = self
                .images
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            return Ok(Inputs::Files { pixels, sources });
        };
        let data_dir = self
            .data_dir
            .clone()
            .unwrap_or_else(cae::data::default_data_dir);
        // An image folder is read at the model's input size (as `cae eval` reads it, and as
        // image files are), unless --no-resize.
        let options = cae::data::LoadOptions {
            image_size: (kind == DatasetKind::Folder && !self.resize.no_resize)
                .then_some((config.width as u32, config.height as u32)),
            ..Default::default()
        };
        let splits = cae::data::load_with_options(kind, &data_dir, 0, &options)?.splits;
        let mut set = match self.split {
            Split::Train => splits.train,
            Split::Test => splits.test,
        };
        if let Some(n) = self.limit {
            set.truncate(n);
        }
        set.check_fits(config).with_context(|| {
            format!(
                "{} and the dataset in {}",
                model_path.display(),
                data_dir.display()
            )
        })?;
        Ok(Inputs::Dataset(set))
    }
}

/// The model's shape and the optimiser (`cae train`, `cae anomaly eval`; `cae sweep` takes
/// lists of these instead).
#[derive(Args)]
pub struct ModelFlags {
    /// Size of the latent code.
    #[arg(long, default_value_t = 200)]
    pub latent: usize,
    /// Width of the first convolutions (later ones use 2x and 4x).
    #[arg(long, default_value_t = 16)]
    pub channels: usize,
    /// Images per training batch.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Adam learning rate (betas 0.9/0.999, eps 1e-8 as in PyTorch).
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
}

/// How training runs (`cae train`, `cae sweep`, `cae anomaly eval`).
#[derive(Args)]
pub struct TrainingFlags {
    /// Epochs to train (with --resume: the run's total, counting those already done).
    #[arg(long, default_value_t = 10)]
    pub epochs: usize,
    /// Seed of the initial weights, of an image folder's one-time shuffle, of --shuffle, of
    /// the --noise corruptions and of the --variational sampling noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Shuffle the training images every epoch (the tutorial does not).
    #[arg(long)]
    pub shuffle: bool,
    /// Use only the first N training images (of the normal class, for `anomaly eval`).
    #[arg(long)]
    pub train_limit: Option<usize>,
    /// Use only the first N validation images.
    #[arg(long)]
    pub val_limit: Option<usize>,
    /// Train denoisers: corrupt the inputs with gaussian:SIGMA, salt-pepper:P or mask:P (on
    /// [0,1] pixels, clipped) while the loss targets the clean images.
    #[arg(long)]
    pub noise: Option<NoiseSpec>,
    /// Multiply the learning rate by FACTOR (default 0.1, at most 1) at the start of each
    /// listed epoch: EPOCH[,EPOCH...][:FACTOR], e.g. 30 or 20,30:0.5 (as PyTorch's MultiStepLR).
    #[arg(long)]
    pub lr_drop: Option<LrDrop>,
    /// Train a variational autoencoder: mean and log-variance heads, the reparameterisation
    /// trick, a Gaussian decoder with a learned shared variance, and the negative ELBO as the loss.
    #[arg(long)]
    pub variational: bool,
    /// Weight of the KL term of --variational (beta-VAE; 1 is the ELBO).
    #[arg(long, default_value_t = 1.0, requires = "variational")]
    pub beta: f64,
    /// Raise the KL weight of --variational linearly from 0 to --beta over this many epochs.
    #[arg(long, default_value_t = 0, requires = "variational")]
    pub kl_warmup: usize,
}

impl TrainingFlags {
    pub fn settings(
        &self,
        data: &DataArgs,
        model: &ModelFlags,
        init: Option<PathBuf>,
    ) -> TrainSettings {
        TrainSettings {
            data: DataSettings {
                dataset: data.dataset,
                data_dir: data.data_dir(),
                train_limit: self.train_limit,
                val_limit: self.val_limit,
                shuffle: self.shuffle,
                noise: self.noise,
            },
            model: ModelSettings {
                latent: model.latent,
                channels: model.channels,
                init,
                variational: self.variational,
                beta: self.beta,
                kl_warmup: self.kl_warmup,
            },
            optimiser: OptimiserSettings {
                lr: model.lr,
                batch_size: model.batch_size,
            },
            schedule: ScheduleSettings {
                epochs: self.epochs,
                lr_drop: self.lr_drop.clone(),
            },
            run: RunSettings {
                seed: self.seed,
                device: data.device.backend,
            },
        }
    }
}
