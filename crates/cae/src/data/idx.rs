//! MNIST and Fashion-MNIST in the IDX format of LeCun's site: four files, each plain or gzipped.
//!
//! An IDX file is a big-endian header (magic number, then one `u32` per dimension) followed by
//! the unsigned bytes of the array: `N x rows x cols` pixels for images, `N` labels for labels.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use flate2::read::GzDecoder;

use super::{ImageSet, Splits};

/// The class names of MNIST, in label order.
pub(crate) const MNIST_CLASSES: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];

/// The class names of Fashion-MNIST, in label order.
pub(crate) const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Where Debian's package `dataset-fashion-mnist` installs the four gzipped files.
pub(crate) const DEBIAN_FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// The four files, without the optional `.gz` suffix.
pub(crate) const FILES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

/// Unsigned bytes (0x08), three dimensions.
const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Unsigned bytes (0x08), one dimension.
const LABELS_MAGIC: u32 = 0x0000_0801;

/// Subfolders of a data folder where the files are commonly found (torchvision uses the last two).
const KNOWN_SUBFOLDERS: [&str; 4] = ["fashion-mnist", "mnist", "FashionMNIST/raw", "MNIST/raw"];

/// The folder holding the four files: `data_dir` itself, else one of a few usual subfolders.
pub(crate) fn find_dir(data_dir: &Path) -> Option<PathBuf> {
    std::iter::once(data_dir.to_path_buf())
        .chain(KNOWN_SUBFOLDERS.iter().map(|sub| data_dir.join(sub)))
        .find(|dir| FILES.iter().all(|name| locate(dir, name).is_some()))
}

/// The path of `name` in `dir`: the plain file if present, else `name.gz`.
fn locate(dir: &Path, name: &str) -> Option<PathBuf> {
    [dir.join(name), dir.join(format!("{name}.gz"))]
        .into_iter()
        .find(|path| path.is_file())
}

fn require(dir: &Path, name: &str) -> Result<PathBuf> {
    locate(dir, name).with_context(|| {
        format!(
            "{} lacks {name} (plain or .gz): not an MNIST-style IDX folder",
            dir.display()
        )
    })
}

/// Reads the training (`train-*`) and test (`t10k-*`) images and labels from `dir`.
///
/// The images are grayscale (`channels == 1`) and every label must index `class_names`.
pub(crate) fn load(dir: &Path, class_names: &[&str]) -> Result<Splits> {
    Ok(Splits {
        train: load_split(dir, "train", class_names)?,
        test: load_split(dir, "t10k", class_names)?,
    })
}

fn load_split(dir: &Path, prefix: &str, class_names: &[&str]) -> Result<ImageSet> {
    let images_path = require(dir, &format!("{prefix}-images-idx3-ubyte"))?;
    let labels_path = require(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
    let images = read_idx(&images_path, IMAGES_MAGIC)?;
    let labels = read_idx(&labels_path, LABELS_MAGIC)?;
    let count = images.dims[0];
    if labels.dims[0] != count {
        bail!(
            "{} holds {count} images but {} holds {} labels",
            images_path.display(),
            labels_path.display(),
            labels.dims[0]
        );
    }
    check_labels(&labels_path, &labels.data, class_names.len())?;
    let name = file_name(&images_path);
    Ok(ImageSet {
        channels: 1,
        height: images.dims[1],
        width: images.dims[2],
        pixels: images.data,
        labels: labels.data.into_iter().map(u16::from).collect(),
        class_names: class_names.iter().map(|c| c.to_string()).collect(),
        sources: (0..count).map(|i| format!("{name}#{i}")).collect(),
    })
}

fn check_labels(path: &Path, labels: &[u8], classes: usize) -> Result<()> {
    if let Some(index) = labels.iter().position(|&l| usize::from(l) >= classes) {
        bail!(
            "{}: label {index} is {}, but there are only {classes} classes",
            path.display(),
            labels[index]
        );
    }
    Ok(())
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// The dimensions and the data of one IDX file.
struct Idx {
    dims: Vec<usize>,
    data: Vec<u8>,
}

/// An opened IDX file: its byte stream (decompressed when gzipped) and, when plain, its length.
struct Stream {
    reader: Box<dyn Read>,
    plain_len: Option<u64>,
}

fn open(path: &Path) -> Result<Stream> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    if path.extension().is_some_and(|e| e == "gz") {
        return Ok(Stream {
            reader: Box::new(GzDecoder::new(file)),
            plain_len: None,
        });
    }
    let len = file
        .metadata()
        .with_context(|| format!("cannot read the size of {}", path.display()))?
        .len();
    Ok(Stream {
        reader: Box::new(BufReader::new(file)),
        plain_len: Some(len),
    })
}

/// Reads the IDX file at `path`, which must have the magic number `magic` and exactly the size
/// its header announces. Memory is only reserved once the header agrees with the real size, so
/// an absurd header cannot trigger a huge allocation.
fn read_idx(path: &Path, magic: u32) -> Result<Idx> {
    let mut stream = open(path)?;
    let found = u32::from_be_bytes(read_header_bytes(path, &mut stream.reader, 0)?);
    if found != magic {
        bail!(
            "{}: not an IDX file of the expected kind: magic number is {found:#010x}, \
             expected {magic:#010x}",
            path.display()
        );
    }
    let rank = (magic & 0xff) as usize;
    let mut dims = Vec::with_capacity(rank);
    for i in 0..rank {
        let bytes = read_header_bytes(path, &mut stream.reader, 4 + 4 * i)?;
        dims.push(u32::from_be_bytes(bytes) as usize);
    }
    let header_len = 4 + 4 * rank as u64;
    let expected = header_len + body_len(path, &dims)?;
    if let Some(actual) = stream.plain_len.filter(|&len| len != expected) {
        return Err(size_mismatch(path, &dims, actual, expected, false));
    }
    let data = read_body(path, stream, header_len, expected, &dims)?;
    Ok(Idx { dims, data })
}

/// The next 4 header bytes; `offset` (bytes already read) is only for the error message.
fn read_header_bytes(path: &Path, reader: &mut dyn Read, offset: usize) -> Result<[u8; 4]> {
    let mut bytes = [0u8; 4];
    match reader.read_exact(&mut bytes) {
        Ok(()) => Ok(bytes),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => bail!(
            "{}: truncated: the file ends within its IDX header (after fewer than {} bytes)",
            path.display(),
            offset + 4
        ),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// The most data one IDX file may announce: 16 times the largest known IDX dataset (EMNIST,
/// about 0.7 GB), so that a gzipped file whose header claims an absurd size (a "gzip bomb")
/// is refused before its decompressed stream fills memory.
pub(crate) const MAX_IDX_BYTES: u64 = 1 << 33;

/// The number of data bytes the dimensions call for; zero, overflowing or absurd sizes are
/// refused.
fn body_len(path: &Path, dims: &[usize]) -> Result<u64> {
    if dims.contains(&0) {
        bail!(
            "{}: the header's dimensions {} include a zero",
            path.display(),
            format_dims(dims)
        );
    }
    let len = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
        .with_context(|| {
            format!(
                "{}: the header's dimensions {} overflow",
                path.display(),
                format_dims(dims)
            )
        })?;
    if len > MAX_IDX_BYTES {
        bail!(
            "{}: the header's dimensions {} call for {len} bytes, more than the {MAX_IDX_BYTES} \
             an IDX dataset file may hold",
            path.display(),
            format_dims(dims)
        );
    }
    Ok(len)
}

/// Reads the data after the header, checking that the stream holds exactly that much.
fn read_body(
    path: &Path,
    mut stream: Stream,
    header_len: u64,
    expected: u64,
    dims: &[usize],
) -> Result<Vec<u8>> {
    let body_len = expected - header_len;
    // A gzipped stream's real size is unknown until read, so its buffer grows as data arrives.
    let capacity = if stream.plain_len.is_some() {
        usize::try_from(body_len).unwrap_or(0)
    } else {
        0
    };
    let mut data = Vec::with_capacity(capacity);
    let context = || format!("cannot read {}", path.display());
    (&mut stream.reader)
        .take(body_len)
        .read_to_end(&mut data)
        .with_context(context)?;
    // Trailing data is counted only up to a limit: a decompressed stream may not end.
    const EXTRA_COUNTED: u64 = 1 << 20;
    let extra = io::copy(
        &mut (&mut stream.reader).take(EXTRA_COUNTED),
        &mut io::sink(),
    )
    .with_context(context)?;
    let actual = header_len + data.len() as u64 + extra;
    if actual != expected {
        return Err(size_mismatch(
            path,
            dims,
            actual,
            expected,
            extra == EXTRA_COUNTED,
        ));
    }
    Ok(data)
}

/// `at_least`: `actual` only counts the data read before giving up on an endless stream.
fn size_mismatch(
    path: &Path,
    dims: &[usize],
    actual: u64,
    expected: u64,
    at_least: bool,
) -> anyhow::Error {
    let what = if actual < expected {
        "truncated"
    } else {
        "oversized"
    };
    let decompressed = if path.extension().is_some_and(|e| e == "gz") {
        " decompressed"
    } else {
        ""
    };
    let at_least = if at_least { "at least " } else { "" };
    anyhow::anyhow!(
        "{}: {what}: {at_least}{actual} bytes{decompressed}, but its header (dimensions {}) \
         calls for {expected} bytes",
        path.display(),
        format_dims(dims)
    )
}

fn format_dims(dims: &[usize]) -> String {
    dims.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("x")
}
