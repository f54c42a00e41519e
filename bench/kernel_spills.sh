#!/usr/bin/env bash
# Disassembles every instantiated vector kernel of a cae binary (the functions of the `avx512` and
# `avx2` modules that `cae_kernels::simd::instantiate!` generates) and counts, per function, its
# FMAs, the vector moves between registers and the stack (spills and reloads), and calls (a helper
# that was not inlined would show as a call, and would have lost the target features). `in loop`
# counts the stack moves between the function's first and last FMA: its hot loops.
#
# Usage: bench/kernel_spills.sh [CAE_BINARY]   (default: target/release/cae)
set -euo pipefail
bin=${1:-${CARGO_TARGET_DIR:-target}/release/cae}
symbols=$(nm -nC "$bin")
printf '%-58s %6s %7s %8s %6s\n' function fmas stack "in loop" calls
grep -E ' cae_kernels::[a-z_]+::(avx512|avx2)::' <<<"$symbols" | while read -r address _ name; do
  next=$(awk -v a="$address" 'found && $1 != a { print $1; exit } $1 == a { found = 1 }' <<<"$symbols")
  code=$(objdump -d --no-show-raw-insn --start-address=0x"$address" --stop-address=0x"$next" "$bin")
  fmas=$(grep -c 'vfmadd' <<<"$code" || true)
  spill='(\(%rsp\),%[yz]mm|%[yz]mm[0-9]+,(0x[0-9a-f]+)?\(%rsp\))'
  stack=$(grep -cE "$spill" <<<"$code" || true)
  in_loop=$(awk -v spill="$spill" '/vfmadd/ { if (!first) first = NR; last = NR }
    $0 ~ spill { at[NR] = 1 }
    END { n = 0; for (l in at) if (l > first && l < last) n++; print n }' <<<"$code")
  # Calls to the panic handlers of bounds checks are expected; anything else is named.
  calls=$(grep -E '\bcall' <<<"$code" | grep -vcE 'panic|_DYNAMIC|unwrap_failed|slice_(start|end)_index' || true)
  printf '%-58s %6s %7s %8s %6s\n' "$name" "$fmas" "$stack" "$in_loop" "$calls"
done
