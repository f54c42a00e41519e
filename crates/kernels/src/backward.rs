//! A layer's whole backward pass (ReLU gate, bias, weight and input gradients) a group of
//! images at a time, so that the gated gradient of a group is read by both kernels while it is
//! in L2 instead of being written out and read back twice.
//!
//! Used where the vector kernels run both gradients (every layer of the seed model); other
//! geometries take the separate passes of [`super::conv3x3`].

use std::borrow::Cow;
use std::mem::MaybeUninit;

use rayon::prelude::*;

use crate::buffers::written;
use crate::channels_last;
use crate::dispatch::ImageKernel;
use crate::geometry::Conv3x3;
use crate::reduce::{channel_sums, sum_in_order};
use crate::relu_gate::relu_gate_image;

/// The gradients of one layer.
pub(crate) struct LayerGrads {
    /// Of the layer's input, when asked for.
    pub input: Option<Vec<f32>>,
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

/// Values (a gradient, an input and an input gradient per image) of one group of images.
const GROUP_BUDGET: usize = 96 * 1024;

/// The backward pass of a 3x3 layer of geometry `g`: a convolution from image to feature
/// (`transposed` false: `input` is the image, `grad` the feature side) or the transposed
/// convolution from feature to image (`input` the feature, `grad` the image side).
/// `relu_output` is the layer's output when it applied ReLU; the input gradient is computed
/// when `want_input` is set. `None` when the vector kernels do not cover this geometry.
pub(crate) fn layer_backward(
    g: &Conv3x3,
    transposed: bool,
    input: &[f32],
    weight: &[f32],
    grad: &[f32],
    relu_output: Option<&[f32]>,
    want_input: bool,
) -> Option<LayerGrads> {
    if !channels_last::available(g) {
        return None;
    }
    let kernel = match want_input {
        true => Some(input_grad_kernel(g, transposed, weight)?),
        false => None,
    };
    let layer = GroupWork::new(g, transposed, kernel);
    assert_eq!(input.len(), g.batch * layer.input_len, "input size");
    assert_eq!(grad.len(), g.batch * layer.grad_len, "gradient size");
    assert_eq!(weight.len(), g.weight_len(), "weight size");
    if let Some(output) = relu_output {
        assert_eq!(output.len(), grad.len(), "ReLU output size");
    }
    // Groups small enough for L2, and at least two per thread so that the threads stay busy.
    let per_image = layer.grad_len + 2 * layer.input_len;
    let balanced = g.batch.div_ceil(2 * rayon::current_num_threads());
    let group = (GROUP_BUDGET / per_image).clamp(1, balanced.max(1));
    let (inputs, grads) = (
        input.par_chunks(group * layer.input_len),
        grad.par_chunks(group * layer.grad_len),
    );
    let outputs =
        |i: usize, len: usize| relu_output.map(|o| &o[i * group * layer.grad_len..][..len]);
    let mut partials: Vec<(Vec<f32>, Vec<f32>)> = Vec::new();
    let input_grad = if want_input {
        // SAFETY: every group writes the input gradient of each of its images.
        Some(unsafe {
            written(g.batch * layer.input_len, |out| {
                partials = out
                    .par_chunks_mut(group * layer.input_len)
                    .zip(inputs.zip(grads))
                    .enumerate()
                    .map(|(i, (out, (x, dy)))| layer.run(x, dy, outputs(i, dy.len()), Some(out)))
                    .collect();
            })
        })
    } else {
        partials = inputs
            .zip(grads)
            .enumerate()
            .map(|(i, (x, dy))| layer.run(x, dy, outputs(i, dy.len()), None))
            .collect();
        None
    };
    let (by_taps, biases): (Vec<Vec<f32>>, Vec<Vec<f32>>) = partials.into_iter().unzip();
    Some(LayerGrads {
        input: input_grad,
        weight: channels_last::weight_from_taps(g, &sum_in_order(&by_taps, g.weight_len())),
        bias: sum_in_order(&biases, layer.grad_channels),
    })
}

/// What every group of one layer's backward pass shares.
struct GroupWork<'a> {
    geometry: &'a Conv3x3,
    transposed: bool,
    kernel: Option<ImageKernel>,
    input_len: usize,
    grad_len: usize,
    grad_channels: usize,
}

impl<'a> GroupWork<'a> {
    fn new(g: &'a Conv3x3, transposed: bool, kernel: Option<ImageKernel>) -> Self {
        let (input_len, grad_len, grad_channels) = if transposed {
            (g.feature_len(), g.image_len(), g.image_channels)
        } else {
            (g.image_len(), g.feature_len(), g.feature_channels)
        };
        GroupWork {
            geometry: g,
            transposed,
            kernel,
            input_len,
            grad_len,
            grad_channels,
        }
    }

    /// One group: the gated gradient, then the weight gradient's and the bias's partial sums
    /// (returned) and the input gradient (into `out`), all from the same gated values.
    fn run(
        &self,
        inputs: &[f32],
        grads: &[f32],
        relu_outputs: Option<&[f32]>,
        out: Option<&mut [MaybeUninit<f32>]>,
    ) -> (Vec<f32>, Vec<f32>) {
        let g = self.geometry;
        let count = grads.len() / self.grad_len;
        let mut bias = vec![0.0f32; self.grad_channels];
        let gated: Cow<[f32]> = match relu_outputs {
            Some(outputs) => {
                let mut per_image = Vec::with_capacity(count);
                // SAFETY: `relu_gate_image` writes every value of each image.
                let gated = unsafe {
                    written(grads.len(), |gated| {
                        for ((gated, output), grad) in gated
                            .chunks_mut(self.grad_len)
                            .zip(outputs.chunks(self.grad_len))
                            .zip(grads.chunks(self.grad_len))
                        {
                            per_image.push(relu_gate_image(
                                output,
                                grad,
                                self.grad_channels,
                                gated,
                            ));
                        }
                    })
                };
                bias = sum_in_order(&per_image, self.grad_channels);
                Cow::Owned(gated)
            }
            None => {
                bias.copy_from_slice(&channel_sums(grads, count, self.grad_channels));
                Cow::Borrowed(grads)
            }
        };
        let mut by_tap = vec![0.0f32; g.weight_len()];
        if self.transposed {
            channels_last::accumulate_weight_grad(g, &gated, inputs, &mut by_tap);
        } else {
            channels_last::accumulate_weight_grad(g, inputs, &gated, &mut by_tap);
        }
        if let (Some(kernel), Some(out)) = (&self.kernel, out) {
            let outs = out.chunks_mut(self.input_len);
            for (grad, out) in gated.chunks(self.grad_len).zip(outs) {
                kernel.run_one(grad, out);
            }
        }
        (by_tap, bias)
    }
}

/// The kernel that turns a gated gradient into the input gradient, prepared once per call: a
/// convolution's input gradient is its adjoint, a transposed convolution's the convolution
/// itself (without bias or ReLU). `None` outside the vector kernels.
fn input_grad_kernel(g: &Conv3x3, transposed: bool, weight: &[f32]) -> Option<ImageKernel> {
    if transposed {
        ImageKernel::forward(g, weight, None, false)
    } else {
        ImageKernel::adjoint(g, weight, None, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::{adjoint, forward, weight_grad};
    use crate::relu_gate::relu_backward_and_channel_sums;

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919 + seed * 104_729) % 2001) as f32 / 1000.0 - 1.0)
            .collect()
    }

    fn assert_close(a: &[f32], b: &[f32], what: &str) {
        assert_eq!(a.len(), b.len(), "{what} size");
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= 1e-4 * (1.0 + y.abs()),
                "{what} at {i}: {x} vs {y}"
            );
        }
    }

    /// The grouped pass gives the gradients of the separate passes, for both layer kinds, both
    /// strides, with and without ReLU and input gradient, on batches that split into groups.
    #[test]
    fn grouped_backward_matches_the_separate_passes() {
        let mut compared = 0;
        for (stride, h, w) in [(1, 32, 32), (2, 16, 16), (1, 8, 8), (2, 9, 7)] {
            for (ci, co, batch) in [(16, 16, 9), (32, 16, 5), (3, 32, 3)] {
                let g = Conv3x3 {
                    batch,
                    image_channels: ci,
                    image_height: h,
                    image_width: w,
                    feature_channels: co,
                    stride,
                };
                for transposed in [false, true] {
                    for (relu, want_input) in [(true, true), (false, true), (true, false)] {
                        let (input_len, grad_len, grad_channels) = if transposed {
                            (g.feature_len(), g.image_len(), ci)
                        } else {
                            (g.image_len(), g.feature_len(), co)
                        };
                        let input = values(batch * input_len, 1);
                        let weight = values(g.weight_len(), 2);
                        let grad = values(batch * grad_len, 3);
                        let output = values(batch * grad_len, 4);
                        let relu_output = relu.then_some(output.as_slice());
                        let Some(ours) = layer_backward(
                            &g,
                            transposed,
                            &input,
                            &weight,
                            &grad,
                            relu_output,
                            want_input,
                        ) else {
                            continue;
                        };
                        let (gated, bias) = match relu_output {
                            Some(o) => {
                                relu_backward_and_channel_sums(o, &grad, batch, grad_channels)
                            }
                            None => (grad.clone(), channel_sums(&grad, batch, grad_channels)),
                        };
                        let (dw, dx) = if transposed {
                            let dx = forward(&g, &gated, &weight, None, false);
                            (weight_grad(&g, &gated, &input), dx)
                        } else {
                            (
                                weight_grad(&g, &input, &gated),
                                adjoint(&g, &gated, &weight),
                            )
                        };
                        let what = format!("{g:?} transposed {transposed} relu {relu}");
                        assert_close(&ours.bias, &bias, &format!("{what} bias"));
                        assert_close(&ours.weight, &dw, &format!("{what} weight"));
                        match (ours.input, want_input) {
                            (Some(ours), true) => {
                                assert_close(&ours, &dx, &format!("{what} input"))
                            }
                            (None, false) => {}
                            (got, _) => panic!("{what}: input gradient {:?}", got.map(|v| v.len())),
                        }
                        compared += 1;
                    }
                }
            }
        }
        if crate::simd::SimdLevel::active() != crate::simd::SimdLevel::Portable {
            assert!(
                compared > 20,
                "only {compared} cases reached the grouped pass"
            );
        }
    }
}
