//! Weights on the host: the PyTorch `state_dict` view of a model, and the files that hold it
//! (safetensors, and PyTorch's `.pt` zip format read without running any pickle code).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor, TensorData};
use safetensors::tensor::Dtype;

use super::Precision;
use crate::model::{Autoencoder, Conv, ConvTranspose, Decoder, Dense, Encoder, ModelConfig};

/// A float tensor on the host, row-major, in PyTorch's layout.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// The size of every dimension.
    pub shape: Vec<usize>,
    /// The values, as many as the product of `shape`.
    pub data: Vec<f32>,
}

impl HostTensor {
    /// A tensor of this shape holding `data`, which must have as many values as the shape.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Self { shape, data }
    }

    pub(crate) fn from_tensor<const D: usize>(tensor: &Tensor<D>) -> Self {
        let shape = tensor.dims().to_vec();
        let data = tensor
            .to_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .expect("float tensor data");
        Self { shape, data }
    }

    fn to_tensor<const D: usize>(&self, device: &Device) -> Tensor<D> {
        Tensor::from_data(
            TensorData::new(self.data.clone(), self.shape.clone()),
            device,
        )
    }

    /// The transpose of a 2-D tensor.
    pub(crate) fn transposed(&self) -> Self {
        let (rows, cols) = (self.shape[0], self.shape[1]);
        let mut data = vec![0.0; self.data.len()];
        for r in 0..rows {
            for c in 0..cols {
                data[c * rows + r] = self.data[r * cols + c];
            }
        }
        Self {
            shape: vec![cols, rows],
            data,
        }
    }
}

/// Named tensors, keyed by PyTorch `state_dict` names.
pub type StateDict = BTreeMap<String, HostTensor>;

/// The PyTorch name of every parameter of a model with this configuration, with its shape,
/// in the order of the PyTorch module.
pub(crate) fn expected_shapes(config: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let mut shapes = Vec::new();
    for (i, (cin, cout, _)) in config.encoder_convs().into_iter().enumerate() {
        shapes.push((
            format!("encoder.net.{}.weight", 2 * i),
            vec![cout, cin, 3, 3],
        ));
        shapes.push((format!("encoder.net.{}.bias", 2 * i), vec![cout]));
    }
    let (flat, latent) = (config.flat_features(), config.latent);
    shapes.push(("encoder.net.13.weight".into(), vec![latent, flat]));
    shapes.push(("encoder.net.13.bias".into(), vec![latent]));
    if config.variational {
        shapes.push((format!("{LOG_VAR}.weight"), vec![latent, flat]));
        shapes.push((format!("{LOG_VAR}.bias"), vec![latent]));
    }
    shapes.push(("decoder.linear.0.weight".into(), vec![flat, latent]));
    shapes.push(("decoder.linear.0.bias".into(), vec![flat]));
    for (i, (cin, cout, _)) in config.decoder_convs().into_iter().enumerate() {
        shapes.push((
            format!("decoder.conv.{}.weight", 2 * i),
            vec![cin, cout, 3, 3],
        ));
        shapes.push((format!("decoder.conv.{}.bias", 2 * i), vec![cout]));
    }
    if config.variational {
        shapes.push((LOG_SIGMA.into(), vec![1]));
    }
    shapes
}

/// PyTorch name of a variational model's log-variance head (its mean head is `encoder.net.13`,
/// where a plain model has its code layer; see `tests/fixtures/vae/make_vae_fixture.py`).
pub(crate) const LOG_VAR: &str = "encoder.log_var";
/// PyTorch name of a variational model's learned log standard deviation.
pub(crate) const LOG_SIGMA: &str = "log_sigma";

/// Checks that `dict` holds exactly the tensors of `config`, with their shapes.
pub fn check_state_dict(config: &ModelConfig, dict: &StateDict) -> Result<()> {
    let expected = expected_shapes(config);
    for (name, shape) in &expected {
        match dict.get(name) {
            None => bail!("tensor `{name}` is missing (expected shape {shape:?})"),
            Some(t) if &t.shape != shape => bail!(
                "tensor `{name}` has shape {:?}, but a model with latent {} and channels {} needs {shape:?}",
                t.shape,
                config.latent,
                config.channels
            ),
            Some(_) => {}
        }
    }
    if let Some(extra) = dict.keys().find(|k| !expected.iter().any(|(n, _)| n == *k)) {
        bail!("unexpected tensor `{extra}`: it is not part of the cae autoencoder");
    }
    Ok(())
}

/// Builds a model on `device` from a state dict (which must match `config` exactly).
pub(crate) fn build_model(
    config: &ModelConfig,
    dict: &StateDict,
    device: &Device,
) -> Result<Autoencoder> {
    config.validate()?;
    check_state_dict(config, dict)?;
    let param = |name: &str| -> &HostTensor { &dict[name] };
    let param4 = |name: &str| Param::from_tensor(param(name).to_tensor::<4>(device));
    let param1 = |name: &str| Param::from_tensor(param(name).to_tensor::<1>(device));
    let dense = |prefix: &str| Dense {
        weight: Param::from_tensor(
            param(&format!("{prefix}.weight"))
                .transposed()
                .to_tensor::<2>(device),
        ),
        bias: param1(&format!("{prefix}.bias")),
    };
    let encoder = Encoder {
        convs: config
            .encoder_convs()
            .iter()
            .enumerate()
            .map(|(i, &(_, _, stride))| Conv {
                weight: param4(&format!("encoder.net.{}.weight", 2 * i)),
                bias: param1(&format!("encoder.net.{}.bias", 2 * i)),
                stride,
            })
            .collect(),
        linear: dense("encoder.net.13"),
        log_var: config.variational.then(|| dense(LOG_VAR)),
    };
    let decoder = Decoder {
        linear: dense("decoder.linear.0"),
        convs: config
            .decoder_convs()
            .iter()
            .enumerate()
            .map(|(i, &(_, _, stride))| ConvTranspose {
                weight: param4(&format!("decoder.conv.{}.weight", 2 * i)),
                bias: param1(&format!("decoder.conv.{}.bias", 2 * i)),
                stride,
            })
            .collect(),
        deep_channels: config.deep_channels(),
        deep_height: config.height / 4,
        deep_width: config.width / 4,
    };
    Ok(Autoencoder {
        encoder,
        decoder,
        log_sigma: config.variational.then(|| param1(LOG_SIGMA)),
    })
}

/// Maps a Burn module path of [`Autoencoder`] (`["encoder", "convs", "2", "weight"]`) to its
/// PyTorch name (`encoder.net.4.weight`) and whether the tensor is stored transposed.
pub(crate) fn torch_name(path: &[String]) -> (String, bool) {
    let p: Vec<&str> = path.iter().map(String::as_str).collect();
    let index = |s: &str| s.parse::<usize>().expect("numeric module index");
    match p.as_slice() {
        ["encoder", "convs", i, leaf] => (format!("encoder.net.{}.{leaf}", 2 * index(i)), false),
        ["encoder", "linear", leaf] => (format!("encoder.net.13.{leaf}"), *leaf == "weight"),
        ["encoder", "log_var", leaf] => (format!("{LOG_VAR}.{leaf}"), *leaf == "weight"),
        ["log_sigma"] => (LOG_SIGMA.to_string(), false),
        ["decoder", "linear", leaf] => (format!("decoder.linear.0.{leaf}"), *leaf == "weight"),
        ["decoder", "convs", i, leaf] => (format!("decoder.conv.{}.{leaf}", 2 * index(i)), false),
        _ => panic!("unknown autoencoder parameter path {path:?}"),
    }
}

/// Receives every parameter of a model with its PyTorch name.
trait ParamSink {
    fn param<const D: usize>(&mut self, name: String, transposed: bool, param: &Param<Tensor<D>>);
}

/// Walks a model keeping track of the module path, which Burn's visitor leaves to the caller.
struct PathVisitor<S> {
    path: Vec<String>,
    sink: S,
}

impl<S: ParamSink> ModuleVisitor for PathVisitor<S> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let (name, transposed) = torch_name(&self.path);
        self.sink.param(name, transposed, param);
    }
}

fn visit_params<S: ParamSink>(model: &Autoencoder, sink: S) -> S {
    let mut visitor = PathVisitor {
        path: Vec::new(),
        sink,
    };
    model.visit(&mut visitor);
    visitor.sink
}

fn host_in_torch_layout<const D: usize>(tensor: &Tensor<D>, transposed: bool) -> HostTensor {
    let host = HostTensor::from_tensor(tensor);
    if transposed { host.transposed() } else { host }
}

/// The model's parameters as a PyTorch state dict.
pub(crate) fn state_dict(model: &Autoencoder) -> StateDict {
    struct Values(StateDict);
    impl ParamSink for Values {
        fn param<const D: usize>(
            &mut self,
            name: String,
            transposed: bool,
            param: &Param<Tensor<D>>,
        ) {
            self.0
                .insert(name, host_in_torch_layout(&param.val(), transposed));
        }
    }
    visit_params(model, Values(StateDict::new())).0
}

/// Key of the safetensors metadata entry that holds the model configuration as JSON.
pub const CONFIG_KEY: &str = "cae.model_config";

/// A weight file's content: the tensors and, when the file records it, the model configuration.
pub struct WeightFile {
    /// The tensors, by PyTorch `state_dict` name, in float32.
    pub tensors: StateDict,
    /// The configuration a safetensors file records in its metadata ([`CONFIG_KEY`]); `None`
    /// for a `.pt` file or a safetensors file without it.
    pub config: Option<ModelConfig>,
    /// The precision the file stored, when it was not float32 (`float16`, `bfloat16`,
    /// `float64`, or `mixed` for several): its tensors were converted to float32 on reading.
    pub converted_from: Option<&'static str>,
}

impl WeightFile {
    /// The configuration recorded in the file, or else the one its tensor shapes imply.
    pub fn model_config(&self) -> Result<ModelConfig> {
        match self.config {
            Some(config) => Ok(config),
            None => infer_config(&self.tensors),
        }
    }
}

/// Reads a safetensors or PyTorch `.pt` file (recognised by content, not by extension).
pub fn read_weights(path: &Path) -> Result<WeightFile> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read weight file {}", path.display()))?;
    let result = if bytes.starts_with(b"PK\x03\x04") {
        read_pt(path, &bytes)
    } else if looks_like_safetensors(&bytes) {
        read_safetensors(&bytes)
    } else {
        Err(anyhow::anyhow!(
            "unknown format: neither safetensors nor a PyTorch zip (.pt) file"
        ))
    };
    let file = result.with_context(|| format!("weight file {}", path.display()))?;
    refuse_non_finite(&file.tensors).with_context(|| format!("weight file {}", path.display()))?;
    Ok(file)
}

/// NaN or infinite weights make every output NaN: refused on load, naming the tensor.
pub(crate) fn refuse_non_finite(dict: &StateDict) -> Result<()> {
    for (name, tensor) in dict {
        let bad = tensor.data.iter().filter(|v| !v.is_finite()).count();
        if bad > 0 {
            bail!(
                "tensor `{name}` holds {bad} NaN or infinite value(s) of {}; cae loads only finite weights",
                tensor.data.len()
            );
        }
    }
    Ok(())
}

/// Reads weights and builds the model they describe.
pub fn load_model(path: &Path, device: &Device) -> Result<(Autoencoder, ModelConfig)> {
    load_model_converting(path, device).map(|(model, config, _)| (model, config))
}

/// [`load_model`], also saying which precision the file's weights were converted from when
/// they were not float32 ([`WeightFile::converted_from`]).
pub fn load_model_converting(
    path: &Path,
    device: &Device,
) -> Result<(Autoencoder, ModelConfig, Option<&'static str>)> {
    let file = read_weights(path)?;
    let config = file
        .model_config()
        .with_context(|| format!("weight file {}", path.display()))?;
    let model = build_model(&config, &file.tensors, device)
        .with_context(|| format!("weight file {}", path.display()))?;
    Ok((model, config, file.converted_from))
}

fn looks_like_safetensors(bytes: &[u8]) -> bool {
    bytes.len() > 9 && bytes[8] == b'{'
}

fn read_safetensors(bytes: &[u8]) -> Result<WeightFile> {
    let tensors =
        safetensors::SafeTensors::deserialize(bytes).context("not a valid safetensors file")?;
    let mut dict = StateDict::new();
    let mut converted = Converted::default();
    for (name, view) in tensors.tensors() {
        let precision = match view.dtype() {
            Dtype::F32 => Precision::F32,
            Dtype::F16 => Precision::F16,
            Dtype::BF16 => Precision::BF16,
            Dtype::F64 => Precision::F64,
            other => bail!(
                "tensor `{name}` has dtype {other:?}; cae reads float32 weights (float16, \
                 bfloat16 and float64 are converted)"
            ),
        };
        converted.note(precision);
        let data = tensor_values(precision, &name, view.data())?;
        dict.insert(name, HostTensor::new(view.shape().to_vec(), data));
    }
    let (_, metadata) =
        safetensors::SafeTensors::read_metadata(bytes).context("not a valid safetensors file")?;
    let config = match metadata.metadata().as_ref().and_then(|m| m.get(CONFIG_KEY)) {
        Some(json) => Some(parse_config(json)?),
        None => None,
    };
    Ok(WeightFile {
        tensors: dict,
        config,
        converted_from: converted.name(),
    })
}

fn parse_config(json: &str) -> Result<ModelConfig> {
    let config: ModelConfig = serde_json::from_str(json)
        .with_context(|| format!("metadata `{CONFIG_KEY}` is not a valid model configuration"))?;
    check_config_range(&config)
        .with_context(|| format!("metadata `{CONFIG_KEY}` is not a valid model configuration"))?;
    Ok(config)
}

/// The largest latent size, width and image side a weight file may declare. Within these the
/// size arithmetic of [`ModelConfig`] cannot overflow (the dense layers stay under 2^63
/// parameters), so a crafted file cannot make it wrap.
pub(crate) const MAX_DIMENSION: usize = 1 << 16;

fn check_config_range(config: &ModelConfig) -> Result<()> {
    let dims = [config.latent, config.channels, config.height, config.width];
    if dims.iter().any(|&d| d > MAX_DIMENSION) {
        bail!(
            "latent {}, channels {}, {}x{} images: each must be at most {MAX_DIMENSION}",
            config.latent,
            config.channels,
            config.height,
            config.width
        );
    }
    Ok(())
}

/// The values of tensor `name` stored in `precision`, as float32.
fn tensor_values(precision: Precision, name: &str, bytes: &[u8]) -> Result<Vec<f32>> {
    precision.to_f32(bytes).map_err(|(_, value)| {
        anyhow::anyhow!(
            "tensor `{name}` holds the float64 value {value:e}, which float32 cannot hold"
        )
    })
}

/// Which non-float32 precisions a file's tensors were converted from.
#[derive(Debug, Default)]
struct Converted(Vec<Precision>);

impl Converted {
    fn note(&mut self, precision: Precision) {
        if precision != Precision::F32 && !self.0.contains(&precision) {
            self.0.push(precision);
        }
    }

    fn name(&self) -> Option<&'static str> {
        match self.0.as_slice() {
            [] => None,
            [one] => Some(one.name()),
            _ => Some("mixed float16/bfloat16/float64"),
        }
    }
}

/// Reads a `.pt` file whose `bytes` have been read already, without running any pickle code.
///
/// `pytorch-reader` checks what the pickle declares against the storages, but two kinds of
/// declaration can still ask for far more memory than the file holds: a deflated record
/// (`torch.save` writes none) expands to whatever size its header claims, and a view with
/// stride 0 (`expand`) materialises up to 10 GiB from a single stored value. Both are refused
/// here before any tensor is read, so reading costs at most about twice the file's size.
fn read_pt(path: &Path, bytes: &[u8]) -> Result<WeightFile> {
    check_pt_records(bytes)?;
    let reader =
        pytorch_reader::PytorchReader::new(path).context("not a readable PyTorch state_dict")?;
    check_claimed_bytes(reader.tensors(), bytes.len())?;
    let mut dict = StateDict::new();
    let mut converted = Converted::default();
    for (name, tensor) in reader.into_tensors() {
        let precision = match tensor.dtype() {
            pytorch_reader::DType::F32 => Precision::F32,
            pytorch_reader::DType::F16 => Precision::F16,
            pytorch_reader::DType::BF16 => Precision::BF16,
            pytorch_reader::DType::F64 => Precision::F64,
            other => bail!(
                "tensor `{name}` has dtype {other:?}; cae reads float32 weights (float16, \
                 bfloat16 and float64 are converted)"
            ),
        };
        converted.note(precision);
        let bytes = tensor
            .read()
            .with_context(|| format!("tensor `{name}`: cannot read its data"))?;
        if bytes.len() != tensor.byte_len() {
            bail!(
                "tensor `{name}`: {} bytes of data for shape {:?}",
                bytes.len(),
                tensor.shape()
            );
        }
        let data = tensor_values(precision, &name, &bytes)?;
        dict.insert(name, HostTensor::new(tensor.shape().to_vec(), data));
    }
    Ok(WeightFile {
        tensors: dict,
        config: None,
        converted_from: converted.name(),
    })
}

/// Refuses compressed records and records larger than the file itself.
fn check_pt_records(bytes: &[u8]) -> Result<()> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .context("not a readable PyTorch file: the zip archive is damaged")?;
    for index in 0..archive.len() {
        let record = archive
            .by_index_raw(index)
            .with_context(|| format!("zip record {index} is damaged"))?;
        let name = record
            .name()
            .map_or_else(|_| format!("#{index}"), |n| n.into_owned());
        if record.compression() != zip::CompressionMethod::Stored {
            bail!(
                "record `{}` is compressed ({}); PyTorch stores every record uncompressed, \
                 so this file was not written by torch.save",
                name,
                record.compression()
            );
        }
        if record.size() > bytes.len() as u64 {
            bail!(
                "record `{}` claims {} bytes, more than the whole file ({} bytes)",
                name,
                record.size(),
                bytes.len()
            );
        }
    }
    Ok(())
}

/// Refuses tensors that together would take more bytes than the file holds.
fn check_claimed_bytes(
    tensors: &std::collections::HashMap<String, pytorch_reader::Tensor>,
    file_len: usize,
) -> Result<()> {
    let total = tensors
        .values()
        .fold(0usize, |sum, t| sum.saturating_add(t.byte_len()));
    if total > file_len {
        let largest = tensors.values().max_by_key(|t| t.byte_len());
        let detail = largest.map_or(String::new(), |t| {
            format!(
                " (tensor `{}` alone claims shape {:?}, {} bytes)",
                t.name,
                t.shape(),
                t.byte_len()
            )
        });
        bail!(
            "its tensors claim {total} bytes of data, more than the whole file ({file_len} \
             bytes){detail}: a damaged or crafted file"
        );
    }
    Ok(())
}

/// The configuration implied by the shapes of a state dict from the tutorial's classes
/// (square images assumed, since the shapes only fix height x width).
pub(crate) fn infer_config(dict: &StateDict) -> Result<ModelConfig> {
    let shape = |name: &str| {
        dict.get(name).map(|t| t.shape.clone()).with_context(|| {
            format!("tensor `{name}` is missing, so the model shape cannot be inferred")
        })
    };
    let first = shape("encoder.net.0.weight")?;
    let dense = shape("encoder.net.13.weight")?;
    if first.len() != 4 || dense.len() != 2 {
        bail!(
            "tensors `encoder.net.0.weight` {first:?} and `encoder.net.13.weight` {dense:?} do not have the autoencoder's ranks"
        );
    }
    let (channels, in_channels, latent, flat) = (first[0], first[1], dense[0], dense[1]);
    if channels > MAX_DIMENSION {
        bail!("`encoder.net.0.weight` has {channels} output channels, more than {MAX_DIMENSION}");
    }
    let cells = flat / (4 * channels).max(1);
    let side = (cells as f64).sqrt().round() as usize;
    let implied = side
        .checked_mul(side)
        .and_then(|n| n.checked_mul(4 * channels));
    if implied != Some(flat) {
        bail!(
            "`encoder.net.13.weight` has {flat} inputs, which is not 4*{channels}*s*s for a square feature map"
        );
    }
    let config = ModelConfig {
        latent,
        channels,
        in_channels,
        height: 4 * side,
        width: 4 * side,
        variational: dict.contains_key(&format!("{LOG_VAR}.weight")),
    };
    config.validate()?;
    check_config_range(&config)?;
    Ok(config)
}

/// Writes `dict` as safetensors with the model configuration (and `extra` entries) in its metadata.
pub fn save_safetensors(
    path: &Path,
    dict: &StateDict,
    config: Option<&ModelConfig>,
    extra: &[(&str, String)],
) -> Result<()> {
    let bytes = safetensors_bytes(dict, config, extra)?;
    crate::io::atomic::write_bytes(path, &bytes)
}

/// The safetensors encoding of `dict`. Written here rather than with `safetensors::serialize`
/// because that crate keeps the metadata in a `HashMap`, whose random order makes two saves of
/// the same weights differ byte for byte; this writes keys sorted, so equal content gives equal
/// files. The result is read back (and so validated) by the `safetensors` crate in the tests.
pub fn safetensors_bytes(
    dict: &StateDict,
    config: Option<&ModelConfig>,
    extra: &[(&str, String)],
) -> Result<Vec<u8>> {
    let mut metadata: BTreeMap<String, String> = extra
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    metadata.insert("format".into(), "pt".into());
    if let Some(config) = config {
        metadata.insert(CONFIG_KEY.into(), serde_json::to_string(config)?);
    }
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::to_value(&metadata)?);
    let mut offset = 0usize;
    for (name, tensor) in dict {
        let end = offset + 4 * tensor.data.len();
        header.insert(name.clone(), serde_json::json!({ "dtype": "F32", "shape": tensor.shape, "data_offsets": [offset, end] }));
        offset = end;
    }
    let mut header = serde_json::to_vec(&serde_json::Value::Object(header))?;
    // The format pads the header with spaces so the data starts 8-byte aligned.
    header.resize(header.len().next_multiple_of(8), b' ');
    let mut bytes = Vec::with_capacity(8 + header.len() + offset);
    bytes.extend_from_slice(&(header.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&header);
    for tensor in dict.values() {
        bytes.extend(tensor.data.iter().flat_map(|v| v.to_le_bytes()));
    }
    Ok(bytes)
}

/// Saves a model's weights (PyTorch names) with its configuration.
pub fn save_model(path: &Path, model: &Autoencoder, config: &ModelConfig) -> Result<()> {
    save_safetensors(path, &state_dict(model), Some(config), &[])
}

#[cfg(test)]
/// The gradients of `model`'s parameters in `grads`, as a PyTorch state dict (`param.grad`).
pub(crate) fn grads_state_dict(
    model: &Autoencoder,
    grads: &burn::optim::GradientsParams,
) -> StateDict {
    struct Grads<'a>(&'a burn::optim::GradientsParams, StateDict);
    impl ParamSink for Grads<'_> {
        fn param<const D: usize>(
            &mut self,
            name: String,
            transposed: bool,
            param: &Param<Tensor<D>>,
        ) {
            if let Some(grad) = self.0.get::<D>(param.id) {
                self.1.insert(name, host_in_torch_layout(&grad, transposed));
            }
        }
    }
    visit_params(model, Grads(grads, StateDict::new())).1
}
