//! Vector kernels vectorized over feature channels, for any stride and map size: a vector of
//! feature channels to a register, input values broadcast one at a time.
//!
//! [`super::direct`] vectorizes over output columns, which needs stride 1 and maps at least a
//! vector wide; the stride-2 and 8x8 layers and every weight gradient then fell back to im2col and
//! ran at a third to a half of the stride-1 layers' rate (`cae bench --layers`). Here the
//! weight gradient is a sum of outer products over output positions, `dW[tap, 16 co] +=
//! x[tap at p] * dY[p, 16 co]`, with up to 27 taps in registers; the forward pass and the
//! stride-2 adjoint keep a block of positions times one or two vectors of channels in registers
//! and write a channels-last `(positions, channels)` result, transposed back per image.

use rayon::prelude::*;

use std::mem::MaybeUninit;

use crate::buffers::{per_image, with_scratch};
use crate::direct::{pad_images, padded_image_len, padded_plane};
use crate::geometry::{Conv3x3, MapLayout};
use crate::reduce::sum_in_order;
use crate::simd::{Isa, SimdLevel, at_level, instantiate};
use crate::transpose::{as_uninit, bordered_fits, transpose, transpose_bordered};

/// Values (padded images and their gradients) of one group of images in the weight gradient:
/// 512 KiB, a quarter of a core's L2 cache.
const GROUP_BUDGET: usize = 128 * 1024;

/// Feature channels per vector register at the active level (0 without vector kernels).
fn lanes() -> usize {
    match SimdLevel::active() {
        SimdLevel::Portable => 0,
        level => level.lanes(),
    }
}

/// Whether this process runs these kernels and the feature channels fill whole vectors.
pub(crate) fn available(g: &Conv3x3) -> bool {
    let lanes = lanes();
    lanes > 0 && g.feature_channels.is_multiple_of(lanes) && g.feature_channels > 0
}

/// Whether [`forward`] runs this geometry: [`available`], and stride 1 or 2.
pub(crate) fn forward_available(g: &Conv3x3) -> bool {
    available(g) && matches!(g.stride, 1 | 2)
}

/// Whether [`adjoint`] runs this geometry: stride 2 and image channels in multiples of 16.
pub(crate) fn adjoint_available(g: &Conv3x3) -> bool {
    let lanes = lanes();
    g.stride == 2 && lanes > 0 && g.image_channels.is_multiple_of(lanes) && g.image_channels > 0
}

/// A run of output positions of one image: `count` positions from `out_position`, spaced by
/// the pass's output stride, reading the padded input from `input_at` onwards through the
/// tap list `taps`.
#[derive(Debug, Clone, Copy)]
struct Segment {
    input_at: usize,
    out_position: usize,
    count: usize,
    taps: usize,
}

/// Every position of `segments` as (input offset, output position), one list per tap list.
fn positions_by_tap_list(
    segments: &[Segment],
    tap_lists: usize,
    input_stride: usize,
    output_stride: usize,
) -> Vec<Vec<(usize, usize)>> {
    let mut lists = vec![Vec::new(); tap_lists];
    for segment in segments {
        lists[segment.taps].extend((0..segment.count).map(|i| {
            (
                segment.input_at + i * input_stride,
                segment.out_position + i * output_stride,
            )
        }));
    }
    lists
}

/// A layer prepared for the kernel, ready to run image by image: the geometry its input is
/// padded with, the values one image's output holds, and for every tap list pairs of (offset
/// into the padded input, offset of a packed weight row of `channels` values).
pub(crate) struct Pass {
    input: Conv3x3,
    output_len: usize,
    /// The output map's height and width (its channels are `channels`).
    output_size: (usize, usize),
    taps: Vec<Vec<(usize, usize)>>,
    segments: Vec<Segment>,
    /// For every tap list, each output position that reads it as (offset into the padded
    /// input, output position), in the segments' order: the positions [`gathered_tiles`] runs.
    positions: Vec<Vec<(usize, usize)>>,
    weights: Vec<f32>,
    bias: Vec<f32>,
    channels: usize,
    input_stride: usize,
    output_stride: usize,
    relu: bool,
}

/// The forward pass of [`crate::dispatch::forward`] where [`forward_available`] holds.
pub(crate) fn forward(
    g: &Conv3x3,
    image: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    relu: bool,
) -> Vec<f32> {
    g.check_forward(image, weight);
    let pass = Pass::forward(g, weight, bias, relu);
    pass.run(image)
}

impl Pass {
    /// The forward pass of `g` where [`forward_available`] holds.
    pub(crate) fn forward(g: &Conv3x3, weight: &[f32], bias: Option<&[f32]>, relu: bool) -> Self {
        assert!(
            forward_available(g),
            "channels-last kernels need a vector level, stride 1 or 2 and feature channels in whole vectors"
        );
        assert_eq!(weight.len(), g.weight_len(), "weight size");
        let (ci, co) = (g.image_channels, g.feature_channels);
        // weights[(c * 9 + tap) * co + o] = weight[o, c, tap]: the `(co, ci * 9)` matrix
        // transposed in vector blocks. The element-by-element scatter this replaces was 9% of
        // batch-1 inference's `perf` samples on a Zen 4 (the layer is packed on every call);
        // alternated `cae bench --batch-size 1 --infer-batch 1` rounds: batch-1 inference
        // 0.77x and 0.98x as long at AVX-512 (8 and 10 rounds), 0.92x at AVX2 (6), noisy.
        let mut weights = vec![0.0f32; g.weight_len()];
        transpose(weight, co, ci * 9, as_uninit(&mut weights));
        let (wp, s) = (g.image_width + 2, g.stride);
        let taps = (0..ci * 9)
            .map(|k| (k / 9 * padded_plane(g) + k % 9 / 3 * wp + k % 3, k * co))
            .collect();
        let fw = g.feature_width();
        let segments: Vec<Segment> = (0..g.feature_height())
            .map(|oy| Segment {
                input_at: oy * s * wp,
                out_position: oy * fw,
                count: fw,
                taps: 0,
            })
            .collect();
        Pass {
            input: *g,
            output_len: g.feature_len(),
            output_size: (g.feature_height(), g.feature_width()),
            positions: positions_by_tap_list(&segments, 1, s, 1),
            taps: vec![taps],
            segments,
            weights,
            bias: bias.map_or_else(|| vec![0.0; co], <[f32]>::to_vec),
            channels: co,
            input_stride: s,
            output_stride: 1,
            relu,
        }
    }
}

/// The stride-2 adjoint of [`crate::dispatch::adjoint`] where [`adjoint_available`] holds.
///
/// Each image position receives the taps whose parity matches its own: 4, 2, 2 or 1 of the
/// nine, read from the zero-bordered feature map at consecutive columns for every other image
/// column, so the four parity classes are four small convolutions.
/// `bias` (per image channel) and ReLU, when given, are applied on the way out.
pub(crate) fn adjoint(
    g: &Conv3x3,
    feature: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    relu: bool,
) -> Vec<f32> {
    g.check_adjoint(feature, weight);
    let pass = Pass::adjoint(g, weight, bias, relu);
    pass.run(feature)
}

impl Pass {
    /// The stride-2 adjoint of `g` (see [`adjoint`]) where [`adjoint_available`] holds.
    pub(crate) fn adjoint(g: &Conv3x3, weight: &[f32], bias: Option<&[f32]>, relu: bool) -> Self {
        assert!(
            adjoint_available(g),
            "the channels-last adjoint needs a vector level, stride 2 and image channels in whole vectors"
        );
        assert_eq!(weight.len(), g.weight_len(), "weight size");
        let (ci, co) = (g.image_channels, g.feature_channels);
        let (fh, fw) = (g.feature_height(), g.feature_width());
        let feature_side = Conv3x3 {
            image_channels: co,
            image_height: fh,
            image_width: fw,
            ..*g
        };
        let (fwp, fplane) = (fw + 2, padded_plane(&feature_side));
        // weights[(o * 9 + tap) * ci + c] = weight[o, c, tap]: each output channel's `(ci, 9)`
        // transposed.
        let mut weights = vec![0.0f32; g.weight_len()];
        for (from, to) in weight.chunks(ci * 9).zip(weights.chunks_mut(ci * 9)) {
            transpose(from, ci, 9, as_uninit(to));
        }
        // Class (cy, cx) holds the image positions with (y + 1, x + 1) of that parity; tap
        // (ky, kx) reaches them when ky = cy and kx = cx (mod 2), from feature position
        // ((y + 1 - ky) / 2, (x + 1 - kx) / 2): `input_at` is the class's position with the
        // largest shift, and each tap adds back what it shifts less.
        let class_taps = |cy: usize, cx: usize| -> Vec<(usize, usize)> {
            let mut list = Vec::new();
            for o in 0..co {
                for ky in (cy..3).step_by(2) {
                    for kx in (cx..3).step_by(2) {
                        let shift = (1 - (ky - cy) / 2) * fwp + (1 - (kx - cx) / 2);
                        list.push((o * fplane + shift, (o * 9 + ky * 3 + kx) * ci));
                    }
                }
            }
            list
        };
        let taps = vec![
            class_taps(0, 0),
            class_taps(0, 1),
            class_taps(1, 0),
            class_taps(1, 1),
        ];
        let (h, w) = (g.image_height, g.image_width);
        let mut segments = Vec::new();
        for y in 0..h {
            let cy = (y + 1) % 2;
            for cx in 0..2 {
                let x0 = 1 - cx;
                if x0 >= w {
                    continue;
                }
                segments.push(Segment {
                    input_at: (y + 1 - cy) / 2 * fwp + (x0 + 1 - cx) / 2,
                    out_position: y * w + x0,
                    count: (w - x0).div_ceil(2),
                    taps: cy * 2 + cx,
                });
            }
        }
        Pass {
            input: feature_side,
            output_len: g.image_len(),
            output_size: (h, w),
            positions: positions_by_tap_list(&segments, taps.len(), 1, 2),
            taps,
            segments,
            weights,
            bias: bias.map_or_else(|| vec![0.0; ci], <[f32]>::to_vec),
            channels: ci,
            input_stride: 1,
            output_stride: 2,
            relu,
        }
    }
}

impl Pass {
    /// Runs the pass on every image of `input`, in parallel.
    fn run(&self, input: &[f32]) -> Vec<f32> {
        let input_len = self.input.image_len();
        // SAFETY: `run_one` writes every value of each image's output.
        unsafe { per_image(input, input_len, self.output_len, |i, o| self.run_one(i, o)) }
    }

    /// One image: pads `input`, runs the kernel channels-last and transposes the result into
    /// `out`'s `(channels, positions)`, every value of which it writes.
    pub(crate) fn run_one(&self, input: &[f32], out: &mut [MaybeUninit<f32>]) {
        let g = &self.input;
        assert_eq!(input.len(), g.image_len(), "input size");
        let padded_len = padded_image_len(g);
        with_scratch([padded_len, self.output_len, 0], |padded, out_last, _| {
            pad_images(g, input, padded);
            let (h, w) = self.output_size;
            self.run_into(padded, out_last, out, MapLayout::plain(h, w));
        });
    }

    /// One image already padded, `(channels, H + 2, W + 2)` with a zero border, into `out`
    /// laid out as `layout` says ([`MapLayout::bordered`] only where [`Pass::writes_bordered`]):
    /// every value of the map it writes, nothing of a border.
    pub(crate) fn run_padded(
        &self,
        padded: &[f32],
        out: &mut [MaybeUninit<f32>],
        layout: MapLayout,
    ) {
        with_scratch([0, self.output_len, 0], |_, out_last, _| {
            self.run_into(padded, out_last, out, layout)
        });
    }

    /// The geometry whose image side is the pass's input (a feature map for the adjoint).
    pub(crate) fn input_geometry(&self) -> &Conv3x3 {
        &self.input
    }

    /// Whether [`Pass::run_padded`] writes [`MapLayout::bordered`] outputs.
    pub(crate) fn writes_bordered(&self) -> bool {
        bordered_fits(self.output_size.1, self.channels)
    }

    fn run_into(
        &self,
        padded: &[f32],
        out_last: &mut [f32],
        out: &mut [MaybeUninit<f32>],
        layout: MapLayout,
    ) {
        let g = &self.input;
        assert_eq!(padded.len(), padded_image_len(g), "padded input size");
        let (h, w) = self.output_size;
        // SAFETY: the constructors checked the level; every tap offset stays inside the
        // padded input and every segment inside `out_last`.
        at_level!(
            SimdLevel::active(),
            run_image(self, padded, out_last),
            unreachable!("checked by the constructors")
        );
        if layout.is_bordered() {
            assert_eq!(layout, MapLayout::bordered(h, w), "output layout");
            transpose_bordered(out_last, (self.channels, h, w), out);
        } else {
            assert_eq!(out.len(), self.output_len, "output size");
            transpose(out_last, h * w, self.channels, out);
        }
    }
}

/// The weight gradient of [`crate::dispatch::weight_grad`] where [`available`] holds.
pub(crate) fn weight_grad(g: &Conv3x3, image: &[f32], feature_grad: &[f32]) -> Vec<f32> {
    g.check_weight_grad(image, feature_grad);
    let per_task = g.batch.div_ceil(rayon::current_num_threads()).max(1);
    let partials: Vec<Vec<f32>> = feature_grad
        .par_chunks(per_task * g.feature_len())
        .zip(image.par_chunks(per_task * g.image_len()))
        .map(|(grads, images)| {
            let mut partial = vec![0.0f32; g.weight_len()];
            accumulate_weight_grad(g, images, grads, &mut partial);
            partial
        })
        .collect();
    weight_from_taps(g, &sum_in_order(&partials, g.weight_len()))
}

/// Adds the weight gradient of some images and their feature gradients to `by_tap`, laid out
/// `(ci, 3, 3, co)` as the kernel accumulates it ([`weight_from_taps`] turns it around).
pub(crate) fn accumulate_weight_grad(
    g: &Conv3x3,
    images: &[f32],
    grads: &[f32],
    by_tap: &mut [f32],
) {
    assert!(
        available(g),
        "channels-last kernels need a vector level and feature channels in whole vectors"
    );
    let (ci, co) = (g.image_channels, g.feature_channels);
    let count = images.len() / g.image_len();
    assert_eq!(images.len(), count * g.image_len(), "image size");
    assert_eq!(grads.len(), count * g.feature_len(), "feature size");
    assert_eq!(by_tap.len(), g.weight_len(), "weight size");
    // Images in one group stay in L2 and are summed in registers before the partial sums are
    // touched: on 8x8 maps one image was too little work per tile.
    let per_image = ci * padded_plane(g) + g.feature_len();
    let group = (GROUP_BUDGET / per_image).clamp(1, count.max(1));
    let lens = [group * ci * padded_plane(g), group * g.feature_len(), 0];
    with_scratch(lens, |padded, grad_last, _| {
        for (imgs, grads) in images
            .chunks(group * g.image_len())
            .zip(grads.chunks(group * g.feature_len()))
        {
            let count = imgs.len() / g.image_len();
            pad_images(g, imgs, padded);
            for (grad, last) in grads
                .chunks(g.feature_len())
                .zip(grad_last.chunks_mut(g.feature_len()))
            {
                transpose(grad, co, g.feature_len() / co, as_uninit(last));
            }
            // SAFETY: `available` checked the level; buffers have the sizes read.
            at_level!(
                SimdLevel::active(),
                weight_grad_images(g, count, padded, grad_last, by_tap),
                unreachable!("checked by `available`")
            );
        }
    });
}

/// `(ci, 3, 3, co)` to the weight's `(co, ci, 3, 3)`.
pub(crate) fn weight_from_taps(g: &Conv3x3, by_tap: &[f32]) -> Vec<f32> {
    let (ci, co) = (g.image_channels, g.feature_channels);
    let mut out = vec![0.0f32; g.weight_len()];
    for (k, row) in by_tap.chunks(co).enumerate() {
        for (o, &v) in row.iter().enumerate() {
            out[o * ci * 9 + k] = v;
        }
    }
    out
}

instantiate! {
    fn run_image<>(pass: &Pass, padded: &[f32], out_last: &mut [f32]);
    fn weight_grad_images<>(
        g: &Conv3x3,
        count: usize,
        padded: &[f32],
        grad_last: &[f32],
        partial: &mut [f32],
    );
}

/// Positions and vectors of channels in one tile of the forward kernels, given the vectors of
/// channels still to do and the registers there are: 16 sums of 32 registers (AVX-512), 12 of
/// 16 (AVX2), leaving room for the weight vectors and a broadcast input. On AVX2 (Zen 3,
/// `cae bench --layers`) 6 x 2 ran the stride-2 layers at 1.5 ms where 4 x 4 took 1.7-3.5 ms
/// and 8 x 2 1.6-2.6 ms. With 32 registers, four or more vectors of channels (64 channels at
/// AVX-512) also run as 8 x 2 tiles, two vectors at a time, rather than 4 x 4: a 4 x 4 tile
/// reads four weight vectors for every 16 FMAs where 8 x 2 reads two, and the weight rows
/// (147 KB for 64 -> 64 channels, half of it per two vectors) come from L2 either way. On an
/// AVX-512 Xeon, one image on one thread: 32 -> 64 channels at stride 2 in 17 us instead of
/// 21, 64 -> 64 in 28 instead of 32; `cae bench`, 10 alternated rounds: training +4.8%,
/// inference +2.1% (medians of the ratios).
fn tile_shape(registers: usize, vectors_left: usize) -> (usize, usize) {
    match (registers >= 32, vectors_left) {
        (true, 1) => (16, 1),
        (true, _) => (8, 2),
        (false, 1) => (12, 1),
        (false, _) => (6, 2),
    }
}

/// One image: every segment of `pass` into `out_last (positions, channels)` from the padded
/// input.
///
/// # Safety
/// Only from a function compiled for `S` (see [`instantiate`]); the pass built for the padded
/// input and output it is given.
#[inline(always)]
unsafe fn run_image<S: Isa>(pass: &Pass, padded: &[f32], out_last: &mut [f32]) {
    let vectors = pass.channels / S::LANES;
    let strides = (pass.input_stride, pass.output_stride);
    let mut v = 0;
    while v < vectors {
        let shape = tile_shape(S::REGISTERS, vectors - v);
        if shape == (GATHERED_TILE, 2) {
            for (taps, positions) in pass.taps.iter().zip(&pass.positions) {
                // SAFETY: the caller's contract.
                unsafe { gathered_tiles::<S>(pass, padded, out_last, taps, positions, v) };
            }
            v += 2;
            continue;
        }
        for segment in &pass.segments {
            let at = (padded, out_last.as_mut_ptr(), segment, v);
            // SAFETY: the caller's contract.
            unsafe {
                match (shape, strides) {
                    ((8, 2), (1, 1)) => segment_tiles::<S, 8, 2, 1, 1>(pass, at),
                    ((8, 2), (2, 1)) => segment_tiles::<S, 8, 2, 2, 1>(pass, at),
                    ((8, 2), _) => segment_tiles::<S, 8, 2, 1, 2>(pass, at),
                    ((16, 1), (1, 1)) => segment_tiles::<S, 16, 1, 1, 1>(pass, at),
                    ((16, 1), (2, 1)) => segment_tiles::<S, 16, 1, 2, 1>(pass, at),
                    ((16, 1), _) => segment_tiles::<S, 16, 1, 1, 2>(pass, at),
                    ((_, _), (1, 1)) => segment_tiles::<S, 12, 1, 1, 1>(pass, at),
                    ((_, _), (2, 1)) => segment_tiles::<S, 12, 1, 2, 1>(pass, at),
                    ((_, _), _) => segment_tiles::<S, 12, 1, 1, 2>(pass, at),
                }
            }
        }
        v += shape.1;
    }
}

type At<'a> = (&'a [f32], *mut f32, &'a Segment, usize);

/// One segment in blocks of `P` positions, then its remainder one at a time.
#[inline(always)]
unsafe fn segment_tiles<
    S: Isa,
    const P: usize,
    const V: usize,
    const SI: usize,
    const SO: usize,
>(
    pass: &Pass,
    (padded, out_last, segment, v0): At,
) {
    let mut i = 0;
    while i + P <= segment.count {
        unsafe { tile::<S, P, V, SI, SO>(pass, padded, out_last, segment, v0, i) };
        i += P;
    }
    while i < segment.count {
        unsafe { tile::<S, 1, V, SI, SO>(pass, padded, out_last, segment, v0, i) };
        i += 1;
    }
}

/// The positions per tile of AVX2's two-vector shape, which [`gathered_tiles`] takes from
/// anywhere in the output rather than from one segment: the stride-2 layers' segments (rows
/// of 4 to 16 positions) split into tiles of 4 and 5 with only 8 or 10 sums, and on a Zen 4 at
/// AVX2 those passes ran at 50-58% of the FMA peak where the stride-1 ones reached 65-75%
/// (`cae bench --layers`).
const GATHERED_TILE: usize = 6;

/// Every position of `positions` (all reading the tap list `taps`) times vectors `v0` and
/// `v0 + 1` of channels, in tiles of [`GATHERED_TILE`] consecutive positions of the list.
#[inline(always)]
unsafe fn gathered_tiles<S: Isa>(
    pass: &Pass,
    padded: &[f32],
    out_last: &mut [f32],
    taps: &[(usize, usize)],
    positions: &[(usize, usize)],
    v0: usize,
) {
    let out_last = out_last.as_mut_ptr();
    let (tiles, rest) = positions.as_chunks::<GATHERED_TILE>();
    // SAFETY: the caller's contract.
    unsafe {
        for at in tiles {
            gathered_tile::<S, GATHERED_TILE>(pass, padded, out_last, taps, at, v0);
        }
        // Arrays of a known length, so that the sums of the last tile stay in registers too.
        fn tail<const P: usize>(rest: &[(usize, usize)]) -> &[(usize, usize); P] {
            rest.try_into().expect("the remainder's length")
        }
        match rest.len() {
            0 => {}
            1 => gathered_tile::<S, 1>(pass, padded, out_last, taps, tail(rest), v0),
            2 => gathered_tile::<S, 2>(pass, padded, out_last, taps, tail(rest), v0),
            3 => gathered_tile::<S, 3>(pass, padded, out_last, taps, tail(rest), v0),
            4 => gathered_tile::<S, 4>(pass, padded, out_last, taps, tail(rest), v0),
            _ => gathered_tile::<S, 5>(pass, padded, out_last, taps, tail(rest), v0),
        }
    }
}

/// The `P` positions `at` (input offset, output position) times vectors `v0` and `v0 + 1` of
/// channels, summed over `taps` in registers: [`tile`] with a base pointer per position.
#[inline(always)]
unsafe fn gathered_tile<S: Isa, const P: usize>(
    pass: &Pass,
    padded: &[f32],
    out_last: *mut f32,
    taps: &[(usize, usize)],
    at: &[(usize, usize); P],
    v0: usize,
) {
    const V: usize = 2;
    // SAFETY: only called from functions compiled for `S`; the pass's offsets were built for
    // the padded input and output it is given.
    unsafe {
        let c = pass.channels;
        let mut x = [padded.as_ptr(); P];
        for (x, &(input_at, _)) in x.iter_mut().zip(at) {
            *x = x.add(input_at);
        }
        let w = pass.weights.as_ptr().add(v0 * S::LANES);
        let mut acc = biased_sums::<S, P, V>(pass, v0);
        for &(offset, row) in taps {
            let mut wv = [S::zero(); V];
            for (j, wv) in wv.iter_mut().enumerate() {
                *wv = S::load(w.add(row + j * S::LANES));
            }
            for (acc, x) in acc.iter_mut().zip(&x) {
                let xb = S::splat(*x.add(offset));
                for j in 0..V {
                    acc[j] = S::fma(xb, wv[j], acc[j]);
                }
            }
        }
        for (acc, &(_, position)) in acc.iter().zip(at) {
            for (j, &value) in acc.iter().enumerate() {
                let value = if pass.relu { S::relu(value) } else { value };
                S::store(out_last.add(position * c + (v0 + j) * S::LANES), value);
            }
        }
    }
}

/// The sums of a tile of `P` positions times `V` vectors of channels from vector `v0`, each
/// starting at its channel's bias.
///
/// # Safety
/// Only from a function compiled for `S`; `v0 + V` vectors within the pass's channels.
#[inline(always)]
unsafe fn biased_sums<S: Isa, const P: usize, const V: usize>(
    pass: &Pass,
    v0: usize,
) -> [[S::V; V]; P] {
    let mut acc = [[unsafe { S::zero() }; V]; P];
    for j in 0..V {
        // SAFETY: the caller's contract.
        let b = unsafe { S::load(pass.bias.as_ptr().add((v0 + j) * S::LANES)) };
        for acc in acc.iter_mut() {
            acc[j] = b;
        }
    }
    acc
}

/// Positions `i..i + P` of `segment` times `V` vectors of channels from vector `v0`, summed
/// over the segment's taps in registers.
#[inline(always)]
unsafe fn tile<S: Isa, const P: usize, const V: usize, const SI: usize, const SO: usize>(
    pass: &Pass,
    padded: &[f32],
    out_last: *mut f32,
    segment: &Segment,
    v0: usize,
    i: usize,
) {
    // SAFETY: only called from functions compiled for `S`; the pass's offsets were built for
    // the padded input and output it is given.
    unsafe {
        let c = pass.channels;
        let x = padded.as_ptr().add(segment.input_at + i * SI);
        let w = pass.weights.as_ptr().add(v0 * S::LANES);
        let mut acc = biased_sums::<S, P, V>(pass, v0);
        for &(offset, row) in &pass.taps[segment.taps] {
            let mut wv = [S::zero(); V];
            for (j, wv) in wv.iter_mut().enumerate() {
                *wv = S::load(w.add(row + j * S::LANES));
            }
            for (b, acc) in acc.iter_mut().enumerate() {
                let xb = S::splat(*x.add(offset + b * SI));
                for j in 0..V {
                    acc[j] = S::fma(xb, wv[j], acc[j]);
                }
            }
        }
        let p0 = segment.out_position + i * SO;
        for (b, acc) in acc.iter().enumerate() {
            for (j, &value) in acc.iter().enumerate() {
                let value = if pass.relu { S::relu(value) } else { value };
                let dst = out_last.add((p0 + b * SO) * c + (v0 + j) * S::LANES);
                S::store(dst, value);
            }
        }
    }
}

/// Adds the weight gradient of `count` images to `partial (ci, 3, 3, co)`, from their padded
/// inputs `(count, ci, H + 2, W + 2)` and channels-last output gradients `(count, positions,
/// co)`.
///
/// # Safety
/// Only from a function compiled for `S` (see [`instantiate`]); buffers of the sizes the
/// geometry implies.
#[inline(always)]
unsafe fn weight_grad_images<S: Isa>(
    g: &Conv3x3,
    count: usize,
    padded: &[f32],
    grad_last: &[f32],
    partial: &mut [f32],
) {
    let (ci, vectors) = (g.image_channels, g.feature_channels / S::LANES);
    let at = (g, count, padded, grad_last);
    let mut v = 0;
    // SAFETY: the caller's contract.
    unsafe {
        while v < vectors {
            if S::REGISTERS < 32 && vectors - v >= 2 {
                // 2 image channels x 2 vectors x 3 taps: 12 sums of 16 registers, each
                // broadcast input used twice and each gradient vector three times. 1 vector x 9
                // taps (one load per FMA) took 3.4 ms where 1 channel x 2 vectors x 5 taps,
                // then x 4, took 3.0 for the 16-channel 32x32 layer (Zen 3, alternated runs);
                // 4 vectors x 3 taps spilled and took twice as long. Two channels at a time
                // instead of one: every layer's weight gradient 0.89-0.96x as long (Zen 4,
                // `bench/layers_ab.py`, 16 rounds), the 8 sums of the x 4 tile too few to cover
                // the FMA latency on two pipes.
                let mut c = 0;
                while c + 2 <= ci {
                    weight_grad_tile::<S, 2, 2, 0, 3>(at, partial, c, v);
                    weight_grad_tile::<S, 2, 2, 3, 3>(at, partial, c, v);
                    weight_grad_tile::<S, 2, 2, 6, 3>(at, partial, c, v);
                    c += 2;
                }
                if c < ci {
                    weight_grad_tile::<S, 1, 2, 0, 5>(at, partial, c, v);
                    weight_grad_tile::<S, 1, 2, 5, 4>(at, partial, c, v);
                }
                v += 2;
            } else if S::REGISTERS < 32 {
                // 1 vector x 9 taps: 9 sums, the gradient vector and a broadcast input.
                for c in 0..ci {
                    weight_grad_tile::<S, 1, 1, 0, 9>(at, partial, c, v);
                }
                v += 1;
            } else if vectors - v >= 2 {
                // 2 vectors x 9 taps = 18 sums, one image channel at a time.
                for c in 0..ci {
                    weight_grad_tile::<S, 1, 2, 0, 9>(at, partial, c, v);
                }
                v += 2;
            } else {
                // 1 vector x 27 taps: three image channels at a time.
                let mut c = 0;
                while c < ci {
                    match ci - c {
                        1 => weight_grad_tile::<S, 1, 1, 0, 9>(at, partial, c, v),
                        2 => weight_grad_tile::<S, 2, 1, 0, 9>(at, partial, c, v),
                        _ => weight_grad_tile::<S, 3, 1, 0, 9>(at, partial, c, v),
                    }
                    c += 3;
                }
                v += 1;
            }
        }
    }
}

/// Accumulates taps `T0..T0 + T` of `C` image channels from `c0` times `V` vectors of feature
/// channels from vector `v0`, over every output position of `count` images, in registers.
#[inline(always)]
unsafe fn weight_grad_tile<
    S: Isa,
    const C: usize,
    const V: usize,
    const T0: usize,
    const T: usize,
>(
    (g, count, padded, grad_last): (&Conv3x3, usize, &[f32], &[f32]),
    partial: &mut [f32],
    c0: usize,
    v0: usize,
) {
    // SAFETY: only called from functions compiled for `S`, with buffers of the sizes the
    // geometry implies.
    unsafe {
        let (co, s) = (g.feature_channels, g.stride);
        let (fh, fw) = (g.feature_height(), g.feature_width());
        let (wp, plane) = (g.image_width + 2, padded_plane(g));
        let mut acc = [[[S::zero(); V]; T]; C];
        for n in 0..count {
            let x = padded.as_ptr().add((n * g.image_channels + c0) * plane);
            let dy = grad_last.as_ptr().add(n * fh * fw * co + v0 * S::LANES);
            for oy in 0..fh {
                for ox in 0..fw {
                    let at = oy * s * wp + ox * s;
                    let row = dy.add((oy * fw + ox) * co);
                    let mut d = [S::zero(); V];
                    for (j, d) in d.iter_mut().enumerate() {
                        *d = S::load(row.add(j * S::LANES));
                    }
                    for (c, acc) in acc.iter_mut().enumerate() {
                        for (t, acc) in acc.iter_mut().enumerate() {
                            let tap = T0 + t;
                            let value = *x.add(c * plane + tap / 3 * wp + tap % 3 + at);
                            let xb = S::splat(value);
                            for j in 0..V {
                                acc[j] = S::fma(xb, d[j], acc[j]);
                            }
                        }
                    }
                }
            }
        }
        for (c, acc) in acc.iter().enumerate() {
            for (t, acc) in acc.iter().enumerate() {
                for (j, acc) in acc.iter().enumerate() {
                    let k = (c0 + c) * 9 + T0 + t;
                    let dst = partial.as_mut_ptr().add(k * co + (v0 + j) * S::LANES);
                    S::store(dst, S::add(S::load(dst), *acc));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::im2col::weight_grad_im2col;

    /// A batch whose tasks hold several groups of images, the last one short.
    #[test]
    fn weight_grad_sums_every_group_of_images() {
        let g = Conv3x3 {
            batch: 16,
            image_channels: 16,
            image_height: 32,
            image_width: 32,
            feature_channels: 16,
            stride: 1,
        };
        if !available(&g) {
            return;
        }
        let per_image = g.image_channels * padded_plane(&g) + g.feature_len();
        let per_task = g.batch.div_ceil(rayon::current_num_threads());
        assert!(GROUP_BUDGET / per_image < per_task, "one group per task");
        let image: Vec<f32> = (0..g.batch * g.image_len())
            .map(|i| (i % 13) as f32 / 13.0)
            .collect();
        let grad: Vec<f32> = (0..g.batch * g.feature_len())
            .map(|i| (i % 7) as f32 / 7.0 - 0.5)
            .collect();
        let ours = weight_grad(&g, &image, &grad);
        let reference = weight_grad_im2col(&g, &image, &grad);
        for (a, b) in ours.iter().zip(&reference) {
            assert!((a - b).abs() <= 1e-3 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }
}
