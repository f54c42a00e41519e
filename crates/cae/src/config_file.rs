//! A run's settings as a TOML file: read by `cae train --config FILE` (flags given on the
//! command line win), and written as `config.toml` into every run folder, so that
//! `cae train --config RUN/config.toml --out NEW` repeats the run bit for bit.
//!
//! The tables follow [`TrainSettings`]' groups and the keys are the flag names:
//!
//! ```toml
//! [data]
//! dataset = "folder"
//! data-dir = "data/cifar10-jpg"
//! shuffle = false
//!
//! [model]
//! latent = 200
//! channels = 16
//!
//! [optimiser]
//! lr = 0.001
//! batch-size = 64
//!
//! [schedule]
//! epochs = 10
//!
//! [run]
//! seed = 0
//! device = "flex"
//! ```
//!
//! Optional settings (`train-limit`, `val-limit`, `noise`, `init`, `lr-drop`) are left out when
//! unset, and `variational`, `beta` and `kl-warmup` for plain models. An unknown table or key, or a value of the wrong type, is refused naming the key and
//! the file.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use toml::{Table, Value};

use crate::data::DatasetKind;
use crate::settings::TrainSettings;

/// Every table and its keys, in file order.
pub(crate) const KEYS: [(&str, &[&str]); 5] = [
    (
        "data",
        &[
            "dataset",
            "data-dir",
            "train-limit",
            "val-limit",
            "shuffle",
            "noise",
        ],
    ),
    (
        "model",
        &[
            "latent",
            "channels",
            "init",
            "variational",
            "beta",
            "kl-warmup",
        ],
    ),
    ("optimiser", &["lr", "batch-size"]),
    ("schedule", &["epochs", "lr-drop"]),
    ("run", &["seed", "device"]),
];

/// `settings` as the TOML of a `--config` file.
pub(crate) fn to_toml(settings: &TrainSettings) -> String {
    let mut root = Table::new();
    for (table, keys) in KEYS {
        let mut entries = Table::new();
        for &key in keys {
            if let Some(value) = get(settings, table, key) {
                entries.insert(key.to_string(), value);
            }
        }
        root.insert(table.to_string(), Value::Table(entries));
    }
    toml::to_string(&root).expect("settings serialise as TOML")
}

/// Applies the settings in the TOML file `path` to `settings`, except the keys `keep` says
/// were given on the command line (it gets the key name, e.g. `batch-size`).
pub fn apply(settings: &mut TrainSettings, path: &Path, keep: &dyn Fn(&str) -> bool) -> Result<()> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the settings file {}", path.display()))?;
    let root: Table = text
        .parse()
        .with_context(|| format!("{} is not valid TOML", path.display()))?;
    for (table, entries) in &root {
        let Some((_, keys)) = KEYS.iter().find(|(name, _)| name == table) else {
            bail!(
                "{}: unknown table [{table}]; the tables are {}",
                path.display(),
                KEYS.map(|(name, _)| format!("[{name}]")).join(", ")
            );
        };
        let Value::Table(entries) = entries else {
            bail!("{}: `{table}` must be a table ([{table}])", path.display());
        };
        for (key, value) in entries {
            if !keys.contains(&key.as_str()) {
                bail!(
                    "{}: unknown key `{table}.{key}`; [{table}] takes {}",
                    path.display(),
                    keys.join(", ")
                );
            }
            if keep(key) {
                continue;
            }
            set(settings, table, key, value)
                .with_context(|| format!("{}: `{table}.{key}`", path.display()))?;
        }
    }
    Ok(())
}

fn get(s: &TrainSettings, table: &str, key: &str) -> Option<Value> {
    let count = |n: usize| Value::Integer(i64::try_from(n).unwrap_or(i64::MAX));
    let path = |p: &Path| Value::String(p.to_string_lossy().into_owned());
    Some(match (table, key) {
        ("data", "dataset") => Value::String(s.data.dataset.name().to_string()),
        ("data", "data-dir") => path(&s.data.data_dir),
        ("data", "train-limit") => count(s.data.train_limit?),
        ("data", "val-limit") => count(s.data.val_limit?),
        ("data", "shuffle") => Value::Boolean(s.data.shuffle),
        ("data", "noise") => Value::String(s.data.noise?.to_string()),
        ("model", "latent") => count(s.model.latent),
        ("model", "channels") => count(s.model.channels),
        ("model", "init") => path(s.model.init.as_ref()?),
        // Only variational runs have these, so plain runs' files stay as they were.
        ("model", "variational") => Value::Boolean(s.model.variational.then_some(true)?),
        ("model", "beta") => Value::Float(s.model.variational.then_some(s.model.beta)?),
        ("model", "kl-warmup") => count(s.model.variational.then_some(s.model.kl_warmup)?),
        ("optimiser", "lr") => Value::Float(s.optimiser.lr),
        ("optimiser", "batch-size") => count(s.optimiser.batch_size),
        ("schedule", "epochs") => count(s.schedule.epochs),
        ("schedule", "lr-drop") => Value::String(s.schedule.lr_drop.as_ref()?.to_string()),
        // TOML integers are signed 64-bit: larger seeds are written as strings.
        ("run", "seed") => i64::try_from(s.run.seed)
            .map_or_else(|_| Value::String(s.run.seed.to_string()), Value::Integer),
        ("run", "device") => Value::String(s.run.device.to_string()),
        _ => return None,
    })
}

fn set(s: &mut TrainSettings, table: &str, key: &str, value: &Value) -> Result<()> {
    match (table, key) {
        ("data", "dataset") => {
            let name = string(value)?;
            s.data.dataset = *DatasetKind::ALL
                .iter()
                .find(|kind| kind.name() == name)
                .with_context(|| {
                    let names = DatasetKind::ALL.map(DatasetKind::name);
                    format!("`{name}` is not a dataset; use one of {}", names.join(", "))
                })?;
        }
        ("data", "data-dir") => s.data.data_dir = PathBuf::from(string(value)?),
        ("data", "train-limit") => s.data.train_limit = Some(count(value)?),
        ("data", "val-limit") => s.data.val_limit = Some(count(value)?),
        ("data", "shuffle") => s.data.shuffle = boolean(value)?,
        ("data", "noise") => s.data.noise = Some(string(value)?.parse()?),
        ("model", "latent") => s.model.latent = count(value)?,
        ("model", "channels") => s.model.channels = count(value)?,
        ("model", "init") => s.model.init = Some(PathBuf::from(string(value)?)),
        ("model", "variational") => s.model.variational = boolean(value)?,
        ("model", "beta") => s.model.beta = float(value)?,
        ("model", "kl-warmup") => s.model.kl_warmup = count(value)?,
        ("optimiser", "lr") => s.optimiser.lr = float(value)?,
        ("optimiser", "batch-size") => s.optimiser.batch_size = count(value)?,
        ("schedule", "epochs") => s.schedule.epochs = count(value)?,
        ("schedule", "lr-drop") => s.schedule.lr_drop = Some(string(value)?.parse()?),
        ("run", "seed") => {
            s.run.seed = match value {
                Value::String(text) => text
                    .parse()
                    .with_context(|| format!("`{text}` is not a seed (a whole number)"))?,
                _ => u64::try_from(integer(value)?).context("a seed is not negative")?,
            }
        }
        ("run", "device") => s.run.device = string(value)?.parse()?,
        _ => unreachable!("keys are checked against KEYS first"),
    }
    Ok(())
}

fn kind(value: &Value) -> &'static str {
    value.type_str()
}

fn string(value: &Value) -> Result<&str> {
    value
        .as_str()
        .with_context(|| format!("must be a string, not a {}", kind(value)))
}

fn boolean(value: &Value) -> Result<bool> {
    value
        .as_bool()
        .with_context(|| format!("must be true or false, not a {}", kind(value)))
}

fn integer(value: &Value) -> Result<i64> {
    value
        .as_integer()
        .with_context(|| format!("must be a whole number, not a {}", kind(value)))
}

fn count(value: &Value) -> Result<usize> {
    let number = integer(value)?;
    usize::try_from(number).with_context(|| format!("must not be negative, not {number}"))
}

/// A float; a whole number is taken as one (`lr = 1` means 1.0).
fn float(value: &Value) -> Result<f64> {
    match value {
        Value::Float(number) => Ok(*number),
        Value::Integer(number) => Ok(*number as f64),
        other => bail!("must be a number, not a {}", kind(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_survive_the_round_trip_through_toml() {
        let mut settings = TrainSettings::tutorial(DatasetKind::Folder, "data/images".into());
        settings.data.train_limit = Some(640);
        settings.data.shuffle = true;
        settings.data.noise = Some("gaussian:0.1".parse().unwrap());
        settings.model.init = Some("init.pt".into());
        settings.optimiser.lr = 3e-4;
        settings.schedule.lr_drop = Some("20,30:0.5".parse().unwrap());
        settings.run.seed = u64::MAX;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.toml");
        std::fs::write(&path, to_toml(&settings)).unwrap();
        let mut read = TrainSettings::tutorial(DatasetKind::Cifar10, "elsewhere".into());
        apply(&mut read, &path, &|_| false).unwrap();
        assert_eq!(read, settings);
    }

    #[test]
    fn keys_given_on_the_command_line_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.toml");
        std::fs::write(&path, "[model]\nlatent = 1000\nchannels = 8\n").unwrap();
        let mut settings = TrainSettings::tutorial(DatasetKind::Folder, "data".into());
        settings.model.latent = 50;
        apply(&mut settings, &path, &|key| key == "latent").unwrap();
        assert_eq!((settings.model.latent, settings.model.channels), (50, 8));
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_refused_naming_key_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.toml");
        let mut settings = TrainSettings::tutorial(DatasetKind::Folder, "data".into());
        for (text, needles) in [
            (
                "[model]\nlatnet = 3\n",
                &["unknown key `model.latnet`", "latent, channels, init"][..],
            ),
            ("[models]\nlatent = 3\n", &["unknown table [models]"]),
            (
                "[model]\nlatent = \"200\"\n",
                &["`model.latent`", "must be a whole number, not a string"],
            ),
            (
                "[model]\nlatent = -1\n",
                &["`model.latent`", "must not be negative"],
            ),
            (
                "[data]\ndataset = \"imagenet\"\n",
                &["`data.dataset`", "not a dataset"],
            ),
            (
                "[schedule]\nepochs = 1.5\n",
                &["`schedule.epochs`", "not a float"],
            ),
            ("model = 3\n", &["`model` must be a table"]),
        ] {
            std::fs::write(&path, text).unwrap();
            let error = format!("{:#}", apply(&mut settings, &path, &|_| false).unwrap_err());
            assert!(error.contains(&path.display().to_string()), "{error}");
            for needle in needles {
                assert!(error.contains(needle), "`{needle}` missing from: {error}");
            }
        }
    }
}
