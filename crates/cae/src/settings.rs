//! The settings of a training run, as recorded in `config.json` and in its checkpoint.

use std::path::PathBuf;

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use crate::data::DatasetKind;
use crate::data::augment::NoiseSpec;
use crate::device::Backend;
use crate::schedule::LrDrop;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSettings {
    pub dataset: DatasetKind,
    pub data_dir: PathBuf,
    pub latent: usize,
    pub channels: usize,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub seed: u64,
    pub shuffle: bool,
    pub train_limit: Option<usize>,
    pub val_limit: Option<usize>,
    pub init: Option<PathBuf>,
    pub device: Backend,
    /// Corrupt the training inputs this way (the loss still targets the clean images).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise: Option<NoiseSpec>,
    /// Lower the learning rate at these epochs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr_drop: Option<LrDrop>,
}

impl TrainSettings {
    /// The tutorial's settings on this dataset: latent 200, 16 channels, 10 epochs of batch 64
    /// at lr 1e-3, seed 0, no shuffling, every image, on the CPU (the `cae train` defaults).
    pub fn tutorial(dataset: DatasetKind, data_dir: PathBuf) -> Self {
        Self {
            dataset,
            data_dir,
            latent: 200,
            channels: 16,
            epochs: 10,
            batch_size: 64,
            lr: 1e-3,
            seed: 0,
            shuffle: false,
            train_limit: None,
            val_limit: None,
            init: None,
            device: Backend::Flex,
            noise: None,
            lr_drop: None,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.epochs == 0 || self.batch_size == 0 {
            bail!("--epochs and --batch-size must be at least 1");
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            bail!("--lr must be a positive number, not {}", self.lr);
        }
        // Checked again with the image shape once the data is read; here so that a bad flag
        // is reported before a large folder is.
        if self.latent == 0 || self.channels == 0 {
            bail!(
                "latent size and channels must be positive (got latent {}, channels {})",
                self.latent,
                self.channels
            );
        }
        Ok(())
    }

    /// The learning rate of epoch `epoch` (1-based).
    pub fn lr_at(&self, epoch: usize) -> f64 {
        self.lr_drop
            .as_ref()
            .map_or(self.lr, |drop| drop.lr_at(self.lr, epoch))
    }

    /// Why a checkpoint written with `saved` cannot be continued with these settings, if it cannot.
    /// Only the number of epochs, the data location, the device and the learning rate (and its
    /// drops) may change on resume; the learning rate so that a diverged run can go on from its
    /// last good checkpoint with a lower one.
    pub fn resume_conflict(&self, saved: &TrainSettings) -> Option<String> {
        let normalized = TrainSettings {
            epochs: self.epochs,
            data_dir: self.data_dir.clone(),
            device: self.device,
            lr: self.lr,
            lr_drop: self.lr_drop.clone(),
            ..saved.clone()
        };
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
    let as_map = |settings: &TrainSettings| match serde_json::to_value(settings) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
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
pub const BURN_VERSION: &str = "0.22.1";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resume_conflict_names_each_differing_flag_with_both_values() {
        let saved = TrainSettings::tutorial(DatasetKind::Folder, "data".into());
        let mut now = saved.clone();
        now.latent = 100;
        now.noise = Some("gaussian:0.1".parse().unwrap());
        now.epochs = 20; // may change on resume
        let message = now.resume_conflict(&saved).unwrap();
        assert!(message.contains("--latent was 200, now 100"), "{message}");
        assert!(
            message.contains("--noise was not set, now gaussian:0.1"),
            "{message}"
        );
        assert!(!message.contains("--epochs"), "{message}");
        now.latent = 200;
        now.noise = None;
        assert_eq!(now.resume_conflict(&saved), None);
    }
}
