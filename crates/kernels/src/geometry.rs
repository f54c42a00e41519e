//! The shapes of a 3x3, padding-1 convolution between an image and a feature map, and the
//! stride-1 adjoint's geometry and weight.
//!
//! One geometry describes both directions: the *image* side is a convolution's input (and a
//! transposed convolution's output), the *feature* side its output. A transposed convolution
//! with stride s and output padding s - 1 is exactly the adjoint of the convolution whose image
//! is its output, so the same three kernels serve both layers.

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
    /// The geometry of a convolution of `image` `(batch, channels, H, W)` with `weight`
    /// `(feature, image, 3, 3)`; `None` unless the shapes fit a 3x3 layer of stride 1 or 2.
    pub(crate) fn of_convolution(
        image: [usize; 4],
        weight: [usize; 4],
        stride: usize,
    ) -> Option<Self> {
        let [batch, image_channels, image_height, image_width] = image;
        (weight[1] == image_channels && weight[2..] == [3, 3] && matches!(stride, 1 | 2)).then_some(
            Conv3x3 {
                batch,
                image_channels,
                image_height,
                image_width,
                feature_channels: weight[0],
                stride,
            },
        )
    }

    /// The geometry of a transposed convolution of `input` `(batch, channels, h, w)` with
    /// `weight` `(in, out, 3, 3)`: its output `(batch, out, h * stride, w * stride)` is the
    /// image side of the convolution whose weight is this one read as `(feature, image, 3, 3)`.
    pub(crate) fn of_transposed(
        input: [usize; 4],
        weight: [usize; 4],
        stride: usize,
    ) -> Option<Self> {
        let [batch, channels, height, width] = input;
        let image = [batch, weight[1], height * stride, width * stride];
        Self::of_convolution(image, weight, stride).filter(|g| g.feature_channels == channels)
    }

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
    pub(crate) fn check_forward(&self, image: &[f32], weight: &[f32]) {
        assert_eq!(image.len(), self.batch * self.image_len(), "image size");
        assert_eq!(weight.len(), self.weight_len(), "weight size");
    }

    /// Panics unless `feature` and `weight` have this geometry's sizes.
    pub(crate) fn check_adjoint(&self, feature: &[f32], weight: &[f32]) {
        assert_eq!(
            feature.len(),
            self.batch * self.feature_len(),
            "feature size"
        );
        assert_eq!(weight.len(), self.weight_len(), "weight size");
    }

    /// Panics unless `image` and `feature_grad` have this geometry's sizes.
    pub(crate) fn check_weight_grad(&self, image: &[f32], feature_grad: &[f32]) {
        assert_eq!(image.len(), self.batch * self.image_len(), "image size");
        let features = self.batch * self.feature_len();
        assert_eq!(feature_grad.len(), features, "feature size");
    }

    /// Values of the weight, laid out (feature, image, 3, 3).
    pub fn weight_len(&self) -> usize {
        self.feature_channels * self.patch_len()
    }

    /// Length of one im2col column: every input value one output position sees.
    pub(crate) fn patch_len(&self) -> usize {
        self.image_channels * 9
    }

    pub(crate) fn positions(&self) -> usize {
        self.feature_height() * self.feature_width()
    }

    /// Images per parallel task, processed as one matrix product: as many as keep the task's
    /// im2col buffer within about half of a core's L2 cache (1 MiB), and at most a quarter
    /// of a thread's share of the batch so that the threads stay balanced.
    pub(crate) fn images_per_task(&self) -> usize {
        const COLUMN_BUDGET: usize = 256 * 1024;
        let fitting = COLUMN_BUDGET / (self.patch_len() * self.positions()).max(1);
        let balanced = self.batch.div_ceil(4 * rayon::current_num_threads());
        fitting.clamp(1, balanced.max(1))
    }
}

/// The geometry of the stride-1 adjoint as a convolution: image and feature channels swapped.
pub(crate) fn swapped(g: &Conv3x3) -> Conv3x3 {
    Conv3x3 {
        image_channels: g.feature_channels,
        feature_channels: g.image_channels,
        ..*g
    }
}

/// The stride-1 adjoint as a convolution: its geometry and weight.
pub(crate) fn flipped_convolution(g: &Conv3x3, weight: &[f32]) -> (Conv3x3, Vec<f32>) {
    (swapped(g), flipped(g, weight))
}

/// The weight of the stride-1 adjoint: `(image, feature, 3, 3)`, taps reversed.
pub(crate) fn flipped(g: &Conv3x3, weight: &[f32]) -> Vec<f32> {
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

/// Where the values of a `(channels, height, width)` map lie in a buffer: row after row
/// ([`MapLayout::plain`]), or inside a one-value zero border, `(channels, height + 2, width +
/// 2)` ([`MapLayout::bordered`]): the layout every per-image kernel reads its input in, so
/// that a layer writing it spares the next one its padding copy ([`crate::stack`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MapLayout {
    /// Values from one channel to the next.
    pub plane: usize,
    /// Values from one row to the next.
    pub row: usize,
    /// Where the first value lies.
    pub first: usize,
}

impl MapLayout {
    pub(crate) fn plain(height: usize, width: usize) -> Self {
        MapLayout {
            plane: height * width,
            row: width,
            first: 0,
        }
    }

    pub(crate) fn bordered(height: usize, width: usize) -> Self {
        let row = width + 2;
        MapLayout {
            plane: (height + 2) * row,
            row,
            first: row + 1,
        }
    }

    /// Whether this is [`MapLayout::bordered`].
    pub(crate) fn is_bordered(&self) -> bool {
        self.first > 0
    }
}
