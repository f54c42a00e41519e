//! Datasets: readers for the on-disk formats, the download of CIFAR-10, and the batcher that
//! turns 8-bit images into normalized tensors ahead of the training loop, and the input
//! corruptions of denoising training ([`augment`]).

use crate::ModelConfig;
use anyhow::Context as _;
use serde::{Deserialize, Serialize};

pub mod augment;
pub mod batcher;
pub(crate) mod cifar;
pub mod download;
pub(crate) mod folder;
pub use folder::Skipped;
pub(crate) mod idx;

/// Where the images come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetKind {
    /// CIFAR-10 in its official binary layout (downloaded when missing).
    Cifar10,
    /// `ROOT/train/<class>/*` and `ROOT/test/<class>/*` image files.
    Folder,
    /// MNIST digits in IDX format (`train-images-idx3-ubyte[.gz]`, ...).
    Mnist,
    /// Fashion-MNIST in IDX format; Debian's `dataset-fashion-mnist` copy is found by default.
    FashionMnist,
}

impl DatasetKind {
    /// Every kind, in the order `--dataset` lists them.
    pub const ALL: [DatasetKind; 4] = [
        DatasetKind::Cifar10,
        DatasetKind::Folder,
        DatasetKind::Mnist,
        DatasetKind::FashionMnist,
    ];

    /// The name in settings files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::Cifar10 => "cifar10",
            DatasetKind::Folder => "folder",
            DatasetKind::Mnist => "mnist",
            DatasetKind::FashionMnist => "fashion-mnist",
        }
    }
}

/// The data settings of a training run: which images, how many, in which order, corrupted how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataSettings {
    /// Which dataset (`--dataset`).
    pub dataset: DatasetKind,
    /// The folder it is read from (`--data-dir`; default [`default_data_dir`]).
    pub data_dir: std::path::PathBuf,
    /// Only the first N training images.
    pub train_limit: Option<usize>,
    /// Only the first N validation images.
    pub val_limit: Option<usize>,
    /// A new order of the training images every epoch (from the seed and the epoch).
    pub shuffle: bool,
    /// Corrupt the training inputs this way (the loss still targets the clean images).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise: Option<augment::NoiseSpec>,
}

/// A set of equally sized 8-bit images, stored planar (C, H, W) one after another.
#[derive(Debug, Clone, Default)]
pub struct ImageSet {
    /// Channels of every image: 1 (gray) or 3 (RGB).
    pub channels: usize,
    /// Height of every image, in pixels.
    pub height: usize,
    /// Width of every image, in pixels.
    pub width: usize,
    /// `len() * channels * height * width` bytes, image after image, each in C, H, W order.
    pub pixels: Vec<u8>,
    /// One label per image, an index into `class_names`.
    pub labels: Vec<u16>,
    /// The name of every class, indexed by label.
    pub class_names: Vec<String>,
    /// Where each image came from (a file path, or `test_batch.bin#17`), for error messages.
    pub sources: Vec<String>,
}

impl ImageSet {
    /// Values of one image (C x H x W).
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// Fails unless the images have the shape the model of `config` takes.
    pub fn check_fits(&self, config: &ModelConfig) -> anyhow::Result<()> {
        let (c, h, w) = (self.channels, self.height, self.width);
        let ModelConfig {
            in_channels: mc,
            height: mh,
            width: mw,
            ..
        } = *config;
        anyhow::ensure!(
            (c, h, w) == (mc, mh, mw),
            "the model takes {mc}x{mh}x{mw} images, the dataset has {c}x{h}x{w}"
        );
        Ok(())
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the set holds no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The `index`-th image, C, H, W planar.
    pub(crate) fn image(&self, index: usize) -> &[u8] {
        let n = self.image_len();
        &self.pixels[index * n..(index + 1) * n]
    }

    /// Keeps only the first `n` images (all of them when `n >= len()`).
    pub fn truncate(&mut self, n: usize) {
        if n < self.len() {
            self.pixels.truncate(n * self.image_len());
            self.labels.truncate(n);
            self.sources.truncate(n);
        }
    }

    /// The index of the first image of every class, in class order (classes without images are skipped).
    pub fn first_of_each_class(&self) -> Vec<usize> {
        (0..self.class_names.len())
            .filter_map(|class| self.labels.iter().position(|&l| usize::from(l) == class))
            .collect()
    }
}

/// The training and the validation images of a dataset.
#[derive(Debug, Clone, Default)]
pub struct Splits {
    /// The training images.
    pub train: ImageSet,
    /// The validation images: the dataset's test split.
    pub test: ImageSet,
}

/// Reads (downloading CIFAR-10 when missing) the dataset `kind` from `data_dir`.
/// `seed` fixes the one-time shuffle of an image folder's training list.
///
/// ```
/// use cae::data::DatasetKind;
///
/// // Fashion-MNIST falls back to Debian's dataset-fashion-mnist copy.
/// let splits = cae::data::load(DatasetKind::FashionMnist, std::path::Path::new("/nonexistent"), 0).unwrap();
/// assert_eq!((splits.train.len(), splits.test.len()), (60_000, 10_000));
/// assert_eq!((splits.test.channels, splits.test.height, splits.test.width), (1, 28, 28));
/// assert_eq!(splits.test.class_names[9], "Ankle boot");
/// ```
pub fn load(kind: DatasetKind, data_dir: &std::path::Path, seed: u64) -> anyhow::Result<Splits> {
    Ok(load_located(kind, data_dir, seed)?.0)
}

/// [`load`], also returning the folder the data was read from (Fashion-MNIST may come from
/// Debian's copy rather than `data_dir`).
pub(crate) fn load_located(
    kind: DatasetKind,
    data_dir: &std::path::Path,
    seed: u64,
) -> anyhow::Result<(Splits, std::path::PathBuf)> {
    match kind {
        DatasetKind::Cifar10 => {
            let dir = cifar::ensure(data_dir)?;
            Ok((cifar::load(&dir)?, dir))
        }
        DatasetKind::Folder => Ok((folder::load(data_dir, seed)?, data_dir.to_path_buf())),
        DatasetKind::Mnist => {
            let dir = find_idx_dir(data_dir, "MNIST")?;
            Ok((idx::load(&dir, &idx::MNIST_CLASSES)?, dir))
        }
        DatasetKind::FashionMnist => {
            let debian = std::path::Path::new(idx::DEBIAN_FASHION_MNIST_DIR);
            let dir = idx::find_dir(data_dir).or_else(|| idx::find_dir(debian));
            let dir = dir.with_context(|| {
                idx_missing(data_dir, "Fashion-MNIST")
                    + &format!(
                        " (Debian's package dataset-fashion-mnist puts them in {})",
                        debian.display()
                    )
            })?;
            Ok((idx::load(&dir, &idx::FASHION_MNIST_CLASSES)?, dir))
        }
    }
}

/// A dataset as read by [`load_with_options`]: the splits, and the files left out of them.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// The training and validation images.
    pub splits: Splits,
    /// The image files left out under [`LoadOptions::skip_bad`]; empty otherwise.
    pub skipped: Vec<folder::Skipped>,
    /// The folder the data was read from.
    pub source: std::path::PathBuf,
}

/// How to read a dataset beyond its kind and location.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Leave out (and list in [`Loaded::skipped`]) the image files of a folder dataset that
    /// cannot be decoded instead of failing the load. The other formats keep their images in a
    /// few large files, which are read whole or refused.
    pub skip_bad: bool,
    /// Resize every image of a folder dataset to (width, height); default: the first image's size.
    pub image_size: Option<(u32, u32)>,
}

impl LoadOptions {
    /// Fails on options no dataset can satisfy, before anything is read.
    pub(crate) fn validate(&self) -> anyhow::Result<()> {
        if let Some((width, height)) = self.image_size {
            anyhow::ensure!(
                width > 0 && height > 0 && width.is_multiple_of(4) && height.is_multiple_of(4),
                "--image-size {width}x{height}: width and height must be positive multiples of 4"
            );
            // Resizing goes through float intermediates (about 16 bytes a pixel): refused
            // where one image alone would not fit, before any is read.
            let one_image = 16.0 * f64::from(width) * f64::from(height);
            if let Some(available) = crate::device::host_memory_available() {
                anyhow::ensure!(
                    one_image < available as f64,
                    "--image-size {width}x{height}: one image takes {:.1} GiB while resized, \
                     more than the {:.1} GiB of memory available",
                    crate::device::gib(one_image),
                    crate::device::gib(available as f64)
                );
            }
        }
        Ok(())
    }
}

/// [`load`] with [`LoadOptions`].
pub fn load_with_options(
    kind: DatasetKind,
    data_dir: &std::path::Path,
    seed: u64,
    options: &LoadOptions,
) -> anyhow::Result<Loaded> {
    options.validate()?;
    if kind != DatasetKind::Folder {
        anyhow::ensure!(
            options.image_size.is_none(),
            "--image-size applies to --dataset folder only"
        );
        let (splits, source) = load_located(kind, data_dir, seed)?;
        return Ok(Loaded {
            splits,
            skipped: Vec::new(),
            source,
        });
    }
    let folder_options = folder::FolderOptions {
        image_size: options.image_size,
        ..Default::default()
    };
    if options.skip_bad {
        let (splits, skipped) = folder::load_skipping_bad(data_dir, seed, &folder_options)?;
        Ok(Loaded {
            splits,
            skipped,
            source: data_dir.to_path_buf(),
        })
    } else {
        let splits = folder::load_with(data_dir, seed, &folder_options)?;
        Ok(Loaded {
            splits,
            skipped: Vec::new(),
            source: data_dir.to_path_buf(),
        })
    }
}

/// What `--skip-bad` left out, for the terminal: a count, then one line per file.
pub fn skipped_report(skipped: &[folder::Skipped]) -> String {
    let mut report = format!(
        "skipped {} image file{} that could not be read:",
        skipped.len(),
        if skipped.len() == 1 { "" } else { "s" }
    );
    for file in skipped {
        report.push_str("\n  ");
        report.push_str(&file.error);
    }
    report
}

fn find_idx_dir(data_dir: &std::path::Path, name: &str) -> anyhow::Result<std::path::PathBuf> {
    idx::find_dir(data_dir).with_context(|| idx_missing(data_dir, name))
}

fn idx_missing(data_dir: &std::path::Path, name: &str) -> String {
    format!(
        "no {name} IDX files (train-images-idx3-ubyte[.gz] and the other three) in {}; point --data-dir at them",
        data_dir.display()
    )
}

/// The per-user cache folder for datasets: `$CAE_DATA`, else `~/.cache/cae`.
pub fn default_data_dir() -> std::path::PathBuf {
    if let Some(dir) = std::env::var_os("CAE_DATA") {
        return dir.into();
    }
    let home = std::env::var_os("HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| ".".into());
    home.join(".cache").join("cae")
}
