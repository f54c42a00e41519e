#!/usr/bin/env bash
# A fixed set of short training runs and the sha256 of what they write, to show that a refactoring
# keeps results bit for bit: run it with the binary of the commit before and of the commit after,
# and diff the outputs. The checkpoint and the `seconds` columns hold timings and are left out.
#
# Usage: bench/bit_identity.sh CAE_BINARY OUT_DIR [CIFAR10_JPG_DIR]
set -euo pipefail
cae=$1; out=$2; jpg=${3:-$HOME/.cache/cae-ci/cifar10-jpg}
rm -rf "$out"; mkdir -p "$out"
"$cae" train --dataset folder --data-dir "$jpg" --train-limit 1024 --val-limit 256 --epochs 2 --out "$out/plain" --no-report > "$out/plain.log"
"$cae" train --dataset folder --data-dir "$jpg" --train-limit 512 --val-limit 128 --epochs 2 --shuffle --noise gaussian:0.1 --lr-drop 2:0.5 --latent 64 --seed 3 --out "$out/noise" --no-report > "$out/noise.log"
"$cae" train --dataset fashion-mnist --train-limit 512 --val-limit 128 --epochs 1 --out "$out/fmnist" --no-report > "$out/fmnist.log"
"$cae" train --dataset fashion-mnist --train-limit 512 --val-limit 128 --epochs 2 --out "$out/fmnist" --resume --no-report >> "$out/fmnist.log"
cd "$out"
sha256sum */model.safetensors */metrics.csv */recon_epoch_*.png */loss.png
for run in */; do
  echo "$(cut -d, -f1-4 "$run/epochs.csv" | sha256sum | cut -c1-64)  ${run}epochs.csv (epoch, losses, PSNR)"
done
