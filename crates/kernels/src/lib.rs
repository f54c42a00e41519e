//! Fast CPU kernels for cae's layers, plugged into Burn as a backend extension.
//!
//! On the Flex backend the model's 3x3 convolutions and transposed convolutions run cae's
//! kernels ([`mod@dispatch`] choosing between `direct`, `channels_last` and the
//! portable `im2col` path), forward and backward; on any other backend (or with `CAE_KERNELS=burn` in the environment) they run
//! Burn's own operations. Both paths are tested against each other and against the PyTorch
//! reference.

//! The crate is split by job: `geometry` (the shapes), [`mod@simd`] (the vector levels,
//! `CAE_SIMD`, and the operations every kernel is written in once), [`mod@dispatch`] (which
//! kernel runs a pass), the kernels themselves (`direct`, `channels_last`, `im2col`,
//! `backward` for a layer's grouped backward pass, `stack` for a run of layers image by image, `transpose` for the channels-last
//! copies, [`mod@adam`] for the optimiser's update), their helpers (`buffers`, `reduce`, `relu_gate`), [`mod@peak`] (the measured FMA peak), and the Burn
//! side: `backend` (the extension trait), `flex` (its Flex implementation) and
//! `autodiff` (the autodiff node). The crate's API is the tensor functions below
//! ([`conv3x3`], [`conv_transpose3x3`]), [`Kernels`] and the public modules; the rest is
//! private to it (`cargo doc --document-private-items` shows it).

// The kernels are written once over `simd::Isa` and instantiated for x86-64 (AVX-512, AVX2)
// and aarch64 (NEON): on any other architecture their generic code is unused and every pass
// runs the portable path, which `cargo check`/`clippy` would otherwise report as dead code.
#![cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(
        dead_code,
        unused_variables,
        unused_macros,
        unused_mut,
        unreachable_code,
        clippy::never_loop
    )
)]

pub mod adam;
pub(crate) mod autodiff;
pub(crate) mod backend;
pub(crate) mod backward;
pub(crate) mod buffers;
#[cfg(test)]
mod burn_parity;
pub(crate) mod channels_last;
pub(crate) mod dense;
pub(crate) mod direct;
pub mod dispatch;
pub(crate) mod flex;
pub(crate) mod geometry;
pub(crate) mod im2col;
pub mod peak;
pub(crate) mod product;
pub(crate) mod reduce;
pub(crate) mod relu_gate;
pub mod simd;
pub(crate) mod stack;
pub(crate) mod transpose;

use std::sync::OnceLock;

use burn::backend::tensor::FloatTensor;
use burn::backend::{
    Autodiff, AutodiffBackend, BackendTensor, Dispatch, DispatchAutodiffContext, DispatchDevice,
    DispatchTensor, DispatchTensorKind, Flex, GradientCheckpointingStrategy,
};
use burn::tensor::activation;
use burn::tensor::module::{conv_transpose2d, conv2d};
use burn::tensor::{DType, Device, Tensor, TensorData};

pub use backend::Layer;
use backend::{Conv3x3Backend, StackKind, conv_options, conv_transpose_options};
pub use geometry::Conv3x3;

/// Which implementation runs the convolutions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    /// cae's kernels (Flex only).
    Cae,
    /// Burn's generic convolution operations.
    Burn,
}

/// `CAE_KERNELS=burn` forces Burn's operations, to compare or to rule cae's kernels out.
fn requested() -> Kernels {
    static REQUESTED: OnceLock<Kernels> = OnceLock::new();
    *REQUESTED.get_or_init(|| match std::env::var("CAE_KERNELS").as_deref() {
        Ok("burn") => Kernels::Burn,
        _ => Kernels::Cae,
    })
}

/// The kernels a tensor on `device` gets.
pub fn kernels_for(device: &burn::tensor::Device) -> Kernels {
    let on_flex = matches!(
        device.as_dispatch().clone().inner(),
        DispatchDevice::Flex(_)
    );
    if on_flex { requested() } else { Kernels::Burn }
}

/// 3x3 convolution, padding 1, weight `(out, in, 3, 3)`, then ReLU when `relu` is set.
pub fn conv3x3(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Tensor<1>,
    stride: usize,
    relu: bool,
) -> Tensor<4> {
    let kernels = kernels_for(&x.device());
    layer3x3(Layer::Conv, kernels, x, weight, bias, stride, relu)
}

/// 3x3 transposed convolution, padding 1, output padding `stride - 1`, weight `(in, out, 3, 3)`,
/// then ReLU when `relu` is set.
pub fn conv_transpose3x3(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Tensor<1>,
    stride: usize,
    relu: bool,
) -> Tensor<4> {
    let kernels = kernels_for(&x.device());
    layer3x3(Layer::Transposed, kernels, x, weight, bias, stride, relu)
}

/// A fully connected layer, `x (batch, in) . weight (in, out) + bias`, then ReLU when `relu`
/// is set.
pub fn dense(x: Tensor<2>, weight: Tensor<2>, bias: Tensor<1>, relu: bool) -> Tensor<2> {
    let kernels = kernels_for(&x.device());
    dense_with(kernels, x, weight, bias, relu)
}

/// [`dense`] with the implementation chosen by the caller ([`Kernels::Cae`] needs Flex).
pub(crate) fn dense_with(
    kernels: Kernels,
    x: Tensor<2>,
    weight: Tensor<2>,
    bias: Tensor<1>,
    relu: bool,
) -> Tensor<2> {
    match kernels {
        Kernels::Burn => {
            let out = burn::tensor::module::linear(x, weight, Some(bias));
            if relu { activation::relu(out) } else { out }
        }
        Kernels::Cae => Tensor::from_dispatch(<Dispatch as Conv3x3Backend>::dense(
            x.into_dispatch(),
            weight.into_dispatch(),
            bias.into_dispatch(),
            relu,
        )),
    }
}

/// Either layer with the implementation chosen by the caller ([`Kernels::Cae`] needs Flex).
pub(crate) fn layer3x3(
    layer: Layer,
    kernels: Kernels,
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Tensor<1>,
    stride: usize,
    relu: bool,
) -> Tensor<4> {
    let burn_relu = |out: Tensor<4>| if relu { activation::relu(out) } else { out };
    match (kernels, layer) {
        (Kernels::Burn, Layer::Conv) => {
            burn_relu(conv2d(x, weight, Some(bias), conv_options(stride)))
        }
        (Kernels::Burn, Layer::Transposed) => burn_relu(conv_transpose2d(
            x,
            weight,
            Some(bias),
            conv_transpose_options(stride),
        )),
        (Kernels::Cae, _) => {
            let (x, weight, bias) = (
                x.into_dispatch(),
                weight.into_dispatch(),
                bias.into_dispatch(),
            );
            Tensor::from_dispatch(match layer {
                Layer::Conv => <Dispatch as Conv3x3Backend>::conv3x3(x, weight, bias, stride, relu),
                Layer::Transposed => {
                    <Dispatch as Conv3x3Backend>::conv_transpose3x3(x, weight, bias, stride, relu)
                }
            })
        }
    }
}

/// One layer of [`layer_stack`]: a 3x3 convolution or transposed convolution (weights as in
/// [`conv3x3`] and [`conv_transpose3x3`]), then ReLU when `relu` is set.
#[derive(Clone)]
pub struct StackLayer {
    pub layer: Layer,
    pub weight: Tensor<4>,
    pub bias: Tensor<1>,
    pub stride: usize,
    pub relu: bool,
}

/// `layers` applied in turn to `x`. On Flex each image goes through all of them on one thread
/// (the crate's `stack` module: on a Zen 4 `cae bench`'s inference batches of 256 took 0.90x
/// as long as layer by layer at AVX-512 and 0.89x at AVX2, its training steps 0.96x at AVX-512;
/// medians of alternated rounds, README); under autodiff every layer's output is kept, and a
/// run of [`autodiff::STACK_NODE_LAYERS`] layers records one node whose backward pass takes
/// each chunk of images back through all of them on one thread (other runs record a node per
/// layer). Wherever the vector kernels do not cover a layer, and on other backends, layer by
/// layer. The values are the same either way.
pub fn layer_stack(x: Tensor<4>, layers: Vec<StackLayer>) -> Tensor<4> {
    let kernels = kernels_for(&x.device());
    if kernels == Kernels::Cae {
        if !x.is_autodiff() {
            if let Some(out) = stacked(&x, &layers, stack::forward_stack) {
                return out;
            }
        } else if let Some(outputs) = stacked(&x, &layers, stack::forward_stack_keeping) {
            if let Some(out) = stacked_node(&x, &layers, &outputs) {
                return out;
            }
            return layers.into_iter().zip(outputs).fold(x, |x, (l, out)| {
                Tensor::from_dispatch(<Dispatch as Conv3x3Backend>::layer3x3_with_output(
                    x.into_dispatch(),
                    l.weight.into_dispatch(),
                    l.bias.into_dispatch(),
                    out.into_dispatch(),
                    l.stride,
                    l.relu,
                    l.layer == Layer::Transposed,
                ))
            });
        }
    }
    layers.into_iter().fold(x, |x, l| {
        layer3x3(l.layer, kernels, x, l.weight, l.bias, l.stride, l.relu)
    })
}

/// [`layer_stack`] under autodiff on Flex as one node for the whole run, whose backward pass
/// takes each chunk of images back through every layer on one thread
/// ([`autodiff::layer_stack_with_outputs`]); `None` where the run does not have
/// [`autodiff::STACK_NODE_LAYERS`] layers or a tensor is not Flex's (or is checkpointed).
fn stacked_node(x: &Tensor<4>, layers: &[StackLayer], outputs: &[Tensor<4>]) -> Option<Tensor<4>> {
    if layers.len() != autodiff::STACK_NODE_LAYERS {
        return None;
    }
    let x = autodiff_flex(x.clone().into_dispatch())?;
    let weights = layers
        .iter()
        .map(|l| autodiff_flex(l.weight.clone().into_dispatch()))
        .collect::<Option<Vec<_>>>()?;
    let biases = layers
        .iter()
        .map(|l| autodiff_flex(l.bias.clone().into_dispatch()))
        .collect::<Option<Vec<_>>>()?;
    let values = outputs
        .iter()
        .map(|o| match o.clone().inner().into_dispatch().kind {
            DispatchTensorKind::Flex(BackendTensor::Float(t)) => Some(t),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()?;
    let kinds = layers
        .iter()
        .map(|l| StackKind {
            layer: l.layer,
            stride: l.stride,
            relu: l.relu,
        })
        .collect();
    let out = autodiff::layer_stack_with_outputs(x, weights, biases, values, kinds);
    Some(Tensor::from_dispatch(DispatchTensor {
        kind: DispatchTensorKind::Autodiff(Box::new(DispatchTensorKind::Flex(
            BackendTensor::Autodiff(out),
        ))),
        autodiff: DispatchAutodiffContext::Enabled(GradientCheckpointingStrategy::Disabled),
    }))
}

/// A Flex tensor as an autodiff one: tracked already, or a constant (the images); `None` for
/// other backends and for checkpointed tensors, whose nodes record differently.
fn autodiff_flex(tensor: DispatchTensor) -> Option<FloatTensor<Autodiff<Flex>>> {
    let checkpointed = tensor.autodiff
        == DispatchAutodiffContext::Enabled(GradientCheckpointingStrategy::Balanced);
    match tensor.kind {
        _ if checkpointed => None,
        DispatchTensorKind::Autodiff(inner) => match *inner {
            DispatchTensorKind::Flex(BackendTensor::Autodiff(t)) => Some(t),
            _ => None,
        },
        DispatchTensorKind::Flex(BackendTensor::Float(t)) => {
            Some(<Autodiff<Flex> as AutodiffBackend>::from_inner(t))
        }
        _ => None,
    }
}

/// What the host functions of the `stack` module return, as tensors of the given shapes.
trait StackOutput: Sized {
    type Tensors;
    fn into_tensors(self, shapes: &[[usize; 4]], device: &Device) -> Self::Tensors;
}

impl StackOutput for Vec<f32> {
    type Tensors = Tensor<4>;
    fn into_tensors(self, shapes: &[[usize; 4]], device: &Device) -> Tensor<4> {
        let shape = shapes[shapes.len() - 1];
        Tensor::from_data(TensorData::new(self, shape), device)
    }
}

impl StackOutput for Vec<Vec<f32>> {
    type Tensors = Vec<Tensor<4>>;
    fn into_tensors(self, shapes: &[[usize; 4]], device: &Device) -> Vec<Tensor<4>> {
        self.into_iter()
            .zip(shapes)
            .map(|(values, &shape)| Tensor::from_data(TensorData::new(values, shape), device))
            .collect()
    }
}

/// [`layer_stack`] on host values: `run` (a function of the `stack` module) on the values of
/// `x` and of the layers' weights and biases, without autodiff (which `inner` drops without a
/// copy); `None` where it does not apply.
fn stacked<O: StackOutput>(
    x: &Tensor<4>,
    layers: &[StackLayer],
    run: impl FnOnce(&[f32], usize, &[stack::StackStep]) -> Option<O>,
) -> Option<O::Tensors> {
    let [batch, mut channels, mut height, mut width] = x.dims();
    let mut geometries = Vec::with_capacity(layers.len());
    let mut shapes = Vec::with_capacity(layers.len());
    for l in layers {
        let input = [batch, channels, height, width];
        let g = match l.layer {
            Layer::Conv => Conv3x3::of_convolution(input, l.weight.dims(), l.stride)?,
            Layer::Transposed => Conv3x3::of_transposed(input, l.weight.dims(), l.stride)?,
        };
        (channels, height, width) = match l.layer {
            Layer::Conv => (g.feature_channels, g.feature_height(), g.feature_width()),
            Layer::Transposed => (g.image_channels, g.image_height, g.image_width),
        };
        geometries.push(g);
        shapes.push([batch, channels, height, width]);
    }
    let device = x.device();
    let input = x.clone().inner().into_dispatch();
    let weights: Vec<DispatchTensor> = layers
        .iter()
        .map(|l| l.weight.clone().inner().into_dispatch())
        .collect();
    let biases: Vec<DispatchTensor> = layers
        .iter()
        .map(|l| l.bias.clone().inner().into_dispatch())
        .collect();
    let out = flex_f32(&input).and_then(|values| {
        let steps = layers
            .iter()
            .zip(&geometries)
            .zip(weights.iter().zip(&biases))
            .map(|((l, g), (w, b))| {
                Some(stack::StackStep {
                    layer: l.layer,
                    geometry: *g,
                    weight: flex_f32(w)?,
                    bias: flex_f32(b)?,
                    relu: l.relu,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        run(values, batch, &steps)
    });
    out.map(|out| out.into_tensors(&shapes, &device))
}

/// The values of a contiguous `f32` Flex tensor without autodiff, in place.
fn flex_f32(tensor: &DispatchTensor) -> Option<&[f32]> {
    match &tensor.kind {
        DispatchTensorKind::Flex(BackendTensor::Float(t)) if t.dtype() == DType::F32 => {
            t.as_slice::<f32>()
        }
        _ => None,
    }
}
