//! Image folders: `root/train/<class>/*` and `root/test/<class>/*`, as PNG, JPEG or BMP files.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use anyhow::{Context, Result, anyhow, bail};
use image::ImageReader;

use super::{ImageSet, Splits};

/// File extensions read as images (compared case-insensitively); other files are ignored.
pub const EXTENSIONS: [&str; 4] = ["png", "jpg", "jpeg", "bmp"];

/// One image file to read.
#[derive(Debug, Clone)]
struct Entry {
    path: PathBuf,
    /// The path relative to the root, with `/` separators, e.g. `test/airplane/0000.jpg`.
    source: String,
    label: u16,
}

/// Reads `root/train` and `root/test`, converting every image to 8-bit RGB.
///
/// The classes are the sorted subfolder names of `train/` (hidden ones skipped); `test/` may only
/// use those. Files are read in name order; the training list is then shuffled once with
/// `shuffle_seed` (see [`shuffle`]) since class-sorted batches train badly, while the test list
/// stays in class and file order. Every image must have the size of the first training image.
pub fn load(root: &Path, shuffle_seed: u64) -> Result<Splits> {
    let train_dir = split_dir(root, "train")?;
    split_dir(root, "test")?;
    let classes = subfolders(&train_dir)?;
    let mut train = list_split(root, "train", &classes)?;
    let test = list_split(root, "test", &classes)?;
    let first = train.first().context("train/ holds no images")?;
    let (width, height, _) = decode_rgb(&first.path)?;
    let reference = Reference {
        source: first.source.clone(),
        width,
        height,
    };
    shuffle(&mut train, shuffle_seed);
    Ok(Splits {
        train: decode_all(&train, &classes, &reference)?,
        test: decode_all(&test, &classes, &reference)?,
    })
}

fn split_dir(root: &Path, split: &str) -> Result<PathBuf> {
    let dir = root.join(split);
    if !dir.is_dir() {
        bail!(
            "{} is missing: an image folder needs {split}/<class>/*.png|jpg|jpeg|bmp under {}",
            dir.display(),
            root.display()
        );
    }
    Ok(dir)
}

/// The sorted names of the folders in `dir`, which must have at least one.
fn subfolders(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for item in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let item = item.with_context(|| format!("cannot list {}", dir.display()))?;
        let name = item.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') && item.path().is_dir() {
            names.push(name);
        }
    }
    if names.is_empty() {
        bail!("{} has no class folders", dir.display());
    }
    names.sort();
    Ok(names)
}

/// The images of `root/split`, class by class in `classes` order, files in name order.
fn list_split(root: &Path, split: &str, classes: &[String]) -> Result<Vec<Entry>> {
    let mut entries = Vec::new();
    for class in subfolders(&root.join(split))? {
        let label = class_label(classes, &class, split)?;
        let dir = root.join(split).join(&class);
        let files = image_files(&dir)?;
        if files.is_empty() {
            bail!(
                "{} holds no images (.png, .jpg, .jpeg or .bmp files)",
                dir.display()
            );
        }
        entries.extend(files.into_iter().map(|file| Entry {
            source: format!("{split}/{class}/{}", file.to_string_lossy()),
            path: dir.join(&file),
            label,
        }));
    }
    Ok(entries)
}

fn class_label(classes: &[String], class: &str, split: &str) -> Result<u16> {
    let index = classes.iter().position(|c| c == class).with_context(|| {
        format!(
            "{split}/{class} is a class that train/ lacks (train/ has: {})",
            classes.join(", ")
        )
    })?;
    u16::try_from(index).context("more than 65536 classes")
}

/// The sorted names of the image files in `dir`.
fn image_files(dir: &Path) -> Result<Vec<OsString>> {
    let mut files = Vec::new();
    for item in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let item = item.with_context(|| format!("cannot list {}", dir.display()))?;
        let path = item.path();
        if has_image_extension(&path) && path.is_file() {
            files.push(item.file_name());
        }
    }
    files.sort();
    Ok(files)
}

fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// The image whose size every other image must have.
struct Reference {
    source: String,
    width: u32,
    height: u32,
}

/// Decodes `entries` in parallel into one planar RGB [`ImageSet`].
fn decode_all(entries: &[Entry], classes: &[String], reference: &Reference) -> Result<ImageSet> {
    let image_len = 3 * reference.width as usize * reference.height as usize;
    let mut pixels = vec![0u8; entries.len() * image_len];
    let threads = thread::available_parallelism().map_or(2, |n| n.get());
    let per_thread = entries.len().div_ceil(threads).max(1);
    let failed = AtomicBool::new(false);
    let results: Vec<Result<()>> = thread::scope(|scope| {
        let workers: Vec<_> = entries
            .chunks(per_thread)
            .zip(pixels.chunks_mut(per_thread * image_len))
            .map(|(chunk, out)| scope.spawn(|| decode_chunk(chunk, out, reference, &failed)))
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(anyhow!("an image decoding thread panicked")))
            })
            .collect()
    });
    // Chunks are in order and each stops at its first error, so this reports the first bad file
    // (unless a later chunk's error stopped an earlier chunk first, which only changes which
    // bad file is named).
    results.into_iter().collect::<Result<()>>()?;
    Ok(ImageSet {
        channels: 3,
        height: reference.height as usize,
        width: reference.width as usize,
        pixels,
        labels: entries.iter().map(|e| e.label).collect(),
        class_names: classes.to_vec(),
        sources: entries.iter().map(|e| e.source.clone()).collect(),
    })
}

fn decode_chunk(
    entries: &[Entry],
    out: &mut [u8],
    reference: &Reference,
    failed: &AtomicBool,
) -> Result<()> {
    let image_len = out.len() / entries.len().max(1);
    for (entry, planar) in entries.iter().zip(out.chunks_exact_mut(image_len)) {
        if failed.load(Ordering::Relaxed) {
            return Ok(());
        }
        let result = decode_into(entry, planar, reference);
        if result.is_err() {
            failed.store(true, Ordering::Relaxed);
            return result;
        }
    }
    Ok(())
}

fn decode_into(entry: &Entry, planar: &mut [u8], reference: &Reference) -> Result<()> {
    let (width, height, rgb) = decode_rgb(&entry.path)?;
    if (width, height) != (reference.width, reference.height) {
        bail!(
            "{}: image is {width}x{height} but {} is {}x{}; all images must have the same size",
            entry.source,
            reference.source,
            reference.width,
            reference.height
        );
    }
    interleaved_to_planar(&rgb, planar);
    Ok(())
}

/// Copies H, W, C interleaved RGB into C, H, W planes.
fn interleaved_to_planar(rgb: &[u8], planar: &mut [u8]) {
    let plane = planar.len() / 3;
    for (i, pixel) in rgb.chunks_exact(3).enumerate() {
        planar[i] = pixel[0];
        planar[plane + i] = pixel[1];
        planar[2 * plane + i] = pixel[2];
    }
}

/// Decodes the image at `path` (format guessed from its content) to 8-bit RGB: returns the width,
/// the height and the pixels, H, W, C interleaved.
pub fn decode_rgb(path: &Path) -> Result<(u32, u32, Vec<u8>)> {
    let image = ImageReader::open(path)
        .with_context(|| format!("cannot open {}", path.display()))?
        .with_guessed_format()
        .with_context(|| format!("cannot read {}", path.display()))?
        .decode()
        .with_context(|| format!("{}: cannot decode the image", path.display()))?
        .into_rgb8();
    Ok((image.width(), image.height(), image.into_raw()))
}

/// Shuffles `items` with a Fisher-Yates shuffle driven by SplitMix64 seeded with `seed`.
///
/// Self-contained so the order depends only on the seed, never on a dependency's version.
pub fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut rng = SplitMix64(seed);
    for i in (1..items.len()).rev() {
        items.swap(i, rng.below(i as u64 + 1) as usize);
    }
}

/// SplitMix64 (Steele, Lea and Flood, 2014), the generator Java's `SplittableRandom` uses.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` by Lemire's multiply-shift; the bias, at most n / 2^64, is negligible.
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
}
