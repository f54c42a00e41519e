//! Where the loss stopped being a finite number, and the error a diverged run stops with.

use std::path::Path;

use anyhow::anyhow;

/// Where the loss stopped being a finite number.
#[derive(Debug)]
pub(crate) struct Divergence {
    pub epoch: usize,
    /// 1-based.
    pub batch: usize,
    pub loss: f64,
    pub validation: bool,
}

impl Divergence {
    /// The first non-finite validation batch loss, or the mean when only that overflowed.
    pub fn in_validation(epoch: usize, batch_losses: &[f64], mean: f64) -> Option<Self> {
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
    pub fn into_error(self, run_dir: &Path, epochs_done: usize) -> anyhow::Error {
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

/// Which checkpoint a run that stops now leaves behind, for error messages.
pub(crate) fn what_is_kept(epochs_done: usize, run_dir: &Path) -> String {
    if epochs_done == 0 {
        "no epoch had finished, so there is no checkpoint".to_string()
    } else {
        format!(
            "the checkpoint of epoch {epochs_done} in {} is kept",
            run_dir.display()
        )
    }
}
