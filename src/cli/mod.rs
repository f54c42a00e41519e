//! Flag parsing and dispatch to the library.

/// `println!` for a command's messages, or `eprintln!` when its output file is standard output
/// (`--out -`), so that the messages do not mix into the data.
macro_rules! say {
    ($($arg:tt)*) => {
        if $crate::cli::messages_to_stderr() {
            eprintln!($($arg)*)
        } else {
            println!($($arg)*)
        }
    };
}

mod anomaly;
mod bench;
mod choice;
mod codes;
mod convert;
mod denoise;
mod eval;
mod generate;
mod inputs;
pub mod interrupt;
mod progress;
mod reconstruct;
mod report;
mod sweep;
mod train;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use cae::data::DatasetKind;
use cae::device::Backend;
use choice::choice;

#[derive(Parser)]
#[command(
    name = "cae",
    version,
    about = "Convolutional autoencoders on CIFAR-10 and your own images, faithful to the PyTorch tutorial"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train an autoencoder and write a run folder (metrics, pictures, weights, checkpoint).
    Train(train::TrainArgs),
    /// Train one model per combination of comma-separated --latent/--channels/--lr/--batch-size
    /// values and compare them (summary.csv, losses.png, recon_compare.png, epochs_compare.png).
    Sweep(sweep::SweepArgs),
    /// Write one self-contained HTML page about run and sweep folders.
    Report(report::ReportArgs),
    /// Report the reconstruction error of a trained model on the validation images.
    Eval(eval::EvalArgs),
    /// Reconstruct image files; writes <name>_recon.png and a side-by-side grid.
    Reconstruct(reconstruct::ReconstructArgs),
    /// Write the latent codes of images or of a dataset to .npy (or CSV).
    Encode(codes::EncodeArgs),
    /// Decode latent codes from a .npy file into images.
    Decode(codes::DecodeArgs),
    /// Convert PyTorch (.pt or safetensors) weights of the tutorial's model into a cae model file.
    Import(convert::ImportArgs),
    /// Write a model's weights as a PyTorch state_dict (.pt), or the model as ONNX (.onnx).
    Export(convert::ExportArgs),
    /// Time training steps and inference of the seed model (compare with bench/compare.sh).
    Bench(bench::BenchArgs),
    /// Denoise image files, or report PSNR/SSIM of noisy vs denoised validation images.
    Denoise(denoise::DenoiseArgs),
    /// Anomaly detection: fit statistics beside a model, score images, run the one-class protocol.
    Anomaly(anomaly::AnomalyArgs),
    /// Fit the Gaussian of a dataset's latent codes beside a model (for `cae generate`).
    FitLatent(generate::FitLatentArgs),
    /// Decode samples of the prior (variational models) or of the fitted latent Gaussian into a grid of new images.
    Generate(generate::GenerateArgs),
    /// Decode the straight line between the codes of two images into a strip.
    Interpolate(generate::InterpolateArgs),
}

/// Which images to use.
#[derive(Args, Clone)]
pub struct DataArgs {
    /// cifar10 (official binary layout, downloaded when missing) or folder (ROOT/train/<class>/*, ROOT/test/<class>/*).
    #[arg(long, default_value = "cifar10", value_parser = choice::<DatasetKind>())]
    pub dataset: DatasetKind,
    /// Folder that holds `cifar-10-batches-bin/` (or the image folder's ROOT); default `$CAE_DATA`, else ~/.cache/cae.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    #[command(flatten)]
    pub device: DeviceArg,
}

impl DataArgs {
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(cae::data::default_data_dir)
    }
}

/// Parses `--image-size`: `WIDTHxHEIGHT`, or one number for square images.
pub fn parse_image_size(text: &str) -> Result<(u32, u32), String> {
    let parse = |s: &str| s.trim().parse::<u32>().ok().filter(|&v| v > 0);
    let size = match text.split_once(['x', 'X']) {
        Some((w, h)) => parse(w).zip(parse(h)),
        None => parse(text).map(|v| (v, v)),
    };
    size.ok_or_else(|| format!("`{text}` is not an image size such as 32x32 or 32"))
}

/// The file stem of `path`, made unique among the images of one call (`cat`, `cat_2`, ...).
pub fn unique_stem(
    path: &std::path::Path,
    used: &mut std::collections::HashMap<String, usize>,
) -> String {
    let stem = path
        .file_stem()
        .map_or_else(|| "image".to_string(), |s| s.to_string_lossy().into_owned());
    let count = used.entry(stem.clone()).or_insert(0);
    *count += 1;
    if *count == 1 {
        stem
    } else {
        format!("{stem}_{count}")
    }
}

static MESSAGES_TO_STDERR: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Whether the command writes its output to standard output (see `say!`).
pub fn messages_to_stderr() -> bool {
    MESSAGES_TO_STDERR.load(std::sync::atomic::Ordering::Relaxed)
}

/// Whether `args` name standard output as the output file: `--out -` or `--to -` (also
/// `/dev/stdout`).
fn output_is_stdout(args: &[String]) -> bool {
    let is_stdout = |value: &str| matches!(value, "-" | "/dev/stdout");
    args.windows(2)
        .any(|pair| matches!(pair[0].as_str(), "--out" | "--to") && is_stdout(&pair[1]))
        || args.iter().any(|arg| {
            ["--out=", "--to="]
                .iter()
                .any(|flag| arg.strip_prefix(flag).is_some_and(is_stdout))
        })
}

pub fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if output_is_stdout(&args) {
        MESSAGES_TO_STDERR.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    progress::DownloadBar::install();
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit());
    // A `CAE_SIMD` level this CPU lacks is refused before any work starts.
    cae_kernels::simd::SimdLevel::requested().map_err(anyhow::Error::msg)?;
    match cli.command {
        Command::Train(args) => train::run(args, subcommand(&matches, "train")),
        Command::Sweep(args) => sweep::run(args, subcommand(&matches, "sweep")),
        Command::Report(args) => report::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Reconstruct(args) => reconstruct::run(args),
        Command::Encode(args) => codes::encode(args),
        Command::Decode(args) => codes::decode(args),
        Command::Import(args) => convert::import(args),
        Command::Export(args) => convert::export(args),
        Command::Bench(args) => bench::run_bench(args),
        Command::Denoise(args) => denoise::run(args),
        Command::Anomaly(args) => anomaly::run(args),
        Command::FitLatent(args) => generate::fit_latent(args),
        Command::Generate(args) => generate::generate(args),
        Command::Interpolate(args) => generate::interpolate(args),
    }
}

/// The flags of subcommand `name`, which clap has just matched.
fn subcommand<'a>(matches: &'a clap::ArgMatches, name: &str) -> &'a clap::ArgMatches {
    matches
        .subcommand_matches(name)
        .expect("the subcommand clap matched")
}

/// Whether the flag for settings-file key `key` (`batch-size`) was given on the command line,
/// rather than taking its default: what `--config` must not override.
pub fn given_on_command_line(matches: &clap::ArgMatches, key: &str) -> bool {
    let id = match key {
        // `--device` is the field `backend` of `DeviceArg`.
        "device" => "backend".to_string(),
        _ => key.replace('-', "_"),
    };
    matches.try_get_raw(&id).is_ok_and(|raw| raw.is_some())
        && matches.value_source(&id) == Some(clap::parser::ValueSource::CommandLine)
}

/// `--device`, shared by every command that runs a model.
#[derive(Args, Clone, Copy)]
pub struct DeviceArg {
    /// Backend: flex (CPU), or cuda / wgpu when built with that feature.
    #[arg(long = "device", default_value = "flex")]
    pub backend: Backend,
}

impl DeviceArg {
    pub fn device(&self) -> Result<burn::tensor::Device> {
        self.backend.device()
    }
}

/// `--no-resize`, shared by every command that reads images for a model.
#[derive(Args, Clone, Copy)]
pub struct ResizeArg {
    /// Refuse images whose size differs from the model's instead of resizing them to it
    /// (bilinear).
    #[arg(long)]
    pub no_resize: bool,
}

impl ResizeArg {
    /// An image file as the model's normalized input, resized to the model's size unless
    /// --no-resize.
    pub fn read(&self, path: &std::path::Path, config: &cae::ModelConfig) -> Result<Vec<f32>> {
        cae::read_model_input(path, config, !self.no_resize)
    }
}

/// Reads a model file, saying once when its weights were stored in another precision than
/// float32 and converted.
pub fn load_model(
    path: &std::path::Path,
    device: &burn::tensor::Device,
) -> Result<(cae::Autoencoder, cae::ModelConfig)> {
    let (model, config, converted) = cae::io::weights::load_model_converting(path, device)?;
    note_conversion(path, converted);
    Ok((model, config))
}

/// The note that `path`'s weights were converted from `precision` to float32.
pub fn note_conversion(path: &std::path::Path, precision: Option<&str>) {
    if let Some(precision) = precision {
        eprintln!(
            "note: {} holds {precision} weights; converted to float32",
            path.display()
        );
    }
}
