//! Reconstruction grids and loss plots: exact pixels on tiny grids, decodable files otherwise.

use std::path::Path;

use crate::viz::grid::{make_grid, save_grid, save_recon_grid, to_unit_range};
use crate::viz::loss_plot::{
    LossHistory, PLOT_SIZE, loss_plot_image, loss_plot_svg, save_loss_plot,
};
use image::{Rgb, RgbImage};

const BLACK: Rgb<u8> = Rgb([0, 0, 0]);

fn gray(value: u8) -> Rgb<u8> {
    Rgb([value, value, value])
}

fn decode(path: &Path) -> RgbImage {
    image::open(path)
        .unwrap_or_else(|e| panic!("{} is not a decodable image: {e}", path.display()))
        .to_rgb8()
}

/// A realistic history: `epochs` epochs of `batches` batches, loss falling from 0.1.
fn falling_history(epochs: usize, batches: usize) -> LossHistory {
    let mut history = LossHistory::default();
    for epoch in 1..=epochs {
        let mut sum = 0.0;
        for batch in 0..batches {
            let step = ((epoch - 1) * batches + batch) as f64;
            let loss = 0.004 + 0.1 * (-step / 40.0).exp() + 0.002 * (step * 1.7).sin().abs();
            history.record_batch(epoch, batch, batches, loss);
            sum += loss;
        }
        let train = sum / batches as f64;
        history.record_epoch(epoch, train, Some(train * 1.05));
    }
    history
}

#[test]
fn to_unit_range_uses_one_global_min_and_max() {
    let mut values = vec![2.0, 4.0, 3.0, 6.0];
    to_unit_range(&mut values);
    assert_eq!(values, vec![0.0, 0.5, 0.25, 1.0]);
}

#[test]
fn to_unit_range_of_a_constant_maps_to_zero() {
    // make_grid divides by max(max - min, 1e-5), so a constant image comes out black.
    let mut values = vec![0.7; 4];
    to_unit_range(&mut values);
    assert_eq!(values, vec![0.0; 4]);
}

#[test]
fn to_unit_range_ignores_non_finite_values_for_the_bounds() {
    let mut values = vec![1.0, f32::INFINITY, 3.0, f32::NEG_INFINITY];
    to_unit_range(&mut values);
    assert_eq!(values, vec![0.0, 1.0, 1.0, 0.0]);
}

#[test]
fn make_grid_lays_out_padded_cells_scaled_by_nearest_neighbour() {
    // Two 1x2x2 grayscale images on one row; min 0 and max 3 over both images.
    let first = vec![0.0, 1.0, 2.0, 3.0];
    let second = vec![3.0, 3.0, 0.0, 0.0];
    let rows = vec![vec![first, second]];
    let scale = 2;
    let grid = make_grid(&rows, 1, 2, 2, 1, scale);

    // Width: 2 cells * (2 + 1 padding) + 1 = 7; height: 1 * (2 + 1) + 1 = 4; then doubled.
    assert_eq!(grid.dimensions(), (14, 8));

    // Unscaled layout; 0 = padding or minimum, 255 = maximum, 85 / 170 = 1/3 and 2/3.
    #[rustfmt::skip]
    let expected: [[u8; 7]; 4] = [
        [0, 0,   0,   0, 0,   0,   0],
        [0, 0,   85,  0, 255, 255, 0],
        [0, 170, 255, 0, 0,   0,   0],
        [0, 0,   0,   0, 0,   0,   0],
    ];
    for (y, row) in expected.iter().enumerate() {
        for (x, &value) in row.iter().enumerate() {
            for (dy, dx) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                let (px, py) = (x as u32 * scale + dx, y as u32 * scale + dy);
                assert_eq!(
                    *grid.get_pixel(px, py),
                    gray(value),
                    "pixel ({px}, {py}) from source ({x}, {y})"
                );
            }
        }
    }
}

#[test]
fn make_grid_keeps_colour_channels_apart() {
    // One 3x1x1 image: R is the minimum, G the middle, B the maximum.
    let rows = vec![vec![vec![-1.0, 0.0, 1.0]]];
    let grid = make_grid(&rows, 3, 1, 1, 1, 1);
    assert_eq!(grid.dimensions(), (3, 3));
    assert_eq!(*grid.get_pixel(1, 1), Rgb([0, 128, 255]));
    for (x, y) in [
        (0, 0),
        (1, 0),
        (2, 0),
        (0, 1),
        (2, 1),
        (0, 2),
        (1, 2),
        (2, 2),
    ] {
        assert_eq!(*grid.get_pixel(x, y), BLACK, "padding at ({x}, {y})");
    }
}

#[test]
fn make_grid_normalises_over_all_rows_and_leaves_missing_cells_black() {
    // Row 0 holds the minimum, row 1 (one image shorter) the maximum.
    let rows = vec![vec![vec![0.0], vec![0.0]], vec![vec![10.0]]];
    let grid = make_grid(&rows, 1, 1, 1, 1, 1);
    assert_eq!(grid.dimensions(), (5, 5));
    assert_eq!(*grid.get_pixel(1, 1), BLACK);
    assert_eq!(*grid.get_pixel(3, 1), BLACK);
    assert_eq!(*grid.get_pixel(1, 3), gray(255));
    assert_eq!(*grid.get_pixel(3, 3), BLACK, "missing cell");
}

#[test]
#[should_panic(expected = "expected 1x2x2 = 4")]
fn make_grid_rejects_images_of_the_wrong_size() {
    make_grid(&[vec![vec![0.0; 3]]], 1, 2, 2, 1, 1);
}

#[test]
fn save_recon_grid_writes_two_rows_at_four_times_size() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("recon.png");
    let originals: Vec<Vec<f32>> = (0..5).map(|i| vec![i as f32 / 5.0; 3 * 32 * 32]).collect();
    let reconstructions: Vec<Vec<f32>> = originals
        .iter()
        .map(|image| image.iter().map(|v| v * 0.9).collect())
        .collect();
    save_recon_grid(&path, &originals, &reconstructions, 3, 32, 32).unwrap();

    let grid = decode(&path);
    let width = (5 * (32 + 1) + 1) * 4;
    let height = (2 * (32 + 1) + 1) * 4;
    assert_eq!(grid.dimensions(), (width, height));
    assert_eq!(*grid.get_pixel(0, 0), BLACK);
}

#[test]
fn save_recon_grid_rejects_mismatched_counts_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("recon.png");
    let error = save_recon_grid(&path, &[vec![0.0; 4]], &[], 1, 2, 2).unwrap_err();
    assert!(format!("{error:#}").contains("recon.png"), "{error:#}");
    assert!(!path.exists());
}

#[test]
fn save_grid_rejects_bad_shapes_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("grid.png");
    let error = save_grid(&path, &[vec![vec![0.0; 5]]], 1, 2, 2).unwrap_err();
    let message = format!("{error:#}");
    assert!(
        message.contains("grid.png") && message.contains("5 values"),
        "{message}"
    );
    let error = save_grid(&path, &[vec![vec![0.0; 8]]], 2, 2, 2).unwrap_err();
    assert!(
        format!("{error:#}").contains("1 or 3 channels"),
        "{error:#}"
    );
    assert!(!path.exists());
}

#[test]
fn loss_plot_png_is_1000_by_600() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("loss.png");
    save_loss_plot(&path, &falling_history(10, 50)).unwrap();
    assert_eq!(decode(&path).dimensions(), PLOT_SIZE);
}

#[test]
fn loss_plot_survives_one_epoch_of_one_batch() {
    let mut history = LossHistory::default();
    history.record_batch(1, 0, 1, 0.05);
    history.record_epoch(1, 0.05, Some(0.05));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("loss.png");
    save_loss_plot(&path, &history).unwrap();
    assert_eq!(decode(&path).dimensions(), PLOT_SIZE);
}

#[test]
fn loss_plot_survives_an_empty_history() {
    let image = loss_plot_image(&LossHistory::default()).unwrap();
    assert_eq!(image.dimensions(), PLOT_SIZE);
}

#[test]
fn loss_plot_skips_non_finite_losses() {
    let mut history = falling_history(3, 20);
    history.batch_losses[5].1 = f64::NAN;
    history.batch_losses[6].1 = f64::INFINITY;
    history.epoch_val[1].1 = f64::NAN;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("loss.png");
    save_loss_plot(&path, &history).unwrap();
    assert_eq!(decode(&path).dimensions(), PLOT_SIZE);
}

#[test]
fn loss_plot_draws_something_besides_the_background() {
    let image = loss_plot_image(&falling_history(2, 10)).unwrap();
    let orange = image
        .pixels()
        .filter(|p| p.0[0] > 200 && p.0[1] < 160 && p.0[2] < 60)
        .count();
    assert!(
        orange > 100,
        "validation curve missing: {orange} orange pixels"
    );
}

#[test]
fn loss_plot_svg_is_an_svg_with_the_legend() {
    let svg = loss_plot_svg(&falling_history(4, 10)).unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(80)]);
    for text in [
        "train loss (per batch)",
        "train loss (epoch mean)",
        "validation loss (epoch mean)",
        "MSE loss",
        "epoch",
    ] {
        assert!(svg.contains(text), "SVG lacks {text:?}");
    }
}

#[test]
fn loss_plot_svg_handles_a_single_point() {
    let mut history = LossHistory::default();
    history.record_epoch(1, 0.2, None);
    let svg = loss_plot_svg(&history).unwrap();
    assert!(svg.starts_with("<svg"));
    assert!(
        !svg.contains("validation loss (epoch mean)"),
        "empty curves get no legend entry"
    );
}
