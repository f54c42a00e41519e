//! Shared helpers of the integration tests: where the shared fixtures are.
#![allow(dead_code)]

use std::path::PathBuf;

/// `../shared/reference` (or `$CAE_REFERENCE`): the PyTorch fixtures.
pub fn reference_dir() -> PathBuf {
    let dir = std::env::var_os("CAE_REFERENCE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/reference"));
    assert!(
        dir.join("batch.safetensors").exists(),
        "PyTorch reference fixtures not found in {}; set CAE_REFERENCE",
        dir.display()
    );
    dir
}

/// The CIFAR-10 JPEG folders (train/<class>/*.jpg, test/<class>/*.jpg): `$CAE_CIFAR_JPG`, else
/// `../shared/datasets/cifar10-jpg.tar.gz` unpacked once into Cargo's test scratch folder.
pub fn cifar_jpg_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CAE_CIFAR_JPG") {
        let dir = PathBuf::from(dir);
        assert!(
            dir.join("test").is_dir(),
            "CAE_CIFAR_JPG={} has no test/ folder",
            dir.display()
        );
        return dir;
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cifar10-jpg");
    static UNPACK: std::sync::Once = std::sync::Once::new();
    UNPACK.call_once(|| {
        if dir.join("test").is_dir() {
            return;
        }
        let tarball =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/datasets/cifar10-jpg.tar.gz");
        let file = std::fs::File::open(&tarball).unwrap_or_else(|e| {
            panic!(
                "CIFAR-10 JPEGs needed: {} ({e}); or set CAE_CIFAR_JPG to an unpacked copy",
                tarball.display()
            )
        });
        let partial = dir.with_extension("partial");
        let _ = std::fs::remove_dir_all(&partial);
        tar::Archive::new(flate2::read::GzDecoder::new(file))
            .unpack(&partial)
            .expect("unpack the CIFAR-10 JPEG tarball");
        std::fs::rename(&partial, &dir).expect("move the unpacked images into place");
    });
    dir
}

/// Runs the `cae` binary of this build.
pub fn cae_output(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_cae"))
        .args(args)
        .output()
        .expect("cae runs")
}

/// Runs `cae`, which must succeed; returns its stdout.
pub fn cae(args: &[&str]) -> String {
    let output = cae_output(args);
    assert!(
        output.status.success(),
        "cae {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Runs `cae`, which must fail; returns its stderr.
pub fn cae_error(args: &[&str]) -> String {
    let output = cae_output(args);
    assert!(!output.status.success(), "cae {args:?} should fail");
    String::from_utf8(output.stderr).unwrap()
}

/// A path as a command-line argument.
pub fn s(path: &std::path::Path) -> &str {
    path.to_str().unwrap()
}
