//! Self-ensembling at test time: run the model on flipped and rotated copies of the input, undo
//! each transform on its output and average. The model's errors differ between the copies while
//! the image content does not, so the average is closer to the clean image (the "geometric
//! self-ensemble" of image restoration, e.g. Lim et al., EDSR, 2017).

/// One of the eight symmetries of a square (four of a rectangle): flip rows, flip columns, then
/// transpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Symmetry {
    pub flip_rows: bool,
    pub flip_cols: bool,
    pub transpose: bool,
}

impl Symmetry {
    /// Every symmetry that keeps an `height x width` image's shape: eight for a square, four
    /// (the flips) otherwise. The identity comes first.
    pub(crate) fn all(height: usize, width: usize) -> Vec<Symmetry> {
        let transposes: &[bool] = if height == width {
            &[false, true]
        } else {
            &[false]
        };
        let mut all = Vec::new();
        for &transpose in transposes {
            for flip_rows in [false, true] {
                for flip_cols in [false, true] {
                    all.push(Symmetry {
                        flip_rows,
                        flip_cols,
                        transpose,
                    });
                }
            }
        }
        all
    }

    /// For output position `(y, x)`, the input position it comes from.
    fn source(self, y: usize, x: usize, height: usize, width: usize) -> (usize, usize) {
        let (y, x) = if self.transpose { (x, y) } else { (y, x) };
        let y = if self.flip_rows { height - 1 - y } else { y };
        let x = if self.flip_cols { width - 1 - x } else { x };
        (y, x)
    }

    /// The images (`channels x height x width` each, one after another) transformed.
    fn apply(self, images: &[f32], channels: usize, height: usize, width: usize) -> Vec<f32> {
        self.remap(images, channels, height, width, false)
    }

    /// Undoes [`Symmetry::apply`].
    fn undo(self, images: &[f32], channels: usize, height: usize, width: usize) -> Vec<f32> {
        self.remap(images, channels, height, width, true)
    }

    fn remap(
        self,
        images: &[f32],
        channels: usize,
        height: usize,
        width: usize,
        inverse: bool,
    ) -> Vec<f32> {
        assert!(
            !self.transpose || height == width,
            "only square images can be transposed in place"
        );
        let plane = height * width;
        assert!(images.len().is_multiple_of(channels * plane), "image size");
        let mut out = vec![0.0; images.len()];
        for (from, to) in images.chunks(plane).zip(out.chunks_mut(plane)) {
            for y in 0..height {
                for x in 0..width {
                    let (sy, sx) = self.source(y, x, height, width);
                    if inverse {
                        to[sy * width + sx] = from[y * width + x];
                    } else {
                        to[y * width + x] = from[sy * width + sx];
                    }
                }
            }
        }
        out
    }
}

/// The mean over every [`Symmetry`] of `run` on the transformed images, transformed back.
pub(crate) fn self_ensemble(
    images: &[f32],
    channels: usize,
    height: usize,
    width: usize,
    mut run: impl FnMut(&[f32]) -> Vec<f32>,
) -> Vec<f32> {
    let symmetries = Symmetry::all(height, width);
    let mut sum = vec![0.0f32; images.len()];
    for symmetry in &symmetries {
        let output = run(&symmetry.apply(images, channels, height, width));
        assert_eq!(output.len(), images.len(), "the model keeps the image size");
        let back = symmetry.undo(&output, channels, height, width);
        for (s, v) in sum.iter_mut().zip(back) {
            *s += v;
        }
    }
    let n = symmetries.len() as f32;
    sum.iter().map(|s| s / n).collect()
}

#[cfg(test)]
mod tests {
    use super::{Symmetry, self_ensemble};

    /// Two 1-channel 3x3 images with distinct values.
    fn square() -> Vec<f32> {
        (0..18).map(|v| v as f32).collect()
    }

    #[test]
    fn eight_distinct_symmetries_of_a_square_and_four_of_a_rectangle() {
        let images = square();
        let all = Symmetry::all(3, 3);
        assert_eq!(all.len(), 8);
        let mut seen: Vec<Vec<f32>> = all.iter().map(|s| s.apply(&images, 1, 3, 3)).collect();
        assert_eq!(seen[0], images, "the identity comes first");
        seen.sort_by(|a, b| a.partial_cmp(b).unwrap());
        seen.dedup();
        assert_eq!(seen.len(), 8);
        for s in &all {
            assert_eq!(s.undo(&s.apply(&images, 1, 3, 3), 1, 3, 3), images);
        }
        let rect: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let flips = Symmetry::all(2, 3);
        assert_eq!(flips.len(), 4);
        for s in &flips {
            assert_eq!(s.undo(&s.apply(&rect, 2, 2, 3), 2, 2, 3), rect);
        }
        // Flipping the columns of [0 1 2; 3 4 5].
        assert_eq!(
            flips[1].apply(&rect[..6], 1, 2, 3),
            [2., 1., 0., 5., 4., 3.]
        );
    }

    #[test]
    fn a_transposed_image_reads_down_the_columns() {
        let t = Symmetry {
            flip_rows: false,
            flip_cols: false,
            transpose: true,
        };
        let image: Vec<f32> = (0..4).map(|v| v as f32).collect();
        assert_eq!(t.apply(&image, 1, 2, 2), [0., 2., 1., 3.]);
    }

    #[test]
    fn the_ensemble_keeps_what_every_copy_agrees_on_and_averages_the_rest() {
        let images = square();
        // A pointwise model commutes with every symmetry: the ensemble changes nothing.
        let doubled = self_ensemble(&images, 1, 3, 3, |x| x.iter().map(|v| 2.0 * v).collect());
        assert_eq!(doubled, images.iter().map(|v| 2.0 * v).collect::<Vec<_>>());
        // A model that adds 8 to its top-left pixel: each copy puts the error on another corner
        // (four corners, each twice), so every corner of the result gets 8 * 2 / 8 = 2.
        let biased = self_ensemble(&images, 1, 3, 3, |x| {
            let mut y = x.to_vec();
            y[0] += 8.0;
            y[9] += 8.0;
            y
        });
        let expected: Vec<f32> = images
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v + if [0, 2, 6, 8].contains(&(i % 9)) {
                    2.0
                } else {
                    0.0
                }
            })
            .collect();
        assert_eq!(biased, expected);
    }
}
