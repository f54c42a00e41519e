//! What training reports as it goes. The library prints nothing: the `cae` command's progress
//! bars and per-epoch lines are one [`Observer`], a test or another program can be another.

use std::path::Path;

use crate::history::EpochRecord;

/// The two phases of an epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Adam steps over the training images.
    Train,
    /// The loss over the validation images.
    Validate,
}

/// One thing that happened in a training run or a sweep, in the order it happened.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// `--resume` found no checkpoint (no epoch had finished), so the run starts from scratch.
    NoCheckpointYet {
        /// The run folder.
        run_dir: &'a Path,
    },
    /// A resumed run goes on with another learning rate than it was started with.
    ResumedWithLr {
        /// The learning rate it goes on with (`--lr`).
        lr: f64,
        /// The learning rate it was started with.
        previous: f64,
    },
    /// The schedule changes the learning rate from this epoch on.
    LrChanged {
        /// The first epoch at the new rate (1-based).
        epoch: usize,
        /// The new learning rate.
        lr: f64,
        /// The learning rate before it.
        previous: f64,
    },
    /// A phase of an epoch starts over `images` images.
    PhaseStarted {
        /// The epoch (1-based).
        epoch: usize,
        /// The phase that starts.
        phase: Phase,
        /// Number of images the phase goes over.
        images: usize,
    },
    /// A batch of `images` images of the current phase finished with this loss.
    Batch {
        /// The phase the batch belongs to.
        phase: Phase,
        /// Number of images in the batch.
        images: usize,
        /// The batch's loss: the MSE on normalized [-1, 1] pixels, or in training a variational
        /// model's negative ELBO per value.
        loss: f64,
    },
    /// The current phase ended.
    PhaseFinished {
        /// The phase that ended.
        phase: Phase,
    },
    /// An epoch was measured and its reconstruction grid saved (its other files are saved
    /// next); `epochs` is the run's total.
    EpochDone {
        /// Number of epochs the run trains in all (`--epochs`).
        epochs: usize,
        /// The epoch's figures.
        record: &'a EpochRecord,
    },
    /// A sweep loaded its dataset: the image counts its runs train and validate on.
    SweepData {
        /// Number of training images each run uses (after `--train-limit`).
        train: usize,
        /// Number of validation images each run uses (after `--val-limit`).
        validation: usize,
        /// The folder the data was read from.
        source: &'a Path,
        /// Wall time the loading took, in seconds.
        seconds: f64,
    },
    /// Run `index` (1-based) of `count` in a sweep starts.
    SweepRun {
        /// The run's place in the sweep (1-based).
        index: usize,
        /// Number of runs in the sweep.
        count: usize,
        /// The run's swept values, for people: `latent 200, lr 0.001`.
        label: &'a str,
    },
    /// A sweep run had finished before, and is skipped.
    SweepRunFinishedAlready {
        /// The run's folder.
        run_dir: &'a Path,
    },
    /// A sweep run had started before, and resumes from its checkpoint.
    SweepRunResumed {
        /// The run's folder.
        run_dir: &'a Path,
    },
}

/// Receives a run's [`Event`]s.
pub trait Observer {
    /// Called with every event, as it happens.
    fn on_event(&mut self, event: &Event<'_>);

    /// Asked after every training batch and after validation: `true` stops the run there
    /// with an [`Interrupted`](super::Interrupted) error, keeping the last epoch's checkpoint
    /// (the `cae` command answers Ctrl-C so).
    fn stop_requested(&self) -> bool {
        false
    }
}

/// Ignores every event.
impl Observer for () {
    fn on_event(&mut self, _: &Event<'_>) {}
}
