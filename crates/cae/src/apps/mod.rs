//! What a trained autoencoder is for: denoising, anomaly detection and generation.
//!
//! [`denoise`] measures a denoiser on inputs corrupted by [`crate::data::augment`] (with
//! `self_ensemble` at test time), [`anomaly`] and [`one_class`] score and evaluate anomalies,
//! [`latent_gaussian`] fits the distribution of the codes that [`generate`] samples from.

pub mod anomaly;
pub mod denoise;
pub(crate) mod detail;
pub mod generate;
pub mod latent_gaussian;
pub(crate) mod linalg;
pub mod one_class;
pub(crate) mod roc;
pub(crate) mod self_ensemble;
