//! `cae encode` and `cae decode`: images to latent codes and back.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use clap::{Args, ValueEnum};

use cae::data::batcher::normalized_batch;
use cae::{eval::inference, io::imageio, io::npy};

use super::inputs::{ImageInputs, Inputs};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CodeFormat {
    /// NumPy .npy (float32), plus labels.npy (int64) beside it for datasets.
    Npy,
    /// CSV with a header: source, label, z0, z1, ...
    Csv,
}

#[derive(Args)]
pub struct EncodeArgs {
    /// Trained weights (safetensors or PyTorch .pt).
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    inputs: ImageInputs,
    /// Output file (latents.npy or latents.csv).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, value_enum, default_value = "npy")]
    format: CodeFormat,
    /// Also write a variational model's posterior log-variances, (N, latent) float32, to this
    /// .npy file (the codes are the posterior means).
    #[arg(long)]
    log_variances: Option<PathBuf>,
    #[command(flatten)]
    device: super::DeviceArg,
}

pub fn encode(args: EncodeArgs) -> Result<()> {
    let device = args.device.device()?;
    let (model, config) = super::load_model(&args.model, &device)?;
    let (inputs, sources, labels) = match args.inputs.load(&args.model, &config, "encode")? {
        Inputs::Dataset(set) => {
            let all: Vec<usize> = (0..set.len()).collect();
            let labels: Vec<i64> = set.labels.iter().map(|&l| i64::from(l)).collect();
            (normalized_batch(&set, &all), set.sources, Some(labels))
        }
        Inputs::Files { pixels, sources } => (pixels, sources, None),
    };
    let (codes, log_vars) = match &args.log_variances {
        None => (inference::encode(&model, &config, &inputs, &device), None),
        Some(path) => match inference::posterior(&model, &config, &inputs, &device) {
            Some((means, log_vars)) => (means, Some((path, log_vars))),
            None => bail!(
                "--log-variances {}: {} is a plain autoencoder; only a variational model \
                 (trained with --variational) has posterior variances",
                path.display(),
                args.model.display()
            ),
        },
    };
    let n = sources.len();
    if let Some((path, log_vars)) = log_vars {
        npy::write_f32(path, &[n, config.latent], &log_vars)?;
        say!(
            "wrote {n} log-variances of size {} to {}",
            config.latent,
            path.display()
        );
    }
    match args.format {
        CodeFormat::Npy => {
            npy::write_f32(&args.out, &[n, config.latent], &codes)?;
            if labels.is_some() && super::messages_to_stderr() {
                eprintln!(
                    "labels not written: they go beside the codes file, and the codes went to \
                     standard output (--format csv carries them in the same stream)"
                );
            } else if let Some(labels) = &labels {
                let path = args.out.with_file_name("labels.npy");
                npy::write_i64(&path, labels)?;
                say!("wrote {} labels to {}", n, path.display());
            }
        }
        CodeFormat::Csv => write_csv(
            &args.out,
            &sources,
            labels.as_deref(),
            &codes,
            config.latent,
        )?,
    }
    say!(
        "wrote {n} codes of size {} to {}",
        config.latent,
        args.out.display()
    );
    Ok(())
}

fn write_csv(
    path: &Path,
    sources: &[String],
    labels: Option<&[i64]>,
    codes: &[f32],
    latent: usize,
) -> Result<()> {
    cae::io::atomic::write_with(path, |w| {
        let header: Vec<String> = (0..latent).map(|i| format!("z{i}")).collect();
        writeln!(w, "source,label,{}", header.join(","))?;
        for (i, (source, code)) in sources.iter().zip(codes.chunks(latent)).enumerate() {
            let label = labels.map_or(String::new(), |l| l[i].to_string());
            let values: Vec<String> = code.iter().map(f32::to_string).collect();
            writeln!(
                w,
                "\"{}\",{label},{}",
                source.replace('"', "\"\""),
                values.join(",")
            )?;
        }
        Ok(())
    })
}

#[derive(Args)]
pub struct DecodeArgs {
    /// Trained weights (safetensors or PyTorch .pt).
    #[arg(long)]
    model: PathBuf,
    /// An (N, latent) float32 .npy file, e.g. from `cae encode`.
    codes: PathBuf,
    /// Folder for one PNG per code (000000.png, ...) and grid.png.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    device: super::DeviceArg,
}

pub fn decode(args: DecodeArgs) -> Result<()> {
    let device = args.device.device()?;
    let (model, config) = super::load_model(&args.model, &device)?;
    let (shape, codes) = npy::read_f32(&args.codes)?;
    if shape.len() != 2 || shape[1] != config.latent {
        bail!(
            "{}: shape {shape:?}, but the model needs (N, {}) codes",
            args.codes.display(),
            config.latent
        );
    }
    if let Some(row) = codes
        .chunks(config.latent)
        .position(|code| code.iter().any(|v| !v.is_finite()))
    {
        bail!(
            "{}: row {row} holds NaN or infinite values; codes must be finite numbers",
            args.codes.display()
        );
    }
    let images = inference::decode(&model, &config, &codes, &device);
    cae::io::create_output_dir(&args.out)?;
    let size = config.in_channels * config.height * config.width;
    for (i, image) in images.chunks(size).enumerate() {
        imageio::save_png(
            &args.out.join(format!("{i:06}.png")),
            &imageio::to_image(image, &config),
        )?;
    }
    let cells: Vec<Vec<f32>> = images.chunks(size).map(<[f32]>::to_vec).collect();
    let rows: Vec<Vec<Vec<f32>>> = cells.chunks(10).map(<[Vec<f32>]>::to_vec).collect();
    let grid = args.out.join("grid.png");
    cae::viz::grid::save_grid(
        &grid,
        &rows,
        config.in_channels,
        config.height,
        config.width,
    )?;
    say!(
        "decoded {} codes into {} and {}",
        shape[0],
        args.out.display(),
        grid.display()
    );
    Ok(())
}
