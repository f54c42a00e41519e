//! `cae fit-latent`, `cae generate` and `cae interpolate`: new images from a model's latent space.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use rand::SeedableRng;
use rand::rngs::Xoshiro256PlusPlus;

use cae::apps::generate::{grid_rows, line_codes, sample_codes};
use cae::apps::latent_gaussian::{LatentGaussian, path_for_model};
use cae::apps::one_class;
use cae::{eval::inference, io::imageio};

use super::DataArgs;
use super::inputs::Split;

#[derive(Args)]
pub struct FitLatentArgs {
    /// Trained weights (safetensors or PyTorch .pt).
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    data: DataArgs,
    /// Which part of the dataset to fit.
    #[arg(long, value_enum, default_value = "train")]
    split: Split,
    /// Only images of this class (number or name).
    #[arg(long)]
    class: Option<String>,
    /// Only the first N images.
    #[arg(long)]
    limit: Option<usize>,
}

pub fn fit_latent(args: FitLatentArgs) -> Result<()> {
    let device = args.data.device.device()?;
    let (model, config) = super::load_model(&args.model, &device)?;
    let splits = cae::data::load(args.data.dataset, &args.data.data_dir(), 0)?;
    let mut set = match args.split {
        Split::Train => splits.train,
        Split::Test => splits.test,
    };
    let mut which = String::new();
    if let Some(class) = &args.class {
        let k = one_class::class_index(&set.class_names, class)?;
        which = format!(" of class {k} ({})", set.class_names[k]);
        set = one_class::class_subset(&set, k);
    }
    if let Some(n) = args.limit {
        set.truncate(n);
    }
    let gaussian = LatentGaussian::fit_set(&model, &config, &set, &device)?;
    let split = match args.split {
        Split::Train => "training",
        Split::Test => "validation",
    };
    let source = format!("{} {split} images{which}", set.len());
    let path = path_for_model(&args.model);
    gaussian.save(&path, &args.model, &config, &source)?;
    say!(
        "latent Gaussian of {source} (size {}, ridge {:.3e}) -> {}",
        gaussian.dim(),
        gaussian.ridge,
        path.display()
    );
    Ok(())
}

#[derive(Args)]
pub struct GenerateArgs {
    /// Trained weights; the latent Gaussian beside them comes from `cae fit-latent` or
    /// `cae anomaly fit`.
    #[arg(long)]
    model: PathBuf,
    /// Number of images.
    #[arg(long, default_value_t = 64)]
    n: usize,
    /// Scales the covariance: below 1 gives more typical, above 1 more varied images.
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Images per grid row; default the square root of --n, rounded up.
    #[arg(long)]
    columns: Option<usize>,
    /// The grid PNG.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    device: super::DeviceArg,
}

pub fn generate(args: GenerateArgs) -> Result<()> {
    if args.n == 0 {
        bail!("--n must be at least 1");
    }
    if !(args.temperature.is_finite() && args.temperature >= 0.0) {
        bail!(
            "--temperature must be a number >= 0, not {}",
            args.temperature
        );
    }
    let device = args.device.device()?;
    let (model, config) = super::load_model(&args.model, &device)?;
    let gaussian = LatentGaussian::load_for_model(&args.model)?;
    if gaussian.dim() != config.latent {
        bail!(
            "the latent Gaussian has size {}, the model's codes {}",
            gaussian.dim(),
            config.latent
        );
    }
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(args.seed);
    let codes = sample_codes(&gaussian, args.n, args.temperature, &mut rng);
    let images = inference::decode(&model, &config, &codes, &device);
    let columns = args
        .columns
        .unwrap_or_else(|| (args.n as f64).sqrt().ceil() as usize);
    let image_len = config.in_channels * config.height * config.width;
    cae::viz::grid::save_grid(
        &args.out,
        &grid_rows(&images, image_len, columns),
        config.in_channels,
        config.height,
        config.width,
    )?;
    say!(
        "decoded {} samples (temperature {}) into {}",
        args.n,
        args.temperature,
        args.out.display()
    );
    Ok(())
}

#[derive(Args)]
pub struct InterpolateArgs {
    /// Trained weights (safetensors or PyTorch .pt).
    #[arg(long)]
    model: PathBuf,
    /// The image the line starts from.
    a: PathBuf,
    /// The image the line ends at.
    b: PathBuf,
    /// Number of decoded points from A's code to B's code, both included.
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// The strip PNG: A, the decoded points, then B.
    #[arg(long)]
    out: PathBuf,
    /// Refuse images whose size differs from the model's instead of resizing them (bilinear).
    #[arg(long)]
    no_resize: bool,
    #[command(flatten)]
    device: super::DeviceArg,
}

pub fn interpolate(args: InterpolateArgs) -> Result<()> {
    if args.steps < 2 {
        bail!("--steps must be at least 2 (the two ends)");
    }
    let device = args.device.device()?;
    let (model, config) = super::load_model(&args.model, &device)?;
    let a = imageio::read_model_input(&args.a, &config, !args.no_resize)?;
    let b = imageio::read_model_input(&args.b, &config, !args.no_resize)?;
    let codes = inference::encode(&model, &config, &[a.clone(), b.clone()].concat(), &device);
    let (code_a, code_b) = codes.split_at(config.latent);
    let line = line_codes(code_a, code_b, args.steps);
    let decoded = inference::decode(&model, &config, &line, &device);
    let image_len = a.len();
    let strip = [a, decoded, b].concat();
    cae::viz::grid::save_grid(
        &args.out,
        &grid_rows(&strip, image_len, args.steps + 2),
        config.in_channels,
        config.height,
        config.width,
    )?;
    say!(
        "decoded {} points between the codes of {} and {} into {}",
        args.steps,
        args.a.display(),
        args.b.display(),
        args.out.display()
    );
    Ok(())
}
