use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use clap::Args;

use cae::eval::{EVAL_BATCH, evaluate};

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
    /// Print one JSON object {"mse", "psnr", "n"} instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: EvalArgs) -> Result<()> {
    let device = args.data.device.device()?;
    let (model, config) = cae::weights::load_model(&args.model, &device)?;
    let mut test = cae::data::load(args.data.dataset, &args.data.data_dir(), 0)?.test;
    if let Some(n) = args.val_limit {
        test.truncate(n);
    }
    let shape = (test.channels, test.height, test.width);
    if shape != (config.in_channels, config.height, config.width) {
        anyhow::bail!(
            "{}: the model takes {}x{}x{} images but the dataset has {}x{}x{}",
            args.model.display(),
            config.in_channels,
            config.height,
            config.width,
            shape.0,
            shape.1,
            shape.2
        );
    }
    let quality = evaluate(&model, &Arc::new(test), &device, EVAL_BATCH, |_, _, _| {});
    if args.json {
        println!("{}", serde_json::to_string(&quality)?);
    } else {
        println!(
            "validation MSE {:.6} (normalized [-1,1] pixels), PSNR {:.2} dB (on [0,1] pixels), {} images",
            quality.mse, quality.psnr, quality.n
        );
    }
    Ok(())
}
