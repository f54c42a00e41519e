//! File formats: weight files ([`weights`]: safetensors state dicts under PyTorch's names, and
//! [`torch_pt`]: PyTorch's `.pt`), ONNX graphs ([`onnx`]), [`npy`] arrays, images
//! ([`imageio`]), TensorBoard event files (`tensorboard`), and the atomic write
//! every file goes through ([`atomic`]).

pub mod atomic;
pub mod imageio;
pub mod npy;
pub mod onnx;
pub(crate) mod tensorboard;
pub mod torch_pt;
pub mod weights;

use std::path::Path;

use anyhow::{Context, Result, bail};

/// Creates the output folder `dir` and its parents; a file in its place is refused, naming it
/// (`create_dir_all` would only say "File exists").
pub fn create_output_dir(dir: &Path) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        bail!("{} exists and is not a folder", dir.display());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))
}

/// The floating-point formats a weight file or `.npy` array may store; all are read as float32,
/// as people save models after `.half()`, `.bfloat16()` or `.double()` and NumPy saves float64.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Precision {
    F32,
    F16,
    BF16,
    F64,
}

impl Precision {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Precision::F32 => "float32",
            Precision::F16 => "float16",
            Precision::BF16 => "bfloat16",
            Precision::F64 => "float64",
        }
    }

    /// Bytes per value.
    pub(crate) fn width(self) -> usize {
        match self {
            Precision::F32 => 4,
            Precision::F16 | Precision::BF16 => 2,
            Precision::F64 => 8,
        }
    }

    /// Little-endian `bytes` as float32 values. float16 and bfloat16 convert exactly; a finite
    /// float64 beyond float32's range is refused with its index and value, for the caller to
    /// name.
    pub(crate) fn to_f32(self, bytes: &[u8]) -> Result<Vec<f32>, (usize, f64)> {
        Ok(match self {
            Precision::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Precision::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Precision::BF16 => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Precision::F64 => {
                let mut values = Vec::with_capacity(bytes.len() / 8);
                for (i, b) in bytes.chunks_exact(8).enumerate() {
                    let value = f64::from_le_bytes(b.try_into().expect("8 bytes"));
                    if value.is_finite() && value.abs() > f64::from(f32::MAX) {
                        return Err((i, value));
                    }
                    values.push(value as f32);
                }
                values
            }
        })
    }
}
