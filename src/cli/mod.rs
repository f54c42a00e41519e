//! Flag parsing and dispatch to the library.

mod bench;
mod codes;
mod convert;
mod eval;
mod reconstruct;
mod train;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use cae::device::Backend;
use cae::settings::DatasetKind;

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
    /// Write a model's weights as a PyTorch state_dict (.pt).
    Export(convert::ExportArgs),
    /// Time training steps and inference of the seed model (compare with bench/compare.sh).
    Bench(bench::BenchArgs),
}

/// Which images to use.
#[derive(Args, Clone)]
pub struct DataArgs {
    /// cifar10 (official binary layout, downloaded when missing) or folder (ROOT/train/<class>/*, ROOT/test/<class>/*).
    #[arg(long, value_enum, default_value = "cifar10")]
    pub dataset: DatasetKind,
    /// Folder that holds `cifar-10-batches-bin/` (or the image folder's ROOT); default `$CAE_DATA`, else ~/.cache/cae.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Backend: flex (CPU), or cuda / wgpu when built with that feature.
    #[arg(long, default_value = "flex")]
    pub device: Backend,
}

impl DataArgs {
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(cae::data::default_data_dir)
    }
}

pub fn run() -> Result<()> {
    match Cli::parse().command {
        Command::Train(args) => train::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Reconstruct(args) => reconstruct::run(args),
        Command::Encode(args) => codes::encode(args),
        Command::Decode(args) => codes::decode(args),
        Command::Import(args) => convert::import(args),
        Command::Export(args) => convert::export(args),
        Command::Bench(args) => bench::run_bench(args),
    }
}
