//! The variational mode (`cae train --variational`): the seed architecture with the encoder's
//! last Linear + ReLU replaced by a mean and a log-variance head, the reparameterisation trick,
//! and the negative ELBO as the loss.
//!
//! The likelihood is a Gaussian decoder with one learned variance shared by every pixel (the
//! sigma-VAE of Rybkin et al., 2021): p(x | z) = N(x; decoder(z), sigma^2 I), with `log_sigma`
//! a parameter of the model. With D values per image, a batch of N images costs
//!
//! ```text
//! loss = 1/(N D) sum_n [ ||x_n - x_hat_n||^2 / (2 sigma^2) + D log sigma + D/2 log(2 pi) + beta KL_n ]
//! KL_n = -1/2 sum_j (1 + log_var_nj - mean_nj^2 - exp(log_var_nj))
//! ```
//!
//! (the negative ELBO in nats per pixel value when beta is 1), with z = mean + exp(log_var / 2)
//! eps for one draw eps ~ N(0, I) per image. Training and evaluation use the same likelihood;
//! evaluation reports it in bits per dimension of the 8-bit images ([`ElboQuality`]).
//! `tests/fixtures/vae/make_vae_fixture.py` is the same model and loss in PyTorch.

use std::sync::Arc;

use burn::tensor::{Device, Tensor, TensorData};
use serde::Serialize;

use crate::data::ImageSet;
use crate::data::augment::noise_rng;
use crate::data::batcher::Prefetcher;
use crate::eval::{Quality, SquaredErrors};
use crate::model::Autoencoder;
use crate::sampling::standard_normal;

/// The likelihood in words, as `config.json` records it.
pub(crate) const LIKELIHOOD: &str =
    "Gaussian decoder N(x_hat, sigma^2 I) with one learned sigma shared by all pixels (sigma-VAE)";

pub(crate) fn default_beta() -> f64 {
    1.0
}

pub(crate) fn is_default_beta(beta: &f64) -> bool {
    *beta == default_beta()
}

pub(crate) fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Keeps the reparameterisation noise apart from `--noise`'s streams of the same seed.
const REPARAMETERISATION_SALT: u64 = 0x7265_7061_7261_6d73;
/// The seed of the noise evaluation draws: the reported ELBO of a model is one fixed number.
const EVALUATION_SEED: u64 = 0;

/// The reparameterisation noise of batch `batch` (0-based) of `epoch`: `n` x `latent` draws of
/// N(0, 1) that depend only on the run's seed and the batch's place, so that a resumed run
/// draws what the uninterrupted one would have.
pub(crate) fn reparameterisation_noise(
    seed: u64,
    epoch: usize,
    batch: usize,
    n: usize,
    latent: usize,
) -> Vec<f32> {
    let mut rng = noise_rng(seed ^ REPARAMETERISATION_SALT, epoch as u64, batch as u64);
    (0..n * latent)
        .map(|_| standard_normal(&mut rng) as f32)
        .collect()
}

/// The KL weight of training step `step` (1-based, counted over the whole run): beta, or during
/// the first `warmup_epochs` epochs beta times the fraction of the warm-up done.
pub(crate) fn kl_weight(
    beta: f64,
    warmup_epochs: usize,
    steps_per_epoch: usize,
    step: usize,
) -> f64 {
    let warmup_steps = warmup_epochs * steps_per_epoch;
    if warmup_steps == 0 {
        beta
    } else {
        beta * (step as f64 / warmup_steps as f64).min(1.0)
    }
}

/// The terms of the negative ELBO of a batch, each a one-element tensor.
pub(crate) struct NegativeElbo {
    /// What training minimises: (reconstruction + beta KL) / D.
    pub loss: Tensor<1>,
    /// Mean over the batch of -log p(x | z) in nats (the Gaussian density).
    pub reconstruction: Tensor<1>,
    /// Mean over the batch of KL(q(z | x) || N(0, I)) in nats.
    pub kl: Tensor<1>,
}

/// The negative ELBO of reconstructing `target` from `input` (the same images unless a denoiser
/// is trained) with reparameterisation noise `eps` (N, latent) and KL weight `beta`.
///
/// Panics if `model` is not variational.
pub(crate) fn negative_elbo(
    model: &Autoencoder,
    input: Tensor<4>,
    target: Tensor<4>,
    eps: Tensor<2>,
    beta: f64,
) -> NegativeElbo {
    let (mean, log_var) = posterior(model, input);
    terms(model, mean, log_var, target, eps, beta)
}

fn posterior(model: &Autoencoder, input: Tensor<4>) -> (Tensor<2>, Tensor<2>) {
    model
        .encoder
        .posterior(input)
        .expect("the negative ELBO is the loss of a variational model")
}

/// [`negative_elbo`] from the posterior of `target`'s input.
fn terms(
    model: &Autoencoder,
    mean: Tensor<2>,
    log_var: Tensor<2>,
    target: Tensor<4>,
    eps: Tensor<2>,
    beta: f64,
) -> NegativeElbo {
    let [n, c, h, w] = target.dims();
    let (images, values) = (n as f64, (c * h * w) as f64);
    let log_sigma = model
        .log_sigma
        .as_ref()
        .expect("a variational model has a log sigma")
        .val();
    let z = mean.clone() + log_var.clone().mul_scalar(0.5).exp() * eps;
    let x_hat = model.decode(z);
    // The same operations in the same order as the PyTorch fixture script.
    let sse = (x_hat - target).square().sum().div_scalar(images);
    let reconstruction = sse.mul_scalar(0.5) * log_sigma.clone().mul_scalar(-2.0).exp()
        + log_sigma.mul_scalar(values)
        + values * 0.5 * std::f64::consts::TAU.ln();
    let kl = (log_var.clone().add_scalar(1.0) - mean.square() - log_var.exp())
        .sum()
        .mul_scalar(-0.5)
        .div_scalar(images);
    let loss = (reconstruction.clone() + kl.clone().mul_scalar(beta)).div_scalar(values);
    NegativeElbo {
        loss,
        reconstruction,
        kl,
    }
}

/// How well a variational model explains a set of images, by its ELBO.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct ElboQuality {
    /// Mean KL(q(z | x) || N(0, I)) per image, in nats.
    pub kl: f64,
    /// Mean -log p(x | z) per image, in nats, for one posterior draw per image.
    pub reconstruction_nats: f64,
    /// The negative ELBO (beta 1) in bits per dimension of the 8-bit images: the Gaussian
    /// density times the width 2/255 of a pixel level in the [-1, 1] space, i.e.
    /// (reconstruction + KL + D ln 127.5) / (D ln 2). An upper bound of the discrete negative
    /// log-likelihood up to that usual continuous approximation.
    pub negative_elbo_bits_per_dim: f64,
    /// Latent dimensions whose posterior mean varies over the images with variance above 0.01
    /// (Burda et al., 2016).
    pub active_dimensions: usize,
    /// The decoder's learned standard deviation, in the [-1, 1] pixel space.
    pub sigma: f64,
}

/// A dimension counts as active when its posterior mean's variance over the images is above this.
pub(crate) const ACTIVE_VARIANCE: f64 = 0.01;

/// The reconstruction [`Quality`] (of the posterior mean, as [`crate::eval::evaluate`] gives
/// it) and the [`ElboQuality`] of `model` on `set`, in one pass: the encoder runs once per
/// batch for both. The ELBO takes one posterior draw per image from a fixed seed (so the figure
/// is reproducible). Panics if `model` is not variational.
pub fn evaluate_variational(
    model: &Autoencoder,
    set: &Arc<ImageSet>,
    device: &Device,
    batch_size: usize,
) -> (Quality, ElboQuality) {
    let order: Vec<usize> = (0..set.len()).collect();
    let shape = [set.channels, set.height, set.width];
    let values = shape.iter().product::<usize>() as f64;
    let latent = model.encoder.linear.bias.val().dims()[0];
    let (mut reconstruction, mut kl) = (0.0f64, 0.0f64);
    let mut mean_sum = vec![0.0f64; latent];
    let mut mean_square_sum = vec![0.0f64; latent];
    let mut errors = SquaredErrors::default();
    for (i, batch) in Prefetcher::new(set.clone(), order, batch_size, 2).enumerate() {
        let n = batch.len;
        let x = Tensor::<4>::from_data(
            TensorData::new(batch.data, [n, shape[0], shape[1], shape[2]]),
            device,
        );
        let eps = reparameterisation_noise(EVALUATION_SEED, 0, i, n, latent);
        let eps = Tensor::<2>::from_data(TensorData::new(eps, [n, latent]), device);
        let (mean, log_var) = posterior(model, x.clone());
        errors.add(model.decode(mean.clone()), x.clone());
        let elbo = terms(model, mean.clone(), log_var, x, eps, 1.0);
        reconstruction += scalar(elbo.reconstruction) * n as f64;
        kl += scalar(elbo.kl) * n as f64;
        let means = mean
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .expect("float codes");
        for code in means.chunks(latent) {
            for (j, &m) in code.iter().enumerate() {
                mean_sum[j] += f64::from(m);
                mean_square_sum[j] += f64::from(m) * f64::from(m);
            }
        }
    }
    let n = set.len().max(1) as f64;
    let active_dimensions = mean_sum
        .iter()
        .zip(&mean_square_sum)
        .filter(|&(s, sq)| sq / n - (s / n).powi(2) > ACTIVE_VARIANCE)
        .count();
    let (reconstruction, kl) = (reconstruction / n, kl / n);
    let bin_nats = values * 127.5f64.ln();
    let log_sigma = model.log_sigma.as_ref().expect("a variational model").val();
    let elbo = ElboQuality {
        kl,
        reconstruction_nats: reconstruction,
        negative_elbo_bits_per_dim: (reconstruction + kl + bin_nats)
            / (values * std::f64::consts::LN_2),
        active_dimensions,
        sigma: scalar(log_sigma).exp(),
    };
    (errors.quality(set.len()), elbo)
}

fn scalar(t: Tensor<1>) -> f64 {
    f64::from(t.into_scalar::<f32>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_depends_on_the_batch_place_only() {
        let a = reparameterisation_noise(3, 2, 5, 4, 8);
        assert_eq!(a, reparameterisation_noise(3, 2, 5, 4, 8));
        assert_ne!(a, reparameterisation_noise(3, 2, 6, 4, 8));
        assert_ne!(a, reparameterisation_noise(3, 3, 5, 4, 8));
        assert_ne!(a, reparameterisation_noise(4, 2, 5, 4, 8));
        // Not the stream `--noise` draws its corruption from with the same seed.
        let mut noise = noise_rng(3, 2, 5);
        assert_ne!(a[0], standard_normal(&mut noise) as f32);
    }

    /// The one-pass evaluation reports the reconstruction quality the plain pass does, bit for
    /// bit (the posterior mean decoded), over batches that do not divide the set.
    #[test]
    fn one_pass_evaluation_reconstructs_as_the_plain_pass() {
        use crate::model::ModelConfig;
        let config = ModelConfig {
            latent: 8,
            channels: 4,
            in_channels: 3,
            height: 16,
            width: 16,
            variational: true,
        };
        let device = Device::flex();
        let model = Autoencoder::seeded(&config, 5, &device).unwrap();
        let images = 7;
        let set = Arc::new(ImageSet {
            channels: 3,
            height: 16,
            width: 16,
            pixels: (0..images * 3 * 16 * 16)
                .map(|i| (i * 37 % 256) as u8)
                .collect(),
            labels: vec![0; images],
            class_names: vec!["all".into()],
            sources: (0..images).map(|i| format!("image {i}")).collect(),
        });
        let plain = crate::eval::evaluate(&model, &set, &device, 3, |_, _, _| {});
        let (quality, elbo) = evaluate_variational(&model, &set, &device, 3);
        assert_eq!(quality, plain);
        assert!(quality.mse > 0.0 && quality.n == images);
        assert!(elbo.kl > 0.0 && elbo.sigma == 1.0, "{elbo:?}");
    }

    #[test]
    fn the_kl_weight_rises_linearly_over_the_warm_up() {
        let weights: Vec<f64> = (1..=5).map(|s| kl_weight(4.0, 1, 4, s)).collect();
        assert_eq!(weights, vec![1.0, 2.0, 3.0, 4.0, 4.0]);
    }

    #[test]
    fn kl_weight_rises_over_the_warm_up() {
        assert_eq!(kl_weight(1.0, 0, 100, 1), 1.0);
        assert_eq!(kl_weight(2.0, 2, 100, 50), 0.5);
        assert_eq!(kl_weight(2.0, 2, 100, 200), 2.0);
        assert_eq!(kl_weight(2.0, 2, 100, 1000), 2.0);
    }
}
