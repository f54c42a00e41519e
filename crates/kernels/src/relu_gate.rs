//! A fused ReLU: the value as PyTorch computes it (NaN stays NaN), and its backward pass, the
//! incoming gradient gated by the layer's output with its per-channel sums (the bias gradient)
//! taken in the same pass.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use crate::buffers::written;
use crate::reduce::sum_in_order;
use crate::simd::{Isa, Scalar, SimdLevel, at_level, instantiate};

/// ReLU as PyTorch (and Burn Flex) compute it: NaN stays NaN. `f32::max(0.0)` returns the
/// operand that is a number, so a NaN reaching a layer came out as 0 and finite-looking
/// outputs hid a broken input or weight.
#[inline(always)]
pub(crate) fn relu(v: f32) -> f32 {
    if v.is_nan() || v > 0.0 { v } else { 0.0 }
}

/// The gradient `grad (batch, channels, positions)` kept where `relu_output` is positive or
/// NaN and zeroed elsewhere, and its [`crate::reduce::channel_sums`], in one parallel pass.
pub(crate) fn relu_backward_and_channel_sums(
    relu_output: &[f32],
    grad: &[f32],
    batch: usize,
    channels: usize,
) -> (Vec<f32>, Vec<f32>) {
    assert_eq!(
        relu_output.len(),
        grad.len(),
        "ReLU output and gradient sizes"
    );
    if batch == 0 || channels == 0 || grad.is_empty() {
        return (vec![0.0; grad.len()], vec![0.0; channels]);
    }
    let per_item = grad.len() / batch;
    let mut per_image = Vec::new();
    // SAFETY: the chunks cover the buffer and every element of each is written.
    let gated = unsafe {
        written(grad.len(), |gated| {
            per_image = gated
                .par_chunks_mut(per_item)
                .zip(
                    relu_output
                        .par_chunks(per_item)
                        .zip(grad.par_chunks(per_item)),
                )
                .map(|(gated, (output, grad))| relu_gate_image(output, grad, channels, gated))
                .collect();
        })
    };
    (gated, sum_in_order(&per_image, channels))
}

/// [`relu_backward_and_channel_sums`] of one image `(channels, positions)`: writes every value
/// of `gated` and returns the per-channel sums.
pub(crate) fn relu_gate_image(
    output: &[f32],
    grad: &[f32],
    channels: usize,
    gated: &mut [MaybeUninit<f32>],
) -> Vec<f32> {
    assert_eq!(output.len(), grad.len(), "ReLU output and gradient sizes");
    assert_eq!(gated.len(), grad.len(), "gated gradient size");
    // SAFETY: the active level runs on this CPU (`Scalar` needs no instruction set).
    at_level!(
        SimdLevel::active(),
        gate_image(output, grad, channels, gated),
        unsafe { gate_image::<Scalar>(output, grad, channels, gated) }
    )
}

instantiate! {
    fn gate_image<>(
        output: &[f32],
        grad: &[f32],
        channels: usize,
        gated: &mut [MaybeUninit<f32>],
    ) -> Vec<f32>;
}

/// [`relu_gate_image`] compiled for `S`'s instruction set, which the compiler's own
/// vectorization of [`relu_gate_row`] then uses: at the baseline x86-64 level (4 lanes) the
/// gate took 2.7% of a training step's samples on an AVX-512 Xeon. The lanes add in the same
/// order at every level, so the sums are the same bit for bit.
///
/// # Safety
/// Only from a function compiled for `S` (see [`instantiate`]).
#[inline(always)]
unsafe fn gate_image<S: Isa>(
    output: &[f32],
    grad: &[f32],
    channels: usize,
    gated: &mut [MaybeUninit<f32>],
) -> Vec<f32> {
    let positions = grad.len() / channels;
    // A plain loop: `collect` would call a helper compiled without `S`'s instruction set.
    let mut sums = Vec::with_capacity(channels);
    let rows = gated.chunks_mut(positions);
    for (gated, (output, grad)) in rows.zip(output.chunks(positions).zip(grad.chunks(positions))) {
        sums.push(relu_gate_row(output, grad, gated));
    }
    sums
}

/// Writes `grad` where `output` is positive or NaN and 0 elsewhere into `gated`; returns the
/// sum of what it wrote (in 16 interleaved partial sums, as [`lane_sum`]).
#[inline(always)]
fn relu_gate_row(output: &[f32], grad: &[f32], gated: &mut [MaybeUninit<f32>]) -> f32 {
    // Fixed 16-wide chunks, so that the compiler vectorizes the gate and the sums (a running
    // lane index did not, and this pass took 8% of a training step).
    let gate = |o: f32, d: f32| if o.is_nan() || o > 0.0 { d } else { 0.0 };
    let mut lanes = [0.0f32; 16];
    let (mut g, mut o, mut d) = (
        gated.chunks_exact_mut(16),
        output.chunks_exact(16),
        grad.chunks_exact(16),
    );
    for ((g, o), d) in (&mut g).zip(&mut o).zip(&mut d) {
        for j in 0..16 {
            let kept = gate(o[j], d[j]);
            g[j].write(kept);
            lanes[j] += kept;
        }
    }
    let mut tail = 0.0;
    let rest = g
        .into_remainder()
        .iter_mut()
        .zip(o.remainder())
        .zip(d.remainder());
    for ((g, &o), &d) in rest {
        let kept = gate(o, d);
        g.write(kept);
        tail += kept;
    }
    lanes.iter().sum::<f32>() + tail
}
