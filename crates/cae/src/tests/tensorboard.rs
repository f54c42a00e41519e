//! TensorBoard event files in the run folder: every record's CRCs hold, the events decode, and
//! TensorBoard's own reader (`EventAccumulator`, Python's `tensorboard` package) finds the
//! scalars, the reconstruction grids and the weight histograms; a resumed run continues the
//! curves without duplicate steps. (That `cae train --no-tensorboard` writes none is the
//! workspace's `commands::train` test.)

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::io::tensorboard::{Event, read_records};
use prost::Message;

use crate::tests::fixtures::cifar_subset;
use crate::{DatasetKind, RunOptions, TrainSettings};

/// 96 images in batches of 32: three batches an epoch; trained as `cae train` trains.
fn settings(epochs: usize) -> TrainSettings {
    let mut settings = TrainSettings::tutorial(DatasetKind::Folder, cifar_subset());
    settings.data.train_limit = Some(96);
    settings.data.val_limit = Some(40);
    settings.optimiser.batch_size = 32;
    settings.model.latent = 16;
    settings.model.channels = 4;
    settings.schedule.epochs = epochs;
    settings
}

fn train(run: &Path, epochs: usize, options: RunOptions) {
    let settings = settings(epochs);
    let data = &settings.data;
    let splits = crate::load_dataset(data.dataset, &data.data_dir, settings.run.seed).unwrap();
    crate::training::train(&settings, splits, run, options, &mut ()).unwrap();
}

fn events(run: &Path) -> Vec<Event> {
    crate::tests::fixtures::event_files(run)
        .iter()
        .flat_map(|file| read_records(&fs::read(run.join(file)).unwrap()).unwrap())
        .map(|record| Event::decode(record.as_slice()).unwrap())
        .collect()
}

/// What TensorBoard's reader makes of the run folder: tag -> steps, for scalars, images and
/// histograms.
fn tensorboard_view(run: &Path) -> serde_json::Value {
    let script = r#"
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0, "images": 0, "histograms": 0})
acc.Reload()
tags = acc.Tags()
print(json.dumps({
    "scalars": {t: [e.step for e in acc.Scalars(t)] for t in tags["scalars"]},
    "images": {t: [e.step for e in acc.Images(t)] for t in tags["images"]},
    "histograms": {t: [e.step for e in acc.Histograms(t)] for t in tags["histograms"]},
}))
"#;
    let output = Command::new("python3")
        .args(["-c", script, run.to_str().unwrap()])
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "TensorBoard's reader failed (pip install tensorboard): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn training_writes_events_tensorboard_reads_and_a_resume_continues_them() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    train(&run, 1, RunOptions::default());
    let first = events(&run);
    assert_eq!(first[0].file_version.as_deref(), Some("brain.Event:2"));
    let scalars = |events: &[Event], tag: &str| -> Vec<i64> {
        events
            .iter()
            .filter(|e| {
                e.summary
                    .as_ref()
                    .is_some_and(|s| s.value.iter().any(|v| v.tag == tag))
            })
            .map(|e| e.step)
            .collect()
    };
    assert_eq!(scalars(&first, "train/batch_loss"), [1, 2, 3]);
    assert_eq!(scalars(&first, "val/loss"), [3]);

    train(
        &run,
        2,
        RunOptions {
            resume: true,
            ..RunOptions::default()
        },
    );
    let view = tensorboard_view(&run);
    assert_eq!(
        view["scalars"]["train/batch_loss"],
        serde_json::json!([1, 2, 3, 4, 5, 6])
    );
    for tag in [
        "train/loss",
        "val/loss",
        "val/psnr",
        "learning_rate",
        "images_per_second",
    ] {
        assert_eq!(
            view["scalars"][tag],
            serde_json::json!([3, 6]),
            "{tag}: {view}"
        );
    }
    assert_eq!(
        view["images"]["reconstructions"],
        serde_json::json!([3, 6]),
        "{view}"
    );
    let histograms = view["histograms"].as_object().unwrap();
    assert_eq!(histograms.len(), 28, "one per parameter: {view}");
    assert_eq!(
        histograms["weights/encoder.net.0.weight"],
        serde_json::json!([3, 6])
    );

    // The values are the run's: the last validation loss is epochs.csv's.
    let last = events(&run)
        .into_iter()
        .filter_map(|e| e.summary)
        .flat_map(|s| s.value)
        .rfind(|v| v.tag == "val/loss")
        .unwrap();
    let epochs = fs::read_to_string(run.join("epochs.csv")).unwrap();
    let val_loss: f64 = epochs
        .lines()
        .last()
        .unwrap()
        .split(',')
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(last.simple_value, Some(val_loss as f32));

    let quiet = tmp.path().join("quiet");
    train(
        &quiet,
        1,
        RunOptions {
            tensorboard: false,
            ..RunOptions::default()
        },
    );
    assert!(events(&quiet).is_empty());
}

/// Records, at every training batch, the batch-loss steps already in the run's event files.
struct BatchStepsOnDisk {
    run: std::path::PathBuf,
    seen: Vec<Vec<i64>>,
}

impl crate::Observer for BatchStepsOnDisk {
    fn on_event(&mut self, event: &crate::Event<'_>) {
        if let crate::Event::Batch {
            phase: crate::Phase::Train,
            ..
        } = event
        {
            let steps = events(&self.run)
                .iter()
                .filter(|e| {
                    e.summary
                        .as_ref()
                        .is_some_and(|s| s.value.iter().any(|v| v.tag == "train/batch_loss"))
                })
                .map(|e| e.step)
                .collect();
            self.seen.push(steps);
        }
    }
}

/// `tensorboard --logdir` shows a running epoch: each batch's loss is on disk before the next
/// batch starts, not only when the epoch ends.
#[test]
fn batch_losses_reach_the_event_file_as_the_epoch_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let settings = settings(1);
    let splits = crate::load_dataset(settings.data.dataset, &settings.data.data_dir, 0).unwrap();
    let mut observer = BatchStepsOnDisk {
        run: run.clone(),
        seen: Vec::new(),
    };
    crate::Trainer::start(&settings, splits, &run, Default::default(), &mut observer)
        .unwrap()
        .run(&mut observer)
        .unwrap();
    assert_eq!(observer.seen, [vec![1], vec![1, 2], vec![1, 2, 3]]);
}
