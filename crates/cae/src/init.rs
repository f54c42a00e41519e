//! The seed's initialisation, drawn on the host from a fixed-algorithm generator so that the same
//! seed gives the same model on every backend and machine.

use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

use anyhow::Result;
use burn::tensor::Device;

use crate::io::weights::{HostTensor, StateDict, expected_shapes};
use crate::model::{Autoencoder, ModelConfig};

impl Autoencoder {
    /// The tutorial's model of this shape, initialised from `seed` as its PyTorch code would
    /// be (Xavier-uniform convolutions and linear layers, bias 0.01, PyTorch's default for the
    /// transposed convolutions).
    pub fn seeded(config: &ModelConfig, seed: u64, device: &Device) -> Result<Self> {
        crate::io::weights::build_model(config, &seed_state_dict(config, seed), device)
    }
}

/// Bias of the Conv2d and Linear layers in the tutorial's `seed_init`.
const SEED_BIAS: f32 = 0.01;

/// Initial weights as the tutorial sets them: Conv2d and Linear weights Xavier-uniform with bias
/// 0.01; ConvTranspose2d at PyTorch's default (kaiming-uniform with a = sqrt(5) for the weight,
/// which is U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and the same bound for the bias). A variational
/// model's log-variance head is a Linear layer like the others; its log sigma starts at 0.
pub fn seed_state_dict(config: &ModelConfig, seed: u64) -> StateDict {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut dict = StateDict::new();
    let shapes = expected_shapes(config);
    for (name, shape) in &shapes {
        if !name.ends_with(".weight") {
            continue;
        }
        let bias_name = name.replace(".weight", ".bias");
        let bias_len = shapes
            .iter()
            .find(|(n, _)| *n == bias_name)
            .map(|(_, s)| s[0])
            .expect("every layer has a bias");
        let receptive: usize = shape[2..].iter().product();
        let (weight, bias) = if name.starts_with("decoder.conv") {
            // PyTorch's fan_in for a transposed convolution is weight.size(1) * kh * kw.
            let bound = 1.0 / ((shape[1] * receptive) as f32).sqrt();
            (
                uniform(&mut rng, shape, bound),
                uniform(&mut rng, &[bias_len], bound),
            )
        } else {
            let (fan_in, fan_out) = (shape[1] * receptive, shape[0] * receptive);
            let bound = (6.0 / (fan_in + fan_out) as f32).sqrt();
            (
                uniform(&mut rng, shape, bound),
                HostTensor::new(vec![bias_len], vec![SEED_BIAS; bias_len]),
            )
        };
        dict.insert(name.clone(), weight);
        dict.insert(bias_name, bias);
    }
    if config.variational {
        // sigma = 1 to start with, as `torch.zeros(1)` in the PyTorch fixture script.
        dict.insert(
            crate::io::weights::LOG_SIGMA.into(),
            HostTensor::new(vec![1], vec![0.0]),
        );
    }
    dict
}

fn uniform(rng: &mut Xoshiro256PlusPlus, shape: &[usize], bound: f32) -> HostTensor {
    let n = shape.iter().product();
    let data = (0..n).map(|_| rng.random_range(-bound..bound)).collect();
    HostTensor::new(shape.to_vec(), data)
}
