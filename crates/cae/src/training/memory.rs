//! Whether a run fits in memory, checked before anything is allocated: a model far too large
//! (`--latent 100000000`) otherwise grew until the kernel killed it, with no message.

use anyhow::{Result, bail};

use crate::model::ModelConfig;

/// The bytes a training run on `config` with batches of `batch_size` needs, roughly: four
/// copies of the parameters (weights, gradients, Adam's two moments) and, per image of a
/// batch, three of every layer's output (the values autodiff keeps, their gradients, the
/// kernels' scratch). On the seed model at batch 64 that is about 130 MB, within a factor of
/// two of what `cae bench` measures (184-208 MiB peak, allocator and code included).
pub(crate) fn training_bytes(config: &ModelConfig, batch_size: usize) -> f64 {
    let params = parameters(config);
    let (h, w) = (config.height as f64, config.width as f64);
    let mut per_image = (config.in_channels as f64) * h * w;
    let (mut fh, mut fw) = (h, w);
    for (_, out, stride) in config.encoder_convs() {
        fh = (fh / stride as f64).ceil();
        fw = (fw / stride as f64).ceil();
        per_image += out as f64 * fh * fw;
    }
    per_image += 2.0 * config.latent as f64
        + 4.0 * config.channels as f64 * (config.height / 4) as f64 * (config.width / 4) as f64;
    for (_, out, stride) in config.decoder_convs() {
        fh *= stride as f64;
        fw *= stride as f64;
        per_image += out as f64 * fh * fw;
    }
    4.0 * (4.0 * params + 3.0 * per_image * batch_size as f64)
}

/// [`ModelConfig::num_params`] in floating point, which cannot overflow for absurd flags.
fn parameters(config: &ModelConfig) -> f64 {
    let conv: f64 = config
        .encoder_convs()
        .iter()
        .chain(config.decoder_convs().iter())
        .map(|&(i, o, _)| i as f64 * o as f64 * 9.0 + o as f64)
        .sum();
    let flat =
        4.0 * config.channels as f64 * (config.height / 4) as f64 * (config.width / 4) as f64;
    conv + 2.0 * flat * config.latent as f64 + config.latent as f64 + flat
}

/// Fails, with the estimate and what is available, when the run cannot fit in this machine's
/// memory (the smaller of `MemAvailable` and the cgroup's limit); passes where that cannot be
/// read.
pub(crate) fn check_fits(config: &ModelConfig, batch_size: usize) -> Result<()> {
    let Some(available) = crate::device::host_memory_available() else {
        return Ok(());
    };
    let needed = training_bytes(config, batch_size);
    if needed > available as f64 {
        bail!(
            "this run needs about {:.1} GiB of memory ({:.3e} parameters with their gradients \
             and Adam moments, and the layer outputs of a batch of {batch_size}), more than the \
             {:.1} GiB of memory available; lower --latent, --channels, --batch-size or the \
             image size",
            crate::device::gib(needed),
            parameters(config),
            crate::device::gib(available as f64)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_model_needs_about_130_mb_and_a_huge_latent_terabytes() {
        let seed = ModelConfig::default();
        let bytes = training_bytes(&seed, 64);
        assert!((1.0e8..2.0e8).contains(&bytes), "{bytes}");
        let huge = ModelConfig {
            latent: 100_000_000,
            ..seed
        };
        assert!(training_bytes(&huge, 64) > 1e12);
    }
}
