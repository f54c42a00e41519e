//! `cae import` and `cae export`: weights between cae and the tutorial's PyTorch classes.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use cae::{io::torch_pt, io::weights};

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
    /// The PyTorch state_dict file to write; load it with `model.load_state_dict(torch.load(path))`.
    #[arg(long)]
    to: PathBuf,
}

pub fn export(args: ExportArgs) -> Result<()> {
    let file = weights::read_weights(&args.model)?;
    super::note_conversion(&args.model, file.converted_from);
    let config = file
        .model_config()
        .with_context(|| format!("weight file {}", args.model.display()))?;
    weights::check_state_dict(&config, &file.tensors)
        .with_context(|| format!("weight file {}", args.model.display()))?;
    torch_pt::save_pt(&args.to, &file.tensors)?;
    say!(
        "exported {} tensors to {}",
        file.tensors.len(),
        args.to.display()
    );
    Ok(())
}
