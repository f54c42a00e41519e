//! cae's 3x3 convolutions as a Burn backend extension: the trait, whose default bodies are
//! Burn's own operations (every backend but Flex runs those), and the pieces of a layer's
//! backward pass that the Flex implementation ([`crate::flex`]) and the autodiff node
//! ([`crate::autodiff`]) share.

use burn::backend::TensorMetadata;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, backend_extension};
use burn::tensor::Shape;
use burn::tensor::ops::{ConvOptions, ConvTransposeOptions};

pub(crate) fn conv_options(stride: usize) -> ConvOptions<2> {
    ConvOptions::new([stride; 2], [1, 1], [1, 1], 1)
}

/// Padding 1, and output padding `stride - 1` so that the output is `stride` times the input.
pub(crate) fn conv_transpose_options(stride: usize) -> ConvTransposeOptions<2> {
    ConvTransposeOptions::new([stride; 2], [1, 1], [stride - 1; 2], [1, 1], 1)
}

/// 3x3 convolutions with padding 1 (stride 1 or 2) and their transposes, weights and layouts
/// as in PyTorch. The default bodies are Burn's generic operations.
#[backend_extension(Flex, Autodiff)]
pub(crate) trait Conv3x3Backend: Backend {
    /// The convolution, followed by ReLU when `relu` is set.
    fn conv3x3(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        stride: usize,
        relu: bool,
    ) -> FloatTensor<Self> {
        burn_conv3x3::<Self>(x, weight, bias, stride, relu)
    }

    fn conv3x3_x_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        stride: usize,
    ) -> FloatTensor<Self> {
        Self::conv2d_x_backward(x, weight, output_grad, conv_options(stride))
    }

    fn conv3x3_weight_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        stride: usize,
    ) -> FloatTensor<Self> {
        Self::conv2d_weight_backward(x, weight, output_grad, conv_options(stride))
    }

    /// The transposed convolution, followed by ReLU when `relu` is set.
    fn conv_transpose3x3(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        stride: usize,
        relu: bool,
    ) -> FloatTensor<Self> {
        burn_conv_transpose3x3::<Self>(x, weight, bias, stride, relu)
    }

    /// Either layer (`transposed` chooses) whose output `output` was computed already, by the
    /// crate's `stack` module: the result is `output` itself; under autodiff its node records
    /// the same backward step as [`Self::conv3x3`] and [`Self::conv_transpose3x3`] do.
    fn layer3x3_with_output(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        output: FloatTensor<Self>,
        stride: usize,
        relu: bool,
        transposed: bool,
    ) -> FloatTensor<Self> {
        let _ = (x, weight, bias, stride, relu, transposed);
        output
    }

    fn conv_transpose3x3_x_backward(
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        stride: usize,
    ) -> FloatTensor<Self> {
        Self::conv_transpose2d_x_backward(weight, output_grad, conv_transpose_options(stride))
    }

    fn conv_transpose3x3_weight_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        stride: usize,
    ) -> FloatTensor<Self> {
        Self::conv_transpose2d_weight_backward(
            x,
            weight,
            output_grad,
            conv_transpose_options(stride),
        )
    }

    /// The bias gradient of either layer: `output_grad` summed over batch, height and width.
    fn channel_sum(output_grad: FloatTensor<Self>) -> FloatTensor<Self> {
        burn_channel_sum::<Self>(output_grad)
    }

    /// The gradient through a ReLU whose output was `relu_output` (kept where the output is
    /// positive or NaN, as Burn's `relu_backward`), and its [`Self::channel_sum`].
    fn relu_backward_and_channel_sum(
        relu_output: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        burn_relu_backward_and_channel_sum::<Self>(relu_output, output_grad)
    }

    /// A layer's input, weight and bias gradients in one call (`transposed`: a transposed
    /// convolution). `output` is the layer's output: with `relu` set, its zeros gate
    /// `output_grad` first; otherwise it is not read. The default runs the operations above
    /// one after the other.
    #[allow(clippy::too_many_arguments)]
    fn layer3x3_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        stride: usize,
        relu: bool,
        transposed: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let step = StepInputs::new(x, weight, output, output_grad, stride, relu, transposed);
        let (dx, dw, db) = separate_backward::<Self>(step, true);
        (dx.expect("asked for the input gradient"), dw, db)
    }

    /// A fully connected layer, `x (batch, in) . weight (in, out) + bias`, followed by ReLU
    /// when `relu` is set.
    fn dense(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        relu: bool,
    ) -> FloatTensor<Self> {
        burn_dense::<Self>(x, weight, bias, relu)
    }

    /// [`Self::dense`]'s input, weight and bias gradients; `output` is the layer's output,
    /// which with `relu` set gates `output_grad` first and otherwise is not read.
    fn dense_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        relu: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let (dx, dw, db) = burn_dense_backward::<Self>(x, weight, output, output_grad, relu, true);
        (dx.expect("asked for the input gradient"), dw, db)
    }

    /// [`Self::dense_backward`] without the input gradient (an untracked input).
    fn dense_param_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        relu: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (_, dw, db) = burn_dense_backward::<Self>(x, weight, output, output_grad, relu, false);
        (dw, db)
    }

    /// [`Self::layer3x3_backward`] without the input gradient (an untracked input).
    #[allow(clippy::too_many_arguments)]
    fn layer3x3_param_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        stride: usize,
        relu: bool,
        transposed: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let step = StepInputs::new(x, weight, output, output_grad, stride, relu, transposed);
        let (_, dw, db) = separate_backward::<Self>(step, false);
        (dw, db)
    }
}

/// The inputs of a layer's backward pass.
pub(crate) struct StepInputs<B: Backend> {
    pub(crate) x: FloatTensor<B>,
    pub(crate) weight: FloatTensor<B>,
    pub(crate) relu_output: Option<FloatTensor<B>>,
    pub(crate) grad: FloatTensor<B>,
    pub(crate) stride: usize,
    pub(crate) layer: Layer,
}

impl<B: Backend> StepInputs<B> {
    pub(crate) fn new(
        x: FloatTensor<B>,
        weight: FloatTensor<B>,
        output: FloatTensor<B>,
        grad: FloatTensor<B>,
        stride: usize,
        relu: bool,
        transposed: bool,
    ) -> Self {
        StepInputs {
            x,
            weight,
            relu_output: relu.then_some(output),
            grad,
            stride,
            layer: if transposed {
                Layer::Transposed
            } else {
                Layer::Conv
            },
        }
    }
}

/// What kind of layer one layer of a run is: its [`Layer`], stride, and whether it applied
/// ReLU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StackKind {
    pub(crate) layer: Layer,
    pub(crate) stride: usize,
    pub(crate) relu: bool,
}

/// A run's gradients: of its input (when asked for), and every layer's weight and bias
/// gradients in forward order.
pub(crate) type StackGrads<B> = (
    Option<FloatTensor<B>>,
    Vec<FloatTensor<B>>,
    Vec<FloatTensor<B>>,
);

/// A run's backward pass ([`crate::flex::layer_stack_backward`]) layer by layer, from the last
/// layer to the first: each layer's output is read only where it applied ReLU.
pub(crate) fn chained_stack_backward<B: Conv3x3Backend>(
    inputs: Vec<FloatTensor<B>>,
    weights: Vec<FloatTensor<B>>,
    outputs: Vec<FloatTensor<B>>,
    output_grad: FloatTensor<B>,
    kinds: &[StackKind],
    want_input: bool,
) -> StackGrads<B> {
    let mut layers: Vec<_> = inputs.into_iter().zip(weights).zip(outputs).collect();
    let (mut weight_grads, mut bias_grads) = (Vec::new(), Vec::new());
    let mut grad = Some(output_grad);
    for (i, kind) in kinds.iter().enumerate().rev() {
        let ((x, weight), output) = layers.pop().expect("a layer per kind");
        let dy = grad.take().expect("the gradient of the layer's output");
        let output = if kind.relu { output } else { dy.clone() };
        let transposed = kind.layer == Layer::Transposed;
        let (dw, db) = if i > 0 || want_input {
            let (dx, dw, db) =
                B::layer3x3_backward(x, weight, output, dy, kind.stride, kind.relu, transposed);
            grad = Some(dx);
            (dw, db)
        } else {
            B::layer3x3_param_backward(x, weight, output, dy, kind.stride, kind.relu, transposed)
        };
        weight_grads.push(dw);
        bias_grads.push(db);
    }
    weight_grads.reverse();
    bias_grads.reverse();
    (grad, weight_grads, bias_grads)
}

/// A layer's gradients (input when `want_input`, weight, bias) from the separate operations.
pub(crate) type Grads<B> = (Option<FloatTensor<B>>, FloatTensor<B>, FloatTensor<B>);

pub(crate) fn separate_backward<B: Conv3x3Backend>(
    step: StepInputs<B>,
    want_input: bool,
) -> Grads<B> {
    let StepInputs {
        x,
        weight,
        relu_output,
        grad,
        stride,
        layer,
    } = step;
    let (grad, bias) = match relu_output {
        Some(output) => B::relu_backward_and_channel_sum(output, grad),
        None => {
            let sum = B::channel_sum(grad.clone());
            (grad, sum)
        }
    };
    let dw = layer.weight_grad::<B>(x.clone(), weight.clone(), grad.clone(), stride);
    let dx = want_input.then(|| layer.x_grad::<B>(x, weight, grad, stride));
    (dx, dw, bias)
}

/// [`Conv3x3Backend::conv3x3`] in Burn's generic operations.
pub(crate) fn burn_conv3x3<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    bias: FloatTensor<B>,
    stride: usize,
    relu: bool,
) -> FloatTensor<B> {
    let out = B::conv2d(x, weight, Some(bias), conv_options(stride));
    if relu { B::relu(out) } else { out }
}

/// [`Conv3x3Backend::conv_transpose3x3`] in Burn's generic operations.
pub(crate) fn burn_conv_transpose3x3<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    bias: FloatTensor<B>,
    stride: usize,
    relu: bool,
) -> FloatTensor<B> {
    let out = B::conv_transpose2d(x, weight, Some(bias), conv_transpose_options(stride));
    if relu { B::relu(out) } else { out }
}

/// [`Conv3x3Backend::dense`] in Burn's generic operations.
pub(crate) fn burn_dense<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    bias: FloatTensor<B>,
    relu: bool,
) -> FloatTensor<B> {
    let out = B::float_matmul(x, weight);
    let shape = out.shape();
    let bias = B::float_reshape(bias, Shape::new([1, shape[1]]));
    let out = B::float_add(out, B::float_expand(bias, shape));
    if relu { B::relu(out) } else { out }
}

/// [`Conv3x3Backend::dense_backward`] in Burn's generic operations (the input gradient when
/// `want_input`).
pub(crate) fn burn_dense_backward<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    output: FloatTensor<B>,
    output_grad: FloatTensor<B>,
    relu: bool,
    want_input: bool,
) -> Grads<B> {
    let grad = if relu {
        B::relu_backward(output, output_grad)
    } else {
        output_grad
    };
    let outputs = grad.shape()[1];
    let bias = B::float_reshape(B::float_sum_dim(grad.clone(), 0), Shape::new([outputs]));
    let dw = B::float_matmul(B::float_transpose(x), grad.clone());
    let dx = want_input.then(|| B::float_matmul(grad, B::float_transpose(weight)));
    (dx, dw, bias)
}

/// [`Conv3x3Backend::channel_sum`] in Burn's generic operations.
pub(crate) fn burn_channel_sum<B: Backend>(output_grad: FloatTensor<B>) -> FloatTensor<B> {
    let channels = output_grad.shape()[1];
    let summed = B::float_sum_dim(output_grad, 0);
    let summed = B::float_sum_dim(summed, 2);
    let summed = B::float_sum_dim(summed, 3);
    B::float_reshape(summed, Shape::new([channels]))
}

/// [`Conv3x3Backend::relu_backward_and_channel_sum`] in Burn's generic operations.
pub(crate) fn burn_relu_backward_and_channel_sum<B: Backend>(
    relu_output: FloatTensor<B>,
    output_grad: FloatTensor<B>,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let grad = B::relu_backward(relu_output, output_grad);
    let sum = burn_channel_sum::<B>(grad.clone());
    (grad, sum)
}

/// Which of the two layers an autodiff node holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    Conv,
    Transposed,
}

impl Layer {
    pub(crate) fn forward<B: Conv3x3Backend>(
        self,
        x: FloatTensor<B>,
        weight: FloatTensor<B>,
        bias: FloatTensor<B>,
        stride: usize,
        relu: bool,
    ) -> FloatTensor<B> {
        match self {
            Layer::Conv => B::conv3x3(x, weight, bias, stride, relu),
            Layer::Transposed => B::conv_transpose3x3(x, weight, bias, stride, relu),
        }
    }

    pub(crate) fn x_grad<B: Conv3x3Backend>(
        self,
        x: FloatTensor<B>,
        weight: FloatTensor<B>,
        grad: FloatTensor<B>,
        stride: usize,
    ) -> FloatTensor<B> {
        match self {
            Layer::Conv => B::conv3x3_x_backward(x, weight, grad, stride),
            Layer::Transposed => B::conv_transpose3x3_x_backward(weight, grad, stride),
        }
    }

    pub(crate) fn weight_grad<B: Conv3x3Backend>(
        self,
        x: FloatTensor<B>,
        weight: FloatTensor<B>,
        grad: FloatTensor<B>,
        stride: usize,
    ) -> FloatTensor<B> {
        match self {
            Layer::Conv => B::conv3x3_weight_backward(x, weight, grad, stride),
            Layer::Transposed => B::conv_transpose3x3_weight_backward(x, weight, grad, stride),
        }
    }
}
