#!/usr/bin/env python3
"""Per-layer A/B of two cae binaries: runs `cae bench --layers` of each in ABBA order (the level
from CAE_SIMD in the environment) and prints, per layer and pass (forward, input gradient,
weight gradient), the median of the per-round B/A time ratios and each binary's median share
of the FMA peak. The machines here drift 15% and more, so compare only within one run.

Usage: bench/layers_ab.py CAE_A CAE_B ROUNDS"""
import subprocess, sys, re, statistics as st
a, b, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
res = ([], [])  # by side, not by path: A and B may be the same binary
def run(binary):
    out = subprocess.run([binary, 'bench', '--layers'], capture_output=True, text=True).stdout
    rows = {}
    for line in out.splitlines():
        m = re.match(r'^((?:encoder|decoder) \S+ \d+): .*?\s([\d.]+)ms\s+([\d.]+)ms\s+([\d.]+)ms\s+(\d+)\s+(\d+)\s+(\d+)', line)
        if m:
            rows[m.group(1)] = [float(m.group(i)) for i in range(2, 8)]
    return rows
for r in range(rounds):
    for side in ((0, 1) if r % 2 == 0 else (1, 0)):
        res[side].append(run((a, b)[side]))
    print('round', r + 1, 'done', flush=True)
names = list(res[0][0].keys())
print('%-22s %28s %24s %24s' % ('layer', 'B/A time fwd in wgt', '%peak A', '%peak B'))
for n in names:
    ratios = [st.median(res[1][r][n][k] / res[0][r][n][k] for r in range(rounds)) for k in range(3)]
    pa = [st.median(res[0][r][n][k] for r in range(rounds)) for k in range(3, 6)]
    pb = [st.median(res[1][r][n][k] for r in range(rounds)) for k in range(3, 6)]
    print('%-22s %8.3f %8.3f %8.3f   %6.0f %6.0f %6.0f   %6.0f %6.0f %6.0f' % (n, *ratios, *pa, *pb))
