use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Args;

use cae::report::{REPORT_FILE, write_report};
use cae::settings::TrainSettings;
use cae::sweep::{SummaryRow, SweepGrid, SweepOptions};

use super::DataArgs;

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
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    /// Batch sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "64")]
    batch_size: Vec<usize>,
    /// Adam learning rates, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0.001")]
    lr: Vec<f64>,
    /// Seed of the initial weights and of --shuffle (the same for every run).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Shuffle the training images every epoch (the tutorial does not).
    #[arg(long)]
    shuffle: bool,
    /// Use only the first N training images.
    #[arg(long)]
    train_limit: Option<usize>,
    /// Use only the first N validation images.
    #[arg(long)]
    val_limit: Option<usize>,
    /// Start every run from these weights (only when --latent and --channels have one value).
    #[arg(long)]
    init: Option<PathBuf>,
    /// Train denoisers: corrupt the inputs with gaussian:SIGMA, salt-pepper:P or mask:P.
    #[arg(long)]
    noise: Option<cae::apps::noise::NoiseSpec>,
    /// Sweep folder: one run folder per combination, plus summary.csv and the figures; default runs/sweep-<timestamp>.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the sweep in --out: skip finished runs, resume a half-finished one.
    #[arg(long, requires = "out")]
    resume: bool,
    /// Do not write report.html into the sweep folder.
    #[arg(long)]
    no_report: bool,
}

pub fn run(args: SweepArgs) -> Result<()> {
    let base = TrainSettings {
        dataset: args.data.dataset,
        data_dir: args.data.data_dir(),
        latent: args.latent[0],
        channels: args.channels[0],
        epochs: args.epochs,
        batch_size: args.batch_size[0],
        lr: args.lr[0],
        seed: args.seed,
        shuffle: args.shuffle,
        train_limit: args.train_limit,
        val_limit: args.val_limit,
        init: args.init,
        device: args.data.device,
        noise: args.noise,
    };
    let out = args.out.unwrap_or_else(|| {
        let stamp = chrono::Local::now().format("%Y%m%d-%H%M%S");
        PathBuf::from("runs").join(format!("sweep-{stamp}"))
    });
    let options = SweepOptions {
        base,
        grid: SweepGrid {
            latents: args.latent,
            channels: args.channels,
            lrs: args.lr,
            batch_sizes: args.batch_size,
        },
        out: out.clone(),
        resume: args.resume,
        show_progress: std::io::stderr().is_terminal(),
    };
    let started = Instant::now();
    let rows = cae::sweep::run(&options)?;
    print_summary(&rows);
    if !args.no_report {
        let report = out.join(REPORT_FILE);
        write_report(std::slice::from_ref(&out), &report)?;
        println!("report: {}", report.display());
    }
    println!(
        "sweep done in {:.1} s; folder {}",
        started.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(())
}

fn print_summary(rows: &[SummaryRow]) {
    println!(
        "{:<24} {:>10} {:>11} {:>10} {:>9} {:>8} {:>10} {:>9}",
        "run", "params", "train loss", "val MSE", "PSNR dB", "SSIM", "gap", "seconds"
    );
    for r in rows {
        println!(
            "{:<24} {:>10} {:>11.6} {:>10.6} {:>9.2} {:>8.4} {:>10.6} {:>9.1}",
            r.run, r.params, r.train_loss, r.val_mse, r.val_psnr, r.val_ssim, r.gap, r.seconds
        );
    }
}
