//! Adam's update of one parameter tensor on host memory, in one parallel pass, with the same
//! formula and order of operations as PyTorch's single-tensor `torch.optim.Adam` (the caller,
//! `cae::optim`, keeps the state and the settings).

use rayon::prelude::*;

use crate::simd::{Isa, Scalar, SimdLevel, at_level, instantiate};

/// The constants of one step, as the tensor version applies them (`f64` settings cast to
/// `f32`).
#[derive(Debug, Clone, Copy)]
pub struct AdamStep {
    pub one_minus_beta1: f32,
    pub beta2: f32,
    pub one_minus_beta2: f32,
    /// `sqrt(1 - beta2^t)`.
    pub bias_correction2_sqrt: f32,
    pub eps: f32,
    /// `lr / (1 - beta1^t)`.
    pub step_size: f32,
}

/// Updates the parameters `p` and the moments `m`, `v` from the gradient `g` (all one length).
pub fn adam_update(p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], step: &AdamStep) {
    let n = p.len();
    assert!(
        m.len() == n && v.len() == n && g.len() == n,
        "Adam: parameter, moments and gradient sizes differ"
    );
    const CHUNK: usize = 1 << 14;
    let level = SimdLevel::active();
    p.par_chunks_mut(CHUNK)
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .zip(g.par_chunks(CHUNK))
        .for_each(|(((p, m), v), g)| {
            // SAFETY: the active level runs on this CPU (`Scalar` needs no instruction set).
            at_level!(level, update(p, m, v, g, step), unsafe {
                update::<Scalar>(p, m, v, g, step)
            })
        });
}

instantiate! {
    fn update<>(p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], step: &AdamStep);
}

/// One chunk of [`adam_update`], compiled for `S`'s instruction set: written on scalars and
/// vectorized by the compiler, which without it used 4-lane SSE (2% of a training step's `perf`
/// samples on a Zen 4 at AVX-512, the divisions and square roots most of it). Correctly
/// rounded operations in the same order at every width, so the same bits.
///
/// # Safety
/// Only from a function compiled for `S` (see [`instantiate`]).
#[inline(always)]
unsafe fn update<S: Isa>(p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], s: &AdamStep) {
    let n = p.len().min(m.len()).min(v.len()).min(g.len());
    let (p, m, v, g) = (&mut p[..n], &mut m[..n], &mut v[..n], &g[..n]);
    for i in 0..n {
        m[i] = flush_subnormal(m[i] + (g[i] - m[i]) * s.one_minus_beta1);
        v[i] = flush_subnormal(v[i] * s.beta2 + g[i] * g[i] * s.one_minus_beta2);
        let denom = v[i].sqrt() / s.bias_correction2_sqrt + s.eps;
        p[i] -= (m[i] / denom) * s.step_size;
    }
}

/// Zero for subnormal values. A parameter whose gradient stays 0 (a dead unit) has its first
/// moment shrink by `beta1` every step, into subnormal floats within a few hundred steps, and
/// every arithmetic operation on those costs the CPU a microcode assist: measured, Adam then took
/// over half of each step of a latent-1000 run. Flushing changes a moment by less than 1.2e-38,
/// and so a parameter by less than `lr` * 1e-30.
#[inline(always)]
fn flush_subnormal(value: f32) -> f32 {
    if value.abs() < f32::MIN_POSITIVE {
        0.0
    } else {
        value
    }
}
