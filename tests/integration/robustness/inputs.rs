//! Malformed input through the real `cae` binary: every case fails with exit code 1 and one
//! message that names the file (and the record or tensor) and what is wrong, with no panic and
//! no backtrace even under `RUST_BACKTRACE=1`; `--skip-bad` leaves bad image files out instead.

use std::fs;
use std::path::{Path, PathBuf};

use crate::common;
use crate::common::{cae_clean_error, gzip, idx_file, s};
use cae::io::weights::{HostTensor, StateDict};
use cae::model::ModelConfig;
use safetensors::tensor::{Dtype, TensorView};

/// `cae train` on `data_dir`, which fails while reading the data, before any training.
fn train_error(dataset: &str, data_dir: &Path, needles: &[&str]) -> String {
    let out = data_dir.join("never-written");
    let args = [
        "train",
        "--dataset",
        dataset,
        "--data-dir",
        s(data_dir),
        "--out",
        s(&out),
    ];
    let stderr = cae_clean_error(&args, needles);
    assert!(!out.exists(), "a run folder was created");
    stderr
}

// CIFAR-10 binary batches.

const RECORD: usize = 1 + 3 * 32 * 32;

fn cifar_batch(records: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(records * RECORD);
    for r in 0..records {
        bytes.push((r % 10) as u8);
        bytes.extend((0..RECORD - 1).map(|i| (i * 7 + r) as u8));
    }
    bytes
}

/// The files of CIFAR-10's binary version.
const CIFAR_FILES: [&str; 6] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
    "test_batch.bin",
];

/// Six batches of three records each, with `name` replaced by `bytes`.
fn cifar_dir(name: &str, bytes: Vec<u8>) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for file in CIFAR_FILES {
        fs::write(tmp.path().join(file), cifar_batch(3)).unwrap();
    }
    fs::write(tmp.path().join(name), bytes).unwrap();
    tmp
}

#[test]
fn cifar_truncated_batch_is_refused_naming_it_and_its_size() {
    let mut bytes = cifar_batch(3);
    bytes.truncate(2 * RECORD + 100);
    let tmp = cifar_dir("data_batch_2.bin", bytes);
    let size = (2 * RECORD + 100).to_string();
    train_error(
        "cifar10",
        tmp.path(),
        &[
            "data_batch_2.bin",
            &size,
            "2 whole records and 100 bytes more",
        ],
    );
}

#[test]
fn cifar_oversized_batch_is_refused_naming_it() {
    let mut bytes = cifar_batch(3);
    bytes.extend([0u8; 17]);
    let tmp = cifar_dir("test_batch.bin", bytes);
    train_error(
        "cifar10",
        tmp.path(),
        &["test_batch.bin", "3 whole records and 17 bytes more"],
    );
}

#[test]
fn cifar_bad_label_byte_is_refused_naming_file_and_record() {
    let mut bytes = cifar_batch(3);
    bytes[RECORD] = 200;
    let tmp = cifar_dir("data_batch_5.bin", bytes);
    train_error(
        "cifar10",
        tmp.path(),
        &["data_batch_5.bin record 1: label 200 is not a CIFAR-10 class"],
    );
}

#[test]
fn cifar_empty_batch_is_refused_naming_it() {
    let tmp = cifar_dir("data_batch_1.bin", Vec::new());
    train_error("cifar10", tmp.path(), &["data_batch_1.bin is empty"]);
}

// MNIST-style IDX files.

/// Four valid IDX files (two 4x4 images per split), then `name` replaced by `bytes`.
fn idx_dir(name: &str, bytes: Vec<u8>) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for split in ["train", "t10k"] {
        let images = idx_file(0x803, &[2, 4, 4], &[7; 32]);
        fs::write(
            tmp.path().join(format!("{split}-images-idx3-ubyte")),
            images,
        )
        .unwrap();
        let labels = idx_file(0x801, &[2], &[3, 4]);
        fs::write(
            tmp.path().join(format!("{split}-labels-idx1-ubyte")),
            labels,
        )
        .unwrap();
    }
    let _ = fs::remove_file(tmp.path().join(name.trim_end_matches(".gz")));
    fs::write(tmp.path().join(name), bytes).unwrap();
    tmp
}

#[test]
fn idx_truncated_images_are_refused_naming_the_file_and_both_sizes() {
    let tmp = idx_dir(
        "train-images-idx3-ubyte",
        idx_file(0x803, &[2, 4, 4], &[7; 31]),
    );
    train_error(
        "mnist",
        tmp.path(),
        &["train-images-idx3-ubyte: truncated: 47 bytes", "48 bytes"],
    );
}

#[test]
fn idx_oversized_labels_are_refused_naming_the_file() {
    let tmp = idx_dir("t10k-labels-idx1-ubyte", idx_file(0x801, &[2], &[1, 2, 3]));
    train_error(
        "mnist",
        tmp.path(),
        &["t10k-labels-idx1-ubyte: oversized: 11 bytes"],
    );
}

#[test]
fn idx_bad_label_is_refused_naming_the_file_and_the_label() {
    let tmp = idx_dir("t10k-labels-idx1-ubyte", idx_file(0x801, &[2], &[1, 42]));
    train_error(
        "mnist",
        tmp.path(),
        &["t10k-labels-idx1-ubyte: label 1 is 42"],
    );
}

#[test]
fn idx_wrong_magic_and_corrupt_gzip_are_refused_naming_the_file() {
    let tmp = idx_dir("train-labels-idx1-ubyte", idx_file(0x803, &[2], &[1, 2]));
    train_error(
        "mnist",
        tmp.path(),
        &["train-labels-idx1-ubyte: not an IDX file", "0x00000803"],
    );
    let mut gz = gzip(&idx_file(0x803, &[2, 4, 4], &[7; 32]));
    gz.truncate(gz.len() / 2);
    let tmp = idx_dir("t10k-images-idx3-ubyte.gz", gz);
    train_error("mnist", tmp.path(), &["t10k-images-idx3-ubyte.gz"]);
}

#[test]
fn gzipped_idx_claiming_absurd_sizes_is_refused_before_reading() {
    // A tiny file whose header announces 60000 images of 100000x100000 pixels.
    let gz = gzip(&idx_file(0x803, &[60_000, 100_000, 100_000], &[0; 64]));
    let tmp = idx_dir("train-images-idx3-ubyte.gz", gz);
    train_error(
        "mnist",
        tmp.path(),
        &[
            "train-images-idx3-ubyte.gz",
            "60000x100000x100000",
            "more than",
        ],
    );
}

#[test]
fn gzipped_idx_with_endless_trailing_data_stops_counting() {
    // 64 MB of zeros after a 2-label body compress to a few kB: a small "gzip bomb".
    let mut body = vec![1u8, 2];
    body.resize(64 << 20, 0);
    let gz = gzip(&idx_file(0x801, &[2], &body));
    let tmp = idx_dir("t10k-labels-idx1-ubyte.gz", gz);
    train_error(
        "mnist",
        tmp.path(),
        &["t10k-labels-idx1-ubyte.gz: oversized", "at least"],
    );
}

// Image folders.

/// train/ and test/ with two classes of real CIFAR-10 JPEGs (8 and 4 per class).
fn image_folder() -> tempfile::TempDir {
    let source = common::cifar_subset();
    let tmp = tempfile::tempdir().unwrap();
    for (split, count) in [("train", 8), ("test", 4)] {
        for class in ["cat", "ship"] {
            let dir = tmp.path().join(split).join(class);
            fs::create_dir_all(&dir).unwrap();
            for i in 0..count {
                let name = format!("{i:04}.jpg");
                fs::copy(source.join(split).join(class).join(&name), dir.join(&name)).unwrap();
            }
        }
    }
    tmp
}

/// Adds a text file named like a PNG and a JPEG whose data after the header is garbage.
fn add_bad_images(root: &Path) -> (PathBuf, PathBuf) {
    let text = root.join("train/cat/notes.png");
    fs::write(&text, "not a picture").unwrap();
    let mut jpeg = fs::read(root.join("test/ship/0000.jpg")).unwrap();
    let half = jpeg.len() / 2;
    jpeg[half..].fill(0x5a);
    let garbled = root.join("test/ship/0009.jpg");
    fs::write(&garbled, jpeg).unwrap();
    (text, garbled)
}

#[test]
fn folder_with_a_bad_image_is_refused_naming_it() {
    let tmp = image_folder();
    let (text, _) = add_bad_images(tmp.path());
    train_error("folder", tmp.path(), &[s(&text), "cannot decode the image"]);
}

#[test]
fn skip_bad_leaves_bad_images_out_counting_and_naming_them() {
    let tmp = image_folder();
    let (text, garbled) = add_bad_images(tmp.path());
    let run = tmp.path().join("run");
    let args = [
        "train",
        "--dataset",
        "folder",
        "--data-dir",
        s(tmp.path()),
        "--skip-bad",
        "--epochs",
        "1",
        "--latent",
        "8",
        "--channels",
        "4",
        "--out",
        s(&run),
    ];
    let output = common::cae_output(&args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("skipped 2 image files that could not be read"),
        "{stderr}"
    );
    assert!(
        stderr.contains(s(&text)) && stderr.contains(s(&garbled)),
        "{stderr}"
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("data: 16 training and 8 validation images"),
        "{stdout}"
    );

    let model = run.join(cae::run_folder::MODEL_FILE);
    let eval = [
        "eval",
        "--model",
        s(&model),
        "--dataset",
        "folder",
        "--data-dir",
        s(tmp.path()),
    ];
    cae_clean_error(&eval, &[s(&text)]);
    let output = common::cae_output(&[&eval[..], &["--skip-bad", "--json"]].concat());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("skipped 2 image files"), "{stderr}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("\"n\":8"));
}

#[test]
fn folder_without_images_or_classes_is_refused_naming_the_folder() {
    let tmp = image_folder();
    let empty = tmp.path().join("train/dog");
    fs::create_dir(&empty).unwrap();
    fs::write(empty.join("readme.txt"), "no pictures here").unwrap();
    train_error("folder", tmp.path(), &[s(&empty), "holds no images"]);

    let tmp = tempfile::tempdir().unwrap();
    fs::create_dir_all(tmp.path().join("train")).unwrap();
    fs::create_dir_all(tmp.path().join("test")).unwrap();
    train_error("folder", tmp.path(), &["train", "has no class folders"]);

    fs::remove_dir(tmp.path().join("test")).unwrap();
    fs::write(tmp.path().join("test"), "a file, not a folder").unwrap();
    train_error("folder", tmp.path(), &["test is missing"]);
}

// Weight files.

fn small_config() -> ModelConfig {
    ModelConfig {
        latent: 8,
        channels: 2,
        ..ModelConfig::default()
    }
}

fn small_dict() -> StateDict {
    cae::init::seed_state_dict(&small_config(), 0)
}

fn import_error(file: &Path, needles: &[&str]) -> String {
    let out = file.with_file_name("imported.safetensors");
    let args = ["import", "--from", s(file), "--out", s(&out)];
    let stderr = cae_clean_error(&args, &[&[s(file)][..], needles].concat());
    assert!(!out.exists());
    stderr
}

#[test]
fn weights_in_an_unknown_format_are_refused_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, bytes) in [
        ("empty.safetensors", &b""[..]),
        ("notes.pt", b"just some text, not weights"),
        ("image.safetensors", b"\x89PNG\r\n\x1a\n0000000000000"),
    ] {
        let path = tmp.path().join(name);
        fs::write(&path, bytes).unwrap();
        import_error(&path, &["unknown format"]);
    }
}

#[test]
fn truncated_weight_files_are_refused_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let bytes =
        cae::io::weights::safetensors_bytes(&small_dict(), Some(&small_config()), &[]).unwrap();
    let path = tmp.path().join("cut.safetensors");
    fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
    import_error(&path, &["not a valid safetensors file"]);

    let pt = cae::io::torch_pt::pt_bytes(&small_dict()).unwrap();
    let path = tmp.path().join("cut.pt");
    fs::write(&path, &pt[..pt.len() * 2 / 3]).unwrap();
    import_error(&path, &["zip"]);
}

#[test]
fn extra_missing_misshapen_and_non_float_tensors_are_refused_naming_them() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("weights.safetensors");

    let mut extra = small_dict();
    extra.insert(
        "encoder.net.99.weight".into(),
        HostTensor::new(vec![1], vec![0.5]),
    );
    cae::io::weights::save_safetensors(&path, &extra, None, &[]).unwrap();
    import_error(&path, &["unexpected tensor `encoder.net.99.weight`"]);

    let mut missing = small_dict();
    missing.remove("decoder.linear.0.bias");
    cae::io::torch_pt::save_pt(&path.with_extension("pt"), &missing).unwrap();
    import_error(
        &path.with_extension("pt"),
        &["tensor `decoder.linear.0.bias` is missing"],
    );

    let mut misshapen = small_dict();
    misshapen.insert(
        "encoder.net.2.bias".into(),
        HostTensor::new(vec![3], vec![0.0; 3]),
    );
    cae::io::weights::save_safetensors(&path, &misshapen, Some(&small_config()), &[]).unwrap();
    import_error(&path, &["tensor `encoder.net.2.bias` has shape [3]", "[2]"]);

    let zeros = [0u8; 16];
    let view = TensorView::new(Dtype::I64, vec![2], &zeros).unwrap();
    let i64_file = safetensors::serialize([("encoder.net.0.bias", view)], None).unwrap();
    fs::write(&path, i64_file).unwrap();
    import_error(&path, &["tensor `encoder.net.0.bias` has dtype I64"]);
}

/// A model saved after `.half()`, `.bfloat16()` or `.double()` imports as float32, with a note.
#[test]
fn half_bfloat16_and_double_models_import_as_float32_saying_so() {
    let tmp = tempfile::tempdir().unwrap();
    let dict = small_dict();
    for (dtype, name) in [
        (Dtype::F16, "float16"),
        (Dtype::BF16, "bfloat16"),
        (Dtype::F64, "float64"),
    ] {
        let encode = |v: f32| -> Vec<u8> {
            match dtype {
                Dtype::F16 => half::f16::from_f32(v).to_le_bytes().to_vec(),
                Dtype::BF16 => half::bf16::from_f32(v).to_le_bytes().to_vec(),
                _ => f64::from(v).to_le_bytes().to_vec(),
            }
        };
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = dict
            .iter()
            .map(|(k, t)| {
                (
                    k.clone(),
                    t.shape.clone(),
                    t.data.iter().flat_map(|&v| encode(v)).collect(),
                )
            })
            .collect();
        let views = bytes.iter().map(|(k, shape, data)| {
            (
                k.as_str(),
                TensorView::new(dtype, shape.clone(), data).unwrap(),
            )
        });
        let file = tmp.path().join(format!("{name}.safetensors"));
        fs::write(&file, safetensors::serialize(views, None).unwrap()).unwrap();
        let out = tmp.path().join(format!("{name}-imported.safetensors"));
        let output = common::cae_output(&["import", "--from", s(&file), "--out", s(&out)]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stderr}");
        assert!(
            stderr.contains(&format!(
                "note: {} holds {name} weights; converted to float32",
                file.display()
            )),
            "{stderr}"
        );
        let imported = cae::io::weights::read_weights(&out).unwrap();
        assert_eq!(imported.converted_from, None);
        for (key, tensor) in &dict {
            let expected: Vec<f32> = tensor
                .data
                .iter()
                .map(|&v| match dtype {
                    Dtype::F16 => half::f16::from_f32(v).to_f32(),
                    Dtype::BF16 => half::bf16::from_f32(v).to_f32(),
                    _ => v,
                })
                .collect();
            assert_eq!(imported.tensors[key].data, expected, "{name} {key}");
        }
    }
}

#[test]
fn an_absurd_model_configuration_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("huge.safetensors");
    let config = ModelConfig {
        height: 1 << 40,
        width: 1 << 40,
        ..small_config()
    };
    cae::io::weights::save_safetensors(&path, &small_dict(), Some(&config), &[]).unwrap();
    let model = [
        "reconstruct",
        "--model",
        s(&path),
        "--out",
        s(tmp.path()),
        "x.png",
    ];
    cae_clean_error(&model, &[s(&path), "each must be at most 65536"]);
}

#[test]
fn a_corrupt_checkpoint_is_reported_not_overwritten() {
    let tmp = image_folder();
    let run = tmp.path().join("run");
    fs::create_dir(&run).unwrap();
    let checkpoint = run.join(crate::common::CHECKPOINT_FILE);
    fs::write(&checkpoint, b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":").unwrap();
    let args = [
        "train",
        "--dataset",
        "folder",
        "--data-dir",
        s(tmp.path()),
        "--out",
        s(&run),
        "--resume",
    ];
    cae_clean_error(
        &args,
        &[
            "cannot resume the run in",
            s(&checkpoint),
            "is damaged or unreadable",
            "It has no model.safetensors to go on from",
        ],
    );
    assert_eq!(
        fs::read(&checkpoint).unwrap(),
        b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":"
    );
}

#[test]
fn bad_settings_are_reported_before_the_data_is_read() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-such-folder");
    let file = tmp.path().join("a-file");
    fs::write(&file, b"x").unwrap();
    let run = tmp.path().join("run");
    let base = ["train", "--dataset", "folder", "--data-dir", s(&missing)];
    for (extra, needle) in [
        (
            vec!["--latent", "0", "--out", s(&run)],
            "latent size and channels must be positive",
        ),
        (
            vec!["--channels", "0", "--out", s(&run)],
            "latent size and channels must be positive",
        ),
        (
            vec!["--image-size", "30x30", "--out", s(&run)],
            "--image-size 30x30: width and height must be positive multiples of 4",
        ),
        (vec!["--out", s(&file)], "exists and is not a folder"),
    ] {
        let args: Vec<&str> = base.iter().copied().chain(extra).collect();
        let error = cae_clean_error(&args, &[needle]);
        assert!(!error.contains("no-such-folder"), "settings first: {error}");
        assert!(!run.exists());
    }
}

#[test]
fn a_run_that_cannot_fit_in_memory_is_refused_before_allocating() {
    let tmp = image_folder();
    let run = tmp.path().join("run");
    for (flag, value, needles) in [
        (
            "--latent",
            "100000000",
            ["this run needs about", "GiB of memory available"],
        ),
        (
            "--channels",
            "100000",
            ["this run needs about", "GiB of memory available"],
        ),
        (
            "--image-size",
            "40000x40000",
            ["40000x40000", "GiB of memory available"],
        ),
    ] {
        let started = std::time::Instant::now();
        let args = [
            "train",
            "--dataset",
            "folder",
            "--data-dir",
            s(tmp.path()),
            flag,
            value,
            "--epochs",
            "1",
            "--out",
            s(&run),
        ];
        cae_clean_error(&args, &needles);
        let took = started.elapsed();
        assert!(
            took < std::time::Duration::from_secs(30),
            "{flag} {value} took {took:?}"
        );
    }
}

#[test]
fn non_finite_weights_are_refused_naming_the_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    for (value, format) in [(f32::NAN, "safetensors"), (f32::INFINITY, "pt")] {
        let mut dict = small_dict();
        dict.get_mut("encoder.net.0.weight").unwrap().data[5] = value;
        let file = tmp.path().join(format!("bad.{format}"));
        match format {
            "pt" => cae::io::torch_pt::save_pt(&file, &dict).unwrap(),
            _ => cae::io::weights::save_safetensors(&file, &dict, Some(&small_config()), &[])
                .unwrap(),
        }
        let codes = tmp.path().join("codes.npy");
        cae::io::npy::write_f32(&codes, &[1, 8], &[0.5; 8]).unwrap();
        let out = tmp.path().join("decoded");
        cae_clean_error(
            &["decode", "--model", s(&file), s(&codes), "--out", s(&out)],
            &[
                s(&file),
                "tensor `encoder.net.0.weight` holds 1 NaN or infinite value(s)",
            ],
        );
        assert!(!out.exists());
        import_error(&file, &["encoder.net.0.weight", "NaN or infinite"]);
    }
}

#[test]
fn non_finite_codes_are_refused_naming_the_row() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model.safetensors");
    cae::io::weights::save_safetensors(&model, &small_dict(), Some(&small_config()), &[]).unwrap();
    for value in [f32::NAN, f32::NEG_INFINITY] {
        let mut values = vec![0.5; 24];
        values[8 + 3] = value;
        let codes = tmp.path().join("codes.npy");
        cae::io::npy::write_f32(&codes, &[3, 8], &values).unwrap();
        let out = tmp.path().join("decoded");
        cae_clean_error(
            &["decode", "--model", s(&model), s(&codes), "--out", s(&out)],
            &[s(&codes), "row 1 holds NaN or infinite values"],
        );
        assert!(!out.exists(), "nothing is written");
    }
}

/// A `.npy` array as `np.save` writes it, in the dtype `descr` with `bytes` of data.
fn npy_bytes(descr: &str, shape: (usize, usize), bytes: &[u8]) -> Vec<u8> {
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape:?}, }}");
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    out.extend(bytes);
    out
}

/// Codes saved from NumPy as float64 (its default) or float16 decode like float32 ones; a
/// float64 beyond float32's range is refused naming the value.
#[test]
fn float64_and_float16_codes_are_read_as_float32() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model.safetensors");
    cae::io::weights::save_safetensors(&model, &small_dict(), Some(&small_config()), &[]).unwrap();
    let codes: Vec<f32> = (0..16).map(|i| i as f32 * 0.25).collect();
    let reference = tmp.path().join("codes32.npy");
    cae::io::npy::write_f32(&reference, &[2, 8], &codes).unwrap();
    let decoded = |codes: &Path, out: &str| -> Vec<u8> {
        let out = tmp.path().join(out);
        common::cae(&["decode", "--model", s(&model), s(codes), "--out", s(&out)]);
        fs::read(out.join("000001.png")).unwrap()
    };
    let expected = decoded(&reference, "ref");
    let f64s: Vec<u8> = codes
        .iter()
        .flat_map(|&v| f64::from(v).to_le_bytes())
        .collect();
    let f16s: Vec<u8> = codes
        .iter()
        .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
        .collect();
    for (descr, bytes) in [("<f8", f64s), ("<f2", f16s)] {
        let path = tmp.path().join(format!("codes{}.npy", &descr[2..]));
        fs::write(&path, npy_bytes(descr, (2, 8), &bytes)).unwrap();
        assert_eq!(
            cae::io::npy::read_f32(&path).unwrap(),
            (vec![2, 8], codes.clone())
        );
        assert!(decoded(&path, &descr[1..]) == expected, "{descr}");
    }
    let mut huge: Vec<u8> = codes
        .iter()
        .flat_map(|&v| f64::from(v).to_le_bytes())
        .collect();
    huge[3 * 8..4 * 8].copy_from_slice(&1e300f64.to_le_bytes());
    let path = tmp.path().join("huge.npy");
    fs::write(&path, npy_bytes("<f8", (2, 8), &huge)).unwrap();
    let out = tmp.path().join("huge-out");
    cae_clean_error(
        &["decode", "--model", s(&model), s(&path), "--out", s(&out)],
        &[s(&path), "value 3 is 1e300, which float32 cannot hold"],
    );
}

#[test]
fn truncated_codes_are_refused_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model.safetensors");
    cae::io::weights::save_safetensors(&model, &small_dict(), Some(&small_config()), &[]).unwrap();
    let codes = tmp.path().join("codes.npy");
    cae::io::npy::write_f32(&codes, &[2, 8], &[0.5; 16]).unwrap();
    let bytes = fs::read(&codes).unwrap();
    fs::write(&codes, &bytes[..bytes.len() - 5]).unwrap();
    let out = tmp.path().join("decoded");
    cae_clean_error(
        &["decode", "--model", s(&model), s(&codes), "--out", s(&out)],
        &[s(&codes)],
    );
}

#[test]
fn a_checkpoint_whose_adam_moments_do_not_fit_the_model_is_refused() {
    let tmp = image_folder();
    let run = tmp.path().join("run");
    let train = |extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = [
            "train",
            "--dataset",
            "folder",
            "--data-dir",
            s(tmp.path()),
            "--latent",
            "8",
            "--channels",
            "2",
            "--out",
            s(&run),
        ]
        .map(String::from)
        .to_vec();
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    };
    let args = train(&["--epochs", "1"]);
    common::cae(&args.iter().map(String::as_str).collect::<Vec<_>>());

    let checkpoint = run.join(crate::common::CHECKPOINT_FILE);
    let bytes = fs::read(&checkpoint).unwrap();
    let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let extra: Vec<(&str, String)> = metadata
        .metadata()
        .as_ref()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.as_str() != "format" && k.as_str() != cae::io::weights::CONFIG_KEY)
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    let file = cae::io::weights::read_weights(&checkpoint).unwrap();
    let mut tensors = file.tensors;
    for key in [
        "adam.exp_avg/encoder.net.0.bias",
        "adam.exp_avg_sq/encoder.net.0.bias",
    ] {
        tensors.insert(key.into(), HostTensor::new(vec![1], vec![0.0]));
    }
    let crafted =
        cae::io::weights::safetensors_bytes(&tensors, file.config.as_ref(), &extra).unwrap();
    fs::write(&checkpoint, &crafted).unwrap();

    let args = train(&["--epochs", "2", "--resume"]);
    cae_clean_error(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &[
            s(&checkpoint),
            "adam.exp_avg/encoder.net.0.bias` do not match a model parameter",
        ],
    );
    assert_eq!(fs::read(&checkpoint).unwrap(), crafted);
}

// Output.

/// Output paths that are not regular files are written, never replaced: `-` is standard
/// output, a FIFO (and a link to one, as `/dev/stdout` is in a pipe) is streamed into, a link to
/// a file has its target replaced and stays a link; a folder or a dangling link is refused.
#[test]
#[cfg(unix)]
fn outputs_that_are_not_regular_files_are_written_not_replaced() {
    use std::os::unix::fs::{FileTypeExt, symlink};
    use std::process::Command;
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model.safetensors");
    cae::io::weights::save_safetensors(&model, &small_dict(), Some(&small_config()), &[]).unwrap();
    let image = common::cifar_subset().join("test/cat/0000.jpg");
    let encode = |out: &Path| -> Vec<String> {
        [
            "encode",
            "--model",
            s(&model),
            s(&image),
            "--format",
            "csv",
            "--out",
            s(out),
        ]
        .map(String::from)
        .to_vec()
    };
    let run =
        |args: &[String]| common::cae_output(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let header = "source,label,z0,";

    // `-`: the codes alone on stdout, the messages on stderr.
    let output = run(&encode(Path::new("-")));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(stdout.starts_with(header), "{stdout}");
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("wrote 1 codes"));

    // A FIFO, directly and through a link.
    let fifo = tmp.path().join("fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let link_to_fifo = tmp.path().join("stdout-like");
    symlink(&fifo, &link_to_fifo).unwrap();
    for out in [&fifo, &link_to_fifo] {
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || fs::read_to_string(fifo).unwrap())
        };
        let output = run(&encode(out));
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let streamed = reader.join().unwrap();
        assert!(streamed.starts_with(header), "{streamed}");
        assert!(fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
    }
    assert!(
        fs::symlink_metadata(&link_to_fifo)
            .unwrap()
            .file_type()
            .is_symlink()
    );

    // A link to a regular file: the file gets the codes, the link stays.
    let target = tmp.path().join("codes.csv");
    fs::write(&target, "old").unwrap();
    let link = tmp.path().join("latest.csv");
    symlink(&target, &link).unwrap();
    let output = run(&encode(&link));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(fs::read_to_string(&target).unwrap().starts_with(header));

    // A folder and a dangling link are refused, and left as they are.
    let folder = tmp.path().join("folder");
    fs::create_dir(&folder).unwrap();
    let args = encode(&folder);
    cae_clean_error(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &[s(&folder), "is a folder"],
    );
    assert!(folder.is_dir());
    let dangling = tmp.path().join("dangling.csv");
    symlink(tmp.path().join("missing/codes.csv"), &dangling).unwrap();
    let args = encode(&dangling);
    cae_clean_error(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &[s(&dangling), "does not exist"],
    );
    assert!(
        fs::symlink_metadata(&dangling)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    // A file in a folder that does not exist, and a file where an output folder should go.
    let args = encode(&tmp.path().join("missing").join("codes.csv"));
    cae_clean_error(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &["the folder", "missing", "does not exist"],
    );
    let file = tmp.path().join("a-file");
    fs::write(&file, "kept").unwrap();
    cae_clean_error(
        &[
            "reconstruct",
            "--model",
            s(&model),
            s(&image),
            "--out",
            s(&file),
        ],
        &[s(&file), "exists and is not a folder"],
    );
    assert_eq!(fs::read_to_string(&file).unwrap(), "kept");
}

/// Writing into a pipe whose reader is gone ends cae by SIGPIPE, quietly, as command-line tools
/// do (Rust programs otherwise panic with "failed printing to stdout").
#[test]
#[cfg(unix)]
fn closed_output_pipe_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let output = common::cae_command(&["--help"])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        output.status.signal(),
        Some(13),
        "{:?}: {stderr}",
        output.status
    );
}

/// A dataset whose images are not the model's shape is refused, naming the model, the data and
/// both shapes, by the commands that read a dataset for a model.
#[test]
fn a_dataset_of_another_image_shape_is_refused_naming_both_shapes() {
    let tmp = tempfile::tempdir().unwrap();
    let gray = ModelConfig {
        in_channels: 1,
        height: 28,
        width: 28,
        ..small_config()
    };
    let model = tmp.path().join("gray.safetensors");
    let dict = cae::init::seed_state_dict(&gray, 0);
    cae::io::weights::save_safetensors(&model, &dict, Some(&gray), &[]).unwrap();
    let data = common::cifar_subset();
    let takes = "the model takes 1x28x28 images";
    let out = tmp.path().join("codes.npy");
    let dataset = ["--dataset", "folder", "--data-dir", s(&data)];
    // An image folder is read at the model's size, so only the channels differ...
    let encode = [
        &["encode", "--model", s(&model), "--out", s(&out)][..],
        &dataset,
    ]
    .concat();
    let has = "the dataset has 3x28x28";
    cae_clean_error(&encode, &[takes, has, s(&model), s(&data)]);
    let eval = [&["eval", "--model", s(&model)][..], &dataset].concat();
    cae_clean_error(&eval, &[takes, has, s(&model)]);
    // ...unless --no-resize keeps the images as they are.
    let as_they_are = [&encode[..], &["--no-resize"]].concat();
    cae_clean_error(&as_they_are, &[takes, "the dataset has 3x32x32", s(&model)]);
    assert!(!out.exists());

    // A colour model of that size encodes the folder's 32x32 images resized to 28x28.
    let colour = ModelConfig {
        in_channels: 3,
        ..gray
    };
    let dict = cae::init::seed_state_dict(&colour, 0);
    cae::io::weights::save_safetensors(&model, &dict, Some(&colour), &[]).unwrap();
    common::cae(&[&encode[..], &["--limit", "4"]].concat());
    assert_eq!(cae::io::npy::read_f32(&out).unwrap().0, [4, 8]);
}
