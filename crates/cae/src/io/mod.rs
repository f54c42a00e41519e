//! File formats: weight files ([`weights`]: safetensors state dicts under PyTorch's names, and
//! [`torch_pt`]: PyTorch's `.pt`), [`npy`] arrays, images ([`imageio`]), and the atomic write
//! every file goes through ([`atomic`]).

pub mod atomic;
pub mod imageio;
pub mod npy;
pub mod torch_pt;
pub mod weights;
