//! AVX-512 kernels vectorized over feature channels, for any stride and map size: 16 feature
//! channels to a vector register, input values broadcast one at a time.
//!
//! [`super::direct`] vectorizes over 16 output columns, which needs stride 1 and maps at least
//! 16 wide; the stride-2 and 8x8 layers and every weight gradient then fell back to im2col and
//! ran at a third to a half of the stride-1 layers' rate (`cae bench --layers`). Here the
//! weight gradient is a sum of outer products over output positions, `dW[tap, 16 co] +=
//! x[tap at p] * dY[p, 16 co]`, with up to 27 taps in registers, and the forward pass keeps a
//! block of positions times up to 64 channels in registers. Both read the feature side in a
//! channels-last copy `(positions, channels)` made per image.

use rayon::prelude::*;

use super::conv3x3::{Conv3x3, with_scratch};
use super::direct::{cpu_has_avx512, pad_images, padded_plane};

/// Feature channels per vector register.
const LANES: usize = 16;

/// Whether this CPU runs these kernels and the feature channels fill whole vectors.
pub fn available(g: &Conv3x3) -> bool {
    g.feature_channels.is_multiple_of(LANES) && g.feature_channels > 0 && cpu_has_avx512()
}

/// Whether [`forward`] runs this geometry: [`available`], and stride 1 or 2.
pub fn forward_available(g: &Conv3x3) -> bool {
    available(g) && matches!(g.stride, 1 | 2)
}

/// The forward pass of [`super::conv3x3::forward`] where [`forward_available`] holds.
pub fn forward(
    g: &Conv3x3,
    image: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    relu: bool,
) -> Vec<f32> {
    assert!(
        forward_available(g),
        "channels-last kernels need AVX-512, stride 1 or 2 and feature channels in multiples of 16"
    );
    g.check_forward(image, weight);
    let (ci, co) = (g.image_channels, g.feature_channels);
    // packed[(c * 9 + tap) * co + o] = weight[o, c, tap]
    let mut packed = vec![0.0f32; g.weight_len()];
    for (o, taps) in weight.chunks(ci * 9).enumerate() {
        for (k, &v) in taps.iter().enumerate() {
            packed[k * co + o] = v;
        }
    }
    let bias = bias.map_or_else(|| vec![0.0; co], <[f32]>::to_vec);
    let wp = g.image_width + 2;
    let offsets: Vec<usize> = (0..ci * 9)
        .map(|k| k / 9 * padded_plane(g) + k % 9 / 3 * wp + k % 3)
        .collect();
    let mut out = vec![0.0f32; g.batch * g.feature_len()];
    out.par_chunks_mut(g.feature_len())
        .zip(image.par_chunks(g.image_len()))
        .for_each(|(out, img)| {
            with_scratch(
                [ci * padded_plane(g), g.feature_len(), 0],
                |padded, out_last, _| {
                    pad_images(g, img, padded);
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: `forward_available` checked AVX-512F; buffers have the sizes read.
                    unsafe {
                        avx512::forward_image(g, padded, &packed, &offsets, &bias, relu, out_last)
                    };
                    let positions = g.feature_height() * g.feature_width();
                    for (p, values) in out_last.chunks(co).enumerate() {
                        for (o, &v) in values.iter().enumerate() {
                            out[o * positions + p] = v;
                        }
                    }
                },
            );
        });
    out
}

/// `(channels, positions)` to `(positions, channels)`.
fn to_channels_last(values: &[f32], channels: usize, out: &mut [f32]) {
    let positions = values.len() / channels;
    for (c, row) in values.chunks(positions).enumerate() {
        for (p, &v) in row.iter().enumerate() {
            out[p * channels + c] = v;
        }
    }
}

/// The weight gradient of [`super::conv3x3::weight_grad`] where [`available`] holds.
pub fn weight_grad(g: &Conv3x3, image: &[f32], feature_grad: &[f32]) -> Vec<f32> {
    assert!(
        available(g),
        "channels-last kernels need AVX-512 and feature channels in multiples of 16"
    );
    g.check_weight_grad(image, feature_grad);
    let (ci, co) = (g.image_channels, g.feature_channels);
    let per_task = g.batch.div_ceil(rayon::current_num_threads()).max(1);
    // Summed per task as (ci, 3, 3, co), the layout the kernel accumulates in.
    let by_tap = feature_grad
        .par_chunks(per_task * g.feature_len())
        .zip(image.par_chunks(per_task * g.image_len()))
        .map(|(grads, images)| {
            let mut partial = vec![0.0f32; g.weight_len()];
            let lens = [ci * padded_plane(g), g.feature_len(), 0];
            with_scratch(lens, |padded, grad_last, _| {
                for (img, grad) in images
                    .chunks(g.image_len())
                    .zip(grads.chunks(g.feature_len()))
                {
                    pad_images(g, img, padded);
                    to_channels_last(grad, co, grad_last);
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: `available` checked AVX-512F; buffers have the sizes read.
                    unsafe {
                        avx512::weight_grad_image(g, padded, grad_last, &mut partial)
                    };
                }
            });
            partial
        })
        .reduce_with(|mut a, b| {
            a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
            a
        })
        .unwrap_or_else(|| vec![0.0; g.weight_len()]);
    let mut out = vec![0.0f32; g.weight_len()];
    for (k, row) in by_tap.chunks(co).enumerate() {
        for (o, &v) in row.iter().enumerate() {
            out[o * ci * 9 + k] = v;
        }
    }
    out
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{Conv3x3, LANES, padded_plane};

    /// One image: `out_last (positions, co)` from its padded input `(ci, H + 2, W + 2)`, the
    /// weight packed as `(ci, 3, 3, co)` and each tap's offset into the padded input.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn forward_image(
        g: &Conv3x3,
        padded: &[f32],
        packed: &[f32],
        offsets: &[usize],
        bias: &[f32],
        relu: bool,
        out_last: &mut [f32],
    ) {
        let vectors = g.feature_channels / LANES;
        let args = (g, padded, packed, offsets, bias, relu);
        let mut v = 0;
        while v < vectors {
            let left = vectors - v;
            unsafe {
                match (left >= 4, left >= 2, g.stride) {
                    (true, _, 1) => forward_row::<4, 4, 1>(args, out_last, v),
                    (true, _, _) => forward_row::<4, 4, 2>(args, out_last, v),
                    (false, true, 1) => forward_row::<8, 2, 1>(args, out_last, v),
                    (false, true, _) => forward_row::<8, 2, 2>(args, out_last, v),
                    (false, false, 1) => forward_row::<16, 1, 1>(args, out_last, v),
                    (false, false, _) => forward_row::<16, 1, 2>(args, out_last, v),
                }
            }
            v += if left >= 4 {
                4
            } else if left >= 2 {
                2
            } else {
                1
            };
        }
    }

    type ForwardArgs<'a> = (
        &'a Conv3x3,
        &'a [f32],
        &'a [f32],
        &'a [usize],
        &'a [f32],
        bool,
    );

    /// Every output row in blocks of `P` positions, then the row's remainder one at a time.
    #[inline(always)]
    unsafe fn forward_row<const P: usize, const V: usize, const S: usize>(
        args: ForwardArgs,
        out_last: &mut [f32],
        v0: usize,
    ) {
        let (fh, fw) = (args.0.feature_height(), args.0.feature_width());
        for oy in 0..fh {
            let mut ox = 0;
            while ox + P <= fw {
                unsafe { forward_tile::<P, V, S>(args, out_last, v0, oy, ox) };
                ox += P;
            }
            while ox < fw {
                unsafe { forward_tile::<1, V, S>(args, out_last, v0, oy, ox) };
                ox += 1;
            }
        }
    }

    /// `P` consecutive positions of row `oy` from column `ox`, times `V` vectors of feature
    /// channels from vector `v0`, summed over every tap in registers.
    #[inline(always)]
    unsafe fn forward_tile<const P: usize, const V: usize, const S: usize>(
        (g, padded, packed, offsets, bias, relu): ForwardArgs,
        out_last: &mut [f32],
        v0: usize,
        oy: usize,
        ox: usize,
    ) {
        // SAFETY: only called from `#[target_feature(enable = "avx512f")]` functions, with
        // buffers of the sizes the geometry implies.
        unsafe {
            let co = g.feature_channels;
            let wp = g.image_width + 2;
            let x = padded.as_ptr().add(oy * S * wp + ox * S);
            let w = packed.as_ptr().add(v0 * LANES);
            let mut acc = [[_mm512_setzero_ps(); V]; P];
            for j in 0..V {
                let b = _mm512_loadu_ps(bias.as_ptr().add((v0 + j) * LANES));
                for acc in acc.iter_mut() {
                    acc[j] = b;
                }
            }
            for (k, &offset) in offsets.iter().enumerate() {
                let mut wv = [_mm512_setzero_ps(); V];
                for (j, wv) in wv.iter_mut().enumerate() {
                    *wv = _mm512_loadu_ps(w.add(k * co + j * LANES));
                }
                for (b, acc) in acc.iter_mut().enumerate() {
                    let xb = _mm512_set1_ps(*x.add(offset + b * S));
                    for j in 0..V {
                        acc[j] = _mm512_fmadd_ps(xb, wv[j], acc[j]);
                    }
                }
            }
            let zero = _mm512_setzero_ps();
            let p0 = oy * g.feature_width() + ox;
            for (b, acc) in acc.iter().enumerate() {
                for (j, &value) in acc.iter().enumerate() {
                    let value = if relu {
                        _mm512_max_ps(value, zero)
                    } else {
                        value
                    };
                    let dst = out_last.as_mut_ptr().add((p0 + b) * co + (v0 + j) * LANES);
                    _mm512_storeu_ps(dst, value);
                }
            }
        }
    }

    /// Adds one image's weight gradient to `partial (ci, 3, 3, co)`, from its padded input
    /// `(ci, H + 2, W + 2)` and its channels-last output gradient `(positions, co)`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn weight_grad_image(
        g: &Conv3x3,
        padded: &[f32],
        grad_last: &[f32],
        partial: &mut [f32],
    ) {
        let (ci, vectors) = (g.image_channels, g.feature_channels / LANES);
        let mut v = 0;
        while v < vectors {
            if vectors - v >= 2 {
                // 2 vectors x 9 taps = 18 accumulators, one image channel at a time.
                for c in 0..ci {
                    unsafe { weight_grad_tile::<1, 2>(g, padded, grad_last, partial, c, v) };
                }
                v += 2;
            } else {
                // 1 vector x 27 taps: three image channels at a time.
                let mut c = 0;
                while c < ci {
                    match ci - c {
                        1 => unsafe {
                            weight_grad_tile::<1, 1>(g, padded, grad_last, partial, c, v)
                        },
                        2 => unsafe {
                            weight_grad_tile::<2, 1>(g, padded, grad_last, partial, c, v)
                        },
                        _ => unsafe {
                            weight_grad_tile::<3, 1>(g, padded, grad_last, partial, c, v)
                        },
                    }
                    c += 3;
                }
                v += 1;
            }
        }
    }

    /// Accumulates the 9 taps of `C` image channels from `c0` times `V` vectors of feature
    /// channels from vector `v0`, over every output position, in registers.
    #[inline(always)]
    unsafe fn weight_grad_tile<const C: usize, const V: usize>(
        g: &Conv3x3,
        padded: &[f32],
        grad_last: &[f32],
        partial: &mut [f32],
        c0: usize,
        v0: usize,
    ) {
        // SAFETY: only called from `#[target_feature(enable = "avx512f")]` functions, with
        // buffers of the sizes the geometry implies.
        unsafe {
            let (co, s) = (g.feature_channels, g.stride);
            let (fh, fw) = (g.feature_height(), g.feature_width());
            let (wp, plane) = (g.image_width + 2, padded_plane(g));
            let x = padded.as_ptr().add(c0 * plane);
            let dy = grad_last.as_ptr().add(v0 * LANES);
            let zero = _mm512_setzero_ps();
            let mut acc = [[[zero; V]; 9]; C];
            for oy in 0..fh {
                for ox in 0..fw {
                    let at = oy * s * wp + ox * s;
                    let row = dy.add((oy * fw + ox) * co);
                    let mut d = [zero; V];
                    for (j, d) in d.iter_mut().enumerate() {
                        *d = _mm512_loadu_ps(row.add(j * LANES));
                    }
                    for (c, acc) in acc.iter_mut().enumerate() {
                        for (tap, acc) in acc.iter_mut().enumerate() {
                            let value = *x.add(c * plane + tap / 3 * wp + tap % 3 + at);
                            let xb = _mm512_set1_ps(value);
                            for j in 0..V {
                                acc[j] = _mm512_fmadd_ps(xb, d[j], acc[j]);
                            }
                        }
                    }
                }
            }
            for (c, acc) in acc.iter().enumerate() {
                for (tap, acc) in acc.iter().enumerate() {
                    for (j, acc) in acc.iter().enumerate() {
                        let k = (c0 + c) * 9 + tap;
                        let dst = partial.as_mut_ptr().add(k * co + (v0 + j) * LANES);
                        _mm512_storeu_ps(dst, _mm512_add_ps(_mm512_loadu_ps(dst), *acc));
                    }
                }
            }
        }
    }
}
