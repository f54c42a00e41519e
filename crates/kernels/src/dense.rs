//! The fully connected layers, `x (batch, in) . W (in, out) + b` then ReLU, and their
//! gradients on host memory: one `gemm` product per pass, written into outputs that are not
//! zeroed first, with the bias and ReLU (forward) and the ReLU gate and bias sum (backward)
//! fused into one pass over the output. Burn's Flex matmul zeroes each output and copies it
//! once more to align it, both on the calling thread while the other threads wait, and adds the
//! bias and applies ReLU as two more tensor operations with their own outputs.

use rayon::prelude::*;

use crate::buffers::written;
use crate::product::{gemm_into, gemm_rowmajor};
use crate::reduce::channel_sums;
use crate::relu_gate::{relu, relu_backward_and_channel_sums};
use crate::transpose::transpose_parallel;

/// The sizes of one layer's product: `batch` rows of `inputs` values to `outputs` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dense {
    pub batch: usize,
    pub inputs: usize,
    pub outputs: usize,
}

/// A layer's gradients.
pub(crate) struct DenseGrads {
    /// Of the layer's input, when asked for.
    pub input: Option<Vec<f32>>,
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

/// Products of at least 192^3 multiply-adds run on rayon's threads, smaller ones on the calling
/// thread, as in burn-flex: at batch 1 (4096 x 200 weights, one row) `gemm` split over the two
/// vCPUs of the AVX2 Zen 3 machine was slower than on one (README, batch-1 latency).
fn parallelism((m, n, k): (usize, usize, usize)) -> gemm::Parallelism {
    if m * n * k >= 192 * 192 * 192 {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    }
}

/// Rows of the left operand per vector register of `gemm`'s kernels at AVX-512 (a multiple of
/// the AVX2 and NEON widths too).
const GEMM_ROWS: usize = 16;

/// `lhs (m, k) . rhs (k, n)` (each given as (values, row stride, column stride)) into a new
/// row-major `(m, n)`.
///
/// `gemm` turns a product with a row-major result around (it computes `rhs^T . lhs^T`), and
/// when the left operand it then has is short (at most two of its row blocks) and either not
/// contiguous by columns or not in whole vectors of rows, it first copies that operand into its
/// own layout, on the calling thread while the others wait. For the fully connected layers'
/// `(64, 4096) . (4096, 200)` products (the encoder's forward pass, the decoder's input gradient)
/// that is the whole 3.3 MB weight: 3% of a training step's `perf` samples on a Zen 4, on the
/// main thread alone. Where `m` is in whole vectors and `n` is not, and `lhs` is the smaller
/// operand, the product is instead computed column by column from `lhs` copied by columns in
/// parallel, and the (small) result transposed back in parallel: `cae bench` training steps
/// took 0.91x as long (Zen 4, AVX-512, eight alternated rounds, 0.89-0.97x; AVX2 0.90x,
/// `docs/perf/dense-columns-ab-zen4.txt`). With the column route also at batch 256 (inference),
/// where that copy is larger than the weight, inference took 1.015x as long, so there `gemm`
/// copies the weight as before. Every output is the same sum in the same order either
/// way (`gemm`'s depth blocks depend on `k` alone).
fn product(
    dims: (usize, usize, usize),
    lhs: (&[f32], isize, isize),
    rhs: (&[f32], isize, isize),
) -> Vec<f32> {
    let (m, n, k) = dims;
    let parallelism = parallelism(dims);
    let by_columns = matches!(parallelism, gemm::Parallelism::Rayon(_))
        && m.is_multiple_of(GEMM_ROWS)
        && !n.is_multiple_of(GEMM_ROWS)
        && m < n
        && lhs.1 == k as isize
        && lhs.2 == 1;
    if !by_columns {
        // SAFETY: the product writes all `m * n` values; the strides are the callers' shapes'.
        return unsafe {
            written(m * n, |out| {
                gemm_rowmajor(out.as_mut_ptr().cast(), false, dims, lhs, rhs, parallelism)
            })
        };
    }
    // SAFETY: the transposes and the product write every value of their outputs; `lhs` is a
    // contiguous row-major `(m, k)` (checked above), its copy `(k, m)`.
    unsafe {
        let lhs_by_columns = written(m * k, |out| transpose_parallel(lhs.0, m, k, out));
        let by_columns = written(m * n, |out| {
            let lhs = (&lhs_by_columns[..], 1, m as isize);
            gemm_into(
                out.as_mut_ptr().cast(),
                (1, m as isize),
                false,
                dims,
                lhs,
                rhs,
                parallelism,
            )
        });
        written(m * n, |out| transpose_parallel(&by_columns, n, m, out))
    }
}

impl Dense {
    fn check(&self, x: &[f32], weight: &[f32]) {
        assert_eq!(x.len(), self.batch * self.inputs, "dense input size");
        assert_eq!(
            weight.len(),
            self.inputs * self.outputs,
            "dense weight size"
        );
    }

    /// `relu(x . weight + bias)` (ReLU when `relu` is set), `(batch, outputs)`.
    pub(crate) fn forward(
        &self,
        x: &[f32],
        weight: &[f32],
        bias: &[f32],
        relu_out: bool,
    ) -> Vec<f32> {
        self.check(x, weight);
        assert_eq!(bias.len(), self.outputs, "dense bias size");
        let Dense {
            batch,
            inputs,
            outputs,
        } = *self;
        let mut out = product(
            (batch, outputs, inputs),
            (x, inputs as isize, 1),
            (weight, outputs as isize, 1),
        );
        out.par_chunks_mut(outputs).for_each(|row| {
            for (v, b) in row.iter_mut().zip(bias) {
                *v += b;
                if relu_out {
                    *v = relu(*v);
                }
            }
        });
        out
    }

    /// The gradients of [`Self::forward`] from the gradient of its output; `relu_output` is
    /// that output when the layer applied ReLU (where it is zero the gradient stops).
    pub(crate) fn backward(
        &self,
        x: &[f32],
        weight: &[f32],
        output_grad: &[f32],
        relu_output: Option<&[f32]>,
        want_input: bool,
    ) -> DenseGrads {
        self.check(x, weight);
        let Dense {
            batch,
            inputs,
            outputs,
        } = *self;
        assert_eq!(output_grad.len(), batch * outputs, "dense gradient size");
        let (grad, bias) = match relu_output {
            Some(out) => {
                assert_eq!(out.len(), output_grad.len(), "dense output size");
                let (gated, sums) =
                    relu_backward_and_channel_sums(out, output_grad, batch, outputs);
                (std::borrow::Cow::Owned(gated), sums)
            }
            None => (
                output_grad.into(),
                channel_sums(output_grad, batch, outputs),
            ),
        };
        // dW = x^T . grad: x read by columns.
        let weight_grad = product(
            (inputs, outputs, batch),
            (x, 1, inputs as isize),
            (&grad, outputs as isize, 1),
        );
        // dx = grad . W^T: the weight read by columns.
        let input = want_input.then(|| {
            product(
                (batch, inputs, outputs),
                (&grad, outputs as isize, 1),
                (weight, 1, outputs as isize),
            )
        });
        DenseGrads {
            input,
            weight: weight_grad,
            bias,
        }
    }
}
