//! [`Conv3x3Backend`] on Burn's autodiff backend: each layer is one tracked node whose
//! backward pass is handwritten from the same kernels (input, weight and bias gradients at once),
//! and so is each fully connected layer; on Flex a whole run of layers computed by the crate's
//! `stack` module can be one node ([`layer_stack_with_outputs`]).

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Flex};

use crate::backend::{Conv3x3Backend, Layer, StackKind};
use crate::flex;

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

/// Layers in a run that [`LayerStackStep`] records as one node (the seed model's encoder and
/// decoder each have six); other runs record a node per layer.
pub(crate) const STACK_NODE_LAYERS: usize = 6;

/// The parents of a [`LayerStackStep`]: the run's input, then every weight, then every bias.
const STACK_NODE_PARENTS: usize = 1 + 2 * STACK_NODE_LAYERS;

/// The backward step of a whole run of layers: one pass back through all of them
/// ([`flex::layer_stack_backward`]).
#[derive(Debug)]
struct LayerStackStep;

/// What [`LayerStackStep`] keeps: the input's and weights' nodes, every layer's output (the
/// input of the next, and the ReLU mask of its own backward pass), and the layers' kinds.
type StackState = (NodeId, Vec<NodeId>, Vec<FlexTensor>, Vec<StackKind>);

impl Backward<Flex, STACK_NODE_PARENTS> for LayerStackStep {
    type State = StackState;

    fn backward(
        self,
        ops: Ops<Self::State, STACK_NODE_PARENTS>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let grad = grads.consume::<Flex>(&ops.node);
        let (x_state, weight_states, outputs, kinds) = ops.state;
        let x: FloatTensor<Flex> = checkpointer.retrieve_node_output(x_state);
        let weights: Vec<FloatTensor<Flex>> = weight_states
            .into_iter()
            .map(|state| checkpointer.retrieve_node_output(state))
            .collect();
        let mut inputs = vec![x];
        inputs.extend(outputs.iter().take(outputs.len() - 1).cloned());
        let [node_x, rest @ ..] = ops.parents;
        let want_input = node_x.is_some();
        let (dx, dws, dbs) =
            flex::layer_stack_backward(inputs, weights, outputs, grad, &kinds, want_input);
        if let (Some(node), Some(dx)) = (node_x, dx) {
            grads.register::<Flex>(node.id, dx);
        }
        let (weight_nodes, bias_nodes) = rest.split_at(STACK_NODE_LAYERS);
        for (node, value) in weight_nodes
            .iter()
            .chain(bias_nodes)
            .zip(dws.into_iter().chain(dbs))
        {
            if let Some(node) = node {
                grads.register::<Flex>(node.id, value);
            }
        }
    }
}

/// A run of [`STACK_NODE_LAYERS`] layers (of the kinds `kinds`, in forward order) whose every
/// output `outputs` was computed already, by the crate's `stack` module: the result is the
/// last output, and one node records the backward pass of the whole run.
pub(crate) fn layer_stack_with_outputs(
    x: FloatTensor<Autodiff<Flex>>,
    weights: Vec<FloatTensor<Autodiff<Flex>>>,
    biases: Vec<FloatTensor<Autodiff<Flex>>>,
    outputs: Vec<FlexTensor>,
    kinds: Vec<StackKind>,
) -> FloatTensor<Autodiff<Flex>> {
    assert_eq!(weights.len(), STACK_NODE_LAYERS, "layers of a stacked node");
    assert_eq!(biases.len(), STACK_NODE_LAYERS, "biases of a stacked node");
    assert_eq!(
        outputs.len(),
        STACK_NODE_LAYERS,
        "outputs of a stacked node"
    );
    let nodes: Vec<_> = std::iter::once(&x)
        .chain(&weights)
        .chain(&biases)
        .map(|t| t.node())
        .collect();
    let nodes: [_; STACK_NODE_PARENTS] = nodes.try_into().expect("one node per parent");
    match LayerStackStep
        .prepare::<NoCheckpointing>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(mut prep) => {
            let x_state = prep.checkpoint(&x);
            let weight_states = weights.iter().map(|w| prep.checkpoint(w)).collect();
            let last = outputs.last().expect("a run of layers").clone();
            prep.finish((x_state, weight_states, outputs, kinds), last)
        }
        OpsKind::UnTracked(prep) => {
            prep.finish(outputs.into_iter().last().expect("a run of layers"))
        }
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
