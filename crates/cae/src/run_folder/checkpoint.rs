//! The resumable state of a training run in one safetensors file: model weights, Adam moments,
//! the epoch reached and the history so far, written atomically after every epoch.

use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::history::History;
use crate::io::weights::{self, HostTensor, StateDict};
use crate::model::{Autoencoder, ModelConfig};
use crate::optim::{Adam, AdamConfig, Moments};
use crate::settings::TrainSettings;

const STATE_KEY: &str = "cae.checkpoint";
const MODEL_PREFIX: &str = "model/";
const EXP_AVG_PREFIX: &str = "adam.exp_avg/";
const EXP_AVG_SQ_PREFIX: &str = "adam.exp_avg_sq/";

/// Everything besides tensors that a resumed run needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RunState {
    pub settings: TrainSettings,
    /// Epochs finished (the next one to run is `epochs_done + 1`).
    pub epochs_done: usize,
    pub adam_step: u64,
    pub adam: AdamConfig,
    pub history: History,
}

/// Writes the checkpoint atomically: a crash leaves the previous one intact. A state holding
/// NaN or infinite values is refused, so a diverged run never replaces its last good checkpoint.
pub(crate) fn save(
    path: &Path,
    model: &Autoencoder,
    config: &ModelConfig,
    adam: &Adam,
    state: &RunState,
) -> Result<()> {
    let mut dict = StateDict::new();
    for (name, tensor) in weights::state_dict(model) {
        dict.insert(format!("{MODEL_PREFIX}{name}"), tensor);
    }
    for (name, moments) in &adam.moments {
        dict.insert(
            format!("{EXP_AVG_PREFIX}{name}"),
            HostTensor::from_tensor(&moments.exp_avg),
        );
        dict.insert(
            format!("{EXP_AVG_SQ_PREFIX}{name}"),
            HostTensor::from_tensor(&moments.exp_avg_sq),
        );
    }
    check_finite(&dict)?;
    let state_json = serde_json::to_string(state)?;
    weights::save_safetensors(path, &dict, Some(config), &[(STATE_KEY, state_json)])
}

fn check_finite(dict: &StateDict) -> Result<()> {
    let bad = dict
        .iter()
        .find(|(_, tensor)| tensor.data.iter().any(|v| !v.is_finite()));
    if let Some((name, _)) = bad {
        bail!("tensor `{name}` holds NaN or infinite values: training diverged");
    }
    Ok(())
}

/// A checkpoint read back: the model on `device` (an autodiff device to keep training), Adam, state.
pub(crate) struct Restored {
    pub model: Autoencoder,
    pub config: ModelConfig,
    pub adam: Adam,
    pub state: RunState,
}

pub(crate) fn load(path: &Path, device: &Device) -> Result<Restored> {
    let context = || format!("checkpoint {}", path.display());
    let bytes = std::fs::read(path).with_context(context)?;
    let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes).with_context(context)?;
    let state_json = metadata
        .metadata()
        .as_ref()
        .and_then(|m| m.get(STATE_KEY).cloned())
        .with_context(|| {
            format!(
                "{}: no `{STATE_KEY}` entry; this is a weight file, not a cae checkpoint",
                context()
            )
        })?;
    let state: RunState = serde_json::from_str(&state_json).with_context(context)?;
    let file = weights::read_weights(path)?;
    let config = file
        .config
        .with_context(|| format!("{}: no model configuration", context()))?;
    let mut model_dict = StateDict::new();
    let mut adam = Adam::new(state.adam);
    adam.step = state.adam_step;
    let inner = device.clone().inner();
    let mut exp_avg_sq = StateDict::new();
    for (key, tensor) in file.tensors {
        if let Some(name) = key.strip_prefix(MODEL_PREFIX) {
            model_dict.insert(name.to_string(), tensor);
        } else if let Some(name) = key.strip_prefix(EXP_AVG_SQ_PREFIX) {
            exp_avg_sq.insert(name.to_string(), tensor);
        } else if let Some(name) = key.strip_prefix(EXP_AVG_PREFIX) {
            adam.moments.insert(
                name.to_string(),
                Moments {
                    exp_avg: flat_tensor(&tensor, &inner),
                    exp_avg_sq: flat_tensor(&tensor, &inner),
                },
            );
        } else {
            bail!("{}: unexpected tensor `{key}`", context());
        }
    }
    for (name, moments) in adam.moments.iter_mut() {
        let sq = exp_avg_sq
            .remove(name)
            .with_context(|| format!("{}: `{EXP_AVG_SQ_PREFIX}{name}` is missing", context()))?;
        if sq.data.len() != moments.exp_avg.shape().num_elements() {
            bail!("{}: Adam moments of `{name}` differ in size", context());
        }
        // Moments that do not fit their parameter would make the next Adam step panic.
        let fits = model_dict
            .get(name)
            .is_some_and(|param| param.data.len() == sq.data.len());
        if !fits {
            bail!(
                "{}: the Adam moments `{EXP_AVG_PREFIX}{name}` do not match a model parameter",
                context()
            );
        }
        moments.exp_avg_sq = flat_tensor(&sq, &inner);
    }
    if let Some(name) = exp_avg_sq.keys().next() {
        bail!("{}: `{EXP_AVG_PREFIX}{name}` is missing", context());
    }
    let model = weights::build_model(&config, &model_dict, device).with_context(context)?;
    Ok(Restored {
        model,
        config,
        adam,
        state,
    })
}

fn flat_tensor(host: &HostTensor, device: &Device) -> Tensor<1> {
    Tensor::from_data(
        TensorData::new(host.data.clone(), [host.data.len()]),
        device,
    )
}
