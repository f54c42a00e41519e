//! Fast CPU kernels for cae's layers, plugged into Burn as a backend extension.
//!
//! On the Flex backend the model's 3x3 convolutions and transposed convolutions run cae's
//! kernels ([`mod@conv3x3`] dispatching to [`mod@direct`] and [`mod@channels_last`]), forward
//! and backward; on any other backend (or with `CAE_KERNELS=burn` in the environment) they run
//! Burn's own operations. Both paths are tested against each other and against the PyTorch
//! reference.

pub mod backward;
pub mod channels_last;
pub mod conv3x3;
pub mod direct;
pub mod extension;
pub mod transpose;

use std::sync::OnceLock;

use burn::backend::{Dispatch, DispatchDevice};
use burn::tensor::Tensor;
use burn::tensor::activation;
use burn::tensor::module::{conv_transpose2d, conv2d};

pub use extension::Layer;
use extension::{Conv3x3Backend, conv_options, conv_transpose_options};

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

/// Either layer with the implementation chosen by the caller ([`Kernels::Cae`] needs Flex).
pub fn layer3x3(
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
