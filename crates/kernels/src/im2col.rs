//! The portable path: im2col/col2im around the `gemm` crate's matrix product, for any CPU and
//! any geometry (and the reference the vector kernels are tested against).

use rayon::prelude::*;

use crate::buffers::with_scratch;
use crate::geometry::Conv3x3;
use crate::product::gemm_rowmajor;
use crate::reduce::sum_in_order;
use crate::relu_gate;

/// [`crate::dispatch::forward`] as im2col and one matrix product per group of images: any CPU, any geometry.
pub(crate) fn forward_im2col(
    geometry: &Conv3x3,
    image: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    relu: bool,
) -> Vec<f32> {
    let g = *geometry;
    g.check_forward(image, weight);
    let (k, p) = (g.patch_len(), g.positions());
    let per_task = g.images_per_task();
    let mut feature = vec![0.0f32; g.batch * g.feature_len()];
    feature
        .par_chunks_mut(per_task * g.feature_len())
        .zip(image.par_chunks(per_task * g.image_len()))
        .for_each(|(features, images)| {
            let count = images.len() / g.image_len();
            let lens = [k * count * p, g.feature_channels * count * p, 0];
            with_scratch(lens, |columns, out, _| {
                task_columns(&g, images, columns);
                if let Some(bias) = bias {
                    for (row, &b) in out.chunks_mut(count * p).zip(bias) {
                        row.fill(b);
                    }
                }
                // out[co, (i, p)] (+)= weight[co, k] * columns[k, (i, p)]
                unsafe {
                    gemm_rowmajor(
                        out.as_mut_ptr(),
                        bias.is_some(),
                        (g.feature_channels, count * p, k),
                        (weight, k as isize, 1),
                        (columns, (count * p) as isize, 1),
                        gemm::Parallelism::None,
                    );
                }
                if relu {
                    out.iter_mut().for_each(|v| *v = relu_gate::relu(*v));
                }
                scatter_images(out, features, g.feature_channels, p);
            });
        });
    feature
}

/// [`crate::dispatch::adjoint`] as one matrix product per group of images and col2im: any CPU, any geometry.
pub(crate) fn adjoint_col2im(geometry: &Conv3x3, feature: &[f32], weight: &[f32]) -> Vec<f32> {
    let g = *geometry;
    g.check_adjoint(feature, weight);
    let (k, p) = (g.patch_len(), g.positions());
    let per_task = g.images_per_task();
    let mut image = vec![0.0f32; g.batch * g.image_len()];
    image
        .par_chunks_mut(per_task * g.image_len())
        .zip(feature.par_chunks(per_task * g.feature_len()))
        .for_each(|(images, features)| {
            let count = features.len() / g.feature_len();
            let lens = [k * count * p, 0, features.len()];
            with_scratch(lens, |columns, _, gathered| {
                gather_images(features, gathered, g.feature_channels, p);
                // columns[k, (i, p)] = weight[co, k]^T * gathered[co, (i, p)]
                unsafe {
                    gemm_rowmajor(
                        columns.as_mut_ptr(),
                        false,
                        (k, count * p, g.feature_channels),
                        (weight, 1, k as isize),
                        (gathered, (count * p) as isize, 1),
                        gemm::Parallelism::None,
                    );
                }
                for (i, img) in images.chunks_mut(g.image_len()).enumerate() {
                    col2im(&g, columns, count * p, i * p, img);
                }
            });
        });
    image
}

/// [`crate::dispatch::weight_grad`] as im2col and one matrix product per group of images.
pub(crate) fn weight_grad_im2col(
    geometry: &Conv3x3,
    image: &[f32],
    feature_grad: &[f32],
) -> Vec<f32> {
    let g = *geometry;
    g.check_weight_grad(image, feature_grad);
    let (k, p) = (g.patch_len(), g.positions());
    let per_task = g.images_per_task();
    let partials: Vec<Vec<f32>> = feature_grad
        .par_chunks(per_task * g.feature_len())
        .zip(image.par_chunks(per_task * g.image_len()))
        .map(|(features, images)| {
            let count = images.len() / g.image_len();
            let mut partial = vec![0.0f32; g.weight_len()];
            with_scratch(
                [k * count * p, 0, features.len()],
                |columns, _, gathered| {
                    task_columns(&g, images, columns);
                    gather_images(features, gathered, g.feature_channels, p);
                    // partial[co, k] = gathered[co, (i, p)] * columns[k, (i, p)]^T
                    unsafe {
                        gemm_rowmajor(
                            partial.as_mut_ptr(),
                            false,
                            (g.feature_channels, k, count * p),
                            (gathered, (count * p) as isize, 1),
                            (columns, 1, (count * p) as isize),
                            gemm::Parallelism::None,
                        );
                    }
                },
            );
            partial
        })
        .collect();
    sum_in_order(&partials, g.weight_len())
}

/// im2col of several images side by side: row r holds image i's values at columns `i * P..`.
fn task_columns(g: &Conv3x3, images: &[f32], columns: &mut [f32]) {
    let count = images.len() / g.image_len();
    let p = g.positions();
    for (i, img) in images.chunks(g.image_len()).enumerate() {
        im2col(g, img, columns, count * p, i * p);
    }
}

/// `(count, channels, p)` to `(channels, count * p)`.
fn gather_images(values: &[f32], out: &mut [f32], channels: usize, p: usize) {
    let count = values.len() / (channels * p);
    for (i, item) in values.chunks(channels * p).enumerate() {
        for (c, row) in item.chunks(p).enumerate() {
            out[c * count * p + i * p..][..p].copy_from_slice(row);
        }
    }
}

/// `(channels, count * p)` to `(count, channels, p)`.
fn scatter_images(values: &[f32], out: &mut [f32], channels: usize, p: usize) {
    let count = values.len() / (channels * p);
    for (i, item) in out.chunks_mut(channels * p).enumerate() {
        for (c, row) in item.chunks_mut(p).enumerate() {
            row.copy_from_slice(&values[c * count * p + i * p..][..p]);
        }
    }
}

/// For each image channel c and tap (ky, kx), the row of `columns` at `(c * 9 + ky * 3 + kx)`
/// holds the input value each output position reads through that tap (0 in the padding).
/// Row r of this image starts at `columns[r * row_len + offset]`.
fn im2col(g: &Conv3x3, image: &[f32], columns: &mut [f32], row_len: usize, offset: usize) {
    let (h, w, s) = (g.image_height, g.image_width, g.stride);
    let (fh, fw) = (g.feature_height(), g.feature_width());
    let p = fh * fw;
    for (c, plane) in image.chunks(h * w).enumerate() {
        for tap in 0..9 {
            let (ky, kx) = (tap / 3, tap % 3);
            let row = &mut columns[(c * 9 + tap) * row_len + offset..][..p];
            for (oy, out) in row.chunks_mut(fw).enumerate() {
                let iy = (oy * s + ky).wrapping_sub(1);
                if iy >= h {
                    out.fill(0.0);
                    continue;
                }
                let src = &plane[iy * w..(iy + 1) * w];
                if s == 1 {
                    copy_shifted(src, out, kx);
                } else {
                    copy_strided(src, out, s, kx);
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: adds each column value back onto the input value it was read from.
fn col2im(g: &Conv3x3, columns: &[f32], row_len: usize, offset: usize, image: &mut [f32]) {
    let (h, w, s) = (g.image_height, g.image_width, g.stride);
    let (fh, fw) = (g.feature_height(), g.feature_width());
    let p = fh * fw;
    for (c, plane) in image.chunks_mut(h * w).enumerate() {
        for tap in 0..9 {
            let (ky, kx) = (tap / 3, tap % 3);
            let row = &columns[(c * 9 + tap) * row_len + offset..][..p];
            for (oy, col) in row.chunks(fw).enumerate() {
                let iy = (oy * s + ky).wrapping_sub(1);
                if iy >= h {
                    continue;
                }
                let dst = &mut plane[iy * w..(iy + 1) * w];
                if s == 1 {
                    add_shifted(col, dst, kx);
                } else {
                    for (ox, &v) in col.iter().enumerate() {
                        let ix = (ox * s + kx).wrapping_sub(1);
                        if ix < w {
                            dst[ix] += v;
                        }
                    }
                }
            }
        }
    }
}

/// `out[x] = src[x * s + kx - 1]`, 0 outside `src`. Split so that the inner loops have no
/// bounds tests (the per-element version cost a stride-2 layer twice its matrix product).
fn copy_strided(src: &[f32], out: &mut [f32], s: usize, kx: usize) {
    let (out, start) = if kx == 0 {
        out[0] = 0.0;
        (&mut out[1..], s - 1)
    } else {
        (out, kx - 1)
    };
    let mut values = src[start.min(src.len())..].iter().step_by(s);
    for o in out.iter_mut() {
        *o = values.next().copied().unwrap_or(0.0);
    }
}

/// `out[x] = src[x + kx - 1]`, 0 outside `src` (stride 1, same width).
fn copy_shifted(src: &[f32], out: &mut [f32], kx: usize) {
    let w = src.len();
    match kx {
        0 => {
            out[0] = 0.0;
            out[1..].copy_from_slice(&src[..w - 1]);
        }
        1 => out.copy_from_slice(src),
        _ => {
            out[..w - 1].copy_from_slice(&src[1..]);
            out[w - 1] = 0.0;
        }
    }
}

/// `dst[x + kx - 1] += col[x]` where that index exists (stride 1, same width).
fn add_shifted(col: &[f32], dst: &mut [f32], kx: usize) {
    let w = dst.len();
    let pairs: (&[f32], &mut [f32]) = match kx {
        0 => (&col[1..], &mut dst[..w - 1]),
        1 => (col, dst),
        _ => (&col[..w - 1], &mut dst[1..]),
    };
    pairs.1.iter_mut().zip(pairs.0).for_each(|(d, v)| *d += v);
}
