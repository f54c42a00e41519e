//! Direct (no im2col) AVX-512 kernels for the stride-1 3x3 convolutions on maps at least 16
//! wide, where im2col's nine-fold copy cost more than a fifth of a training step: the forward
//! pass (which also serves the stride-1 adjoint, with flipped weights) and a weight gradient
//! for feature channels that do not fill vectors (elsewhere [`super::channels_last`]'s is
//! faster).
//!
//! Each image is copied once into a zero-bordered buffer; the kernels then read shifted rows of
//! it directly, 16 output columns to a vector register. Callers fall back to the im2col path
//! when [`available`] is false (no AVX-512) or the geometry does not fit.

use rayon::prelude::*;

use std::mem::MaybeUninit;

use crate::buffers::{per_image, with_scratch};
use crate::geometry::Conv3x3;
use crate::reduce::sum_in_order;

/// Output channels per block of the forward kernel (two position vectors each); layers with
/// at most [`SMALL_CO_BLOCK`] output channels use blocks of that many (four positions each), so
/// that a 3-channel output does not compute five unused channels.
const CO_BLOCK: usize = 8;
const SMALL_CO_BLOCK: usize = 4;

/// Whether this CPU runs the direct kernels and the geometry suits them.
pub fn available(g: &Conv3x3) -> bool {
    g.stride == 1 && g.image_width >= 16 && cpu_has_avx512()
}

/// Asked once per process: every convolution call checks it, and reading the environment
/// takes a global lock.
pub(crate) fn cpu_has_avx512() -> bool {
    static HAS_AVX512: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS_AVX512.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            std::env::var_os("CAE_NO_AVX512").is_none() && is_x86_feature_detected!("avx512f")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

pub(crate) fn padded_plane(g: &Conv3x3) -> usize {
    (g.image_height + 2) * (g.image_width + 2)
}

/// Copies `(channels, H, W)` images into `(channels, H + 2, W + 2)` with zero borders. Only
/// the border is zeroed: the whole-buffer fill cost as much as the copy. With AVX-512 the rows
/// are copied in masked vectors: a `memcpy` call per row was a tenth of a training step.
pub(crate) fn pad_images(g: &Conv3x3, images: &[f32], padded: &mut [f32]) {
    let (h, w) = (g.image_height, g.image_width);
    let wp = w + 2;
    assert!(
        images.len() / (h * w) * padded_plane(g) <= padded.len(),
        "padded buffer size"
    );
    for (src, dst) in images.chunks(h * w).zip(padded.chunks_mut(padded_plane(g))) {
        dst[..wp + 1].fill(0.0);
        for (y, row) in src.chunks(w).enumerate() {
            let line = &mut dst[(y + 1) * wp + 1..][..wp];
            copy_row(row, &mut line[..w]);
            // The right border of this row and the left border of the next.
            line[w..].fill(0.0);
        }
        dst[(h + 1) * wp + 1..].fill(0.0);
    }
}

/// `dst.copy_from_slice(src)`, inlined for the short rows of a feature map.
fn copy_row(src: &[f32], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "row lengths");
    #[cfg(target_arch = "x86_64")]
    if cpu_has_avx512() {
        // SAFETY: AVX-512F checked; both slices hold `src.len()` values.
        unsafe { avx512::copy_row(src, dst) };
        return;
    }
    dst.copy_from_slice(src);
}

/// The forward pass of [`crate::dispatch::forward`] for geometries where [`available`] holds.
pub fn forward(
    g: &Conv3x3,
    image: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    relu: bool,
) -> Vec<f32> {
    g.check_forward(image, weight);
    let packed = Packed::new(g, weight, bias, relu);
    // SAFETY: the kernel stores every position of every channel of an image.
    unsafe {
        per_image(image, g.image_len(), g.feature_len(), |img, out| {
            packed.forward_one(img, out)
        })
    }
}

/// A layer's weight and bias packed for the forward kernel, ready to run image by image.
pub struct Packed {
    geometry: Conv3x3,
    weights: Vec<f32>,
    bias: Vec<f32>,
    block_len: usize,
    relu: bool,
}

impl Packed {
    pub fn new(g: &Conv3x3, weight: &[f32], bias: Option<&[f32]>, relu: bool) -> Self {
        assert!(
            available(g),
            "direct kernels need AVX-512 and stride 1 on maps >= 16 wide"
        );
        assert_eq!(weight.len(), g.weight_len(), "weight size");
        let (ci, co) = (g.image_channels, g.feature_channels);
        let block_len = if co <= SMALL_CO_BLOCK {
            SMALL_CO_BLOCK
        } else {
            CO_BLOCK
        };
        let blocks = co.div_ceil(block_len);
        // weights[((block * ci + c) * 9 + tap) * block_len + j] = weight[block * block_len + j, c, tap]
        let mut weights = vec![0.0f32; blocks * ci * 9 * block_len];
        let mut bias_padded = vec![0.0f32; blocks * block_len];
        for o in 0..co {
            let (block, j) = (o / block_len, o % block_len);
            for c in 0..ci {
                for tap in 0..9 {
                    weights[((block * ci + c) * 9 + tap) * block_len + j] =
                        weight[(o * ci + c) * 9 + tap];
                }
            }
            bias_padded[o] = bias.map_or(0.0, |b| b[o]);
        }
        Packed {
            geometry: *g,
            weights,
            bias: bias_padded,
            block_len,
            relu,
        }
    }

    /// One image `(ci, H, W)` into `out (co, H, W)`, every value of which it writes.
    pub fn forward_one(&self, img: &[f32], out: &mut [MaybeUninit<f32>]) {
        let g = &self.geometry;
        assert_eq!(img.len(), g.image_len(), "image size");
        assert_eq!(out.len(), g.feature_len(), "output size");
        with_scratch(
            [0, 0, g.image_channels * padded_plane(g)],
            |_, _, padded| {
                pad_images(g, img, padded);
                let (weights, bias, relu) = (&self.weights, &self.bias, self.relu);
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `new` checked AVX-512F; buffers have the sizes the kernel reads.
                unsafe {
                    if self.block_len == SMALL_CO_BLOCK {
                        avx512::forward_image::<SMALL_CO_BLOCK, 4>(
                            g, padded, weights, bias, relu, out,
                        )
                    } else {
                        avx512::forward_image::<CO_BLOCK, 2>(g, padded, weights, bias, relu, out)
                    }
                };
            },
        );
    }
}

/// The weight gradient of [`crate::dispatch::weight_grad`] for geometries where [`available`]
/// holds.
pub fn weight_grad(g: &Conv3x3, image: &[f32], feature_grad: &[f32]) -> Vec<f32> {
    assert!(
        available(g),
        "direct kernels need AVX-512 and stride 1 on maps >= 16 wide"
    );
    g.check_weight_grad(image, feature_grad);
    let per_task = g.batch.div_ceil(2 * rayon::current_num_threads()).max(1);
    let partials: Vec<Vec<f32>> = feature_grad
        .par_chunks(per_task * g.feature_len())
        .zip(image.par_chunks(per_task * g.image_len()))
        .map(|(grads, images)| {
            let count = images.len() / g.image_len();
            let mut partial = vec![0.0f32; g.weight_len()];
            let len = count * g.image_channels * padded_plane(g);
            with_scratch([0, 0, len], |_, _, padded| {
                pad_images(g, images, padded);
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `available` checked AVX-512F; buffers have the sizes the kernel reads.
                unsafe {
                    avx512::weight_grad_images(g, count, padded, grads, &mut partial)
                };
            });
            partial
        })
        .collect();
    sum_in_order(&partials, g.weight_len())
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use std::mem::MaybeUninit;

    use super::{Conv3x3, padded_plane};

    #[target_feature(enable = "avx512f")]
    pub unsafe fn copy_row(src: &[f32], dst: &mut [f32]) {
        let w = src.len();
        for x0 in (0..w).step_by(16) {
            let m = mask(w, x0);
            // SAFETY: the mask keeps both accesses inside the slices.
            unsafe {
                let v = _mm512_maskz_loadu_ps(m, src.as_ptr().add(x0));
                _mm512_mask_storeu_ps(dst.as_mut_ptr().add(x0), m, v);
            }
        }
    }

    /// Lanes of the 16-wide chunk starting at column `x0` that lie inside a row of `w`.
    fn mask(w: usize, x0: usize) -> __mmask16 {
        let valid = (w - x0).min(16);
        if valid == 16 {
            0xFFFF
        } else {
            ((1u32 << valid) - 1) as __mmask16
        }
    }

    /// One image: `out (co, H, W)` from its padded input `(ci, H + 2, W + 2)`, with the weight
    /// packed in blocks of `B` output channels. `NP` 16-column positions share each weight
    /// broadcast; with few output channels, more positions keep enough sums in flight.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn forward_image<const B: usize, const NP: usize>(
        g: &Conv3x3,
        padded: &[f32],
        packed: &[f32],
        bias: &[f32],
        relu: bool,
        out: &mut [MaybeUninit<f32>],
    ) {
        let (h, w, ci, co) = (
            g.image_height,
            g.image_width,
            g.image_channels,
            g.feature_channels,
        );
        let (wp, plane) = (w + 2, padded_plane(g));
        let chunks = w.div_ceil(16);
        let positions = h * chunks;
        let src = padded.as_ptr();
        let zero = _mm512_setzero_ps();
        for block in 0..co.div_ceil(B) {
            let weights = packed[block * ci * 9 * B..].as_ptr();
            let mut t = 0;
            while t < positions {
                // Positions past the end repeat the last one with an empty mask.
                let mut at = [(0usize, 0usize, 0 as __mmask16); NP];
                for (i, at) in at.iter_mut().enumerate() {
                    let u = (t + i).min(positions - 1);
                    let (y, x) = (u / chunks, (u % chunks) * 16);
                    *at = (y, x, if t + i < positions { mask(w, x) } else { 0 });
                }
                let mut acc = [[zero; B]; NP];
                for c in 0..ci {
                    let base = c * plane;
                    for tap in 0..9 {
                        let (ky, kx) = (tap / 3, tap % 3);
                        let mut v = [zero; NP];
                        for (v, &(y, x, m)) in v.iter_mut().zip(&at) {
                            *v = unsafe {
                                _mm512_maskz_loadu_ps(m, src.add(base + (y + ky) * wp + x + kx))
                            };
                        }
                        let wt = unsafe { weights.add((c * 9 + tap) * B) };
                        for j in 0..B {
                            let wj = _mm512_set1_ps(unsafe { *wt.add(j) });
                            for (acc, v) in acc.iter_mut().zip(&v) {
                                acc[j] = _mm512_fmadd_ps(wj, *v, acc[j]);
                            }
                        }
                    }
                }
                for j in 0..B {
                    let o = block * B + j;
                    if o >= co {
                        break;
                    }
                    let b = _mm512_set1_ps(bias[o]);
                    for (acc, &(y, x, m)) in acc.iter().zip(&at) {
                        let mut r = _mm512_add_ps(acc[j], b);
                        if relu {
                            r = unsafe { crate::relu_gate::relu_avx512(r) };
                        }
                        let dst = out.as_mut_ptr().cast::<f32>();
                        unsafe { _mm512_mask_storeu_ps(dst.add(o * h * w + y * w + x), m, r) };
                    }
                }
                t += NP;
            }
        }
    }

    /// Adds to `partial (co, ci, 3, 3)` the weight gradient of `count` images, given their
    /// padded inputs `(count, ci, H + 2, W + 2)` and output gradients `(count, co, H, W)`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn weight_grad_images(
        g: &Conv3x3,
        count: usize,
        padded: &[f32],
        grads: &[f32],
        partial: &mut [f32],
    ) {
        let (h, w, ci, co) = (
            g.image_height,
            g.image_width,
            g.image_channels,
            g.feature_channels,
        );
        let (wp, plane) = (w + 2, padded_plane(g));
        let chunks = w.div_ceil(16);
        let (src, dy) = (padded.as_ptr(), grads.as_ptr());
        let zero = _mm512_setzero_ps();
        let mut o = 0;
        while o < co {
            // Two output channels at a time; a lone last one pairs with itself, masked off.
            let o1 = if o + 1 < co { o + 1 } else { o };
            let second = o + 1 < co;
            for c in 0..ci {
                let mut acc0 = [zero; 9];
                let mut acc1 = [zero; 9];
                for n in 0..count {
                    let x_base = (n * ci + c) * plane;
                    let g0 = (n * co + o) * h * w;
                    let g1 = (n * co + o1) * h * w;
                    for y in 0..h {
                        for chunk in 0..chunks {
                            let x0 = chunk * 16;
                            let m = mask(w, x0);
                            let d0 = unsafe { _mm512_maskz_loadu_ps(m, dy.add(g0 + y * w + x0)) };
                            let m1 = if second { m } else { 0 };
                            let d1 = unsafe { _mm512_maskz_loadu_ps(m1, dy.add(g1 + y * w + x0)) };
                            for tap in 0..9 {
                                let (ky, kx) = (tap / 3, tap % 3);
                                let xv = unsafe {
                                    _mm512_maskz_loadu_ps(
                                        m,
                                        src.add(x_base + (y + ky) * wp + x0 + kx),
                                    )
                                };
                                acc0[tap] = _mm512_fmadd_ps(d0, xv, acc0[tap]);
                                acc1[tap] = _mm512_fmadd_ps(d1, xv, acc1[tap]);
                            }
                        }
                    }
                }
                for tap in 0..9 {
                    partial[(o * ci + c) * 9 + tap] += _mm512_reduce_add_ps(acc0[tap]);
                    if second {
                        partial[(o1 * ci + c) * 9 + tap] += _mm512_reduce_add_ps(acc1[tap]);
                    }
                }
            }
            o += 2;
        }
    }
}
