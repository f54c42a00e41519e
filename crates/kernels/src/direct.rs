//! Direct (no im2col) vector kernels for the stride-1 3x3 convolutions on maps at least one
//! vector wide, where im2col's nine-fold copy cost more than a fifth of a training step: the
//! forward pass (which also serves the stride-1 adjoint, with flipped weights) and a weight
//! gradient for feature channels that do not fill vectors (elsewhere
//! [`super::channels_last`]'s is faster).
//!
//! Each image is copied once into a zero-bordered buffer; the kernels then read shifted rows of
//! it directly, one vector of output columns to a register. Callers fall back to the im2col
//! path when [`available`] is false (no vector level, or the geometry does not fit).

use rayon::prelude::*;

use std::mem::MaybeUninit;

use crate::buffers::{per_image, with_scratch};
use crate::geometry::{Conv3x3, MapLayout};
use crate::reduce::sum_in_order;
use crate::simd::{Isa, Scalar, SimdLevel, at_level, instantiate};

/// Output channels per block of the forward kernel and positions (vectors of columns) sharing
/// each weight broadcast, by the registers of the level, the second for layers with at most 4
/// output channels (so that a 3-channel output does not compute unused ones). 32 registers
/// (AVX-512, NEON): 8 x 2 (16 sums) and 4 x 4. 16 registers (AVX2): 6 x 2 and 4 x 2; measured
/// with `cae bench --layers` on Zen 3, 4 x 3 (12 sums, 3 inputs, a broadcast) ran the 16- to
/// 64-channel layers at 4.4-4.7 ms against 2.6-3.1 ms for 6 x 2 (4 x 2: 3.2-3.7, 8 x 1:
/// 3.3-3.6): with every register taken LLVM spilled a sum and shuffled the others between
/// registers each step. Blocks one channel narrower than the first shape fill out the channel
/// count ([`plan_blocks`]). (NEON's shapes follow its register count; no ARM machine has timed
/// them.)
const fn forward_blocks(registers: usize) -> [(usize, usize); 2] {
    if registers >= 32 {
        [(8, 2), (4, 4)]
    } else {
        [(6, 2), (4, 2)]
    }
}

/// Output channels per pass of the direct weight gradient, 9 sums each: 2 with 32 registers
/// (AVX-512, NEON), 1 with AVX2's 16.
const fn weight_grad_channels(registers: usize) -> usize {
    if registers >= 32 { 2 } else { 1 }
}

/// The second shape of each level: layers with at most this many output channels.
const SMALL_BLOCK_CHANNELS: usize = 4;

/// One block of output channels of the forward kernel.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Block {
    /// Its first output channel.
    first: usize,
    /// How many output channels it computes: `shape`, or fewer in a padded last block (so
    /// its weights start at `first * ci * 9` in the packed weight).
    channels: usize,
    /// Sums per position of the instance that runs it, one of the shapes of the level.
    shape: usize,
}

/// The blocks of a layer with `co` output channels at a level with `registers` registers:
/// one small block for at most [`SMALL_BLOCK_CHANNELS`] channels, otherwise as few blocks of
/// the large shape as cover the channels, some of them one channel narrower so that no sum is
/// computed for nothing: at AVX2's 6, 16 channels run as 6 + 5 + 5 instead of 6 + 6 + 6 with
/// two sums discarded, and 32 as 6 + 6 + 5 + 5 + 5 + 5 instead of six blocks of 6. Where the
/// narrower blocks cannot make up the difference (8 channels: 6 + 2), the last one is padded.
/// Each output is summed in the same order whatever its block, so the split changes no bit.
fn plan_blocks(co: usize, registers: usize) -> Vec<Block> {
    let [(large, _), (small, _)] = forward_blocks(registers);
    let count = co.div_ceil(large);
    let narrower = count * large - co;
    let shapes: Vec<usize> = if co <= SMALL_BLOCK_CHANNELS {
        vec![small]
    } else if narrower <= count {
        let wide = count - narrower;
        (0..count)
            .map(|b| if b < wide { large } else { large - 1 })
            .collect()
    } else {
        vec![large; count]
    };
    let mut first = 0;
    shapes
        .into_iter()
        .map(|shape| {
            let channels = shape.min(co - first);
            let block = Block {
                first,
                channels,
                shape,
            };
            first += channels;
            block
        })
        .collect()
}

/// Whether this process runs the direct kernels and the geometry suits them: stride 1 and maps
/// at least one vector wide; AVX2 (whose masked loads are slow) and NEON (which has none) also
/// need whole vectors.
pub(crate) fn available(g: &Conv3x3) -> bool {
    let level = SimdLevel::active();
    let lanes = level.lanes();
    match level {
        SimdLevel::Avx512 => g.stride == 1 && g.image_width >= lanes,
        SimdLevel::Avx2Fma | SimdLevel::Neon => {
            g.stride == 1 && g.image_width.is_multiple_of(lanes)
        }
        SimdLevel::Portable => false,
    }
}

pub(crate) fn padded_plane(g: &Conv3x3) -> usize {
    (g.image_height + 2) * (g.image_width + 2)
}

/// Values of one zero-bordered image `(channels, H + 2, W + 2)`.
pub(crate) fn padded_image_len(g: &Conv3x3) -> usize {
    g.image_channels * padded_plane(g)
}

/// Copies `(channels, H, W)` images into `(channels, H + 2, W + 2)` with zero borders. Only
/// the border is zeroed: the whole-buffer fill cost as much as the copy. With a vector level
/// the rows are copied in (masked) vectors: a `memcpy` call per row was a tenth of a training
/// step. At AVX-512 the direct kernel could skip the copy and read the image itself with every
/// lane outside it masked off (masked-off lanes load zeros without touching memory); on a Zen 4
/// that gave the same results bit for bit but no speed (six alternated `cae bench` rounds:
/// training steps 1.00x, inference 1.01x as long, medians of the ratios), so every level pads.
pub(crate) fn pad_images(g: &Conv3x3, images: &[f32], padded: &mut [f32]) {
    assert!(
        images.len() / (g.image_height * g.image_width) * padded_plane(g) <= padded.len(),
        "padded buffer size"
    );
    // SAFETY: the active level runs on this CPU (`Scalar` needs no instruction set); the
    // buffer sizes were checked above.
    at_level!(SimdLevel::active(), pad_with(g, images, padded), unsafe {
        pad_with::<Scalar>(g, images, padded)
    })
}

/// Zeroes the borders of the maps of `padded (channels, height + 2, width + 2)`, leaving their
/// interiors: a buffer reused for maps of other shapes needs it before a kernel writes a map
/// into it as [`MapLayout::bordered`].
pub(crate) fn zero_borders(height: usize, width: usize, padded: &mut [f32]) {
    let wp = width + 2;
    let plane = (height + 2) * wp;
    assert!(padded.len().is_multiple_of(plane), "padded buffer size");
    for map in padded.chunks_mut(plane) {
        map[..wp + 1].fill(0.0);
        for y in 1..=height {
            // The right border of row y and the left border of the next.
            map[y * wp + width + 1..][..2].fill(0.0);
        }
        map[(height + 1) * wp..].fill(0.0);
    }
}

instantiate! {
    fn pad_with<>(g: &Conv3x3, images: &[f32], padded: &mut [f32]);
    fn forward_image<const B: usize, const NP: usize, const MASKED: bool>(
        layer: &Packed,
        block: &Block,
        padded: &[f32],
        out: &mut [MaybeUninit<f32>],
        layout: MapLayout,
    );
    fn weight_grad_images<const O: usize>(
        g: &Conv3x3,
        count: usize,
        padded: &[f32],
        grads: &[f32],
        partial: &mut [f32],
    );
}

/// [`pad_images`] with rows copied in vectors, masked at the end of a row.
///
/// # Safety
/// Only from a function compiled for `S` (see [`instantiate`]).
#[inline(always)]
unsafe fn pad_with<S: Isa>(g: &Conv3x3, images: &[f32], padded: &mut [f32]) {
    let (h, w) = (g.image_height, g.image_width);
    let wp = w + 2;
    for (src, dst) in images.chunks(h * w).zip(padded.chunks_mut(padded_plane(g))) {
        dst[..wp + 1].fill(0.0);
        for (y, row) in src.chunks(w).enumerate() {
            let line = &mut dst[(y + 1) * wp + 1..][..wp];
            for x0 in (0..w).step_by(S::LANES) {
                // SAFETY: whole vectors and the mask stay inside the row and the line.
                unsafe {
                    let (from, to) = (row.as_ptr().add(x0), line.as_mut_ptr().add(x0));
                    if w - x0 >= S::LANES {
                        S::store(to, S::load(from));
                    } else {
                        let m = S::first(w - x0);
                        S::store_masked(to, m, S::load_masked(from, m));
                    }
                }
            }
            // The right border of this row and the left border of the next.
            line[w..].fill(0.0);
        }
        dst[(h + 1) * wp + 1..].fill(0.0);
    }
}

/// The forward pass of [`crate::dispatch::forward`] for geometries where [`available`] holds.
pub(crate) fn forward(
    g: &Conv3x3,
    image: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    relu: bool,
) -> Vec<f32> {
    g.check_forward(image, weight);
    let packed = Packed::new(g, weight, bias, relu);
    // SAFETY: the kernel stores every position of every channel of an image.
    unsafe {
        per_image(image, g.image_len(), g.feature_len(), |img, out| {
            packed.forward_one(img, out)
        })
    }
}

/// A layer's weight and bias packed for the forward kernel, ready to run image by image.
pub(crate) struct Packed {
    geometry: Conv3x3,
    level: SimdLevel,
    /// Offset in the padded input of each (image channel, tap), in the order of `weights`.
    taps: Vec<usize>,
    blocks: Vec<Block>,
    weights: Vec<f32>,
    bias: Vec<f32>,
    relu: bool,
}

const NEEDS: &str =
    "direct kernels need a vector level and stride 1 on maps at least a vector wide";

impl Packed {
    pub(crate) fn new(g: &Conv3x3, weight: &[f32], bias: Option<&[f32]>, relu: bool) -> Self {
        assert!(available(g), "{NEEDS}");
        assert_eq!(weight.len(), g.weight_len(), "weight size");
        let level = SimdLevel::active();
        let (ci, co) = (g.image_channels, g.feature_channels);
        let blocks = plan_blocks(co, level.registers());
        let width: usize = blocks.iter().map(|b| b.shape).sum();
        // weights[block.first * ci * 9 + k * block.shape + j] = weight[block.first + j, k] for
        // each (channel, tap) k: a block's weights for one tap are side by side, one load
        // apart. The sums of a padded last block beyond its channels keep zero weights.
        let mut weights = vec![0.0f32; width * ci * 9];
        for block in &blocks {
            let packed = &mut weights[block.first * ci * 9..][..block.shape * ci * 9];
            for j in 0..block.channels {
                let rows = &weight[(block.first + j) * ci * 9..][..ci * 9];
                for (k, &value) in rows.iter().enumerate() {
                    packed[k * block.shape + j] = value;
                }
            }
        }
        let wp = g.image_width + 2;
        let taps = (0..ci * 9)
            .map(|k| k / 9 * padded_plane(g) + k % 9 / 3 * wp + k % 3)
            .collect();
        Packed {
            geometry: *g,
            level,
            taps,
            blocks,
            weights,
            bias: bias.map_or_else(|| vec![0.0; co], <[f32]>::to_vec),
            relu,
        }
    }

    /// The layer's geometry: its input is the image side.
    pub(crate) fn geometry(&self) -> &Conv3x3 {
        &self.geometry
    }

    /// One image `(ci, H, W)` into `out (co, H, W)`, every value of which it writes.
    pub(crate) fn forward_one(&self, img: &[f32], out: &mut [MaybeUninit<f32>]) {
        let g = &self.geometry;
        assert_eq!(img.len(), g.image_len(), "image size");
        with_scratch([0, 0, padded_image_len(g)], |_, _, padded| {
            pad_images(g, img, padded);
            let layout = MapLayout::plain(g.image_height, g.image_width);
            self.forward_padded(padded, out, layout);
        });
    }

    /// One image already padded, `(ci, H + 2, W + 2)` with a zero border, into `out (co, H,
    /// W)` laid out as `layout` says: every value of the map it writes, nothing of a border.
    pub(crate) fn forward_padded(
        &self,
        padded: &[f32],
        out: &mut [MaybeUninit<f32>],
        layout: MapLayout,
    ) {
        let g = &self.geometry;
        assert_eq!(padded.len(), padded_image_len(g), "padded image size");
        assert_eq!(out.len(), g.feature_channels * layout.plane, "output size");
        // The instance of one level (module and instruction set) for each block's shape.
        macro_rules! run {
            ($isa:ident, $set:ty, $masked:literal) => {{
                const BLOCKS: [(usize, usize); 2] = forward_blocks(<$set as Isa>::REGISTERS);
                const LARGE: (usize, usize) = BLOCKS[0];
                const SMALL: (usize, usize) = BLOCKS[1];
                for block in &self.blocks {
                    match block.shape {
                        s if s == LARGE.0 => {
                            $isa::forward_image::<{ LARGE.0 }, { LARGE.1 }, $masked>(
                                self, block, padded, out, layout,
                            )
                        }
                        s if s == LARGE.0 - 1 => {
                            $isa::forward_image::<{ LARGE.0 - 1 }, { LARGE.1 }, $masked>(
                                self, block, padded, out, layout,
                            )
                        }
                        _ => $isa::forward_image::<{ SMALL.0 }, { SMALL.1 }, $masked>(
                            self, block, padded, out, layout,
                        ),
                    }
                }
            }};
        }
        // SAFETY: `new` checked the level and packed each block for its shape; buffers have
        // the sizes the kernel reads and writes.
        match self.level {
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx512 => unsafe { run!(avx512, crate::simd::Avx512, true) },
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx2Fma => unsafe { run!(avx2, crate::simd::Avx2Fma, false) },
            #[cfg(target_arch = "aarch64")]
            SimdLevel::Neon => unsafe { run!(neon, crate::simd::Neon, false) },
            _ => unreachable!("{NEEDS}"),
        }
    }
}

/// The weight gradient of [`crate::dispatch::weight_grad`] for geometries where [`available`]
/// holds.
pub(crate) fn weight_grad(g: &Conv3x3, image: &[f32], feature_grad: &[f32]) -> Vec<f32> {
    assert!(available(g), "{NEEDS}");
    g.check_weight_grad(image, feature_grad);
    let level = SimdLevel::active();
    let per_task = g.batch.div_ceil(2 * rayon::current_num_threads()).max(1);
    let partials: Vec<Vec<f32>> = feature_grad
        .par_chunks(per_task * g.feature_len())
        .zip(image.par_chunks(per_task * g.image_len()))
        .map(|(grads, images)| {
            let count = images.len() / g.image_len();
            let mut partial = vec![0.0f32; g.weight_len()];
            let len = count * g.image_channels * padded_plane(g);
            with_scratch([0, 0, len], |_, _, padded| {
                pad_images(g, images, padded);
                // The kernel of one level with the channels per pass its registers allow.
                macro_rules! run {
                    ($isa:ident, $set:ty) => {
                        $isa::weight_grad_images::<
                            { weight_grad_channels(<$set as Isa>::REGISTERS) },
                        >(g, count, padded, grads, &mut partial)
                    };
                }
                // SAFETY: `available` checked the level; buffers have the sizes the kernel
                // reads.
                match level {
                    #[cfg(target_arch = "x86_64")]
                    SimdLevel::Avx512 => unsafe { run!(avx512, crate::simd::Avx512) },
                    #[cfg(target_arch = "x86_64")]
                    SimdLevel::Avx2Fma => unsafe { run!(avx2, crate::simd::Avx2Fma) },
                    #[cfg(target_arch = "aarch64")]
                    SimdLevel::Neon => unsafe { run!(neon, crate::simd::Neon) },
                    _ => unreachable!("{NEEDS}"),
                }
            });
            partial
        })
        .collect();
    sum_in_order(&partials, g.weight_len())
}

/// One block of output channels of one image's `out (co, H, W)`, laid out as `layout` says,
/// from its padded input `(ci, H + 2, W + 2)`, the block's weight packed `B` values to a row.
/// `NP` vectors of columns share each weight broadcast; with few output channels, more
/// positions keep enough sums in flight. `MASKED` loads and stores the last vector of a row
/// masked; without it rows hold whole vectors.
///
/// # Safety
/// Only from a function compiled for `S` (see [`instantiate`]); buffers of the geometry's
/// sizes, `block` one of `layer`'s and of shape `B`.
#[inline(always)]
unsafe fn forward_image<S: Isa, const B: usize, const NP: usize, const MASKED: bool>(
    layer: &Packed,
    block: &Block,
    padded: &[f32],
    out: &mut [MaybeUninit<f32>],
    layout: MapLayout,
) {
    let Packed {
        geometry: g,
        taps,
        bias,
        relu,
        ..
    } = layer;
    let (h, w, relu) = (g.image_height, g.image_width, *relu);
    let (first, channels) = (block.first, block.channels);
    debug_assert!(block.shape == B && first + channels <= g.feature_channels);
    let wp = w + 2;
    let chunks = w.div_ceil(S::LANES);
    let positions = h * chunks;
    let src = padded.as_ptr();
    let dst = out.as_mut_ptr().cast::<f32>();
    // SAFETY: the caller's contract; every offset below stays inside the padded input, the
    // packed weight and the output.
    unsafe {
        let weights =
            layer.weights[block.first * g.image_channels * 9..][..taps.len() * B].as_ptr();
        let mut t = 0;
        while t < positions {
            // Positions past the end repeat the last one with nothing to store.
            let mut at = [(0usize, 0usize, 0usize); NP];
            for (i, at) in at.iter_mut().enumerate() {
                let u = (t + i).min(positions - 1);
                let (y, x) = (u / chunks, (u % chunks) * S::LANES);
                let valid = if t + i < positions {
                    (w - x).min(S::LANES)
                } else {
                    0
                };
                *at = (y, x, valid);
            }
            // (No closures around intrinsics: one not inlined loses the target features.)
            let mut masks = [S::first(0); NP];
            for (m, &(_, _, valid)) in masks.iter_mut().zip(&at) {
                *m = S::first(valid);
            }
            let mut acc = [[S::zero(); B]; NP];
            // One loop over (channel, tap) through the offset table: with the nine taps
            // unrolled, LLVM hoisted their loads and spilled half the sums on AVX2.
            for (k, &tap) in taps.iter().enumerate() {
                let mut v = [S::zero(); NP];
                for ((v, &(y, x, _)), &m) in v.iter_mut().zip(&at).zip(&masks) {
                    let from = src.add(tap + y * wp + x);
                    *v = if MASKED {
                        S::load_masked(from, m)
                    } else {
                        S::load(from)
                    };
                }
                let wt = weights.add(k * B);
                for j in 0..B {
                    let wj = S::splat(*wt.add(j));
                    for (acc, v) in acc.iter_mut().zip(&v) {
                        acc[j] = S::fma(wj, *v, acc[j]);
                    }
                }
            }
            // A constant bound, so that the sums stay in registers.
            for j in 0..B {
                if j >= channels {
                    break;
                }
                let o = first + j;
                let b = S::splat(bias[o]);
                for ((acc, &(y, x, valid)), &m) in acc.iter().zip(&at).zip(&masks) {
                    let mut r = S::add(acc[j], b);
                    if relu {
                        r = S::relu(r);
                    }
                    let to = dst.add(o * layout.plane + y * layout.row + x + layout.first);
                    if MASKED {
                        S::store_masked(to, m, r);
                    } else if valid > 0 {
                        S::store(to, r);
                    }
                }
            }
            t += NP;
        }
    }
}

/// Adds to `partial (co, ci, 3, 3)` the weight gradient of `count` images, given their padded
/// inputs `(count, ci, H + 2, W + 2)` and output gradients `(count, co, H, W)`, `O` output
/// channels at a time (9 sums each).
///
/// # Safety
/// Only from a function compiled for `S` (see [`instantiate`]); buffers of the geometry's
/// sizes.
#[inline(always)]
unsafe fn weight_grad_images<S: Isa, const O: usize>(
    g: &Conv3x3,
    count: usize,
    padded: &[f32],
    grads: &[f32],
    partial: &mut [f32],
) {
    let (h, w, ci, co) = (
        g.image_height,
        g.image_width,
        g.image_channels,
        g.feature_channels,
    );
    let (wp, plane) = (w + 2, padded_plane(g));
    let chunks = w.div_ceil(S::LANES);
    let (src, dy) = (padded.as_ptr(), grads.as_ptr());
    // SAFETY: the caller's contract; the masks keep every load inside its row.
    unsafe {
        let mut o = 0;
        while o < co {
            // Channels past the last repeat it with zero gradients, and are not stored.
            let channel = |k: usize| (o + k).min(co - 1);
            let live = |k: usize| o + k < co;
            for c in 0..ci {
                let mut acc = [[S::zero(); 9]; O];
                for n in 0..count {
                    let x_base = (n * ci + c) * plane;
                    for y in 0..h {
                        for chunk in 0..chunks {
                            let x0 = chunk * S::LANES;
                            let (full, m) = (w - x0 >= S::LANES, S::first(w - x0));
                            let mut d = [S::zero(); O];
                            for (k, d) in d.iter_mut().enumerate() {
                                if live(k) {
                                    let at = dy.add((n * co + channel(k)) * h * w + y * w + x0);
                                    *d = if full {
                                        S::load(at)
                                    } else {
                                        S::load_masked(at, m)
                                    };
                                }
                            }
                            for tap in 0..9 {
                                let (ky, kx) = (tap / 3, tap % 3);
                                let at = src.add(x_base + (y + ky) * wp + x0 + kx);
                                let xv = if full {
                                    S::load(at)
                                } else {
                                    S::load_masked(at, m)
                                };
                                for (acc, d) in acc.iter_mut().zip(&d) {
                                    acc[tap] = S::fma(*d, xv, acc[tap]);
                                }
                            }
                        }
                    }
                }
                for tap in 0..9 {
                    for (k, acc) in acc.iter().enumerate() {
                        if live(k) {
                            partial[(channel(k) * ci + c) * 9 + tap] += S::sum(acc[tap]);
                        }
                    }
                }
            }
            o += O;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// For every register count and channel count: the blocks cover the channels once, in
    /// order, with the level's shapes, and compute no unused sum unless a padded last block
    /// is the only way.
    #[test]
    fn blocks_cover_the_channels_without_waste() {
        for registers in [16, 32] {
            let [(large, _), (small, _)] = forward_blocks(registers);
            for co in 1..=80 {
                let blocks = plan_blocks(co, registers);
                let (mut next, mut packed) = (0, 0);
                for b in &blocks {
                    assert_eq!(b.first, next, "{co} at {registers}");
                    // Padded only at the end: each block's weights start at its first channel.
                    assert_eq!(b.first, packed, "{co} at {registers}");
                    assert!(b.channels >= 1 && b.channels <= b.shape);
                    assert!([large, large - 1, small].contains(&b.shape));
                    next += b.channels;
                    packed += b.shape;
                }
                assert_eq!(next, co, "{co} channels at {registers} registers");
                let padded = packed - co;
                if co > SMALL_BLOCK_CHANNELS
                    && co.div_ceil(large) * large - co <= co.div_ceil(large)
                {
                    assert_eq!(padded, 0, "{co} at {registers}: {blocks:?}");
                }
                assert_eq!(blocks.len(), co.div_ceil(large).max(1));
            }
        }
        let shapes = |co| {
            plan_blocks(co, 16)
                .iter()
                .map(|b| b.shape)
                .collect::<Vec<_>>()
        };
        assert_eq!(shapes(16), [6, 5, 5]);
        assert_eq!(shapes(32), [6, 6, 5, 5, 5, 5]);
        assert_eq!(shapes(3), [4]);
    }
}
