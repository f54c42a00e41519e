//! The IDX reader (MNIST, Fashion-MNIST): tiny synthetic files, plain and gzipped, their
//! corruptions, and the real Fashion-MNIST that Debian's `dataset-fashion-mnist` installs.

use std::fs;
use std::path::{Path, PathBuf};

use crate::data::idx::{self, DEBIAN_FASHION_MNIST_DIR, FASHION_MNIST_CLASSES, MNIST_CLASSES};
use crate::tests::fixtures::{gzip, idx_file};

const IMAGES_MAGIC: u32 = 0x0803;
const LABELS_MAGIC: u32 = 0x0801;

/// Writes `bytes` as `dir/name`, or gzipped as `dir/name.gz`; returns the path.
fn write(dir: &Path, name: &str, bytes: &[u8], gz: bool) -> PathBuf {
    let path = if gz {
        dir.join(format!("{name}.gz"))
    } else {
        dir.join(name)
    };
    fs::write(&path, if gz { gzip(bytes) } else { bytes.to_vec() }).unwrap();
    path
}

/// Three 2x3 training images and two test images whose pixels are their byte offsets.
fn train_pixels() -> Vec<u8> {
    (0..18).collect()
}

fn test_pixels() -> Vec<u8> {
    (100..112).collect()
}

/// A complete tiny dataset in `dir`, every file plain or gzipped.
fn write_dataset(dir: &Path, gz: bool) {
    let train = idx_file(IMAGES_MAGIC, &[3, 2, 3], &train_pixels());
    write(dir, "train-images-idx3-ubyte", &train, gz);
    write(
        dir,
        "train-labels-idx1-ubyte",
        &idx_file(LABELS_MAGIC, &[3], &[2, 0, 9]),
        gz,
    );
    let test = idx_file(IMAGES_MAGIC, &[2, 2, 3], &test_pixels());
    write(dir, "t10k-images-idx3-ubyte", &test, gz);
    write(
        dir,
        "t10k-labels-idx1-ubyte",
        &idx_file(LABELS_MAGIC, &[2], &[7, 1]),
        gz,
    );
}

fn dataset(gz: bool) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    write_dataset(tmp.path(), gz);
    tmp
}

fn load_error(dir: &Path) -> String {
    format!(
        "{:#}",
        idx::load(dir, &MNIST_CLASSES).expect_err("load should fail")
    )
}

fn assert_contains(error: &str, parts: &[&str]) {
    for part in parts {
        assert!(error.contains(part), "{part:?} missing from: {error}");
    }
}

fn assert_tiny_dataset(dir: &Path, gz: bool) {
    let splits = idx::load(dir, &MNIST_CLASSES).unwrap();
    let suffix = if gz { ".gz" } else { "" };
    let train = &splits.train;
    assert_eq!((train.channels, train.height, train.width), (1, 2, 3));
    assert_eq!(train.pixels, train_pixels());
    assert_eq!(train.labels, [2, 0, 9]);
    assert_eq!(train.class_names, MNIST_CLASSES);
    assert_eq!(
        train.sources[2],
        format!("train-images-idx3-ubyte{suffix}#2")
    );
    let test = &splits.test;
    assert_eq!((test.channels, test.height, test.width), (1, 2, 3));
    assert_eq!(test.image(1), &test_pixels()[6..]);
    assert_eq!(test.labels, [7, 1]);
    assert_eq!(
        test.sources,
        [
            format!("t10k-images-idx3-ubyte{suffix}#0"),
            format!("t10k-images-idx3-ubyte{suffix}#1")
        ]
    );
}

#[test]
fn plain_files_load_exact_pixels_and_labels() {
    let tmp = dataset(false);
    assert_tiny_dataset(tmp.path(), false);
}

#[test]
fn gzipped_files_load_exact_pixels_and_labels() {
    let tmp = dataset(true);
    assert_tiny_dataset(tmp.path(), true);
}

#[test]
fn plain_and_gzipped_files_mix_and_plain_is_preferred() {
    let tmp = dataset(true);
    let train = idx_file(IMAGES_MAGIC, &[3, 2, 3], &[42; 18]);
    write(tmp.path(), "train-images-idx3-ubyte", &train, false);
    let splits = idx::load(tmp.path(), &MNIST_CLASSES).unwrap();
    assert_eq!(splits.train.pixels, [42; 18]);
    assert_eq!(splits.train.sources[0], "train-images-idx3-ubyte#0");
    assert_eq!(splits.test.pixels, test_pixels());
}

#[test]
fn find_dir_looks_in_the_folder_then_known_subfolders() {
    let tmp = tempfile::tempdir().unwrap();
    assert_eq!(idx::find_dir(tmp.path()), None);
    let sub = tmp.path().join("FashionMNIST/raw");
    fs::create_dir_all(&sub).unwrap();
    write_dataset(&sub, true);
    assert_eq!(idx::find_dir(tmp.path()), Some(sub));
    write_dataset(tmp.path(), false);
    assert_eq!(idx::find_dir(tmp.path()), Some(tmp.path().to_path_buf()));
}

#[test]
fn find_dir_needs_all_four_files() {
    let tmp = dataset(false);
    fs::remove_file(tmp.path().join("t10k-labels-idx1-ubyte")).unwrap();
    assert_eq!(idx::find_dir(tmp.path()), None);
}

#[test]
fn missing_file_is_an_error_naming_it() {
    let tmp = dataset(false);
    fs::remove_file(tmp.path().join("t10k-labels-idx1-ubyte")).unwrap();
    let error = load_error(tmp.path());
    assert_contains(&error, &["lacks t10k-labels-idx1-ubyte (plain or .gz)"]);
}

#[test]
fn bad_magic_is_an_error_naming_the_file() {
    for gz in [false, true] {
        let tmp = dataset(gz);
        // A label file where the image file belongs.
        let labels = idx_file(LABELS_MAGIC, &[3], &[0, 1, 2]);
        let path = write(tmp.path(), "train-images-idx3-ubyte", &labels, gz);
        let error = load_error(tmp.path());
        assert_contains(
            &error,
            &[
                &path.display().to_string(),
                "magic number is 0x00000801, expected 0x00000803",
            ],
        );
    }
}

#[test]
fn truncated_file_is_an_error_naming_it_and_both_sizes() {
    for gz in [false, true] {
        let tmp = dataset(gz);
        let mut bytes = idx_file(IMAGES_MAGIC, &[2, 2, 3], &test_pixels());
        bytes.truncate(bytes.len() - 5);
        let path = write(tmp.path(), "t10k-images-idx3-ubyte", &bytes, gz);
        let error = load_error(tmp.path());
        let decompressed = if gz { " decompressed" } else { "" };
        assert_contains(
            &error,
            &[
                &path.display().to_string(),
                &format!("truncated: 23 bytes{decompressed}, but its header"),
                "(dimensions 2x2x3) calls for 28 bytes",
            ],
        );
    }
}

#[test]
fn file_cut_within_its_header_is_an_error_naming_it() {
    let tmp = dataset(false);
    let bytes = &idx_file(LABELS_MAGIC, &[3], &[0, 1, 2])[..6];
    let path = write(tmp.path(), "train-labels-idx1-ubyte", bytes, false);
    let error = load_error(tmp.path());
    assert_contains(
        &error,
        &[&path.display().to_string(), "truncated", "IDX header"],
    );
}

#[test]
fn oversized_file_is_an_error_naming_it_and_both_sizes() {
    for gz in [false, true] {
        let tmp = dataset(gz);
        let bytes = idx_file(LABELS_MAGIC, &[2], &[7, 1, 0, 0, 0]);
        let path = write(tmp.path(), "t10k-labels-idx1-ubyte", &bytes, gz);
        let error = load_error(tmp.path());
        assert_contains(
            &error,
            &[
                &path.display().to_string(),
                "oversized: 13 bytes",
                "(dimensions 2) calls for 10 bytes",
            ],
        );
    }
}

#[test]
fn absurd_header_is_refused_before_reading_the_data() {
    for gz in [false, true] {
        let tmp = dataset(gz);
        let huge = idx_file(IMAGES_MAGIC, &[u32::MAX, 65_535, 65_535], &[1, 2, 3]);
        let path = write(tmp.path(), "train-images-idx3-ubyte", &huge, gz);
        let error = load_error(tmp.path());
        assert_contains(
            &error,
            &[
                &path.display().to_string(),
                "4294967295x65535x65535",
                "call for 18446181123756261375 bytes, more than",
            ],
        );
    }
}

#[test]
fn overflowing_or_zero_dimensions_are_errors() {
    let tmp = dataset(false);
    let overflowing = idx_file(IMAGES_MAGIC, &[u32::MAX; 3], &[]);
    let path = write(tmp.path(), "train-images-idx3-ubyte", &overflowing, false);
    let error = load_error(tmp.path());
    assert_contains(&error, &[&path.display().to_string(), "overflow"]);

    let empty = idx_file(IMAGES_MAGIC, &[3, 0, 3], &[]);
    write(tmp.path(), "train-images-idx3-ubyte", &empty, false);
    let error = load_error(tmp.path());
    assert_contains(
        &error,
        &[&path.display().to_string(), "3x0x3 include a zero"],
    );
}

#[test]
fn image_and_label_counts_must_match() {
    let tmp = dataset(true);
    let labels = idx_file(LABELS_MAGIC, &[4], &[0, 1, 2, 3]);
    let labels_path = write(tmp.path(), "train-labels-idx1-ubyte", &labels, true);
    let error = load_error(tmp.path());
    let images_path = tmp.path().join("train-images-idx3-ubyte.gz");
    assert_contains(
        &error,
        &[
            &format!("{} holds 3 images", images_path.display()),
            &format!("{} holds 4 labels", labels_path.display()),
        ],
    );
}

#[test]
fn label_out_of_range_is_an_error_naming_the_file() {
    let tmp = dataset(false);
    let labels = idx_file(LABELS_MAGIC, &[2], &[7, 10]);
    let path = write(tmp.path(), "t10k-labels-idx1-ubyte", &labels, false);
    let error = load_error(tmp.path());
    assert_contains(
        &error,
        &[
            &path.display().to_string(),
            "label 1 is 10, but there are only 10 classes",
        ],
    );
    // With fewer class names, the training label 9 is out of range too.
    let error = format!(
        "{:#}",
        idx::load(tmp.path(), &MNIST_CLASSES[..5]).unwrap_err()
    );
    assert_contains(&error, &["train-labels-idx1-ubyte: label 2 is 9"]);
}

#[test]
fn corrupt_gzip_is_an_error_naming_the_file() {
    let tmp = dataset(true);
    let path = tmp.path().join("t10k-images-idx3-ubyte.gz");
    fs::write(&path, b"\x1f\x8b\x08\x00garbage that is not deflate").unwrap();
    let error = load_error(tmp.path());
    assert_contains(&error, &[&path.display().to_string()]);
}

#[test]
fn class_names_are_in_the_official_order() {
    assert_eq!(MNIST_CLASSES[0], "0");
    assert_eq!(MNIST_CLASSES[9], "9");
    assert_eq!(
        FASHION_MNIST_CLASSES,
        [
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot"
        ]
    );
}

// ---- Real Fashion-MNIST --------------------------------------------------------------------

/// Debian's Fashion-MNIST; fails (never skips) when the package is not installed.
fn debian_fashion_mnist() -> PathBuf {
    let dir = PathBuf::from(DEBIAN_FASHION_MNIST_DIR);
    assert!(
        idx::find_dir(&dir).as_deref() == Some(dir.as_path()),
        "Fashion-MNIST not found in {}: run `apt-get install dataset-fashion-mnist`",
        dir.display()
    );
    dir
}

fn histogram(labels: &[u16]) -> Vec<usize> {
    let mut counts = vec![0; 10];
    for &label in labels {
        counts[usize::from(label)] += 1;
    }
    counts
}

fn pixel_sum(pixels: &[u8]) -> u64 {
    pixels.iter().map(|&p| u64::from(p)).sum()
}

/// The figures were computed independently with Python's `gzip` module on the Debian files.
#[test]
fn debian_fashion_mnist_loads() {
    let dir = debian_fashion_mnist();
    assert_eq!(
        idx::find_dir(Path::new("/usr/share/datasets")),
        Some(dir.clone())
    );
    let splits = idx::load(&dir, &FASHION_MNIST_CLASSES).unwrap();
    let (train, test) = (&splits.train, &splits.test);

    assert_eq!((train.len(), test.len()), (60_000, 10_000));
    for set in [train, test] {
        assert_eq!((set.channels, set.height, set.width), (1, 28, 28));
        assert_eq!(set.class_names, FASHION_MNIST_CLASSES);
    }
    assert_eq!(histogram(&train.labels), [6000; 10]);
    assert_eq!(histogram(&test.labels), [1000; 10]);
    assert_eq!(train.labels[..10], [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]);
    assert_eq!(test.labels[..10], [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]);
    assert_eq!(pixel_sum(&train.pixels), 3_431_114_169);
    assert_eq!(pixel_sum(&test.pixels), 573_469_082);
    assert_eq!(pixel_sum(train.image(0)), 76_247);
    assert_eq!(
        train.image(0)[14 * 28..15 * 28],
        [
            0, 0, 1, 4, 6, 7, 2, 0, 0, 0, 0, 0, 237, 226, 217, 223, 222, 219, 222, 221, 216, 223,
            229, 215, 218, 255, 77, 0
        ]
    );
    assert_eq!(test.sources[17], "t10k-images-idx3-ubyte.gz#17");
}

/// A data folder without Fashion-MNIST falls back to Debian's copy, and says so.
#[test]
fn fashion_mnist_fallback_reports_the_folder_it_read() {
    let debian = debian_fashion_mnist();
    let empty = tempfile::tempdir().unwrap();
    let (splits, source) =
        crate::data::load_located(crate::data::DatasetKind::FashionMnist, empty.path(), 0).unwrap();
    assert_eq!(source, debian);
    assert_eq!(splits.test.len(), 10_000);
}
