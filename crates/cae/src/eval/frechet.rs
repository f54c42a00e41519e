//! The Fréchet distance between two sets of vectors, each summarised by its Gaussian (mean m,
//! covariance S): ||m1 - m2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)).
//!
//! FID takes it in the features of an ImageNet Inception network. No pretrained network can be
//! downloaded here, so cae measures generated images in the code space of a separately trained
//! reference autoencoder (one that is neither of the models compared): the *Fréchet code
//! distance*. Its values are comparable only under one reference model.

use anyhow::{Result, ensure};
use burn::tensor::Device;
use nalgebra::{DMatrix, DVector, SymmetricEigen};

use crate::eval::inference;
use crate::model::{Autoencoder, ModelConfig};

/// The Fréchet distance between the Gaussians of the rows of `a` and of `b` (`dim` values a
/// row), with the unbiased (n - 1) covariances as `numpy.cov` and FID compute them.
pub(crate) fn frechet_distance(a: &[f32], b: &[f32], dim: usize) -> Result<f64> {
    let (mean_a, cov_a) = mean_and_covariance(a, dim)?;
    let (mean_b, cov_b) = mean_and_covariance(b, dim)?;
    // Tr((S1 S2)^(1/2)) = Tr((S1^(1/2) S2 S1^(1/2))^(1/2)): the eigenvalues of S1 S2 are those
    // of the symmetric positive semi-definite S1^(1/2) S2 S1^(1/2).
    let root_a = symmetric_sqrt(cov_a.clone());
    let inner = &root_a * &cov_b * &root_a;
    let inner = (&inner + inner.transpose()) * 0.5;
    let cross: f64 = inner
        .symmetric_eigenvalues()
        .iter()
        .map(|&v| v.max(0.0).sqrt())
        .sum();
    Ok((mean_a - mean_b).norm_squared() + cov_a.trace() + cov_b.trace() - 2.0 * cross)
}

/// The square root of a symmetric positive semi-definite matrix (its eigenvalues clamped at
/// zero, which rounding can push slightly below).
fn symmetric_sqrt(matrix: DMatrix<f64>) -> DMatrix<f64> {
    let eigen = SymmetricEigen::new(matrix);
    let roots = eigen.eigenvalues.map(|v| v.max(0.0).sqrt());
    &eigen.eigenvectors * DMatrix::from_diagonal(&roots) * eigen.eigenvectors.transpose()
}

fn mean_and_covariance(rows: &[f32], dim: usize) -> Result<(DVector<f64>, DMatrix<f64>)> {
    ensure!(
        dim > 0 && rows.len().is_multiple_of(dim),
        "rows of {dim} values"
    );
    let n = rows.len() / dim;
    ensure!(n >= 2, "a covariance needs at least 2 vectors, not {n}");
    let data = DMatrix::from_row_iterator(n, dim, rows.iter().map(|&v| f64::from(v)));
    let mean = DVector::from_iterator(dim, data.column_iter().map(|c| c.mean()));
    let centred = DMatrix::from_fn(n, dim, |r, c| data[(r, c)] - mean[c]);
    let covariance = centred.transpose() * &centred / (n - 1) as f64;
    Ok((mean, covariance))
}

/// The Fréchet code distance between `real` and `generated` images (normalized, flattened, in
/// the layout of `reference_config`): both encoded by `reference`.
pub fn code_distance(
    reference: &Autoencoder,
    reference_config: &ModelConfig,
    real: &[f32],
    generated: &[f32],
    device: &Device,
) -> Result<f64> {
    let real_codes = inference::encode(reference, reference_config, real, device);
    let generated_codes = inference::encode(reference, reference_config, generated, device);
    frechet_distance(&real_codes, &generated_codes, reference_config.latent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::Xoshiro256PlusPlus;

    fn gaussian_rows(n: usize, means: &[f64], sds: &[f64], seed: u64) -> Vec<f32> {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        (0..n)
            .flat_map(|_| {
                means
                    .iter()
                    .zip(sds)
                    .map(|(m, s)| (m + s * crate::sampling::standard_normal(&mut rng)) as f32)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn a_set_is_at_distance_zero_from_itself() {
        let a = gaussian_rows(500, &[0.0, 1.0, -2.0], &[1.0, 0.5, 2.0], 1);
        let d = frechet_distance(&a, &a, 3).unwrap();
        assert!(d.abs() < 1e-9, "{d}");
    }

    #[test]
    fn independent_coordinates_give_the_closed_form() {
        // Diagonal covariances: sum_j (m1_j - m2_j)^2 + (s1_j - s2_j)^2.
        let a = gaussian_rows(40_000, &[0.0, 1.0], &[1.0, 2.0], 2);
        let b = gaussian_rows(40_000, &[1.0, 1.0], &[3.0, 2.0], 3);
        let d = frechet_distance(&a, &b, 2).unwrap();
        let expected = 1.0 + 4.0;
        assert!((d - expected).abs() < 0.1, "{d} vs {expected}");
    }

    #[test]
    fn correlated_coordinates_are_not_treated_as_independent() {
        // b is a rotated by 90 degrees in the plane of a strongly correlated pair: same
        // marginal variances, opposite correlation, so the distance is well above zero.
        let base = gaussian_rows(20_000, &[0.0, 0.0], &[1.0, 0.1], 4);
        let rotate = |rows: &[f32], sign: f32| -> Vec<f32> {
            rows.chunks(2)
                .flat_map(|p| {
                    let (u, v) = (p[0], p[1]);
                    [(u + sign * v) / 2f32.sqrt(), (sign * u - v) / 2f32.sqrt()]
                })
                .collect()
        };
        let (a, b) = (rotate(&base, 1.0), rotate(&base, -1.0));
        let d = frechet_distance(&a, &b, 2).unwrap();
        // Covariances with eigenvalues 1 and 0.01 on perpendicular axes: 2 (1 + 0.01) - 4 sqrt(0.01).
        let expected = 2.0 * 1.01 - 4.0 * 0.1;
        assert!((d - expected).abs() < 0.05, "{d} vs {expected}");
    }

    #[test]
    fn one_dimensional_closed_form() {
        // N(0, 2) against N(2, 8): 2^2 + 2 + 8 - 2 sqrt(2 * 8) = 6.
        let d = frechet_distance(&[-1.0, 1.0], &[0.0, 4.0], 1).unwrap();
        assert!((d - 6.0).abs() < 1e-12);
    }
}
