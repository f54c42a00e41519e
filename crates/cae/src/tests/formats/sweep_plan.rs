//! How a sweep expands its lists into runs, and names them (no training).

use crate::data::DatasetKind;
use crate::settings::TrainSettings;
use crate::sweep::{SweepGrid, plan};

fn base() -> TrainSettings {
    TrainSettings::tutorial(DatasetKind::Folder, "data".into())
}

#[test]
fn one_run_per_latent_named_by_latent() {
    let grid = SweepGrid {
        latents: vec![50, 200, 1000],
        ..SweepGrid::single(&base())
    };
    let runs = plan(&base(), &grid).unwrap();
    let names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["latent-50", "latent-200", "latent-1000"]);
    assert_eq!(runs[2].label, "latent 1000");
    assert_eq!(runs[2].settings.model.latent, 1000);
    let mut expected = base();
    expected.model.latent = 1000;
    assert_eq!(runs[2].settings, expected);
}

#[test]
fn cartesian_product_names_only_the_varied_settings() {
    let grid = SweepGrid {
        latents: vec![200, 1000],
        channels: vec![16],
        lrs: vec![1e-3, 5e-4],
        batch_sizes: vec![64],
    };
    let runs = plan(&base(), &grid).unwrap();
    let names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "latent-200_lr-0.001",
            "latent-200_lr-0.0005",
            "latent-1000_lr-0.001",
            "latent-1000_lr-0.0005"
        ]
    );
    assert_eq!(runs[1].label, "latent 200, lr 0.0005");
    assert_eq!(
        (runs[1].settings.model.latent, runs[1].settings.optimiser.lr),
        (200, 5e-4)
    );
    assert_eq!(runs[3].settings.optimiser.batch_size, 64);
}

#[test]
fn all_four_settings_can_vary() {
    let grid = SweepGrid {
        latents: vec![8, 16],
        channels: vec![8, 16],
        lrs: vec![1e-3, 1e-2],
        batch_sizes: vec![32, 64],
    };
    let runs = plan(&base(), &grid).unwrap();
    assert_eq!(runs.len(), 16);
    assert_eq!(runs[0].name, "latent-8_channels-8_lr-0.001_batch-32");
    assert_eq!(runs[15].name, "latent-16_channels-16_lr-0.01_batch-64");
    let s = &runs[15].settings;
    assert_eq!(
        (
            s.model.latent,
            s.model.channels,
            s.optimiser.lr,
            s.optimiser.batch_size
        ),
        (16, 16, 1e-2, 64)
    );
}

#[test]
fn a_single_point_is_named_by_its_latent() {
    let runs = plan(&base(), &SweepGrid::single(&base())).unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].name, "latent-200");
    assert_eq!(runs[0].settings, base());
}

#[test]
fn duplicates_and_invalid_values_are_refused() {
    let twice = SweepGrid {
        latents: vec![200, 200],
        ..SweepGrid::single(&base())
    };
    let err = plan(&base(), &twice).unwrap_err().to_string();
    assert!(err.contains("latent 200") && err.contains("twice"), "{err}");
    let zero_batch = SweepGrid {
        batch_sizes: vec![64, 0],
        ..SweepGrid::single(&base())
    };
    assert!(plan(&base(), &zero_batch).is_err());
    let empty = SweepGrid {
        lrs: vec![],
        ..SweepGrid::single(&base())
    };
    assert!(plan(&base(), &empty).is_err());
}
