use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Args;

use cae::settings::TrainSettings;

use super::DataArgs;

#[derive(Args)]
pub struct TrainArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Size of the latent code.
    #[arg(long, default_value_t = 200)]
    latent: usize,
    /// Width of the first convolutions (later ones use 2x and 4x).
    #[arg(long, default_value_t = 16)]
    channels: usize,
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Adam learning rate (betas 0.9/0.999, eps 1e-8 as in PyTorch).
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Seed of the initial weights and of --shuffle.
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
    /// Start from these weights (safetensors or PyTorch .pt state_dict) instead of the seed init.
    #[arg(long)]
    init: Option<PathBuf>,
    /// Train a denoiser: corrupt the inputs with gaussian:SIGMA, salt-pepper:P or mask:P (on
    /// [0,1] pixels, clipped) while the loss targets the clean images.
    #[arg(long)]
    noise: Option<cae::apps::noise::NoiseSpec>,
    /// Run folder; default runs/<timestamp>.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run in --out from its last checkpoint (from scratch, saying so, when no
    /// epoch of it has finished yet). --epochs and --lr may differ from the first start.
    #[arg(long, requires = "out")]
    resume: bool,
    /// Leave out image files that cannot be decoded (image folders), listing them, instead of
    /// stopping at the first.
    #[arg(long)]
    skip_bad: bool,
    /// Resize the images of --dataset folder to WIDTHxHEIGHT (bilinear); default: the first image's size.
    #[arg(long, value_parser = super::parse_image_size)]
    image_size: Option<(u32, u32)>,
    /// Do not write report.html into the run folder.
    #[arg(long)]
    no_report: bool,
}

pub fn run(args: TrainArgs) -> Result<()> {
    let settings = TrainSettings {
        dataset: args.data.dataset,
        data_dir: args.data.data_dir(),
        latent: args.latent,
        channels: args.channels,
        epochs: args.epochs,
        batch_size: args.batch_size,
        lr: args.lr,
        seed: args.seed,
        shuffle: args.shuffle,
        train_limit: args.train_limit,
        val_limit: args.val_limit,
        init: args.init,
        device: args.data.device,
        noise: args.noise,
    };
    settings.validate()?;
    let run_dir = args.out.unwrap_or_else(|| {
        PathBuf::from("runs").join(chrono::Local::now().format("%Y%m%d-%H%M%S").to_string())
    });
    let started = Instant::now();
    let options = cae::data::LoadOptions {
        skip_bad: args.skip_bad,
        image_size: args.image_size,
    };
    let loaded = cae::data::load_with_options(
        settings.dataset,
        &settings.data_dir,
        settings.seed,
        &options,
    )?;
    if !loaded.skipped.is_empty() {
        eprintln!("{}", cae::data::skipped_report(&loaded.skipped));
    }
    let splits = loaded.splits;
    println!(
        "data: {} training and {} validation images ({}x{}x{}) from {}  [{:.1} s]",
        settings
            .train_limit
            .map_or(splits.train.len(), |n| n.min(splits.train.len())),
        settings
            .val_limit
            .map_or(splits.test.len(), |n| n.min(splits.test.len())),
        splits.train.channels,
        splits.train.height,
        splits.train.width,
        settings.data_dir.display(),
        started.elapsed().as_secs_f64()
    );
    let outcome = cae::train::train(
        &settings,
        splits,
        &run_dir,
        args.resume,
        std::io::stderr().is_terminal(),
    )?;
    println!(
        "done in {:.1} s: final val MSE {:.6}, PSNR {:.2} dB; run folder {}",
        started.elapsed().as_secs_f64(),
        outcome.last.val_loss,
        outcome.last.val_psnr,
        outcome.run_dir.display()
    );
    if !args.no_report {
        let report = outcome.run_dir.join(cae::report::REPORT_FILE);
        cae::report::write_report(std::slice::from_ref(&outcome.run_dir), &report)?;
        println!("report: {}", report.display());
    }
    Ok(())
}
