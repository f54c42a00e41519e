//! Model-space images (normalized floats, C, H, W) to and from image files.

use std::io::Cursor;
use std::path::Path;

use anyhow::{Context, Result};
use image::{DynamicImage, GrayImage, ImageFormat, RgbImage};

use crate::data::batcher::{denormalize, normalize_pixel};
use crate::data::folder;
use crate::model::ModelConfig;

/// Reads an image file as the model's input: converted to its channel count and, unless
/// `resize` is false, resized to its size (bilinear, the `image` crate's Triangle filter).
/// Returns normalized floats, C, H, W.
///
/// ```
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("black.png");
/// image::GrayImage::new(64, 48).save(&path).unwrap();
/// let config = cae::model::ModelConfig::default(); // 3x32x32
/// let pixels = cae::io::imageio::read_model_input(&path, &config, true).unwrap();
/// assert_eq!(pixels.len(), 3 * 32 * 32); // gray -> RGB, 64x48 -> 32x32
/// assert!(pixels.iter().all(|&v| v == -1.0)); // black is -1 once normalized
/// ```
pub fn read_model_input(path: &Path, config: &ModelConfig, resize: bool) -> Result<Vec<f32>> {
    let target = (config.width as u32, config.height as u32);
    let (w, h, bytes) = folder::decode_image(path, config.in_channels, resize.then_some(target))?;
    if (w, h) != target {
        anyhow::bail!(
            "{}: the image is {w}x{h} but the model takes {}x{}; drop --no-resize to resize it (bilinear)",
            path.display(),
            target.0,
            target.1
        );
    }
    Ok(bytes.into_iter().map(normalize_pixel).collect())
}

/// A model-space image (C, H, W normalized floats) as an 8-bit image.
pub fn to_image(pixels: &[f32], config: &ModelConfig) -> DynamicImage {
    let (w, h) = (config.width, config.height);
    let plane = w * h;
    let byte = |v: f32| (denormalize(v) * 255.0).round() as u8;
    if config.in_channels == 1 {
        DynamicImage::ImageLuma8(GrayImage::from_fn(w as u32, h as u32, |x, y| {
            image::Luma([byte(pixels[y as usize * w + x as usize])])
        }))
    } else {
        DynamicImage::ImageRgb8(RgbImage::from_fn(w as u32, h as u32, |x, y| {
            let i = y as usize * w + x as usize;
            image::Rgb([
                byte(pixels[i]),
                byte(pixels[plane + i]),
                byte(pixels[2 * plane + i]),
            ])
        }))
    }
}

/// Writes `image` as PNG, atomically.
pub fn save_png(path: &Path, image: &DynamicImage) -> Result<()> {
    let mut bytes = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png)
        .with_context(|| format!("cannot encode {}", path.display()))?;
    crate::io::atomic::write_bytes(path, &bytes)
}
