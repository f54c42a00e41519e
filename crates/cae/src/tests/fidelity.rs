//! cae against the PyTorch reference fixtures of `../shared/reference` (see its README).

mod variational;

use crate::tests::fixtures as common;

use common::max_abs_diff;

use std::path::Path;

use crate::io::weights::{self, HostTensor, StateDict};
use crate::model::ModelConfig;
use crate::optim::{Adam, AdamConfig};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};

/// The float32 tensors of a reference file (batch.safetensors also holds uint8 pixels).
fn reference(name: &str) -> StateDict {
    f32_tensors(&std::fs::read(common::reference_dir().join(name)).unwrap())
}

/// The float32 tensors of a safetensors file, read with the safetensors crate rather than
/// cae's own reader.
fn f32_tensors(bytes: &[u8]) -> StateDict {
    let file = safetensors::SafeTensors::deserialize(bytes).unwrap();
    file.tensors()
        .into_iter()
        .filter(|(_, view)| view.dtype() == safetensors::Dtype::F32)
        .map(|(name, view)| {
            let data = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (name, HostTensor::new(view.shape().to_vec(), data))
        })
        .collect()
}

fn batch_tensor(dict: &StateDict, device: &Device) -> Tensor<4> {
    let t = &dict["input"];
    Tensor::from_data(TensorData::new(t.data.clone(), t.shape.clone()), device)
}

fn assert_close_abs(what: &str, actual: &HostTensor, expected: &HostTensor, tol: f32) {
    assert_eq!(actual.shape, expected.shape, "{what}: shape");
    let diff = max_abs_diff(&actual.data, &expected.data);
    eprintln!("{what}: max abs difference {diff:e}");
    assert!(diff <= tol, "{what}: max abs difference {diff:e} > {tol:e}");
}

/// Relative to the largest magnitude in the expected tensor, as the issue specifies.
fn assert_close_rel(what: &str, actual: &HostTensor, expected: &HostTensor, tol: f32) {
    assert_eq!(actual.shape, expected.shape, "{what}: shape");
    let scale = expected
        .data
        .iter()
        .fold(0.0f32, |m, v| m.max(v.abs()))
        .max(f32::MIN_POSITIVE);
    let diff = max_abs_diff(&actual.data, &expected.data) / scale;
    eprintln!("{what}: max relative difference {diff:e}");
    assert!(
        diff <= tol,
        "{what}: max difference {diff:e} of max |value| > {tol:e}"
    );
}

fn seed_model(device: &Device, file: &str) -> crate::model::Autoencoder {
    let (model, config) = weights::load_model(&common::reference_dir().join(file), device).unwrap();
    assert_eq!(
        config,
        ModelConfig::default(),
        "the reference is the seed model"
    );
    model
}

#[test]
fn forward_matches_pytorch() {
    let device = Device::flex();
    let batch = reference("batch.safetensors");
    let model = seed_model(&device, "seed_latent200_init.safetensors");
    let latent = model.encode(batch_tensor(&batch, &device));
    let output = model.decode(latent.clone());
    assert_close_abs(
        "latent",
        &HostTensor::from_tensor(&latent),
        &batch["latent"],
        1e-5,
    );
    assert_close_abs(
        "output",
        &HostTensor::from_tensor(&output),
        &batch["output"],
        1e-5,
    );
}

#[test]
fn pt_file_loads_the_same_weights() {
    let dir = common::reference_dir();
    let pt = weights::read_weights(&dir.join("seed_latent200_init.pt")).unwrap();
    let st = weights::read_weights(&dir.join("seed_latent200_init.safetensors")).unwrap();
    assert!(pt.tensors == st.tensors, ".pt and safetensors differ");
    assert_eq!(pt.model_config().unwrap(), ModelConfig::default());
    let device = Device::flex();
    let batch = reference("batch.safetensors");
    let output =
        seed_model(&device, "seed_latent200_init.pt").reconstruct(batch_tensor(&batch, &device));
    assert_close_abs(
        "output from .pt",
        &HostTensor::from_tensor(&output),
        &batch["output"],
        1e-5,
    );
}

#[test]
fn gradients_match_pytorch() {
    let device = Device::flex().autodiff();
    let batch = reference("batch.safetensors");
    let expected = reference("seed_latent200_grads_step1.safetensors");
    let model = seed_model(&device, "seed_latent200_init.safetensors");
    let x = batch_tensor(&batch, &device);
    let loss = (model.reconstruct(x.clone()) - x).square().mean();
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    assert_grads_match(&model, &grads, &expected);
}

/// Every parameter has PyTorch's value after its three Adam steps, to 1e-4.
fn assert_weights_match(actual: &StateDict, expected: &StateDict) {
    for (name, tensor) in expected {
        assert_close_abs(
            &format!("{name} after 3 steps"),
            &actual[name],
            tensor,
            1e-4,
        );
    }
}

/// Every parameter has PyTorch's gradient, to 1e-4 of its largest magnitude.
fn assert_grads_match(
    model: &crate::model::Autoencoder,
    grads: &GradientsParams,
    expected: &StateDict,
) {
    let actual = weights::grads_state_dict(model, grads);
    assert_eq!(
        actual.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    for (name, grad) in expected {
        assert_close_rel(&format!("grad of {name}"), &actual[name], grad, 1e-4);
    }
}

#[test]
fn three_adam_steps_match_pytorch() {
    let device = Device::flex().autodiff();
    let batch = reference("batch.safetensors");
    let mut model = seed_model(&device, "seed_latent200_init.safetensors");
    let mut adam = Adam::new(AdamConfig::default());
    let x = batch_tensor(&batch, &device);
    let mut losses = Vec::new();
    for _ in 0..3 {
        let (next, loss) = crate::training::train_step(model, &mut adam, x.clone());
        model = next;
        losses.push(loss);
    }
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(common::reference_dir().join("batch.json")).unwrap())
            .unwrap();
    for (i, (ours, theirs)) in losses
        .iter()
        .zip(json["losses_before_each_step"].as_array().unwrap())
        .enumerate()
    {
        let theirs = theirs.as_f64().unwrap();
        assert!(
            (ours - theirs).abs() < 1e-6,
            "loss before step {}: {ours} vs PyTorch {theirs}",
            i + 1
        );
    }
    let actual = weights::state_dict(&model);
    assert_weights_match(
        &actual,
        &reference("seed_latent200_after3steps.safetensors"),
    );
    let inner = device.inner();
    let valid = weights::build_model(&ModelConfig::default(), &actual, &inner).unwrap();
    let output = valid.reconstruct(batch_tensor(&batch, &inner));
    assert_close_abs(
        "output after 3 steps",
        &HostTensor::from_tensor(&output),
        &batch["output_after3steps"],
        1e-4,
    );
}

#[test]
fn saved_weights_round_trip_bit_exact() {
    let dir = tempfile::tempdir().unwrap();
    let device = Device::flex();
    let model = seed_model(&device, "seed_latent200_init.safetensors");
    let path = dir.path().join("model.safetensors");
    weights::save_model(&path, &model, &ModelConfig::default()).unwrap();
    let back = weights::read_weights(&path).unwrap();
    assert_eq!(back.config, Some(ModelConfig::default()));
    assert!(
        back.tensors == reference("seed_latent200_init.safetensors"),
        "weights changed in the round trip"
    );
    assert!(!Path::new(&dir.path().join(".model.safetensors.tmp")).exists());
}
