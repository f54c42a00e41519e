# ONNX Runtime side of the inference comparison (bench/compare.sh): the seed model exported by
# `cae export --to seed.onnx`, timed the way `cae bench` and ../shared/bench/torch_bench.py time
# inference (random inputs in [-1, 1], a warm-up, then the median of timed runs).
#
# Usage: python3 bench/ort_bench.py MODEL.onnx [--threads 2] [--infer-batch 256] [--warmup 5]
#            [--steps 30] [--latency-warmup 20] [--latency-steps 200]
# Prints "[onnxruntime] inference batch N: ... -> R images/s" (throughput) and
# "[onnxruntime] latency batch 1: median M ms" (one image at a time).
import argparse
import os
import statistics
import time

import numpy as np
import onnxruntime as ort


def timeit(fn, warmup, steps):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return ts


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--infer-batch", type=int, default=256)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--latency-warmup", type=int, default=20)
    ap.add_argument("--latency-steps", type=int, default=200)
    a = ap.parse_args()

    options = ort.SessionOptions()
    # As cae: one pool of `threads` threads inside each operator, operators one after another.
    options.intra_op_num_threads = a.threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(a.model, options, providers=["CPUExecutionProvider"])
    (meta,) = session.get_inputs()
    shape = meta.shape[1:]
    print(f"onnxruntime {ort.__version__}, intra-op threads {a.threads}, input {meta.name} "
          f"(batch, {', '.join(map(str, shape))}), loadavg {os.getloadavg()}", flush=True)

    rng = np.random.default_rng(0)
    x = rng.uniform(-1.0, 1.0, (a.infer_batch, *shape)).astype(np.float32)
    one = rng.uniform(-1.0, 1.0, (1, *shape)).astype(np.float32)

    def run(batch):
        return lambda: float(session.run(None, {meta.name: batch})[0].sum())

    ts = timeit(run(x), a.warmup, a.steps)
    med = statistics.median(ts)
    print(f"[onnxruntime] inference batch {a.infer_batch}: median {med*1e3:.1f} ms/batch, "
          f"min {min(ts)*1e3:.1f} -> {a.infer_batch/med:.0f} images/s", flush=True)
    tl = timeit(run(one), a.latency_warmup, a.latency_steps)
    print(f"[onnxruntime] latency batch 1: median {statistics.median(tl)*1e3:.3f} ms, "
          f"min {min(tl)*1e3:.3f} ({a.latency_steps} runs)", flush=True)


if __name__ == "__main__":
    main()
