use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Args;

use cae::report::write_report;
use cae::run_folder::REPORT_FILE;
use cae::sweep::{SummaryRow, SweepGrid, SweepOptions};

use super::DataArgs;
use super::inputs::{ModelFlags, TrainingFlags};

#[derive(Args)]
pub struct SweepArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Latent sizes to train, comma-separated (e.g. 50,200,1000).
    #[arg(long, value_delimiter = ',', default_value = "200")]
    latent: Vec<usize>,
    /// Widths of the first convolutions, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "16")]
    channels: Vec<usize>,
    /// Batch sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "64")]
    batch_size: Vec<usize>,
    /// Adam learning rates, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0.001")]
    lr: Vec<f64>,
    #[command(flatten)]
    training: TrainingFlags,
    /// Start every run from these weights (only when --latent and --channels have one value).
    #[arg(long)]
    init: Option<PathBuf>,
    /// Sweep folder: one run folder per combination, plus summary.csv and the figures; default runs/sweep-<timestamp>.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the sweep in --out: skip finished runs, resume a half-finished one.
    #[arg(long, requires = "out")]
    resume: bool,
    /// Do not write report.html into the sweep folder.
    #[arg(long)]
    no_report: bool,
    /// Do not write TensorBoard event files into the run folders.
    #[arg(long)]
    no_tensorboard: bool,
    /// Take the training settings from this TOML file (as a run folder's config.toml holds
    /// them); flags given on the command line override it, and the swept lists come from the
    /// flags (a setting not swept there keeps the file's value).
    #[arg(long)]
    config: Option<PathBuf>,
}

pub fn run(args: SweepArgs, matches: &clap::ArgMatches) -> Result<()> {
    let first = ModelFlags {
        latent: args.latent[0],
        channels: args.channels[0],
        batch_size: args.batch_size[0],
        lr: args.lr[0],
    };
    let mut base = args
        .training
        .settings(&args.data, &first, args.init.clone());
    let given = |key: &str| super::given_on_command_line(matches, key);
    let (mut latent, mut channels, mut batch_size, mut lr) =
        (args.latent, args.channels, args.batch_size, args.lr);
    if let Some(path) = &args.config {
        cae::config_file::apply(&mut base, path, &given)?;
        if !given("latent") {
            latent = vec![base.model.latent];
        }
        if !given("channels") {
            channels = vec![base.model.channels];
        }
        if !given("batch-size") {
            batch_size = vec![base.optimiser.batch_size];
        }
        if !given("lr") {
            lr = vec![base.optimiser.lr];
        }
    }
    let out = args.out.unwrap_or_else(|| {
        let stamp = chrono::Local::now().format("%Y%m%d-%H%M%S");
        PathBuf::from("runs").join(format!("sweep-{stamp}"))
    });
    let options = SweepOptions {
        base,
        grid: SweepGrid {
            latents: latent,
            channels,
            lrs: lr,
            batch_sizes: batch_size,
        },
        out: out.clone(),
        resume: args.resume,
        tensorboard: !args.no_tensorboard,
    };
    let started = Instant::now();
    let rows = cae::sweep::run(&options, &mut super::progress::Terminal::new())?;
    print_summary(&rows);
    if !args.no_report {
        let report = out.join(REPORT_FILE);
        write_report(std::slice::from_ref(&out), &report)?;
        say!("report: {}", report.display());
    }
    say!(
        "sweep done in {:.1} s; folder {}",
        started.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(())
}

fn print_summary(rows: &[SummaryRow]) {
    say!(
        "{:<24} {:>10} {:>11} {:>10} {:>9} {:>8} {:>10} {:>9}",
        "run",
        "params",
        "train loss",
        "val MSE",
        "PSNR dB",
        "SSIM",
        "gap",
        "seconds"
    );
    for r in rows {
        say!(
            "{:<24} {:>10} {:>11.6} {:>10.6} {:>9.2} {:>8.4} {:>10.6} {:>9.1}",
            r.run,
            r.params,
            r.train_loss,
            r.val_mse,
            r.val_psnr,
            r.val_ssim,
            r.gap,
            r.seconds
        );
    }
}
