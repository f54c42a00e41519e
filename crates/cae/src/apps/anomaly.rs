//! Anomaly scores of images under a trained autoencoder (higher means more anomalous), and the
//! calibration on normal images that turns them into decisions.
//!
//! - `mse`: mean squared reconstruction error, in the model's normalized [-1, 1] space;
//! - `relative-mse`: the log MSE relative to what normal images with as much fine detail have
//!   (see `apps::detail`);
//! - `ssim`: 1 - SSIM between the image and its reconstruction, on [0, 1] pixels;
//! - `latent-mahalanobis`: Mahalanobis distance of the code under the fitted latent Gaussian;
//! - `combined`: the mean of relative-mse, ssim and latent-mahalanobis, each standardised by its
//!   mean and standard deviation on normal images (so that no one score dominates by its units).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use super::detail::{DetailFit, fine_detail};
use super::latent_gaussian::{LatentGaussian, beside, file_sha256};
use super::roc::threshold_at_fpr;
use crate::data::ImageSet;
use crate::data::batcher::{denormalize, normalized_batch};
use crate::eval::EVAL_BATCH;
use crate::model::{Autoencoder, ModelConfig};
use crate::{eval::inference, eval::metrics};

/// Images scored per pass: bounds the memory of inputs, codes and reconstructions.
const CHUNK: usize = 4 * EVAL_BATCH;

/// An anomaly score of an image; higher means more anomalous.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Score {
    /// `mse`: mean squared reconstruction error, on normalized [-1, 1] pixels.
    Mse,
    /// `relative-mse`: the log MSE relative to that of normal images with as much fine detail;
    /// needs a [`Calibration`].
    RelativeMse,
    /// `ssim`: 1 - SSIM between the image and its reconstruction, on [0, 1] pixels.
    Ssim,
    /// `latent-mahalanobis`: Mahalanobis distance of the image's code under the fitted latent
    /// Gaussian.
    LatentMahalanobis,
    /// `combined`: the mean of `relative-mse`, `ssim` and `latent-mahalanobis`, each
    /// standardised on normal images; needs a [`Calibration`] and the latent Gaussian.
    Combined,
}

impl Score {
    /// Every score, `combined` last (it is made of the others).
    pub const ALL: [Score; 5] = [
        Score::Mse,
        Score::RelativeMse,
        Score::Ssim,
        Score::LatentMahalanobis,
        Score::Combined,
    ];

    /// The name on the command line (`--score`) and in calibrations and CSV files.
    pub fn name(self) -> &'static str {
        match self {
            Score::Mse => "mse",
            Score::RelativeMse => "relative-mse",
            Score::Ssim => "ssim",
            Score::LatentMahalanobis => "latent-mahalanobis",
            Score::Combined => "combined",
        }
    }

    /// Whether the score needs the latent Gaussian.
    pub fn needs_gaussian(self) -> bool {
        matches!(self, Score::LatentMahalanobis | Score::Combined)
    }
}

/// The measured scores of a list of images; `combined` is derived from them with a calibration.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RawScores {
    /// Mean squared reconstruction error of each image, on normalized [-1, 1] pixels.
    pub mse: Vec<f64>,
    /// The fine detail of each image (`fine_detail`), for `relative-mse`.
    pub detail: Vec<f64>,
    /// 1 - SSIM.
    pub ssim: Vec<f64>,
    /// The latent codes, one after another.
    pub codes: Vec<f32>,
    /// Present once a latent Gaussian was given.
    pub mahalanobis: Option<Vec<f64>>,
}

impl RawScores {
    /// Number of images scored.
    pub fn len(&self) -> usize {
        self.mse.len()
    }

    /// Whether no image was scored.
    pub fn is_empty(&self) -> bool {
        self.mse.is_empty()
    }

    fn extend(&mut self, other: RawScores) {
        self.mse.extend(other.mse);
        self.detail.extend(other.detail);
        self.ssim.extend(other.ssim);
        self.codes.extend(other.codes);
    }

    /// Computes the Mahalanobis distance of every code under `gaussian`.
    pub(crate) fn set_gaussian(&mut self, gaussian: &LatentGaussian) -> Result<()> {
        let dim = gaussian.dim();
        ensure!(
            self.codes.len() == dim * self.len(),
            "the latent Gaussian has size {dim}, but the codes do not"
        );
        self.mahalanobis = Some(
            self.codes
                .chunks(dim)
                .map(|code| gaussian.mahalanobis(code))
                .collect(),
        );
        Ok(())
    }

    /// One score per image; `relative-mse` and `combined` need `calibration`, the latent scores
    /// a Gaussian.
    pub fn score(&self, kind: Score, calibration: Option<&Calibration>) -> Result<Vec<f64>> {
        let mahalanobis = || {
            self.mahalanobis.clone().context(
                "this score needs the latent Gaussian: run `cae anomaly fit` (or `cae fit-latent`) first",
            )
        };
        let calibration = || {
            calibration.with_context(|| {
                format!(
                    "the {} score needs statistics of normal images: run `cae anomaly fit` first",
                    kind.name()
                )
            })
        };
        Ok(match kind {
            Score::Mse => self.mse.clone(),
            Score::RelativeMse => self.relative_mse(calibration()?)?,
            Score::Ssim => self.ssim.clone(),
            Score::LatentMahalanobis => mahalanobis()?,
            Score::Combined => {
                let calibration = calibration()?;
                let latent = mahalanobis()?;
                let parts = [
                    calibration
                        .standardised(Score::RelativeMse, &self.relative_mse(calibration)?)?,
                    calibration.standardised(Score::Ssim, &self.ssim)?,
                    calibration.standardised(Score::LatentMahalanobis, &latent)?,
                ];
                (0..self.len())
                    .map(|i| parts.iter().map(|p| p[i]).sum::<f64>() / 3.0)
                    .collect()
            }
        })
    }

    fn relative_mse(&self, calibration: &Calibration) -> Result<Vec<f64>> {
        let fit = calibration.detail_fit.context(
            "this calibration predates the relative-mse score: run `cae anomaly fit` again",
        )?;
        Ok(self
            .mse
            .iter()
            .zip(&self.detail)
            .map(|(&mse, &detail)| fit.relative(mse, detail))
            .collect())
    }
}

/// Scores normalized images (C, H, W each, one after another).
pub fn score_images(
    model: &Autoencoder,
    config: &ModelConfig,
    images: &[f32],
    gaussian: Option<&LatentGaussian>,
    device: &Device,
) -> Result<RawScores> {
    let image_len = config.in_channels * config.height * config.width;
    ensure!(
        images.len().is_multiple_of(image_len),
        "{} values are not a whole number of {}x{}x{} images",
        images.len(),
        config.in_channels,
        config.height,
        config.width
    );
    let mut scores = RawScores::default();
    for chunk in images.chunks(CHUNK * image_len) {
        scores.extend(score_chunk(model, config, chunk, device)?);
    }
    if let Some(gaussian) = gaussian {
        scores.set_gaussian(gaussian)?;
    }
    Ok(scores)
}

/// Scores every image of `set`.
pub fn score_set(
    model: &Autoencoder,
    config: &ModelConfig,
    set: &ImageSet,
    gaussian: Option<&LatentGaussian>,
    device: &Device,
) -> Result<RawScores> {
    set.check_fits(config)?;
    let mut scores = RawScores::default();
    let all: Vec<usize> = (0..set.len()).collect();
    for indices in all.chunks(CHUNK) {
        let images = normalized_batch(set, indices);
        scores.extend(score_chunk(model, config, &images, device)?);
    }
    if let Some(gaussian) = gaussian {
        scores.set_gaussian(gaussian)?;
    }
    Ok(scores)
}

fn score_chunk(
    model: &Autoencoder,
    config: &ModelConfig,
    images: &[f32],
    device: &Device,
) -> Result<RawScores> {
    let (c, h, w) = (config.in_channels, config.height, config.width);
    let image_len = c * h * w;
    let codes = inference::encode(model, config, images, device);
    let recons = inference::decode(model, config, &codes, device);
    let mut mse = Vec::new();
    let mut detail = Vec::new();
    let mut ssim = Vec::new();
    for (image, recon) in images.chunks(image_len).zip(recons.chunks(image_len)) {
        mse.push(inference::mse(image, recon));
        detail.push(fine_detail(image, c, h, w));
        let unit = |v: &[f32]| v.iter().map(|&x| denormalize(x)).collect::<Vec<f32>>();
        ssim.push(1.0 - metrics::ssim(&unit(image), &unit(recon), c, h, w)?);
    }
    Ok(RawScores {
        mse,
        detail,
        ssim,
        codes,
        mahalanobis: None,
    })
}

/// How a score is distributed on normal images.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScoreStats {
    /// Mean of the score over the normal images.
    pub mean: f64,
    /// Sample standard deviation (n - 1 denominator) of the score over the normal images.
    pub std: f64,
    /// Scores above this are anomalous; it flags a fraction `fpr` of the normal images.
    pub threshold: f64,
}

/// The statistics of every score on normal images, saved beside the model as
/// `<model>.anomaly.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// The false-positive rate the thresholds were chosen for.
    pub fpr: f64,
    /// Number of normal images.
    pub n: usize,
    /// Which images they were, for people.
    pub source: String,
    /// The statistics of every score.
    pub scores: BTreeMap<Score, ScoreStats>,
    /// The line `relative-mse` measures from; absent in calibrations made before that score.
    #[serde(default)]
    pub detail_fit: Option<DetailFit>,
    /// SHA-256 of the model file the scores came from (set when saved beside it).
    #[serde(default)]
    pub model_sha256: String,
}

impl Calibration {
    /// Calibrates on the raw scores of normal images (which must include the latent ones).
    pub fn fit(normal: &RawScores, fpr: f64, source: &str) -> Result<Self> {
        ensure!(
            normal.len() >= 2,
            "calibration needs at least 2 normal images, got {}",
            normal.len()
        );
        let mut calibration = Calibration {
            fpr,
            n: normal.len(),
            source: source.to_string(),
            scores: BTreeMap::new(),
            detail_fit: Some(DetailFit::fit(&normal.mse, &normal.detail)?),
            model_sha256: String::new(),
        };
        // `combined` depends on the others' statistics, so it comes last.
        for kind in Score::ALL {
            let values = normal.score(kind, Some(&calibration))?;
            let (mean, std) = mean_std(&values);
            let stats = ScoreStats {
                mean,
                std,
                threshold: threshold_at_fpr(&values, fpr)?,
            };
            calibration.scores.insert(kind, stats);
        }
        Ok(calibration)
    }

    /// `(value - mean) / std` for each value of score `kind`.
    fn standardised(&self, kind: Score, values: &[f64]) -> Result<Vec<f64>> {
        let stats = self.scores.get(&kind).with_context(|| {
            format!(
                "the calibration has no statistics of {}: run `cae anomaly fit` again",
                kind.name()
            )
        })?;
        // A constant score carries no information; it then adds nothing.
        let std = if stats.std > 0.0 {
            stats.std
        } else {
            f64::INFINITY
        };
        Ok(values.iter().map(|v| (v - stats.mean) / std).collect())
    }

    /// The threshold of score `kind` (above it an image is anomalous), if the calibration has
    /// that score.
    pub fn threshold(&self, kind: Score) -> Option<f64> {
        self.scores.get(&kind).map(|s| s.threshold)
    }

    /// Writes the calibration of the model file `model` beside it, at `calibration_path`.
    pub fn save_for_model(&mut self, model: &Path) -> Result<PathBuf> {
        self.model_sha256 = file_sha256(model)?;
        let path = calibration_path(model);
        crate::io::atomic::write_bytes(&path, serde_json::to_string_pretty(self)?.as_bytes())?;
        Ok(path)
    }

    /// The calibration saved beside the model file `model`, if there is one; an error when it
    /// was made with another version of the model.
    pub fn load_for_model(model: &Path) -> Result<Option<Self>> {
        let path = calibration_path(model);
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let calibration: Self = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a calibration", path.display()))?;
        if calibration.model_sha256 != file_sha256(model)? {
            bail!(
                "{} was made with another version of {}; run `cae anomaly fit` again",
                path.display(),
                model.display()
            );
        }
        Ok(Some(calibration))
    }
}

/// `dir/model.safetensors` -> `dir/model.anomaly.json`.
pub(crate) fn calibration_path(model: &Path) -> PathBuf {
    beside(model, "anomaly.json")
}

fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, var.sqrt())
}

#[cfg(test)]
mod tests {
    use super::{Calibration, RawScores, Score};

    fn raw() -> RawScores {
        RawScores {
            mse: vec![1.0, 2.0, 3.0, 4.0],
            detail: vec![0.5, 4.0, 1.0, 2.0],
            ssim: vec![0.1, 0.1, 0.3, 0.3],
            codes: Vec::new(),
            mahalanobis: Some(vec![10.0, 30.0, 20.0, 40.0]),
        }
    }

    #[test]
    fn combined_is_the_mean_of_standardised_scores() {
        let normal = raw();
        let calibration = Calibration::fit(&normal, 0.25, "test").unwrap();
        let mse = calibration.scores[&Score::Mse];
        assert_eq!(mse.mean, 2.5);
        assert!((mse.std - (5.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert_eq!(mse.threshold, 3.5, "one of four normal images above");
        let combined = normal.score(Score::Combined, Some(&calibration)).unwrap();
        let fit = calibration.detail_fit.unwrap();
        let relative: Vec<f64> = (0..4)
            .map(|i| fit.relative(normal.mse[i], normal.detail[i]))
            .collect();
        assert_eq!(
            normal
                .score(Score::RelativeMse, Some(&calibration))
                .unwrap(),
            relative
        );
        let rel = calibration.scores[&Score::RelativeMse];
        assert!(rel.mean.abs() < 1e-12, "least-squares residuals average 0");
        let z = |v: f64, m: f64, s: f64| (v - m) / s;
        let (sm, ss) = (0.2, (0.04f64 / 3.0).sqrt());
        let (mm, ms) = (25.0, (500.0f64 / 3.0).sqrt());
        let expected = (z(relative[3], rel.mean, rel.std) + z(0.3, sm, ss) + z(40.0, mm, ms)) / 3.0;
        assert!(
            (combined[3] - expected).abs() < 1e-9,
            "{} vs {expected}",
            combined[3]
        );
        assert!(
            combined.iter().sum::<f64>().abs() < 1e-9,
            "standardised scores average 0"
        );
        assert!(calibration.threshold(Score::Combined).is_some());
    }

    #[test]
    fn latent_scores_need_the_gaussian_and_combined_a_calibration() {
        let mut no_latent = raw();
        no_latent.mahalanobis = None;
        assert!(no_latent.score(Score::Mse, None).is_ok());
        assert!(no_latent.score(Score::LatentMahalanobis, None).is_err());
        assert!(raw().score(Score::Combined, None).is_err());
        assert!(raw().score(Score::RelativeMse, None).is_err());
        assert!(Calibration::fit(&no_latent, 0.05, "x").is_err());
    }

    #[test]
    fn calibration_round_trips_through_json_beside_its_model() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m.safetensors");
        assert_eq!(Calibration::load_for_model(&model).unwrap(), None);
        std::fs::write(&model, b"weights v1").unwrap();
        let mut calibration = Calibration::fit(&raw(), 0.05, "test").unwrap();
        let path = calibration.save_for_model(&model).unwrap();
        assert_eq!(path, dir.path().join("m.anomaly.json"));
        assert_eq!(
            Calibration::load_for_model(&model).unwrap(),
            Some(calibration)
        );
        let json = std::fs::read_to_string(&path).unwrap();
        assert!(json.contains("\"latent-mahalanobis\""), "{json}");
        assert!(json.contains("\"detail_fit\""), "{json}");
        // A calibration saved before relative-mse existed still loads; that score asks for a
        // new fit.
        let mut old: serde_json::Value = serde_json::from_str(&json).unwrap();
        old.as_object_mut().unwrap().remove("detail_fit");
        let old: Calibration = serde_json::from_value(old).unwrap();
        let err = raw().score(Score::RelativeMse, Some(&old)).unwrap_err();
        assert!(format!("{err:#}").contains("anomaly fit"), "{err:#}");
        std::fs::write(&model, b"weights v2").unwrap();
        let err = Calibration::load_for_model(&model).unwrap_err();
        assert!(format!("{err:#}").contains("anomaly fit"), "{err:#}");
    }
}
