//! A layer's whole backward pass (ReLU gate, bias, weight and input gradients) a group of
//! images at a time, so that the gated gradient of a group is read by both kernels while it is
//! in L2 instead of being written out and read back twice.
//!
//! Used where the vector kernels run both gradients (every layer of the seed model); other
//! geometries take the separate passes of [`super::conv3x3`]. A run of layers can go back
//! through all of them a chunk of images at a time ([`stack_backward`]).

use std::borrow::Cow;
use std::cell::RefCell;
use std::mem::MaybeUninit;

use rayon::prelude::*;

use crate::buffers::written;
use crate::channels_last;
use crate::dispatch::ImageKernel;
use crate::geometry::Conv3x3;
use crate::reduce::{channel_sums, sum_in_order};
use crate::relu_gate::relu_gate_image;
use crate::transpose::as_uninit;

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
    let group = layer.group_size();
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

    /// Images per group: groups small enough for L2, and at least two per thread so that the
    /// threads stay busy.
    fn group_size(&self) -> usize {
        let per_image = self.grad_len + 2 * self.input_len;
        let balanced = self
            .geometry
            .batch
            .div_ceil(2 * rayon::current_num_threads());
        // A power of two, so that the groups of a run's layers nest in [`stack_backward`]'s
        // chunks (the largest group is a multiple of every other).
        let fits = (GROUP_BUDGET / per_image).max(1);
        (1 << fits.ilog2()).min(balanced.max(1))
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

thread_local! {
    /// [`stack_backward`]'s input gradients of a chunk between two layers, kept between calls:
    /// one buffer the layer reads, one it writes.
    static CHUNK_GRADS: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// One layer of a run for [`stack_backward`]: its geometry, kind, input (the batch's),
/// weight, and output where it applied ReLU.
pub(crate) struct BackwardStep<'a> {
    pub geometry: Conv3x3,
    pub transposed: bool,
    pub input: &'a [f32],
    pub weight: &'a [f32],
    pub relu_output: Option<&'a [f32]>,
}

/// The backward pass of a run of layers (`steps` in forward order) from the gradient `grad` of
/// the last one's output: each thread takes a chunk of images back through every layer, the
/// input gradient of one layer becoming the next one's gradient while it is in L2, instead of
/// each layer streaming the batch's gradient through memory and the threads meeting once per
/// layer. Each layer still runs [`GroupWork::run`] on its own groups of images, whose partial
/// sums are added in image order, so the gradients are those of [`layer_backward`] bit for
/// bit. The first layer's input gradient is computed when `want_input` is set. `None` (before
/// any work) where a layer is outside the vector kernels or the chunks, a common multiple of
/// every layer's group, would leave a thread without two of them.
pub(crate) fn stack_backward(
    steps: &[BackwardStep],
    grad: &[f32],
    want_input: bool,
) -> Option<Vec<LayerGrads>> {
    let batch = steps.first()?.geometry.batch;
    let mut works = Vec::with_capacity(steps.len());
    for (i, step) in steps.iter().enumerate() {
        let g = &step.geometry;
        if g.batch != batch || !channels_last::available(g) {
            return None;
        }
        let kernel = match i > 0 || want_input {
            true => Some(input_grad_kernel(g, step.transposed, step.weight)?),
            false => None,
        };
        let work = GroupWork::new(g, step.transposed, kernel);
        assert_eq!(step.input.len(), batch * work.input_len, "input size");
        assert_eq!(step.weight.len(), g.weight_len(), "weight size");
        if let Some(output) = step.relu_output {
            assert_eq!(output.len(), batch * work.grad_len, "ReLU output size");
        }
        works.push(work);
    }
    for pair in works.windows(2) {
        assert_eq!(
            pair[0].grad_len, pair[1].input_len,
            "the layers' shapes chain"
        );
    }
    let last = works.last()?;
    assert_eq!(grad.len(), batch * last.grad_len, "gradient size");
    let groups: Vec<usize> = works.iter().map(GroupWork::group_size).collect();
    let chunk = groups.iter().fold(1, |l, &g| l / gcd(l, g) * g);
    if batch.div_ceil(chunk) < 2 * rayon::current_num_threads() {
        return None;
    }
    let first_len = works[0].input_len;
    // One task per chunk: each layer's (weight-by-tap, bias) partials of its groups, in order.
    let widest = works.iter().map(|w| w.input_len).max().unwrap_or(0) * chunk;
    let run_chunk = |start: usize, out: Option<&mut [MaybeUninit<f32>]>| {
        CHUNK_GRADS.with(|cell| {
            let (above, below) = &mut *cell.borrow_mut();
            for buffer in [&mut *above, &mut *below] {
                if buffer.len() < widest {
                    buffer.resize(widest, 0.0);
                }
            }
            let count = chunk.min(batch - start);
            let top = &works[works.len() - 1];
            let mut partials: Vec<Vec<(Vec<f32>, Vec<f32>)>> = vec![Vec::new(); works.len()];
            let mut out = out;
            for (i, (work, step)) in works.iter().zip(steps).enumerate().rev() {
                let group = groups[i];
                let inputs = &step.input[start * work.input_len..][..count * work.input_len];
                let outputs = step
                    .relu_output
                    .map(|o| &o[start * work.grad_len..][..count * work.grad_len]);
                // The top layer reads the run's gradient; each layer below reads what the one
                // above wrote into `above`.
                let upstream: &[f32] = if i + 1 == works.len() {
                    &grad[start * top.grad_len..][..count * top.grad_len]
                } else {
                    &above[..count * work.grad_len]
                };
                let mut target: Option<&mut [MaybeUninit<f32>]> = if i > 0 {
                    Some(as_uninit(&mut below[..count * work.input_len]))
                } else {
                    out.take()
                };
                for (j, (x, dy)) in inputs
                    .chunks(group * work.input_len)
                    .zip(upstream.chunks(group * work.grad_len))
                    .enumerate()
                {
                    let relu = outputs.map(|o| &o[j * group * work.grad_len..][..dy.len()]);
                    let sub = target
                        .as_deref_mut()
                        .map(|t| &mut t[j * group * work.input_len..][..x.len()]);
                    partials[i].push(work.run(x, dy, relu, sub));
                }
                std::mem::swap(above, below);
            }
            partials
        })
    };
    let starts: Vec<usize> = (0..batch).step_by(chunk).collect();
    let mut per_chunk = Vec::new();
    let input_grad = if want_input {
        // SAFETY: every chunk writes the first layer's input gradient of each of its images.
        Some(unsafe {
            written(batch * first_len, |out| {
                per_chunk = out
                    .par_chunks_mut(chunk * first_len)
                    .zip(starts.par_iter())
                    .map(|(out, &start)| run_chunk(start, Some(out)))
                    .collect();
            })
        })
    } else {
        per_chunk = starts
            .par_iter()
            .map(|&start| run_chunk(start, None))
            .collect();
        None
    };
    let mut grads: Vec<LayerGrads> = Vec::with_capacity(works.len());
    for (i, work) in works.iter().enumerate() {
        let (by_taps, biases): (Vec<Vec<f32>>, Vec<Vec<f32>>) = per_chunk
            .iter_mut()
            .flat_map(|layers| std::mem::take(&mut layers[i]))
            .unzip();
        let g = work.geometry;
        grads.push(LayerGrads {
            input: None,
            weight: channels_last::weight_from_taps(g, &sum_in_order(&by_taps, g.weight_len())),
            bias: sum_in_order(&biases, work.grad_channels),
        });
    }
    grads[0].input = input_grad;
    Some(grads)
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
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
    use crate::backend::Layer;
    use crate::dispatch::{adjoint, forward, weight_grad};
    use crate::relu_gate::relu_backward_and_channel_sums;
    use crate::stack::{DECODER, ENCODER};

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

    /// A layer of [`crate::stack::ENCODER`] or [`crate::stack::DECODER`]: `(layer, in
    /// channels, out channels, stride, relu)`.
    type SeedLayer = (Layer, usize, usize, usize, bool);

    /// A run's inputs, weights, ReLU outputs and the gradient of its output, at `batch`.
    struct Run {
        geometries: Vec<Conv3x3>,
        transposed: Vec<bool>,
        inputs: Vec<Vec<f32>>,
        weights: Vec<Vec<f32>>,
        relu_outputs: Vec<Option<Vec<f32>>>,
        grad: Vec<f32>,
    }

    /// `layers` on inputs of `side x side` pixels.
    fn run_of(layers: &[SeedLayer], side: usize, batch: usize) -> Run {
        let mut run = Run {
            geometries: Vec::new(),
            transposed: Vec::new(),
            inputs: Vec::new(),
            weights: Vec::new(),
            relu_outputs: Vec::new(),
            grad: Vec::new(),
        };
        let mut side = side;
        for (i, &(layer, inputs, outputs, stride, relu)) in layers.iter().enumerate() {
            let transposed = layer == Layer::Transposed;
            // A transposed layer's image side is its output.
            let (image_channels, feature_channels, image_side) = match transposed {
                false => (inputs, outputs, side),
                true => (outputs, inputs, side * stride),
            };
            let g = Conv3x3 {
                batch,
                image_channels,
                image_height: image_side,
                image_width: image_side,
                feature_channels,
                stride,
            };
            side = match transposed {
                false => g.feature_height(),
                true => image_side,
            };
            let (input_len, output_len) = match transposed {
                false => (g.image_len(), g.feature_len()),
                true => (g.feature_len(), g.image_len()),
            };
            run.inputs.push(values(batch * input_len, 10 + i));
            run.weights.push(values(g.weight_len(), 30 + i));
            run.relu_outputs
                .push(relu.then(|| values(batch * output_len, 50 + i)));
            run.grad = values(batch * output_len, 70);
            run.geometries.push(g);
            run.transposed.push(transposed);
        }
        run
    }

    fn steps(run: &Run) -> Vec<BackwardStep<'_>> {
        (0..run.geometries.len())
            .map(|i| BackwardStep {
                geometry: run.geometries[i],
                transposed: run.transposed[i],
                input: &run.inputs[i],
                weight: &run.weights[i],
                relu_output: run.relu_outputs[i].as_deref(),
            })
            .collect()
    }

    /// [`layer_backward`] layer by layer, from the last layer to the first.
    fn chained(run: &Run, want_input: bool) -> Vec<LayerGrads> {
        let mut grad = run.grad.clone();
        let mut grads = Vec::new();
        for i in (0..run.geometries.len()).rev() {
            let mut layer = layer_backward(
                &run.geometries[i],
                run.transposed[i],
                &run.inputs[i],
                &run.weights[i],
                &grad,
                run.relu_outputs[i].as_deref(),
                i > 0 || want_input,
            )
            .expect("the vector kernels cover the seed model's layers");
            if i > 0 {
                grad = layer.input.take().expect("input gradient");
            }
            grads.push(layer);
        }
        grads.reverse();
        grads
    }

    fn bits(values: &[f32]) -> Vec<u32> {
        values.iter().map(|v| v.to_bits()).collect()
    }

    /// The run's backward pass gives every layer's gradients of the layer-by-layer pass bit
    /// for bit, for the seed model's encoder (without the image's gradient) and decoder (with
    /// its input's), at a batch that splits into two chunks per thread.
    #[test]
    fn stack_backward_matches_layer_by_layer_bit_for_bit() {
        if crate::simd::SimdLevel::active() == crate::simd::SimdLevel::Portable {
            return;
        }
        let batch = 16 * rayon::current_num_threads();
        let mut stacked_runs = 0;
        for (layers, side, want_input) in [(&ENCODER, 32, false), (&DECODER, 8, true)] {
            let run = run_of(layers, side, batch);
            let Some(ours) = stack_backward(&steps(&run), &run.grad, want_input) else {
                continue;
            };
            stacked_runs += 1;
            let theirs = chained(&run, want_input);
            for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
                assert_eq!(
                    bits(&a.weight),
                    bits(&b.weight),
                    "layer {i} weight gradient"
                );
                assert_eq!(bits(&a.bias), bits(&b.bias), "layer {i} bias gradient");
                assert_eq!(
                    a.input.as_deref().map(bits),
                    b.input.as_deref().map(bits),
                    "layer {i} input gradient"
                );
            }
        }
        assert!(stacked_runs > 0, "neither run took the stacked pass");
    }

    /// Times the two passes on the seed model's runs at batch 64, alternating (run with
    /// `--ignored --nocapture`): medians of 30 repetitions each.
    #[test]
    #[ignore = "a timing, not a test"]
    fn time_stack_backward_against_layer_by_layer() {
        for (name, layers, side, want_input) in [
            ("encoder", &ENCODER, 32, false),
            ("decoder", &DECODER, 8, true),
        ] {
            let run = run_of(layers, side, 64);
            let (mut chain, mut stack) = (Vec::new(), Vec::new());
            for _ in 0..30 {
                let t = std::time::Instant::now();
                std::hint::black_box(chained(&run, want_input));
                chain.push(t.elapsed().as_secs_f64() * 1e3);
                let t = std::time::Instant::now();
                let ours = stack_backward(&steps(&run), &run.grad, want_input);
                stack.push(t.elapsed().as_secs_f64() * 1e3);
                if ours.is_none() {
                    println!("{name}: no stacked pass");
                    break;
                }
            }
            chain.sort_by(f64::total_cmp);
            stack.sort_by(f64::total_cmp);
            println!(
                "{name}: layer by layer {:.2} ms, stacked {:.2} ms",
                chain[chain.len() / 2],
                stack[stack.len() / 2]
            );
        }
    }
}
