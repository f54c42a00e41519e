//! How a run looks in the terminal: progress bars on stderr (when it is a terminal) and one
//! line per epoch and per notable event on stdout, drawn from the library's training events.

use std::io::IsTerminal;
use std::time::Instant;

use cae::training::{Event, Observer, Phase};
use indicatif::{ProgressBar, ProgressStyle};

/// The `cae` command's [`Observer`].
pub struct Terminal {
    show_bars: bool,
    bar: ProgressBar,
    phase_started: Instant,
}

impl Terminal {
    /// Progress bars only when stderr is a terminal (not in logs or tests).
    pub fn new() -> Self {
        Self {
            show_bars: std::io::stderr().is_terminal(),
            bar: ProgressBar::hidden(),
            phase_started: Instant::now(),
        }
    }
}

impl Observer for Terminal {
    fn on_event(&mut self, event: &Event<'_>) {
        match *event {
            Event::NoCheckpointYet { run_dir } => say!(
                "no checkpoint in {} yet (no epoch of it has finished): starting from scratch",
                run_dir.display()
            ),
            Event::ResumedWithLr { lr, previous } => {
                say!("resuming with --lr {lr} (the run so far used {previous})")
            }
            Event::LrChanged {
                epoch,
                lr,
                previous,
            } => say!("epoch {epoch}: learning rate {lr} (was {previous})"),
            Event::PhaseStarted {
                epoch,
                phase,
                images,
            } => {
                let name = match phase {
                    Phase::Train => "train",
                    Phase::Validate => "val",
                };
                self.bar = progress_bar(self.show_bars, images, format!("epoch {epoch} {name}"));
                self.phase_started = Instant::now();
            }
            Event::Batch {
                phase,
                images,
                loss,
            } => {
                self.bar.inc(images as u64);
                self.bar.set_message(match phase {
                    Phase::Train => {
                        let seconds = self.phase_started.elapsed().as_secs_f64().max(1e-9);
                        let rate = self.bar.position() as f64 / seconds;
                        format!("loss {loss:.5}  {rate:.0} img/s")
                    }
                    Phase::Validate => format!("loss {loss:.5}"),
                });
            }
            Event::PhaseFinished { .. } => self.bar.finish_and_clear(),
            Event::EpochDone { epochs, record } => say!(
                "epoch {:>3}/{epochs}  train loss {:.6}  val loss {:.6}  val PSNR {:.2} dB  {:.1} s  {:.0} img/s",
                record.epoch,
                record.train_loss,
                record.val_loss,
                record.val_psnr,
                record.seconds,
                record.images_per_second
            ),
            Event::SweepData {
                train,
                validation,
                source,
                seconds,
            } => say!(
                "data: {train} training and {validation} validation images from {}  [{seconds:.1} s]",
                source.display()
            ),
            Event::SweepRun {
                index,
                count,
                label,
            } => say!("run {index}/{count}: {label}"),
            Event::SweepRunFinishedAlready { run_dir } => {
                say!("  finished already in {}; skipped", run_dir.display())
            }
            Event::SweepRunResumed { run_dir } => {
                say!("  resuming {} from its checkpoint", run_dir.display())
            }
        }
    }

    fn stop_requested(&self) -> bool {
        super::interrupt::requested()
    }
}

fn progress_bar(show: bool, len: usize, prefix: String) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>16} [{bar:30}] {pos}/{len} {msg} ETA {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(prefix);
    bar
}

/// The bar of a dataset download, on stderr.
pub struct DownloadBar(std::sync::Mutex<ProgressBar>);

impl DownloadBar {
    pub fn install() {
        cae::data::download::set_progress(Box::new(DownloadBar(std::sync::Mutex::new(
            ProgressBar::hidden(),
        ))));
    }
}

impl cae::data::download::DownloadProgress for DownloadBar {
    fn started(&self, total: Option<u64>) {
        let (bar, template) = match total {
            Some(total) => (
                ProgressBar::new(total),
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
            ),
            None => (
                ProgressBar::no_length(),
                "{spinner} {bytes} {bytes_per_sec}",
            ),
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style);
        }
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = bar;
    }

    fn advanced(&self, bytes: u64) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).inc(bytes);
    }

    fn finished(&self) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .finish_and_clear();
    }
}
