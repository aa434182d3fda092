//! Evaluation for ddpm-rs: FID / IS through a TorchScript Inception, domain metrics, bits/dim.
//!
//! The metric functions take matrices, not networks: [`fid::frechet_distance`] takes feature
//! statistics ([`stats::FeatureStats`], from any `[N, D]` feature matrix) and
//! [`inception_score::inception_score`] takes an `[N, K]` probability matrix, so the same code
//! gives FID / IS with the Inception network ([`inception::Inception`]) and FID_cls / IS_cls with
//! a digit classifier. [`inputs::ImageSource`] loads the images; [`refstats::RefStats`] caches
//! reference statistics. [`domain`] gives FID_cls / IS_cls with a digit classifier, [`samples`]
//! scores generated samples against a fixed reference set with both networks, and [`nll`] the
//! bits/dim of a DDPM (full variational bound) or VAE (negative ELBO).
//!
//! Everything takes its networks, tensors and paths as arguments: this crate has no default
//! locations, trains nothing and opens no run directories (the comparison of trained models lives
//! in `ddpm-cli compare`).
pub mod domain;
pub mod error;
pub mod fid;
pub mod inception;
pub mod inception_files;
pub mod inception_score;
pub mod inputs;
pub mod linalg;
pub mod nll;
pub mod refstats;
pub mod samples;
pub mod stats;

pub use error::{MetricsError, Result};
pub use fid::{frechet_distance, frechet_distance_from_features, frechet_terms, FrechetTerms};
pub use inception::{EvalOptions, Inception, InceptionOutputs, InceptionVariant};
pub use inception_score::{inception_score, InceptionScore};
pub use inputs::{images_from_tensor, images_to_nchw_tensor, ImageSource};
pub use nll::{ddpm_bits_per_dim, vae_bits_per_dim, NllOptions, NllReport};
pub use refstats::{reference_stats, RefStats};
pub use samples::{InceptionReference, SampleEvaluator, SampleScores};
pub use stats::{FeatureStats, RunningStats};
