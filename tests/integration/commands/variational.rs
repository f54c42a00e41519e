//! The variational mode end to end on real CIFAR-10 JPEGs: training (with `--beta`,
//! `--kl-warmup`, `--noise`, `--resume`, `--config`, `sweep`) and every command that takes the
//! model.

use crate::common;

use common::{cae, cae_clean_error, cae_error, s};

use std::path::{Path, PathBuf};

/// The flags of the small variational runs below.
fn vae_args(data: &Path) -> Vec<&str> {
    vec![
        "--dataset",
        "folder",
        "--data-dir",
        s(data),
        "--variational",
        "--beta",
        "2",
        "--kl-warmup",
        "1",
        "--noise",
        "gaussian:0.05",
        "--latent",
        "16",
        "--channels",
        "4",
        "--train-limit",
        "192",
        "--val-limit",
        "64",
        "--no-report",
        "--no-tensorboard",
    ]
}

fn train(data: &Path, out: &Path, extra: &[&str]) -> PathBuf {
    cae(&[&["train"][..], &vae_args(data), &["--out", s(out)], extra].concat());
    out.join("model.safetensors")
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[test]
fn a_variational_run_records_its_settings_and_resumes_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::cifar_subset();
    let whole = train(&data, &dir.path().join("whole"), &["--epochs", "2"]);
    let halves = dir.path().join("halves");
    train(&data, &halves, &["--epochs", "1"]);
    train(&data, &halves, &["--epochs", "2", "--resume"]);
    // The reparameterisation noise and the KL warm-up depend only on the seed and the step.
    assert_eq!(
        std::fs::read(&whole).unwrap(),
        std::fs::read(halves.join("model.safetensors")).unwrap()
    );
    let file = cae::io::weights::read_weights(&whole).unwrap();
    let config = file.config.unwrap();
    assert!(config.variational, "{config:?}");
    assert!(file.tensors.contains_key("encoder.log_var.weight"));
    let sigma = file.tensors["log_sigma"].data[0].exp();
    assert!(
        sigma < 1.0,
        "the learned sigma moved from 1 towards the data: {sigma}"
    );

    let run = dir.path().join("whole");
    let config_json = json(&std::fs::read_to_string(run.join("config.json")).unwrap());
    let settings = &config_json["settings"];
    assert_eq!(settings["variational"], true, "{settings}");
    assert_eq!(settings["beta"], 2.0, "{settings}");
    assert_eq!(settings["kl_warmup"], 1, "{settings}");
    let objective = &config_json["variational"];
    assert_eq!(objective["beta"], 2.0, "{config_json}");
    assert_eq!(objective["kl_warmup"], 1, "{config_json}");
    assert!(objective["likelihood"].as_str().unwrap().contains("sigma"));
    let toml = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(
        toml.contains("variational = true") && toml.contains("beta = 2.0"),
        "{toml}"
    );
    // The settings file repeats the run.
    let again = dir.path().join("again");
    cae(&[
        "train",
        "--config",
        s(&run.join("config.toml")),
        "--out",
        s(&again),
        "--no-report",
        "--no-tensorboard",
    ]);
    assert_eq!(
        std::fs::read(&whole).unwrap(),
        std::fs::read(again.join("model.safetensors")).unwrap()
    );
    // Resuming with another beta is refused, naming it.
    let mut other_beta = vae_args(&data);
    let at = other_beta.iter().position(|f| *f == "--beta").unwrap();
    other_beta[at + 1] = "1";
    let err = cae_clean_error(
        &[
            &["train"][..],
            &other_beta,
            &["--out", s(&halves), "--epochs", "3", "--resume"],
        ]
        .concat(),
        &["--beta was 2.0, now 1.0"],
    );
    assert!(err.contains("resume"), "{err}");
}

#[test]
fn beta_and_kl_warmup_need_the_variational_mode() {
    let err = cae_error(&["train", "--beta", "2", "--out", "/nonexistent/run"]);
    assert!(err.contains("--variational"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain.toml");
    std::fs::write(&file, "[model]\nbeta = 4.0\n").unwrap();
    cae_clean_error(
        &[
            "train",
            "--config",
            s(&file),
            "--out",
            s(&dir.path().join("run")),
        ],
        &["--beta and --kl-warmup weight the KL term of a --variational model"],
    );
}

#[test]
fn every_command_takes_a_variational_model() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::cifar_subset();
    let vae = train(&data, &dir.path().join("vae"), &["--epochs", "1"]);
    let plain_run = dir.path().join("plain");
    common::train_quick(
        &plain_run,
        &[
            &["--dataset", "folder", "--data-dir", s(&data)][..],
            &[
                "--latent",
                "24",
                "--channels",
                "4",
                "--no-report",
                "--no-tensorboard",
            ],
        ]
        .concat(),
    );
    let plain = plain_run.join("model.safetensors");
    let folder = ["--dataset", "folder", "--data-dir", s(&data)];

    // eval: the ELBO in bits per dimension, the KL and the active dimensions.
    let eval = |model: &Path| {
        json(&cae(&[
            &["eval", "--model", s(model), "--json"][..],
            &folder[..],
        ]
        .concat()))
    };
    let report = eval(&vae);
    let bits = report["negative_elbo_bits_per_dim"].as_f64().unwrap();
    assert!(bits > 0.0 && bits < 16.0, "{report}");
    assert!(report["kl"].as_f64().unwrap() > 0.0, "{report}");
    assert!(
        report["active_dimensions"].as_u64().unwrap() <= 16,
        "{report}"
    );
    assert!(report["sigma"].as_f64().unwrap() > 0.0, "{report}");
    assert_eq!(report["n"], 200, "{report}");
    assert!(
        eval(&plain).get("kl").is_none(),
        "a plain model has no ELBO"
    );
    let text = cae(&[&["eval", "--model", s(&vae)][..], &folder[..]].concat());
    assert!(
        text.contains("bits/dim") && text.contains("of 16 latent dimensions active"),
        "{text}"
    );

    // encode: the means, and with --log-variances the log-variances.
    let codes = dir.path().join("codes.npy");
    let log_vars = dir.path().join("log_vars.npy");
    let encode = |model: &Path, extra: &[&str]| {
        let args = [
            &["encode", "--model", s(model), "--out", s(&codes)][..],
            &folder[..],
            &["--limit", "30"][..],
            extra,
        ]
        .concat();
        cae(&args)
    };
    encode(&vae, &[]);
    let means = std::fs::read(&codes).unwrap();
    let stdout = encode(&vae, &["--log-variances", s(&log_vars)]);
    assert!(
        stdout.contains("wrote 30 log-variances of size 16"),
        "{stdout}"
    );
    assert_eq!(
        std::fs::read(&codes).unwrap(),
        means,
        "the codes are the means"
    );
    let (shape, values) = cae::io::npy::read_f32(&log_vars).unwrap();
    assert_eq!(shape, [30, 16]);
    assert!(values.iter().all(|v| v.is_finite()));
    let (_, mean_values) = cae::io::npy::read_f32(&codes).unwrap();
    assert!(mean_values.iter().any(|&v| v < 0.0), "means are not ReLU'd");
    cae_clean_error(
        &[
            &["encode", "--model", s(&plain), "--out", s(&codes)][..],
            &folder[..],
            &["--log-variances", s(&log_vars)][..],
        ]
        .concat(),
        &["plain autoencoder", "--variational"],
    );

    // generate: the prior, no fitted Gaussian needed; --report in a third model's codes.
    let grid = dir.path().join("grid.png");
    let report = |extra: &[&str]| {
        let generate = [
            "generate",
            "--model",
            s(&vae),
            "--n",
            "16",
            "--out",
            s(&grid),
        ];
        let reference = ["--report", "--reference-model", s(&plain)];
        cae(&[&generate[..], &reference[..], &folder[..], extra].concat())
    };
    let stdout = report(&[]);
    assert!(stdout.contains("samples of the prior N(0, I)"), "{stdout}");
    let distance: f64 = stdout
        .split("Fréchet code distance ")
        .nth(1)
        .and_then(|rest| rest.split(':').next())
        .and_then(|d| d.parse().ok())
        .unwrap_or_else(|| panic!("no distance in {stdout}"));
    assert!(distance.is_finite() && distance > 0.0, "{stdout}");
    assert!(
        stdout.contains("200 validation images vs 200 samples"),
        "{stdout}"
    );
    let image = image::open(&grid).unwrap();
    assert_eq!(image.width(), 4 * (4 * 33 + 1));
    let fewer = report(&["--report-samples", "50"]);
    assert!(
        fewer.contains("50 validation images vs 50 samples"),
        "{fewer}"
    );
    cae_clean_error(
        &[
            &["generate", "--model", s(&vae), "--out", s(&grid)][..],
            &["--report", "--reference-model", s(&vae)][..],
            &folder[..],
        ]
        .concat(),
        &["neither of the models compared"],
    );

    // interpolate walks between the means; reconstruct, export and import take the model.
    let strip = dir.path().join("strip.png");
    cae(&[
        "interpolate",
        "--model",
        s(&vae),
        s(&data.join("test/cat/0000.jpg")),
        s(&data.join("test/ship/0001.jpg")),
        "--steps",
        "4",
        "--out",
        s(&strip),
    ]);
    assert_eq!(image::open(&strip).unwrap().width(), 4 * (6 * 33 + 1));
    let pt = dir.path().join("vae.pt");
    cae(&["export", "--model", s(&vae), "--to", s(&pt)]);
    let imported = dir.path().join("imported.safetensors");
    let stdout = cae(&["import", "--from", s(&pt), "--out", s(&imported)]);
    assert!(stdout.contains("imported"), "{stdout}");
    let back = cae::io::weights::read_weights(&imported).unwrap();
    assert!(back.config.unwrap().variational);
    assert!(back.tensors == cae::io::weights::read_weights(&vae).unwrap().tensors);
    cae(&[
        "reconstruct",
        "--model",
        s(&vae),
        s(&data.join("test/cat/0000.jpg")),
        "--out",
        s(&dir.path().join("recon")),
    ]);
}

#[test]
fn a_sweep_trains_variational_runs() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::cifar_subset();
    let sweep = dir.path().join("sweep");
    let mut args = vec!["sweep"];
    let flags = vae_args(&data);
    // vae_args' --latent 16 is replaced by the swept list.
    let at = flags.iter().position(|f| *f == "--latent").unwrap();
    args.extend(flags[..at].iter().chain(&flags[at + 2..]));
    args.extend(["--latent", "8,16", "--epochs", "1", "--out", s(&sweep)]);
    cae(&args);
    for latent in ["8", "16"] {
        let model = sweep
            .join(format!("latent-{latent}"))
            .join("model.safetensors");
        let config = cae::io::weights::read_weights(&model)
            .unwrap()
            .config
            .unwrap();
        assert!(config.variational, "{config:?}");
        assert_eq!(config.latent.to_string(), latent);
    }
    // A negative ELBO minus an MSE means nothing: the summary leaves the gap out.
    let summary = std::fs::read_to_string(sweep.join("summary.csv")).unwrap();
    let mut lines = summary.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let gap = header.iter().position(|h| *h == "gap").unwrap();
    for row in lines {
        assert_eq!(row.split(',').nth(gap), Some("NaN"), "{summary}");
    }
}
