//! Image quality measures on [0, 1] pixels.
//!
//! SSIM follows Wang et al. 2004 ("Image quality assessment: from error visibility to structural
//! similarity"): local statistics under an 11x11 Gaussian window (sigma 1.5), K1 = 0.01,
//! K2 = 0.03, data range 1, averaged over the window positions that fit inside the image (the
//! reference MATLAB code's `'valid'` filtering), then over channels and images.

use anyhow::{Result, ensure};

/// Side of the Gaussian window.
pub(crate) const SSIM_WINDOW: usize = 11;
/// Standard deviation of the Gaussian window, in pixels.
pub(crate) const SSIM_SIGMA: f64 = 1.5;
const K1: f64 = 0.01;
const K2: f64 = 0.03;
/// Pixels lie in [0, 1].
const DATA_RANGE: f64 = 1.0;

/// Mean SSIM of two images, each `c * h * w` floats, planar C, H, W, on [0, 1].
pub(crate) fn ssim(a: &[f32], b: &[f32], c: usize, h: usize, w: usize) -> Result<f64> {
    let image_len = c * h * w;
    ensure!(
        a.len() == image_len && b.len() == image_len,
        "SSIM of one {c}x{h}x{w} image needs {image_len} values each, got {} and {}",
        a.len(),
        b.len()
    );
    mean_ssim(a, b, c, h, w)
}

/// Mean SSIM over a batch: `a` and `b` hold the same number of C, H, W images one after another.
pub(crate) fn mean_ssim(
    a: &[f32],
    b: &[f32],
    channels: usize,
    height: usize,
    width: usize,
) -> Result<f64> {
    let image_len = channels * height * width;
    ensure!(
        height >= SSIM_WINDOW && width >= SSIM_WINDOW,
        "SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, not {height}x{width}"
    );
    ensure!(
        channels > 0 && a.len() == b.len() && !a.is_empty() && a.len().is_multiple_of(image_len),
        "SSIM needs two equally long, non-empty batches of {channels}x{height}x{width} images, got {} and {} values",
        a.len(),
        b.len()
    );
    let kernel = gaussian_kernel();
    let plane = height * width;
    let planes = a.len() / plane;
    let sum: f64 = a
        .chunks_exact(plane)
        .zip(b.chunks_exact(plane))
        .map(|(x, y)| plane_ssim(x, y, height, width, &kernel))
        .sum();
    Ok(sum / planes as f64)
}

/// The normalised 1-D Gaussian; the 2-D window is its outer product.
fn gaussian_kernel() -> [f64; SSIM_WINDOW] {
    let centre = (SSIM_WINDOW / 2) as f64;
    let mut kernel = [0.0; SSIM_WINDOW];
    for (i, k) in kernel.iter_mut().enumerate() {
        let d = i as f64 - centre;
        *k = (-d * d / (2.0 * SSIM_SIGMA * SSIM_SIGMA)).exp();
    }
    let total: f64 = kernel.iter().sum();
    kernel.map(|k| k / total)
}

/// Mean of the SSIM map of one channel.
fn plane_ssim(x: &[f32], y: &[f32], height: usize, width: usize, kernel: &[f64]) -> f64 {
    let x: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
    let y: Vec<f64> = y.iter().map(|&v| f64::from(v)).collect();
    let product =
        |p: &[f64], q: &[f64]| -> Vec<f64> { p.iter().zip(q).map(|(a, b)| a * b).collect() };
    let filter = |values: &[f64]| filter_valid(values, height, width, kernel);
    let mu_x = filter(&x);
    let mu_y = filter(&y);
    let xx = filter(&product(&x, &x));
    let yy = filter(&product(&y, &y));
    let xy = filter(&product(&x, &y));
    let c1 = (K1 * DATA_RANGE).powi(2);
    let c2 = (K2 * DATA_RANGE).powi(2);
    let map = (0..mu_x.len()).map(|i| {
        let (mx, my) = (mu_x[i], mu_y[i]);
        let var_x = xx[i] - mx * mx;
        let var_y = yy[i] - my * my;
        let cov = xy[i] - mx * my;
        ((2.0 * mx * my + c1) * (2.0 * cov + c2))
            / ((mx * mx + my * my + c1) * (var_x + var_y + c2))
    });
    map.sum::<f64>() / mu_x.len() as f64
}

/// Separable Gaussian filtering of a `height x width` plane, keeping only the positions where
/// the whole window fits: the result is `(height - 10) x (width - 10)`.
fn filter_valid(values: &[f64], height: usize, width: usize, kernel: &[f64]) -> Vec<f64> {
    let out_w = width + 1 - kernel.len();
    let out_h = height + 1 - kernel.len();
    let mut rows = Vec::with_capacity(height * out_w);
    for r in 0..height {
        let row = &values[r * width..(r + 1) * width];
        rows.extend((0..out_w).map(|c| dot(&row[c..c + kernel.len()], kernel)));
    }
    let mut out = Vec::with_capacity(out_h * out_w);
    for r in 0..out_h {
        out.extend((0..out_w).map(|c| {
            kernel
                .iter()
                .enumerate()
                .map(|(k, w)| w * rows[(r + k) * out_w + c])
                .sum::<f64>()
        }));
    }
    out
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}
