//! A Gaussian fitted to the latent codes of a set of images: the Mahalanobis distance of a code
//! (an anomaly score) and samples (new codes to decode). Saved beside the model as
//! `<model>.latent.safetensors`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use rand::RngExt;
use sha2::{Digest, Sha256};

use burn::tensor::Device;

use super::linalg::Cholesky;
use crate::data::ImageSet;
use crate::data::batcher::normalized_batch;
use crate::eval::EVAL_BATCH;
use crate::eval::inference;
use crate::io::weights::{self, HostTensor, StateDict};
use crate::model::{Autoencoder, ModelConfig};
use crate::sampling::standard_normal;

/// The ridge added to the covariance's diagonal, as a fraction of the mean variance: codes of
/// ReLU units that never fire have zero variance, so the raw covariance is often singular.
pub(crate) const RIDGE_FRACTION: f64 = 1e-3;
/// Lower bound of the ridge, for codes with (almost) no variance at all.
const MIN_RIDGE: f64 = 1e-8;

const META_RIDGE: &str = "cae.latent.ridge";
const META_COUNT: &str = "cae.latent.count";
const META_SOURCE: &str = "cae.latent.source";
const META_MODEL_SHA256: &str = "cae.latent.model_sha256";

/// Mean and (regularised) covariance of latent codes.
#[derive(Debug, Clone)]
pub struct LatentGaussian {
    /// Mean of the codes, one value per latent dimension.
    pub mean: Vec<f64>,
    /// The sample covariance (n - 1 denominator), row-major, without the ridge.
    pub covariance: Vec<f64>,
    /// Added to the covariance's diagonal before it is factorised.
    pub ridge: f64,
    /// Number of codes fitted.
    pub count: usize,
    /// Factor of `covariance + ridge * I`.
    cholesky: Cholesky,
}

impl LatentGaussian {
    /// Fits `codes` (`dim` values each, one after another).
    pub(crate) fn fit(codes: &[f32], dim: usize) -> Result<Self> {
        ensure!(dim > 0, "codes must have at least one value");
        ensure!(
            codes.len().is_multiple_of(dim),
            "{} values are not a whole number of codes of size {dim}",
            codes.len()
        );
        let count = codes.len() / dim;
        ensure!(
            count >= 2,
            "fitting a Gaussian needs at least 2 codes, got {count}"
        );
        let mut mean = vec![0.0f64; dim];
        for code in codes.chunks_exact(dim) {
            for (m, &v) in mean.iter_mut().zip(code) {
                *m += f64::from(v);
            }
        }
        mean.iter_mut().for_each(|m| *m /= count as f64);
        let mut covariance = vec![0.0f64; dim * dim];
        let mut centred = vec![0.0f64; dim];
        for code in codes.chunks_exact(dim) {
            for ((c, &v), m) in centred.iter_mut().zip(code).zip(&mean) {
                *c = f64::from(v) - m;
            }
            for i in 0..dim {
                let ci = centred[i];
                let row = &mut covariance[i * dim..i * dim + i + 1];
                for (cell, cj) in row.iter_mut().zip(&centred) {
                    *cell += ci * cj;
                }
            }
        }
        for i in 0..dim {
            for j in 0..=i {
                let value = covariance[i * dim + j] / (count - 1) as f64;
                covariance[i * dim + j] = value;
                covariance[j * dim + i] = value;
            }
        }
        let mean_variance = (0..dim).map(|i| covariance[i * dim + i]).sum::<f64>() / dim as f64;
        let ridge = (RIDGE_FRACTION * mean_variance).max(MIN_RIDGE);
        Self::new(mean, covariance, ridge, count)
    }

    /// Fits the codes of every image of `set` under `model`.
    pub fn fit_set(
        model: &Autoencoder,
        config: &ModelConfig,
        set: &ImageSet,
        device: &Device,
    ) -> Result<Self> {
        set.check_fits(config)?;
        let mut codes = Vec::with_capacity(set.len() * config.latent);
        let all: Vec<usize> = (0..set.len()).collect();
        for indices in all.chunks(4 * EVAL_BATCH) {
            let images = normalized_batch(set, indices);
            codes.extend(inference::encode(model, config, &images, device));
        }
        Self::fit(&codes, config.latent)
    }

    /// A Gaussian from its parts; fails unless `covariance + ridge * I` is positive definite.
    pub(crate) fn new(
        mean: Vec<f64>,
        covariance: Vec<f64>,
        ridge: f64,
        count: usize,
    ) -> Result<Self> {
        let dim = mean.len();
        ensure!(
            covariance.len() == dim * dim,
            "a covariance for codes of size {dim} needs {} values, not {}",
            dim * dim,
            covariance.len()
        );
        ensure!(
            ridge.is_finite() && ridge >= 0.0,
            "the ridge must be finite and >= 0, not {ridge}"
        );
        let mut regularised = covariance.clone();
        for i in 0..dim {
            regularised[i * dim + i] += ridge;
        }
        let cholesky = Cholesky::new(&regularised, dim)
            .context("the regularised latent covariance cannot be factorised")?;
        Ok(Self {
            mean,
            covariance,
            ridge,
            count,
            cholesky,
        })
    }

    /// Size of the codes: the model's latent size.
    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    /// `sqrt((x - mean)ᵀ (covariance + ridge I)⁻¹ (x - mean))`.
    pub(crate) fn mahalanobis(&self, code: &[f32]) -> f64 {
        assert_eq!(code.len(), self.dim(), "code size must match the Gaussian");
        let centred: Vec<f64> = code
            .iter()
            .zip(&self.mean)
            .map(|(&x, m)| f64::from(x) - m)
            .collect();
        let y = self.cholesky.solve_lower(&centred);
        y.iter().map(|v| v * v).sum::<f64>().sqrt()
    }

    /// `n` draws from N(mean, temperature * (covariance + ridge I)), one code after another.
    pub(crate) fn sample<R: RngExt + ?Sized>(
        &self,
        n: usize,
        temperature: f64,
        rng: &mut R,
    ) -> Vec<f64> {
        let scale = temperature.max(0.0).sqrt();
        let mut out = Vec::with_capacity(n * self.dim());
        for _ in 0..n {
            let z: Vec<f64> = (0..self.dim()).map(|_| standard_normal(rng)).collect();
            let lz = self.cholesky.mul(&z);
            out.extend(self.mean.iter().zip(lz).map(|(m, d)| m + scale * d));
        }
        out
    }

    /// Writes the Gaussian to `path` (safetensors: `mean`, `covariance`), recording the model
    /// it belongs to so that a retrained model does not silently use stale statistics.
    pub fn save(
        &self,
        path: &Path,
        model: &Path,
        config: &ModelConfig,
        source: &str,
    ) -> Result<()> {
        let dim = self.dim();
        let as_f32 = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        let mut dict = StateDict::new();
        dict.insert(
            "mean".into(),
            HostTensor::new(vec![dim], as_f32(&self.mean)),
        );
        dict.insert(
            "covariance".into(),
            HostTensor::new(vec![dim, dim], as_f32(&self.covariance)),
        );
        let extra = [
            (META_RIDGE, self.ridge.to_string()),
            (META_COUNT, self.count.to_string()),
            (META_SOURCE, source.to_string()),
            (META_MODEL_SHA256, file_sha256(model)?),
        ];
        weights::save_safetensors(path, &dict, Some(config), &extra)
    }

    /// Reads the Gaussian saved for the model file `model` at [`path_for_model`], checking that
    /// it was fitted on exactly that model.
    pub fn load_for_model(model: &Path) -> Result<Self> {
        let path = path_for_model(model);
        if !path.exists() {
            bail!(
                "{} does not exist: fit the latent Gaussian of {} first with `cae fit-latent` or `cae anomaly fit`",
                path.display(),
                model.display()
            );
        }
        let (gaussian, fitted_on) = Self::load(&path)?;
        if fitted_on != file_sha256(model)? {
            bail!(
                "{} was fitted on another version of {}; fit it again",
                path.display(),
                model.display()
            );
        }
        Ok(gaussian)
    }

    /// Reads a saved Gaussian and the SHA-256 of the model it was fitted on.
    pub(crate) fn load(path: &Path) -> Result<(Self, String)> {
        let read = || -> Result<(Self, String)> {
            let bytes = std::fs::read(path)?;
            let file = weights::read_weights(path)?;
            let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)?;
            let empty = HashMap::new();
            let meta = header.metadata().as_ref().unwrap_or(&empty);
            let field = |key: &str| {
                meta.get(key)
                    .with_context(|| format!("no `{key}` metadata"))
            };
            let ridge: f64 = field(META_RIDGE)?.parse()?;
            let count: usize = field(META_COUNT)?.parse()?;
            let tensor = |name: &str| {
                file.tensors
                    .get(name)
                    .with_context(|| format!("no `{name}` tensor"))
            };
            let (mean, covariance) = (tensor("mean")?, tensor("covariance")?);
            let dim = mean.data.len();
            ensure!(
                covariance.shape == [dim, dim],
                "covariance shape {:?} does not fit a mean of size {dim}",
                covariance.shape
            );
            let widen = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<f64>>();
            let gaussian = Self::new(widen(&mean.data), widen(&covariance.data), ridge, count)?;
            Ok((gaussian, field(META_MODEL_SHA256)?.clone()))
        };
        read().with_context(|| format!("latent Gaussian file {}", path.display()))
    }
}

/// `dir/model.safetensors` -> `dir/model.latent.safetensors`.
pub fn path_for_model(model: &Path) -> PathBuf {
    beside(model, "latent.safetensors")
}

/// `dir/model.safetensors` -> `dir/model.<suffix>`.
pub(crate) fn beside(model: &Path, suffix: &str) -> PathBuf {
    let stem = model
        .file_stem()
        .map_or_else(|| "model".to_string(), |s| s.to_string_lossy().into_owned());
    model.with_file_name(format!("{stem}.{suffix}"))
}

/// SHA-256 of a file, in hex: ties statistics saved beside a model to that exact model.
pub fn file_sha256(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::Xoshiro256PlusPlus;

    use super::LatentGaussian;

    #[test]
    fn mahalanobis_matches_a_hand_example() {
        // Covariance [[4, 2], [2, 3]], inverse (1/8) [[3, -2], [-2, 4]].
        // x - mean = (1, 2): (3 - 4 - 4 + 16) / 8 = 11/8.
        let g = LatentGaussian::new(vec![1.0, -1.0], vec![4.0, 2.0, 2.0, 3.0], 0.0, 10).unwrap();
        let d = g.mahalanobis(&[2.0, 1.0]);
        assert!((d - (11.0f64 / 8.0).sqrt()).abs() < 1e-12, "{d}");
        assert_eq!(g.mahalanobis(&[1.0, -1.0]), 0.0);
        // The ridge regularises: with ridge 1 the covariance is [[5, 2], [2, 4]], inverse
        // (1/16) [[4, -2], [-2, 5]]: (4 - 4 - 4 + 20) / 16 = 1.
        let r = LatentGaussian::new(vec![1.0, -1.0], vec![4.0, 2.0, 2.0, 3.0], 1.0, 10).unwrap();
        assert!((r.mahalanobis(&[2.0, 1.0]) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn fit_computes_mean_and_unbiased_covariance() {
        let codes = [1.0f32, 2.0, 3.0, 6.0, 5.0, 1.0];
        let g = LatentGaussian::fit(&codes, 2).unwrap();
        assert_eq!(g.mean, vec![3.0, 3.0]);
        // Centred: (-2,-1), (0,3), (2,-2). Sums: xx 8, xy -2, yy 14; divided by n - 1 = 2.
        assert_eq!(g.covariance, vec![4.0, -1.0, -1.0, 7.0]);
        assert!((g.ridge - 1e-3 * 5.5).abs() < 1e-15);
        assert_eq!(g.count, 3);
    }

    #[test]
    fn singular_covariances_are_regularised() {
        // The second unit never fires, as dead ReLU units do.
        let codes: Vec<f32> = (0..50).flat_map(|i| [i as f32 * 0.1, 0.0]).collect();
        let g = LatentGaussian::fit(&codes, 2).unwrap();
        // var(x) = 0.01 * 50 * 51 / 12 (n - 1 denominator), var(y) = 0; the ridge is 1e-3 of
        // their mean.
        let var_x = 0.01 * 50.0 * 51.0 / 12.0;
        let ridge = 1e-3 * var_x / 2.0;
        assert!((g.ridge - ridge).abs() < 1e-6 * ridge, "{}", g.ridge);
        let expected = ((0.05f64.powi(2) / (var_x + ridge)) + 0.25 / ridge).sqrt();
        let d = g.mahalanobis(&[2.5, 0.5]);
        assert!((d - expected).abs() < 1e-6 * expected, "{d} vs {expected}");
        assert!(LatentGaussian::fit(&[1.0, 2.0], 2).is_err(), "one code");
    }

    #[test]
    fn samples_have_the_fitted_mean_and_covariance() {
        let mean = vec![1.0, -2.0, 0.5];
        let covariance = vec![2.0, 0.6, -0.4, 0.6, 1.0, 0.3, -0.4, 0.3, 0.5];
        let g = LatentGaussian::new(mean.clone(), covariance.clone(), 0.0, 100).unwrap();
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(5);
        let n = 100_000;
        let samples = g.sample(n, 1.0, &mut rng);
        let refit =
            LatentGaussian::fit(&samples.iter().map(|&v| v as f32).collect::<Vec<f32>>(), 3)
                .unwrap();
        for (got, want) in refit.mean.iter().zip(&mean) {
            assert!((got - want).abs() < 0.02, "mean {:?}", refit.mean);
        }
        for (got, want) in refit.covariance.iter().zip(&covariance) {
            assert!(
                (got - want).abs() < 0.04,
                "covariance {:?}",
                refit.covariance
            );
        }
        // Temperature scales the covariance.
        let cold = g.sample(n, 0.25, &mut rng);
        let var0 = cold.chunks(3).map(|c| (c[0] - 1.0).powi(2)).sum::<f64>() / n as f64;
        assert!((var0 - 0.5).abs() < 0.02, "{var0}");
    }

    #[test]
    fn save_and_load_round_trip_and_detect_a_changed_model() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("model.safetensors");
        std::fs::write(&model, b"weights v1").unwrap();
        let g = LatentGaussian::new(vec![1.0, -1.0], vec![4.0, 2.0, 2.0, 3.0], 0.5, 10).unwrap();
        let config = crate::model::ModelConfig::default();
        g.save(&super::path_for_model(&model), &model, &config, "test")
            .unwrap();
        assert!(dir.path().join("model.latent.safetensors").is_file());
        let back = LatentGaussian::load_for_model(&model).unwrap();
        assert_eq!(
            (back.mean, back.covariance, back.ridge, back.count),
            (g.mean, g.covariance, 0.5, 10)
        );
        std::fs::write(&model, b"weights v2").unwrap();
        let err = LatentGaussian::load_for_model(&model).unwrap_err();
        assert!(format!("{err:#}").contains("another version"), "{err:#}");
    }
}
