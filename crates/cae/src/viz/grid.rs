//! Reconstruction grids, as `torchvision.utils.make_grid(..., normalize=True, padding=1)` draws
//! them, enlarged so that 32x32 images can be seen.

use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use image::{Rgb, RgbImage};

/// Padding between and around the cells of a reconstruction grid, in source pixels.
pub(crate) const RECON_PADDING: usize = 1;
/// Nearest-neighbour enlargement of a reconstruction grid.
pub(crate) const RECON_SCALE: u32 = 4;

/// `make_grid`'s floor on `max - min`, so that a constant image does not divide by zero.
const MIN_SPAN: f32 = 1e-5;

/// Maps `values` into [0, 1] with one min and max over the whole slice, as `make_grid`'s
/// `normalize=True` (with `scale_each=False`) does. Non-finite values do not count towards the
/// min and max; NaN stays NaN and infinities clamp to 0 or 1.
pub(crate) fn to_unit_range(values: &mut [f32]) {
    let Some((min, max)) = finite_bounds(values) else {
        return;
    };
    let span = (max - min).max(MIN_SPAN);
    for value in values {
        *value = ((*value - min) / span).clamp(0.0, 1.0);
    }
}

fn finite_bounds(values: &[f32]) -> Option<(f32, f32)> {
    values
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .fold(None, |bounds, v| match bounds {
            None => Some((v, v)),
            Some((min, max)) => Some((min.min(v), max.max(v))),
        })
}

/// Lays out `rows[r][c]` (each one image of `channels * height * width` floats, planar C,H,W,
/// `channels` 1 or 3) as a grid normalised with one global min and max, `padding` black pixels
/// between and around the cells, enlarged `scale` times by nearest neighbour. Rows may differ in
/// length; missing cells stay black. Grayscale images are drawn as gray.
///
/// # Panics
/// If `channels` is not 1 or 3, an image has the wrong length, or `scale` is 0;
/// [`save_grid`] checks these and returns errors instead.
pub(crate) fn make_grid(
    rows: &[Vec<Vec<f32>>],
    channels: usize,
    height: usize,
    width: usize,
    padding: usize,
    scale: u32,
) -> RgbImage {
    if let Err(e) = check_grid(rows, channels, height, width, scale) {
        panic!("make_grid: {e:#}");
    }
    let mut values: Vec<f32> = rows.iter().flatten().flatten().copied().collect();
    to_unit_range(&mut values);

    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let grid_width = columns * (width + padding) + padding;
    let grid_height = rows.len() * (height + padding) + padding;
    let mut grid = RgbImage::new(grid_width as u32, grid_height as u32);

    let image_len = channels * height * width;
    let mut images = values.chunks_exact(image_len);
    for (r, row) in rows.iter().enumerate() {
        for c in 0..row.len() {
            let image = images.next().expect("one chunk per image");
            let left = padding + c * (width + padding);
            let top = padding + r * (height + padding);
            paint_cell(&mut grid, image, channels, height, width, (left, top));
        }
    }
    enlarge(&grid, scale)
}

fn check_grid(
    rows: &[Vec<Vec<f32>>],
    channels: usize,
    height: usize,
    width: usize,
    scale: u32,
) -> Result<()> {
    ensure!(
        channels == 1 || channels == 3,
        "images must have 1 or 3 channels, not {channels}"
    );
    ensure!(
        height > 0 && width > 0,
        "images must not be empty, got {height}x{width}"
    );
    ensure!(scale >= 1, "the enlargement scale must be at least 1");
    let expected = channels * height * width;
    for (r, row) in rows.iter().enumerate() {
        for (c, image) in row.iter().enumerate() {
            ensure!(
                image.len() == expected,
                "image at row {r}, column {c} has {} values, expected {channels}x{height}x{width} = {expected}",
                image.len()
            );
        }
    }
    Ok(())
}

/// Copies one normalised C,H,W image into `grid` with its top-left corner at `origin`.
fn paint_cell(
    grid: &mut RgbImage,
    image: &[f32],
    channels: usize,
    height: usize,
    width: usize,
    (left, top): (usize, usize),
) {
    let plane = height * width;
    let channel_of = |rgb: usize| if channels == 1 { 0 } else { rgb };
    for y in 0..height {
        for x in 0..width {
            let sample = |rgb: usize| to_byte(image[channel_of(rgb) * plane + y * width + x]);
            let pixel = Rgb([sample(0), sample(1), sample(2)]);
            grid.put_pixel((left + x) as u32, (top + y) as u32, pixel);
        }
    }
}

/// Rounds like torchvision's `save_image`: `mul(255).add_(0.5).clamp_(0, 255)`; NaN becomes 0.
fn to_byte(unit: f32) -> u8 {
    (unit * 255.0 + 0.5).clamp(0.0, 255.0) as u8
}

fn enlarge(image: &RgbImage, scale: u32) -> RgbImage {
    RgbImage::from_fn(image.width() * scale, image.height() * scale, |x, y| {
        *image.get_pixel(x / scale, y / scale)
    })
}

/// Writes `rows` as a grid PNG at `path` (padding 1, scale 4), checking the shapes first.
pub fn save_grid(
    path: &Path,
    rows: &[Vec<Vec<f32>>],
    channels: usize,
    height: usize,
    width: usize,
) -> Result<()> {
    check_grid(rows, channels, height, width, RECON_SCALE)
        .with_context(|| format!("cannot draw the image grid {}", path.display()))?;
    if rows.iter().all(Vec::is_empty) {
        bail!("cannot draw the image grid {}: no images", path.display());
    }
    let grid = make_grid(rows, channels, height, width, RECON_PADDING, RECON_SCALE);
    save_png(path, &grid)
}

/// Writes the tutorial's reconstruction grid: `originals` in the top row, their
/// `reconstructions` in the row below.
pub fn save_recon_grid(
    path: &Path,
    originals: &[Vec<f32>],
    reconstructions: &[Vec<f32>],
    channels: usize,
    height: usize,
    width: usize,
) -> Result<()> {
    ensure!(
        originals.len() == reconstructions.len(),
        "cannot draw the reconstruction grid {}: {} originals but {} reconstructions",
        path.display(),
        originals.len(),
        reconstructions.len()
    );
    let rows = [originals.to_vec(), reconstructions.to_vec()];
    save_grid(path, &rows, channels, height, width)
}

/// Encodes `image` as PNG and writes it to `path` atomically.
pub(crate) fn save_png(path: &Path, image: &RgbImage) -> Result<()> {
    crate::io::imageio::save_png(path, &image::DynamicImage::ImageRgb8(image.clone()))
}
