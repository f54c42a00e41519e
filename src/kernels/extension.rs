//! cae's 3x3 convolutions as a Burn backend extension: Flex runs the kernels of
//! [`mod@super::conv3x3`], autodiff gets a handwritten backward pass built from the same kernels,
//! and every other backend falls back to Burn's own convolution operations.

use burn::backend::TensorMetadata;
use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::ops::ModuleOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Flex, backend_extension};
use burn::tensor::ops::{ConvOptions, ConvTransposeOptions};
use burn::tensor::{DType, Shape, TensorData};

use super::backward;
use super::conv3x3::{self, Conv3x3};

pub fn conv_options(stride: usize) -> ConvOptions<2> {
    ConvOptions::new([stride; 2], [1, 1], [1, 1], 1)
}

/// Padding 1, and output padding `stride - 1` so that the output is `stride` times the input.
pub fn conv_transpose_options(stride: usize) -> ConvTransposeOptions<2> {
    ConvTransposeOptions::new([stride; 2], [1, 1], [stride - 1; 2], [1, 1], 1)
}

/// 3x3 convolutions with padding 1 (stride 1 or 2) and their transposes, weights and layouts
/// as in PyTorch. The default bodies are Burn's generic operations.
#[backend_extension(Flex, Autodiff)]
pub trait Conv3x3Backend: Backend {
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
struct StepInputs<B: Backend> {
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    relu_output: Option<FloatTensor<B>>,
    grad: FloatTensor<B>,
    stride: usize,
    layer: Layer,
}

impl<B: Backend> StepInputs<B> {
    fn new(
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

/// A layer's gradients (input when `want_input`, weight, bias) from the separate operations.
type Grads<B> = (Option<FloatTensor<B>>, FloatTensor<B>, FloatTensor<B>);

fn separate_backward<B: Conv3x3Backend>(step: StepInputs<B>, want_input: bool) -> Grads<B> {
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
fn burn_conv3x3<B: Backend>(
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
fn burn_conv_transpose3x3<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    bias: FloatTensor<B>,
    stride: usize,
    relu: bool,
) -> FloatTensor<B> {
    let out = B::conv_transpose2d(x, weight, Some(bias), conv_transpose_options(stride));
    if relu { B::relu(out) } else { out }
}

/// [`Conv3x3Backend::channel_sum`] in Burn's generic operations.
fn burn_channel_sum<B: Backend>(output_grad: FloatTensor<B>) -> FloatTensor<B> {
    let channels = output_grad.shape()[1];
    let summed = B::float_sum_dim(output_grad, 0);
    let summed = B::float_sum_dim(summed, 2);
    let summed = B::float_sum_dim(summed, 3);
    B::float_reshape(summed, Shape::new([channels]))
}

/// [`Conv3x3Backend::relu_backward_and_channel_sum`] in Burn's generic operations.
fn burn_relu_backward_and_channel_sum<B: Backend>(
    relu_output: FloatTensor<B>,
    output_grad: FloatTensor<B>,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let grad = B::relu_backward(relu_output, output_grad);
    let sum = burn_channel_sum::<B>(grad.clone());
    (grad, sum)
}

/// The values of an `f32` Flex tensor, contiguous; `None` for other dtypes.
fn values(tensor: &FlexTensor) -> Option<std::borrow::Cow<'_, [f32]>> {
    if tensor.dtype() != DType::F32 {
        return None;
    }
    Some(match tensor.as_slice::<f32>() {
        Some(slice) => slice.into(),
        None => tensor.to_contiguous().as_slice::<f32>()?.to_vec().into(),
    })
}

fn flex_tensor(values: Vec<f32>, shape: [usize; 4]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

fn dims4(tensor: &FlexTensor) -> [usize; 4] {
    let shape = tensor.shape();
    [shape[0], shape[1], shape[2], shape[3]]
}

/// The geometry of a convolution given its image and weight `(feature, image, 3, 3)`.
fn geometry(image: [usize; 4], weight: [usize; 4], stride: usize) -> Option<Conv3x3> {
    let [batch, image_channels, image_height, image_width] = image;
    (weight[1] == image_channels && weight[2..] == [3, 3] && matches!(stride, 1 | 2)).then_some(
        Conv3x3 {
            batch,
            image_channels,
            image_height,
            image_width,
            feature_channels: weight[0],
            stride,
        },
    )
}

fn out_shape(g: &Conv3x3, feature: bool) -> [usize; 4] {
    if feature {
        [
            g.batch,
            g.feature_channels,
            g.feature_height(),
            g.feature_width(),
        ]
    } else {
        [g.batch, g.image_channels, g.image_height, g.image_width]
    }
}

impl Conv3x3Backend for Flex {
    fn conv3x3(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        stride: usize,
        relu: bool,
    ) -> FlexTensor {
        let g = geometry(dims4(&x), dims4(&weight), stride);
        match (g, values(&x), values(&weight), values(&bias)) {
            (Some(g), Some(x), Some(w), Some(b)) => {
                let out = conv3x3::forward(&g, &x, &w, Some(&b), relu);
                flex_tensor(out, out_shape(&g, true))
            }
            _ => burn_conv3x3::<Self>(x, weight, bias, stride, relu),
        }
    }

    fn conv3x3_x_backward(
        x: FlexTensor,
        weight: FlexTensor,
        output_grad: FlexTensor,
        stride: usize,
    ) -> FlexTensor {
        let g = geometry(dims4(&x), dims4(&weight), stride);
        match (g, values(&output_grad), values(&weight)) {
            (Some(g), Some(dy), Some(w)) => {
                flex_tensor(conv3x3::adjoint(&g, &dy, &w), out_shape(&g, false))
            }
            _ => Self::conv2d_x_backward(x, weight, output_grad, conv_options(stride)),
        }
    }

    fn conv3x3_weight_backward(
        x: FlexTensor,
        weight: FlexTensor,
        output_grad: FlexTensor,
        stride: usize,
    ) -> FlexTensor {
        let g = geometry(dims4(&x), dims4(&weight), stride);
        match (g, values(&x), values(&output_grad)) {
            (Some(g), Some(x), Some(dy)) => {
                flex_tensor(conv3x3::weight_grad(&g, &x, &dy), dims4(&weight))
            }
            _ => Self::conv2d_weight_backward(x, weight, output_grad, conv_options(stride)),
        }
    }

    /// The transposed convolution's output is the image side of the convolution whose weight
    /// is this weight `(in, out, 3, 3)` read as `(feature, image, 3, 3)`.
    fn conv_transpose3x3(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        stride: usize,
        relu: bool,
    ) -> FlexTensor {
        let [batch, _, height, width] = dims4(&x);
        let image = [batch, dims4(&weight)[1], height * stride, width * stride];
        let g =
            geometry(image, dims4(&weight), stride).filter(|g| g.feature_channels == dims4(&x)[1]);
        match (g, values(&x), values(&weight), values(&bias)) {
            (Some(g), Some(x), Some(w), Some(b)) => {
                let out = conv3x3::transposed(&g, &x, &w, &b, relu);
                flex_tensor(out, out_shape(&g, false))
            }
            _ => burn_conv_transpose3x3::<Self>(x, weight, bias, stride, relu),
        }
    }

    fn conv_transpose3x3_x_backward(
        weight: FlexTensor,
        output_grad: FlexTensor,
        stride: usize,
    ) -> FlexTensor {
        let g = geometry(dims4(&output_grad), dims4(&weight), stride);
        match (g, values(&output_grad), values(&weight)) {
            (Some(g), Some(dy), Some(w)) => flex_tensor(
                conv3x3::forward(&g, &dy, &w, None, false),
                out_shape(&g, true),
            ),
            _ => Self::conv_transpose2d_x_backward(
                weight,
                output_grad,
                conv_transpose_options(stride),
            ),
        }
    }

    fn conv_transpose3x3_weight_backward(
        x: FlexTensor,
        weight: FlexTensor,
        output_grad: FlexTensor,
        stride: usize,
    ) -> FlexTensor {
        let g = geometry(dims4(&output_grad), dims4(&weight), stride);
        match (g, values(&output_grad), values(&x)) {
            (Some(g), Some(dy), Some(x)) => {
                flex_tensor(conv3x3::weight_grad(&g, &dy, &x), dims4(&weight))
            }
            _ => Self::conv_transpose2d_weight_backward(
                x,
                weight,
                output_grad,
                conv_transpose_options(stride),
            ),
        }
    }

    fn layer3x3_backward(
        x: FlexTensor,
        weight: FlexTensor,
        output: FlexTensor,
        output_grad: FlexTensor,
        stride: usize,
        relu: bool,
        transposed: bool,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let step = StepInputs::new(x, weight, output, output_grad, stride, relu, transposed);
        let (dx, dw, db) = flex_backward(step, true);
        (dx.expect("asked for the input gradient"), dw, db)
    }

    fn layer3x3_param_backward(
        x: FlexTensor,
        weight: FlexTensor,
        output: FlexTensor,
        output_grad: FlexTensor,
        stride: usize,
        relu: bool,
        transposed: bool,
    ) -> (FlexTensor, FlexTensor) {
        let step = StepInputs::new(x, weight, output, output_grad, stride, relu, transposed);
        let (_, dw, db) = flex_backward(step, false);
        (dw, db)
    }

    /// One pass instead of Burn's mask and then the sum.
    fn relu_backward_and_channel_sum(
        relu_output: FlexTensor,
        output_grad: FlexTensor,
    ) -> (FlexTensor, FlexTensor) {
        let shape = dims4(&output_grad);
        match (values(&relu_output), values(&output_grad)) {
            (Some(out), Some(dy)) if out.len() == dy.len() => {
                let (grad, sums) =
                    conv3x3::relu_backward_and_channel_sums(&out, &dy, shape[0], shape[1]);
                let sums = FlexTensor::from_data(TensorData::new(sums, [shape[1]]));
                (flex_tensor(grad, shape), sums)
            }
            _ => burn_relu_backward_and_channel_sum::<Self>(relu_output, output_grad),
        }
    }

    fn channel_sum(output_grad: FlexTensor) -> FlexTensor {
        let [batch, channels, ..] = dims4(&output_grad);
        match values(&output_grad) {
            Some(dy) => FlexTensor::from_data(TensorData::new(
                conv3x3::channel_sums(&dy, batch, channels),
                [channels],
            )),
            None => burn_channel_sum::<Self>(output_grad),
        }
    }
}

/// A layer's backward pass on Flex: one grouped pass ([`backward::layer_backward`]) where the
/// AVX-512 kernels cover the layer, the separate operations elsewhere.
fn flex_backward(step: StepInputs<Flex>, want_input: bool) -> Grads<Flex> {
    let transposed = step.layer == Layer::Transposed;
    let [batch, channels, height, width] = dims4(&step.x);
    let geometry = if transposed {
        geometry(dims4(&step.grad), dims4(&step.weight), step.stride)
            .filter(|g| g.feature_channels == channels && g.batch == batch)
    } else {
        geometry(
            [batch, channels, height, width],
            dims4(&step.weight),
            step.stride,
        )
    };
    let relu_output = step.relu_output.as_ref().map(values);
    let inputs = (values(&step.x), values(&step.weight), values(&step.grad));
    if let (Some(g), (Some(x), Some(w), Some(dy)), None | Some(Some(_))) =
        (geometry, inputs, &relu_output)
    {
        let relu_output = relu_output.as_ref().and_then(|o| o.as_deref());
        if let Some(grads) =
            backward::layer_backward(&g, transposed, &x, &w, &dy, relu_output, want_input)
        {
            let bias_len = grads.bias.len();
            return (
                grads.input.map(|dx| flex_tensor(dx, dims4(&step.x))),
                flex_tensor(grads.weight, dims4(&step.weight)),
                FlexTensor::from_data(TensorData::new(grads.bias, [bias_len])),
            );
        }
    }
    separate_backward::<Flex>(step, want_input)
}

/// Which of the two layers an autodiff node holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    Conv,
    Transposed,
}

impl Layer {
    fn forward<B: Conv3x3Backend>(
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

    fn x_grad<B: Conv3x3Backend>(
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

    fn weight_grad<B: Conv3x3Backend>(
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

/// The backward step of either layer: input, weight and bias gradients.
#[derive(Debug)]
struct Layer3x3Step;

/// What the backward step keeps: the input and weight nodes, the layer, its stride, and the
/// ReLU output when the layer applied ReLU (its mask gates the incoming gradient).
type StepState<B> = (NodeId, NodeId, Layer, usize, Option<FloatTensor<B>>);

impl<B: Conv3x3Backend> Backward<B, 3> for Layer3x3Step {
    type State = StepState<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_weight, node_bias] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x_state, weight_state, layer, stride, relu_output) = ops.state;
        let x: FloatTensor<B> = checkpointer.retrieve_node_output(x_state);
        let weight: FloatTensor<B> = checkpointer.retrieve_node_output(weight_state);
        // Without ReLU the output is not read: the gradient stands in for it.
        let (output, relu) = match relu_output {
            Some(output) => (output, true),
            None => (grad.clone(), false),
        };
        let transposed = layer == Layer::Transposed;
        let (dx, dw, db) = match node_x {
            Some(_) => {
                let (dx, dw, db) =
                    B::layer3x3_backward(x, weight, output, grad, stride, relu, transposed);
                (Some(dx), dw, db)
            }
            None => {
                let (dw, db) =
                    B::layer3x3_param_backward(x, weight, output, grad, stride, relu, transposed);
                (None, dw, db)
            }
        };
        for (node, value) in [(node_x, dx), (node_weight, Some(dw)), (node_bias, Some(db))] {
            if let (Some(node), Some(value)) = (node, value) {
                grads.register::<B>(node.id, value);
            }
        }
    }
}

/// Runs `layer` on the inner backend and records its backward step when any input is tracked.
fn tracked<B: Conv3x3Backend, C: CheckpointStrategy>(
    layer: Layer,
    x: FloatTensor<Autodiff<B, C>>,
    weight: FloatTensor<Autodiff<B, C>>,
    bias: FloatTensor<Autodiff<B, C>>,
    stride: usize,
    relu: bool,
) -> FloatTensor<Autodiff<B, C>> {
    match Layer3x3Step
        .prepare::<C>([x.node(), weight.node(), bias.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(mut prep) => {
            let (x_state, weight_state) = (prep.checkpoint(&x), prep.checkpoint(&weight));
            let out = layer.forward::<B>(
                x.into_primitive(),
                weight.into_primitive(),
                bias.into_primitive(),
                stride,
                relu,
            );
            let relu_output = relu.then(|| out.clone());
            prep.finish((x_state, weight_state, layer, stride, relu_output), out)
        }
        OpsKind::UnTracked(prep) => prep.finish(layer.forward::<B>(
            x.into_primitive(),
            weight.into_primitive(),
            bias.into_primitive(),
            stride,
            relu,
        )),
    }
}

impl<B: Conv3x3Backend, C: CheckpointStrategy> Conv3x3Backend for Autodiff<B, C> {
    fn conv3x3(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        stride: usize,
        relu: bool,
    ) -> FloatTensor<Self> {
        tracked::<B, C>(Layer::Conv, x, weight, bias, stride, relu)
    }

    fn conv_transpose3x3(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        stride: usize,
        relu: bool,
    ) -> FloatTensor<Self> {
        tracked::<B, C>(Layer::Transposed, x, weight, bias, stride, relu)
    }
}
