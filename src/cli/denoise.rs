//! `cae denoise`: clean up image files, or measure denoising on a dataset's validation images.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;

use super::choice::choice;
use cae::apps::denoise::{self, DenoiseReport, psnr};
use cae::data::DatasetKind;
use cae::data::augment::NoiseSpec;
use cae::data::batcher::{denormalize, normalized_batch};
use cae::io::imageio;
use cae::model::ModelConfig;

#[derive(Args)]
pub struct DenoiseArgs {
    /// Trained weights, e.g. from `cae train --noise gaussian:0.1`.
    #[arg(long)]
    model: PathBuf,
    /// Noisy images to clean up (or clean ones to corrupt first with --noise).
    #[arg(conflicts_with = "dataset")]
    images: Vec<PathBuf>,
    /// Corrupt the inputs first: gaussian:SIGMA, salt-pepper:P or mask:P (on [0,1] pixels).
    #[arg(long)]
    noise: Option<NoiseSpec>,
    /// Seed of the noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Measure on this dataset's validation images instead (with --noise and --report).
    #[arg(long, requires_all = ["noise", "report"], value_parser = choice::<DatasetKind>())]
    dataset: Option<DatasetKind>,
    /// Folder that holds the dataset; default `$CAE_DATA`, else ~/.cache/cae.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Use only the first N validation images.
    #[arg(long)]
    val_limit: Option<usize>,
    /// Print mean PSNR and SSIM against the clean images of the noisy inputs and of the
    /// denoised outputs.
    #[arg(long, requires = "dataset")]
    report: bool,
    /// Print the report as one JSON object.
    #[arg(long, requires = "report")]
    json: bool,
    /// Output folder: <name>_denoised.png (and <name>_noisy.png with --noise) and grid.png; with
    /// --report, a grid of one validation image per class (clean, noisy, denoised).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Average the outputs for the image's flips and rotations (8 passes for square images, 4
    /// otherwise): slower, and closer to the clean image.
    #[arg(long)]
    self_ensemble: bool,
    #[command(flatten)]
    resize: super::ResizeArg,
    #[command(flatten)]
    device: super::DeviceArg,
}

pub fn run(args: DenoiseArgs) -> Result<()> {
    match (args.dataset, args.noise) {
        (Some(kind), Some(noise)) => report(&args, kind, noise),
        _ => denoise_files(&args),
    }
}

fn report(args: &DenoiseArgs, kind: DatasetKind, noise: NoiseSpec) -> Result<()> {
    let device = args.device.device()?;
    let (model, config) = super::load_model(&args.model, &device)?;
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(cae::data::default_data_dir);
    let mut test = cae::data::load(kind, &data_dir, 0)?.test;
    if let Some(n) = args.val_limit {
        test.truncate(n);
    }
    let report = denoise::report(
        &model,
        &config,
        &test,
        noise,
        args.seed,
        args.self_ensemble,
        &device,
    )?;
    if args.json {
        say!("{}", serde_json::to_string(&report)?);
    } else {
        print_report(&report);
    }
    if let Some(out) = &args.out {
        let shown = test.first_of_each_class();
        let clean = normalized_batch(&test, &shown);
        let noisy = noise.corrupt_images(&clean, test.image_len(), args.seed, 0, 0);
        let denoised =
            denoise::denoise_images(&model, &config, &noisy, args.self_ensemble, &device);
        let grid = out.join("denoise_grid.png");
        create_dir(out)?;
        save_rows(&grid, &[&clean, &noisy, &denoised], &config)?;
        say!("wrote {} (rows: clean, noisy, denoised)", grid.display());
    }
    Ok(())
}

fn print_report(r: &DenoiseReport) {
    say!(
        "denoising {} on {} validation images (means over images, [0,1] pixels, against the clean images)",
        r.noise,
        r.n
    );
    say!("{:<24} {:>10} {:>8}", "", "PSNR dB", "SSIM");
    let mut rows = vec![
        ("noisy input", r.noisy),
        ("denoised", r.denoised),
        ("clean reconstruction", r.reconstructed),
    ];
    if let Some(q) = r.self_ensembled {
        rows.insert(2, ("denoised, self-ensemble", q));
    }
    for (name, q) in rows {
        say!("{name:<24} {:>10.2} {:>8.4}", q.psnr, q.ssim);
    }
    say!(
        "PSNR gain {:+.2} dB, SSIM gain {:+.4}{}",
        r.psnr_gain(),
        r.best().ssim - r.noisy.ssim,
        if r.self_ensembled.is_some() {
            " (self-ensemble)"
        } else {
            ""
        }
    );
}

fn denoise_files(args: &DenoiseArgs) -> Result<()> {
    if args.images.is_empty() {
        bail!("give image files to denoise, or --dataset with --noise and --report");
    }
    let out = args
        .out
        .as_ref()
        .context("--out FOLDER is needed for the denoised images")?;
    let device = args.device.device()?;
    let (model, config) = super::load_model(&args.model, &device)?;
    let mut inputs = Vec::new();
    for path in &args.images {
        inputs.extend(args.resize.read(path, &config)?);
    }
    let size = config.in_channels * config.height * config.width;
    let noisy = match args.noise {
        Some(noise) => noise.corrupt_images(&inputs, size, args.seed, 0, 0),
        None => inputs.clone(),
    };
    let denoised = denoise::denoise_images(&model, &config, &noisy, args.self_ensemble, &device);
    create_dir(out)?;
    let mut used = HashMap::new();
    for (i, path) in args.images.iter().enumerate() {
        let name = super::unique_stem(path, &mut used);
        let image = |v: &[f32]| imageio::to_image(&v[i * size..(i + 1) * size], &config);
        imageio::save_png(&out.join(format!("{name}_denoised.png")), &image(&denoised))?;
        if args.noise.is_some() {
            imageio::save_png(&out.join(format!("{name}_noisy.png")), &image(&noisy))?;
            let unit = |v: &[f32]| -> Vec<f32> {
                v[i * size..(i + 1) * size]
                    .iter()
                    .map(|&x| denormalize(x))
                    .collect()
            };
            say!(
                "{:<40} PSNR noisy {:>6.2} dB, denoised {:>6.2} dB",
                path.display(),
                psnr(&unit(&inputs), &unit(&noisy)),
                psnr(&unit(&inputs), &unit(&denoised))
            );
        }
    }
    let grid = out.join("grid.png");
    if args.noise.is_some() {
        save_rows(&grid, &[&inputs, &noisy, &denoised], &config)?;
    } else {
        save_rows(&grid, &[&inputs, &denoised], &config)?;
    }
    say!(
        "wrote {} denoised images and {} to {}",
        args.images.len(),
        grid.display(),
        out.display()
    );
    Ok(())
}

/// One grid row per slice of images.
fn save_rows(path: &Path, rows: &[&Vec<f32>], config: &ModelConfig) -> Result<()> {
    let size = config.in_channels * config.height * config.width;
    let rows: Vec<Vec<Vec<f32>>> = rows
        .iter()
        .map(|images| images.chunks(size).map(<[f32]>::to_vec).collect())
        .collect();
    cae::viz::grid::save_grid(path, &rows, config.in_channels, config.height, config.width)
}

fn create_dir(dir: &Path) -> Result<()> {
    cae::io::create_output_dir(dir)
}
