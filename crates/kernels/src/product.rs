//! Row-major matrix products through the `gemm` crate, for the im2col path and the fully
//! connected layers.

/// Row-major `dst[m, n] (+)= lhs[m, k] * rhs[k, n]` (added to `dst` when `accumulate`), with
/// `lhs`/`rhs` given as (slice, row stride, column stride) and `dst` contiguous.
///
/// # Safety
/// `dst` holds `m * n` values (initialized when `accumulate`; otherwise `gemm` only writes
/// them); the strides must keep every index inside the slices.
pub(crate) unsafe fn gemm_rowmajor(
    dst: *mut f32,
    accumulate: bool,
    (m, n, k): (usize, usize, usize),
    lhs: (&[f32], isize, isize),
    rhs: (&[f32], isize, isize),
    parallelism: gemm::Parallelism,
) {
    // SAFETY: as the caller's.
    unsafe {
        gemm_into(
            dst,
            (n as isize, 1),
            accumulate,
            (m, n, k),
            lhs,
            rhs,
            parallelism,
        )
    }
}

/// [`gemm_rowmajor`] into `dst` with the given (row stride, column stride): `(1, m)` writes it
/// column by column.
///
/// # Safety
/// As [`gemm_rowmajor`], with `dst`'s strides keeping every index inside its `m * n` values.
pub(crate) unsafe fn gemm_into(
    dst: *mut f32,
    (dst_rs, dst_cs): (isize, isize),
    accumulate: bool,
    (m, n, k): (usize, usize, usize),
    (lhs, lhs_rs, lhs_cs): (&[f32], isize, isize),
    (rhs, rhs_rs, rhs_cs): (&[f32], isize, isize),
    parallelism: gemm::Parallelism,
) {
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            dst_cs,
            dst_rs,
            accumulate,
            lhs.as_ptr(),
            lhs_cs,
            lhs_rs,
            rhs.as_ptr(),
            rhs_cs,
            rhs_rs,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}
