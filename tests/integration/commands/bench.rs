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

#[test]
fn bench_layers_names_every_layer_and_its_kernels() {
    let stdout = cae(&[
        "bench",
        "--layers",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--batch-size",
        "4",
        "--json",
    ]);
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
