//! cae: a convolutional autoencoder toolkit on Burn, faithful to the PyTorch tutorial.
//!
//! The API is re-exported here: the model ([`Autoencoder`], [`ModelConfig`]), its files
//! ([`load_model`], [`save_model`]), datasets ([`load_dataset`], [`DatasetKind`]), training
//! ([`Trainer`], [`TrainSettings`], reporting [`Event`]s to an [`Observer`], the measured
//! [`History`] of [`EpochRecord`]s), inference
//! ([`encode`], [`decode`], [`reconstruct`], [`read_model_input`], [`write_npy`]) and
//! anomaly scores ([`score_images`]).
//!
//! ```no_run
//! use cae::{DatasetKind, TrainSettings, Trainer};
//!
//! let settings = TrainSettings::tutorial(DatasetKind::Folder, "data/cifar10-jpg".into());
//! let data = &settings.data;
//! let splits = cae::load_dataset(data.dataset, &data.data_dir, settings.run.seed)?;
//! let outcome = Trainer::start(&settings, splits, "runs/first".as_ref(), Default::default(), &mut ())?
//!     .run(&mut ())?;
//! println!("validation PSNR {:.2} dB", outcome.last.val_psnr);
//! # Ok::<(), anyhow::Error>(())
//! ```
//!
//! The modules follow the Burn book's layout: [`model`] holds the network, [`data`] the
//! datasets and their augmentation, [`training`] the training loop, [`run_folder`] what a run
//! writes, [`eval`] the use of a trained model (quality, inference, SSIM), [`io`] the file
//! formats (weights, `.pt`, `.npy`, images, atomic writes), and
//! [`apps`] the applications (denoising, anomaly detection, generation). What those modules
//! make public beyond the re-exports above is what the `cae` command builds on (its flags'
//! settings, the applications' reports, the file formats); it may change between versions.
//! Everything else is private to the crate. The convolution kernels are the `cae-kernels` crate.

#![warn(missing_docs)]

pub mod apps;
pub mod bench;
pub mod config_file;
pub mod data;
pub mod device;
pub mod eval;
pub(crate) mod history;
pub mod init;
pub mod io;
pub mod model;
pub mod optim;
pub mod report;
pub mod run_folder;
pub(crate) mod sampling;
pub mod schedule;
pub mod settings;
pub mod sweep;
pub mod training;
pub mod variational;
pub mod viz;

#[cfg(test)]
mod tests;

pub use apps::anomaly::{RawScores, Score, score_images};
pub use data::{DatasetKind, ImageSet, Splits, load as load_dataset};
pub use eval::inference::{decode, encode, reconstruct};
pub use history::{EpochRecord, History};
pub use io::imageio::read_model_input;
pub use io::npy::write_f32 as write_npy;
pub use io::weights::{load_model, save_model};
pub use model::{Autoencoder, ModelConfig};
pub use settings::TrainSettings;
pub use training::{Event, Observer, Phase, RunOptions, TrainOutcome, Trainer};
