//! What a training run has measured so far (written to the run folder by [`crate::run_folder`]).

use serde::{Deserialize, Serialize};

use crate::viz::loss_plot::LossHistory;

/// The figures of one finished epoch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EpochRecord {
    /// 1-based.
    pub epoch: usize,
    /// Mean of the epoch's batch losses (as the tutorial averages them).
    pub train_loss: f64,
    /// Mean squared error over every validation pixel.
    pub val_loss: f64,
    /// PSNR in dB of the validation reconstructions (pixels on [0, 1]).
    pub val_psnr: f64,
    /// Wall time of the epoch: training, validation and its reconstruction grid.
    pub seconds: f64,
    /// Training images per second of wall time for the training phase.
    pub images_per_second: f64,
}

/// Every loss a run has measured, batch by batch and epoch by epoch (`metrics.csv`,
/// `epochs.csv`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct History {
    /// Per epoch, the loss of every training batch.
    pub train_batches: Vec<Vec<f64>>,
    /// Per epoch, the loss of every validation batch.
    pub val_batches: Vec<Vec<f64>>,
    /// One record per finished epoch.
    pub epochs: Vec<EpochRecord>,
}

impl History {
    /// The curves of `loss.png`: every training batch at its fractional epoch, and the epoch means.
    /// `variational`: the run's training loss is a negative ELBO (the plot labels it so).
    pub(crate) fn loss_history(&self, variational: bool) -> LossHistory {
        let mut batch_losses = Vec::new();
        for (e, losses) in self.train_batches.iter().enumerate() {
            let n = losses.len().max(1) as f64;
            batch_losses.extend(
                losses
                    .iter()
                    .enumerate()
                    .map(|(b, &l)| (e as f64 + (b + 1) as f64 / n, l)),
            );
        }
        LossHistory {
            batch_losses,
            epoch_train: self
                .epochs
                .iter()
                .map(|r| (r.epoch, r.train_loss))
                .collect(),
            epoch_val: self.epochs.iter().map(|r| (r.epoch, r.val_loss)).collect(),
            variational,
        }
    }
}
