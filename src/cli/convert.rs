//! `cae import` and `cae export`: weights between cae and the tutorial's PyTorch classes.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;

use cae::{io::onnx, io::torch_pt, io::weights};

use super::choice::choice;

#[derive(Args)]
pub struct ImportArgs {
    /// A PyTorch state_dict (.pt) or safetensors file of the tutorial's Autoencoder.
    #[arg(long)]
    from: PathBuf,
    /// The cae model file to write (safetensors with the model configuration in its metadata).
    #[arg(long)]
    out: PathBuf,
}

pub fn import(args: ImportArgs) -> Result<()> {
    let file = weights::read_weights(&args.from)?;
    super::note_conversion(&args.from, file.converted_from);
    let config = file
        .model_config()
        .with_context(|| format!("weight file {}", args.from.display()))?;
    weights::check_state_dict(&config, &file.tensors)
        .with_context(|| format!("weight file {}", args.from.display()))?;
    weights::save_safetensors(&args.out, &file.tensors, Some(&config), &[])?;
    say!(
        "imported {} tensors ({} parameters; latent {}, channels {}, {}x{}x{} images) into {}",
        file.tensors.len(),
        config.num_params(),
        config.latent,
        config.channels,
        config.in_channels,
        config.height,
        config.width,
        args.out.display()
    );
    Ok(())
}

#[derive(Args)]
pub struct ExportArgs {
    /// cae weights (or any weight file cae reads).
    #[arg(long)]
    model: PathBuf,
    /// The file to write: a `.onnx` file is an ONNX model (opset 17, weights embedded, dynamic
    /// batch); any other name a PyTorch state_dict, for `model.load_state_dict(torch.load(path))`.
    #[arg(long)]
    to: PathBuf,
    /// Which part of the model an ONNX export holds [default: full].
    #[arg(long, value_parser = choice::<onnx::Part>())]
    part: Option<onnx::Part>,
}

pub fn export(args: ExportArgs) -> Result<()> {
    let is_onnx = args
        .to
        .extension()
        .is_some_and(|ext| ext.eq_ignore_ascii_case("onnx"));
    if let (Some(part), false) = (args.part, is_onnx) {
        bail!(
            "--part {} applies to ONNX exports only: {} would be a PyTorch state_dict of the \
             whole model; name the target <name>.onnx for ONNX",
            part.name(),
            args.to.display()
        );
    }
    let file = weights::read_weights(&args.model)?;
    super::note_conversion(&args.model, file.converted_from);
    let config = file
        .model_config()
        .with_context(|| format!("weight file {}", args.model.display()))?;
    weights::check_state_dict(&config, &file.tensors)
        .with_context(|| format!("weight file {}", args.model.display()))?;
    if is_onnx {
        let part = args.part.unwrap_or(onnx::Part::Full);
        onnx::save_onnx(&args.to, &config, &file.tensors, part)?;
        say!(
            "exported the {} model ({} -> {}; ONNX opset {}, batch dimension `{}`) to {}",
            part.name(),
            part.input_name(),
            part.output_name(),
            onnx::OPSET,
            onnx::BATCH_DIM,
            args.to.display()
        );
        return Ok(());
    }
    torch_pt::save_pt(&args.to, &file.tensors)?;
    say!(
        "exported {} tensors to {}",
        file.tensors.len(),
        args.to.display()
    );
    Ok(())
}
