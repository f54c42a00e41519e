//! `cae fit-latent`, `cae generate` and `cae interpolate`: new images from a model's latent space.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use rand::SeedableRng;
use rand::rngs::Xoshiro256PlusPlus;

use cae::ModelConfig;
use cae::apps::generate::{grid_rows, line_codes, prior_codes, sample_codes};
use cae::apps::latent_gaussian::{LatentGaussian, file_sha256, path_for_model};
use cae::apps::one_class;
use cae::data::batcher::normalized_batch;
use cae::eval::frechet;
use cae::eval::inference;

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
    /// Trained weights. A variational model samples its prior N(0, I); a plain one samples the
    /// latent Gaussian beside it (from `cae fit-latent` or `cae anomaly fit`).
    #[arg(long)]
    model: PathBuf,
    /// Number of images.
    #[arg(long, default_value_t = 64)]
    n: usize,
    /// Scales the covariance (a variational model's prior: the standard deviation): below 1
    /// gives more typical, above 1 more varied images.
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
    /// Also print the Fréchet code distance between the validation images of --dataset and
    /// --report-samples samples, in the codes of --reference-model.
    #[arg(long, requires = "reference_model")]
    report: bool,
    /// The model whose codes the Fréchet code distance compares in: a plain model trained
    /// separately, neither the one measured nor one it is compared with (e.g. latent 1000).
    #[arg(long, requires = "report")]
    reference_model: Option<PathBuf>,
    /// Validation images and samples the distance compares (at most the validation set's size).
    #[arg(long, default_value_t = 10_000)]
    report_samples: usize,
    #[command(flatten)]
    data: DataArgs,
}

pub fn generate(args: GenerateArgs) -> Result<()> {
    if args.n == 0 || (args.report && args.report_samples < 2) {
        bail!("--n must be at least 1 and --report-samples at least 2");
    }
    if !(args.temperature.is_finite() && args.temperature >= 0.0) {
        bail!(
            "--temperature must be a number >= 0, not {}",
            args.temperature
        );
    }
    let device = args.data.device.device()?;
    let (model, config) = super::load_model(&args.model, &device)?;
    let reference = match &args.reference_model {
        Some(path) => Some(reference_for(path, &args.model, &config, &device)?),
        None => None,
    };
    let test = match &reference {
        Some(_) => Some(validation_images(&args, &config)?),
        None => None,
    };
    let count = match &test {
        Some(test) => args.n.max(test.len() / config.image_len()),
        None => args.n,
    };
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(args.seed);
    let (codes, source) = if config.variational {
        let codes = prior_codes(count, config.latent, args.temperature, &mut rng);
        (codes, "the prior N(0, I)")
    } else {
        let gaussian = LatentGaussian::load_for_model(&args.model)?;
        if gaussian.dim() != config.latent {
            bail!(
                "the latent Gaussian has size {}, the model's codes {}",
                gaussian.dim(),
                config.latent
            );
        }
        let codes = sample_codes(&gaussian, count, args.temperature, &mut rng);
        (codes, "the fitted latent Gaussian")
    };
    let images = inference::decode(&model, &config, &codes, &device);
    let columns = args
        .columns
        .unwrap_or_else(|| (args.n as f64).sqrt().ceil() as usize);
    let image_len = config.image_len();
    cae::viz::grid::save_grid(
        &args.out,
        &grid_rows(&images[..args.n * image_len], image_len, columns),
        config.in_channels,
        config.height,
        config.width,
    )?;
    say!(
        "decoded {} samples of {source} (temperature {}) into {}",
        args.n,
        args.temperature,
        args.out.display()
    );
    if let (Some((reference, reference_config, path)), Some(test)) = (reference, test) {
        let compared = test.len() / image_len;
        let generated = &images[..compared * image_len];
        let distance =
            frechet::code_distance(&reference, &reference_config, &test, generated, &device)?;
        say!(
            "Fréchet code distance {distance:.3}: {compared} validation images vs {compared} \
             samples (the first {} shown), in the latent-{} codes of {}",
            args.n,
            reference_config.latent,
            path.display()
        );
    }
    Ok(())
}

/// The reference model of `--report`, which must take the same images as the model measured
/// and must not be the same file.
fn reference_for(
    path: &std::path::Path,
    measured: &std::path::Path,
    config: &ModelConfig,
    device: &burn::tensor::Device,
) -> Result<(cae::Autoencoder, ModelConfig, PathBuf)> {
    let (reference, reference_config) = super::load_model(path, device)?;
    if (
        reference_config.in_channels,
        reference_config.height,
        reference_config.width,
    ) != (config.in_channels, config.height, config.width)
    {
        bail!(
            "--reference-model {} takes {}x{}x{} images, the model {}x{}x{}",
            path.display(),
            reference_config.in_channels,
            reference_config.height,
            reference_config.width,
            config.in_channels,
            config.height,
            config.width
        );
    }
    if file_sha256(path)? == file_sha256(measured)? {
        bail!(
            "--reference-model {} is the model measured ({}): the distance needs codes of a \
             model that is neither of the models compared",
            path.display(),
            measured.display()
        );
    }
    Ok((reference, reference_config, path.to_path_buf()))
}

/// The first `--report-samples` validation images of `--dataset`, normalized and flattened.
fn validation_images(args: &GenerateArgs, config: &ModelConfig) -> Result<Vec<f32>> {
    let mut test = cae::data::load(args.data.dataset, &args.data.data_dir(), 0)?.test;
    test.truncate(args.report_samples);
    test.check_fits(config)
        .with_context(|| args.model.display().to_string())?;
    if test.len() < 2 {
        bail!("the dataset has fewer than 2 validation images to compare samples with");
    }
    let all: Vec<usize> = (0..test.len()).collect();
    Ok(normalized_batch(&test, &all))
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
    #[command(flatten)]
    resize: super::ResizeArg,
    #[command(flatten)]
    device: super::DeviceArg,
}

pub fn interpolate(args: InterpolateArgs) -> Result<()> {
    if args.steps < 2 {
        bail!("--steps must be at least 2 (the two ends)");
    }
    let device = args.device.device()?;
    let (model, config) = super::load_model(&args.model, &device)?;
    let a = args.resize.read(&args.a, &config)?;
    let b = args.resize.read(&args.b, &config)?;
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
