//! ONNX export: the model (or its encoder or decoder alone) as an ONNX graph with the weights
//! embedded, for ONNX Runtime and the other runtimes that read ONNX.
//!
//! Burn reads ONNX (burn-import) but has no exporter, and the `onnx` crates generate their
//! messages with `protoc` at build time; these are `prost` derives of the few messages of
//! `onnx.proto` an inference graph needs (field numbers checked against the `onnx` Python
//! package's `onnx.proto`; that file is proto2, so repeated integers are unpacked, as there).
//!
//! The graph, opset 17 and IR version 8, with a symbolic batch dimension `batch`:
//!
//! ```text
//! encoder  images (batch, C, H, W)
//!          6 x [Conv 3x3, pads 1, strides 1,1,2,1,2,1; Relu]  Flatten  Gemm (transB)  Relu -> codes
//! decoder  codes (batch, latent)
//!          Gemm (transB)  Relu  Reshape (-1, 4c, H/4, W/4)
//!          6 x [ConvTranspose 3x3, pads 1, strides 1,2,1,2,1,1, output_padding 1 where the
//!               stride is 2; Relu but after the last]                         -> reconstruction
//! ```
//!
//! (a variational model's encoder ends at the Gemm of its mean head: its codes are the posterior
//! means) which is what [`crate::model`] computes, layer for layer; nodes and weights carry the
//! PyTorch module and `state_dict` names (`encoder.net.0`, `encoder.net.0.weight`).

use std::path::Path;

use anyhow::{Result, bail};
use prost::Message;

use crate::io::weights::{self, StateDict};
use crate::model::ModelConfig;

/// The ONNX operator set the graph uses.
pub const OPSET: i64 = 17;
/// The ONNX IR version of the file (ONNX 1.10 and later read it).
pub(crate) const IR_VERSION: i64 = 8;
/// The name of the symbolic batch dimension of inputs and outputs.
pub const BATCH_DIM: &str = "batch";

/// Which part of the autoencoder to export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Images to reconstructions.
    Full,
    /// Images to latent codes.
    Encoder,
    /// Latent codes to images.
    Decoder,
}

impl Part {
    /// Every part, in the order `--part` lists them.
    pub const ALL: [Part; 3] = [Part::Full, Part::Encoder, Part::Decoder];

    /// The name on the command line (`--part`).
    pub fn name(self) -> &'static str {
        match self {
            Part::Full => "full",
            Part::Encoder => "encoder",
            Part::Decoder => "decoder",
        }
    }

    /// The graph's input name.
    pub fn input_name(self) -> &'static str {
        match self {
            Part::Full | Part::Encoder => IMAGES,
            Part::Decoder => CODES,
        }
    }

    /// The graph's output name.
    pub fn output_name(self) -> &'static str {
        match self {
            Part::Full | Part::Decoder => RECONSTRUCTION,
            Part::Encoder => CODES,
        }
    }
}

const IMAGES: &str = "images";
const CODES: &str = "codes";
const RECONSTRUCTION: &str = "reconstruction";

/// Protobuf's limit on one message, which holds every weight (no external data files).
const MAX_MESSAGE_BYTES: usize = i32::MAX as usize;

/// Writes `part` of the model `config`/`dict` to `path` as an ONNX file (atomically).
pub fn save_onnx(path: &Path, config: &ModelConfig, dict: &StateDict, part: Part) -> Result<()> {
    let bytes = onnx_bytes(config, dict, part)?;
    crate::io::atomic::write_bytes(path, &bytes)
}

/// The ONNX file of `part` of the model `config`/`dict`; the weights must be the model's exact
/// state dict, and finite.
pub(crate) fn onnx_bytes(config: &ModelConfig, dict: &StateDict, part: Part) -> Result<Vec<u8>> {
    config.validate()?;
    weights::check_state_dict(config, dict)?;
    weights::refuse_non_finite(dict)?;
    let model = model_proto(config, dict, part)?;
    let len = model.encoded_len();
    if len > MAX_MESSAGE_BYTES {
        bail!(
            "the ONNX file would hold {len} bytes, over protobuf's 2 GiB limit for one file \
             (cae does not write ONNX external data)"
        );
    }
    Ok(model.encode_to_vec())
}

fn model_proto(config: &ModelConfig, dict: &StateDict, part: Part) -> Result<ModelProto> {
    let mut graph = Graph::new(dict);
    let (c, h, w) = (config.in_channels, config.height, config.width);
    let image_dims = [c, h, w];
    let (input_dims, output_dims): (&[usize], &[usize]) = match part {
        Part::Full => (&image_dims, &image_dims),
        Part::Encoder => (&image_dims, &[config.latent]),
        Part::Decoder => (&[config.latent], &image_dims),
    };
    match part {
        Part::Full => {
            graph.encoder(config, IMAGES, CODES);
            graph.decoder(config, CODES, RECONSTRUCTION);
        }
        Part::Encoder => graph.encoder(config, IMAGES, CODES),
        Part::Decoder => graph.decoder(config, CODES, RECONSTRUCTION),
    }
    let config_json = serde_json::to_string(config)?;
    Ok(ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        producer_name: "cae".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: format!(
            "cae convolutional autoencoder ({}): images are (batch, {c}, {h}, {w}) float32 \
             pixels normalized to [-1, 1] ((p / 255 - 0.5) / 0.5), codes (batch, {})",
            part.name(),
            config.latent
        ),
        graph: Some(GraphProto {
            node: graph.nodes,
            name: format!("cae_{}", part.name()),
            initializer: graph.initializers,
            input: vec![value_info(part.input_name(), input_dims)],
            output: vec![value_info(part.output_name(), output_dims)],
        }),
        metadata_props: vec![
            StringStringEntryProto {
                key: weights::CONFIG_KEY.into(),
                value: config_json,
            },
            StringStringEntryProto {
                key: "cae.part".into(),
                value: part.name().into(),
            },
        ],
    })
}

/// A float32 tensor (batch, dims...) with the symbolic batch dimension.
fn value_info(name: &str, dims: &[usize]) -> ValueInfoProto {
    let batch = Dimension {
        value: Some(DimensionValue::DimParam(BATCH_DIM.into())),
    };
    let rest = dims.iter().map(|&d| Dimension {
        value: Some(DimensionValue::DimValue(d as i64)),
    });
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeProtoTensor {
                elem_type: DATA_TYPE_FLOAT,
                shape: Some(TensorShapeProto {
                    dim: std::iter::once(batch).chain(rest).collect(),
                }),
            }),
        }),
    }
}

/// The nodes and initializers of a graph being built.
struct Graph<'a> {
    dict: &'a StateDict,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
}

impl<'a> Graph<'a> {
    fn new(dict: &'a StateDict) -> Self {
        Self {
            dict,
            nodes: Vec::new(),
            initializers: Vec::new(),
        }
    }

    /// The weight and bias of the PyTorch module `module`, as initializers; returns their names.
    fn parameters(&mut self, module: &str) -> [String; 2] {
        ["weight", "bias"].map(|what| {
            let name = format!("{module}.{what}");
            let tensor = &self.dict[&name];
            self.initializers.push(TensorProto {
                dims: tensor.shape.iter().map(|&d| d as i64).collect(),
                data_type: DATA_TYPE_FLOAT,
                name: name.clone(),
                raw_data: tensor.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            });
            name
        })
    }

    fn node(
        &mut self,
        op_type: &str,
        name: &str,
        input: Vec<String>,
        output: &str,
        attribute: Vec<AttributeProto>,
    ) {
        self.nodes.push(NodeProto {
            input,
            output: vec![output.into()],
            name: name.into(),
            op_type: op_type.into(),
            attribute,
        });
    }

    /// The node `name` on `inputs`, writing the value `name`, which it returns.
    fn op(
        &mut self,
        op_type: &str,
        name: &str,
        inputs: Vec<String>,
        attribute: Vec<AttributeProto>,
    ) -> String {
        self.node(op_type, name, inputs, name, attribute);
        name.to_string()
    }

    /// A Relu named `name`, writing `output` when given (a graph output), else the value `name`.
    fn relu(&mut self, name: &str, x: String, output: Option<&str>) -> String {
        let out = output.unwrap_or(name);
        self.node("Relu", name, vec![x], out, Vec::new());
        out.to_string()
    }

    /// PyTorch's `nn.Linear` as Gemm: x (batch, in) times weight (out, in) transposed, plus bias.
    fn linear(&mut self, module: &str, x: String) -> String {
        let [weight, bias] = self.parameters(module);
        self.op(
            "Gemm",
            module,
            vec![x, weight, bias],
            vec![int_attribute("transB", 1)],
        )
    }

    /// A 3x3 convolution (or transposed convolution) with padding 1 and `stride`, as in
    /// [`crate::model::Conv`] and [`crate::model::ConvTranspose`].
    fn conv3x3(&mut self, module: &str, x: String, stride: usize, transposed: bool) -> String {
        let [weight, bias] = self.parameters(module);
        let stride = stride as i64;
        let mut attributes = vec![
            ints_attribute("kernel_shape", &[3, 3]),
            ints_attribute("pads", &[1, 1, 1, 1]),
            ints_attribute("strides", &[stride, stride]),
        ];
        // The transposed convolution's output is `stride` times its input (output padding
        // stride - 1, as cae's kernel and the tutorial's `output_padding=1` do).
        if transposed && stride > 1 {
            attributes.push(ints_attribute("output_padding", &[stride - 1, stride - 1]));
        }
        let op_type = if transposed { "ConvTranspose" } else { "Conv" };
        self.op(op_type, module, vec![x, weight, bias], attributes)
    }

    /// The encoder from the value `input` to the graph value `output`.
    fn encoder(&mut self, config: &ModelConfig, input: &str, output: &str) {
        let mut x = input.to_string();
        for (i, &(_, _, stride)) in config.encoder_convs().iter().enumerate() {
            x = self.conv3x3(&format!("encoder.net.{}", 2 * i), x, stride, false);
            x = self.relu(&format!("encoder.net.{}", 2 * i + 1), x, None);
        }
        x = self.op(
            "Flatten",
            "encoder.net.12",
            vec![x],
            vec![int_attribute("axis", 1)],
        );
        if config.variational {
            // A variational model's codes are its posterior means: the mean head, no ReLU.
            let [weight, bias] = self.parameters("encoder.net.13");
            let attributes = vec![int_attribute("transB", 1)];
            self.node(
                "Gemm",
                "encoder.net.13",
                vec![x, weight, bias],
                output,
                attributes,
            );
        } else {
            x = self.linear("encoder.net.13", x);
            self.relu("encoder.net.14", x, Some(output));
        }
    }

    /// The decoder from the value `input` to the graph value `output`.
    fn decoder(&mut self, config: &ModelConfig, input: &str, output: &str) {
        let x = self.linear("decoder.linear.0", input.to_string());
        let mut x = self.relu("decoder.linear.1", x, None);
        let shape_name = "decoder.deep_shape".to_string();
        let shape = [
            -1,
            config.deep_channels() as i64,
            (config.height / 4) as i64,
            (config.width / 4) as i64,
        ];
        self.initializers.push(TensorProto {
            dims: vec![shape.len() as i64],
            data_type: DATA_TYPE_INT64,
            name: shape_name.clone(),
            raw_data: shape.iter().flat_map(|v| v.to_le_bytes()).collect(),
        });
        x = self.op(
            "Reshape",
            "decoder.reshape",
            vec![x, shape_name],
            Vec::new(),
        );
        let convs = config.decoder_convs();
        let last = convs.len() - 1;
        for (i, &(_, _, stride)) in convs.iter().enumerate() {
            x = self.conv3x3(&format!("decoder.conv.{}", 2 * i), x, stride, true);
            if i == last {
                // No ReLU after the last layer: its output is the graph's.
                self.nodes.last_mut().expect("the last layer").output = vec![output.into()];
            } else {
                x = self.relu(&format!("decoder.conv.{}", 2 * i + 1), x, None);
            }
        }
    }
}

fn int_attribute(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: ATTRIBUTE_INT,
        i: Some(value),
        ints: Vec::new(),
    }
}

fn ints_attribute(name: &str, values: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: ATTRIBUTE_INTS,
        i: None,
        ints: values.to_vec(),
    }
}

// ---------------------------------------------------------------------------------------------
// The messages of onnx.proto, only the fields cae writes (same names and field numbers)

/// `TensorProto.DataType.FLOAT`.
const DATA_TYPE_FLOAT: i32 = 1;
/// `TensorProto.DataType.INT64`.
const DATA_TYPE_INT64: i32 = 7;
/// `AttributeProto.AttributeType.INT`.
const ATTRIBUTE_INT: i32 = 2;
/// `AttributeProto.AttributeType.INTS`.
const ATTRIBUTE_INTS: i32 = 7;

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct ModelProto {
    #[prost(int64, tag = "1")]
    pub ir_version: i64,
    #[prost(message, repeated, tag = "8")]
    pub opset_import: Vec<OperatorSetIdProto>,
    #[prost(string, tag = "2")]
    pub producer_name: String,
    #[prost(string, tag = "3")]
    pub producer_version: String,
    #[prost(string, tag = "6")]
    pub doc_string: String,
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
    #[prost(message, repeated, tag = "14")]
    pub metadata_props: Vec<StringStringEntryProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct OperatorSetIdProto {
    /// Empty: the default domain `ai.onnx`.
    #[prost(string, tag = "1")]
    pub domain: String,
    #[prost(int64, tag = "2")]
    pub version: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct StringStringEntryProto {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorProto>,
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "12")]
    pub output: Vec<ValueInfoProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    #[prost(string, tag = "3")]
    pub name: String,
    #[prost(string, tag = "4")]
    pub op_type: String,
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct AttributeProto {
    #[prost(string, tag = "1")]
    pub name: String,
    /// `AttributeType`: which of the value fields is set.
    #[prost(int32, tag = "20")]
    pub r#type: i32,
    #[prost(int64, optional, tag = "3")]
    pub i: Option<i64>,
    #[prost(int64, repeated, packed = "false", tag = "8")]
    pub ints: Vec<i64>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct TensorProto {
    #[prost(int64, repeated, packed = "false", tag = "1")]
    pub dims: Vec<i64>,
    #[prost(int32, tag = "2")]
    pub data_type: i32,
    #[prost(string, tag = "8")]
    pub name: String,
    /// Little-endian values, row-major.
    #[prost(bytes = "vec", tag = "9")]
    pub raw_data: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct ValueInfoProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub r#type: Option<TypeProto>,
}

/// `TypeProto` with the one member of its `value` oneof cae uses (a oneof of one set field
/// is, on the wire, that field).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct TypeProto {
    #[prost(message, optional, tag = "1")]
    pub tensor_type: Option<TypeProtoTensor>,
}

/// `TypeProto.Tensor`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct TypeProtoTensor {
    #[prost(int32, tag = "1")]
    pub elem_type: i32,
    #[prost(message, optional, tag = "2")]
    pub shape: Option<TensorShapeProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct TensorShapeProto {
    #[prost(message, repeated, tag = "1")]
    pub dim: Vec<Dimension>,
}

/// `TensorShapeProto.Dimension`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Dimension {
    #[prost(oneof = "DimensionValue", tags = "1, 2")]
    pub value: Option<DimensionValue>,
}

/// The `value` oneof of `TensorShapeProto.Dimension`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub(crate) enum DimensionValue {
    #[prost(int64, tag = "1")]
    DimValue(i64),
    #[prost(string, tag = "2")]
    DimParam(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init;

    fn seed(config: &ModelConfig) -> StateDict {
        init::seed_state_dict(config, 0)
    }

    fn decode(bytes: &[u8]) -> ModelProto {
        ModelProto::decode(bytes).expect("the export decodes")
    }

    #[test]
    fn parts_have_their_names_weights_and_layers() {
        let config = ModelConfig::default();
        let dict = seed(&config);
        for (part, ops, tensors) in [
            (Part::Full, 6 * 2 + 3 + 3 + 6 * 2 - 1, 28 + 1),
            (Part::Encoder, 6 * 2 + 3, 14),
            (Part::Decoder, 3 + 6 * 2 - 1, 14 + 1),
        ] {
            let model = decode(&onnx_bytes(&config, &dict, part).unwrap());
            assert_eq!((model.ir_version, model.opset_import[0].version), (8, 17));
            let graph = model.graph.unwrap();
            assert_eq!(graph.node.len(), ops, "{part:?}");
            assert_eq!(graph.initializer.len(), tensors, "{part:?}");
            assert_eq!(graph.input[0].name, part.input_name());
            assert_eq!(graph.output[0].name, part.output_name());
            let outputs: Vec<_> = graph.node.iter().flat_map(|n| &n.output).collect();
            assert_eq!(
                outputs.iter().filter(|o| **o == part.output_name()).count(),
                1,
                "{part:?}: one node writes the output"
            );
            assert_eq!(graph.node.last().unwrap().output[0], part.output_name());
            let dims = &graph.input[0].r#type.as_ref().unwrap();
            let first = &dims
                .tensor_type
                .as_ref()
                .unwrap()
                .shape
                .as_ref()
                .unwrap()
                .dim[0];
            assert_eq!(
                first.value,
                Some(DimensionValue::DimParam(BATCH_DIM.into()))
            );
        }
    }

    #[test]
    fn weights_are_embedded_bit_exact_in_pytorch_layout() {
        let config = ModelConfig {
            latent: 8,
            channels: 2,
            in_channels: 1,
            height: 28,
            width: 28,
            variational: false,
        };
        let dict = seed(&config);
        let graph = decode(&onnx_bytes(&config, &dict, Part::Full).unwrap())
            .graph
            .unwrap();
        for tensor in &graph.initializer {
            let Some(expected) = dict.get(&tensor.name) else {
                assert_eq!(tensor.name, "decoder.deep_shape");
                let shape: Vec<i64> = tensor
                    .raw_data
                    .chunks_exact(8)
                    .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
                    .collect();
                assert_eq!(shape, [-1, 8, 7, 7]);
                continue;
            };
            let dims: Vec<usize> = tensor.dims.iter().map(|&d| d as usize).collect();
            assert_eq!(dims, expected.shape, "{}", tensor.name);
            let raw: Vec<u8> = expected.data.iter().flat_map(|v| v.to_le_bytes()).collect();
            assert!(raw == tensor.raw_data, "{}", tensor.name);
        }
    }

    #[test]
    fn bad_weights_are_refused() {
        let config = ModelConfig::default();
        let mut dict = seed(&config);
        dict.get_mut("decoder.conv.4.bias").unwrap().data[3] = f32::NAN;
        let err = onnx_bytes(&config, &dict, Part::Full)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("decoder.conv.4.bias") && err.contains("NaN"),
            "{err}"
        );
        dict.remove("decoder.conv.4.bias");
        let err = onnx_bytes(&config, &dict, Part::Encoder)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("decoder.conv.4.bias") && err.contains("missing"),
            "{err}"
        );
    }
}
