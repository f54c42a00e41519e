//! Reading a run folder back: its settings, history and pictures, from the files
//! [`super::RunWriter`] wrote (for reports, sweeps and figures).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::{CONFIG_JSON, EPOCHS_CSV, METRICS_CSV, RECON_PREFIX, RECON_SUFFIX, SWEEP_FILE};
use crate::history::{EpochRecord, History};

/// What a run folder holds, read back from its files.
#[derive(Debug, Clone)]
pub(crate) struct RunFolder {
    pub dir: PathBuf,
    /// `config.json`, if present.
    pub config: Option<Value>,
    /// From `epochs.csv` and `metrics.csv`.
    pub history: History,
    /// `(epoch, recon_epoch_NN.png)`, by epoch.
    pub recon_grids: Vec<(usize, PathBuf)>,
}

impl RunFolder {
    pub(crate) fn open(dir: &Path) -> Result<Self> {
        let epochs_csv = dir.join(EPOCHS_CSV);
        if !epochs_csv.is_file() {
            bail!(
                "{} is not a run folder: it has no epochs.csv (and no {SWEEP_FILE})",
                dir.display()
            );
        }
        let config = match std::fs::read(dir.join(CONFIG_JSON)) {
            Ok(bytes) => Some(serde_json::from_slice(&bytes).with_context(|| {
                format!("{} is not valid JSON", dir.join(CONFIG_JSON).display())
            })?),
            Err(_) => None,
        };
        let epochs = read_epochs_csv(&epochs_csv)?;
        let metrics = dir.join(METRICS_CSV);
        let (train_batches, val_batches) = if metrics.is_file() {
            read_metrics_csv(&metrics)?
        } else {
            (Vec::new(), Vec::new())
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            history: History {
                train_batches,
                val_batches,
                epochs,
            },
            recon_grids: recon_grids(dir)?,
        })
    }

    pub(crate) fn name(&self) -> String {
        folder_name(&self.dir)
    }

    pub(crate) fn last_epoch(&self) -> Option<&EpochRecord> {
        self.history.epochs.last()
    }
}

pub(crate) fn folder_name(dir: &Path) -> String {
    let absolute = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    absolute.file_name().map_or_else(
        || dir.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// A CSV file as a header and rows of cells (the files cae writes hold no quoted commas).
pub(crate) struct Csv {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Csv {
    pub(crate) fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let split = |line: &str| line.split(',').map(|c| c.trim().to_owned()).collect();
        let header = lines
            .next()
            .map(split)
            .with_context(|| format!("{} is empty", path.display()))?;
        Ok(Self {
            header,
            rows: lines.map(split).collect(),
        })
    }

    pub(crate) fn column(&self, name: &str, path: &Path) -> Result<usize> {
        self.header
            .iter()
            .position(|h| h == name)
            .with_context(|| format!("{} has no column {name}", path.display()))
    }
}

/// Reads `epochs.csv` by column name, so that added columns do not break it.
pub(crate) fn read_epochs_csv(path: &Path) -> Result<Vec<EpochRecord>> {
    let csv = Csv::read(path)?;
    let names = [
        "epoch",
        "train_loss",
        "val_loss",
        "val_psnr",
        "seconds",
        "images_per_second",
    ];
    let columns = names
        .iter()
        .map(|name| csv.column(name, path))
        .collect::<Result<Vec<_>>>()?;
    csv.rows
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let number = |k: usize| -> Result<f64> {
                let cell = row.get(columns[k]).map_or("", String::as_str);
                cell.parse().with_context(|| {
                    format!(
                        "{} line {}: {} is `{cell}`, not a number",
                        path.display(),
                        i + 2,
                        names[k]
                    )
                })
            };
            Ok(EpochRecord {
                epoch: number(0)? as usize,
                train_loss: number(1)?,
                val_loss: number(2)?,
                val_psnr: number(3)?,
                seconds: number(4)?,
                images_per_second: number(5)?,
            })
        })
        .collect()
}

type BatchLosses = Vec<Vec<f64>>;

/// Reads `metrics.csv` back into per-epoch batch losses for training and validation.
fn read_metrics_csv(path: &Path) -> Result<(BatchLosses, BatchLosses)> {
    let csv = Csv::read(path)?;
    let [epoch, split, loss] = ["epoch", "split", "loss"].map(|n| csv.column(n, path));
    let (epoch, split, loss) = (epoch?, split?, loss?);
    let mut train = BatchLosses::new();
    let mut val = BatchLosses::new();
    for (i, row) in csv.rows.iter().enumerate() {
        let bad = || format!("{} line {} is malformed", path.display(), i + 2);
        let e: usize = row
            .get(epoch)
            .with_context(bad)?
            .parse()
            .with_context(bad)?;
        let l: f64 = row.get(loss).with_context(bad)?.parse().with_context(bad)?;
        let target = match row.get(split).map(String::as_str) {
            Some("train") => &mut train,
            Some("val") => &mut val,
            _ => bail!(bad()),
        };
        if e == 0 {
            bail!(bad());
        }
        if target.len() < e {
            target.resize(e, Vec::new());
        }
        target[e - 1].push(l);
    }
    Ok((train, val))
}

/// `recon_epoch_NN.png` files of a run folder, by epoch.
pub(crate) fn recon_grids(dir: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    let mut grids: Vec<(usize, PathBuf)> = entries
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let name = path.file_name()?.to_str()?;
            let epoch = name
                .strip_prefix(RECON_PREFIX)?
                .strip_suffix(RECON_SUFFIX)?
                .parse()
                .ok()?;
            Some((epoch, path))
        })
        .collect();
    grids.sort();
    Ok(grids)
}
