//! Reconstruction error relative to an image's fine detail.
//!
//! An autoencoder's reconstruction error mostly measures how much fine detail an image has: a
//! model trained only on cars still reconstructs a plain-sky airplane better than a car, so plain
//! reconstruction error ranks the other classes as *less* anomalous than the normal one (AUROC
//! below 50 for automobile and truck). The `relative-mse` score removes that part: it is the log
//! MSE minus the log MSE that normal images with the same amount of detail have, read off a
//! straight line fitted on normal images (log MSE against log detail).

use anyhow::{Result, ensure};
use serde::{Deserialize, Serialize};

/// Floor under values whose logarithm is taken (a flat image has no detail at all).
const LOG_FLOOR: f64 = 1e-12;

/// Mean squared difference between an image (channels x height x width, channel-major) and its
/// 2x2 block means: the error of the simplest reconstruction that keeps half the resolution.
/// Blocks at an odd right or bottom edge are 1 wide or high.
pub(crate) fn fine_detail(image: &[f32], channels: usize, height: usize, width: usize) -> f64 {
    assert_eq!(image.len(), channels * height * width, "image size");
    let mut sum = 0.0f64;
    for plane in image.chunks(height * width) {
        for y0 in (0..height).step_by(2) {
            for x0 in (0..width).step_by(2) {
                let rows = y0..(y0 + 2).min(height);
                let cols = x0..(x0 + 2).min(width);
                let block = || {
                    rows.clone()
                        .flat_map(|y| cols.clone().map(move |x| f64::from(plane[y * width + x])))
                };
                let mean = block().sum::<f64>() / (rows.len() * cols.len()) as f64;
                sum += block().map(|v| (v - mean).powi(2)).sum::<f64>();
            }
        }
    }
    sum / image.len() as f64
}

/// `ln(mse) ≈ intercept + slope * ln(detail)` on normal images.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DetailFit {
    pub intercept: f64,
    pub slope: f64,
}

impl DetailFit {
    /// Least-squares line through `(ln detail, ln mse)` of normal images.
    pub(crate) fn fit(mse: &[f64], detail: &[f64]) -> Result<Self> {
        ensure!(
            mse.len() == detail.len() && mse.len() >= 2,
            "the detail fit needs at least 2 images with an error and a detail each, got {} and {}",
            mse.len(),
            detail.len()
        );
        let x: Vec<f64> = detail.iter().map(|&d| ln(d)).collect();
        let y: Vec<f64> = mse.iter().map(|&e| ln(e)).collect();
        let n = x.len() as f64;
        let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
        let sxx: f64 = x.iter().map(|v| (v - mx).powi(2)).sum();
        let sxy: f64 = x.iter().zip(&y).map(|(a, b)| (a - mx) * (b - my)).sum();
        // Images that all have the same detail say nothing about the slope.
        let slope = if sxx > 0.0 { sxy / sxx } else { 0.0 };
        Ok(DetailFit {
            intercept: my - slope * mx,
            slope,
        })
    }

    /// How much larger (in log) the error is than normal images with this detail have.
    pub(crate) fn relative(&self, mse: f64, detail: f64) -> f64 {
        ln(mse) - (self.intercept + self.slope * ln(detail))
    }
}

fn ln(v: f64) -> f64 {
    v.max(LOG_FLOOR).ln()
}

#[cfg(test)]
mod tests {
    use super::{DetailFit, fine_detail};

    #[test]
    fn detail_is_the_error_of_the_2x2_block_means() {
        // One 2x2 block [0, 2; 4, 6] (mean 3) and a 1x2 edge block [8; 10] (mean 9) on a 2x3
        // plane, then a flat second channel.
        let image = [0.0, 2.0, 8.0, 4.0, 6.0, 10.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0];
        let squares = 9.0 + 1.0 + 1.0 + 9.0 + 1.0 + 1.0;
        assert_eq!(fine_detail(&image, 2, 2, 3), squares / 12.0);
        assert_eq!(fine_detail(&[1.0; 12], 3, 2, 2), 0.0);
    }

    #[test]
    fn the_fit_recovers_a_power_law_and_scores_against_it() {
        let detail = [0.01, 0.02, 0.05, 0.1, 0.3];
        let mse: Vec<f64> = detail.iter().map(|d: &f64| 0.5 * d.powf(0.8)).collect();
        let fit = DetailFit::fit(&mse, &detail).unwrap();
        assert!((fit.slope - 0.8).abs() < 1e-9, "{fit:?}");
        assert!((fit.intercept - 0.5f64.ln()).abs() < 1e-9, "{fit:?}");
        assert!(fit.relative(mse[2], detail[2]).abs() < 1e-9);
        // Twice the error normal images of that detail have.
        let doubled = fit.relative(2.0 * mse[3], detail[3]);
        assert!((doubled - 2f64.ln()).abs() < 1e-9, "{doubled}");
    }

    #[test]
    fn equal_details_give_a_flat_line_and_zero_values_stay_finite() {
        let fit = DetailFit::fit(&[0.1, 0.3], &[0.2, 0.2]).unwrap();
        assert_eq!(fit.slope, 0.0);
        assert!(fit.relative(0.0, 0.0).is_finite());
        assert!(DetailFit::fit(&[0.1], &[0.2]).is_err());
    }
}
