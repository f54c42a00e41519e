use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use cae::eval::psnr_from_normalized_mse;
use cae::{eval::inference, io::imageio};

#[derive(Args)]
pub struct ReconstructArgs {
    /// Trained weights (safetensors or PyTorch .pt).
    #[arg(long)]
    model: PathBuf,
    /// Images to reconstruct (PNG, JPEG, BMP; any size).
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// Folder for <name>_recon.png and grid.png.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    resize: super::ResizeArg,
    #[command(flatten)]
    device: super::DeviceArg,
}

pub fn run(args: ReconstructArgs) -> Result<()> {
    let device = args.device.device()?;
    let (model, config) = super::load_model(&args.model, &device)?;
    let mut inputs = Vec::new();
    for path in &args.images {
        inputs.extend(args.resize.read(path, &config)?);
    }
    let outputs = inference::reconstruct(&model, &config, &inputs, &device);
    cae::io::create_output_dir(&args.out)?;
    let size = config.in_channels * config.height * config.width;
    let mut used = HashMap::new();
    let width = args
        .images
        .iter()
        .map(|p| p.display().to_string().len())
        .max()
        .unwrap_or(0)
        .max(5);
    say!("{:<width$} {:>10} {:>10}", "image", "MSE", "PSNR dB");
    for (path, (input, output)) in args
        .images
        .iter()
        .zip(inputs.chunks(size).zip(outputs.chunks(size)))
    {
        let name = super::unique_stem(path, &mut used);
        imageio::save_png(
            &args.out.join(format!("{name}_recon.png")),
            &imageio::to_image(output, &config),
        )?;
        let mse = inference::mse(input, output);
        say!(
            "{:<width$} {:>10.6} {:>10.2}",
            path.display().to_string(),
            mse,
            psnr_from_normalized_mse(mse)
        );
    }
    let originals: Vec<Vec<f32>> = inputs.chunks(size).map(<[f32]>::to_vec).collect();
    let recons: Vec<Vec<f32>> = outputs.chunks(size).map(<[f32]>::to_vec).collect();
    let grid = args.out.join("grid.png");
    cae::viz::grid::save_recon_grid(
        &grid,
        &originals,
        &recons,
        config.in_channels,
        config.height,
        config.width,
    )?;
    say!(
        "wrote {} reconstructions and {}",
        args.images.len(),
        grid.display()
    );
    Ok(())
}
