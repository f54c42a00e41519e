//! A run of 3x3 layers one image at a time through all of them: each thread takes an image
//! through every layer of the run, each layer's output for it read by the next while it is in
//! L2, instead of each layer streaming the whole batch through memory and the threads meeting
//! once per layer. Without autodiff the maps between layers live in two per-thread buffers
//! ([`forward_stack`]); a training step keeps every layer's output for its backward pass
//! ([`forward_stack_keeping`]).
//!
//! Every image passes through the same per-image kernels, built the same way, as in the
//! layer-by-layer path ([`crate::dispatch::forward`] and [`crate::dispatch::transposed`]), so
//! the outputs are the same bit for bit; a run with a layer those kernels do not cover (the
//! portable level, other shapes) is `None` and runs layer by layer.

use std::cell::RefCell;
use std::mem::MaybeUninit;

use rayon::prelude::*;

use crate::backend::Layer;
use crate::buffers::per_image;
use crate::direct::zero_borders;
use crate::dispatch::ImageKernel;
use crate::geometry::{Conv3x3, MapLayout};
use crate::transpose::as_uninit;

thread_local! {
    /// Each step's output map for the image on its way through a run, and a padded copy of a
    /// map a kernel cannot take as it is, kept between calls (the kernels' own scratch
    /// buffers are in use while they run).
    static BETWEEN_LAYERS: RefCell<(Vec<StepOutput>, Vec<f32>)> =
        const { RefCell::new((Vec::new(), Vec::new())) };
}

/// One step's output buffer, one per step so that a bordered map's border, once zeroed, stays
/// zero for every later image of the same shape: zeroing it for each image (two buffers
/// alternating between shapes) took 1.1% of batch-256 inference's samples on a Zen 4.
#[derive(Default)]
struct StepOutput {
    /// The shape whose border is zero in `values`, if the last map written was bordered.
    bordered: Option<Shape>,
    values: Vec<f32>,
}

impl StepOutput {
    /// The buffer for a map of `shape` in `layout`, its border zeroed if bordered.
    fn prepare(&mut self, shape: Shape, layout: MapLayout) -> &mut [f32] {
        let (channels, h, w) = shape;
        let len = channels * layout.plane;
        if self.values.len() < len {
            self.values.resize(len, 0.0);
        }
        let target = &mut self.values[..len];
        if !layout.is_bordered() {
            self.bordered = None;
        } else if self.bordered != Some(shape) {
            zero_borders(h, w, target);
            self.bordered = Some(shape);
        }
        target
    }
}

/// One layer of a run, as its weight and bias values and its shape.
pub(crate) struct StackStep<'a> {
    pub layer: Layer,
    /// The layer's geometry: for a transposed convolution its output is the image side.
    pub geometry: Conv3x3,
    pub weight: &'a [f32],
    pub bias: &'a [f32],
    pub relu: bool,
}

/// A map's `(channels, height, width)`.
type Shape = (usize, usize, usize);

fn values((c, h, w): Shape) -> usize {
    c * h * w
}

fn bordered_values((c, h, w): Shape) -> usize {
    c * MapLayout::bordered(h, w).plane
}

/// The kernel the layer-by-layer path ([`crate::dispatch::forward`] for a convolution,
/// [`crate::dispatch::transposed`] for a transposed one) runs for `step`, with the shapes of
/// one image's input and output; `None` where that path is not a per-image vector kernel.
fn step_kernel(step: &StackStep) -> Option<(ImageKernel, Shape, Shape)> {
    let g = &step.geometry;
    let bias = Some(step.bias);
    let image = (g.image_channels, g.image_height, g.image_width);
    let feature = (g.feature_channels, g.feature_height(), g.feature_width());
    match step.layer {
        Layer::Conv => Some((
            ImageKernel::forward(g, step.weight, bias, step.relu)?,
            image,
            feature,
        )),
        Layer::Transposed => Some((
            ImageKernel::adjoint(g, step.weight, bias, step.relu)?,
            feature,
            image,
        )),
    }
}

/// The per-image kernels of `steps` and the shapes of their input and each output; `None`
/// when a step has no per-image vector kernel, the steps' shapes do not chain, or
/// `input_values` is not `batch` inputs.
fn prepare(
    steps: &[StackStep],
    input_values: usize,
    batch: usize,
) -> Option<(Vec<ImageKernel>, Vec<Shape>)> {
    let mut kernels = Vec::with_capacity(steps.len());
    let mut shapes: Vec<Shape> = Vec::with_capacity(steps.len() + 1);
    for step in steps {
        let (kernel, input, output) = step_kernel(step)?;
        if shapes.last().is_some_and(|&previous| previous != input) {
            return None;
        }
        if shapes.is_empty() {
            shapes.push(input);
        }
        shapes.push(output);
        kernels.push(kernel);
    }
    (!kernels.is_empty() && input_values == batch * values(shapes[0])).then_some((kernels, shapes))
}

/// The output of `steps` applied in turn to the `batch` images of `input`; `None` (before any
/// work) where [`prepare`] declines.
///
/// Every per-image kernel reads its input zero-bordered ([`MapLayout::bordered`]); a layer
/// that can write its output that way does, and the next one reads it without the padding
/// copy it would otherwise make (5% of batch-256 inference's samples on a Zen 4).
pub(crate) fn forward_stack(input: &[f32], batch: usize, steps: &[StackStep]) -> Option<Vec<f32>> {
    let (kernels, shapes) = prepare(steps, input.len(), batch)?;
    let (first, last) = (values(shapes[0]), values(shapes[shapes.len() - 1]));
    let count = kernels.len();
    // Each step's output layout: bordered where the next step reads it and the kernel can.
    let layouts: Vec<MapLayout> = (0..count)
        .map(|i| {
            let (_, h, w) = shapes[i + 1];
            if i + 1 < count && kernels[i].writes_bordered() {
                MapLayout::bordered(h, w)
            } else {
                MapLayout::plain(h, w)
            }
        })
        .collect();
    // The widest input a step may need copied.
    let widest = shapes[..count]
        .iter()
        .map(|&s| bordered_values(s))
        .max()
        .unwrap_or(0);
    // SAFETY: the last kernel writes every value of each image's output.
    Some(unsafe {
        per_image(input, first, last, |image, out| {
            BETWEEN_LAYERS.with(|cell| {
                let (outputs, padding) = &mut *cell.borrow_mut();
                if padding.len() < widest {
                    padding.resize(widest, 0.0);
                }
                if outputs.len() < count {
                    outputs.resize_with(count, StepOutput::default);
                }
                for (i, (kernel, &layout)) in kernels.iter().zip(&layouts).enumerate() {
                    let (done, rest) = outputs.split_at_mut(i);
                    let shape = shapes[i];
                    let padded: &[f32] = match done.last() {
                        Some(previous) if previous.bordered == Some(shape) => {
                            &previous.values[..bordered_values(shape)]
                        }
                        previous => {
                            let source = previous.map_or(image, |p| &p.values[..values(shape)]);
                            let padded = &mut padding[..bordered_values(shape)];
                            kernel.pad_input(source, padded);
                            padded
                        }
                    };
                    if i + 1 == count {
                        kernel.run_padded(padded, out, layout);
                    } else {
                        let target = rest[0].prepare(shapes[i + 1], layout);
                        kernel.run_padded(padded, as_uninit(target), layout);
                    }
                }
            })
        })
    })
}

/// [`forward_stack`] keeping every step's output (a training step's backward pass reads them
/// all): each image still goes through all the steps on one thread, each layer's output for it
/// read back by the next while it is in L2.
pub(crate) fn forward_stack_keeping(
    input: &[f32],
    batch: usize,
    steps: &[StackStep],
) -> Option<Vec<Vec<f32>>> {
    let (kernels, shapes) = prepare(steps, input.len(), batch)?;
    let sizes: Vec<usize> = shapes.iter().map(|&s| values(s)).collect();
    let mut outputs: Vec<Vec<f32>> = sizes[1..]
        .iter()
        .map(|&len| Vec::with_capacity(batch * len))
        .collect();
    /// The outputs' buffers, written by image from several threads.
    struct Targets(Vec<*mut MaybeUninit<f32>>);
    // SAFETY: each image writes only its own disjoint range of every buffer.
    unsafe impl Sync for Targets {}
    let targets = Targets(
        outputs
            .iter_mut()
            .map(|v| v.spare_capacity_mut().as_mut_ptr())
            .collect(),
    );
    let targets = &targets;
    (0..batch).into_par_iter().for_each(|n| {
        let mut source = &input[n * sizes[0]..][..sizes[0]];
        for (i, kernel) in kernels.iter().enumerate() {
            let len = sizes[i + 1];
            // SAFETY: image `n`'s range of output `i`, inside its capacity and written by this
            // image alone; the kernel writes every value of it, which the next step then reads.
            unsafe {
                let out = std::slice::from_raw_parts_mut(targets.0[i].add(n * len), len);
                kernel.run_one(source, out);
                source = std::slice::from_raw_parts(out.as_ptr().cast::<f32>(), len);
            }
        }
    });
    for (output, &len) in outputs.iter_mut().zip(&sizes[1..]) {
        // SAFETY: every image wrote its range of every output.
        unsafe { output.set_len(batch * len) };
    }
    Some(outputs)
}

/// `(layer, in channels, out channels, stride, relu)` of the seed model's encoder and
/// decoder convolutions.
#[cfg(test)]
pub(crate) const ENCODER: [(Layer, usize, usize, usize, bool); 6] = [
    (Layer::Conv, 3, 16, 1, true),
    (Layer::Conv, 16, 16, 1, true),
    (Layer::Conv, 16, 32, 2, true),
    (Layer::Conv, 32, 32, 1, true),
    (Layer::Conv, 32, 64, 2, true),
    (Layer::Conv, 64, 64, 1, true),
];
#[cfg(test)]
pub(crate) const DECODER: [(Layer, usize, usize, usize, bool); 6] = [
    (Layer::Transposed, 64, 64, 1, true),
    (Layer::Transposed, 64, 32, 2, true),
    (Layer::Transposed, 32, 32, 1, true),
    (Layer::Transposed, 32, 16, 2, true),
    (Layer::Transposed, 16, 16, 1, true),
    (Layer::Transposed, 16, 3, 1, false),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simd::SimdLevel;
    use crate::{self as kernels, StackLayer};
    use burn::tensor::{Device, Tensor, TensorData};
    use rand::rngs::Xoshiro256PlusPlus;
    use rand::{RngExt, SeedableRng};

    fn random(rng: &mut Xoshiro256PlusPlus, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
    }

    /// Random weights and biases for `layers`, as tensors.
    fn stack_layers(
        rng: &mut Xoshiro256PlusPlus,
        layers: &[(Layer, usize, usize, usize, bool)],
        device: &Device,
    ) -> Vec<StackLayer> {
        layers
            .iter()
            .map(|&(layer, inputs, outputs, stride, relu)| {
                let shape = match layer {
                    Layer::Conv => [outputs, inputs, 3, 3],
                    Layer::Transposed => [inputs, outputs, 3, 3],
                };
                let weight = random(rng, inputs * outputs * 9);
                StackLayer {
                    layer,
                    weight: Tensor::from_data(TensorData::new(weight, shape), device),
                    bias: Tensor::from_data(
                        TensorData::new(random(rng, outputs), [outputs]),
                        device,
                    ),
                    stride,
                    relu,
                }
            })
            .collect()
    }

    fn bits(t: Tensor<4>) -> Vec<u32> {
        let values = t.into_data().convert::<f32>();
        values
            .as_slice::<f32>()
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect()
    }

    /// The seed model's encoder (32x32 and Fashion-MNIST's 28x28 images) and decoder, image by
    /// image, against the same layers one at a time: the same values bit for bit, and for the
    /// seed model's shapes the stacked path taken at every vector level.
    #[test]
    fn stack_matches_layer_by_layer() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(11);
        let device = Device::flex();
        for (layers, channels, size) in [
            (&ENCODER, 3, 32),
            (&DECODER, 64, 8),
            (&ENCODER, 3, 28),
            (&DECODER, 64, 7),
        ] {
            let mut layers = layers.to_vec();
            if channels == 3 && size == 28 {
                // Fashion-MNIST's single channel in and out.
                layers[0].1 = 1;
            }
            let channels = layers[0].1;
            let stack = stack_layers(&mut rng, &layers, &device);
            let batch = 5;
            let x = random(&mut rng, batch * channels * size * size);
            let x =
                Tensor::<4>::from_data(TensorData::new(x, [batch, channels, size, size]), &device);
            let stacked = kernels::layer_stack(x.clone(), stack.to_vec());
            let one_by_one = stack.iter().fold(x.clone(), |x, l| match l.layer {
                Layer::Conv => {
                    kernels::conv3x3(x, l.weight.clone(), l.bias.clone(), l.stride, l.relu)
                }
                Layer::Transposed => kernels::conv_transpose3x3(
                    x,
                    l.weight.clone(),
                    l.bias.clone(),
                    l.stride,
                    l.relu,
                ),
            });
            assert_eq!(stacked.dims(), one_by_one.dims(), "{layers:?} at {size}");
            assert!(
                bits(stacked) == bits(one_by_one),
                "{layers:?} at {size}: values differ"
            );
            // The host path itself: taken for the seed model's shapes at every vector level,
            // declined at the portable one (elsewhere it depends on the kernels' coverage).
            let host = super::super::stacked(&x, &stack, forward_stack);
            if size % 8 == 0 {
                let vector = SimdLevel::active() != SimdLevel::Portable;
                assert_eq!(host.is_some(), vector, "{layers:?} at {size}");
            }
        }
    }

    /// Under autodiff (a training step) the stacked forward pass keeps every layer's output and
    /// each layer records its own node: the output and every gradient (input, weights, biases)
    /// are those of the layers run one at a time, bit for bit, and the stacked path is taken
    /// for the seed model's shapes at every vector level.
    #[test]
    fn stack_under_autodiff_matches_layer_by_layer() {
        let device = Device::flex().autodiff();
        // Batch 3 goes back layer by layer inside the run's node; a batch of two chunks per
        // thread through all the layers at once.
        let large = 16 * rayon::current_num_threads();
        let runs = [(&ENCODER, 3, 32), (&DECODER, 64, 8)];
        for ((layers, channels, size), batch) in runs.into_iter().flat_map(|r| [(r, 3), (r, large)])
        {
            let passes = crate::flex::STACKED_PASSES.with(|count| count.get());
            let run = |stacked: bool| {
                let mut rng = Xoshiro256PlusPlus::seed_from_u64(13);
                let stack: Vec<StackLayer> = stack_layers(&mut rng, layers, &device)
                    .into_iter()
                    .map(|l| StackLayer {
                        weight: l.weight.require_grad(),
                        bias: l.bias.require_grad(),
                        ..l
                    })
                    .collect();
                let x = random(&mut rng, batch * channels * size * size);
                let shape = [batch, channels, size, size];
                let x = Tensor::<4>::from_data(TensorData::new(x, shape), &device).require_grad();
                let taken = super::super::stacked(&x, &stack, forward_stack_keeping).is_some();
                let out = if stacked {
                    kernels::layer_stack(x.clone(), stack.to_vec())
                } else {
                    stack.iter().fold(x.clone(), |x, l| {
                        let (w, b) = (l.weight.clone(), l.bias.clone());
                        match l.layer {
                            Layer::Conv => kernels::conv3x3(x, w, b, l.stride, l.relu),
                            Layer::Transposed => {
                                kernels::conv_transpose3x3(x, w, b, l.stride, l.relu)
                            }
                        }
                    })
                };
                let probe = Tensor::<4>::from_data(
                    TensorData::new(random(&mut rng, out.shape().num_elements()), out.dims()),
                    &device,
                );
                let grads = (out.clone() * probe).sum().backward();
                let mut all = vec![bits(out.inner()), bits(x.grad(&grads).expect("input grad"))];
                for l in &stack {
                    all.push(bits(l.weight.grad(&grads).expect("weight grad")));
                    let bias = l.bias.grad(&grads).expect("bias grad");
                    all.push(bits(bias.unsqueeze::<4>()));
                }
                (all, taken)
            };
            let ((stacked, taken), (one_by_one, _)) = (run(true), run(false));
            assert!(
                stacked == one_by_one,
                "{layers:?}: values or gradients differ"
            );
            let vector = SimdLevel::active() != SimdLevel::Portable;
            assert_eq!(taken, vector, "{layers:?}");
            let passes = crate::flex::STACKED_PASSES.with(|count| count.get()) - passes;
            assert_eq!(
                passes > 0,
                vector && batch == large,
                "{layers:?} at batch {batch}"
            );
        }
    }

    /// Shapes that do not chain are declined (the layer-by-layer path then reports the
    /// mismatch), and an autodiff input keeps its gradient through a stack.
    #[test]
    fn stack_declines_what_it_cannot_run() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(12);
        let device = Device::flex();
        let g = |image_channels, feature_channels| Conv3x3 {
            batch: 2,
            image_channels,
            image_height: 8,
            image_width: 8,
            feature_channels,
            stride: 1,
        };
        let (w1, w2) = (random(&mut rng, 16 * 16 * 9), random(&mut rng, 32 * 32 * 9));
        let bias = random(&mut rng, 32);
        let step = |geometry: Conv3x3, weight| StackStep {
            layer: Layer::Conv,
            geometry,
            weight,
            bias: &bias[..geometry.feature_channels],
            relu: true,
        };
        let input = random(&mut rng, 2 * 16 * 64);
        // 16 channels out of the first layer, 32 into the second.
        let steps = [step(g(16, 16), &w1[..]), step(g(32, 32), &w2[..])];
        assert!(forward_stack(&input, 2, &steps).is_none());
        // The wrong number of input values.
        assert!(forward_stack(&input[1..], 2, &steps[..1]).is_none());

        let tracked = Tensor::<4>::from_data(
            TensorData::new(input.clone(), [2, 16, 8, 8]),
            &device.clone().autodiff(),
        )
        .require_grad();
        let layers = stack_layers(&mut rng, &ENCODER[1..2], &device.clone().autodiff());
        let out = kernels::layer_stack(tracked.clone(), layers);
        let grads = out.sum().backward();
        assert!(
            tracked.grad(&grads).is_some(),
            "an autodiff input keeps its gradient"
        );
    }
}
