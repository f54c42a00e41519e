use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;

use cae::eval::{EVAL_BATCH, evaluate};
use cae::variational::evaluate_variational;

use super::DataArgs;

#[derive(Args)]
pub struct EvalArgs {
    /// Weights to evaluate (safetensors or PyTorch .pt).
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    data: DataArgs,
    /// Use only the first N validation images.
    #[arg(long)]
    val_limit: Option<usize>,
    /// Leave out image files that cannot be decoded (image folders), listing them, instead of
    /// stopping at the first.
    #[arg(long)]
    skip_bad: bool,
    /// Print one JSON object {"mse", "psnr", "n"} instead of text; a variational model adds
    /// "kl", "reconstruction_nats", "negative_elbo_bits_per_dim", "active_dimensions", "sigma".
    #[arg(long)]
    json: bool,
}

pub fn run(args: EvalArgs) -> Result<()> {
    let device = args.data.device.device()?;
    let (model, config) = super::load_model(&args.model, &device)?;
    // Image folders are read at the model's input size.
    let image_size = (args.data.dataset == cae::data::DatasetKind::Folder)
        .then_some((config.width as u32, config.height as u32));
    let options = cae::data::LoadOptions {
        skip_bad: args.skip_bad,
        image_size,
    };
    let loaded =
        cae::data::load_with_options(args.data.dataset, &args.data.data_dir(), 0, &options)?;
    if !loaded.skipped.is_empty() {
        eprintln!("{}", cae::data::skipped_report(&loaded.skipped));
    }
    let mut test = loaded.splits.test;
    if let Some(n) = args.val_limit {
        test.truncate(n);
    }
    if test.is_empty() {
        anyhow::bail!("the dataset has no validation images to evaluate on");
    }
    test.check_fits(&config)
        .with_context(|| args.model.display().to_string())?;
    let test = Arc::new(test);
    let (quality, elbo) = if model.is_variational() {
        let (quality, elbo) = evaluate_variational(&model, &test, &device, EVAL_BATCH);
        (quality, Some(elbo))
    } else {
        let quality = evaluate(&model, &test, &device, EVAL_BATCH, |_, _, _| {});
        (quality, None)
    };
    if args.json {
        let mut json = serde_json::to_value(quality)?;
        if let (Some(elbo), serde_json::Value::Object(map)) = (elbo, &mut json)
            && let serde_json::Value::Object(extra) = serde_json::to_value(elbo)?
        {
            map.extend(extra);
        }
        say!("{json}");
    } else {
        say!(
            "validation MSE {:.6} (normalized [-1,1] pixels), PSNR {:.2} dB (on [0,1] pixels), {} images",
            quality.mse,
            quality.psnr,
            quality.n
        );
        if let Some(elbo) = elbo {
            say!(
                "negative ELBO {:.4} bits/dim (8-bit pixels; KL {:.2} nats, reconstruction {:.2} \
                 nats per image, one posterior draw each), {} of {} latent dimensions active, \
                 decoder sigma {:.4}",
                elbo.negative_elbo_bits_per_dim,
                elbo.kl,
                elbo.reconstruction_nats,
                elbo.active_dimensions,
                config.latent,
                elbo.sigma
            );
        }
    }
    Ok(())
}
