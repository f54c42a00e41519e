#!/usr/bin/env bash
# Alternates `cae bench --json` runs of two binaries (A then B, ROUNDS times) and prints each
# round's speed ratio B/A (A's median step time over B's) for training and inference, and the
# median of those ratios: a whole-step A/B on a machine that drifts between rounds.
#
# Usage: bench/step_ab.sh CAE_A CAE_B [ROUNDS]   (CAE_SIMD etc. pass through to both)
set -euo pipefail
a=$1; b=$2; rounds=${3:-6}
for i in $(seq 1 "$rounds"); do
  for side in A B; do
    bin=$a; [ "$side" = B ] && bin=$b
    "$bin" bench --json 2>/dev/null | python3 -c "import json, sys; d = json.load(sys.stdin); print('$side', $i, d['train']['median_ms'], d['inference']['median_ms'])"
  done
done | tee /dev/stderr | python3 -c "
import statistics, sys
rows = [line.split() for line in sys.stdin]
a = {r[1]: r for r in rows if r[0] == 'A'}
b = {r[1]: r for r in rows if r[0] == 'B'}
for name, col in (('train', 2), ('infer', 3)):
    ratios = [float(a[k][col]) / float(b[k][col]) for k in a]
    print(name, 'speed B/A per round', ' '.join('%.3f' % x for x in ratios), 'median %.3f' % statistics.median(ratios))
"
