//! Output and scratch buffers of the kernels: per-thread scratch kept between calls, outputs
//! written without zeroing, and the per-image parallel loop that fills them.

use std::cell::RefCell;
use std::mem::MaybeUninit;

use rayon::prelude::*;

thread_local! {
    /// Per-thread work buffers (im2col columns, a product, gathered maps), kept between calls:
    /// fresh zeroed buffers cost a fifth of a training step in page faults and memset.
    static SCRATCH: RefCell<[Vec<f32>; 3]> = const { RefCell::new([Vec::new(), Vec::new(), Vec::new()]) };
}

/// Runs `work` with this thread's three scratch buffers resized to `lens`. Their contents are
/// left over from earlier calls: `work` must write every value before reading it.
pub(crate) fn with_scratch<R>(
    lens: [usize; 3],
    work: impl FnOnce(&mut [f32], &mut [f32], &mut [f32]) -> R,
) -> R {
    SCRATCH.with(|cell| {
        let mut buffers = cell.borrow_mut();
        for (buffer, &len) in buffers.iter_mut().zip(&lens) {
            if buffer.len() < len {
                buffer.resize(len, 0.0);
            }
        }
        let [a, b, c] = &mut *buffers;
        work(&mut a[..lens[0]], &mut b[..lens[1]], &mut c[..lens[2]])
    })
}

/// A vector of `len` values written by `fill`, without zeroing it first: zeroing fresh
/// outputs (which the allocator must do for `vec![0.0; len]`) took 4% of a training step.
///
/// # Safety
/// `fill` must write every element of the slice it is given.
pub(crate) unsafe fn written(len: usize, fill: impl FnOnce(&mut [MaybeUninit<f32>])) -> Vec<f32> {
    let mut out = Vec::with_capacity(len);
    fill(&mut out.spare_capacity_mut()[..len]);
    // SAFETY: the caller's `fill` initialized all `len` values.
    unsafe { out.set_len(len) };
    out
}

/// Runs `one` on every image of `input` (`input_len` values each) in parallel, into a new
/// vector of `output_len` values per image. A single image runs on one thread: sharing its
/// channel blocks (direct) and output rows (channels-last) among two threads made batch-1
/// inference 1.71x as slow on a Zen 4 (five alternated `cae bench --batch-size 1` rounds,
/// 1.43-2.0x): handing half of each layer to the other thread cost more than the half layer.
///
/// # Safety
/// `one` must write every element of the output slice it is given.
pub(crate) unsafe fn per_image(
    input: &[f32],
    input_len: usize,
    output_len: usize,
    one: impl Fn(&[f32], &mut [MaybeUninit<f32>]) + Sync,
) -> Vec<f32> {
    let images = input.len() / input_len;
    // SAFETY: the chunks cover the output and the caller's `one` writes each of them.
    unsafe {
        written(images * output_len, |out| {
            out.par_chunks_mut(output_len)
                .zip(input.par_chunks(input_len))
                .for_each(|(out, image)| one(image, out));
        })
    }
}
