//! Running a trained model over many images or codes held on the host, in batches.

use burn::tensor::{Device, Tensor, TensorData};

use crate::eval::EVAL_BATCH;
use crate::model::{Autoencoder, ModelConfig};

/// Normalized images (N, C, H, W) flattened -> latent codes (N, latent) flattened.
///
/// ```
/// use burn::tensor::Device;
/// use cae::{Autoencoder, ModelConfig};
///
/// let config = ModelConfig::default();
/// let device = Device::flex();
/// let model = Autoencoder::seeded(&config, 0, &device)?;
/// let images = vec![0.0f32; 2 * 3 * 32 * 32];
/// let codes = cae::encode(&model, &config, &images, &device);
/// assert_eq!(codes.len(), 2 * config.latent);
/// let back = cae::decode(&model, &config, &codes, &device);
/// assert_eq!(back.len(), images.len());
/// # Ok::<(), anyhow::Error>(())
/// ```
pub fn encode(
    model: &Autoencoder,
    config: &ModelConfig,
    images: &[f32],
    device: &Device,
) -> Vec<f32> {
    over_images(config, images, device, |x| host(model.encode(x)))
}

/// A variational model's posterior of normalized images: means and log-variances, (N, latent)
/// flattened each; `None` for a plain model.
pub fn posterior(
    model: &Autoencoder,
    config: &ModelConfig,
    images: &[f32],
    device: &Device,
) -> Option<(Vec<f32>, Vec<f32>)> {
    model.encoder.log_var.as_ref()?;
    let mut log_vars = Vec::new();
    let means = over_images(config, images, device, |x| {
        let (mean, log_var) = model.encoder.posterior(x).expect("a variational model");
        log_vars.extend(host(log_var));
        host(mean)
    });
    Some((means, log_vars))
}

/// Latent codes (N, latent) flattened -> normalized images (N, C, H, W) flattened.
pub fn decode(
    model: &Autoencoder,
    config: &ModelConfig,
    codes: &[f32],
    device: &Device,
) -> Vec<f32> {
    batched(codes, config.latent, |chunk, n| {
        let z = Tensor::<2>::from_data(TensorData::new(chunk.to_vec(), [n, config.latent]), device);
        host(model.decode(z))
    })
}

/// Normalized images -> their reconstructions, same layout.
pub fn reconstruct(
    model: &Autoencoder,
    config: &ModelConfig,
    images: &[f32],
    device: &Device,
) -> Vec<f32> {
    over_images(config, images, device, |x| host(model.reconstruct(x)))
}

/// Runs `run` on batches of normalized images shaped as the model's input.
fn over_images(
    config: &ModelConfig,
    images: &[f32],
    device: &Device,
    mut run: impl FnMut(Tensor<4>) -> Vec<f32>,
) -> Vec<f32> {
    let image_len = config.image_len();
    batched(images, image_len, |chunk, n| {
        let shape = [n, config.in_channels, config.height, config.width];
        run(Tensor::<4>::from_data(
            TensorData::new(chunk.to_vec(), shape),
            device,
        ))
    })
}

fn batched(
    input: &[f32],
    item_len: usize,
    mut run: impl FnMut(&[f32], usize) -> Vec<f32>,
) -> Vec<f32> {
    let mut out = Vec::new();
    for chunk in input.chunks(item_len * EVAL_BATCH) {
        out.extend(run(chunk, chunk.len() / item_len));
    }
    out
}

fn host<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
    tensor
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("float tensor data")
}

/// Mean squared error between two equally long slices.
pub fn mse(a: &[f32], b: &[f32]) -> f64 {
    let sum: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum();
    sum / a.len().max(1) as f64
}
