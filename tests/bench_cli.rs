//! `cae bench` runs and reports well-formed figures (speed itself is judged by bench/compare.sh).

use std::process::Command;

#[test]
fn bench_reports_json_figures() {
    let output = Command::new(env!("CARGO_BIN_EXE_cae"))
        .args([
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
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    for phase in ["train", "inference"] {
        let rate = report[phase]["images_per_second"].as_f64().unwrap();
        let median = report[phase]["median_ms"].as_f64().unwrap();
        assert!(rate > 0.0 && median > 0.0, "{phase}: {report}");
        assert!(report[phase]["min_ms"].as_f64().unwrap() <= median);
    }
    assert_eq!(report["config"]["batch_size"], 8);
    assert!(report["peak_rss_mib"].as_f64().unwrap() > 1.0);
}
