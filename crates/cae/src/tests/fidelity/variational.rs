//! The variational mode against PyTorch: `tests/fixtures/vae/make_vae_fixture.py` wrote the
//! fixture (the same VAE at 8 channels and latent 16, the 20 reference images, fixed
//! reparameterisation noise, beta 2), checked at the plain model's tolerances.

use std::path::PathBuf;

use crate::io::weights::{self, HostTensor, StateDict};
use crate::model::ModelConfig;
use crate::optim::{Adam, AdamConfig};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};

use super::{assert_close_abs, assert_grads_match, assert_weights_match, batch_tensor, reference};

fn fixture_path() -> PathBuf {
    crate::tests::fixtures::committed_fixture("vae/vae_c8_l16.safetensors")
}

/// The fixture's tensors and its metadata (`fixture` entry, JSON).
fn fixture() -> (StateDict, serde_json::Value) {
    let bytes = std::fs::read(fixture_path()).unwrap();
    let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = metadata.metadata().as_ref().unwrap()["fixture"].clone();
    let dict = super::f32_tensors(&bytes);
    (dict, serde_json::from_str(&meta).unwrap())
}

/// The tensors named `prefix.<name>`, keyed by `<name>`.
fn with_prefix(dict: &StateDict, prefix: &str) -> StateDict {
    dict.iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(prefix)?.to_string(), v.clone())))
        .collect()
}

fn config(meta: &serde_json::Value) -> ModelConfig {
    ModelConfig {
        latent: meta["latent"].as_u64().unwrap() as usize,
        channels: meta["channels"].as_u64().unwrap() as usize,
        variational: true,
        ..ModelConfig::default()
    }
}

/// Step `step`'s noise (20, latent) from the fixture's (3, 20, latent).
fn eps(dict: &StateDict, step: usize, device: &Device) -> Tensor<2> {
    let all = &dict["eps"];
    let (n, latent) = (all.shape[1], all.shape[2]);
    let data = all.data[step * n * latent..(step + 1) * n * latent].to_vec();
    Tensor::from_data(TensorData::new(data, [n, latent]), device)
}

#[test]
fn the_variational_model_has_pytorchs_parameter_names_and_shapes() {
    let (dict, meta) = fixture();
    let config = config(&meta);
    let init = with_prefix(&dict, "init.");
    weights::check_state_dict(&config, &init).unwrap();
    let seeded = crate::init::seed_state_dict(&config, 0);
    assert_eq!(
        seeded.keys().collect::<Vec<_>>(),
        init.keys().collect::<Vec<_>>()
    );
    assert_eq!(weights::infer_config(&init).unwrap(), config);
}

#[test]
fn the_negative_elbo_and_its_gradients_match_pytorch() {
    let (dict, meta) = fixture();
    let config = config(&meta);
    let device = Device::flex().autodiff();
    let model = weights::build_model(&config, &with_prefix(&dict, "init."), &device).unwrap();
    let x = batch_tensor(&reference("batch.safetensors"), &device);
    let beta = meta["beta"].as_f64().unwrap();
    let terms =
        crate::variational::negative_elbo(&model, x.clone(), x, eps(&dict, 0, &device), beta);
    let scalar = |t: Tensor<1>| f64::from(t.into_scalar::<f32>());
    let (reconstruction, kl) = (
        scalar(terms.reconstruction.clone()),
        scalar(terms.kl.clone()),
    );
    let first = &meta["first_step"];
    let theirs = first["reconstruction_nats"].as_f64().unwrap();
    eprintln!("reconstruction term {reconstruction} vs PyTorch {theirs}");
    assert!((reconstruction - theirs).abs() <= 1e-6 * theirs.abs());
    let theirs = first["kl_nats"].as_f64().unwrap();
    eprintln!("KL {kl} vs PyTorch {theirs}");
    assert!(
        (kl - theirs).abs() <= 1e-5 * theirs.abs(),
        "KL {kl} vs {theirs}"
    );
    let grads = GradientsParams::from_grads(terms.loss.backward(), &model);
    assert_grads_match(&model, &grads, &with_prefix(&dict, "grad."));
}

#[test]
fn three_adam_steps_of_the_variational_model_match_pytorch() {
    let (dict, meta) = fixture();
    let config = config(&meta);
    let device = Device::flex().autodiff();
    let mut model = weights::build_model(&config, &with_prefix(&dict, "init."), &device).unwrap();
    let batch = reference("batch.safetensors");
    let x = batch_tensor(&batch, &device);
    let beta = meta["beta"].as_f64().unwrap();
    let mut adam = Adam::new(AdamConfig::default());
    let expected_losses = meta["losses_before_each_step"].as_array().unwrap();
    for (step, theirs) in expected_losses.iter().enumerate() {
        let (next, loss) = crate::training::train_step_variational(
            model,
            &mut adam,
            x.clone(),
            x.clone(),
            eps(&dict, step, &device),
            beta,
        );
        model = next;
        let theirs = theirs.as_f64().unwrap();
        eprintln!("loss before step {}: {loss} vs PyTorch {theirs}", step + 1);
        assert!(
            (loss - theirs).abs() < 1e-6,
            "loss before step {}: {loss} vs PyTorch {theirs}",
            step + 1
        );
    }
    let actual = weights::state_dict(&model);
    assert_weights_match(&actual, &with_prefix(&dict, "after."));
    let inner = device.inner();
    let valid = weights::build_model(&config, &actual, &inner).unwrap();
    let x = batch_tensor(&batch, &inner);
    let (means, log_vars) = valid.encoder.posterior(x).unwrap();
    for (what, ours) in [("after_means", &means), ("after_log_vars", &log_vars)] {
        assert_close_abs(what, &HostTensor::from_tensor(ours), &dict[what], 1e-4);
    }
    assert_close_abs(
        "decoded means after 3 steps",
        &HostTensor::from_tensor(&valid.decode(means)),
        &dict["after_decoded_means"],
        1e-4,
    );
}
