use anyhow::Result;
use clap::Args;

use cae::bench::{BenchConfig, run};

#[derive(Args)]
pub struct BenchArgs {
    /// Size of the latent code of the benchmarked model.
    #[arg(long, default_value_t = 200)]
    latent: usize,
    /// Training batch size.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Inference batch size.
    #[arg(long, default_value_t = 256)]
    infer_batch: usize,
    /// Untimed repetitions before the timed ones.
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    /// Timed repetitions (the median is reported).
    #[arg(long, default_value_t = 30)]
    steps: usize,
    #[command(flatten)]
    device: super::DeviceArg,
    /// One JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// Time each convolution layer's kernels (forward, input gradient, weight gradient) at
    /// the training batch size instead of whole steps (CPU only).
    #[arg(long)]
    layers: bool,
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
    if args.layers {
        return print_layers(&config, args.json);
    }
    let report = run(&config, &args.device.device()?);
    if args.json {
        say!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    say!(
        "cae {} on {} ({} threads, SIMD {}), latent {}",
        env!("CARGO_PKG_VERSION"),
        args.device.backend,
        report.threads,
        report.simd,
        config.latent
    );
    let t = &report.train;
    say!(
        "[cae] train batch {}: median {:.1} ms/step, min {:.1}, mean {:.1} -> {:.0} images/s",
        config.batch_size,
        t.median_ms,
        t.min_ms,
        t.mean_ms,
        t.images_per_second
    );
    let i = &report.inference;
    say!(
        "[cae] inference batch {}: median {:.1} ms/batch, min {:.1} -> {:.0} images/s",
        config.infer_batch,
        i.median_ms,
        i.min_ms,
        i.images_per_second
    );
    if let Some(mib) = report.peak_rss_mib {
        say!("[cae] peak resident memory {mib:.0} MiB");
    }
    Ok(())
}

fn print_layers(config: &BenchConfig, json: bool) -> Result<()> {
    let peak = cae_kernels::peak::fma_peak_gflops();
    let timings = cae::bench::layers(config, peak);
    if json {
        say!("{}", serde_json::to_string(&timings)?);
        return Ok(());
    }
    say!(
        "SIMD: {} (measured FMA peak {peak:.0} GFLOP/s on {} threads; CAE_SIMD=avx512|avx2|neon|portable chooses the level, portable runs im2col + gemm)",
        cae_kernels::simd::SimdLevel::active().name(),
        rayon::current_num_threads()
    );
    let title = format!("layer (batch {})", config.batch_size);
    say!(
        "{title:<38} {:>10} {:>10} {:>11}  {:>17}  kernels (forward, input grad, weight grad)",
        "forward",
        "input grad",
        "weight grad",
        "% of FMA peak"
    );
    let mut totals = [0.0; 3];
    for t in &timings {
        let [f, i, w] = t.percent_of_peak;
        say!(
            "{:<38} {:>8.2}ms {:>8.2}ms {:>9.2}ms  {f:>5.0} {i:>5.0} {w:>5.0}  {}",
            t.layer,
            t.forward_ms,
            t.input_grad_ms,
            t.weight_grad_ms,
            t.kernels.join(", ")
        );
        totals[0] += t.forward_ms;
        totals[1] += t.input_grad_ms;
        totals[2] += t.weight_grad_ms;
    }
    say!(
        "{:<38} {:>8.2}ms {:>8.2}ms {:>9.2}ms",
        "total",
        totals[0],
        totals[1],
        totals[2]
    );
    Ok(())
}
