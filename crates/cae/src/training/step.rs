//! One training step (forward, MSE or negative ELBO, backward, Adam) and the order an epoch visits the images.

use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use rand::SeedableRng;
use rand::rngs::Xoshiro256PlusPlus;
use rand::seq::SliceRandom;

use crate::model::Autoencoder;
use crate::optim::Adam;
use crate::settings::TrainSettings;

/// One training step: forward, MSE, backward, Adam. Returns the updated model and the loss.
pub(crate) fn train_step(
    model: Autoencoder,
    adam: &mut Adam,
    batch: Tensor<4>,
) -> (Autoencoder, f64) {
    train_step_pair(model, adam, batch.clone(), batch)
}

/// [`train_step`] from `input` towards `target`: a denoiser gets noisy inputs and clean targets.
pub(crate) fn train_step_pair(
    model: Autoencoder,
    adam: &mut Adam,
    input: Tensor<4>,
    target: Tensor<4>,
) -> (Autoencoder, f64) {
    let output = model.reconstruct(input);
    let loss = (output - target).square().mean();
    minimise(model, adam, loss)
}

/// One training step of a variational model: forward with reparameterisation noise `eps`
/// (N, latent), the negative ELBO with KL weight `kl_weight` ([`crate::variational`]),
/// backward, Adam. Returns the updated model and the loss.
pub(crate) fn train_step_variational(
    model: Autoencoder,
    adam: &mut Adam,
    input: Tensor<4>,
    target: Tensor<4>,
    eps: Tensor<2>,
    kl_weight: f64,
) -> (Autoencoder, f64) {
    let loss = crate::variational::negative_elbo(&model, input, target, eps, kl_weight).loss;
    minimise(model, adam, loss)
}

/// Backward from `loss`, then one Adam step; the updated model and the loss's value.
fn minimise(model: Autoencoder, adam: &mut Adam, loss: Tensor<1>) -> (Autoencoder, f64) {
    let loss_value = f64::from(loss.clone().into_scalar::<f32>());
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    (adam.step(model, grads), loss_value)
}

/// Training order of an epoch: the dataset order, or with `--shuffle` a permutation that depends
/// only on the seed and the epoch (so a resumed run sees the same order).
pub(crate) fn epoch_order(n: usize, settings: &TrainSettings, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if settings.data.shuffle {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(
            settings.run.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        order.shuffle(&mut rng);
    }
    order
}
