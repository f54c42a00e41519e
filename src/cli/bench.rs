use anyhow::Result;
use clap::Args;

use cae::bench::{BenchConfig, run};
use cae::device::Backend;

#[derive(Args)]
pub struct BenchArgs {
    #[arg(long, default_value_t = 200)]
    latent: usize,
    /// Training batch size.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Inference batch size.
    #[arg(long, default_value_t = 256)]
    infer_batch: usize,
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    /// Timed repetitions (the median is reported).
    #[arg(long, default_value_t = 30)]
    steps: usize,
    #[arg(long, default_value = "flex")]
    device: Backend,
    /// One JSON object on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run_bench(args: BenchArgs) -> Result<()> {
    anyhow::ensure!(
        args.steps > 0 && args.batch_size > 0 && args.infer_batch > 0,
        "--steps and batch sizes must be at least 1"
    );
    let config = BenchConfig {
        latent: args.latent,
        batch_size: args.batch_size,
        infer_batch: args.infer_batch,
        warmup: args.warmup,
        steps: args.steps,
    };
    let report = run(&config, &args.device.device()?);
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    println!(
        "cae {} on {} ({} threads), latent {}",
        env!("CARGO_PKG_VERSION"),
        args.device,
        report.threads,
        config.latent
    );
    let t = &report.train;
    println!(
        "[cae] train batch {}: median {:.1} ms/step, min {:.1}, mean {:.1} -> {:.0} images/s",
        config.batch_size, t.median_ms, t.min_ms, t.mean_ms, t.images_per_second
    );
    let i = &report.inference;
    println!(
        "[cae] inference batch {}: median {:.1} ms/batch, min {:.1} -> {:.0} images/s",
        config.infer_batch, i.median_ms, i.min_ms, i.images_per_second
    );
    if let Some(mib) = report.peak_rss_mib {
        println!("[cae] peak resident memory {mib:.0} MiB");
    }
    Ok(())
}
