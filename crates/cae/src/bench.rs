//! Throughput of the seed model: training steps and inference batches on random inputs, timed
//! the way `../shared/bench/torch_bench.py` times PyTorch, so the two can be compared.

use std::time::Instant;

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use serde::Serialize;

use crate::model::ModelConfig;
use crate::optim::{Adam, AdamConfig};
use crate::{init, io::weights, training};

/// What to time: the seed model's latent size, the batch sizes, and how often.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct BenchConfig {
    /// Latent size of the seed model (`--latent`); the rest of its shape is the tutorial's.
    pub latent: usize,
    /// Images per training step (`--batch-size`).
    pub batch_size: usize,
    /// Images per inference batch (`--infer-batch`).
    pub infer_batch: usize,
    /// Untimed repetitions before the timed ones (`--warmup`).
    pub warmup: usize,
    /// Timed repetitions (`--steps`).
    pub steps: usize,
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self {
            latent: 200,
            batch_size: 64,
            infer_batch: 256,
            warmup: 5,
            steps: 30,
        }
    }
}

/// The wall times of the timed repetitions of one step.
#[derive(Debug, Clone, Serialize)]
pub struct Timing {
    /// Median time of one repetition, in milliseconds.
    pub median_ms: f64,
    /// Shortest time of one repetition, in milliseconds.
    pub min_ms: f64,
    /// Mean time of one repetition, in milliseconds.
    pub mean_ms: f64,
    /// Images per second at the median time.
    pub images_per_second: f64,
}

/// What [`run`] measured, and where.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// What was timed.
    pub config: BenchConfig,
    /// Training steps: forward, MSE, backward and Adam on one batch of `batch_size` images.
    pub train: Timing,
    /// Reconstructions of one batch of `infer_batch` images, without autodiff.
    pub inference: Timing,
    /// Peak resident memory of this process (VmHWM), when the OS reports it.
    pub peak_rss_mib: Option<f64>,
    /// The threads the kernels and Burn ran on (rayon's pool: the logical CPUs, or
    /// `RAYON_NUM_THREADS`).
    pub threads: usize,
    /// The vector level cae's CPU kernels ran at (`CAE_SIMD`).
    pub simd: &'static str,
}

/// Runs the benchmark on `device` (a plain device; autodiff is added for training).
pub fn run(config: &BenchConfig, device: &Device) -> BenchReport {
    let model_config = ModelConfig {
        latent: config.latent,
        ..ModelConfig::default()
    };
    let dict = init::seed_state_dict(&model_config, 0);
    let train_device = device.clone().autodiff();
    let model = weights::build_model(&model_config, &dict, &train_device).expect("seed model");
    let mut adam = Adam::new(AdamConfig::default());
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(0);
    let x = random_batch(&mut rng, config.batch_size, &train_device);
    // The model moves through each step, as in training: a clone kept alive across the step
    // would share every parameter with it, and Adam would then copy each one instead of
    // updating it in place: on an AVX-512 Xeon the cloning loop's steps took 10% longer (8
    // alternated rounds of `cae bench`, median of the per-round ratios; inference 0.5%).
    let mut model = Some(model);
    let train_times = timed(config, || {
        let current = model.take().expect("the model of the previous step");
        let (next, _) = training::train_step(current, &mut adam, x.clone());
        model = Some(next);
    });
    let valid = model.expect("the trained model").valid();
    let xi = random_batch(&mut rng, config.infer_batch, device);
    let infer_times = timed(config, || {
        let _: f32 = valid.reconstruct(xi.clone()).sum().into_scalar();
    });
    BenchReport {
        config: *config,
        train: summarize(&train_times, config.batch_size),
        inference: summarize(&infer_times, config.infer_batch),
        peak_rss_mib: peak_rss_mib(),
        threads: rayon::current_num_threads(),
        simd: cae_kernels::simd::SimdLevel::active().name(),
    }
}

fn random_batch(rng: &mut Xoshiro256PlusPlus, n: usize, device: &Device) -> Tensor<4> {
    let data: Vec<f32> = (0..n * 3 * 32 * 32)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    Tensor::from_data(TensorData::new(data, [n, 3, 32, 32]), device)
}

fn timed(config: &BenchConfig, mut step: impl FnMut()) -> Vec<f64> {
    for _ in 0..config.warmup {
        step();
    }
    (0..config.steps)
        .map(|_| {
            let started = Instant::now();
            step();
            started.elapsed().as_secs_f64()
        })
        .collect()
}

fn summarize(seconds: &[f64], batch: usize) -> Timing {
    let mut sorted = seconds.to_vec();
    sorted.sort_by(f64::total_cmp);
    let median = if sorted.len() % 2 == 1 {
        sorted[sorted.len() / 2]
    } else {
        (sorted[sorted.len() / 2 - 1] + sorted[sorted.len() / 2]) / 2.0
    };
    Timing {
        median_ms: median * 1e3,
        min_ms: sorted[0] * 1e3,
        mean_ms: seconds.iter().sum::<f64>() / seconds.len() as f64 * 1e3,
        images_per_second: batch as f64 / median,
    }
}

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Median times of cae's convolution kernels for one layer of the seed model, at the training
/// batch size: the layer's own pass, its input gradient and its weight gradient.
#[derive(Debug, Clone, Serialize)]
pub struct LayerTiming {
    /// The layer, its channels, stride and input size: `encoder conv 2: 16->32 s2 32x32`.
    pub layer: String,
    /// Median time of the layer's own pass, in milliseconds.
    pub forward_ms: f64,
    /// Median time of the gradient with respect to the layer's input, in milliseconds.
    pub input_grad_ms: f64,
    /// Median time of the gradient with respect to the layer's weights, in milliseconds.
    pub weight_grad_ms: f64,
    /// Multiply-adds of one of the three passes, times two, over the median forward time.
    pub forward_gflops: f64,
    /// The same over the input gradient's median time.
    pub input_grad_gflops: f64,
    /// The same over the weight gradient's median time.
    pub weight_grad_gflops: f64,
    /// Each pass's GFLOP/s (forward, input grad, weight grad) as a percentage of the FMA peak
    /// measured in the same run.
    pub percent_of_peak: [f64; 3],
    /// The kernel of each pass: forward, input gradient, weight gradient.
    pub kernels: [&'static str; 3],
}

/// Times every convolution and transposed convolution of the seed model with cae's kernels,
/// and sets each pass against `peak_gflops` (see [`cae_kernels::peak::fma_peak_gflops`]).
pub fn layers(config: &BenchConfig, peak_gflops: f64) -> Vec<LayerTiming> {
    use cae_kernels::{Conv3x3, dispatch};
    let model_config = ModelConfig {
        latent: config.latent,
        ..ModelConfig::default()
    };
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(0);
    let mut random =
        |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-1.0..1.0)).collect() };
    let (mut h, mut w) = (model_config.height, model_config.width);
    let mut layers = Vec::new();
    for (i, &(cin, cout, stride)) in model_config.encoder_convs().iter().enumerate() {
        let g = Conv3x3 {
            batch: config.batch_size,
            image_channels: cin,
            image_height: h,
            image_width: w,
            feature_channels: cout,
            stride,
        };
        layers.push((
            format!("encoder conv {i}: {cin}->{cout} s{stride} {h}x{w}"),
            g,
            false,
        ));
        (h, w) = (g.feature_height(), g.feature_width());
    }
    for (i, &(cin, cout, stride)) in model_config.decoder_convs().iter().enumerate() {
        // A transposed convolution is the adjoint of the convolution from its output.
        let g = Conv3x3 {
            batch: config.batch_size,
            image_channels: cout,
            image_height: h * stride,
            image_width: w * stride,
            feature_channels: cin,
            stride,
        };
        layers.push((
            format!("decoder convT {i}: {cin}->{cout} s{stride} {h}x{w}"),
            g,
            true,
        ));
        (h, w) = (h * stride, w * stride);
    }
    layers
        .into_iter()
        .map(|(layer, g, transposed)| {
            let image = random(g.batch * g.image_len());
            let feature = random(g.batch * g.feature_len());
            let weight = random(g.weight_len());
            let bias = random(g.feature_channels);
            let conv = || dispatch::forward(&g, &image, &weight, Some(&bias), true);
            let adjoint = || dispatch::adjoint(&g, &feature, &weight);
            let median = |times: Vec<f64>| summarize(&times, 1).median_ms;
            let conv_ms = median(timed(config, || drop(conv())));
            let adjoint_ms = median(timed(config, || drop(adjoint())));
            let weight_grad_ms = median(timed(config, || {
                drop(dispatch::weight_grad(&g, &image, &feature))
            }));
            let (forward_ms, input_grad_ms) = if transposed {
                (adjoint_ms, conv_ms)
            } else {
                (conv_ms, adjoint_ms)
            };
            let macs = g.weight_len() * g.feature_height() * g.feature_width() * g.batch;
            let gflops = |ms: f64| 2.0 * macs as f64 / (ms * 1e6);
            let passes = [forward_ms, input_grad_ms, weight_grad_ms].map(gflops);
            LayerTiming {
                layer,
                forward_ms,
                input_grad_ms,
                weight_grad_ms,
                forward_gflops: passes[0],
                input_grad_gflops: passes[1],
                weight_grad_gflops: passes[2],
                percent_of_peak: passes.map(|g| 100.0 * g / peak_gflops),
                kernels: {
                    let (conv, adjoint) = (dispatch::forward_path(&g), dispatch::adjoint_path(&g));
                    let (forward, input_grad) = if transposed {
                        (adjoint, conv)
                    } else {
                        (conv, adjoint)
                    };
                    let weight_grad = dispatch::weight_grad_path(&g);
                    [forward.name(), input_grad.name(), weight_grad.name()]
                },
            }
        })
        .collect()
}
