//! Matrix transposition between the channels-first maps Burn holds and the channels-last
//! copies the [`super::channels_last`] kernels read and write.
//!
//! An element-by-element loop took a sixth of the convolution time: for a 32x32 map the
//! channels-first side is strided by exactly 4 KiB, so every store fell into the same cache
//! set. Here square blocks of one vector's lanes (16 with AVX-512, 8 with AVX2, 4 with NEON) are
//! transposed in registers and written a row at a time.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use crate::simd::{Isa, SimdLevel, at_level, instantiate};

/// `dst[c * rows + r] = src[r * cols + c]` for a row-major `(rows, cols)` matrix `src`;
/// every element of `dst` is written.
pub(crate) fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [MaybeUninit<f32>]) {
    assert_eq!(src.len(), rows * cols, "transpose source size");
    assert_eq!(dst.len(), rows * cols, "transpose destination size");
    transpose_columns(src, (rows, cols), 0..cols, dst);
}

/// [`transpose`] split by columns over rayon's threads: for the fully connected layers'
/// `(batch, 4096)` operands, which `gemm` would otherwise copy into its own layout on the
/// calling thread while the other threads wait (`dense::product`).
pub(crate) fn transpose_parallel(
    src: &[f32],
    rows: usize,
    cols: usize,
    dst: &mut [MaybeUninit<f32>],
) {
    assert_eq!(src.len(), rows * cols, "transpose source size");
    assert_eq!(dst.len(), rows * cols, "transpose destination size");
    if rows == 0 || cols == 0 {
        return;
    }
    // Whole blocks of lanes per task, about four tasks per thread.
    let lanes = SimdLevel::active().lanes().max(1);
    let tasks = 4 * rayon::current_num_threads();
    let chunk = cols.div_ceil(tasks).div_ceil(lanes) * lanes;
    dst.par_chunks_mut(chunk * rows)
        .enumerate()
        .for_each(|(i, dst)| {
            let first = i * chunk;
            transpose_columns(src, (rows, cols), first..first + dst.len() / rows, dst);
        });
}

/// Columns `columns` of `src (rows, cols)` into `dst`, which holds those rows of the transpose
/// (`dst[(c - columns.start) * rows + r] = src[r * cols + c]`).
fn transpose_columns(
    src: &[f32],
    (rows, cols): (usize, usize),
    columns: std::ops::Range<usize>,
    dst: &mut [MaybeUninit<f32>],
) {
    assert!(columns.end <= cols, "transpose columns");
    assert_eq!(
        dst.len(),
        rows * columns.len(),
        "transpose destination size"
    );
    let level = SimdLevel::active();
    // Blocks of one vector's lanes (single elements at the portable level).
    let block = level.lanes();
    let full_rows = rows / block * block;
    let full_end = columns.start + columns.len() / block * block;
    let dst_values = dst.as_mut_ptr().cast::<f32>();
    let whole = (0..full_rows, columns.start..full_end);
    // SAFETY: the active level runs on this CPU; `blocks` stays inside both matrices.
    at_level!(
        level,
        blocks(src, (rows, cols), whole.clone(), dst_values, rows),
        scalar(src, (rows, cols), columns.start, dst, whole)
    );
    let first = columns.start;
    scalar(
        src,
        (rows, cols),
        first,
        dst,
        (0..rows, full_end..columns.end),
    );
    scalar(
        src,
        (rows, cols),
        first,
        dst,
        (full_rows..rows, first..full_end),
    );
}

instantiate! {
    fn blocks<>(
        src: &[f32],
        shape: (usize, usize),
        part: (std::ops::Range<usize>, std::ops::Range<usize>),
        dst: *mut f32,
        dst_stride: usize,
    );
}

/// The `LANES x LANES` blocks of `src (rows, cols)` in `part` (rows, columns; whole blocks)
/// into `dst`, the rows of the transpose from `part`'s first column on, `dst_stride` values
/// apart.
///
/// # Safety
/// Only from a function compiled for `S` (see [`instantiate`]); `dst` holds `rows` values
/// `dst_stride` apart for every column from `part.1.start` to `part.1.end`.
#[inline(always)]
unsafe fn blocks<S: Isa>(
    src: &[f32],
    (_, cols): (usize, usize),
    (row_range, col_range): (std::ops::Range<usize>, std::ops::Range<usize>),
    dst: *mut f32,
    dst_stride: usize,
) {
    let lanes = S::LANES;
    let first = col_range.start;
    for r in row_range.step_by(lanes) {
        for c in col_range.clone().step_by(lanes) {
            // SAFETY: the block lies inside both matrices.
            unsafe {
                S::transpose_block(
                    src.as_ptr().add(r * cols + c),
                    cols,
                    dst.add((c - first) * dst_stride + r),
                    dst_stride,
                )
            };
        }
    }
}

/// Whether [`transpose_bordered`] takes maps `width` positions wide with `channels` channels.
pub(crate) fn bordered_fits(width: usize, channels: usize) -> bool {
    let lanes = match SimdLevel::active() {
        SimdLevel::Portable => return false,
        level => level.lanes(),
    };
    width.is_multiple_of(lanes) && channels.is_multiple_of(lanes)
}

/// A channels-last map `src (height * width, channels)` into the interior of a zero-bordered
/// channels-first `dst (channels, height + 2, width + 2)`, whose border it leaves as it is:
/// the layout the next layer's kernels read, so that it need not copy the map again
/// ([`crate::stack`]). Only where [`bordered_fits`] holds (whole blocks of lanes).
pub(crate) fn transpose_bordered(
    src: &[f32],
    (channels, height, width): (usize, usize, usize),
    dst: &mut [MaybeUninit<f32>],
) {
    assert!(bordered_fits(width, channels), "bordered transpose shape");
    assert_eq!(
        src.len(),
        channels * height * width,
        "transpose source size"
    );
    let (row, plane) = (width + 2, (height + 2) * (width + 2));
    assert_eq!(dst.len(), channels * plane, "transpose destination size");
    let dst_values = dst.as_mut_ptr().cast::<f32>();
    for (y, positions) in src.chunks(width * channels).enumerate() {
        // SAFETY: `dst` holds `channels` planes; row `y + 1` from column 1 takes `width`
        // values of each, whole blocks of lanes by `bordered_fits`.
        let to = unsafe { dst_values.add((y + 1) * row + 1) };
        let whole = (0..width, 0..channels);
        at_level!(
            SimdLevel::active(),
            blocks(positions, (width, channels), whole, to, plane),
            unreachable!("checked by `bordered_fits`")
        );
    }
}

/// An initialized buffer seen as one to overwrite.
pub(crate) fn as_uninit(values: &mut [f32]) -> &mut [MaybeUninit<f32>] {
    // SAFETY: same layout; only initialized `f32` values are ever written through it.
    unsafe { &mut *(values as *mut [f32] as *mut [MaybeUninit<f32>]) }
}

/// The rows and columns given of `src`, one element at a time, into `dst` (the rows of the
/// transpose from column `first` on).
fn scalar(
    src: &[f32],
    (rows, cols): (usize, usize),
    first: usize,
    dst: &mut [MaybeUninit<f32>],
    (row_range, col_range): (std::ops::Range<usize>, std::ops::Range<usize>),
) {
    for r in row_range {
        for c in col_range.clone() {
            dst[(c - first) * rows + r].write(src[r * cols + c]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transposes_every_shape() {
        for (rows, cols) in [
            (16, 16),
            (32, 48),
            (17, 33),
            (5, 3),
            (64, 1024),
            (64, 4096),
            (64, 200),
            (3, 1000),
            (1024, 16),
            (1, 1),
        ] {
            let src: Vec<f32> = (0..rows * cols).map(|v| v as f32).collect();
            for parallel in [false, true] {
                let mut dst = vec![-1.0f32; rows * cols];
                if parallel {
                    transpose_parallel(&src, rows, cols, as_uninit(&mut dst));
                } else {
                    transpose(&src, rows, cols, as_uninit(&mut dst));
                }
                for r in 0..rows {
                    for c in 0..cols {
                        assert_eq!(
                            dst[c * rows + r],
                            src[r * cols + c],
                            "({rows}, {cols}) at ({r}, {c}), parallel {parallel}"
                        );
                    }
                }
            }
        }
    }

    /// Channels-last maps into the interior of zero-bordered channels-first ones, the border
    /// left as it was, for every shape whose rows hold whole blocks of lanes at this level.
    #[test]
    fn transposes_into_bordered_maps() {
        for (channels, height, width) in [(16, 32, 32), (32, 16, 16), (64, 8, 8), (16, 3, 16)] {
            if !bordered_fits(width, channels) {
                continue;
            }
            let src: Vec<f32> = (0..channels * height * width).map(|v| v as f32).collect();
            let layout = crate::geometry::MapLayout::bordered(height, width);
            let mut dst = vec![-1.0f32; channels * layout.plane];
            transpose_bordered(&src, (channels, height, width), as_uninit(&mut dst));
            for c in 0..channels {
                for y in 0..height + 2 {
                    for x in 0..width + 2 {
                        let got = dst[c * layout.plane + y * layout.row + x];
                        let inside = (1..=height).contains(&y) && (1..=width).contains(&x);
                        let want = if inside {
                            src[((y - 1) * width + x - 1) * channels + c]
                        } else {
                            -1.0
                        };
                        assert_eq!(got, want, "{channels}x{height}x{width} at ({c}, {y}, {x})");
                    }
                }
            }
        }
    }
}
