//! The machine's float32 FMA peak, measured: what a kernel's GFLOP/s are set against. Every
//! thread of rayon's pool runs, at the same time, independent chains of fused multiply-adds on
//! the vectors of the active level (enough chains to cover the FMA latency on every port), and
//! the rates the threads time for themselves are added up (timing the whole from outside also
//! counted thread wake-ups: one measurement of 2 cores came out at half the other's).

use std::hint::black_box;
use std::time::Instant;

use crate::simd::{Isa, SimdLevel, instantiate};

/// FMAs each chain runs per measurement.
const ITERATIONS: usize = 10_000_000;

/// The measured FMA peak in GFLOP/s over all of rayon's threads (an FMA counts two flops) at
/// the level the kernels run at ([`SimdLevel::active`]), the best of three tries. At the
/// portable level the passes run `gemm`, which picks the CPU's widest vectors itself: the peak
/// is then the CPU's.
pub fn fma_peak_gflops() -> f64 {
    let level = match SimdLevel::active() {
        SimdLevel::Portable => SimdLevel::of_cpu(),
        level => level,
    };
    (0..3)
        .map(|_| {
            rayon::broadcast(|_| {
                let started = Instant::now();
                let flops = chains(level);
                flops / started.elapsed().as_secs_f64() / 1e9
            })
            .into_iter()
            .sum::<f64>()
        })
        .fold(0.0, f64::max)
}

/// Runs the FMA chains of one thread; returns their flops.
fn chains(level: SimdLevel) -> f64 {
    // SAFETY: the level was detected on this CPU.
    match level {
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => unsafe {
            avx512::vector_chains::<{ chains_for(<crate::simd::Avx512 as Isa>::REGISTERS) }>()
        },
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2Fma => unsafe {
            avx2::vector_chains::<{ chains_for(<crate::simd::Avx2Fma as Isa>::REGISTERS) }>()
        },
        #[cfg(target_arch = "aarch64")]
        SimdLevel::Neon => unsafe {
            neon::vector_chains::<{ chains_for(<crate::simd::Neon as Isa>::REGISTERS) }>()
        },
        _ => scalar(),
    }
}

fn scalar() -> f64 {
    let mut acc = [1.0f32; 8];
    let (a, b) = (black_box(0.999_999f32), black_box(1e-7f32));
    for _ in 0..ITERATIONS {
        for x in &mut acc {
            *x = x.mul_add(a, b);
        }
    }
    black_box(acc);
    (ITERATIONS * 8 * 2) as f64
}

/// Independent accumulators: two FMA ports times a latency of four cycles needs eight; twelve
/// leave room and fit in AVX2's sixteen registers. With 32 registers, 24: ARM cores with four
/// FMA pipes of latency four (Apple M1, Neoverse V1) need sixteen.
const fn chains_for(registers: usize) -> usize {
    if registers >= 32 { 24 } else { 12 }
}

instantiate! {
    fn vector_chains<const CHAINS: usize>() -> f64;
}

/// `CHAINS` chains of vector FMAs, [`ITERATIONS`] long; returns their flops.
///
/// # Safety
/// Only from a function compiled for `S` (see [`instantiate`]).
#[inline(always)]
unsafe fn vector_chains<S: Isa, const CHAINS: usize>() -> f64 {
    // SAFETY: the caller's contract.
    unsafe {
        let a = S::splat(black_box(0.999_999));
        let b = S::splat(black_box(1e-7));
        let mut acc = [S::splat(1.0); CHAINS];
        for _ in 0..ITERATIONS {
            for x in &mut acc {
                *x = S::fma(*x, a, b);
            }
        }
        black_box(acc);
    }
    (ITERATIONS * CHAINS * S::LANES * 2) as f64
}
