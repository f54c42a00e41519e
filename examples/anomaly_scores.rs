//! Scores image files for anomalies with a trained model: the reconstruction error (`mse`) and
//! one minus SSIM of every image, highest mean-squared error first.
//!
//!     cargo run --release --example anomaly_scores -- MODEL IMAGE...

use std::path::PathBuf;

use anyhow::{Context, Result, ensure};
use burn::tensor::Device;

fn main() -> Result<()> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let (model_path, images) = args
        .split_first()
        .context("usage: anomaly_scores MODEL IMAGE...")?;
    ensure!(!images.is_empty(), "usage: anomaly_scores MODEL IMAGE...");

    let device = Device::flex();
    let (model, config) = cae::load_model(model_path, &device)?;
    let mut pixels = Vec::new();
    for image in images {
        pixels.extend(cae::read_model_input(image, &config, true)?);
    }
    let scores = cae::score_images(&model, &config, &pixels, None, &device)?;
    let mut rows: Vec<(f64, f64, &PathBuf)> = scores
        .mse
        .iter()
        .zip(&scores.ssim)
        .zip(images)
        .map(|((&mse, &ssim), image)| (mse, ssim, image))
        .collect();
    rows.sort_by(|a, b| b.0.total_cmp(&a.0));
    println!("mse,one_minus_ssim,image");
    for (mse, ssim, image) in rows {
        println!("{mse:.6},{ssim:.6},{}", image.display());
    }
    Ok(())
}
