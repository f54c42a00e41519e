use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, bail};
use clap::Args;

use super::DataArgs;
use super::inputs::{ModelFlags, TrainingFlags};

#[derive(Args)]
pub struct TrainArgs {
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    model: ModelFlags,
    #[command(flatten)]
    training: TrainingFlags,
    /// Start from these weights (safetensors or PyTorch .pt state_dict) instead of the seed init.
    #[arg(long)]
    init: Option<PathBuf>,
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
    /// Do not write TensorBoard event files into the run folder.
    #[arg(long)]
    no_tensorboard: bool,
    /// Take the training settings from this TOML file (as every run folder's config.toml
    /// holds them); flags given on the command line override it.
    #[arg(long)]
    config: Option<PathBuf>,
}

pub fn run(args: TrainArgs, matches: &clap::ArgMatches) -> Result<()> {
    let mut settings = args
        .training
        .settings(&args.data, &args.model, args.init.clone());
    if let Some(path) = &args.config {
        let given = |key: &str| super::given_on_command_line(matches, key);
        cae::config_file::apply(&mut settings, path, &given)?;
    }
    settings.validate()?;
    let run_dir = args.out.unwrap_or_else(|| {
        PathBuf::from("runs").join(chrono::Local::now().format("%Y%m%d-%H%M%S").to_string())
    });
    if run_dir.exists() && !run_dir.is_dir() {
        bail!("--out {}: exists and is not a folder", run_dir.display());
    }
    let started = Instant::now();
    let options = cae::data::LoadOptions {
        skip_bad: args.skip_bad,
        image_size: args.image_size,
    };
    let loaded = cae::data::load_with_options(
        settings.data.dataset,
        &settings.data.data_dir,
        settings.run.seed,
        &options,
    )?;
    if !loaded.skipped.is_empty() {
        eprintln!("{}", cae::data::skipped_report(&loaded.skipped));
    }
    let (splits, source) = (loaded.splits, loaded.source);
    say!(
        "data: {} training and {} validation images ({}x{}x{}) from {}  [{:.1} s]",
        settings
            .data
            .train_limit
            .map_or(splits.train.len(), |n| n.min(splits.train.len())),
        settings
            .data
            .val_limit
            .map_or(splits.test.len(), |n| n.min(splits.test.len())),
        splits.train.channels,
        splits.train.height,
        splits.train.width,
        source.display(),
        started.elapsed().as_secs_f64()
    );
    let outcome = cae::training::train(
        &settings,
        splits,
        &run_dir,
        cae::RunOptions {
            resume: args.resume,
            tensorboard: !args.no_tensorboard,
        },
        &mut super::progress::Terminal::new(),
    )?;
    say!(
        "done in {:.1} s: final val MSE {:.6}, PSNR {:.2} dB; run folder {}",
        started.elapsed().as_secs_f64(),
        outcome.last.val_loss,
        outcome.last.val_psnr,
        outcome.run_dir.display()
    );
    if !args.no_report {
        let report = outcome.run_dir.join(cae::run_folder::REPORT_FILE);
        cae::report::write_report(std::slice::from_ref(&outcome.run_dir), &report)?;
        say!("report: {}", report.display());
    }
    Ok(())
}
