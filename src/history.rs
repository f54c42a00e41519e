//! What a training run has measured so far, and the CSV files derived from it.

use std::io::Write;
use std::path::Path;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::atomic;
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
    pub val_psnr: f64,
    pub seconds: f64,
    /// Training images per second of wall time for the training phase.
    pub images_per_second: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct History {
    /// Per epoch, the loss of every training batch.
    pub train_batches: Vec<Vec<f64>>,
    /// Per epoch, the loss of every validation batch.
    pub val_batches: Vec<Vec<f64>>,
    pub epochs: Vec<EpochRecord>,
}

impl History {
    /// `metrics.csv`: epoch, batch, split, loss for every batch.
    pub fn write_metrics_csv(&self, path: &Path) -> Result<()> {
        atomic::write_with(path, |w| {
            writeln!(w, "epoch,batch,split,loss")?;
            for (split, runs) in [("train", &self.train_batches), ("val", &self.val_batches)] {
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
    pub fn write_epochs_csv(&self, path: &Path) -> Result<()> {
        atomic::write_with(path, |w| {
            writeln!(
                w,
                "epoch,train_loss,val_loss,val_psnr,seconds,images_per_second"
            )?;
            for r in &self.epochs {
                writeln!(
                    w,
                    "{},{},{},{:.4},{:.2},{:.1}",
                    r.epoch, r.train_loss, r.val_loss, r.val_psnr, r.seconds, r.images_per_second
                )?;
            }
            Ok(())
        })
    }

    /// The curves of `loss.png`: every training batch at its fractional epoch, and the epoch means.
    pub fn loss_history(&self) -> LossHistory {
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
        }
    }
}
