//! Closed-form DDPM / Improved-DDPM math on `ndarray`, in f64 (no torch, no I/O).
//!
//! The crate follows the organisation of improved-diffusion's `gaussian_diffusion.py`:
//!
//! - [`schedule`]: the named noise schedules ([`BetaSchedule`], [`get_named_beta_schedule`]) and validation of
//!   given betas;
//! - [`diffusion`]: the modelling choices ([`ModelMeanType`], [`ModelVarType`], [`LossType`]) and
//!   [`GaussianDiffusion`], which precomputes every per-timestep table once and implements `q_sample`,
//!   `q_posterior_mean_variance`, `p_mean_variance`, the DDPM and DDIM steps, `prior_bpd` and `vb_terms_bpd`;
//! - [`losses`]: `normal_kl`, `approx_standard_normal_cdf`, `discretized_gaussian_log_likelihood`, and the
//!   min-SNR-γ weights of the MSE term (`min_snr_weights`);
//! - [`respace`]: [`space_timesteps`] and [`SpacedDiffusion`];
//! - [`resample`]: timestep samplers for the variational bound ([`UniformSampler`],
//!   [`LossSecondMomentSampler`]).
//!
//! Timesteps are indexed `t ∈ 0..T`; index `t` is step `t + 1` of the papers. Array operations take a batch whose
//! leading axis is the batch and one timestep per batch element.
//!
//! ```
//! use ddpm_math::{BetaSchedule, GaussianDiffusion, LossType, ModelMeanType, ModelVarType};
//! use ndarray::Array4;
//!
//! let diffusion = GaussianDiffusion::new(
//!     BetaSchedule::Cosine.betas(1000)?,
//!     ModelMeanType::Epsilon,
//!     ModelVarType::FixedLarge,
//!     LossType::Simple,
//! )?;
//! let x0 = Array4::<f64>::zeros((2, 3, 4, 4));
//! let noise = Array4::<f64>::ones((2, 3, 4, 4));
//! let x_t = diffusion.q_sample(&x0, &[0, 999], &noise)?;
//! assert_eq!(x_t[[1, 0, 0, 0]], diffusion.sqrt_one_minus_alphas_cumprod()[999]);
//! # Ok::<(), ddpm_math::Error>(())
//! ```

pub mod diffusion;
pub mod dpm_solver;
pub mod error;
pub mod losses;
pub mod resample;
pub mod respace;
pub mod schedule;

pub use diffusion::{
    DdimCoefficients, GaussianDiffusion, LossTerms, LossType, LossWeights, MeanVariance,
    ModelMeanType, ModelVarType, PMeanVariance, SampleStep, VbTerms,
};
pub use dpm_solver::{
    dpm_solver_timesteps, DpmSolverOptions, DpmSolverPlusPlus, DpmSolverStep, FinalSigma,
};
pub use error::{Error, Result};
pub use resample::{LossSecondMomentSampler, ScheduleSampler, TimestepSample, UniformSampler};
pub use respace::{space_timesteps, SpacedDiffusion};
pub use schedule::{
    betas_for_alpha_bar, cosine_alpha_bar, get_named_beta_schedule, user_betas, validate_betas,
    BetaSchedule,
};
