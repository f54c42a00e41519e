//! Matrix transposition between the channels-first maps Burn holds and the channels-last
//! copies the [`super::channels_last`] kernels read and write.
//!
//! An element-by-element loop took a sixth of the convolution time: for a 32x32 map the
//! channels-first side is strided by exactly 4 KiB, so every store fell into the same cache
//! set. Here square blocks of one vector's lanes (16 with AVX-512, 8 with AVX2, 4 with NEON) are
//! transposed in registers and written a row at a time.

use std::mem::MaybeUninit;

use crate::simd::{Isa, SimdLevel, at_level, instantiate};

/// `dst[c * rows + r] = src[r * cols + c]` for a row-major `(rows, cols)` matrix `src`;
/// every element of `dst` is written.
pub(crate) fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [MaybeUninit<f32>]) {
    assert_eq!(src.len(), rows * cols, "transpose source size");
    assert_eq!(dst.len(), rows * cols, "transpose destination size");
    let level = SimdLevel::active();
    // Blocks of one vector's lanes (single elements at the portable level).
    let block = level.lanes();
    let (full_rows, full_cols) = (rows / block * block, cols / block * block);
    let dst_values = dst.as_mut_ptr().cast::<f32>();
    // SAFETY: the active level runs on this CPU; `blocks` stays inside both matrices.
    at_level!(
        level,
        blocks(src, (rows, cols), dst_values),
        scalar(src, (rows, cols), dst, (0..full_rows, 0..full_cols))
    );
    scalar(src, (rows, cols), dst, (0..rows, full_cols..cols));
    scalar(src, (rows, cols), dst, (full_rows..rows, 0..full_cols));
}

instantiate! {
    fn blocks<>(src: &[f32], shape: (usize, usize), dst: *mut f32);
}

/// Every whole `LANES x LANES` block of `src (rows, cols)` into `dst (cols, rows)`.
///
/// # Safety
/// Only from a function compiled for `S` (see [`instantiate`]); `dst` holds `rows * cols`
/// values.
#[inline(always)]
unsafe fn blocks<S: Isa>(src: &[f32], (rows, cols): (usize, usize), dst: *mut f32) {
    let lanes = S::LANES;
    for r in (0..rows / lanes * lanes).step_by(lanes) {
        for c in (0..cols / lanes * lanes).step_by(lanes) {
            // SAFETY: the block lies inside both matrices.
            unsafe {
                S::transpose_block(
                    src.as_ptr().add(r * cols + c),
                    cols,
                    dst.add(c * rows + r),
                    rows,
                )
            };
        }
    }
}

/// An initialized buffer seen as one to overwrite.
pub(crate) fn as_uninit(values: &mut [f32]) -> &mut [MaybeUninit<f32>] {
    // SAFETY: same layout; only initialized `f32` values are ever written through it.
    unsafe { &mut *(values as *mut [f32] as *mut [MaybeUninit<f32>]) }
}

/// The rows and columns given of `src`, one element at a time.
fn scalar(
    src: &[f32],
    (rows, cols): (usize, usize),
    dst: &mut [MaybeUninit<f32>],
    (row_range, col_range): (std::ops::Range<usize>, std::ops::Range<usize>),
) {
    for r in row_range {
        for c in col_range.clone() {
            dst[c * rows + r].write(src[r * cols + c]);
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
            (1024, 16),
            (1, 1),
        ] {
            let src: Vec<f32> = (0..rows * cols).map(|v| v as f32).collect();
            let mut dst = vec![-1.0f32; rows * cols];
            transpose(&src, rows, cols, as_uninit(&mut dst));
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(
                        dst[c * rows + r],
                        src[r * cols + c],
                        "({rows}, {cols}) at ({r}, {c})"
                    );
                }
            }
        }
    }
}
