//! Shared helpers of the integration tests: where the shared fixtures are.
#![allow(dead_code)]

use std::path::PathBuf;

/// `../shared/reference` (or `$CAE_REFERENCE`): the PyTorch fixtures.
pub fn reference_dir() -> PathBuf {
    let dir = std::env::var_os("CAE_REFERENCE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/reference"));
    assert!(dir.join("batch.safetensors").exists(), "PyTorch reference fixtures not found in {}; set CAE_REFERENCE", dir.display());
    dir
}

/// The unpacked CIFAR-10 JPEG folders (`$CAE_CIFAR_JPG`, else `../shared/datasets/cifar10-jpg`).
pub fn cifar_jpg_dir() -> PathBuf {
    let dir = std::env::var_os("CAE_CIFAR_JPG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/datasets/cifar10-jpg"));
    assert!(
        dir.join("test").is_dir(),
        "CIFAR-10 JPEG folders not found in {}: unpack ../shared/datasets/cifar10-jpg.tar.gz there, or set CAE_CIFAR_JPG (.ci/run does this)",
        dir.display()
    );
    dir
}
