//! File formats: weight files ([`weights`]: safetensors state dicts under PyTorch's names, and
//! [`torch_pt`]: PyTorch's `.pt`), [`npy`] arrays, images ([`imageio`]), TensorBoard event
//! files ([`tensorboard`]), and the atomic write
//! every file goes through ([`atomic`]).

pub mod atomic;
pub mod imageio;
pub mod npy;
pub mod tensorboard;
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
