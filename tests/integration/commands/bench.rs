//! `cae bench` runs and reports well-formed figures (speed itself is judged by bench/compare.sh).

use crate::common;

use common::cae;

#[test]
fn bench_reports_json_figures() {
    let stdout = cae(&[
        "bench",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--batch-size",
        "8",
        "--infer-batch",
        "16",
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    for phase in ["train", "inference"] {
        let rate = report[phase]["images_per_second"].as_f64().unwrap();
        let median = report[phase]["median_ms"].as_f64().unwrap();
        assert!(rate > 0.0 && median > 0.0, "{phase}: {report}");
        assert!(report[phase]["min_ms"].as_f64().unwrap() <= median);
    }
    assert_eq!(report["config"]["batch_size"], 8);
    assert!(report["peak_rss_mib"].as_f64().unwrap() > 1.0);
}

/// The reported thread count is the one the work ran on (bench/compare.sh gives ONNX Runtime
/// as many), not the machine's CPU count.
#[test]
fn bench_reports_the_threads_it_ran_on() {
    let stdout = common::stdout_of(
        common::cae_command(&[&["bench", "--json"], QUICK].concat()).env("RAYON_NUM_THREADS", "1"),
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["threads"], 1, "{report}");
}

/// One untimed-warm-up step at batch 4: enough to check what is reported.
const QUICK: &[&str] = &["--steps", "1", "--warmup", "0", "--batch-size", "4"];

#[test]
fn bench_layers_names_every_layer_and_its_kernels() {
    let stdout = cae(&[&["bench", "--layers", "--json"], QUICK].concat());
    let layers: Vec<serde_json::Value> = serde_json::from_str(&stdout).unwrap();
    assert_eq!(layers.len(), 12, "six convolutions and six transposed");
    let known = ["direct", "channels-last", "im2col", "col2im"];
    for layer in &layers {
        for field in [
            "forward_ms",
            "input_grad_ms",
            "weight_grad_ms",
            "input_grad_gflops",
        ] {
            assert!(layer[field].as_f64().unwrap() > 0.0, "{layer}");
        }
        let percents = layer["percent_of_peak"].as_array().unwrap();
        assert_eq!(percents.len(), 3, "{layer}");
        assert!(
            percents
                .iter()
                .all(|p| p.as_f64().is_some_and(|p| p > 0.0 && p.is_finite())),
            "{layer}"
        );
        let kernels = layer["kernels"].as_array().unwrap();
        assert_eq!(kernels.len(), 3, "{layer}");
        assert!(
            kernels.iter().all(|k| known.contains(&k.as_str().unwrap())),
            "{layer}"
        );
    }
}

/// `CAE_SIMD` picks the level the kernels run at, and `cae bench` reports it.
#[test]
fn bench_runs_at_every_level_the_cpu_has() {
    use cae_kernels::simd::SimdLevel;
    let args = [&["bench", "--infer-batch", "4", "--json"], QUICK].concat();
    for level in SimdLevel::supported() {
        let output = common::cae_command(&args)
            .env("CAE_SIMD", level.name())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{}: {stderr}", level.name());
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(report["simd"], level.name());
    }
}

/// An unknown level, or one this CPU lacks, is refused before any work, saying what it has.
#[test]
fn a_simd_level_the_cpu_lacks_is_refused() {
    use cae_kernels::simd::SimdLevel;
    let run = |level: &str| {
        common::cae_command(&["bench", "--layers", "--steps", "1", "--json"])
            .env("CAE_SIMD", level)
            .output()
            .unwrap()
    };
    common::assert_clean_failure(
        &run("sse9"),
        &["CAE_SIMD=\"sse9\"", "avx512, avx2, neon or portable"],
    );
    if !SimdLevel::supported().contains(&SimdLevel::Avx512) {
        let has = format!("it runs {}", SimdLevel::supported()[0].name());
        common::assert_clean_failure(&run("avx512"), &["CAE_SIMD=avx512", "this CPU lacks", &has]);
    }
}
