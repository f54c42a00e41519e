#!/usr/bin/env bash
# Runs `cae bench` and the PyTorch benchmark (../shared/bench/torch_bench.py) one after the other
# on this machine and prints cae's throughput as a ratio of PyTorch's; then, for inference, ONNX
# Runtime on the same model exported by `cae export --to seed.onnx` (bench/ort_bench.py):
# throughput at batch 256 and the latency of one image, cae's as a ratio of ONNX Runtime's.
#
#   bench/compare.sh [--compile] [--install-torch] [--no-torch] [--rounds N]
#
# --rounds N (default 1) alternates the two sides N times and ends with the median of each
# ratio: on a shared machine single runs drift by 15% or more.
#
# --install-torch creates .venv-torch with torch from PyPI (several GB) when it is missing;
# TORCH_PYTHON=/path/to/python uses an existing interpreter that has torch; --no-torch leaves
# PyTorch out (cae and ONNX Runtime only).
#
# ONNX Runtime runs in python3 (ORT_PYTHON=/path/to/python for another) with as many intra-op
# threads as cae uses; without onnxruntime there it is skipped (python3 -m pip install onnxruntime).
#
# CAE_SIMD=avx512|avx2|neon|portable holds both sides to one vector level (see below).
set -euo pipefail
cd "$(dirname "$0")/.."
shared=${CAE_SHARED:-$(pwd)/../shared}
compile="" install="" rounds=1 torch=1
while [ $# -gt 0 ]; do
  case $1 in
    --compile) compile="--compile" ;;
    --install-torch) install=1 ;;
    --no-torch) torch="" ;;
    --rounds)
      rounds=${2:-}
      shift
      if ! [[ $rounds =~ ^[1-9][0-9]*$ ]]; then
        echo "--rounds needs a positive whole number" >&2
        exit 2
      fi
      ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
python=${TORCH_PYTHON:-.venv-torch/bin/python}
if [ -n "$torch" ] && ! "$python" -c "import torch" 2>/dev/null; then
  if [ -z "$install" ]; then
    echo "no Python with torch at $python: rerun with --install-torch, set TORCH_PYTHON, or leave PyTorch out with --no-torch" >&2
    exit 1
  fi
  python3 -m venv .venv-torch
  .venv-torch/bin/pip install -q torch numpy pillow safetensors
  python=.venv-torch/bin/python
fi

# CAE_SIMD=avx512|avx2|neon|portable holds cae's convolution kernels to one level; the same is
# asked of PyTorch's: ATEN_CPU_CAPABILITY for ATen's own vector code and ONEDNN_MAX_CPU_ISA for
# oneDNN, which runs its convolutions and dispatches on its own. With ATEN_CPU_CAPABILITY=avx2
# alone, ONEDNN_VERBOSE=1 showed torch's convolutions on an AVX-512 Xeon still running
# `jit:avx512_core`; with ONEDNN_MAX_CPU_ISA=AVX2 as well, `jit:avx2`. The matrix products of the
# Linear layers stay at their libraries' own choice on both sides (MKL in torch, the `gemm` crate
# in cae: neither reads these variables). On aarch64 NEON is PyTorch's baseline ("default"; its
# other capability there is SVE) and oneDNN's variable is left alone.
case ${CAE_SIMD:-} in
  "") ;;
  avx512) export ATEN_CPU_CAPABILITY=avx512 ONEDNN_MAX_CPU_ISA=AVX512_CORE ;;
  avx2) export ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 ;;
  portable)
    export ATEN_CPU_CAPABILITY=default
    if [ "$(uname -m)" = x86_64 ]; then export ONEDNN_MAX_CPU_ISA=SSE41; fi
    ;;
  neon) export ATEN_CPU_CAPABILITY=default ;;
  *) echo "CAE_SIMD=$CAE_SIMD is not a level: use avx512, avx2, neon or portable" >&2; exit 2 ;;
esac
cargo build --release -q
cae=${CARGO_TARGET_DIR:-target}/release/cae
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p')"
if [ -n "$torch" ]; then
  echo "PyTorch: $("$python" -c 'import torch; print(torch.__version__, "CPU capability", torch.backends.cpu.get_cpu_capability())'), oneDNN ISA limit ${ONEDNN_MAX_CPU_ISA:-none}"
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
ratios=$work/ratios
# The seed model as torch_bench.py builds it (the tutorial's init, seed 0), exported to ONNX.
ort_python=${ORT_PYTHON:-python3} onnx="" seed=$shared/reference/seed_latent200_init.safetensors
if ! "$ort_python" -c "import numpy, onnxruntime" 2>/dev/null; then
  echo "ONNX Runtime: skipped ($ort_python has no onnxruntime: python3 -m pip install onnxruntime, or set ORT_PYTHON)"
elif [ ! -f "$seed" ]; then
  echo "ONNX Runtime: skipped (no seed model at $seed; set CAE_SHARED)"
else
  onnx=$work/seed.onnx
  "$cae" export --model "$seed" --to "$onnx" >/dev/null
  echo "ONNX Runtime: $("$ort_python" -c 'import onnxruntime; print(onnxruntime.__version__)')"
fi
for round in $(seq "$rounds"); do
[ "$rounds" -gt 1 ] && echo "== round $round of $rounds"
cae_out=$("$cae" bench --json)
echo "cae:     $cae_out"
torch_out=""
if [ -n "$torch" ]; then
# The PyTorch benchmark runs as a child so that its peak resident memory can be read too.
torch_out=$("$python" - "$shared/bench/torch_bench.py" $compile <<'PY'
import resource, subprocess, sys
done = subprocess.run([sys.executable, *sys.argv[1:]], capture_output=True, text=True)
sys.stderr.write(done.stderr)
print(done.stdout, end="")
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(f"[torch] peak resident memory {peak:.0f} MiB")
sys.exit(done.returncode)
PY
)
echo "$torch_out"
fi
ort_out="" cae_one=""
if [ -n "$onnx" ]; then
  # One image at a time: the median of 200 runs on each side (cae bench times its training
  # step at batch 1 too, which is short).
  cae_one=$("$cae" bench --infer-batch 1 --batch-size 1 --warmup 20 --steps 200 --json)
  echo "cae batch 1: $cae_one"
  threads=${RAYON_NUM_THREADS:-$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["threads"])' "$cae_out")}
  ort_out=$("$ort_python" bench/ort_bench.py "$onnx" --threads "$threads")
  echo "$ort_out"
fi

python3 - "$cae_out" "$torch_out" "$ratios" "$cae_one" "$ort_out" <<'PY'
import json, re, sys
cae = json.loads(sys.argv[1])
rates = {}
for line in sys.argv[2].splitlines():
    m = re.match(r"\[(\w+)\] (train|inference) .*-> (\d+) images/s", line)
    if m:
        rates[(m.group(1), m.group(2))] = float(m.group(3))
print()
print("| system | train images/s | inference images/s |")
print("| --- | --- | --- |")
print(f"| cae (Burn Flex, SIMD {cae.get('simd', '?')}) | {cae['train']['images_per_second']:.0f} | {cae['inference']['images_per_second']:.0f} |")
for tag in ("eager", "compiled"):
    if (tag, "train") in rates:
        t, i = rates[(tag, "train")], rates[(tag, "inference")]
        print(f"| PyTorch {tag} | {t:.0f} | {i:.0f} |")
        rt, ri = cae['train']['images_per_second'] / t, cae['inference']['images_per_second'] / i
        print(f"| cae / PyTorch {tag} | {rt:.2f}x | {ri:.2f}x |")
        with open(sys.argv[3], "a") as out:
            out.write(f"{tag} {rt} {ri}\n")
torch_peak = re.search(r"\[torch\] peak resident memory (\d+) MiB", sys.argv[2])
if cae.get("peak_rss_mib"):
    print(f"\npeak resident memory: cae {cae['peak_rss_mib']:.0f} MiB", end="")
    print(f", PyTorch {torch_peak.group(1)} MiB" if torch_peak else "")
rate = re.search(r"\[onnxruntime\] inference batch \d+: .*-> (\d+) images/s", sys.argv[5])
latency = re.search(r"\[onnxruntime\] latency batch 1: median ([\d.]+) ms", sys.argv[5])
if rate and latency:
    ort_rate, ort_ms = float(rate.group(1)), float(latency.group(1))
    cae_rate, cae_ms = cae["inference"]["images_per_second"], json.loads(sys.argv[4])["inference"]["median_ms"]
    batch = cae["config"]["infer_batch"]
    print()
    print(f"| inference | batch {batch} images/s | batch 1 latency ms |")
    print("| --- | --- | --- |")
    print(f"| cae | {cae_rate:.0f} | {cae_ms:.3f} |")
    print(f"| ONNX Runtime | {ort_rate:.0f} | {ort_ms:.3f} |")
    # Both as speed ratios: above 1, cae is the faster.
    rt, rl = cae_rate / ort_rate, ort_ms / cae_ms
    print(f"| cae / ONNX Runtime (speed) | {rt:.2f}x | {rl:.2f}x |")
    with open(sys.argv[3], "a") as out:
        out.write(f"onnxruntime {rt} {rl}\n")
PY
done

if [ "$rounds" -gt 1 ]; then
  python3 - "$ratios" <<'PY'
import statistics, sys
by_tag = {}
for line in open(sys.argv[1]):
    tag, train, infer = line.split()
    by_tag.setdefault(tag, []).append((float(train), float(infer)))
ort = by_tag.pop("onnxruntime", None)
if by_tag:
    print()
    print("| median over rounds | train | inference |")
    print("| --- | --- | --- |")
for tag, pairs in by_tag.items():
    train = statistics.median(p[0] for p in pairs)
    infer = statistics.median(p[1] for p in pairs)
    print(f"| cae / PyTorch {tag} ({len(pairs)} rounds) | {train:.2f}x | {infer:.2f}x |")
if ort:
    print()
    print("| median over rounds | inference throughput | batch 1 latency |")
    print("| --- | --- | --- |")
    throughput = statistics.median(p[0] for p in ort)
    latency = statistics.median(p[1] for p in ort)
    print(f"| cae / ONNX Runtime, speed ({len(ort)} rounds) | {throughput:.2f}x | {latency:.2f}x |")
PY
fi
