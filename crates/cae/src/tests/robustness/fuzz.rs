//! Fuzzing of the readers of untrusted files with proptest: valid CIFAR-10 batches, IDX files,
//! safetensors and `.pt` weights, checkpoints, images and `.npy` codes are mutated (bits flipped,
//! bytes set to boundary values, cut, extended, spliced) and read back. Every reader must return either a
//! consistent result or an error naming the file; a panic fails the target, and proptest
//! shrinks it to the fewest mutations that still fail.
//!
//! `CAE_FUZZ_CASES` (default 512) sets the cases per round, `CAE_FUZZ_SECONDS` (default 0) keeps
//! a target going in rounds until that many seconds have passed, and `CAE_FUZZ_SEED` replays a
//! run (every run prints its seed). A long run of one target:
//!
//! ```text
//! CAE_FUZZ_SECONDS=600 cargo test --release -p cae --lib fuzz_idx -- --nocapture
//! ```

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::data::{cifar, folder, idx};
use crate::model::ModelConfig;
use crate::tests::fixtures::{gzip, idx_file};
use burn::tensor::Device;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngSeed, TestRunner};

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).map_or(default, |v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a number"))
    })
}

/// One change to a file's bytes; positions are fractions of the current length.
#[derive(Debug, Clone)]
enum Mutation {
    FlipBit(Index, u8),
    SetByte(Index, u8),
    /// Overwrites 1, 2, 4 or 8 bytes with a boundary value, little- or big-endian.
    Boundary(Index, u64, u8, bool),
    Truncate(Index),
    Append(Vec<u8>),
    Insert(Index, Vec<u8>),
    Remove(Index, u16),
    /// Copies a stretch of the file over another place.
    Splice(Index, Index, u16),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let boundary = prop::sample::select(vec![
        0,
        1,
        0x7f,
        0x80,
        0xff,
        0x100,
        0x7fff,
        0xffff,
        0x7fff_ffff,
        0x8000_0000,
        0xffff_ffff,
        1 << 40,
        u64::MAX,
    ]);
    let bytes = prop::collection::vec(any::<u8>(), 1..64);
    prop_oneof![
        4 => (any::<Index>(), 0..8u8).prop_map(|(at, bit)| Mutation::FlipBit(at, bit)),
        3 => (any::<Index>(), any::<u8>()).prop_map(|(at, v)| Mutation::SetByte(at, v)),
        3 => (any::<Index>(), boundary, prop::sample::select(vec![1u8, 2, 4, 8]), any::<bool>())
            .prop_map(|(at, v, width, big)| Mutation::Boundary(at, v, width, big)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => bytes.clone().prop_map(Mutation::Append),
        1 => (any::<Index>(), bytes).prop_map(|(at, b)| Mutation::Insert(at, b)),
        1 => (any::<Index>(), 1..512u16).prop_map(|(at, n)| Mutation::Remove(at, n)),
        1 => (any::<Index>(), any::<Index>(), 1..256u16)
            .prop_map(|(from, to, n)| Mutation::Splice(from, to, n)),
    ]
}

fn apply(bytes: &mut Vec<u8>, mutation: &Mutation) {
    let len = bytes.len();
    let at = |i: &Index| if len == 0 { 0 } else { i.index(len) };
    match mutation {
        Mutation::FlipBit(i, bit) if len > 0 => bytes[at(i)] ^= 1 << bit,
        Mutation::SetByte(i, v) if len > 0 => bytes[at(i)] = *v,
        Mutation::Boundary(i, v, width, big) => {
            let raw = if *big {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            };
            let width = usize::from(*width);
            let field = if *big {
                &raw[8 - width..]
            } else {
                &raw[..width]
            };
            let start = at(i).min(len.saturating_sub(width));
            for (k, b) in field.iter().enumerate().take(len - start) {
                bytes[start + k] = *b;
            }
        }
        Mutation::Truncate(i) => bytes.truncate(at(i)),
        Mutation::Append(extra) => bytes.extend(extra),
        Mutation::Insert(i, extra) => {
            let at = at(i);
            bytes.splice(at..at, extra.iter().copied());
        }
        Mutation::Remove(i, n) => {
            let start = at(i);
            bytes.drain(start..(start + usize::from(*n)).min(len));
        }
        Mutation::Splice(from, to, n) if len > 0 => {
            let (from, to) = (at(from), at(to));
            let n = usize::from(*n).min(len - from).min(len - to);
            bytes.copy_within(from..from + n, to);
        }
        _ => {}
    }
}

/// Mutated copies of one of `seeds` (by index), or now and then plain random bytes.
fn inputs(seeds: usize) -> impl Strategy<Value = (usize, Vec<Mutation>, Option<Vec<u8>>)> {
    let mutated =
        (0..seeds, prop::collection::vec(mutation(), 1..6)).prop_map(|(s, m)| (s, m, None));
    let random = (0..seeds, prop::collection::vec(any::<u8>(), 0..300))
        .prop_map(|(s, bytes)| (s, Vec::new(), Some(bytes)));
    prop_oneof![9 => mutated, 1 => random]
}

fn input_bytes(seeds: &[Vec<u8>], input: &(usize, Vec<Mutation>, Option<Vec<u8>>)) -> Vec<u8> {
    let (seed, mutations, random) = input;
    if let Some(bytes) = random {
        return bytes.clone();
    }
    let mut bytes = seeds[*seed].clone();
    for mutation in mutations {
        apply(&mut bytes, mutation);
    }
    bytes
}

/// Runs `check` on mutations of `seeds` for `CAE_FUZZ_CASES` cases, in rounds until
/// `CAE_FUZZ_SECONDS` have passed. `check` gets the seed index and the bytes, and says whether
/// the reader accepted them (for the closing count).
fn fuzz(target: &str, seeds: &[Vec<u8>], check: impl Fn(usize, &[u8]) -> bool) {
    let cases = env_number("CAE_FUZZ_CASES", 512) as u32;
    let budget = Duration::from_secs(env_number("CAE_FUZZ_SECONDS", 0));
    let first_seed = env_number("CAE_FUZZ_SEED", rand::random());
    let started = Instant::now();
    let mut total = 0u64;
    let accepted = std::cell::Cell::new(0u64);
    for round in 0.. {
        let seed = first_seed.wrapping_add(round);
        let config = Config {
            cases,
            failure_persistence: None,
            rng_seed: RngSeed::Fixed(seed),
            ..Config::default()
        };
        let result = TestRunner::new(config).run(&inputs(seeds.len()), |input| {
            if check(input.0, &input_bytes(seeds, &input)) {
                accepted.set(accepted.get() + 1);
            }
            Ok(())
        });
        if let Err(failure) = result {
            panic!("fuzz {target} failed (replay with CAE_FUZZ_SEED={seed}): {failure}");
        }
        total += u64::from(cases);
        if started.elapsed() >= budget {
            break;
        }
    }
    eprintln!(
        "fuzz {target}: {total} cases ({} read as valid, the rest refused) in {:.1} s without a \
         finding (CAE_FUZZ_SEED={first_seed})",
        accepted.get(),
        started.elapsed().as_secs_f64()
    );
}

/// Checks that `result` is valid by `check_ok`, or an error naming `path`; returns whether it
/// was valid.
fn judge<T>(result: anyhow::Result<T>, path: &Path, check_ok: impl FnOnce(T)) -> bool {
    match result {
        Ok(value) => {
            check_ok(value);
            true
        }
        Err(error) => {
            let message = format!("{error:#}");
            let name = path.file_name().unwrap().to_string_lossy();
            assert!(
                message.contains(&*name),
                "the error does not name {name}: {message}"
            );
            false
        }
    }
}

// CIFAR-10 binary batches.

fn cifar_record(label: u8, fill: u8) -> Vec<u8> {
    let mut record = vec![label];
    record.extend((0..3072u32).map(|i| (i as u8).wrapping_mul(fill)));
    record
}

#[test]
fn fuzz_cifar_reader() {
    let tmp = tempfile::tempdir().unwrap();
    let files: Vec<&str> = cifar::TRAIN_FILES
        .iter()
        .copied()
        .chain([cifar::TEST_FILE])
        .collect();
    let seeds: Vec<Vec<u8>> = (0..files.len() as u8)
        .map(|i| [cifar_record(i, 3), cifar_record(9 - i, 5)].concat())
        .collect();
    for (file, bytes) in files.iter().zip(&seeds) {
        fs::write(tmp.path().join(file), bytes).unwrap();
    }
    fuzz("cifar", &seeds, |which, bytes| {
        let path = tmp.path().join(files[which]);
        fs::write(&path, bytes).unwrap();
        let valid = judge(cifar::load(tmp.path()), &path, |splits| {
            for set in [&splits.train, &splits.test] {
                assert_eq!(set.pixels.len(), set.len() * 3072);
                assert_eq!(set.sources.len(), set.len());
                assert!(set.labels.iter().all(|&l| l < 10));
            }
        });
        fs::write(&path, &seeds[which]).unwrap();
        valid
    });
}

// IDX (MNIST) files, plain and gzipped.

#[test]
fn fuzz_idx_reader() {
    let tmp = tempfile::tempdir().unwrap();
    let names = idx::FILES;
    let plain: Vec<Vec<u8>> = vec![
        idx_file(0x803, &[3, 4, 5], &[9; 60]),
        idx_file(0x801, &[3], &[0, 5, 9]),
        idx_file(0x803, &[2, 4, 5], &[200; 40]),
        idx_file(0x801, &[2], &[1, 2]),
    ];
    for (name, bytes) in names.iter().zip(&plain) {
        fs::write(tmp.path().join(name), bytes).unwrap();
    }
    // Seeds 0..4 are the plain files, 4..8 the same gzipped (mutating the compressed stream),
    // 8..12 again plain but written gzipped after the mutation (a valid stream of bad content).
    let mut seeds = plain.clone();
    seeds.extend(plain.iter().map(|b| gzip(b)));
    seeds.extend(plain.iter().cloned());
    fuzz("idx", &seeds, |which, bytes| {
        let plain_path = tmp.path().join(names[which % 4]);
        let path = if which < 4 {
            plain_path.clone()
        } else {
            plain_path.with_file_name(format!("{}.gz", names[which % 4]))
        };
        let content = if which >= 8 {
            gzip(bytes)
        } else {
            bytes.to_vec()
        };
        if which >= 4 {
            fs::remove_file(&plain_path).unwrap();
        }
        fs::write(&path, content).unwrap();
        let valid = judge(
            idx::load(tmp.path(), &idx::MNIST_CLASSES),
            &path,
            |splits| {
                for set in [&splits.train, &splits.test] {
                    assert_eq!(set.pixels.len(), set.len() * set.height * set.width);
                    assert!(set.labels.iter().all(|&l| l < 10));
                }
            },
        );
        if which >= 4 {
            fs::remove_file(&path).unwrap();
        }
        fs::write(&plain_path, &plain[which % 4]).unwrap();
        valid
    });
}

// Weight files.

fn small_config() -> ModelConfig {
    ModelConfig {
        latent: 3,
        channels: 1,
        in_channels: 1,
        height: 4,
        width: 4,
        variational: false,
    }
}

fn fuzz_weights(target: &str, name: &str, seeds: &[Vec<u8>]) {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join(name);
    let device = Device::flex();
    fuzz(target, seeds, |_, bytes| {
        fs::write(&path, bytes).unwrap();
        judge(
            crate::io::weights::load_model(&path, &device),
            &path,
            |(_, config)| config.validate().unwrap(),
        )
    });
}

/// The float precisions a weight file may hold besides float32: safetensors dtype, torch
/// storage class, and the little-endian bytes of a value.
type Precision = (safetensors::Dtype, &'static str, fn(f32) -> Vec<u8>);

const OTHER_PRECISIONS: [Precision; 3] = [
    (safetensors::Dtype::F16, "HalfStorage", |v| {
        half::f16::from_f32(v).to_le_bytes().to_vec()
    }),
    (safetensors::Dtype::BF16, "BFloat16Storage", |v| {
        half::bf16::from_f32(v).to_le_bytes().to_vec()
    }),
    (safetensors::Dtype::F64, "DoubleStorage", |v| {
        f64::from(v).to_le_bytes().to_vec()
    }),
];

#[test]
fn fuzz_safetensors_reader() {
    let config = small_config();
    let dict = crate::init::seed_state_dict(&config, 1);
    let mut seeds = vec![crate::io::weights::safetensors_bytes(&dict, Some(&config), &[]).unwrap()];
    for (dtype, _, encode) in OTHER_PRECISIONS {
        let data: Vec<(&String, Vec<usize>, Vec<u8>)> = dict
            .iter()
            .map(|(k, t)| {
                (
                    k,
                    t.shape.clone(),
                    t.data.iter().flat_map(|&v| encode(v)).collect(),
                )
            })
            .collect();
        let views = data.iter().map(|(k, shape, bytes)| {
            (
                k.as_str(),
                safetensors::tensor::TensorView::new(dtype, shape.clone(), bytes).unwrap(),
            )
        });
        seeds.push(safetensors::serialize(views, None).unwrap());
    }
    fuzz_weights("safetensors", "model.safetensors", &seeds);
}

#[test]
fn fuzz_pt_reader() {
    let dict = crate::init::seed_state_dict(&small_config(), 2);
    let float = crate::io::torch_pt::pt_bytes(&dict).unwrap();
    let mut seeds = vec![float.clone()];
    seeds.extend(OTHER_PRECISIONS.map(|(_, class, encode)| pt_in_precision(&float, class, encode)));
    fuzz_weights("pt", "model.pt", &seeds);
}

/// A float32 `.pt` file rewritten as `torch.save` writes the model after `.half()` and the like:
/// the pickle names `torch.<class>` instead of `torch.FloatStorage`, and every storage holds the
/// values in that precision.
fn pt_in_precision(float: &[u8], class: &str, encode: fn(f32) -> Vec<u8>) -> Vec<u8> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(float)).unwrap();
    let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for index in 0..archive.len() {
        let mut record = archive.by_index(index).unwrap();
        let name = record.name().unwrap().into_owned();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut record, &mut bytes).unwrap();
        let bytes = if name.ends_with("data.pkl") {
            let pickle = String::from_utf8_lossy(&bytes).into_owned();
            assert!(pickle.contains("FloatStorage"), "a float32 pickle");
            replace_bytes(&bytes, b"FloatStorage", class.as_bytes())
        } else if name.contains("/data/") {
            bytes
                .chunks_exact(4)
                .flat_map(|b| encode(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
                .collect()
        } else {
            bytes
        };
        out.start_file(name, options).unwrap();
        out.write_all(&bytes).unwrap();
    }
    out.finish().unwrap().into_inner()
}

fn replace_bytes(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i..].starts_with(from) {
            out.extend(to);
            i += from.len();
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

/// A real checkpoint: one epoch of a tiny model on four 8x8 pictures, trained by the Trainer
/// that `cae train` runs.
fn checkpoint_seed(dir: &Path) -> Vec<u8> {
    for (split, name) in [("train", "a.png"), ("train", "b.png"), ("test", "c.png")] {
        let folder = dir.join("images").join(split).join("class");
        fs::create_dir_all(&folder).unwrap();
        let picture = image::GrayImage::from_fn(8, 8, |x, y| image::Luma([(x * 30 + y) as u8]));
        picture.save(folder.join(name)).unwrap();
    }
    let mut settings =
        crate::TrainSettings::tutorial(crate::DatasetKind::Folder, dir.join("images"));
    settings.model.latent = 2;
    settings.model.channels = 1;
    settings.schedule.epochs = 1;
    let data = &settings.data;
    let splits = crate::load_dataset(data.dataset, &data.data_dir, settings.run.seed).unwrap();
    let run = dir.join("run");
    crate::Trainer::start(&settings, splits, &run, Default::default(), &mut ())
        .unwrap()
        .run(&mut ())
        .unwrap();
    fs::read(run.join(crate::run_folder::CHECKPOINT_FILE)).unwrap()
}

#[test]
fn fuzz_checkpoint_reader() {
    let tmp = tempfile::tempdir().unwrap();
    let seed = checkpoint_seed(tmp.path());
    let path = tmp.path().join("checkpoint.safetensors");
    let device = Device::flex();
    fuzz("checkpoint", &[seed], |_, bytes| {
        fs::write(&path, bytes).unwrap();
        judge(
            crate::run_folder::checkpoint::load(&path, &device),
            &path,
            |restored| restored.config.validate().unwrap(),
        )
    });
}

// Images.

fn encoded(image: &image::DynamicImage, format: image::ImageFormat) -> Vec<u8> {
    let mut bytes = Vec::new();
    image
        .write_to(&mut std::io::Cursor::new(&mut bytes), format)
        .unwrap();
    bytes
}

fn image_seeds() -> Vec<Vec<u8>> {
    use image::{DynamicImage, ImageFormat, Rgb, RgbImage};
    let rgb = RgbImage::from_fn(9, 7, |x, y| Rgb([(x * 28) as u8, (y * 36) as u8, 128]));
    let rgb = DynamicImage::ImageRgb8(rgb);
    let gray_alpha = DynamicImage::ImageLumaA8(rgb.to_luma_alpha8());
    vec![
        encoded(&rgb, ImageFormat::Png),
        encoded(&gray_alpha, ImageFormat::Png),
        encoded(&rgb, ImageFormat::Jpeg),
        encoded(&rgb, ImageFormat::Bmp),
        fs::read(real_jpeg()).unwrap(),
    ]
}

/// A real CIFAR-10 JPEG when the shared images are at hand, else a generated one.
fn real_jpeg() -> PathBuf {
    let dir = std::env::var_os("CAE_CIFAR_JPG")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::tests::fixtures::scratch_dir().join("cifar10-jpg"));
    let path = dir.join("test/cat/0000.jpg");
    if path.is_file() {
        return path;
    }
    let scratch = crate::tests::fixtures::scratch_dir();
    fs::create_dir_all(&scratch).unwrap();
    let fallback = scratch.join("fuzz-fallback.jpg");
    let image = image::RgbImage::from_fn(32, 32, |x, y| {
        image::Rgb([(x * 8) as u8, (y * 8) as u8, 60])
    });
    image.save(&fallback).unwrap();
    fallback
}

#[test]
fn fuzz_image_decoder() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("image.png");
    fuzz("image", &image_seeds(), |which, bytes| {
        fs::write(&path, bytes).unwrap();
        let channels = if which % 2 == 0 { 3 } else { 1 };
        let size = (which % 3 == 0).then_some((8, 8));
        let decoded = folder::decode_image(&path, channels, size);
        judge(decoded, &path, |(width, height, pixels)| {
            assert_eq!(pixels.len(), channels * width as usize * height as usize);
            if let Some(size) = size {
                assert_eq!((width, height), size);
            }
        })
    });
}

// Latent codes.

#[test]
fn fuzz_npy_reader() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("codes.npy");
    crate::io::npy::write_f32(&path, &[3, 4], &[0.25; 12]).unwrap();
    let float32 = fs::read(&path).unwrap();
    // The same array as float64 and float16: the header names the dtype, the data is wider or
    // narrower (the header's padding absorbs the one-character change).
    let header_end = float32.len() - 12 * 4;
    let retyped = |descr: &[u8], value: &[u8]| -> Vec<u8> {
        let mut bytes = replace_bytes(&float32[..header_end], b"<f4", descr);
        bytes.extend(value.repeat(12));
        bytes
    };
    let seeds = [
        float32.clone(),
        retyped(b"<f8", &0.25f64.to_le_bytes()),
        retyped(b"<f2", &half::f16::from_f32(0.25).to_le_bytes()),
    ];
    for seed in &seeds[1..] {
        fs::write(&path, seed).unwrap();
        assert_eq!(crate::io::npy::read_f32(&path).unwrap().1, [0.25; 12]);
    }
    fuzz("npy", &seeds, |_, bytes| {
        fs::write(&path, bytes).unwrap();
        judge(crate::io::npy::read_f32(&path), &path, |(shape, values)| {
            assert_eq!(shape.iter().product::<usize>(), values.len())
        })
    });
}
