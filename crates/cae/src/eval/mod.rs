//! Using a trained model: its reconstruction quality over a set of images (here), batched
//! [`inference`] on pixel buffers, the image metrics (SSIM), and the [`frechet`] distance of
//! generated images.

pub mod frechet;
pub mod inference;
pub(crate) mod metrics;

use burn::tensor::{Device, Tensor, TensorData};
use serde::Serialize;

use crate::data::ImageSet;
use crate::data::batcher::{Prefetcher, STD};
use crate::model::Autoencoder;

/// Batch size for inference: large enough to keep the kernels busy, small enough for any machine.
pub const EVAL_BATCH: usize = 256;

/// How well a model reconstructs a set of images ([`evaluate`]).
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Quality {
    /// Mean squared error over all pixels and images, in the normalized [-1, 1] space (the loss).
    pub mse: f64,
    /// PSNR in dB of the same mean error measured on [0, 1] pixels.
    pub psnr: f64,
    /// Number of images.
    pub n: usize,
}

/// PSNR in dB on [0, 1] pixels for an MSE measured in the normalized space.
pub fn psnr_from_normalized_mse(mse: f64) -> f64 {
    let scale = f64::from(STD);
    let mse01 = mse * scale * scale;
    if mse01 <= 0.0 {
        f64::INFINITY
    } else {
        -10.0 * mse01.log10()
    }
}

/// Runs `model` over `set` in batches; calls `on_batch(batch_index, batch_mse, images)` for each.
pub fn evaluate(
    model: &Autoencoder,
    set: &std::sync::Arc<ImageSet>,
    device: &Device,
    batch_size: usize,
    mut on_batch: impl FnMut(usize, f64, usize),
) -> Quality {
    let order: Vec<usize> = (0..set.len()).collect();
    let shape = [set.channels, set.height, set.width];
    let mut errors = SquaredErrors::default();
    for (i, batch) in Prefetcher::new(set.clone(), order, batch_size, 2).enumerate() {
        let x = Tensor::<4>::from_data(
            TensorData::new(batch.data, [batch.len, shape[0], shape[1], shape[2]]),
            device,
        );
        let batch_mse = errors.add(model.reconstruct(x.clone()), x);
        on_batch(i, batch_mse, batch.len);
    }
    errors.quality(set.len())
}

/// The squared reconstruction errors of a pass over a set, batch by batch.
#[derive(Default)]
pub(crate) struct SquaredErrors {
    sum: f64,
    values: usize,
}

impl SquaredErrors {
    /// Adds a batch's errors; returns the batch's mean.
    pub(crate) fn add(&mut self, reconstruction: Tensor<4>, target: Tensor<4>) -> f64 {
        let values = target.shape().num_elements();
        let batch_sum = f64::from(
            (reconstruction - target)
                .square()
                .sum()
                .into_scalar::<f32>(),
        );
        self.sum += batch_sum;
        self.values += values;
        batch_sum / values as f64
    }

    /// The MSE and PSNR of the whole pass, over `images` images.
    pub(crate) fn quality(&self, images: usize) -> Quality {
        let mse = if self.values == 0 {
            f64::NAN
        } else {
            self.sum / self.values as f64
        };
        Quality {
            mse,
            psnr: psnr_from_normalized_mse(mse),
            n: images,
        }
    }
}
