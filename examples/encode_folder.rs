//! Encodes every image file of a folder with a trained model and writes the codes as a
//! `(images, latent)` float32 `.npy` array, in file-name order.
//!
//!     cargo run --release --example encode_folder -- MODEL IMAGE_DIR OUT.npy

use std::path::PathBuf;

use anyhow::{Context, Result, ensure};
use burn::tensor::Device;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: encode_folder MODEL IMAGE_DIR OUT.npy";
    let model_path = PathBuf::from(args.first().context(usage)?);
    let image_dir = PathBuf::from(args.get(1).context(usage)?);
    let out = PathBuf::from(args.get(2).context(usage)?);

    let device = Device::flex();
    let (model, config) = cae::load_model(&model_path, &device)?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(&image_dir)
        .with_context(|| format!("cannot list {}", image_dir.display()))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    files.retain(|path| path.is_file());
    files.sort();
    ensure!(!files.is_empty(), "{} holds no files", image_dir.display());

    let mut pixels = Vec::new();
    for file in &files {
        pixels.extend(cae::read_model_input(file, &config, true)?);
    }
    let codes = cae::encode(&model, &config, &pixels, &device);
    cae::write_npy(&out, &[files.len(), config.latent], &codes)?;
    println!(
        "{} codes of size {} in {}",
        files.len(),
        config.latent,
        out.display()
    );
    Ok(())
}
