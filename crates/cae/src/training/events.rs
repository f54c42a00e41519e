//! What training reports as it goes. The library prints nothing: the `cae` command's progress
//! bars and per-epoch lines are one [`Observer`], a test or another program can be another.

use std::path::Path;

use crate::history::EpochRecord;

/// The two phases of an epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Train,
    Validate,
}

/// One thing that happened in a training run or a sweep, in the order it happened.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// `--resume` found no checkpoint (no epoch had finished), so the run starts from scratch.
    NoCheckpointYet { run_dir: &'a Path },
    /// A resumed run goes on with another learning rate than it was started with.
    ResumedWithLr { lr: f64, previous: f64 },
    /// The schedule changes the learning rate from this epoch on.
    LrChanged {
        epoch: usize,
        lr: f64,
        previous: f64,
    },
    /// A phase of an epoch starts over `images` images.
    PhaseStarted {
        epoch: usize,
        phase: Phase,
        images: usize,
    },
    /// A batch of `images` images of the current phase finished with this loss.
    Batch {
        phase: Phase,
        images: usize,
        loss: f64,
    },
    /// The current phase ended.
    PhaseFinished { phase: Phase },
    /// An epoch was measured (its files are saved next); `epochs` is the run's total.
    EpochDone {
        epochs: usize,
        record: &'a EpochRecord,
    },
    /// A sweep loaded its dataset: the image counts its runs train and validate on.
    SweepData {
        train: usize,
        validation: usize,
        source: &'a Path,
        seconds: f64,
    },
    /// Run `index` (1-based) of `count` in a sweep starts.
    SweepRun {
        index: usize,
        count: usize,
        label: &'a str,
    },
    /// A sweep run had finished before, and is skipped.
    SweepRunFinishedAlready { run_dir: &'a Path },
    /// A sweep run had started before, and resumes from its checkpoint.
    SweepRunResumed { run_dir: &'a Path },
}

/// Receives a run's [`Event`]s.
pub trait Observer {
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
