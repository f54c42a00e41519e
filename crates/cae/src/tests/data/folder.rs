//! The image-folder reader: behaviour on small synthetic folders, and the JPEG decoder against
//! the pixels Pillow decoded for the PyTorch reference.

use crate::tests::fixtures as common;

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::data::cifar::CLASSES;
use crate::data::folder::{self, FolderOptions};
use flate2::write::ZlibEncoder;
use flate2::{Compression, Crc};
use image::imageops::{self, FilterType};
use image::{DynamicImage, GrayAlphaImage, GrayImage, Luma, LumaA, Rgb, RgbImage, Rgba, RgbaImage};

/// A recognisable image: its pixels depend on `seed` and the position.
fn picture(width: u32, height: u32, seed: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        Rgb([
            (x * 8 + seed) as u8,
            (y * 8 + seed * 3) as u8,
            (x + y + seed * 5) as u8,
        ])
    })
}

fn planar(image: &RgbImage) -> Vec<u8> {
    (0..3)
        .flat_map(|c| image.pixels().map(move |p| p[c]))
        .collect()
}

fn save(root: &Path, relative: &str, image: &RgbImage) {
    let path = root.join(relative);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    image.save(&path).unwrap();
}

/// train/{ant,bee,cat} with 4 PNGs each (written in scrambled order) and test/{ant,cat} with 2.
fn synthetic_root() -> (tempfile::TempDir, HashMap<String, RgbImage>) {
    let tmp = tempfile::tempdir().unwrap();
    let mut images = HashMap::new();
    let mut seed = 0;
    for (split, classes, count) in [
        ("train", ["cat", "ant", "bee"].as_slice(), 4),
        ("test", &["cat", "ant"], 2),
    ] {
        for class in classes {
            for i in (0..count).rev() {
                let relative = format!("{split}/{class}/{i:02}.png");
                let image = picture(8, 6, seed);
                save(tmp.path(), &relative, &image);
                images.insert(relative, image);
                seed += 1;
            }
        }
    }
    fs::write(tmp.path().join("train/ant/notes.txt"), "not an image").unwrap();
    (tmp, images)
}

fn load_error(root: &Path) -> String {
    format!("{:#}", folder::load(root, 1).expect_err("load should fail"))
}

#[test]
fn load_reads_sorted_classes_files_and_planar_pixels() {
    let (tmp, images) = synthetic_root();
    let splits = folder::load(tmp.path(), 7).unwrap();

    let test = &splits.test;
    assert_eq!(test.class_names, ["ant", "bee", "cat"]);
    assert_eq!((test.channels, test.height, test.width), (3, 6, 8));
    assert_eq!(
        test.sources,
        [
            "test/ant/00.png",
            "test/ant/01.png",
            "test/cat/00.png",
            "test/cat/01.png"
        ]
    );
    assert_eq!(test.labels, [0, 0, 2, 2]);
    for set in [&splits.train, &splits.test] {
        for (i, source) in set.sources.iter().enumerate() {
            assert_eq!(set.image(i), planar(&images[source]).as_slice(), "{source}");
        }
    }
    assert_eq!(splits.train.len(), 12);
    assert_eq!(splits.train.class_names, test.class_names);
}

#[test]
fn train_is_shuffled_deterministically_and_test_is_not() {
    let (tmp, _) = synthetic_root();
    let a = folder::load(tmp.path(), 7).unwrap();
    let b = folder::load(tmp.path(), 7).unwrap();
    let c = folder::load(tmp.path(), 8).unwrap();

    assert_eq!(a.train.sources, b.train.sources);
    assert_eq!(a.train.pixels, b.train.pixels);
    assert_ne!(a.train.sources, c.train.sources);
    assert_eq!(a.test.sources, c.test.sources);

    let mut sorted = a.train.sources.clone();
    sorted.sort();
    assert_ne!(
        sorted, a.train.sources,
        "the training list should not stay sorted"
    );
    for (source, &label) in a.train.sources.iter().zip(&a.train.labels) {
        let class = source.split('/').nth(1).unwrap();
        assert_eq!(a.train.class_names[usize::from(label)], class, "{source}");
    }
}

#[test]
fn shuffle_is_a_fixed_permutation_of_the_seed() {
    let mut items: Vec<u32> = (0..10).collect();
    folder::shuffle(&mut items, 42);
    let mut again: Vec<u32> = (0..10).collect();
    folder::shuffle(&mut again, 42);
    assert_eq!(items, again);
    let mut sorted = items.clone();
    sorted.sort();
    assert_eq!(sorted, (0..10).collect::<Vec<_>>());
}

#[test]
fn extensions_are_case_insensitive_and_images_become_rgb() {
    let tmp = tempfile::tempdir().unwrap();
    save(tmp.path(), "train/a/x.PNG", &picture(4, 4, 1));
    save(tmp.path(), "train/a/y.bmp", &picture(4, 4, 2));
    let gray = GrayImage::from_fn(4, 4, |x, y| Luma([(x * 40 + y) as u8]));
    gray.save_with_format(tmp.path().join("train/a/z.Png"), image::ImageFormat::Png)
        .unwrap();
    save(tmp.path(), "test/a/t.JPEG", &picture(4, 4, 3));

    let splits = folder::load(tmp.path(), 0).unwrap();

    let mut sources = splits.train.sources.clone();
    sources.sort();
    assert_eq!(sources, ["train/a/x.PNG", "train/a/y.bmp", "train/a/z.Png"]);
    let z = splits
        .train
        .sources
        .iter()
        .position(|s| s.ends_with("z.Png"))
        .unwrap();
    let image = splits.train.image(z);
    let expected: Vec<u8> = gray.as_raw().repeat(3);
    assert_eq!(image, expected.as_slice());
    assert_eq!(splits.test.sources, ["test/a/t.JPEG"]);
}

#[test]
fn missing_test_folder_is_an_error() {
    let (tmp, _) = synthetic_root();
    fs::remove_dir_all(tmp.path().join("test")).unwrap();
    let error = load_error(tmp.path());
    assert!(error.contains("test is missing"), "{error}");
}

#[test]
fn missing_train_folder_is_an_error() {
    let (tmp, _) = synthetic_root();
    fs::remove_dir_all(tmp.path().join("train")).unwrap();
    let error = load_error(tmp.path());
    assert!(error.contains("train is missing"), "{error}");
}

#[test]
fn image_of_another_size_is_resized_to_the_first_training_image() {
    let (tmp, _) = synthetic_root();
    let odd = picture(5, 5, 0);
    save(tmp.path(), "test/cat/02.png", &odd);
    let splits = folder::load(tmp.path(), 1).unwrap();
    let test = &splits.test;
    assert_eq!((test.channels, test.height, test.width), (3, 6, 8));
    let index = test
        .sources
        .iter()
        .position(|s| s == "test/cat/02.png")
        .unwrap();
    let expected = imageops::resize(&odd, 8, 6, FilterType::Triangle);
    assert_eq!(test.image(index), planar(&expected).as_slice());
}

#[test]
fn image_size_option_resizes_every_image() {
    let (tmp, images) = synthetic_root();
    let options = FolderOptions {
        channels: None,
        image_size: Some((4, 3)),
    };
    let splits = folder::load_with(tmp.path(), 7, &options).unwrap();
    for set in [&splits.train, &splits.test] {
        assert_eq!((set.channels, set.height, set.width), (3, 3, 4));
        for (i, source) in set.sources.iter().enumerate() {
            let expected = imageops::resize(&images[source], 4, 3, FilterType::Triangle);
            assert_eq!(set.image(i), planar(&expected).as_slice(), "{source}");
        }
    }
}

#[test]
fn one_channel_option_reads_luma() {
    let (tmp, images) = synthetic_root();
    let options = FolderOptions {
        channels: Some(1),
        image_size: None,
    };
    let splits = folder::load_with(tmp.path(), 7, &options).unwrap();
    for set in [&splits.train, &splits.test] {
        assert_eq!((set.channels, set.height, set.width), (1, 6, 8));
        for (i, source) in set.sources.iter().enumerate() {
            let expected = luma(&images[source]);
            assert_eq!(set.image(i), expected.as_raw().as_slice(), "{source}");
        }
    }
}

#[test]
fn unsupported_options_are_errors() {
    let (tmp, _) = synthetic_root();
    for (channels, image_size, message) in [
        (Some(2), None, "2 channels requested"),
        (Some(4), None, "4 channels requested"),
        (None, Some((0, 5)), "image size 0x5 requested"),
    ] {
        let options = FolderOptions {
            channels,
            image_size,
        };
        let error = format!(
            "{:#}",
            folder::load_with(tmp.path(), 0, &options).unwrap_err()
        );
        assert!(error.contains(message), "{error}");
    }
}

/// The `image` crate's RGB to gray conversion, the reference for 1-channel reads.
fn luma(image: &RgbImage) -> GrayImage {
    DynamicImage::ImageRgb8(image.clone()).to_luma8()
}

fn gray_picture() -> GrayImage {
    GrayImage::from_fn(5, 3, |x, y| Luma([(x * 50 + y * 7) as u8]))
}

/// Decodes `path` to 3 and to 1 channels and compares with the expected RGB and gray images.
fn assert_decodes_to(path: &Path, rgb: &RgbImage, gray: &GrayImage) {
    let (w, h, pixels) = folder::decode_image(path, 3, None).unwrap();
    assert_eq!((w, h), rgb.dimensions());
    assert_eq!(pixels, planar(rgb), "{} as RGB", path.display());
    let (w, h, pixels) = folder::decode_image(path, 1, None).unwrap();
    assert_eq!((w, h), gray.dimensions());
    assert_eq!(&pixels, gray.as_raw(), "{} as gray", path.display());
}

#[test]
fn gray_png_converts_to_three_and_one_channels() {
    let tmp = tempfile::tempdir().unwrap();
    let gray = gray_picture();
    let path = tmp.path().join("gray.png");
    gray.save(&path).unwrap();
    let rgb = RgbImage::from_fn(5, 3, |x, y| {
        let v = gray.get_pixel(x, y)[0];
        Rgb([v, v, v])
    });
    assert_decodes_to(&path, &rgb, &gray);
}

#[test]
fn gray_alpha_png_drops_the_alpha() {
    let tmp = tempfile::tempdir().unwrap();
    let gray = gray_picture();
    let with_alpha = GrayAlphaImage::from_fn(5, 3, |x, y| {
        LumaA([gray.get_pixel(x, y)[0], (x * 60) as u8])
    });
    let path = tmp.path().join("gray_alpha.png");
    with_alpha.save(&path).unwrap();
    let rgb = RgbImage::from_fn(5, 3, |x, y| {
        let v = gray.get_pixel(x, y)[0];
        Rgb([v, v, v])
    });
    assert_decodes_to(&path, &rgb, &gray);
}

#[test]
fn rgba_png_drops_the_alpha() {
    let tmp = tempfile::tempdir().unwrap();
    let rgb = picture(6, 4, 9);
    let rgba = RgbaImage::from_fn(6, 4, |x, y| {
        let [r, g, b] = rgb.get_pixel(x, y).0;
        Rgba([r, g, b, (x * 40 + y) as u8])
    });
    let path = tmp.path().join("rgba.png");
    rgba.save(&path).unwrap();
    assert_decodes_to(&path, &rgb, &luma(&rgb));
}

#[test]
fn palette_png_expands_its_palette() {
    let tmp = tempfile::tempdir().unwrap();
    let palette = [[255, 0, 0], [0, 128, 255], [10, 20, 30]];
    let indices = [[0, 1, 2, 1], [2, 2, 0, 0], [1, 0, 1, 2]];
    let path = tmp.path().join("palette.png");
    fs::write(&path, palette_png(&palette, &indices)).unwrap();
    let rgb = RgbImage::from_fn(4, 3, |x, y| {
        Rgb(palette[indices[y as usize][x as usize] as usize])
    });
    assert_decodes_to(&path, &rgb, &luma(&rgb));
}

#[test]
fn decode_image_resizes_when_asked() {
    let tmp = tempfile::tempdir().unwrap();
    let rgb = picture(7, 5, 2);
    let path = tmp.path().join("odd.bmp");
    rgb.save(&path).unwrap();
    let (w, h, pixels) = folder::decode_image(&path, 3, Some((3, 9))).unwrap();
    assert_eq!((w, h), (3, 9));
    let expected = imageops::resize(&rgb, 3, 9, FilterType::Triangle);
    assert_eq!(pixels, planar(&expected));
    let (w, h, pixels) = folder::decode_image(&path, 1, Some((7, 5))).unwrap();
    assert_eq!((w, h), (7, 5));
    assert_eq!(&pixels, luma(&rgb).as_raw());
}

#[test]
fn decode_image_errors_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("missing.png");
    let error = format!("{:#}", folder::decode_image(&path, 3, None).unwrap_err());
    assert!(error.contains("missing.png"), "{error}");
    fs::write(&path, b"not an image at all").unwrap();
    let error = format!("{:#}", folder::decode_image(&path, 3, None).unwrap_err());
    assert!(error.contains("missing.png"), "{error}");
}

/// An 8-bit palette PNG (colour type 3), written by hand since the `image` crate only reads them.
fn palette_png(palette: &[[u8; 3]], rows: &[[u8; 4]]) -> Vec<u8> {
    let mut ihdr = Vec::new();
    ihdr.extend(4u32.to_be_bytes());
    ihdr.extend((rows.len() as u32).to_be_bytes());
    ihdr.extend([8, 3, 0, 0, 0]);
    let mut raw = Vec::new();
    for row in rows {
        raw.push(0); // filter type None
        raw.extend(row);
    }
    let mut zlib = ZlibEncoder::new(Vec::new(), Compression::default());
    zlib.write_all(&raw).unwrap();
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png_chunk(&mut png, b"IHDR", &ihdr);
    png_chunk(&mut png, b"PLTE", palette.concat().as_slice());
    png_chunk(&mut png, b"IDAT", &zlib.finish().unwrap());
    png_chunk(&mut png, b"IEND", &[]);
    png
}

fn png_chunk(png: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    png.extend((data.len() as u32).to_be_bytes());
    png.extend(kind);
    png.extend(data);
    let mut crc = Crc::new();
    crc.update(kind);
    crc.update(data);
    png.extend(crc.sum().to_be_bytes());
}

#[test]
fn corrupt_image_is_an_error_naming_it() {
    let (tmp, _) = synthetic_root();
    fs::write(
        tmp.path().join("train/bee/01.png"),
        b"\x89PNG\r\n\x1a\ngarbage",
    )
    .unwrap();
    let error = load_error(tmp.path());
    assert!(
        error.contains("bee/01.png: cannot decode the image: "),
        "{error}"
    );
}

#[test]
fn empty_class_folder_is_an_error_naming_it() {
    let (tmp, _) = synthetic_root();
    fs::create_dir(tmp.path().join("train/dog")).unwrap();
    let error = load_error(tmp.path());
    assert!(error.contains("train/dog holds no images"), "{error}");
}

#[test]
fn split_without_class_folders_is_an_error() {
    let (tmp, _) = synthetic_root();
    fs::remove_dir_all(tmp.path().join("test")).unwrap();
    fs::create_dir(tmp.path().join("test")).unwrap();
    let error = load_error(tmp.path());
    assert!(error.contains("test has no class folders"), "{error}");
}

#[test]
fn test_class_missing_from_train_is_an_error_naming_it() {
    let (tmp, _) = synthetic_root();
    save(tmp.path(), "test/dog/00.png", &picture(8, 6, 0));
    let error = load_error(tmp.path());
    assert!(
        error.contains("test/dog is a class that train/ lacks"),
        "{error}"
    );
}

// ---- Real CIFAR-10 JPEGs -------------------------------------------------------------------

/// The CIFAR-10 JPEG folders; fails (never skips) when they cannot be found or unpacked.
fn cifar_jpg() -> PathBuf {
    common::cifar_jpg_dir()
}

/// A tempdir with 3 classes x 4 real images in train/ and 3 x 2 in test/.
fn real_subset() -> tempfile::TempDir {
    let source = cifar_jpg();
    let tmp = tempfile::tempdir().unwrap();
    for (split, count) in [("train", 4), ("test", 2)] {
        for class in ["cat", "airplane", "ship"] {
            fs::create_dir_all(tmp.path().join(split).join(class)).unwrap();
            for i in 0..count {
                let relative = format!("{split}/{class}/{i:04}.jpg");
                fs::copy(source.join(&relative), tmp.path().join(&relative)).unwrap();
            }
        }
    }
    tmp
}

#[test]
fn real_subset_loads_in_order_and_shuffles_deterministically() {
    let tmp = real_subset();
    let a = folder::load(tmp.path(), 3).unwrap();
    let b = folder::load(tmp.path(), 3).unwrap();

    assert_eq!(a.test.class_names, ["airplane", "cat", "ship"]);
    assert_eq!((a.test.channels, a.test.height, a.test.width), (3, 32, 32));
    assert_eq!(
        a.test.sources[..3],
        [
            "test/airplane/0000.jpg",
            "test/airplane/0001.jpg",
            "test/cat/0000.jpg"
        ]
    );
    assert_eq!(a.test.labels, [0, 0, 1, 1, 2, 2]);
    assert_eq!(a.train.len(), 12);
    assert_eq!(a.train.sources, b.train.sources);
    assert_eq!(a.train.pixels, b.train.pixels);
    for (i, source) in a.train.sources.iter().enumerate() {
        let (w, h, rgb) = folder::decode_rgb(&tmp.path().join(source)).unwrap();
        assert_eq!((w, h), (32, 32));
        let planar: Vec<u8> = (0..3)
            .flat_map(|c| rgb.iter().skip(c).step_by(3).copied())
            .collect();
        assert_eq!(a.train.image(i), planar.as_slice(), "{source}");
    }
}

/// The image crate's JPEG decoder against Pillow's pixels in the PyTorch reference batch.
///
/// Measured on the 20 reference images (61,440 channel values), image 0.25.10 (zune-jpeg 0.5.15)
/// against Pillow: 46,495 values equal, 9,259 off by 1, 5,649 by 2, 36 by 3 and 1 by 4, so
/// 14,945 (24%) differ, by 4 at most and 0.34 on average (the two decoders' IDCT and chroma
/// upsampling round differently). The bounds sit a little above those figures.
#[test]
fn jpeg_decoding_matches_pillow_within_a_few_levels() {
    let reference = common::reference_dir();
    let (names, pillow) = reference_batch(&reference);
    let root = cifar_jpg();
    let mut max_diff = 0u8;
    let mut differing = 0usize;
    let mut total = 0usize;
    for (name, expected) in names.iter().zip(pillow.chunks_exact(32 * 32 * 3)) {
        let (w, h, rgb) = folder::decode_rgb(&root.join(name)).unwrap();
        assert_eq!((w, h), (32, 32), "{name}");
        for (&a, &b) in rgb.iter().zip(expected) {
            max_diff = max_diff.max(a.abs_diff(b));
            total += usize::from(a.abs_diff(b));
            differing += usize::from(a != b);
        }
    }
    let mean = total as f64 / pillow.len() as f64;
    println!(
        "image crate vs Pillow: max abs difference {max_diff}, mean {mean:.3}, \
         {differing} of {} values differ",
        pillow.len()
    );
    assert!(max_diff <= 6, "max abs difference {max_diff}");
    assert!(mean <= 0.5, "mean abs difference {mean}");
    assert!(
        differing * 10 <= pillow.len() * 3,
        "{differing} values differ"
    );
}

/// The image names of `batch.json` and the `pixels_u8` tensor (N, 32, 32, 3) of
/// `batch.safetensors`.
fn reference_batch(dir: &Path) -> (Vec<String>, Vec<u8>) {
    let json: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("batch.json")).unwrap()).unwrap();
    let names: Vec<String> = json["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let expected: Vec<String> = CLASSES
        .iter()
        .flat_map(|c| [format!("test/{c}/0000.jpg"), format!("test/{c}/0001.jpg")])
        .collect();
    assert_eq!(names, expected);
    let bytes = fs::read(dir.join("batch.safetensors")).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let pixels = tensors.tensor("pixels_u8").unwrap();
    assert_eq!(pixels.dtype(), safetensors::Dtype::U8);
    assert_eq!(pixels.shape(), [names.len(), 32, 32, 3]);
    (names, pixels.data().to_vec())
}

/// The whole CIFAR-10 JPEG set (60,000 files); slow, run with `--ignored`.
#[test]
#[ignore]
fn full_cifar_jpg_set_loads() {
    let root = cifar_jpg();
    let start = std::time::Instant::now();
    let splits = folder::load(&root, 0).unwrap();
    println!("loaded 60,000 JPEGs in {:?}", start.elapsed());
    assert_eq!(splits.train.len(), 50_000);
    assert_eq!(splits.test.len(), 10_000);
    assert_eq!(splits.test.class_names, CLASSES);
}
