//! Trains the tutorial's autoencoder on an image folder (`ROOT/train/<class>/*`,
//! `ROOT/test/<class>/*`) through the library, printing one line per epoch.
//!
//!     cargo run --release --example train_folder -- ROOT RUN_DIR [EPOCHS [TRAIN_IMAGES]]

use std::path::PathBuf;

use anyhow::{Context, Result};
use cae::{DatasetKind, Event, Observer, TrainSettings, Trainer};

/// Prints each finished epoch.
struct EpochLines;

impl Observer for EpochLines {
    fn on_event(&mut self, event: &Event<'_>) {
        if let Event::EpochDone { epochs, record } = event {
            println!(
                "epoch {}/{epochs}: train loss {:.5}, validation loss {:.5}, PSNR {:.2} dB",
                record.epoch, record.train_loss, record.val_loss, record.val_psnr
            );
        }
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: train_folder ROOT RUN_DIR [EPOCHS [TRAIN_IMAGES]]";
    let root = PathBuf::from(args.first().context(usage)?);
    let run_dir = PathBuf::from(args.get(1).context(usage)?);

    let mut settings = TrainSettings::tutorial(DatasetKind::Folder, root);
    if let Some(epochs) = args.get(2) {
        settings.schedule.epochs = epochs.parse().context("EPOCHS must be a number")?;
    }
    if let Some(limit) = args.get(3) {
        settings.data.train_limit = Some(limit.parse().context("TRAIN_IMAGES must be a number")?);
        settings.data.val_limit = settings.data.train_limit;
    }
    let splits = cae::load_dataset(
        settings.data.dataset,
        &settings.data.data_dir,
        settings.run.seed,
    )?;
    let outcome = Trainer::start(
        &settings,
        splits,
        &run_dir,
        Default::default(),
        &mut EpochLines,
    )?
    .run(&mut EpochLines)?;
    println!(
        "model: {}",
        outcome.run_dir.join(cae::run_folder::MODEL_FILE).display()
    );
    Ok(())
}
