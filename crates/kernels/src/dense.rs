//! The fully connected layers, `x (batch, in) . W (in, out) + b` then ReLU, and their
//! gradients on host memory: one `gemm` product per pass, written into outputs that are not
//! zeroed first, with the bias and ReLU (forward) and the ReLU gate and bias sum (backward)
//! fused into one pass over the output. Burn's Flex matmul zeroes each output and copies it
//! once more to align it, both on the calling thread while the other threads wait, and adds the
//! bias and applies ReLU as two more tensor operations with their own outputs.

use rayon::prelude::*;

use crate::buffers::written;
use crate::product::gemm_rowmajor;
use crate::reduce::channel_sums;
use crate::relu_gate::{relu, relu_backward_and_channel_sums};

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
        // SAFETY: the product writes all `batch * outputs` values; the strides are the shapes'.
        let mut out = unsafe {
            written(batch * outputs, |out| {
                let dims = (batch, outputs, inputs);
                let (x, w) = ((x, inputs as isize, 1), (weight, outputs as isize, 1));
                gemm_rowmajor(
                    out.as_mut_ptr().cast(),
                    false,
                    dims,
                    x,
                    w,
                    parallelism(dims),
                );
            })
        };
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
        // SAFETY: each product writes all of its output.
        let weight_grad = unsafe {
            written(inputs * outputs, |dw| {
                let dims = (inputs, outputs, batch);
                let (x, g) = ((x, 1, inputs as isize), (&grad[..], outputs as isize, 1));
                gemm_rowmajor(dw.as_mut_ptr().cast(), false, dims, x, g, parallelism(dims));
            })
        };
        // dx = grad . W^T: the weight read by columns.
        let input = want_input.then(|| unsafe {
            written(batch * inputs, |dx| {
                let dims = (batch, inputs, outputs);
                let (g, w) = (
                    (&grad[..], outputs as isize, 1),
                    (weight, 1, outputs as isize),
                );
                gemm_rowmajor(dx.as_mut_ptr().cast(), false, dims, g, w, parallelism(dims));
            })
        });
        DenseGrads {
            input,
            weight: weight_grad,
            bias,
        }
    }
}
