//! [`Conv3x3Backend`] on Burn's autodiff backend: each layer is one tracked node whose
//! backward pass is handwritten from the same kernels (input, weight and bias gradients at once),
//! and so is each fully connected layer.

use burn::backend::Autodiff;
use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;

use crate::backend::{Conv3x3Backend, Layer};

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
        let (output, relu) = output_for_backward::<B>(relu_output, &grad);
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
        let ids = [node_x, node_weight, node_bias].map(|node| node.map(|node| node.id));
        register_all::<B>(grads, ids, [dx, Some(dw), Some(db)]);
    }
}

/// The layer's output as its backward pass takes it, and whether the layer applied ReLU:
/// without ReLU the output is not read, and the gradient stands in for it.
fn output_for_backward<B: Conv3x3Backend>(
    relu_output: Option<FloatTensor<B>>,
    grad: &FloatTensor<B>,
) -> (FloatTensor<B>, bool) {
    match relu_output {
        Some(output) => (output, true),
        None => (grad.clone(), false),
    }
}

/// Registers each gradient with its parent's node, where both are there.
fn register_all<B: Conv3x3Backend>(
    grads: &mut Gradients,
    nodes: [Option<NodeId>; 3],
    values: [Option<FloatTensor<B>>; 3],
) {
    for (node, value) in nodes.into_iter().zip(values) {
        if let (Some(node), Some(value)) = (node, value) {
            grads.register::<B>(node, value);
        }
    }
}

/// Runs `layer` on the inner backend (or takes its output as `given`, computed already) and
/// records its backward step when any input is tracked.
fn tracked<B: Conv3x3Backend, C: CheckpointStrategy>(
    layer: Layer,
    x: FloatTensor<Autodiff<B, C>>,
    weight: FloatTensor<Autodiff<B, C>>,
    bias: FloatTensor<Autodiff<B, C>>,
    stride: usize,
    relu: bool,
    given: Option<FloatTensor<B>>,
) -> FloatTensor<Autodiff<B, C>> {
    let output = |x: FloatTensor<Autodiff<B, C>>,
                  weight: FloatTensor<Autodiff<B, C>>,
                  bias: FloatTensor<Autodiff<B, C>>| match given {
        Some(output) => output,
        None => layer.forward::<B>(
            x.into_primitive(),
            weight.into_primitive(),
            bias.into_primitive(),
            stride,
            relu,
        ),
    };
    match Layer3x3Step
        .prepare::<C>([x.node(), weight.node(), bias.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(mut prep) => {
            let (x_state, weight_state) = (prep.checkpoint(&x), prep.checkpoint(&weight));
            let out = output(x, weight, bias);
            let relu_output = relu.then(|| out.clone());
            prep.finish((x_state, weight_state, layer, stride, relu_output), out)
        }
        OpsKind::UnTracked(prep) => prep.finish(output(x, weight, bias)),
    }
}

/// The backward step of a fully connected layer: input, weight and bias gradients.
#[derive(Debug)]
struct DenseStep;

/// What [`DenseStep`] keeps: the input and weight nodes, and the ReLU output when the layer
/// applied ReLU.
type DenseState<B> = (NodeId, NodeId, Option<FloatTensor<B>>);

impl<B: Conv3x3Backend> Backward<B, 3> for DenseStep {
    type State = DenseState<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_weight, node_bias] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x_state, weight_state, relu_output) = ops.state;
        let x: FloatTensor<B> = checkpointer.retrieve_node_output(x_state);
        let weight: FloatTensor<B> = checkpointer.retrieve_node_output(weight_state);
        let (output, relu) = output_for_backward::<B>(relu_output, &grad);
        let (dx, dw, db) = match node_x {
            Some(_) => {
                let (dx, dw, db) = B::dense_backward(x, weight, output, grad, relu);
                (Some(dx), dw, db)
            }
            None => {
                let (dw, db) = B::dense_param_backward(x, weight, output, grad, relu);
                (None, dw, db)
            }
        };
        let ids = [node_x, node_weight, node_bias].map(|node| node.map(|node| node.id));
        register_all::<B>(grads, ids, [dx, Some(dw), Some(db)]);
    }
}

impl<B: Conv3x3Backend, C: CheckpointStrategy> Conv3x3Backend for Autodiff<B, C> {
    fn dense(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        relu: bool,
    ) -> FloatTensor<Self> {
        match DenseStep
            .prepare::<C>([x.node(), weight.node(), bias.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let (x_state, weight_state) = (prep.checkpoint(&x), prep.checkpoint(&weight));
                let out = B::dense(
                    x.into_primitive(),
                    weight.into_primitive(),
                    bias.into_primitive(),
                    relu,
                );
                let relu_output = relu.then(|| out.clone());
                prep.finish((x_state, weight_state, relu_output), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::dense(
                x.into_primitive(),
                weight.into_primitive(),
                bias.into_primitive(),
                relu,
            )),
        }
    }

    fn conv3x3(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        stride: usize,
        relu: bool,
    ) -> FloatTensor<Self> {
        tracked::<B, C>(Layer::Conv, x, weight, bias, stride, relu, None)
    }

    fn conv_transpose3x3(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        stride: usize,
        relu: bool,
    ) -> FloatTensor<Self> {
        tracked::<B, C>(Layer::Transposed, x, weight, bias, stride, relu, None)
    }

    fn layer3x3_with_output(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        output: FloatTensor<Self>,
        stride: usize,
        relu: bool,
        transposed: bool,
    ) -> FloatTensor<Self> {
        let layer = if transposed {
            Layer::Transposed
        } else {
            Layer::Conv
        };
        let given = Some(output.into_primitive());
        tracked::<B, C>(layer, x, weight, bias, stride, relu, given)
    }
}
