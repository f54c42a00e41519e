//! `cae train --config`: a run folder's `config.toml` repeats the run bit for bit, flags on the
//! command line override the file, and a bad file is refused naming the key and the file.

use std::fs;
use std::path::Path;

use crate::common::{cae, cae_clean_error, cifar_subset, s};

fn sha256(path: &Path) -> String {
    let output = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8(output.stdout).unwrap()[..64].to_string()
}

#[test]
fn a_run_folders_config_toml_repeats_the_run_and_flags_override_it() {
    let data = cifar_subset();
    let tmp = tempfile::tempdir().unwrap();
    let first = tmp.path().join("first");
    cae(&[
        "train",
        "--dataset",
        "folder",
        "--data-dir",
        s(&data),
        "--train-limit",
        "96",
        "--val-limit",
        "40",
        "--epochs",
        "2",
        "--latent",
        "16",
        "--channels",
        "4",
        "--batch-size",
        "32",
        "--lr",
        "0.002",
        "--shuffle",
        "--seed",
        "5",
        "--noise",
        "gaussian:0.1",
        "--lr-drop",
        "2:0.5",
        "--out",
        s(&first),
        "--no-report",
    ]);
    let config = first.join("config.toml");
    let text = fs::read_to_string(&config).unwrap();
    for line in [
        "latent = 16",
        "batch-size = 32",
        "lr = 0.002",
        "shuffle = true",
        "noise = \"gaussian:0.1\"",
        "lr-drop = \"2:0.5\"",
        "seed = 5",
    ] {
        assert!(text.contains(line), "`{line}` missing from:\n{text}");
    }

    let again = tmp.path().join("again");
    cae(&[
        "train",
        "--config",
        s(&config),
        "--out",
        s(&again),
        "--no-report",
    ]);
    assert_eq!(
        sha256(&first.join("model.safetensors")),
        sha256(&again.join("model.safetensors"))
    );
    assert_eq!(
        fs::read(first.join("metrics.csv")).unwrap(),
        fs::read(again.join("metrics.csv")).unwrap()
    );
    assert_eq!(fs::read_to_string(again.join("config.toml")).unwrap(), text);

    // A flag given on the command line wins over the file; the rest comes from the file.
    let shorter = tmp.path().join("shorter");
    cae(&[
        "train",
        "--config",
        s(&config),
        "--epochs",
        "1",
        "--out",
        s(&shorter),
        "--no-report",
    ]);
    let text = fs::read_to_string(shorter.join("config.toml")).unwrap();
    assert!(
        text.contains("epochs = 1") && text.contains("latent = 16"),
        "{text}"
    );
}

#[test]
fn a_bad_config_file_is_refused_naming_the_key_and_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("run.toml");
    let out = tmp.path().join("run");
    for (text, needles) in [
        (
            "[model]\nlatnet = 100\n",
            vec!["unknown key `model.latnet`"],
        ),
        (
            "[optimiser]\nlr = \"fast\"\n",
            vec!["`optimiser.lr`", "must be a number, not a string"],
        ),
        ("[data\n", vec!["is not valid TOML"]),
    ] {
        fs::write(&file, text).unwrap();
        let mut all = vec![s(&file)];
        all.extend(needles);
        cae_clean_error(&["train", "--config", s(&file), "--out", s(&out)], &all);
        assert!(!out.exists());
    }
    cae_clean_error(
        &[
            "train",
            "--config",
            s(&tmp.path().join("missing.toml")),
            "--out",
            s(&out),
        ],
        &["cannot read the settings file", "missing.toml"],
    );
}

#[test]
fn a_sweep_takes_its_settings_from_a_config_file_and_its_lists_from_the_flags() {
    let data = cifar_subset();
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("base.toml");
    fs::write(
        &config,
        format!(
            "[data]\ndataset = \"folder\"\ndata-dir = \"{}\"\ntrain-limit = 64\nval-limit = 20\n\n\
             [model]\nchannels = 4\n\n[schedule]\nepochs = 1\n",
            data.display()
        ),
    )
    .unwrap();
    let sweep = tmp.path().join("sweep");
    cae(&[
        "sweep",
        "--config",
        s(&config),
        "--latent",
        "8,16",
        "--out",
        s(&sweep),
        "--no-report",
    ]);
    for latent in [8, 16] {
        let run = fs::read_to_string(sweep.join(format!("latent-{latent}/config.toml"))).unwrap();
        for line in [
            format!("latent = {latent}"),
            "channels = 4".into(),
            "train-limit = 64".into(),
            "epochs = 1".into(),
        ] {
            assert!(run.contains(&line), "`{line}` missing from:\n{run}");
        }
    }
}
