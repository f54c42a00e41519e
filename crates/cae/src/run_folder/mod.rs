//! The run folder: the files a training run (and a sweep) writes, their names and formats,
//! the lock that keeps a second process out, and reading a run back.
//!
//! A run folder holds `config.json` (every setting), `config.toml` (the same as a `--config`
//! file), `metrics.csv` (every batch's loss),
//! `epochs.csv` (one row per epoch), `loss.png`, `recon_epoch_NN.png` per epoch,
//! `checkpoint.safetensors` (what `--resume` needs, `checkpoint`), `model.safetensors` once the run has
//! finished, and `report.html`. Every file is written atomically ([`crate::io::atomic`]).

pub(crate) mod checkpoint;
mod lock;
mod reader;
mod writer;

pub(crate) use lock::RunLock;
pub(crate) use reader::folder_name;
pub(crate) use reader::{Csv, RunFolder, read_epochs_csv, recon_grids};
pub(crate) use writer::RunWriter;

/// Every setting, the model shape and the versions, as JSON.
pub(crate) const CONFIG_JSON: &str = "config.json";
/// Every training setting as a `--config` file ([`crate::config_file`]): `cae train --config
/// RUN/config.toml --out NEW` repeats the run.
pub(crate) const CONFIG_TOML: &str = "config.toml";
/// `epoch,batch,split,loss` for every training and validation batch.
pub(crate) const METRICS_CSV: &str = "metrics.csv";
/// `epoch,train_loss,val_loss,val_psnr,seconds,images_per_second`.
pub(crate) const EPOCHS_CSV: &str = "epochs.csv";
/// The per-batch training loss and the per-epoch means.
pub(crate) const LOSS_PLOT: &str = "loss.png";
/// Weights, Adam moments, epoch and history: what `--resume` continues from.
pub(crate) const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
/// The final weights, under PyTorch's `state_dict` names.
pub const MODEL_FILE: &str = "model.safetensors";
/// The HTML page about the run (or sweep).
pub const REPORT_FILE: &str = "report.html";
/// Marks a sweep folder; written by `cae sweep`.
pub(crate) const SWEEP_FILE: &str = "sweep.json";
/// One row per run of a sweep.
pub(crate) const SUMMARY_FILE: &str = "summary.csv";
/// A sweep's training and validation loss curves of every run.
pub(crate) const LOSSES_COMPARE: &str = "losses.png";
/// A sweep's final reconstructions of every run.
pub(crate) const RECON_COMPARE: &str = "recon_compare.png";
/// A sweep's reconstructions after the first and the last epoch.
pub(crate) const EPOCHS_COMPARE: &str = "epochs_compare.png";

const RECON_PREFIX: &str = "recon_epoch_";
const RECON_SUFFIX: &str = ".png";

/// `recon_epoch_NN.png`: the reconstruction grid after epoch `epoch`.
pub(crate) fn recon_file(epoch: usize) -> String {
    format!("{RECON_PREFIX}{epoch:02}{RECON_SUFFIX}")
}
