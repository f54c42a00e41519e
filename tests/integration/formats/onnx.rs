//! ONNX export: every part of the reference seed model and of a trained Fashion-MNIST model
//! passes onnx's full checker, and ONNX Runtime reproduces cae's own outputs on real images
//! (`onnx_check.py`; it needs the Python packages onnx and onnxruntime, which .ci/run installs).

use crate::common;

use common::{cae, cae_clean_error, cae_error, max_abs_diff, s};

use std::path::{Path, PathBuf};
use std::process::Command;

use burn::tensor::Device;
use cae::eval::inference;
use cae::io::{npy, weights};
use cae::model::ModelConfig;

/// ONNX Runtime against cae, as the issue asks.
const TOLERANCE: f32 = 1e-5;

const PARTS: [&str; 3] = ["full", "encoder", "decoder"];

/// `cae export --part part` of `model` into `dir`.
fn export(model: &Path, dir: &Path, part: &str) -> PathBuf {
    let onnx = dir.join(format!("{part}.onnx"));
    let stdout = cae(&[
        "export",
        "--model",
        s(model),
        "--to",
        s(&onnx),
        "--part",
        part,
    ]);
    assert!(stdout.contains("opset 17"), "{stdout}");
    onnx
}

/// Runs `onnx_check.py` on `onnx`, with ONNX Runtime turning each (input, output) pair of .npy
/// files; returns its description of the graph.
fn check(onnx: &Path, runs: &[(PathBuf, PathBuf)]) -> serde_json::Value {
    let script = crate::fixtures::workspace_root().join("tests/integration/formats/onnx_check.py");
    let output = Command::new("python3")
        .arg(&script)
        .arg(onnx)
        .args(runs.iter().flat_map(|(input, output)| [input, output]))
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run python3 ({e}): the ONNX tests need Python 3 with onnx and onnxruntime"
            )
        });
    assert!(
        output.status.success(),
        "{} failed ({}):\n{}",
        script.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("onnx_check.py prints one JSON object")
}

/// Inputs cae and ONNX Runtime both run: a name and normalized images (N, C, H, W).
struct Batch {
    name: &'static str,
    images: Vec<f32>,
}

/// Exports the three parts of `model` and checks each on every batch against cae's outputs;
/// returns ONNX Runtime's (codes, reconstruction) of each batch.
fn check_parts(model: &Path, batches: &[Batch]) -> Vec<(Vec<f32>, Vec<f32>)> {
    let dir = tempfile::tempdir().unwrap();
    let device = Device::flex();
    let (net, config) = weights::load_model(model, &device).unwrap();
    let image_dims = [config.in_channels, config.height, config.width];
    let image_len: usize = image_dims.iter().product();
    let npy_in = |name: &str, what: &str| dir.path().join(format!("{name}.{what}.npy"));
    let mut expected = Vec::new();
    for batch in batches {
        let n = batch.images.len() / image_len;
        let codes = inference::encode(&net, &config, &batch.images, &device);
        let recon = inference::reconstruct(&net, &config, &batch.images, &device);
        let decoded = inference::decode(&net, &config, &codes, &device);
        npy::write_f32(
            &npy_in(batch.name, "images"),
            &[&[n][..], &image_dims].concat(),
            &batch.images,
        )
        .unwrap();
        npy::write_f32(&npy_in(batch.name, "codes"), &[n, config.latent], &codes).unwrap();
        expected.push((codes, recon, decoded));
    }
    let mut ort = vec![(Vec::new(), Vec::new()); batches.len()];
    for part in PARTS {
        let onnx = export(model, dir.path(), part);
        let input = if part == "decoder" { "codes" } else { "images" };
        let runs: Vec<_> = batches
            .iter()
            .map(|b| {
                let out = dir.path().join(format!("{}.{part}.ort.npy", b.name));
                (npy_in(b.name, input), out)
            })
            .collect();
        let graph = check(&onnx, &runs);
        check_description(&graph, part, &config);
        for (i, ((_, out), batch)) in runs.iter().zip(batches).enumerate() {
            let (shape, got) = npy::read_f32(out).unwrap();
            let (codes, recon, decoded) = &expected[i];
            let n = batch.images.len() / image_len;
            let (want, want_shape) = match part {
                "encoder" => (codes, vec![n, config.latent]),
                "full" => (recon, [&[n][..], &image_dims].concat()),
                _ => (decoded, [&[n][..], &image_dims].concat()),
            };
            assert_eq!(shape, want_shape, "{part} on {}", batch.name);
            let diff = max_abs_diff(&got, want);
            eprintln!(
                "{}x{}x{} latent {} {part} on {} ({n} images): ONNX Runtime vs cae max abs difference {diff:e}",
                config.in_channels, config.height, config.width, config.latent, batch.name
            );
            assert!(
                diff <= TOLERANCE,
                "{part} on {}: ONNX Runtime differs from cae by {diff:e} > {TOLERANCE:e}",
                batch.name
            );
            match part {
                "encoder" => ort[i].0 = got,
                "full" => ort[i].1 = got,
                _ => {}
            }
        }
    }
    ort
}

/// The graph's opset, IR version, names, shapes with the symbolic batch, and layers.
fn check_description(graph: &serde_json::Value, part: &str, config: &ModelConfig) {
    let images = serde_json::json!(["batch", config.in_channels, config.height, config.width]);
    let codes = serde_json::json!(["batch", config.latent]);
    let (input, output) = match part {
        "full" => (("images", &images), ("reconstruction", &images)),
        "encoder" => (("images", &images), ("codes", &codes)),
        _ => (("codes", &codes), ("reconstruction", &images)),
    };
    assert_eq!(graph["ir_version"], 8, "{graph}");
    assert_eq!(graph["opsets"], serde_json::json!({"": 17}), "{graph}");
    assert_eq!(
        graph["inputs"],
        serde_json::json!([[input.0, input.1]]),
        "{graph}"
    );
    assert_eq!(
        graph["outputs"],
        serde_json::json!([[output.0, output.1]]),
        "{graph}"
    );
    let ops = graph["ops"].as_array().unwrap();
    let count = |op: &str| ops.iter().filter(|o| *o == op).count();
    // A variational encoder ends at its mean head, without the plain code's ReLU.
    let code_relu = usize::from(!config.variational);
    let (convs, transposed, gemms, relus) = match part {
        "full" => (6, 6, 2, 6 + code_relu + 1 + 5),
        "encoder" => (6, 0, 1, 6 + code_relu),
        _ => (0, 6, 1, 1 + 5),
    };
    assert_eq!(
        (
            count("Conv"),
            count("ConvTranspose"),
            count("Gemm"),
            count("Relu")
        ),
        (convs, transposed, gemms, relus),
        "{part}: {ops:?}"
    );
    assert_eq!(
        graph["metadata"]["cae.model_config"]
            .as_str()
            .map(|c| serde_json::from_str::<ModelConfig>(c).unwrap()),
        Some(*config)
    );
}

/// The float32 tensors `input`, `latent` and `output` of the reference batch.
fn reference_batch() -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let bytes = std::fs::read(common::reference_dir().join("batch.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let tensor = |name: &str| -> Vec<f32> {
        file.tensor(name)
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    };
    (tensor("input"), tensor("latent"), tensor("output"))
}

/// The first CIFAR-10 test image of every class (the training runs' showcase), at `config`'s shape.
fn cifar_showcase(config: &ModelConfig) -> Vec<f32> {
    let test = common::cifar_jpg_dir().join("test");
    let mut classes = common::names(&test);
    classes.retain(|c| test.join(c).is_dir());
    assert_eq!(classes.len(), 10, "{classes:?}");
    classes
        .iter()
        .flat_map(|class| {
            let first = common::names(&test.join(class))
                .into_iter()
                .next()
                .expect("a test image");
            cae::io::imageio::read_model_input(&test.join(class).join(first), config, true).unwrap()
        })
        .collect()
}

#[test]
fn reference_model_runs_the_same_in_onnx_runtime() {
    let model = common::reference_dir().join("seed_latent200_init.safetensors");
    let (input, latent, output) = reference_batch();
    let batches = [
        Batch {
            name: "reference",
            images: input,
        },
        Batch {
            name: "showcase",
            images: cifar_showcase(&ModelConfig::default()),
        },
    ];
    let ort = check_parts(&model, &batches);
    // And PyTorch's own outputs on the reference batch.
    let (codes, recon) = &ort[0];
    for (what, got, torch) in [
        ("codes", codes, &latent),
        ("reconstruction", recon, &output),
    ] {
        let diff = max_abs_diff(got, torch);
        eprintln!("reference batch {what}: ONNX Runtime vs PyTorch max abs difference {diff:e}");
        assert!(diff <= TOLERANCE, "{what}: {diff:e} from PyTorch");
    }
}

#[test]
fn fashion_mnist_model_runs_the_same_in_onnx_runtime() {
    let dir = tempfile::tempdir().unwrap();
    // Narrower than the seed (channels 8), 1x28x28: other shapes than the reference's.
    let model =
        common::train_fashion_mnist(&dir.path().join("run"), &["--channels", "8", "--no-report"]);
    let splits =
        cae::data::load(cae::DatasetKind::FashionMnist, Path::new("/nonexistent"), 0).unwrap();
    let test = &splits.test;
    let first: Vec<usize> = (0..32).collect();
    let batches = [
        Batch {
            name: "showcase",
            images: cae::data::batcher::normalized_batch(test, &test.first_of_each_class()),
        },
        Batch {
            name: "first32",
            images: cae::data::batcher::normalized_batch(test, &first),
        },
    ];
    check_parts(&model, &batches);
}

#[test]
fn variational_model_runs_the_same_in_onnx_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::train_fashion_mnist(
        &dir.path().join("run"),
        &["--channels", "8", "--variational", "--no-report"],
    );
    let splits =
        cae::data::load(cae::DatasetKind::FashionMnist, Path::new("/nonexistent"), 0).unwrap();
    let test = &splits.test;
    let ort = check_parts(
        &model,
        &[Batch {
            name: "showcase",
            images: cae::data::batcher::normalized_batch(test, &test.first_of_each_class()),
        }],
    );
    // The codes are the posterior means, which take negative values (no ReLU).
    assert!(ort[0].0.iter().any(|&v| v < 0.0));
}

#[test]
fn part_is_refused_when_unknown_or_not_onnx() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::reference_dir().join("seed_latent200_init.safetensors");
    let onnx = dir.path().join("model.onnx");
    let err = cae_error(&[
        "export",
        "--model",
        s(&model),
        "--to",
        s(&onnx),
        "--part",
        "middle",
    ]);
    assert!(err.contains("middle") && err.contains("encoder"), "{err}");
    let pt = dir.path().join("model.pt");
    cae_clean_error(
        &[
            "export",
            "--model",
            s(&model),
            "--to",
            s(&pt),
            "--part",
            "encoder",
        ],
        &["--part encoder", "ONNX", "model.pt"],
    );
    assert!(common::names(dir.path()).is_empty(), "nothing is written");
}

#[test]
fn bad_weights_are_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut dict =
        weights::read_weights(&common::reference_dir().join("seed_latent200_init.safetensors"))
            .unwrap()
            .tensors;
    let onnx = dir.path().join("model.onnx");
    std::fs::write(&onnx, b"an earlier export").unwrap();

    dict.get_mut("encoder.net.13.weight").unwrap().data[7] = f32::INFINITY;
    let bad = dir.path().join("inf.safetensors");
    weights::save_safetensors(&bad, &dict, None, &[]).unwrap();
    cae_clean_error(
        &["export", "--model", s(&bad), "--to", s(&onnx)],
        &[
            "inf.safetensors",
            "encoder.net.13.weight",
            "NaN or infinite",
        ],
    );

    dict.get_mut("encoder.net.13.weight").unwrap().data[7] = 0.0;
    dict.remove("decoder.conv.10.bias");
    let bad = dir.path().join("missing.safetensors");
    weights::save_safetensors(&bad, &dict, None, &[]).unwrap();
    cae_clean_error(
        &[
            "export",
            "--model",
            s(&bad),
            "--to",
            s(&onnx),
            "--part",
            "decoder",
        ],
        &["missing.safetensors", "decoder.conv.10.bias", "missing"],
    );

    assert_eq!(std::fs::read(&onnx).unwrap(), b"an earlier export");
    assert!(common::temp_files(dir.path()).is_empty());
}
