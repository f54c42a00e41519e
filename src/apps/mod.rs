//! What a trained autoencoder is for: denoising, anomaly detection and generation.
//!
//! [`noise`] corrupts inputs (for training a denoiser and for measuring one), [`denoise`] measures
//! one (with [`self_ensemble`] at test time), [`anomaly`] and [`one_class`] score and evaluate anomalies, [`latent_gaussian`] fits the
//! distribution of the codes that [`generate`] samples from.

pub mod anomaly;
pub mod denoise;
pub mod detail;
pub mod generate;
pub mod latent_gaussian;
pub mod linalg;
pub mod noise;
pub mod normal;
pub mod one_class;
pub mod roc;
pub mod self_ensemble;
