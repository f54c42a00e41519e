//! 3x3, padding-1 convolutions on NCHW `f32` slices: the forward pass, its adjoint (which is
//! also the transposed convolution) and the weight gradient. Each dispatches (see [`Path`]) to
//! the AVX-512 kernels of [`super::direct`] or [`super::channels_last`], or runs the portable
//! im2col/col2im path around `gemm` defined here.
//!
//! Written for cae's twelve layers because Burn Flex's convolution and transposed-convolution
//! backward passes spend most of a training step outside matrix products (scalar scatter
//! loops, zeroing and page faults on fresh buffers); `cae bench` shows the gain.
//!
//! One geometry describes both directions: the *image* side is a convolution's input (and a
//! transposed convolution's output), the *feature* side its output. A transposed convolution
//! with stride s and output padding s - 1 is exactly the adjoint of the convolution whose image
//! is its output, so the same three kernels serve both layers.

use std::cell::RefCell;
use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::{channels_last, direct};

thread_local! {
    /// Per-thread work buffers (im2col columns, a product, gathered maps), kept between calls:
    /// fresh zeroed buffers cost a fifth of a training step in page faults and memset.
    static SCRATCH: RefCell<[Vec<f32>; 3]> = const { RefCell::new([Vec::new(), Vec::new(), Vec::new()]) };
}

/// Runs `work` with this thread's three scratch buffers resized to `lens`. Their contents are
/// left over from earlier calls: `work` must write every value before reading it.
pub(super) fn with_scratch<R>(
    lens: [usize; 3],
    work: impl FnOnce(&mut [f32], &mut [f32], &mut [f32]) -> R,
) -> R {
    SCRATCH.with(|cell| {
        let mut buffers = cell.borrow_mut();
        for (buffer, &len) in buffers.iter_mut().zip(&lens) {
            if buffer.len() < len {
                buffer.resize(len, 0.0);
            }
        }
        let [a, b, c] = &mut *buffers;
        work(&mut a[..lens[0]], &mut b[..lens[1]], &mut c[..lens[2]])
    })
}

/// A vector of `len` values written by `fill`, without zeroing it first: zeroing fresh
/// outputs (which the allocator must do for `vec![0.0; len]`) took 4% of a training step.
///
/// # Safety
/// `fill` must write every element of the slice it is given.
pub(super) unsafe fn written(len: usize, fill: impl FnOnce(&mut [MaybeUninit<f32>])) -> Vec<f32> {
    let mut out = Vec::with_capacity(len);
    fill(&mut out.spare_capacity_mut()[..len]);
    // SAFETY: the caller's `fill` initialized all `len` values.
    unsafe { out.set_len(len) };
    out
}

/// Runs `one` on every image of `input` (`input_len` values each) in parallel, into a new
/// vector of `output_len` values per image.
///
/// # Safety
/// `one` must write every element of the output slice it is given.
pub(super) unsafe fn per_image(
    input: &[f32],
    input_len: usize,
    output_len: usize,
    one: impl Fn(&[f32], &mut [MaybeUninit<f32>]) + Sync,
) -> Vec<f32> {
    let images = input.len() / input_len;
    // SAFETY: the chunks cover the output and the caller's `one` writes each of them.
    unsafe {
        written(images * output_len, |out| {
            out.par_chunks_mut(output_len)
                .zip(input.par_chunks(input_len))
                .for_each(|(out, image)| one(image, out));
        })
    }
}

/// Shapes of a 3x3 convolution with padding 1 between an image and a feature map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv3x3 {
    pub batch: usize,
    pub image_channels: usize,
    pub image_height: usize,
    pub image_width: usize,
    pub feature_channels: usize,
    pub stride: usize,
}

impl Conv3x3 {
    pub fn feature_height(&self) -> usize {
        (self.image_height - 1) / self.stride + 1
    }

    pub fn feature_width(&self) -> usize {
        (self.image_width - 1) / self.stride + 1
    }

    /// Values of one image in the batch.
    pub fn image_len(&self) -> usize {
        self.image_channels * self.image_height * self.image_width
    }

    /// Values of one feature map in the batch.
    pub fn feature_len(&self) -> usize {
        self.feature_channels * self.positions()
    }

    /// Panics unless `image` and `weight` have this geometry's sizes.
    pub(super) fn check_forward(&self, image: &[f32], weight: &[f32]) {
        assert_eq!(image.len(), self.batch * self.image_len(), "image size");
        assert_eq!(weight.len(), self.weight_len(), "weight size");
    }

    /// Panics unless `feature` and `weight` have this geometry's sizes.
    pub(super) fn check_adjoint(&self, feature: &[f32], weight: &[f32]) {
        assert_eq!(
            feature.len(),
            self.batch * self.feature_len(),
            "feature size"
        );
        assert_eq!(weight.len(), self.weight_len(), "weight size");
    }

    /// Panics unless `image` and `feature_grad` have this geometry's sizes.
    pub(super) fn check_weight_grad(&self, image: &[f32], feature_grad: &[f32]) {
        assert_eq!(image.len(), self.batch * self.image_len(), "image size");
        let features = self.batch * self.feature_len();
        assert_eq!(feature_grad.len(), features, "feature size");
    }

    /// Values of the weight, laid out (feature, image, 3, 3).
    pub fn weight_len(&self) -> usize {
        self.feature_channels * self.patch_len()
    }

    /// Length of one im2col column: every input value one output position sees.
    fn patch_len(&self) -> usize {
        self.image_channels * 9
    }

    fn positions(&self) -> usize {
        self.feature_height() * self.feature_width()
    }

    /// Images per parallel task, processed as one matrix product: as many as keep the task's
    /// im2col buffer within about half of a core's L2 cache (1 MiB), and at most a quarter
    /// of a thread's share of the batch so that the threads stay balanced.
    fn images_per_task(&self) -> usize {
        const COLUMN_BUDGET: usize = 256 * 1024;
        let fitting = COLUMN_BUDGET / (self.patch_len() * self.positions()).max(1);
        let balanced = self.batch.div_ceil(4 * rayon::current_num_threads());
        fitting.clamp(1, balanced.max(1))
    }
}

/// Feature maps `(batch, feature_channels, fh, fw)` from images `(batch, image_channels, H, W)`
/// and a weight `(feature_channels, image_channels, 3, 3)`, plus an optional bias, then ReLU
/// when `relu` is set.
pub fn forward(
    geometry: &Conv3x3,
    image: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    relu: bool,
) -> Vec<f32> {
    match forward_path(geometry) {
        Path::Direct => direct::forward(geometry, image, weight, bias, relu),
        Path::ChannelsLast => channels_last::forward(geometry, image, weight, bias, relu),
        _ => forward_im2col(geometry, image, weight, bias, relu),
    }
}

/// Which kernel runs a pass: what the dispatching functions choose, and what
/// `cae bench --layers` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// [`direct`]: AVX-512, vectorized over 16 output columns.
    Direct,
    /// [`channels_last`]: AVX-512, vectorized over 16 channels.
    ChannelsLast,
    /// im2col and a matrix product (portable).
    Im2col,
    /// A matrix product and col2im (portable).
    Col2im,
}

impl Path {
    pub fn name(self) -> &'static str {
        match self {
            Path::Direct => "direct",
            Path::ChannelsLast => "channels-last",
            Path::Im2col => "im2col",
            Path::Col2im => "col2im",
        }
    }
}

/// The kernel [`forward`] runs for this geometry.
pub fn forward_path(g: &Conv3x3) -> Path {
    if direct::available(g) {
        Path::Direct
    } else if channels_last::forward_available(g) {
        Path::ChannelsLast
    } else {
        Path::Im2col
    }
}

/// The kernel [`adjoint`] runs for this geometry. With stride 1 the adjoint is the convolution
/// with the kernel flipped and its two channel axes swapped, run by [`forward`]: the direct
/// kernel, or one im2col instead of the slower col2im (measured faster unless the product then
/// has too few rows).
pub fn adjoint_path(g: &Conv3x3) -> Path {
    let swapped = swapped(g);
    if g.stride == 1 && (direct::available(&swapped) || g.image_channels >= 16) {
        forward_path(&swapped)
    } else if channels_last::adjoint_available(g) {
        Path::ChannelsLast
    } else {
        Path::Col2im
    }
}

/// The kernel [`weight_grad`] runs for this geometry. Measured with `cae bench --layers`: the
/// channels-last kernel is fastest wherever the feature channels fill vectors (twice the direct
/// kernel's rate on the 3-channel layers); otherwise the direct kernel wins on 32-wide maps and
/// loses to im2col on 16-wide ones.
pub fn weight_grad_path(g: &Conv3x3) -> Path {
    if channels_last::available(g) {
        Path::ChannelsLast
    } else if direct::available(g) && g.image_width >= 32 {
        Path::Direct
    } else {
        Path::Im2col
    }
}

/// The geometry of the stride-1 adjoint as a convolution: image and feature channels swapped.
fn swapped(g: &Conv3x3) -> Conv3x3 {
    Conv3x3 {
        image_channels: g.feature_channels,
        feature_channels: g.image_channels,
        ..*g
    }
}

/// [`forward`] as im2col and one matrix product per group of images: any CPU, any geometry.
pub fn forward_im2col(
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
                        out,
                        bias.is_some(),
                        (g.feature_channels, count * p, k),
                        (weight, k as isize, 1),
                        (columns, (count * p) as isize, 1),
                    );
                }
                if relu {
                    out.iter_mut().for_each(|v| *v = v.max(0.0));
                }
                scatter_images(out, features, g.feature_channels, p);
            });
        });
    feature
}

/// The adjoint of [`forward`] (without bias): images `(batch, image_channels, H, W)` from
/// feature maps. This is a convolution's input gradient and a transposed convolution's output.
pub fn adjoint(geometry: &Conv3x3, feature: &[f32], weight: &[f32]) -> Vec<f32> {
    adjoint_then(geometry, feature, weight, None, false)
}

/// A transposed convolution's output: [`adjoint`] plus `bias` per image channel, then ReLU
/// when `relu` is set, fused into the kernels (a separate pass cost 2% of inference).
pub fn transposed(
    geometry: &Conv3x3,
    feature: &[f32],
    weight: &[f32],
    bias: &[f32],
    relu: bool,
) -> Vec<f32> {
    assert_eq!(bias.len(), geometry.image_channels, "bias size");
    adjoint_then(geometry, feature, weight, Some(bias), relu)
}

fn adjoint_then(
    geometry: &Conv3x3,
    feature: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    relu: bool,
) -> Vec<f32> {
    let g = *geometry;
    g.check_adjoint(feature, weight);
    // Stride 1: `adjoint_path` named the kernel `forward` picks for the flipped convolution.
    match adjoint_path(&g) {
        Path::ChannelsLast if g.stride == 2 => {
            return channels_last::adjoint(&g, feature, weight, bias, relu);
        }
        Path::Col2im => {}
        _ => return forward(&swapped(&g), feature, &flipped(&g, weight), bias, relu),
    }
    let mut out = adjoint_col2im(&g, feature, weight);
    if bias.is_some() || relu {
        let plane = g.image_height * g.image_width;
        for (channel, values) in out.chunks_mut(plane).enumerate() {
            let shift = bias.map_or(0.0, |b| b[channel % g.image_channels]);
            if relu {
                values.iter_mut().for_each(|v| *v = (*v + shift).max(0.0));
            } else {
                values.iter_mut().for_each(|v| *v += shift);
            }
        }
    }
    out
}

/// [`adjoint`] as one matrix product per group of images and col2im: any CPU, any geometry.
pub fn adjoint_col2im(geometry: &Conv3x3, feature: &[f32], weight: &[f32]) -> Vec<f32> {
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
                        columns,
                        false,
                        (k, count * p, g.feature_channels),
                        (weight, 1, k as isize),
                        (gathered, (count * p) as isize, 1),
                    );
                }
                for (i, img) in images.chunks_mut(g.image_len()).enumerate() {
                    col2im(&g, columns, count * p, i * p, img);
                }
            });
        });
    image
}

/// Gradient of the weight `(feature_channels, image_channels, 3, 3)` given the images and the
/// gradient of the feature maps, summed over the batch.
pub fn weight_grad(geometry: &Conv3x3, image: &[f32], feature_grad: &[f32]) -> Vec<f32> {
    match weight_grad_path(geometry) {
        Path::ChannelsLast => channels_last::weight_grad(geometry, image, feature_grad),
        Path::Direct => direct::weight_grad(geometry, image, feature_grad),
        _ => weight_grad_im2col(geometry, image, feature_grad),
    }
}

/// [`weight_grad`] as im2col and one matrix product per group of images.
pub fn weight_grad_im2col(geometry: &Conv3x3, image: &[f32], feature_grad: &[f32]) -> Vec<f32> {
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
                            &mut partial,
                            false,
                            (g.feature_channels, k, count * p),
                            (gathered, (count * p) as isize, 1),
                            (columns, 1, (count * p) as isize),
                        );
                    }
                },
            );
            partial
        })
        .collect();
    sum_in_order(&partials, g.weight_len())
}

/// The stride-1 adjoint as a convolution: its geometry and weight.
pub(super) fn flipped_convolution(g: &Conv3x3, weight: &[f32]) -> (Conv3x3, Vec<f32>) {
    (swapped(g), flipped(g, weight))
}

/// The weight of the stride-1 adjoint: `(image, feature, 3, 3)`, taps reversed.
fn flipped(g: &Conv3x3, weight: &[f32]) -> Vec<f32> {
    let mut out = vec![0.0f32; weight.len()];
    for co in 0..g.feature_channels {
        for ci in 0..g.image_channels {
            for tap in 0..9 {
                out[(ci * g.feature_channels + co) * 9 + 8 - tap] =
                    weight[(co * g.image_channels + ci) * 9 + tap];
            }
        }
    }
    out
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

/// Sum of `values (batch, channels, positions)` over batch and positions, per channel.
pub fn channel_sums(values: &[f32], batch: usize, channels: usize) -> Vec<f32> {
    let mut sums = vec![0.0f32; channels];
    if batch == 0 || channels == 0 {
        return sums;
    }
    let positions = values.len() / (batch * channels);
    for item in values.chunks(channels * positions) {
        for (sum, row) in sums.iter_mut().zip(item.chunks(positions)) {
            *sum += lane_sum(row);
        }
    }
    sums
}

/// The gradient `grad (batch, channels, positions)` kept where `relu_output` is positive or
/// NaN and zeroed elsewhere, and its [`channel_sums`], in one parallel pass.
pub fn relu_backward_and_channel_sums(
    relu_output: &[f32],
    grad: &[f32],
    batch: usize,
    channels: usize,
) -> (Vec<f32>, Vec<f32>) {
    assert_eq!(
        relu_output.len(),
        grad.len(),
        "ReLU output and gradient sizes"
    );
    if batch == 0 || channels == 0 || grad.is_empty() {
        return (vec![0.0; grad.len()], vec![0.0; channels]);
    }
    let per_item = grad.len() / batch;
    let mut per_image = Vec::new();
    // SAFETY: the chunks cover the buffer and every element of each is written.
    let gated = unsafe {
        written(grad.len(), |gated| {
            per_image = gated
                .par_chunks_mut(per_item)
                .zip(
                    relu_output
                        .par_chunks(per_item)
                        .zip(grad.par_chunks(per_item)),
                )
                .map(|(gated, (output, grad))| relu_gate_image(output, grad, channels, gated))
                .collect();
        })
    };
    (gated, sum_in_order(&per_image, channels))
}

/// [`relu_backward_and_channel_sums`] of one image `(channels, positions)`: writes every value
/// of `gated` and returns the per-channel sums.
pub(super) fn relu_gate_image(
    output: &[f32],
    grad: &[f32],
    channels: usize,
    gated: &mut [MaybeUninit<f32>],
) -> Vec<f32> {
    assert_eq!(output.len(), grad.len(), "ReLU output and gradient sizes");
    assert_eq!(gated.len(), grad.len(), "gated gradient size");
    let positions = grad.len() / channels;
    let rows = gated.chunks_mut(positions);
    rows.zip(output.chunks(positions).zip(grad.chunks(positions)))
        .map(|(gated, (output, grad))| relu_gate_row(output, grad, gated))
        .collect()
}

/// Writes `grad` where `output` is positive or NaN and 0 elsewhere into `gated`; returns the
/// sum of what it wrote (in 16 interleaved partial sums, as [`lane_sum`]).
fn relu_gate_row(output: &[f32], grad: &[f32], gated: &mut [MaybeUninit<f32>]) -> f32 {
    // Fixed 16-wide chunks, so that the compiler vectorizes the gate and the sums (a running
    // lane index did not, and this pass took 8% of a training step).
    let gate = |o: f32, d: f32| if o.is_nan() || o > 0.0 { d } else { 0.0 };
    let mut lanes = [0.0f32; 16];
    let (mut g, mut o, mut d) = (
        gated.chunks_exact_mut(16),
        output.chunks_exact(16),
        grad.chunks_exact(16),
    );
    for ((g, o), d) in (&mut g).zip(&mut o).zip(&mut d) {
        for j in 0..16 {
            let kept = gate(o[j], d[j]);
            g[j].write(kept);
            lanes[j] += kept;
        }
    }
    let mut tail = 0.0;
    let rest = g
        .into_remainder()
        .iter_mut()
        .zip(o.remainder())
        .zip(d.remainder());
    for ((g, &o), &d) in rest {
        let kept = gate(o, d);
        g.write(kept);
        tail += kept;
    }
    lanes.iter().sum::<f32>() + tail
}

/// The element-wise sum of `partials` (each `len` long), added in their order: rayon's own
/// reductions combine in an order that depends on work stealing, which made training runs
/// differ in the last bits and broke `--resume`'s exact reproduction.
pub(super) fn sum_in_order(partials: &[Vec<f32>], len: usize) -> Vec<f32> {
    let mut sum = vec![0.0f32; len];
    for partial in partials {
        sum.iter_mut().zip(partial).for_each(|(s, p)| *s += p);
    }
    sum
}

/// Sum of `values` in 16 interleaved partial sums, which the compiler keeps in one vector
/// register (a plain `iter().sum()` is sequential: bias gradients took 3% of a step).
fn lane_sum(values: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 16];
    let mut chunks = values.chunks_exact(16);
    for chunk in &mut chunks {
        lanes.iter_mut().zip(chunk).for_each(|(l, v)| *l += v);
    }
    lanes.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

/// Row-major `dst[m, n] (+)= lhs[m, k] * rhs[k, n]`, with `lhs`/`rhs` given as
/// (slice, row stride, column stride) and `dst` contiguous.
///
/// # Safety
/// The strides must keep every index inside the slices.
unsafe fn gemm_rowmajor(
    dst: &mut [f32],
    accumulate: bool,
    (m, n, k): (usize, usize, usize),
    (lhs, lhs_rs, lhs_cs): (&[f32], isize, isize),
    (rhs, rhs_rs, rhs_cs): (&[f32], isize, isize),
) {
    debug_assert!(dst.len() >= m * n);
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
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
            gemm::Parallelism::None,
        );
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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::Xoshiro256PlusPlus;
    use rand::{RngExt, SeedableRng};

    /// The definition, one multiply-add at a time, in f64.
    fn naive_forward(g: &Conv3x3, image: &[f32], weight: &[f32]) -> Vec<f64> {
        let (h, w) = (g.image_height as isize, g.image_width as isize);
        let (fh, fw) = (g.feature_height(), g.feature_width());
        let mut out = vec![0.0f64; g.batch * g.feature_len()];
        for n in 0..g.batch {
            for co in 0..g.feature_channels {
                for oy in 0..fh {
                    for ox in 0..fw {
                        let mut acc = 0.0f64;
                        for ci in 0..g.image_channels {
                            for ky in 0..3 {
                                for kx in 0..3 {
                                    let iy = (oy * g.stride + ky) as isize - 1;
                                    let ix = (ox * g.stride + kx) as isize - 1;
                                    if iy < 0 || ix < 0 || iy >= h || ix >= w {
                                        continue;
                                    }
                                    let v = image[n * g.image_len()
                                        + ci * g.image_height * g.image_width
                                        + iy as usize * g.image_width
                                        + ix as usize];
                                    let wt = weight[co * g.patch_len() + ci * 9 + ky * 3 + kx];
                                    acc += f64::from(v) * f64::from(wt);
                                }
                            }
                        }
                        out[n * g.feature_len() + co * fh * fw + oy * fw + ox] = acc;
                    }
                }
            }
        }
        out
    }

    fn random(rng: &mut Xoshiro256PlusPlus, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
    }

    fn dot(a: &[f32], b: &[f32]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| f64::from(*x) * f64::from(*y))
            .sum()
    }

    fn geometries() -> Vec<Conv3x3> {
        let mut all = Vec::new();
        for (stride, h, w) in [
            (1, 5, 7),
            (2, 8, 6),
            (2, 7, 5),
            (1, 1, 1),
            (2, 2, 3),
            (1, 3, 16),
            (1, 4, 37),
            (2, 5, 33),
        ] {
            // Feature channels in multiples of 16 reach the channels-last kernels.
            for (ci, co, batch) in [
                (3, 4, 3),
                (1, 2, 1),
                (5, 3, 9),
                (3, 16, 2),
                (17, 32, 3),
                (9, 64, 2),
                (16, 8, 2),
                (32, 16, 1),
            ] {
                all.push(Conv3x3 {
                    batch,
                    image_channels: ci,
                    image_height: h,
                    image_width: w,
                    feature_channels: co,
                    stride,
                });
            }
        }
        all
    }

    #[test]
    fn forward_matches_the_definition() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
        for g in geometries() {
            let image = random(&mut rng, g.batch * g.image_len());
            let weight = random(&mut rng, g.weight_len());
            let bias = random(&mut rng, g.feature_channels);
            let fast = forward(&g, &image, &weight, Some(&bias), false);
            let slow = naive_forward(&g, &image, &weight);
            let positions = g.feature_height() * g.feature_width();
            for (i, (f, s)) in fast.iter().zip(&slow).enumerate() {
                let expected = s + f64::from(bias[(i / positions) % g.feature_channels]);
                assert!(
                    (f64::from(*f) - expected).abs() < 1e-5 * (1.0 + expected.abs()),
                    "{g:?} at {i}: {f} vs {expected}"
                );
            }
        }
    }

    /// <forward(x), y> = <x, adjoint(y)> and d<forward(x), y>/dw = weight_grad(x, y).
    #[test]
    fn adjoint_and_weight_grad_are_the_transposes() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(2);
        for g in geometries() {
            let image = random(&mut rng, g.batch * g.image_len());
            let weight = random(&mut rng, g.weight_len());
            let feature = random(&mut rng, g.batch * g.feature_len());
            let lhs = dot(&forward(&g, &image, &weight, None, false), &feature);
            let back = adjoint(&g, &feature, &weight);
            let worst = worst_difference(&back, &adjoint_col2im(&g, &feature, &weight));
            assert!(worst < 1e-4, "{g:?} adjoint vs col2im: {worst}");
            let rhs = dot(&image, &back);
            assert!(
                (lhs - rhs).abs() < 1e-4 * (1.0 + lhs.abs()),
                "{g:?}: {lhs} vs {rhs}"
            );

            let grad = weight_grad(&g, &image, &feature);
            for probe in [0, g.weight_len() / 2, g.weight_len() - 1] {
                let mut unit = vec![0.0f32; g.weight_len()];
                unit[probe] = 1.0;
                let directional = dot(
                    &naive_forward(&g, &image, &unit)
                        .iter()
                        .map(|v| *v as f32)
                        .collect::<Vec<_>>(),
                    &feature,
                );
                assert!(
                    (f64::from(grad[probe]) - directional).abs() < 1e-4 * (1.0 + directional.abs()),
                    "{g:?} weight {probe}: {} vs {directional}",
                    grad[probe]
                );
            }
        }
    }

    fn worst_difference(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    type Forward = fn(&Conv3x3, &[f32], &[f32], Option<&[f32]>, bool) -> Vec<f32>;
    type WeightGrad = fn(&Conv3x3, &[f32], &[f32]) -> Vec<f32>;

    /// Runs a fast path on every test geometry it takes and compares it with im2col; fails
    /// if no geometry reached it on a CPU that has AVX-512.
    fn agrees_with_im2col(seed: u64, takes: fn(&Conv3x3) -> bool, fast: (Forward, WeightGrad)) {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let mut compared = 0;
        for g in geometries().iter().filter(|g| takes(g)) {
            let image = random(&mut rng, g.batch * g.image_len());
            let weight = random(&mut rng, g.weight_len());
            let bias = random(&mut rng, g.feature_channels);
            let feature = random(&mut rng, g.batch * g.feature_len());
            for relu in [false, true] {
                let a = fast.0(g, &image, &weight, Some(&bias), relu);
                let b = forward_im2col(g, &image, &weight, Some(&bias), relu);
                let worst = worst_difference(&a, &b);
                assert!(worst < 1e-4, "{g:?} forward (relu {relu}): {worst}");
            }
            let a = fast.1(g, &image, &feature);
            let b = weight_grad_im2col(g, &image, &feature);
            let worst = worst_difference(&a, &b);
            assert!(worst < 1e-3, "{g:?} weight grad: {worst}");
            compared += 1;
        }
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx512f") && std::env::var_os("CAE_NO_AVX512").is_none() {
            assert!(compared > 0, "no geometry reached the kernels");
        }
    }

    #[test]
    fn direct_and_im2col_paths_agree() {
        agrees_with_im2col(3, direct::available, (direct::forward, direct::weight_grad));
    }

    #[test]
    fn channels_last_and_im2col_paths_agree() {
        let takes: fn(&Conv3x3) -> bool = channels_last::forward_available;
        let fast = (
            channels_last::forward as Forward,
            channels_last::weight_grad as WeightGrad,
        );
        agrees_with_im2col(4, takes, fast);
    }

    /// The definition and transpose tests on the portable path, as on a CPU without AVX-512:
    /// the test binary runs them again with `CAE_NO_AVX512=1` (read once per process).
    #[test]
    fn portable_path_passes_the_same_tests() {
        if std::env::var_os("CAE_NO_AVX512").is_some() {
            return; // this is the portable run already
        }
        let tests = [
            "kernels::conv3x3::tests::forward_matches_the_definition",
            "kernels::conv3x3::tests::adjoint_and_weight_grad_are_the_transposes",
        ];
        let run = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args(["--exact", tests[0], tests[1], "--test-threads", "1"])
            .env("CAE_NO_AVX512", "1")
            .output()
            .expect("rerun the test binary");
        let stdout = String::from_utf8_lossy(&run.stdout);
        assert!(run.status.success(), "portable run failed:\n{stdout}");
        for test in tests {
            assert!(
                stdout.contains(&format!("test {test} ... ok")),
                "{test} did not run:\n{stdout}"
            );
        }
    }

    /// Sums over the batch come out bit for bit the same on every call, whatever the threads'
    /// timing (`--resume` reproduces a run exactly only then).
    #[test]
    fn batch_sums_do_not_depend_on_thread_timing() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(5);
        let g = Conv3x3 {
            batch: 64,
            image_channels: 16,
            image_height: 8,
            image_width: 8,
            feature_channels: 16,
            stride: 1,
        };
        let image = random(&mut rng, g.batch * g.image_len());
        let feature = random(&mut rng, g.batch * g.feature_len());
        let first = (
            weight_grad(&g, &image, &feature),
            weight_grad_im2col(&g, &image, &feature),
            relu_backward_and_channel_sums(&image, &feature, g.batch, 16),
        );
        for _ in 0..30 {
            assert_eq!(weight_grad(&g, &image, &feature), first.0);
            assert_eq!(weight_grad_im2col(&g, &image, &feature), first.1);
            let again = relu_backward_and_channel_sums(&image, &feature, g.batch, 16);
            assert_eq!(again, first.2);
        }
    }

    #[test]
    fn channel_sums_add_over_batch_and_positions() {
        let values: Vec<f32> = (0..2 * 3 * 4).map(|v| v as f32).collect();
        // channel c of item n holds 4 values starting at n*12 + c*4
        let expected: Vec<f32> = (0..3)
            .map(|c| {
                (0..2)
                    .flat_map(|n| (0..4).map(move |i| (n * 12 + c * 4 + i) as f32))
                    .sum()
            })
            .collect();
        assert_eq!(channel_sums(&values, 2, 3), expected);
    }
}
