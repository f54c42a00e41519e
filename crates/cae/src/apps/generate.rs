//! New images from a model: decoded samples of the latent Gaussian fitted to a plain model's
//! codes or of a variational model's prior, and the decoded straight line between two images'
//! codes.

use rand::RngExt;

use super::latent_gaussian::LatentGaussian;

/// `n` codes drawn from the latent Gaussian with its covariance scaled by `temperature`.
/// Negative values are set to 0: the encoder ends in a ReLU, so no image has a negative code and
/// the decoder has never seen one.
pub fn sample_codes<R: RngExt + ?Sized>(
    gaussian: &LatentGaussian,
    n: usize,
    temperature: f64,
    rng: &mut R,
) -> Vec<f32> {
    gaussian
        .sample(n, temperature, rng)
        .into_iter()
        .map(|v| v.max(0.0) as f32)
        .collect()
}

/// `n` codes of a variational model drawn from its prior N(0, I), scaled by `temperature`.
pub fn prior_codes<R: RngExt + ?Sized>(
    n: usize,
    latent: usize,
    temperature: f64,
    rng: &mut R,
) -> Vec<f32> {
    (0..n * latent)
        .map(|_| (temperature * crate::sampling::standard_normal(rng)) as f32)
        .collect()
}

/// `steps` codes evenly spaced from `a` to `b`, both included.
///
/// ```
/// let line = cae::apps::generate::line_codes(&[0.0, 1.0], &[1.0, 3.0], 3);
/// assert_eq!(line, vec![0.0, 1.0, 0.5, 2.0, 1.0, 3.0]);
/// ```
pub fn line_codes(a: &[f32], b: &[f32], steps: usize) -> Vec<f32> {
    assert_eq!(a.len(), b.len(), "codes of one model have one size");
    let last = steps.saturating_sub(1).max(1) as f32;
    (0..steps)
        .flat_map(|i| {
            let t = i as f32 / last;
            a.iter().zip(b).map(move |(x, y)| x + t * (y - x))
        })
        .collect()
}

/// Splits `images` (`image_len` values each) into rows of at most `columns` images for
/// [`crate::viz::grid::save_grid`].
pub fn grid_rows(images: &[f32], image_len: usize, columns: usize) -> Vec<Vec<Vec<f32>>> {
    let cells: Vec<Vec<f32>> = images.chunks(image_len).map(<[f32]>::to_vec).collect();
    cells
        .chunks(columns.max(1))
        .map(<[Vec<f32>]>::to_vec)
        .collect()
}
