//! The dataset readers: CIFAR-10 binaries, image folders, IDX files and the download.

mod cifar;
pub(super) mod download;
mod folder;
mod idx;
