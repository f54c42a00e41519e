//! Why a run stopped early: the loss stopped being a finite number, or it was interrupted; and
//! the errors it stops with.

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
    pub(crate) fn in_validation(epoch: usize, batch_losses: &[f64], mean: f64) -> Option<Self> {
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
    pub(crate) fn into_error(self, run_dir: &Path, epochs_done: usize) -> anyhow::Error {
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

/// A run stopped on request ([`super::Observer::stop_requested`]) before it finished: the
/// epoch it was in is lost, the checkpoint of the one before is kept, and `--resume` goes on
/// from it with the same result as an uninterrupted run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interrupted {
    /// The run folder.
    pub run_dir: std::path::PathBuf,
    /// The epoch it was in (1-based).
    pub epoch: usize,
    /// The last batch it finished, or `None` when it stopped after validation.
    pub batch: Option<usize>,
    /// Epochs finished, and held by the checkpoint.
    pub epochs_done: usize,
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = match self.batch {
            Some(batch) => format!("after training batch {batch}"),
            None => "after its validation".to_string(),
        };
        write!(
            f,
            "interrupted in epoch {} {at}; {}",
            self.epoch,
            what_is_kept(self.epochs_done, &self.run_dir)
        )
    }
}

impl std::error::Error for Interrupted {}
