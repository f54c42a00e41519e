//! [`Conv3x3Backend`] on Flex: cae's kernels on the tensors' `f32` values, and one grouped
//! backward pass per layer where the vector kernels cover it.

use burn::backend::Flex;
use burn::backend::TensorMetadata;
use burn::backend::flex::FlexTensor;
use burn::backend::ops::ModuleOps;
use burn::tensor::{DType, TensorData};

use crate::backend::{
    Conv3x3Backend, Grads, Layer, StackGrads, StackKind, StepInputs, burn_channel_sum,
    burn_conv_transpose3x3, burn_conv3x3, burn_dense, burn_dense_backward,
    burn_relu_backward_and_channel_sum, chained_stack_backward, conv_options,
    conv_transpose_options, separate_backward,
};
use crate::dense::Dense;
use crate::geometry::Conv3x3;
use crate::{backward, dispatch, reduce, relu_gate};

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
        let g = Conv3x3::of_convolution(dims4(&x), dims4(&weight), stride);
        match (g, values(&x), values(&weight), values(&bias)) {
            (Some(g), Some(x), Some(w), Some(b)) => {
                let out = dispatch::forward(&g, &x, &w, Some(&b), relu);
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
        let g = Conv3x3::of_convolution(dims4(&x), dims4(&weight), stride);
        match (g, values(&output_grad), values(&weight)) {
            (Some(g), Some(dy), Some(w)) => {
                flex_tensor(dispatch::adjoint(&g, &dy, &w), out_shape(&g, false))
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
        let g = Conv3x3::of_convolution(dims4(&x), dims4(&weight), stride);
        match (g, values(&x), values(&output_grad)) {
            (Some(g), Some(x), Some(dy)) => {
                flex_tensor(dispatch::weight_grad(&g, &x, &dy), dims4(&weight))
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
        let g = Conv3x3::of_transposed(dims4(&x), dims4(&weight), stride);
        match (g, values(&x), values(&weight), values(&bias)) {
            (Some(g), Some(x), Some(w), Some(b)) => {
                let out = dispatch::transposed(&g, &x, &w, &b, relu);
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
        let g = Conv3x3::of_convolution(dims4(&output_grad), dims4(&weight), stride);
        match (g, values(&output_grad), values(&weight)) {
            (Some(g), Some(dy), Some(w)) => flex_tensor(
                dispatch::forward(&g, &dy, &w, None, false),
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
        let g = Conv3x3::of_convolution(dims4(&output_grad), dims4(&weight), stride);
        match (g, values(&output_grad), values(&x)) {
            (Some(g), Some(dy), Some(x)) => {
                flex_tensor(dispatch::weight_grad(&g, &dy, &x), dims4(&weight))
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

    fn dense(x: FlexTensor, weight: FlexTensor, bias: FlexTensor, relu: bool) -> FlexTensor {
        match (
            dense_sizes(&x, &weight),
            values(&x),
            values(&weight),
            values(&bias),
        ) {
            (Some(d), Some(x), Some(w), Some(b)) if b.len() == d.outputs => {
                let out = d.forward(&x, &w, &b, relu);
                FlexTensor::from_data(TensorData::new(out, [d.batch, d.outputs]))
            }
            _ => burn_dense::<Self>(x, weight, bias, relu),
        }
    }

    fn dense_backward(
        x: FlexTensor,
        weight: FlexTensor,
        output: FlexTensor,
        output_grad: FlexTensor,
        relu: bool,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let (dx, dw, db) = flex_dense_backward(x, weight, output, output_grad, relu, true);
        (dx.expect("asked for the input gradient"), dw, db)
    }

    fn dense_param_backward(
        x: FlexTensor,
        weight: FlexTensor,
        output: FlexTensor,
        output_grad: FlexTensor,
        relu: bool,
    ) -> (FlexTensor, FlexTensor) {
        let (_, dw, db) = flex_dense_backward(x, weight, output, output_grad, relu, false);
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
                    relu_gate::relu_backward_and_channel_sums(&out, &dy, shape[0], shape[1]);
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
                reduce::channel_sums(&dy, batch, channels),
                [channels],
            )),
            None => burn_channel_sum::<Self>(output_grad),
        }
    }
}

/// The geometry of a layer with input `x`, `weight` and an output of `output`'s shape: a
/// transposed convolution's output is the image side of its convolution, whose feature side
/// must then match `x`.
fn layer_geometry(
    layer: Layer,
    x: &FlexTensor,
    weight: &FlexTensor,
    output: &FlexTensor,
    stride: usize,
) -> Option<Conv3x3> {
    let [batch, channels, ..] = dims4(x);
    match layer {
        Layer::Conv => Conv3x3::of_convolution(dims4(x), dims4(weight), stride),
        Layer::Transposed => Conv3x3::of_convolution(dims4(output), dims4(weight), stride)
            .filter(|g| g.feature_channels == channels && g.batch == batch),
    }
}

/// A layer's backward pass on Flex: one grouped pass ([`backward::layer_backward`]) where the
/// vector kernels cover the layer, the separate operations elsewhere.
fn flex_backward(step: StepInputs<Flex>, want_input: bool) -> Grads<Flex> {
    let transposed = step.layer == Layer::Transposed;
    let geometry = layer_geometry(step.layer, &step.x, &step.weight, &step.grad, step.stride);
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

/// The backward pass of a run of layers (of the kinds `kinds`, in forward order) from the
/// gradient of its last output: the gradient of `inputs[0]` (when `want_input`) and every
/// layer's weight and bias gradients. `inputs[i]` is layer `i`'s input, `outputs[i]` its
/// output (read where the layer applied ReLU). One pass through all the layers where the vector
/// kernels cover them, layer by layer elsewhere: the same values either way.
pub(crate) fn layer_stack_backward(
    inputs: Vec<FlexTensor>,
    weights: Vec<FlexTensor>,
    outputs: Vec<FlexTensor>,
    output_grad: FlexTensor,
    kinds: &[StackKind],
    want_input: bool,
) -> StackGrads<Flex> {
    if let Some(grads) =
        flex_stack_backward(&inputs, &weights, &outputs, &output_grad, kinds, want_input)
    {
        return grads;
    }
    chained_stack_backward::<Flex>(inputs, weights, outputs, output_grad, kinds, want_input)
}

#[cfg(test)]
thread_local! {
    /// How many runs this thread took back through [`backward::stack_backward`].
    pub(crate) static STACKED_PASSES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// A run's backward pass on Flex as one pass through all its layers
/// ([`backward::stack_backward`]); `None` where that does not apply (the caller then goes
/// layer by layer, with the same results).
fn flex_stack_backward(
    inputs: &[FlexTensor],
    weights: &[FlexTensor],
    outputs: &[FlexTensor],
    output_grad: &FlexTensor,
    kinds: &[StackKind],
    want_input: bool,
) -> Option<StackGrads<Flex>> {
    let mut geometries = Vec::with_capacity(kinds.len());
    for ((x, (weight, output)), kind) in inputs.iter().zip(weights.iter().zip(outputs)).zip(kinds) {
        geometries.push(layer_geometry(kind.layer, x, weight, output, kind.stride)?);
    }
    let input_values = inputs.iter().map(values).collect::<Option<Vec<_>>>()?;
    let weight_values = weights.iter().map(values).collect::<Option<Vec<_>>>()?;
    let output_values = outputs.iter().map(values).collect::<Option<Vec<_>>>()?;
    let grad = values(output_grad)?;
    let steps: Vec<backward::BackwardStep> = (0..kinds.len())
        .map(|i| backward::BackwardStep {
            geometry: geometries[i],
            transposed: kinds[i].layer == Layer::Transposed,
            input: &input_values[i],
            weight: &weight_values[i],
            relu_output: kinds[i].relu.then_some(&*output_values[i]),
        })
        .collect();
    let grads = backward::stack_backward(&steps, &grad, want_input)?;
    #[cfg(test)]
    STACKED_PASSES.with(|count| count.set(count.get() + 1));
    let mut input_grad = None;
    let (mut weight_grads, mut bias_grads) = (Vec::new(), Vec::new());
    for (layer, weight) in grads.into_iter().zip(weights) {
        if let Some(dx) = layer.input {
            input_grad = Some(flex_tensor(dx, dims4(&inputs[0])));
        }
        let bias_len = layer.bias.len();
        weight_grads.push(flex_tensor(layer.weight, dims4(weight)));
        bias_grads.push(FlexTensor::from_data(TensorData::new(
            layer.bias,
            [bias_len],
        )));
    }
    Some((input_grad, weight_grads, bias_grads))
}

/// The sizes of a fully connected layer on `f32` matrices `x (batch, in)`, `weight (in, out)`.
fn dense_sizes(x: &FlexTensor, weight: &FlexTensor) -> Option<Dense> {
    let (xs, ws) = (x.shape(), weight.shape());
    (xs.num_dims() == 2 && ws.num_dims() == 2 && xs[1] == ws[0]).then(|| Dense {
        batch: xs[0],
        inputs: xs[1],
        outputs: ws[1],
    })
}

fn flex_dense_backward(
    x: FlexTensor,
    weight: FlexTensor,
    output: FlexTensor,
    output_grad: FlexTensor,
    relu: bool,
    want_input: bool,
) -> Grads<Flex> {
    let sizes = dense_sizes(&x, &weight);
    let relu_output = relu.then(|| values(&output));
    let inputs = (values(&x), values(&weight), values(&output_grad));
    if let (Some(d), (Some(xv), Some(w), Some(dy)), None | Some(Some(_))) =
        (sizes, inputs, &relu_output)
    {
        let relu_output = relu_output.as_ref().and_then(|o| o.as_deref());
        let grads = d.backward(&xv, &w, &dy, relu_output, want_input);
        return (
            grads
                .input
                .map(|dx| FlexTensor::from_data(TensorData::new(dx, [d.batch, d.inputs]))),
            FlexTensor::from_data(TensorData::new(grads.weight, [d.inputs, d.outputs])),
            FlexTensor::from_data(TensorData::new(grads.bias, [d.outputs])),
        );
    }
    burn_dense_backward::<Flex>(x, weight, output, output_grad, relu, want_input)
}
