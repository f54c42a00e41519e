//! The settings of a training run, as recorded in `config.json` and in its checkpoint.

use std::path::PathBuf;

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use crate::data::{DataSettings, DatasetKind};
use crate::device::Backend;
use crate::model::ModelSettings;
use crate::optim::OptimiserSettings;
use crate::schedule::ScheduleSettings;

/// Every setting of a training run, grouped by what it configures; each group lives beside
/// its module ([`DataSettings`], [`ModelSettings`], [`OptimiserSettings`],
/// [`ScheduleSettings`]) but for [`RunSettings`]. In `config.json` and checkpoints the groups
/// are flattened into one object, as before they were grouped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSettings {
    /// Which images, how many, in which order, corrupted how.
    #[serde(flatten)]
    pub data: DataSettings,
    /// The model's size and kind, and the weights it starts from.
    #[serde(flatten)]
    pub model: ModelSettings,
    /// Adam's learning rate and the batch size.
    #[serde(flatten)]
    pub optimiser: OptimiserSettings,
    /// How many epochs, and when the learning rate drops.
    #[serde(flatten)]
    pub schedule: ScheduleSettings,
    /// The seed and the backend.
    #[serde(flatten)]
    pub run: RunSettings,
}

/// What a run is besides its data, model and optimiser: the seed of its initialisation,
/// shuffling and noise, and the backend it runs on.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RunSettings {
    /// Seed of the initial weights, the shuffles, the input noise and a variational model's
    /// sampling (`--seed`).
    pub seed: u64,
    /// The backend the run trains on (`--device`).
    pub device: Backend,
}

impl TrainSettings {
    /// The tutorial's settings on this dataset: latent 200, 16 channels, 10 epochs of batch 64
    /// at lr 1e-3, seed 0, no shuffling, every image, on the CPU (the `cae train` defaults).
    pub fn tutorial(dataset: DatasetKind, data_dir: PathBuf) -> Self {
        Self {
            data: DataSettings {
                dataset,
                data_dir,
                train_limit: None,
                val_limit: None,
                shuffle: false,
                noise: None,
            },
            model: ModelSettings {
                latent: 200,
                channels: 16,
                init: None,
                variational: false,
                beta: crate::variational::default_beta(),
                kl_warmup: 0,
            },
            optimiser: OptimiserSettings {
                lr: 1e-3,
                batch_size: 64,
            },
            schedule: ScheduleSettings {
                epochs: 10,
                lr_drop: None,
            },
            run: RunSettings {
                seed: 0,
                device: Backend::Flex,
            },
        }
    }

    /// Fails on settings no run can train with: zero epochs or batch size, a learning rate that
    /// is not positive, a zero latent size or number of channels, a negative `--beta`, or
    /// `--beta` or `--kl-warmup` without `--variational`.
    pub fn validate(&self) -> Result<()> {
        if self.schedule.epochs == 0 || self.optimiser.batch_size == 0 {
            bail!("--epochs and --batch-size must be at least 1");
        }
        let lr = self.optimiser.lr;
        if !(lr.is_finite() && lr > 0.0) {
            bail!("--lr must be a positive number, not {lr}");
        }
        // Checked again with the image shape once the data is read; here so that a bad flag
        // is reported before a large folder is.
        let ModelSettings {
            latent, channels, ..
        } = self.model;
        if latent == 0 || channels == 0 {
            bail!(
                "latent size and channels must be positive (got latent {latent}, channels {channels})"
            );
        }
        let model = &self.model;
        if !(model.beta.is_finite() && model.beta >= 0.0) {
            bail!("--beta must be a number >= 0, not {}", model.beta);
        }
        if !model.variational
            && (!crate::variational::is_default_beta(&model.beta) || model.kl_warmup != 0)
        {
            bail!("--beta and --kl-warmup weight the KL term of a --variational model");
        }
        Ok(())
    }

    /// The learning rate of epoch `epoch` (1-based).
    pub(crate) fn lr_at(&self, epoch: usize) -> f64 {
        let lr = self.optimiser.lr;
        self.schedule
            .lr_drop
            .as_ref()
            .map_or(lr, |drop| drop.lr_at(lr, epoch))
    }

    /// Why a checkpoint written with `saved` cannot be continued with these settings, if it cannot.
    /// Only the number of epochs, the data location, the device and the learning rate (and its
    /// drops) may change on resume; the learning rate so that a diverged run can go on from its
    /// last good checkpoint with a lower one.
    pub(crate) fn resume_conflict(&self, saved: &TrainSettings) -> Option<String> {
        let mut normalized = saved.clone();
        normalized.schedule = self.schedule.clone();
        normalized.data.data_dir = self.data.data_dir.clone();
        normalized.run.device = self.run.device;
        normalized.optimiser.lr = self.optimiser.lr;
        (normalized != *self).then(|| {
            format!(
                "the run was started with different settings: {}; resume with the same flags",
                differences(&normalized, self).join(", ")
            )
        })
    }
}

/// `--flag was A, now B` for every setting that differs between `before` and `now`.
fn differences(before: &TrainSettings, now: &TrainSettings) -> Vec<String> {
    let as_map = |settings: &TrainSettings| {
        let mut map = match serde_json::to_value(settings) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => serde_json::Map::new(),
        };
        // Left out of plain runs' files; named with their values here.
        let model = &settings.model;
        map.insert("variational".into(), model.variational.into());
        map.insert("beta".into(), model.beta.into());
        map.insert("kl_warmup".into(), model.kl_warmup.into());
        map
    };
    let (before, now) = (as_map(before), as_map(now));
    let shown = |value: Option<&serde_json::Value>| match value {
        None | Some(serde_json::Value::Null) => "not set".to_string(),
        Some(serde_json::Value::String(text)) => text.clone(),
        Some(other) => other.to_string(),
    };
    let mut keys: Vec<&String> = before.keys().chain(now.keys()).collect();
    keys.dedup();
    let mut seen = std::collections::BTreeSet::new();
    keys.into_iter()
        .filter(|key| seen.insert(*key) && before.get(*key) != now.get(*key))
        .map(|key| {
            format!(
                "--{} was {}, now {}",
                key.replace('_', "-"),
                shown(before.get(key)),
                shown(now.get(key))
            )
        })
        .collect()
}

/// Burn's version, recorded in every run (a test checks it against Cargo.lock).
pub(crate) const BURN_VERSION: &str = "0.22.1";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resume_conflict_names_each_differing_flag_with_both_values() {
        let saved = TrainSettings::tutorial(DatasetKind::Folder, "data".into());
        let mut now = saved.clone();
        now.model.latent = 100;
        now.data.noise = Some("gaussian:0.1".parse().unwrap());
        now.schedule.epochs = 20; // may change on resume
        let message = now.resume_conflict(&saved).unwrap();
        assert!(message.contains("--latent was 200, now 100"), "{message}");
        assert!(
            message.contains("--noise was not set, now gaussian:0.1"),
            "{message}"
        );
        assert!(!message.contains("--epochs"), "{message}");
        now.model.latent = 200;
        now.data.noise = None;
        assert_eq!(now.resume_conflict(&saved), None);
    }
}
