//! The CIFAR-10 binary reader, on small synthetic batch files.

use std::fs;
use std::path::Path;

use crate::data::cifar::{self, CLASSES, TEST_FILE, TRAIN_FILES};

const IMAGE: usize = 3072;
const RECORD: usize = 1 + IMAGE;

/// A recognisable image: its bytes depend on the file, the record and the position.
fn pixels(file: usize, record: usize) -> Vec<u8> {
    (0..IMAGE)
        .map(|i| ((file * 31 + record * 7 + i * 13) % 256) as u8)
        .collect()
}

fn label(file: usize, record: usize) -> u8 {
    ((file + record * 3) % 10) as u8
}

fn batch_bytes(file: usize, records: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(records * RECORD);
    for record in 0..records {
        bytes.push(label(file, record));
        bytes.extend(pixels(file, record));
    }
    bytes
}

/// Writes the five training batches (5 records each) and the test batch (3 records).
fn write_batches(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    for (file, name) in TRAIN_FILES.iter().enumerate() {
        fs::write(dir.join(name), batch_bytes(file, 5)).unwrap();
    }
    fs::write(dir.join(TEST_FILE), batch_bytes(5, 3)).unwrap();
}

fn load_error(dir: &Path) -> String {
    format!("{:#}", cifar::load(dir).expect_err("load should fail"))
}

#[test]
fn load_reads_planar_pixels_labels_and_sources() {
    let tmp = tempfile::tempdir().unwrap();
    write_batches(tmp.path());
    let splits = cifar::load(tmp.path()).unwrap();

    let train = &splits.train;
    assert_eq!((train.channels, train.height, train.width), (3, 32, 32));
    assert_eq!(train.len(), 25);
    assert_eq!(train.pixels.len(), 25 * IMAGE);
    assert_eq!(train.class_names, CLASSES);
    for file in 0..5 {
        for record in 0..5 {
            let index = file * 5 + record;
            assert_eq!(train.labels[index], u16::from(label(file, record)));
            assert_eq!(train.image(index), pixels(file, record).as_slice());
            assert_eq!(
                train.sources[index],
                format!("data_batch_{}.bin#{record}", file + 1)
            );
        }
    }

    let test = &splits.test;
    assert_eq!(test.len(), 3);
    assert_eq!(test.image(2), pixels(5, 2).as_slice());
    assert_eq!(
        test.labels,
        [label(5, 0), label(5, 1), label(5, 2)].map(u16::from)
    );
    assert_eq!(test.sources[1], "test_batch.bin#1");
}

#[test]
fn find_batches_dir_accepts_the_archive_folder_or_the_files_directly() {
    let tmp = tempfile::tempdir().unwrap();
    assert_eq!(cifar::find_batches_dir(tmp.path()), None);

    let nested = tmp.path().join("cifar-10-batches-bin");
    write_batches(&nested);
    assert_eq!(cifar::find_batches_dir(tmp.path()), Some(nested.clone()));
    assert_eq!(cifar::find_batches_dir(&nested), Some(nested.clone()));

    fs::remove_file(nested.join("data_batch_5.bin")).unwrap();
    assert_eq!(cifar::find_batches_dir(tmp.path()), None);
}

#[test]
fn truncated_file_is_refused_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    write_batches(tmp.path());
    let mut bytes = batch_bytes(2, 5);
    bytes.pop();
    fs::write(tmp.path().join("data_batch_3.bin"), bytes).unwrap();
    let error = load_error(tmp.path());
    assert!(
        error.contains(
            "data_batch_3.bin: 15364 bytes is not a multiple of the 3073-byte record size"
        ),
        "{error}"
    );
}

#[test]
fn empty_file_is_refused_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    write_batches(tmp.path());
    fs::write(tmp.path().join(TEST_FILE), b"").unwrap();
    let error = load_error(tmp.path());
    assert!(error.contains("test_batch.bin is empty"), "{error}");
}

#[test]
fn label_outside_the_ten_classes_is_refused_naming_file_and_record() {
    let tmp = tempfile::tempdir().unwrap();
    write_batches(tmp.path());
    let mut bytes = batch_bytes(5, 3);
    bytes[2 * RECORD] = 12;
    fs::write(tmp.path().join(TEST_FILE), bytes).unwrap();
    let error = load_error(tmp.path());
    assert!(
        error.contains("test_batch.bin record 2: label 12 is not a CIFAR-10 class (0..=9)"),
        "{error}"
    );
}

#[test]
fn missing_file_is_refused_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    write_batches(tmp.path());
    fs::remove_file(tmp.path().join("data_batch_4.bin")).unwrap();
    let error = load_error(tmp.path());
    assert!(error.contains("lacks data_batch_4.bin"), "{error}");
}
