#!/usr/bin/env bash
# Disassembles every instantiated vector kernel of a cae binary (the functions of the `avx512`,
# `avx2` and `neon` modules that `cae_kernels::simd::instantiate!` generates) and counts, per
# function, its FMAs, the vector moves between registers and the stack (spills and reloads), and
# calls (a helper that was not inlined would show as a call, and would have lost the target
# features). `in loop` counts the stack moves between the function's first and last FMA: its hot
# loops. An aarch64 binary (the NEON kernels) is read with aarch64-linux-gnu-objdump.
#
# Usage: bench/kernel_spills.sh [BINARY]   (default: target/release/cae; the cae-kernels test
# binary holds the same kernels)
set -euo pipefail
bin=${1:-${CARGO_TARGET_DIR:-target}/release/cae}
if objdump -f "$bin" 2>/dev/null | grep -q 'x86-64'; then
  objdump=objdump
  fma='vfmadd'
  spill='(\(%rsp\),%[yz]mm|%[yz]mm[0-9]+,(0x[0-9a-f]+)?\(%rsp\))'
  call='\bcall'
else
  objdump=aarch64-linux-gnu-objdump
  fma='\bfmla\b'
  # q/d/s registers loaded from or stored to the stack (ldr/str/ldp/stp/ldur/stur).
  spill='\b(ld|st)(u?r|p)\s+[qds][0-9]+,.*\[sp'
  call='[[:space:]]bl[[:space:]]'
fi
symbols=$(nm -nC "$bin")
printf '%-58s %6s %7s %8s %6s\n' function fmas stack "in loop" calls
grep -E ' cae_kernels::[a-z_]+::(avx512|avx2|neon)::' <<<"$symbols" | while read -r address _ name; do
  # Compared as strings: awk reads an address such as 0000000000e02260 as the number 0e02260.
  next=$(awk -v a="$address" 'found && $1 "" != a { print $1; exit } $1 "" == a { found = 1 }' <<<"$symbols")
  code=$($objdump -d --no-show-raw-insn --start-address=0x"$address" --stop-address=0x"$next" "$bin")
  fmas=$(grep -cE "$fma" <<<"$code" || true)
  stack=$(grep -cE "$spill" <<<"$code" || true)
  in_loop=$(awk -v spill="$spill" -v fma="$fma" '$0 ~ fma { if (!first) first = NR; last = NR }
    $0 ~ spill { at[NR] = 1 }
    END { n = 0; for (l in at) if (l + 0 > first && l + 0 < last) n++; print n }' <<<"$code")
  # Calls to the panic handlers of bounds checks are expected; anything else is named.
  calls=$(grep -E "$call" <<<"$code" | grep -vcE 'panic|_DYNAMIC|unwrap_failed|slice_(start|end)_index|slice_index_fail' || true)
  printf '%-58s %6s %7s %8s %6s\n' "$name" "$fmas" "$stack" "$in_loop" "$calls"
done
