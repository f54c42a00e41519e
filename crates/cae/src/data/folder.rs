//! Image folders: `root/train/<class>/*` and `root/test/<class>/*`, as PNG, JPEG or BMP files.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use anyhow::{Context, Result, anyhow, bail};
use image::imageops::{self, FilterType};
use image::{DynamicImage, ImageBuffer, ImageReader, Pixel};

use super::{ImageSet, Splits};

/// File extensions read as images (compared case-insensitively); other files are ignored.
pub(crate) const EXTENSIONS: [&str; 4] = ["png", "jpg", "jpeg", "bmp"];

/// One image file to read.
#[derive(Debug, Clone)]
struct Entry {
    path: PathBuf,
    /// The path relative to the root, with `/` separators, e.g. `test/airplane/0000.jpg`.
    source: String,
    label: u16,
}

/// An image file left out by `--skip-bad`, with the error that reading it gave.
#[derive(Debug, Clone)]
pub struct Skipped {
    /// The file left out.
    pub path: PathBuf,
    /// The whole error message, which names the file.
    pub error: String,
}

/// How [`load_with`] converts the images.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FolderOptions {
    /// 1 (grayscale) or 3 (RGB); `None` means 3.
    pub channels: Option<usize>,
    /// The (width, height) every image is resized to; `None` means the size of the first
    /// training image in name order.
    pub image_size: Option<(u32, u32)>,
}

/// [`load_with`] with the default options: RGB, at the size of the first training image.
pub(crate) fn load(root: &Path, shuffle_seed: u64) -> Result<Splits> {
    load_with(root, shuffle_seed, &FolderOptions::default())
}

/// Reads `root/train` and `root/test`, converting every image to `options.channels` 8-bit
/// channels at `options.image_size` (see [`decode_image`] for the conversions and the resizing).
///
/// The classes are the sorted subfolder names of `train/` (hidden ones skipped); `test/` may only
/// use those. Files are read in name order; the training list is then shuffled once with
/// `shuffle_seed` (see [`shuffle`]) since class-sorted batches train badly, while the test list
/// stays in class and file order.
pub(crate) fn load_with(root: &Path, shuffle_seed: u64, options: &FolderOptions) -> Result<Splits> {
    load_folder(root, shuffle_seed, options, false).map(|(splits, _)| splits)
}

/// Like [`load_with`], except that image files which cannot be decoded are left out instead of
/// failing the load; returns them, in split, class and name order, with the splits.
pub(crate) fn load_skipping_bad(
    root: &Path,
    shuffle_seed: u64,
    options: &FolderOptions,
) -> Result<(Splits, Vec<Skipped>)> {
    load_folder(root, shuffle_seed, options, true)
}

fn load_folder(
    root: &Path,
    shuffle_seed: u64,
    options: &FolderOptions,
    skip_bad: bool,
) -> Result<(Splits, Vec<Skipped>)> {
    let channels = check_channels(options.channels.unwrap_or(3))?;
    let train_dir = split_dir(root, "train")?;
    split_dir(root, "test")?;
    let classes = subfolders(&train_dir)?;
    let mut train = list_split(root, "train", &classes)?;
    let test = list_split(root, "test", &classes)?;
    let (width, height) = match options.image_size {
        Some(size) => check_size(size)?,
        None => first_dimensions(&train, skip_bad)?,
    };
    let target = Target {
        channels,
        width,
        height,
    };
    check_fits(train.len() + test.len(), &target, root)?;
    shuffle(&mut train, shuffle_seed);
    let (train, mut skipped) = decode_all(&train, &classes, &target, skip_bad)?;
    let (test, skipped_test) = decode_all(&test, &classes, &target, skip_bad)?;
    // The training list was shuffled; report in name order.
    skipped.sort_by(|a, b| a.path.cmp(&b.path));
    skipped.extend(skipped_test);
    Ok((Splits { train, test }, skipped))
}

/// Fails before decoding when `images` images of the target size cannot fit in memory (they
/// are kept as 8-bit pixels), with both figures.
fn check_fits(images: usize, target: &Target, root: &Path) -> Result<()> {
    let bytes = images as f64 * target.channels as f64 * target.width as f64 * target.height as f64;
    if let Some(available) = crate::device::host_memory_available()
        && bytes > available as f64
    {
        bail!(
            "{}: {images} images of {}x{}x{} take {:.1} GiB, more than the {:.1} GiB of memory \
             available; choose a smaller --image-size",
            root.display(),
            target.channels,
            target.height,
            target.width,
            crate::device::gib(bytes),
            crate::device::gib(available as f64)
        );
    }
    Ok(())
}

/// The size of the first training image in name order; with `skip_bad`, of the first whose
/// header can be read.
fn first_dimensions(train: &[Entry], skip_bad: bool) -> Result<(u32, u32)> {
    let first = train.first().context("train/ holds no images")?;
    let result = image_dimensions(&first.path);
    if !(skip_bad && result.is_err()) {
        return result;
    }
    // With every header unreadable the first error stands.
    let readable = train[1..]
        .iter()
        .find_map(|e| image_dimensions(&e.path).ok());
    readable.map_or(result, Ok)
}

fn check_channels(channels: usize) -> Result<usize> {
    if channels != 1 && channels != 3 {
        bail!("{channels} channels requested; images can be read with 1 (gray) or 3 (RGB)");
    }
    Ok(channels)
}

fn check_size((width, height): (u32, u32)) -> Result<(u32, u32)> {
    if width == 0 || height == 0 {
        bail!("image size {width}x{height} requested; both sides must be at least 1");
    }
    Ok((width, height))
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

/// The channel count and size every image is converted to.
struct Target {
    channels: usize,
    width: u32,
    height: u32,
}

/// Decodes `entries` in parallel into one planar [`ImageSet`]. Without `skip_bad` the first
/// file that cannot be decoded fails the whole set; with it, such files are left out and
/// returned.
fn decode_all(
    entries: &[Entry],
    classes: &[String],
    target: &Target,
    skip_bad: bool,
) -> Result<(ImageSet, Vec<Skipped>)> {
    let image_len = target.channels * target.width as usize * target.height as usize;
    let mut pixels = vec![0u8; entries.len() * image_len];
    let threads = thread::available_parallelism().map_or(2, |n| n.get());
    let per_thread = entries.len().div_ceil(threads).max(1);
    let stop = AtomicBool::new(false);
    let mut failures: Vec<(usize, anyhow::Error)> = thread::scope(|scope| {
        let workers: Vec<_> = entries
            .chunks(per_thread)
            .zip(pixels.chunks_mut(per_thread * image_len))
            .enumerate()
            .map(|(i, (chunk, out))| {
                let stop = &stop;
                scope
                    .spawn(move || decode_chunk(chunk, i * per_thread, out, target, stop, skip_bad))
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| {
                w.join()
                    .unwrap_or_else(|_| vec![(0, anyhow!("an image decoding thread panicked"))])
            })
            .collect()
    });
    failures.sort_by_key(|(index, _)| *index);
    if !skip_bad && !failures.is_empty() {
        // Each chunk stops at its first error and stops the others, so this is the first bad
        // file, unless a later chunk's error stopped an earlier chunk first.
        return Err(failures.remove(0).1);
    }
    let bad: Vec<usize> = failures.iter().map(|(index, _)| *index).collect();
    remove_images(&mut pixels, image_len, &bad);
    let kept = |i: &usize| bad.binary_search(i).is_err();
    let set = ImageSet {
        channels: target.channels,
        height: target.height as usize,
        width: target.width as usize,
        pixels,
        labels: (0..entries.len())
            .filter(kept)
            .map(|i| entries[i].label)
            .collect(),
        class_names: classes.to_vec(),
        sources: (0..entries.len())
            .filter(kept)
            .map(|i| entries[i].source.clone())
            .collect(),
    };
    let skipped = failures
        .into_iter()
        .map(|(index, error)| Skipped {
            path: entries[index].path.clone(),
            error: format!("{error:#}"),
        })
        .collect();
    Ok((set, skipped))
}

/// Removes the images at the sorted indices `bad` from `pixels`, keeping the order of the rest.
fn remove_images(pixels: &mut Vec<u8>, image_len: usize, bad: &[usize]) {
    if bad.is_empty() {
        return;
    }
    let count = pixels.len() / image_len.max(1);
    let mut kept = 0;
    for index in (0..count).filter(|i| bad.binary_search(i).is_err()) {
        pixels.copy_within(index * image_len..(index + 1) * image_len, kept * image_len);
        kept += 1;
    }
    pixels.truncate(kept * image_len);
}

/// Decodes `entries`, whose first has index `first_index` in the split, into `out`; returns
/// the failures by index in the split. Without `skip_bad` it stops at the first failure and
/// sets `stop` for the other chunks.
fn decode_chunk(
    entries: &[Entry],
    first_index: usize,
    out: &mut [u8],
    target: &Target,
    stop: &AtomicBool,
    skip_bad: bool,
) -> Vec<(usize, anyhow::Error)> {
    let image_len = out.len() / entries.len().max(1);
    let mut failures = Vec::new();
    for (i, (entry, planar)) in entries
        .iter()
        .zip(out.chunks_exact_mut(image_len))
        .enumerate()
    {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        match decode_guarded(&entry.path, target) {
            Ok(pixels) => planar.copy_from_slice(&pixels),
            Err(error) => {
                failures.push((first_index + i, error));
                if !skip_bad {
                    stop.store(true, Ordering::Relaxed);
                    break;
                }
            }
        }
    }
    failures
}

/// [`decode_image`] at the target size, with a panic of the decoder turned into an error that
/// names the file (a crafted image must not take the whole load down with it).
fn decode_guarded(path: &Path, target: &Target) -> Result<Vec<u8>> {
    let size = Some((target.width, target.height));
    let decode = || decode_image(path, target.channels, size).map(|(_, _, pixels)| pixels);
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(decode)).unwrap_or_else(|_| {
        Err(anyhow!(
            "{}: the image decoder crashed on this file",
            path.display()
        ))
    })
}

/// Decodes the image at `path` (format guessed from its content) to `channels` 8-bit planes:
/// returns the width, the height and the pixels, C, H, W planar.
///
/// `channels` is 1 or 3. Gray and palette images are expanded to RGB by repeating the gray
/// level or looking up the palette; RGB becomes gray with the `image` crate's luma weights
/// (`to_luma8`: 0.2126 R + 0.7152 G + 0.0722 B); alpha is dropped. When `size` (width, height)
/// is given and differs from the image's, the image is resized to it with
/// [`FilterType::Triangle`] (bilinear), after the channel conversion.
pub(crate) fn decode_image(
    path: &Path,
    channels: usize,
    size: Option<(u32, u32)>,
) -> Result<(u32, u32, Vec<u8>)> {
    check_channels(channels)?;
    let size = size.map(check_size).transpose()?;
    let image = open_image(path)?;
    let (width, height, interleaved) = match channels {
        1 => into_parts(resize(image.into_luma8(), size)),
        _ => into_parts(resize(image.into_rgb8(), size)),
    };
    Ok((width, height, interleaved_to_planar(&interleaved, channels)))
}

fn resize<P>(image: ImageBuffer<P, Vec<u8>>, size: Option<(u32, u32)>) -> ImageBuffer<P, Vec<u8>>
where
    P: Pixel<Subpixel = u8> + 'static,
{
    match size {
        Some((width, height)) if (width, height) != image.dimensions() => {
            imageops::resize(&image, width, height, FilterType::Triangle)
        }
        _ => image,
    }
}

fn into_parts<P: Pixel<Subpixel = u8>>(image: ImageBuffer<P, Vec<u8>>) -> (u32, u32, Vec<u8>) {
    let (width, height) = image.dimensions();
    (width, height, image.into_raw())
}

/// Rearranges H, W, C interleaved pixels into C, H, W planes.
fn interleaved_to_planar(interleaved: &[u8], channels: usize) -> Vec<u8> {
    let plane = interleaved.len() / channels;
    let mut planar = vec![0u8; interleaved.len()];
    for (i, pixel) in interleaved.chunks_exact(channels).enumerate() {
        for (c, &value) in pixel.iter().enumerate() {
            planar[c * plane + i] = value;
        }
    }
    planar
}

#[cfg(test)]
/// Decodes the image at `path` (format guessed from its content) to 8-bit RGB: returns the width,
/// the height and the pixels, H, W, C interleaved.
pub(crate) fn decode_rgb(path: &Path) -> Result<(u32, u32, Vec<u8>)> {
    Ok(into_parts(open_image(path)?.into_rgb8()))
}

fn reader(path: &Path) -> Result<ImageReader<BufReader<File>>> {
    ImageReader::open(path)
        .with_context(|| format!("cannot open {}", path.display()))?
        .with_guessed_format()
        .with_context(|| format!("cannot read {}", path.display()))
}

fn open_image(path: &Path) -> Result<DynamicImage> {
    reader(path)?
        .decode()
        .with_context(|| format!("{}: cannot decode the image", path.display()))
}

/// The (width, height) of the image at `path`, read from its header.
fn image_dimensions(path: &Path) -> Result<(u32, u32)> {
    reader(path)?
        .into_dimensions()
        .with_context(|| format!("{}: cannot decode the image", path.display()))
}

/// Shuffles `items` with a Fisher-Yates shuffle driven by SplitMix64 seeded with `seed`.
///
/// Self-contained so the order depends only on the seed, never on a dependency's version.
pub(crate) fn shuffle<T>(items: &mut [T], seed: u64) {
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
