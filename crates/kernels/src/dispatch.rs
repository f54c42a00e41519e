//! 3x3, padding-1 convolutions on NCHW `f32` slices: the forward pass, its adjoint (which is
//! also the transposed convolution) and the weight gradient. Each dispatches (see [`Path`]) to
//! the vector kernels (AVX-512, AVX2+FMA or NEON) of the crate's `direct` or `channels_last`
//! module, or runs the portable im2col/col2im path of its `im2col` module.
//!
//! Written for cae's twelve layers because Burn Flex's convolution and transposed-convolution
//! backward passes spend most of a training step outside matrix products (scalar scatter
//! loops, zeroing and page faults on fresh buffers); `cae bench` shows the gain.

use std::mem::MaybeUninit;

use crate::channels_last::Pass;
use crate::direct::Packed;
use crate::geometry::{Conv3x3, MapLayout, flipped, flipped_convolution, swapped};
use crate::im2col::{adjoint_col2im, forward_im2col, weight_grad_im2col};
use crate::relu_gate;
use crate::{channels_last, direct};

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

/// The per-image vector kernel that [`forward`] or the adjoint (of [`adjoint`] and
/// [`transposed`]) runs for a geometry, prepared once per call for callers that run images
/// one at a time themselves (a run of layers, the grouped backward pass).
pub(crate) enum ImageKernel {
    Direct(Packed),
    ChannelsLast(Pass),
}

impl ImageKernel {
    /// The kernel of [`forward`]; `None` where that is im2col.
    pub(crate) fn forward(
        g: &Conv3x3,
        weight: &[f32],
        bias: Option<&[f32]>,
        relu: bool,
    ) -> Option<Self> {
        match forward_path(g) {
            Path::Direct => Some(Self::Direct(Packed::new(g, weight, bias, relu))),
            Path::ChannelsLast => Some(Self::ChannelsLast(Pass::forward(g, weight, bias, relu))),
            _ => None,
        }
    }

    /// The kernel of the adjoint, as `adjoint_then` chooses it: stride 2 the channels-last
    /// adjoint, stride 1 the forward kernel of the flipped convolution; `None` where that is
    /// col2im or im2col.
    pub(crate) fn adjoint(
        g: &Conv3x3,
        weight: &[f32],
        bias: Option<&[f32]>,
        relu: bool,
    ) -> Option<Self> {
        match (adjoint_path(g), g.stride) {
            (Path::ChannelsLast, 2) => {
                Some(Self::ChannelsLast(Pass::adjoint(g, weight, bias, relu)))
            }
            (Path::Col2im, _) => None,
            _ => {
                let (swapped, flipped) = flipped_convolution(g, weight);
                Self::forward(&swapped, &flipped, bias, relu)
            }
        }
    }

    /// One image into `out`, every value of which it writes.
    pub(crate) fn run_one(&self, input: &[f32], out: &mut [MaybeUninit<f32>]) {
        match self {
            Self::Direct(packed) => packed.forward_one(input, out),
            Self::ChannelsLast(pass) => pass.run_one(input, out),
        }
    }

    /// One image already in the zero-bordered layout the kernel reads
    /// ([`MapLayout::bordered`] of its input shape) into `out` laid out as `layout` says:
    /// bordered only where [`ImageKernel::writes_bordered`].
    pub(crate) fn run_padded(
        &self,
        padded: &[f32],
        out: &mut [MaybeUninit<f32>],
        layout: MapLayout,
    ) {
        match self {
            Self::Direct(packed) => packed.forward_padded(padded, out, layout),
            Self::ChannelsLast(pass) => pass.run_padded(padded, out, layout),
        }
    }

    /// `input (channels, height, width)` into `padded` as [`ImageKernel::run_padded`] reads it.
    pub(crate) fn pad_input(&self, input: &[f32], padded: &mut [f32]) {
        direct::pad_images(self.input_geometry(), input, padded);
    }

    /// The geometry whose image side is this kernel's input.
    fn input_geometry(&self) -> &Conv3x3 {
        match self {
            Self::Direct(packed) => packed.geometry(),
            Self::ChannelsLast(pass) => pass.input_geometry(),
        }
    }

    /// Whether [`ImageKernel::run_padded`] can write a bordered output: the direct kernel
    /// stores rows anywhere; the channels-last one transposes its result in whole blocks of
    /// lanes, so only maps whose rows hold whole vectors.
    pub(crate) fn writes_bordered(&self) -> bool {
        match self {
            Self::Direct(_) => true,
            Self::ChannelsLast(pass) => pass.writes_bordered(),
        }
    }
}

/// Which kernel runs a pass: what the dispatching functions choose, and what
/// `cae bench --layers` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// The `direct` kernels: vectorized over output columns (16 a vector at AVX-512, 8 at AVX2,
    /// 4 at NEON).
    Direct,
    /// The `channels_last` kernels: vectorized over channels (16, 8 or 4 a vector).
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

/// The adjoint of [`forward`] (without bias): images `(batch, image_channels, H, W)` from
/// feature maps. This is a convolution's input gradient and a transposed convolution's output.
pub fn adjoint(geometry: &Conv3x3, feature: &[f32], weight: &[f32]) -> Vec<f32> {
    adjoint_then(geometry, feature, weight, None, false)
}

/// A transposed convolution's output: [`adjoint`] plus `bias` per image channel, then ReLU
/// when `relu` is set, fused into the kernels (a separate pass cost 2% of inference).
pub(crate) fn transposed(
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
                values
                    .iter_mut()
                    .for_each(|v| *v = relu_gate::relu(*v + shift));
            } else {
                values.iter_mut().for_each(|v| *v += shift);
            }
        }
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reduce::channel_sums;
    use crate::relu_gate::relu_backward_and_channel_sums;
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
            // Whole AVX2 vectors of columns (the AVX2 direct kernels need them).
            (1, 6, 8),
            (1, 2, 24),
            // Whole NEON vectors of columns, not whole AVX2 ones.
            (1, 3, 12),
        ] {
            // Feature channels in multiples of 16 reach the channels-last kernels.
            for (ci, co, batch) in [
                (3, 4, 3),
                (1, 2, 1),
                (5, 3, 9),
                (3, 16, 2),
                // Blocks one channel narrower than the widest at every level (AVX2: 5 + 5
                // + 5; 32 registers: 8 + 7).
                (3, 15, 2),
                (17, 32, 3),
                (9, 64, 2),
                (16, 8, 2),
                (32, 16, 1),
                // Three AVX2 vectors of channels (one and a half AVX-512 ones).
                (8, 24, 2),
                // Three NEON vectors of channels (one and a half AVX2 ones).
                (4, 12, 2),
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

    /// A NaN in a layer's input comes out as NaN after the fused ReLU, as in PyTorch, in every
    /// output it reaches (and nowhere else), on every path.
    #[test]
    fn relu_keeps_nan_where_it_reaches() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(7);
        for g in geometries() {
            let mut image = random(&mut rng, g.batch * g.image_len());
            image[(g.image_height / 2) * g.image_width + g.image_width / 2] = f32::NAN;
            let weight = random(&mut rng, g.weight_len());
            let bias = random(&mut rng, g.feature_channels);
            let fast = forward(&g, &image, &weight, Some(&bias), true);
            let slow = naive_forward(&g, &image, &weight);
            assert!(slow.iter().any(|v| v.is_nan()), "{g:?}");
            for (i, (f, s)) in fast.iter().zip(&slow).enumerate() {
                assert_eq!(f.is_nan(), s.is_nan(), "{g:?} forward output {i}: {f}");
                assert!(f.is_nan() || *f >= 0.0, "{g:?} forward output {i}: {f}");
            }

            let mut feature = random(&mut rng, g.batch * g.feature_len());
            feature[0] = f32::NAN;
            let bias = random(&mut rng, g.image_channels);
            let out = transposed(&g, &feature, &weight, &bias, true);
            let (first, rest) = out.split_at(g.image_len());
            assert!(first.iter().any(|v| v.is_nan()), "{g:?} transposed");
            assert!(
                first.iter().chain(rest).all(|v| v.is_nan() || *v >= 0.0),
                "{g:?} transposed"
            );
            assert!(rest.iter().all(|v| !v.is_nan()), "{g:?} transposed");
        }
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
    /// if no geometry reached it at a vector level.
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
        if crate::simd::SimdLevel::active() != crate::simd::SimdLevel::Portable {
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

    /// The kernel tests at every other level this CPU supports (the portable path included):
    /// the test binary runs them again with `CAE_SIMD` set (read once per process).
    #[test]
    fn every_level_passes_the_same_tests() {
        crate::simd::rerun_at_every_other_level(&[
            "dispatch::tests::forward_matches_the_definition",
            "dispatch::tests::adjoint_and_weight_grad_are_the_transposes",
            "dispatch::tests::relu_keeps_nan_where_it_reaches",
            "dispatch::tests::direct_and_im2col_paths_agree",
            "dispatch::tests::channels_last_and_im2col_paths_agree",
            "dispatch::tests::batch_sums_do_not_depend_on_thread_timing",
            "backward::tests::grouped_backward_matches_the_separate_passes",
            "transpose::tests::transposes_every_shape",
            "channels_last::tests::weight_grad_sums_every_group_of_images",
            "stack::tests::stack_matches_layer_by_layer",
            "stack::tests::stack_under_autodiff_matches_layer_by_layer",
        ]);
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
