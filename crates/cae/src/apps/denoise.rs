//! How well a model removes noise: PSNR and SSIM against the clean images, of the noisy inputs
//! and of the model's outputs for them.

use anyhow::Result;
use burn::tensor::Device;
use serde::Serialize;

use super::self_ensemble::self_ensemble;
use crate::data::ImageSet;
use crate::data::augment::NoiseSpec;
use crate::data::batcher::{denormalize, normalized_batch};
use crate::eval::EVAL_BATCH;
use crate::model::{Autoencoder, ModelConfig};
use crate::{eval::inference, eval::metrics};

/// Per-image PSNR is capped here (an exact copy would be infinite).
pub(crate) const MAX_PSNR: f64 = 100.0;

/// Mean per-image quality against the clean images, on [0, 1] pixels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Quality {
    /// Mean over images of each image's PSNR in dB.
    pub psnr: f64,
    /// Mean over images of each image's SSIM.
    pub ssim: f64,
}

/// The quality of a set of images ([`report`]) after corruption, after denoising, and after
/// reconstruction of the clean images.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DenoiseReport {
    /// The corruption applied to the clean images.
    pub noise: NoiseSpec,
    /// Number of images.
    pub n: usize,
    /// The corrupted inputs.
    pub noisy: Quality,
    /// The model's outputs for the corrupted inputs.
    pub denoised: Quality,
    /// The self-ensembled outputs ([`denoise_images`]), when asked for.
    pub self_ensembled: Option<Quality>,
    /// The model's outputs for the clean inputs: what the autoencoder can reach at best.
    pub reconstructed: Quality,
}

impl DenoiseReport {
    /// The denoised quality: self-ensembled when measured, else one pass.
    pub fn best(&self) -> Quality {
        self.self_ensembled.unwrap_or(self.denoised)
    }

    /// PSNR gained by denoising ([`DenoiseReport::best`]), in dB.
    pub fn psnr_gain(&self) -> f64 {
        self.best().psnr - self.noisy.psnr
    }
}

/// The model's outputs for `noisy` (normalized images); with `self_ensembled`, the mean over
/// the image's flips and rotations (`self_ensemble`), at 8 times the cost for square images.
pub fn denoise_images(
    model: &Autoencoder,
    config: &ModelConfig,
    noisy: &[f32],
    self_ensembled: bool,
    device: &Device,
) -> Vec<f32> {
    let run = |images: &[f32]| inference::reconstruct(model, config, images, device);
    if self_ensembled {
        let (c, h, w) = (config.in_channels, config.height, config.width);
        self_ensemble(noisy, c, h, w, run)
    } else {
        run(noisy)
    }
}

/// Corrupts every image of `set` with `noise` (image `i` draws from `noise_rng(seed, 0, i)`),
/// runs the model on the noisy (also self-ensembled, with `self_ensembled`) and on the clean
/// images and compares all with the clean ones.
pub fn report(
    model: &Autoencoder,
    config: &ModelConfig,
    set: &ImageSet,
    noise: NoiseSpec,
    seed: u64,
    self_ensembled: bool,
    device: &Device,
) -> Result<DenoiseReport> {
    set.check_fits(config)?;
    anyhow::ensure!(!set.is_empty(), "no images to denoise");
    let image_len = set.image_len();
    let mut sums = [Quality::default(); 4];
    let all: Vec<usize> = (0..set.len()).collect();
    for indices in all.chunks(4 * EVAL_BATCH) {
        let clean = normalized_batch(set, indices);
        let noisy = noise.corrupt_images(&clean, image_len, seed, 0, indices[0] as u64);
        let denoised = denoise_images(model, config, &noisy, false, device);
        let reconstructed = inference::reconstruct(model, config, &clean, device);
        let ensembled = self_ensembled.then(|| denoise_images(model, config, &noisy, true, device));
        let outputs = [
            Some(&noisy),
            Some(&denoised),
            Some(&reconstructed),
            ensembled.as_ref(),
        ];
        for (sum, images) in sums.iter_mut().zip(outputs.into_iter().flatten()) {
            let q = total_quality(&clean, images, config)?;
            sum.psnr += q.psnr;
            sum.ssim += q.ssim;
        }
    }
    let n = set.len() as f64;
    let mean = |q: Quality| Quality {
        psnr: q.psnr / n,
        ssim: q.ssim / n,
    };
    Ok(DenoiseReport {
        noise,
        n: set.len(),
        noisy: mean(sums[0]),
        denoised: mean(sums[1]),
        reconstructed: mean(sums[2]),
        self_ensembled: self_ensembled.then(|| mean(sums[3])),
    })
}

/// Sums over the images of per-image PSNR and SSIM of `images` against `clean` (normalized).
fn total_quality(clean: &[f32], images: &[f32], config: &ModelConfig) -> Result<Quality> {
    let (c, h, w) = (config.in_channels, config.height, config.width);
    let unit = |v: &[f32]| v.iter().map(|&x| denormalize(x)).collect::<Vec<f32>>();
    let mut total = Quality::default();
    for (a, b) in clean.chunks(c * h * w).zip(images.chunks(c * h * w)) {
        let (a, b) = (unit(a), unit(b));
        total.psnr += psnr(&a, &b);
        total.ssim += metrics::ssim(&a, &b, c, h, w)?;
    }
    Ok(total)
}

/// PSNR in dB of `b` against `a`, both on [0, 1], capped at `MAX_PSNR` (100 dB).
pub fn psnr(a: &[f32], b: &[f32]) -> f64 {
    let mse = inference::mse(a, b);
    (-10.0 * mse.log10()).min(MAX_PSNR)
}

#[cfg(test)]
mod tests {
    #[test]
    fn psnr_of_known_errors() {
        let a = vec![0.5f32; 100];
        let b: Vec<f32> = a.iter().map(|v| v + 0.1).collect();
        assert!((super::psnr(&a, &b) - 20.0).abs() < 1e-5);
        assert_eq!(super::psnr(&a, &a), super::MAX_PSNR);
    }
}
