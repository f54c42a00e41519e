//! Turns 8-bit images into normalized float batches on a background thread, a few batches ahead
//! of the training loop.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;

use super::ImageSet;

/// Per-channel normalization after scaling to [0, 1], as `Normalize(mean, std)` does.
pub(crate) const MEAN: f32 = 0.5;
pub(crate) const STD: f32 = 0.5;

/// `ToTensor` then `Normalize(0.5, 0.5)`, in the same float32 operations PyTorch performs.
pub(crate) fn normalize_pixel(p: u8) -> f32 {
    (f32::from(p) / 255.0 - MEAN) / STD
}

/// Back from the normalized space to [0, 1] (clamped).
pub fn denormalize(v: f32) -> f32 {
    (v * STD + MEAN).clamp(0.0, 1.0)
}

/// Normalized floats of the images at `indices`, concatenated (N, C, H, W).
pub fn normalized_batch(set: &ImageSet, indices: &[usize]) -> Vec<f32> {
    let mut out = Vec::with_capacity(indices.len() * set.image_len());
    for &i in indices {
        out.extend(set.image(i).iter().map(|&p| normalize_pixel(p)));
    }
    out
}

/// One batch ready for the model.
pub(crate) struct Batch {
    /// Normalized pixels, (len, C, H, W).
    pub data: Vec<f32>,
    pub len: usize,
}

/// Batches of `set` in `order`, prepared by a background thread `depth` batches ahead.
pub(crate) struct Prefetcher {
    receiver: Option<Receiver<Batch>>,
    worker: Option<JoinHandle<()>>,
}

impl Prefetcher {
    pub(crate) fn new(
        set: Arc<ImageSet>,
        order: Vec<usize>,
        batch_size: usize,
        depth: usize,
    ) -> Self {
        let (sender, receiver) = sync_channel(depth.max(1));
        let worker = std::thread::spawn(move || {
            for indices in order.chunks(batch_size.max(1)) {
                let batch = Batch {
                    data: normalized_batch(&set, indices),
                    len: indices.len(),
                };
                if sender.send(batch).is_err() {
                    return; // the consumer stopped early
                }
            }
        });
        Self {
            receiver: Some(receiver),
            worker: Some(worker),
        }
    }
}

impl Iterator for Prefetcher {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        self.receiver.as_ref()?.recv().ok()
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        drop(self.receiver.take());
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}
