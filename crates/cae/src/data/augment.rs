//! Input corruptions for denoising, applied to [0, 1] pixels and clipped back into [0, 1].
//!
//! Written `gaussian:SIGMA`, `salt-pepper:P` or `mask:P`. Each value (every channel of every
//! pixel) is corrupted independently.

use std::fmt;
use std::str::FromStr;

use anyhow::{Context, Result, bail};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::data::batcher::{MEAN, STD};
use crate::sampling::standard_normal;

/// A corruption of the input images; a denoiser is trained to give back the clean image.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum NoiseSpec {
    /// Adds N(0, sigma²) to every value.
    Gaussian {
        /// Standard deviation on [0, 1] pixels; finite and >= 0.
        sigma: f32,
    },
    /// Sets every value with probability `p` to 0 or to 1 (equally likely).
    SaltPepper {
        /// Probability that a value is replaced, in [0, 1].
        p: f32,
    },
    /// Sets every value with probability `p` to 0, the masking noise of denoising autoencoders
    /// (Vincent et al., 2010).
    Mask {
        /// Probability that a value is set to 0, in [0, 1].
        p: f32,
    },
}

impl FromStr for NoiseSpec {
    type Err = anyhow::Error;

    /// ```
    /// use cae::data::augment::NoiseSpec;
    /// assert_eq!("gaussian:0.1".parse::<NoiseSpec>().unwrap(), NoiseSpec::Gaussian { sigma: 0.1 });
    /// assert!("gaussian".parse::<NoiseSpec>().is_err());
    /// ```
    fn from_str(text: &str) -> Result<Self> {
        const FORMS: &str = "gaussian:SIGMA, salt-pepper:P or mask:P";
        let (kind, value) = text
            .split_once(':')
            .with_context(|| format!("noise `{text}`: write {FORMS}"))?;
        let value: f32 = value
            .trim()
            .parse()
            .with_context(|| format!("noise `{text}`: `{value}` is not a number"))?;
        let spec = match kind.trim() {
            "gaussian" => Self::Gaussian { sigma: value },
            "salt-pepper" => Self::SaltPepper { p: value },
            "mask" => Self::Mask { p: value },
            other => bail!("noise `{text}`: unknown kind `{other}`; write {FORMS}"),
        };
        spec.validate()?;
        Ok(spec)
    }
}

impl fmt::Display for NoiseSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Gaussian { sigma } => write!(f, "gaussian:{sigma}"),
            Self::SaltPepper { p } => write!(f, "salt-pepper:{p}"),
            Self::Mask { p } => write!(f, "mask:{p}"),
        }
    }
}

impl TryFrom<String> for NoiseSpec {
    type Error = anyhow::Error;

    fn try_from(text: String) -> Result<Self> {
        text.parse()
    }
}

impl From<NoiseSpec> for String {
    fn from(spec: NoiseSpec) -> String {
        spec.to_string()
    }
}

impl NoiseSpec {
    pub(crate) fn validate(&self) -> Result<()> {
        match *self {
            Self::Gaussian { sigma } if !(sigma.is_finite() && sigma >= 0.0) => {
                bail!("noise {self}: sigma must be a finite number >= 0")
            }
            Self::SaltPepper { p } | Self::Mask { p } if !(0.0..=1.0).contains(&p) => {
                bail!("noise {self}: the probability must lie in [0, 1]")
            }
            _ => Ok(()),
        }
    }

    /// Corrupts one value on [0, 1]; the result is clipped to [0, 1].
    #[cfg(test)]
    pub(crate) fn corrupt_unit<R: RngExt + ?Sized>(&self, value: f32, rng: &mut R) -> f32 {
        self.replacement(value, rng).unwrap_or(value)
    }

    /// The corrupted value (clipped to [0, 1]), or `None` when this value is left alone.
    fn replacement<R: RngExt + ?Sized>(&self, value: f32, rng: &mut R) -> Option<f32> {
        let hit = |rng: &mut R, p: f32| rng.random::<f32>() < p;
        let corrupted = match *self {
            Self::Gaussian { sigma } => value + sigma * standard_normal(rng) as f32,
            Self::SaltPepper { p } if hit(rng, p) => {
                if rng.random::<bool>() {
                    1.0
                } else {
                    0.0
                }
            }
            Self::Mask { p } if hit(rng, p) => 0.0,
            Self::SaltPepper { .. } | Self::Mask { .. } => return None,
        };
        Some(corrupted.clamp(0.0, 1.0))
    }

    /// Corrupts model-space (normalized) values in place: back to [0, 1], corrupt, clip,
    /// normalize again. Values left alone keep their exact bits.
    pub(crate) fn corrupt_normalized<R: RngExt + ?Sized>(&self, values: &mut [f32], rng: &mut R) {
        for v in values {
            if let Some(unit) = self.replacement(*v * STD + MEAN, rng) {
                *v = (unit - MEAN) / STD;
            }
        }
    }

    /// A corrupted copy of `images` (normalized, `image_len` values each) where image `i` draws
    /// from the stream `noise_rng(seed, group, first + i)`: the same image gets the same noise
    /// however the images are batched.
    pub fn corrupt_images(
        &self,
        images: &[f32],
        image_len: usize,
        seed: u64,
        group: u64,
        first: u64,
    ) -> Vec<f32> {
        let mut noisy = images.to_vec();
        for (i, image) in noisy.chunks_mut(image_len).enumerate() {
            self.corrupt_normalized(image, &mut noise_rng(seed, group, first + i as u64));
        }
        noisy
    }
}

/// The noise of a training run: batch `b` of epoch `e` draws from `noise_rng(seed, e, b)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct TrainingNoise {
    pub spec: NoiseSpec,
    pub seed: u64,
}

impl TrainingNoise {
    /// A corrupted copy of the normalized `batch`, batch `index` (0-based) of `epoch`.
    pub(crate) fn corrupt_batch(&self, batch: &[f32], epoch: usize, index: usize) -> Vec<f32> {
        let mut noisy = batch.to_vec();
        let mut rng = noise_rng(self.seed, epoch as u64, index as u64);
        self.spec.corrupt_normalized(&mut noisy, &mut rng);
        noisy
    }
}

/// An independent generator for each (seed, a, b), e.g. (seed, epoch, batch) during training, so
/// that a resumed run draws the same noise as an uninterrupted one.
pub(crate) fn noise_rng(seed: u64, a: u64, b: u64) -> Xoshiro256PlusPlus {
    // A salt keeps these streams apart from the seed's other uses (initial weights, shuffling).
    const SALT: u64 = 0x6E6F_6973_6563_6165; // "noisecae"
    Xoshiro256PlusPlus::seed_from_u64(mix(mix(mix(seed ^ SALT) ^ a) ^ b))
}

/// SplitMix64's finaliser: a bijection that spreads every input bit over the whole output.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::{NoiseSpec, noise_rng};
    use crate::data::batcher::normalize_pixel;

    #[test]
    fn specs_parse_print_and_round_trip_through_json() {
        for (text, spec) in [
            ("gaussian:0.1", NoiseSpec::Gaussian { sigma: 0.1 }),
            ("salt-pepper:0.05", NoiseSpec::SaltPepper { p: 0.05 }),
            ("mask:0.5", NoiseSpec::Mask { p: 0.5 }),
        ] {
            let parsed: NoiseSpec = text.parse().unwrap();
            assert_eq!(parsed, spec);
            assert_eq!(parsed.to_string(), text);
            let json = serde_json::to_string(&spec).unwrap();
            assert_eq!(json, format!("\"{text}\""));
            assert_eq!(serde_json::from_str::<NoiseSpec>(&json).unwrap(), spec);
        }
        for bad in [
            "gaussian",
            "gaussian:x",
            "gaussian:-0.1",
            "gaussian:inf",
            "mask:1.5",
            "salt-pepper:-0.1",
            "speckle:0.1",
        ] {
            assert!(bad.parse::<NoiseSpec>().is_err(), "{bad} was accepted");
        }
        assert!(serde_json::from_str::<NoiseSpec>("\"mask:2\"").is_err());
    }

    #[test]
    fn gaussian_noise_is_clipped_to_the_pixel_range() {
        let spec = NoiseSpec::Gaussian { sigma: 0.5 };
        let mut rng = noise_rng(0, 0, 0);
        let mut values = vec![-1.0f32; 5000];
        values.extend(vec![1.0f32; 5000]);
        spec.corrupt_normalized(&mut values, &mut rng);
        assert!(values.iter().all(|v| (-1.0..=1.0).contains(v)));
        // About half of the black pixels are pushed up (the other half clipped at black).
        let moved = values[..5000].iter().filter(|&&v| v > -1.0).count();
        assert!((2300..2700).contains(&moved), "{moved}");
    }

    #[test]
    fn gaussian_noise_has_the_requested_spread_on_unit_pixels() {
        let spec = NoiseSpec::Gaussian { sigma: 0.1 };
        let mut rng = noise_rng(3, 1, 2);
        let n = 100_000;
        let diffs: Vec<f64> = (0..n)
            .map(|_| f64::from(spec.corrupt_unit(0.5, &mut rng)) - 0.5)
            .collect();
        let mean = diffs.iter().sum::<f64>() / n as f64;
        let std = (diffs.iter().map(|d| d * d).sum::<f64>() / n as f64).sqrt();
        assert!(mean.abs() < 0.002, "{mean}");
        assert!((std - 0.1).abs() < 0.002, "{std}");
    }

    #[test]
    fn salt_pepper_and_mask_hit_the_requested_fraction() {
        // Mid-gray values, so that every corrupted value is visibly changed.
        let gray = normalize_pixel(128);
        let n = 200_000;
        for p in [0.05f32, 0.3] {
            let mut values = vec![gray; n];
            NoiseSpec::SaltPepper { p }.corrupt_normalized(&mut values, &mut noise_rng(1, 0, 0));
            let salt = values.iter().filter(|&&v| v == 1.0).count() as f64 / n as f64;
            let pepper = values.iter().filter(|&&v| v == -1.0).count() as f64 / n as f64;
            let untouched = values.iter().filter(|&&v| v == gray).count() as f64 / n as f64;
            let half = f64::from(p) / 2.0;
            // Four standard errors of a binomial proportion.
            let tol = 4.0 * (half * (1.0 - half) / n as f64).sqrt();
            assert!((salt - half).abs() < tol, "p {p}: salt {salt}");
            assert!((pepper - half).abs() < tol, "p {p}: pepper {pepper}");
            assert!((salt + pepper + untouched - 1.0).abs() < 1e-12);

            let mut values = vec![gray; n];
            NoiseSpec::Mask { p }.corrupt_normalized(&mut values, &mut noise_rng(2, 0, 0));
            let masked = values.iter().filter(|&&v| v == -1.0).count() as f64 / n as f64;
            let p = f64::from(p);
            let tol = 4.0 * (p * (1.0 - p) / n as f64).sqrt();
            assert!((masked - p).abs() < tol, "mask p {p}: {masked}");
            assert!(values.iter().all(|&v| v == -1.0 || v == gray));
        }
    }

    #[test]
    fn noise_depends_on_seed_and_position_only() {
        let spec = NoiseSpec::Gaussian { sigma: 0.1 };
        let images = vec![0.0f32; 4 * 12];
        let all = spec.corrupt_images(&images, 12, 7, 0, 0);
        let tail = spec.corrupt_images(&images[24..], 12, 7, 0, 2);
        assert_eq!(&all[24..], &tail[..]);
        assert_ne!(all, spec.corrupt_images(&images, 12, 8, 0, 0));
        assert_ne!(all, spec.corrupt_images(&images, 12, 7, 1, 0));
        assert_ne!(all[..12], all[12..24]);
    }
}
