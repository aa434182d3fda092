//! The Gaussian diffusion process of DDPM / Improved DDPM: modelling choices, the per-timestep tables, and the
//! closed-form operations on `ndarray` arrays (forward process, posterior, reverse step, variational bound).
//!
//! Conventions (see `REFERENCE.md`): timesteps `t ∈ 0..T`, index `t` being the paper's step `t + 1`; all tables are
//! `f64`. Every array operation takes a batch whose **leading axis** is the batch and one timestep per batch element
//! (`t: &[usize]`, `t.len() == N`); the per-timestep coefficient is broadcast over the remaining axes.

use std::f64::consts::LN_2;

use ndarray::{Array, Array1, ArrayBase, ArrayView, Axis, Data, Dimension, Slice, Zip};

use crate::error::{Error, Result};
use crate::losses::{discretized_gaussian_log_likelihood, normal_kl, same_shape};
use crate::schedule::validate_betas;

/// What the network predicts (Ho et al. 2020 §3.2; Salimans & Ho 2022 for `v`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ModelMeanType {
    /// The noise `ε` with `x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε` (DDPM's choice).
    #[default]
    Epsilon,
    /// The clean sample `x_0`.
    StartX,
    /// The velocity `v = √ᾱ_t ε − √(1 − ᾱ_t) x_0`.
    V,
}

/// How the reverse-process variance `Σ_θ(x_t, t) = σ_t² I` is chosen (Nichol & Dhariwal 2021, §3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ModelVarType {
    /// `σ_t² = β̃_t`, the posterior variance (the lower bound of Ho et al. 2020 §3.2), with log-variance clipped
    /// at `t = 0` to `log β̃_1`.
    FixedSmall,
    /// `σ_t² = β_t` (upper bound), with `β̃_1` at `t = 0` so that the decoder likelihood stays sharp.
    #[default]
    FixedLarge,
    /// The network outputs `log σ_t²` directly.
    Learned,
    /// The network outputs `v ∈ [−1, 1]` and `log σ_t² = frac·log β_t + (1 − frac)·log β̃_t`, `frac = (v + 1)/2`
    /// (Nichol & Dhariwal 2021, eq. 15).
    LearnedRange,
}

impl ModelVarType {
    /// Whether the network outputs a variance, i.e. has `2C` output channels on axis 1 for `C` input channels.
    pub fn is_learned(self) -> bool {
        matches!(self, ModelVarType::Learned | ModelVarType::LearnedRange)
    }
}

/// The training objective.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum LossType {
    /// `L_simple`: the MSE of the mean-type target (Ho et al. 2020, eq. 14). Needs a fixed variance.
    #[default]
    Simple,
    /// `L_hybrid = L_simple + λ L_vlb` with `λ = 0.001` and the mean detached in the vb term
    /// (Nichol & Dhariwal 2021, eq. 16). Needs a learned variance.
    Hybrid,
    /// The variational bound `L_vlb` alone (Nichol & Dhariwal 2021, eq. 4–6).
    Vlb,
}

/// The weights with which a per-sample loss combines its terms: `loss = mse·L_mse + vb·L_t` (bits/dim).
///
/// For `L_hybrid`, `λ L_vlb = 0.001·T·E_t[L_t]`, so the per-sample vb weight is `T / 1000`
/// (Nichol & Dhariwal 2021, §3.1). With `detach_mean_in_vb` the vb term must see the model's mean as a
/// constant (stop-gradient) so that it only trains the variance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossWeights {
    /// Weight of the MSE term.
    pub mse: f64,
    /// Weight of the per-timestep vb term `L_t` in bits/dim.
    pub vb: f64,
    /// Whether the vb term must use a detached (stop-gradient) mean.
    pub detach_mean_in_vb: bool,
}

/// A Gaussian with a mean, a variance and a log-variance, all of the batch's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct MeanVariance<D: Dimension> {
    /// Mean, shape `[N, …]`.
    pub mean: Array<f64, D>,
    /// Variance, shape `[N, …]`.
    pub variance: Array<f64, D>,
    /// Log-variance, shape `[N, …]`.
    pub log_variance: Array<f64, D>,
}

/// The reverse-process distribution `p_θ(x_{t−1} | x_t) = N(μ_θ, σ_t²)` and the `x̂_0` it was built from.
#[derive(Debug, Clone, PartialEq)]
pub struct PMeanVariance<D: Dimension> {
    /// `μ_θ(x_t, t) = μ̃_t(x̂_0, x_t)`, shape `[N, C, …]`.
    pub mean: Array<f64, D>,
    /// `σ_t²`, shape `[N, C, …]`.
    pub variance: Array<f64, D>,
    /// `log σ_t²`, shape `[N, C, …]`.
    pub log_variance: Array<f64, D>,
    /// The predicted `x̂_0` (clamped to `[−1, 1]` when asked), shape `[N, C, …]`.
    pub pred_xstart: Array<f64, D>,
}

/// One reverse step: the new sample and the `x̂_0` it used.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleStep<D: Dimension> {
    /// `x_{t−1}` (or `x_{t+1}` for [`GaussianDiffusion::ddim_reverse_sample`]), shape `[N, C, …]`.
    pub sample: Array<f64, D>,
    /// The predicted `x̂_0`, shape `[N, C, …]`.
    pub pred_xstart: Array<f64, D>,
}

/// A per-timestep variational-bound term and the `x̂_0` used for it.
#[derive(Debug, Clone, PartialEq)]
pub struct VbTerms<D: Dimension> {
    /// `L_t` in bits/dim per batch element, shape `[N]`.
    pub output: Array1<f64>,
    /// The predicted `x̂_0`, shape `[N, C, …]`.
    pub pred_xstart: Array<f64, D>,
}

/// The per-sample training loss and its terms, each of shape `[N]`.
#[derive(Debug, Clone, PartialEq)]
pub struct LossTerms {
    /// `mse·L_mse + vb·L_t` with the weights of [`GaussianDiffusion::loss_weights`].
    pub loss: Array1<f64>,
    /// The MSE term (mean over the non-batch axes), when the loss has one.
    pub mse: Option<Array1<f64>>,
    /// The vb term `L_t` in bits/dim, when the loss has one.
    pub vb: Option<Array1<f64>>,
}

/// The coefficients of one DDIM step (Song et al. 2021, eq. 12):
/// `x_{t−1} = √ᾱ_{t−1} x̂_0 + √(1 − ᾱ_{t−1} − σ_t²) ε̂ + σ_t z`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DdimCoefficients {
    /// `√ᾱ_{t−1}`.
    pub sqrt_alpha_bar_prev: f64,
    /// `√(1 − ᾱ_{t−1} − σ_t²)`, the coefficient of `ε̂`.
    pub eps_coef: f64,
    /// `σ_t = η √((1 − ᾱ_{t−1})/(1 − ᾱ_t)) √(1 − ᾱ_t/ᾱ_{t−1})`.
    pub sigma: f64,
}

/// The mean part and, for a learned variance, the variance part of a model output.
type ModelOutputParts<'a, D> = (ArrayView<'a, f64, D>, Option<ArrayView<'a, f64, D>>);

/// A diffusion process `q(x_{1:T} | x_0)` with its per-timestep tables and the modelling choices of its reverse
/// process (Ho et al. 2020; Nichol & Dhariwal 2021).
///
/// Built once from betas; every table is an `Array1<f64>` of length `T`, indexed by `t ∈ 0..T`.
///
/// # Example
/// ```
/// use ddpm_math::{BetaSchedule, GaussianDiffusion, LossType, ModelMeanType, ModelVarType};
/// use ndarray::array;
///
/// let diffusion = GaussianDiffusion::new(
///     BetaSchedule::Linear.betas(1000)?,
///     ModelMeanType::Epsilon,
///     ModelVarType::FixedLarge,
///     LossType::Simple,
/// )?;
/// // q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I) for a batch of two 1-D "images" at t = 0 and t = 999.
/// let x0 = array![[0.5, -0.5], [1.0, 0.0]];
/// let q = diffusion.q_mean_variance(&x0, &[0, 999])?;
/// assert!((q.variance[[0, 0]] - 1e-4).abs() < 1e-15);
/// assert!(q.mean[[1, 0]] < 0.01);
/// # Ok::<(), ddpm_math::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct GaussianDiffusion {
    mean_type: ModelMeanType,
    var_type: ModelVarType,
    loss_type: LossType,
    betas: Array1<f64>,
    log_betas: Array1<f64>,
    alphas: Array1<f64>,
    alphas_cumprod: Array1<f64>,
    alphas_cumprod_prev: Array1<f64>,
    alphas_cumprod_next: Array1<f64>,
    sqrt_alphas_cumprod: Array1<f64>,
    sqrt_alphas_cumprod_prev: Array1<f64>,
    sqrt_alphas_cumprod_next: Array1<f64>,
    sqrt_one_minus_alphas_cumprod: Array1<f64>,
    log_one_minus_alphas_cumprod: Array1<f64>,
    sqrt_recip_alphas_cumprod: Array1<f64>,
    sqrt_recipm1_alphas_cumprod: Array1<f64>,
    posterior_variance: Array1<f64>,
    posterior_log_variance_clipped: Array1<f64>,
    posterior_mean_coef1: Array1<f64>,
    posterior_mean_coef2: Array1<f64>,
    fixed_large_variance: Array1<f64>,
    fixed_large_log_variance: Array1<f64>,
}

macro_rules! table_accessors {
    ($($(#[$doc:meta])* $name:ident;)*) => {
        $(
            $(#[$doc])*
            pub fn $name(&self) -> &Array1<f64> {
                &self.$name
            }
        )*
    };
}

impl GaussianDiffusion {
    /// Builds the process from betas `β_0 … β_{T−1}` and precomputes every table:
    ///
    /// - `α_t = 1 − β_t`, `ᾱ_t = ∏_{j≤t} α_j`, `ᾱ_prev = [1, ᾱ_0 … ᾱ_{T−2}]`, `ᾱ_next = [ᾱ_1 … ᾱ_{T−1}, 0]`;
    /// - `β̃_t = β_t (1 − ᾱ_{t−1})/(1 − ᾱ_t)` (Ho et al. 2020, eq. 7), `0` at `t = 0`, and its log clipped to
    ///   `[log β̃_1, log β̃_1, log β̃_2, …]`;
    /// - `μ̃_t = c₁ x_0 + c₂ x_t`, `c₁ = β_t √ᾱ_{t−1}/(1 − ᾱ_t)`, `c₂ = (1 − ᾱ_{t−1}) √α_t/(1 − ᾱ_t)`.
    ///
    /// # Errors
    /// - the errors of [`validate_betas`] (empty, non-finite, outside `(0, 1]`);
    /// - [`Error::TooFewTimesteps`] for `T < 2` (the clipped log-variance needs `β̃_1`);
    /// - [`Error::BetaTooSmall`] if `1 − β_0` rounds to 1 in f32 (then `1 − ᾱ_0 = 0` in the device tables);
    /// - [`Error::AlphaBarUnderflow`] if `0 < ᾱ_t < 10⁻³⁰` for some `t` (f32 tables would hold 0);
    /// - [`Error::ZeroAlphaBarBeforeEnd`] if `ᾱ_t = 0` for some `t < T − 1`. `ᾱ_{T−1} = 0` (zero terminal SNR,
    ///   `β_{T−1} = 1`, as in the `jsd` schedule or Lin et al. 2024) is accepted: `q(x_{T−1}|x_0) = N(0, I)` exactly;
    /// - [`Error::InvalidConfig`] for ε-prediction with a loss that has a variational-bound term (hybrid, vlb)
    ///   when `ᾱ_{T−1} = 0`: ε̂ cannot give `x̂_0` there (it is `x_{T−1}` itself), so `L_{T−1}` has no finite
    ///   value; v- or x₀-prediction (or the simple loss) train such schedules;
    /// - [`Error::InvalidConfig`] for [`LossType::Simple`] with a learned variance (nothing would train it) and
    ///   [`LossType::Hybrid`] with a fixed variance (its vb term would train nothing).
    pub fn new(
        betas: Array1<f64>,
        mean_type: ModelMeanType,
        var_type: ModelVarType,
        loss_type: LossType,
    ) -> Result<Self> {
        validate_betas(&betas.to_vec())?;
        let t_len = betas.len();
        if t_len < 2 {
            return Err(Error::TooFewTimesteps(t_len));
        }
        if 1.0f32 - betas[0] as f32 == 1.0 {
            return Err(Error::BetaTooSmall { value: betas[0] });
        }
        match (loss_type, var_type.is_learned()) {
            (LossType::Simple, true) => {
                return Err(Error::InvalidConfig(format!(
                    "loss type simple cannot train the learned variance {var_type:?}; use hybrid or vlb"
                )))
            }
            (LossType::Hybrid, false) => {
                return Err(Error::InvalidConfig(format!(
                    "loss type hybrid needs a learned variance, got {var_type:?}; use simple or vlb"
                )))
            }
            _ => {}
        }

        let alphas = betas.mapv(|b| 1.0 - b);
        let mut alphas_cumprod = Array1::zeros(t_len);
        let mut acc = 1.0;
        for (out, &a) in alphas_cumprod.iter_mut().zip(alphas.iter()) {
            acc *= a;
            *out = acc;
        }
        check_zero_terminal_snr(&betas, &alphas_cumprod, mean_type, loss_type)?;
        let alphas_cumprod_prev =
            Array1::from_shape_fn(t_len, |t| if t == 0 { 1.0 } else { alphas_cumprod[t - 1] });
        let alphas_cumprod_next = Array1::from_shape_fn(t_len, |t| {
            if t + 1 == t_len {
                0.0
            } else {
                alphas_cumprod[t + 1]
            }
        });
        let posterior_variance = Array1::from_shape_fn(t_len, |t| {
            betas[t] * (1.0 - alphas_cumprod_prev[t]) / (1.0 - alphas_cumprod[t])
        });
        let posterior_log_variance_clipped = Array1::from_shape_fn(t_len, |t| {
            posterior_variance[if t == 0 { 1 } else { t }].ln()
        });
        let posterior_mean_coef1 = Array1::from_shape_fn(t_len, |t| {
            betas[t] * alphas_cumprod_prev[t].sqrt() / (1.0 - alphas_cumprod[t])
        });
        let posterior_mean_coef2 = Array1::from_shape_fn(t_len, |t| {
            (1.0 - alphas_cumprod_prev[t]) * alphas[t].sqrt() / (1.0 - alphas_cumprod[t])
        });
        let fixed_large_variance = Array1::from_shape_fn(t_len, |t| {
            if t == 0 {
                posterior_variance[1]
            } else {
                betas[t]
            }
        });
        Ok(GaussianDiffusion {
            mean_type,
            var_type,
            loss_type,
            log_betas: betas.mapv(f64::ln),
            alphas,
            sqrt_alphas_cumprod: alphas_cumprod.mapv(f64::sqrt),
            sqrt_alphas_cumprod_prev: alphas_cumprod_prev.mapv(f64::sqrt),
            sqrt_alphas_cumprod_next: alphas_cumprod_next.mapv(f64::sqrt),
            sqrt_one_minus_alphas_cumprod: alphas_cumprod.mapv(|a| (1.0 - a).sqrt()),
            log_one_minus_alphas_cumprod: alphas_cumprod.mapv(|a| (1.0 - a).ln()),
            sqrt_recip_alphas_cumprod: alphas_cumprod.mapv(|a| (1.0 / a).sqrt()),
            sqrt_recipm1_alphas_cumprod: alphas_cumprod.mapv(|a| (1.0 / a - 1.0).sqrt()),
            fixed_large_log_variance: fixed_large_variance.mapv(f64::ln),
            fixed_large_variance,
            posterior_variance,
            posterior_log_variance_clipped,
            posterior_mean_coef1,
            posterior_mean_coef2,
            alphas_cumprod,
            alphas_cumprod_prev,
            alphas_cumprod_next,
            betas,
        })
    }

    /// The number of timesteps `T`.
    pub fn num_timesteps(&self) -> usize {
        self.betas.len()
    }

    /// What the network predicts.
    pub fn mean_type(&self) -> ModelMeanType {
        self.mean_type
    }

    /// How the reverse variance is chosen.
    pub fn var_type(&self) -> ModelVarType {
        self.var_type
    }

    /// The training objective.
    pub fn loss_type(&self) -> LossType {
        self.loss_type
    }

    table_accessors! {
        /// `β_t`.
        betas;
        /// `log β_t` (the upper end of the learned range).
        log_betas;
        /// `α_t = 1 − β_t`.
        alphas;
        /// `ᾱ_t = ∏_{j≤t} α_j`, strictly decreasing in `(0, 1)` (`ᾱ_{T−1}` may be 0 when `β_{T−1} = 1`).
        alphas_cumprod;
        /// `ᾱ_{t−1}` with `ᾱ_{−1} = 1`.
        alphas_cumprod_prev;
        /// `ᾱ_{t+1}` with `ᾱ_T = 0`.
        alphas_cumprod_next;
        /// `√ᾱ_t`.
        sqrt_alphas_cumprod;
        /// `√ᾱ_{t−1}`.
        sqrt_alphas_cumprod_prev;
        /// `√ᾱ_{t+1}`.
        sqrt_alphas_cumprod_next;
        /// `√(1 − ᾱ_t)`.
        sqrt_one_minus_alphas_cumprod;
        /// `log(1 − ᾱ_t)`.
        log_one_minus_alphas_cumprod;
        /// `√(1/ᾱ_t)` (`+∞` where `ᾱ_t = 0`).
        sqrt_recip_alphas_cumprod;
        /// `√(1/ᾱ_t − 1)` (`+∞` where `ᾱ_t = 0`).
        sqrt_recipm1_alphas_cumprod;
        /// The posterior variance `β̃_t = β_t (1 − ᾱ_{t−1})/(1 − ᾱ_t)`, `0` at `t = 0` (Ho et al. 2020, eq. 7).
        posterior_variance;
        /// `log β̃_t` with `t = 0` replaced by `log β̃_1`, so that it is finite.
        posterior_log_variance_clipped;
        /// `c₁ = β_t √ᾱ_{t−1}/(1 − ᾱ_t)`, the coefficient of `x_0` in `μ̃_t` (Ho et al. 2020, eq. 7).
        posterior_mean_coef1;
        /// `c₂ = (1 − ᾱ_{t−1}) √α_t/(1 − ᾱ_t)`, the coefficient of `x_t` in `μ̃_t` (Ho et al. 2020, eq. 7).
        posterior_mean_coef2;
        /// The fixed-large variance `[β̃_1, β_1, β_2, …, β_{T−1}]`.
        fixed_large_variance;
        /// `log` of [`fixed_large_variance`](Self::fixed_large_variance).
        fixed_large_log_variance;
    }

    /// The log signal-to-noise ratio `log(ᾱ_t/(1 − ᾱ_t))` (`−∞` where `ᾱ_t = 0`).
    pub fn log_snr(&self) -> Array1<f64> {
        Zip::from(&self.alphas_cumprod)
            .and(&self.log_one_minus_alphas_cumprod)
            .map_collect(|&a, &l| a.ln() - l)
    }

    /// The min-SNR-γ weights `[T]` of the MSE term for this diffusion's mean type and `ᾱ` table
    /// ([`min_snr_weights`](crate::losses::min_snr_weights); Hang et al. 2023). A respaced diffusion's
    /// weight at step `k` is that of the original index it keeps, since both have the same `ᾱ`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `gamma` is not a finite number `> 0`.
    pub fn min_snr_weights(&self, gamma: f64) -> Result<Array1<f64>> {
        let ac = self
            .alphas_cumprod
            .as_slice()
            .expect("tables are contiguous");
        crate::losses::min_snr_weights(ac, self.mean_type, gamma)
    }

    /// The `(variance, log-variance)` tables of a fixed variance type, or `None` for a learned one.
    pub fn fixed_variance_tables(&self) -> Option<(&Array1<f64>, &Array1<f64>)> {
        match self.var_type {
            ModelVarType::FixedSmall => Some((
                &self.posterior_variance,
                &self.posterior_log_variance_clipped,
            )),
            ModelVarType::FixedLarge => {
                Some((&self.fixed_large_variance, &self.fixed_large_log_variance))
            }
            ModelVarType::Learned | ModelVarType::LearnedRange => None,
        }
    }

    /// The weights of the per-sample loss terms for this loss type:
    /// simple `(1, 0)`, hybrid `(1, T/1000)` with a detached mean, vlb `(0, 1)`.
    ///
    /// The vlb weight 1 makes the batch mean an unbiased estimate of `L_vlb / T` under uniform `t` (or under an
    /// importance sampler when each sample is multiplied by its weight `1/(T p_t)`).
    ///
    /// # Example
    /// ```
    /// use ddpm_math::{BetaSchedule, GaussianDiffusion, LossType, ModelMeanType, ModelVarType};
    /// let d = GaussianDiffusion::new(
    ///     BetaSchedule::Cosine.betas(4000)?,
    ///     ModelMeanType::Epsilon,
    ///     ModelVarType::LearnedRange,
    ///     LossType::Hybrid,
    /// )?;
    /// let w = d.loss_weights();
    /// assert_eq!((w.mse, w.vb, w.detach_mean_in_vb), (1.0, 4.0, true));
    /// # Ok::<(), ddpm_math::Error>(())
    /// ```
    pub fn loss_weights(&self) -> LossWeights {
        match self.loss_type {
            LossType::Simple => LossWeights {
                mse: 1.0,
                vb: 0.0,
                detach_mean_in_vb: false,
            },
            LossType::Hybrid => LossWeights {
                mse: 1.0,
                vb: self.num_timesteps() as f64 / 1000.0,
                detach_mean_in_vb: true,
            },
            LossType::Vlb => LossWeights {
                mse: 0.0,
                vb: 1.0,
                detach_mean_in_vb: false,
            },
        }
    }

    /// The forward marginal `q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I)` (Ho et al. 2020, eq. 4).
    ///
    /// # Shapes
    /// `x_start: [N, …]`, `t: [N]` → each field `[N, …]`.
    ///
    /// # Errors
    /// [`Error::BatchMismatch`], [`Error::TimestepOutOfRange`] or [`Error::TooFewAxes`] (no batch axis).
    pub fn q_mean_variance<S, D>(
        &self,
        x_start: &ArrayBase<S, D>,
        t: &[usize],
    ) -> Result<MeanVariance<D>>
    where
        S: Data<Elem = f64>,
        D: Dimension,
    {
        self.check_batch("x_start", x_start.shape(), t)?;
        Ok(MeanVariance {
            mean: map1(x_start, t, |tb, x| self.sqrt_alphas_cumprod[tb] * x),
            variance: map1(x_start, t, |tb, _| 1.0 - self.alphas_cumprod[tb]),
            log_variance: map1(x_start, t, |tb, _| self.log_one_minus_alphas_cumprod[tb]),
        })
    }

    /// A sample of `q(x_t | x_0)` for given standard-normal `noise`: `x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε`.
    ///
    /// # Shapes
    /// `x_start, noise: [N, …]`, `t: [N]` → `[N, …]`.
    ///
    /// # Example
    /// ```
    /// use ddpm_math::{BetaSchedule, GaussianDiffusion, LossType, ModelMeanType, ModelVarType};
    /// use ndarray::array;
    /// let d = GaussianDiffusion::new(BetaSchedule::Linear.betas(1000)?, ModelMeanType::Epsilon,
    ///     ModelVarType::FixedLarge, LossType::Simple)?;
    /// let x_t = d.q_sample(&array![[1.0]], &[0], &array![[2.0]])?;
    /// assert!((x_t[[0, 0]] - ((1.0f64 - 1e-4).sqrt() + 2.0 * 1e-2)).abs() < 1e-12);
    /// # Ok::<(), ddpm_math::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`q_mean_variance`](Self::q_mean_variance), and [`Error::ShapeMismatch`].
    pub fn q_sample<S1, S2, D>(
        &self,
        x_start: &ArrayBase<S1, D>,
        t: &[usize],
        noise: &ArrayBase<S2, D>,
    ) -> Result<Array<f64, D>>
    where
        S1: Data<Elem = f64>,
        S2: Data<Elem = f64>,
        D: Dimension,
    {
        self.check_batch("x_start", x_start.shape(), t)?;
        same_shape("noise", noise.shape(), x_start.shape())?;
        Ok(map2(x_start, noise, t, |tb, x, e| {
            self.sqrt_alphas_cumprod[tb] * x + self.sqrt_one_minus_alphas_cumprod[tb] * e
        }))
    }

    /// The forward-process posterior `q(x_{t−1} | x_t, x_0) = N(μ̃_t, β̃_t I)` (Ho et al. 2020, eq. 6–7), with
    /// `μ̃_t = c₁ x_0 + c₂ x_t` and the clipped log-variance.
    ///
    /// # Shapes
    /// `x_start, x_t: [N, …]`, `t: [N]` → each field `[N, …]`.
    ///
    /// # Errors
    /// As [`q_sample`](Self::q_sample).
    pub fn q_posterior_mean_variance<S1, S2, D>(
        &self,
        x_start: &ArrayBase<S1, D>,
        x_t: &ArrayBase<S2, D>,
        t: &[usize],
    ) -> Result<MeanVariance<D>>
    where
        S1: Data<Elem = f64>,
        S2: Data<Elem = f64>,
        D: Dimension,
    {
        self.check_batch("x_t", x_t.shape(), t)?;
        same_shape("x_start", x_start.shape(), x_t.shape())?;
        Ok(MeanVariance {
            mean: self.posterior_mean(x_start, x_t, t),
            variance: map1(x_t, t, |tb, _| self.posterior_variance[tb]),
            log_variance: map1(x_t, t, |tb, _| self.posterior_log_variance_clipped[tb]),
        })
    }

    /// `x̂_0 = (x_t − √(1 − ᾱ_t) ε)/√ᾱ_t` (inverting `q_sample`, Ho et al. 2020, eq. 4; the same as improved-diffusion's
    /// `√(1/ᾱ_t) x_t − √(1/ᾱ_t − 1) ε`). Written as a quotient so that at `ᾱ_t = 0` it is `±∞` (the sign of
    /// `x_t − ε`), which clipping turns into `±1` (the "clamped first step" of zero-terminal-SNR sampling),
    /// rather than the `∞ − ∞ = NaN` of the product form.
    ///
    /// # Shapes
    /// `x_t, eps: [N, …]`, `t: [N]` → `[N, …]`.
    ///
    /// # Errors
    /// As [`q_sample`](Self::q_sample).
    pub fn predict_xstart_from_eps<S1, S2, D>(
        &self,
        x_t: &ArrayBase<S1, D>,
        t: &[usize],
        eps: &ArrayBase<S2, D>,
    ) -> Result<Array<f64, D>>
    where
        S1: Data<Elem = f64>,
        S2: Data<Elem = f64>,
        D: Dimension,
    {
        self.check_batch("x_t", x_t.shape(), t)?;
        same_shape("eps", eps.shape(), x_t.shape())?;
        Ok(map2(x_t, eps, t, |tb, x, e| {
            (x - self.sqrt_one_minus_alphas_cumprod[tb] * e) / self.sqrt_alphas_cumprod[tb]
        }))
    }

    /// `ε = (x_t − √ᾱ_t x_0)/√(1 − ᾱ_t)` (inverting `q_sample`); finite at `ᾱ_t = 0`, where it is `x_t`.
    ///
    /// # Shapes
    /// `x_t, x_start: [N, …]`, `t: [N]` → `[N, …]`.
    ///
    /// # Errors
    /// As [`q_sample`](Self::q_sample).
    pub fn predict_eps_from_xstart<S1, S2, D>(
        &self,
        x_t: &ArrayBase<S1, D>,
        t: &[usize],
        x_start: &ArrayBase<S2, D>,
    ) -> Result<Array<f64, D>>
    where
        S1: Data<Elem = f64>,
        S2: Data<Elem = f64>,
        D: Dimension,
    {
        self.check_batch("x_t", x_t.shape(), t)?;
        same_shape("x_start", x_start.shape(), x_t.shape())?;
        Ok(map2(x_t, x_start, t, |tb, x, x0| {
            (x - self.sqrt_alphas_cumprod[tb] * x0) / self.sqrt_one_minus_alphas_cumprod[tb]
        }))
    }

    /// `x̂_0 = √ᾱ_t x_t − √(1 − ᾱ_t) v` (Salimans & Ho 2022, §4).
    ///
    /// # Shapes
    /// `x_t, v: [N, …]`, `t: [N]` → `[N, …]`.
    ///
    /// # Errors
    /// As [`q_sample`](Self::q_sample).
    pub fn predict_xstart_from_v<S1, S2, D>(
        &self,
        x_t: &ArrayBase<S1, D>,
        t: &[usize],
        v: &ArrayBase<S2, D>,
    ) -> Result<Array<f64, D>>
    where
        S1: Data<Elem = f64>,
        S2: Data<Elem = f64>,
        D: Dimension,
    {
        self.check_batch("x_t", x_t.shape(), t)?;
        same_shape("v", v.shape(), x_t.shape())?;
        Ok(map2(x_t, v, t, |tb, x, v| {
            self.sqrt_alphas_cumprod[tb] * x - self.sqrt_one_minus_alphas_cumprod[tb] * v
        }))
    }

    /// `ε = √ᾱ_t v + √(1 − ᾱ_t) x_t`.
    ///
    /// # Shapes
    /// `x_t, v: [N, …]`, `t: [N]` → `[N, …]`.
    ///
    /// # Errors
    /// As [`q_sample`](Self::q_sample).
    pub fn predict_eps_from_v<S1, S2, D>(
        &self,
        x_t: &ArrayBase<S1, D>,
        t: &[usize],
        v: &ArrayBase<S2, D>,
    ) -> Result<Array<f64, D>>
    where
        S1: Data<Elem = f64>,
        S2: Data<Elem = f64>,
        D: Dimension,
    {
        self.check_batch("x_t", x_t.shape(), t)?;
        same_shape("v", v.shape(), x_t.shape())?;
        Ok(map2(x_t, v, t, |tb, x, v| {
            self.sqrt_alphas_cumprod[tb] * v + self.sqrt_one_minus_alphas_cumprod[tb] * x
        }))
    }

    /// The velocity target `v = √ᾱ_t ε − √(1 − ᾱ_t) x_0` (Salimans & Ho 2022, §4).
    ///
    /// # Shapes
    /// `x_start, noise: [N, …]`, `t: [N]` → `[N, …]`.
    ///
    /// # Errors
    /// As [`q_sample`](Self::q_sample).
    pub fn predict_v<S1, S2, D>(
        &self,
        x_start: &ArrayBase<S1, D>,
        t: &[usize],
        noise: &ArrayBase<S2, D>,
    ) -> Result<Array<f64, D>>
    where
        S1: Data<Elem = f64>,
        S2: Data<Elem = f64>,
        D: Dimension,
    {
        self.check_batch("x_start", x_start.shape(), t)?;
        same_shape("noise", noise.shape(), x_start.shape())?;
        Ok(map2(x_start, noise, t, |tb, x0, e| {
            self.sqrt_alphas_cumprod[tb] * e - self.sqrt_one_minus_alphas_cumprod[tb] * x0
        }))
    }

    /// The reverse distribution `p_θ(x_{t−1} | x_t) = N(μ_θ, σ_t² I)` from a network output
    /// (Ho et al. 2020, eq. 1; Nichol & Dhariwal 2021, eq. 15).
    ///
    /// The mean part of `model_output` is turned into `x̂_0` by the mean type (clamped to `[−1, 1]` when
    /// `clip_denoised`), then `μ_θ = μ̃_t(x̂_0, x_t)`. The variance comes from the fixed tables
    /// (fixed-small: `(β̃_t, clipped log β̃_t)`, so its variance is 0 at `t = 0` while its log-variance is
    /// `log β̃_1`; fixed-large: `[β̃_1, β_1, …]`) or from the variance part of the output.
    ///
    /// # Shapes
    /// `x_t: [N, C, …]`, `t: [N]`; `model_output: [N, C, …]` for a fixed variance, `[N, 2C, …]` for a learned
    /// one (mean part = channels `0..C`, variance part = channels `C..2C`) → each field `[N, C, …]`.
    ///
    /// # Errors
    /// As [`q_sample`](Self::q_sample); [`Error::ShapeMismatch`] or [`Error::TooFewAxes`] for a model output
    /// of the wrong layout.
    pub fn p_mean_variance<S1, S2, D>(
        &self,
        model_output: &ArrayBase<S1, D>,
        x_t: &ArrayBase<S2, D>,
        t: &[usize],
        clip_denoised: bool,
    ) -> Result<PMeanVariance<D>>
    where
        S1: Data<Elem = f64>,
        S2: Data<Elem = f64>,
        D: Dimension,
    {
        self.check_batch("x_t", x_t.shape(), t)?;
        let (mean_part, var_part) = self.split_model_output(model_output, x_t.shape())?;
        let (variance, log_variance) = match (self.var_type, var_part) {
            (ModelVarType::Learned, Some(v)) => (v.mapv(f64::exp), v.to_owned()),
            (ModelVarType::LearnedRange, Some(v)) => {
                let log_variance = map1(&v, t, |tb, v| {
                    let frac = (v + 1.0) / 2.0;
                    frac * self.log_betas[tb]
                        + (1.0 - frac) * self.posterior_log_variance_clipped[tb]
                });
                (log_variance.mapv(f64::exp), log_variance)
            }
            _ => {
                let (var, log_var) = self
                    .fixed_variance_tables()
                    .expect("split_model_output returns a variance part exactly for learned types");
                (
                    map1(x_t, t, |tb, _| var[tb]),
                    map1(x_t, t, |tb, _| log_var[tb]),
                )
            }
        };
        let mut pred_xstart = match self.mean_type {
            ModelMeanType::Epsilon => self.predict_xstart_from_eps(x_t, t, &mean_part)?,
            ModelMeanType::StartX => mean_part.to_owned(),
            ModelMeanType::V => self.predict_xstart_from_v(x_t, t, &mean_part)?,
        };
        if clip_denoised {
            pred_xstart.mapv_inplace(|x| x.clamp(-1.0, 1.0));
        }
        Ok(PMeanVariance {
            mean: self.posterior_mean(&pred_xstart, x_t, t),
            variance,
            log_variance,
            pred_xstart,
        })
    }

    /// One ancestral sampling step (Ho et al. 2020, Algorithm 2):
    /// `x_{t−1} = μ_θ(x_t, t) + 1[t ≠ 0] σ_t z`, `σ_t = exp(½ log σ_t²)`, with `z = noise`.
    ///
    /// # Shapes
    /// As [`p_mean_variance`](Self::p_mean_variance); `noise: [N, C, …]`.
    ///
    /// # Errors
    /// As [`p_mean_variance`](Self::p_mean_variance).
    pub fn p_sample<S1, S2, S3, D>(
        &self,
        model_output: &ArrayBase<S1, D>,
        x_t: &ArrayBase<S2, D>,
        t: &[usize],
        clip_denoised: bool,
        noise: &ArrayBase<S3, D>,
    ) -> Result<SampleStep<D>>
    where
        S1: Data<Elem = f64>,
        S2: Data<Elem = f64>,
        S3: Data<Elem = f64>,
        D: Dimension,
    {
        same_shape("noise", noise.shape(), x_t.shape())?;
        let out = self.p_mean_variance(model_output, x_t, t, clip_denoised)?;
        let batch = batch_index::<D>(t.len(), x_t.ndim());
        let sample = Zip::from(&out.mean)
            .and(&out.log_variance)
            .and(noise)
            .and_broadcast(&batch)
            .map_collect(|&mean, &lv, &z, &b| {
                if t[b] == 0 {
                    mean
                } else {
                    mean + (0.5 * lv).exp() * z
                }
            });
        Ok(SampleStep {
            sample,
            pred_xstart: out.pred_xstart,
        })
    }

    /// The DDIM step coefficients at `t` for a given `η ∈ [0, 1]` (Song et al. 2021, eq. 12 and 16):
    /// `η = 0` is the deterministic DDIM, `η = 1` gives `σ_t² = β̃_t`, the DDPM posterior variance.
    ///
    /// # Example
    /// ```
    /// use ddpm_math::{BetaSchedule, GaussianDiffusion, LossType, ModelMeanType, ModelVarType};
    /// let d = GaussianDiffusion::new(BetaSchedule::Linear.betas(1000)?, ModelMeanType::Epsilon,
    ///     ModelVarType::FixedSmall, LossType::Simple)?;
    /// let c = d.ddim_coefficients(500, 1.0)?;
    /// assert!((c.sigma * c.sigma / d.posterior_variance()[500] - 1.0).abs() < 1e-12);
    /// assert_eq!(d.ddim_coefficients(500, 0.0)?.sigma, 0.0);
    /// # Ok::<(), ddpm_math::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::TimestepOutOfRange`]; [`Error::InvalidArgument`] for `η` outside `[0, 1]`.
    pub fn ddim_coefficients(&self, t: usize, eta: f64) -> Result<DdimCoefficients> {
        self.check_t(t)?;
        if !(0.0..=1.0).contains(&eta) {
            return Err(Error::InvalidArgument {
                name: "eta",
                value: eta,
                reason: "DDIM eta must lie in [0, 1]",
            });
        }
        let a = self.alphas_cumprod[t];
        let a_prev = self.alphas_cumprod_prev[t];
        let sigma = eta * ((1.0 - a_prev) / (1.0 - a)).sqrt() * (1.0 - a / a_prev).sqrt();
        Ok(DdimCoefficients {
            sqrt_alpha_bar_prev: self.sqrt_alphas_cumprod_prev[t],
            eps_coef: (1.0 - a_prev - sigma * sigma).max(0.0).sqrt(),
            sigma,
        })
    }

    /// One DDIM step (Song et al. 2021, eq. 12): `x̂_0` from [`p_mean_variance`](Self::p_mean_variance) (its
    /// variance is unused), `ε̂` re-derived from the (clipped) `x̂_0`, then
    /// `x_{t−1} = √ᾱ_{t−1} x̂_0 + √(1 − ᾱ_{t−1} − σ_t²) ε̂ + 1[t ≠ 0] σ_t z`.
    ///
    /// # Shapes
    /// As [`p_sample`](Self::p_sample).
    ///
    /// # Errors
    /// As [`p_mean_variance`](Self::p_mean_variance) and [`ddim_coefficients`](Self::ddim_coefficients).
    #[allow(clippy::too_many_arguments)]
    pub fn ddim_sample<S1, S2, S3, D>(
        &self,
        model_output: &ArrayBase<S1, D>,
        x_t: &ArrayBase<S2, D>,
        t: &[usize],
        eta: f64,
        clip_denoised: bool,
        noise: &ArrayBase<S3, D>,
    ) -> Result<SampleStep<D>>
    where
        S1: Data<Elem = f64>,
        S2: Data<Elem = f64>,
        S3: Data<Elem = f64>,
        D: Dimension,
    {
        same_shape("noise", noise.shape(), x_t.shape())?;
        let out = self.p_mean_variance(model_output, x_t, t, clip_denoised)?;
        let eps = self.predict_eps_from_xstart(x_t, t, &out.pred_xstart)?;
        let coefs = t
            .iter()
            .map(|&tb| self.ddim_coefficients(tb, eta))
            .collect::<Result<Vec<_>>>()?;
        let batch = batch_index::<D>(t.len(), x_t.ndim());
        let sample = Zip::from(&out.pred_xstart)
            .and(&eps)
            .and(noise)
            .and_broadcast(&batch)
            .map_collect(|&x0, &e, &z, &b| {
                let c = &coefs[b];
                let sigma = if t[b] == 0 { 0.0 } else { c.sigma };
                c.sqrt_alpha_bar_prev * x0 + c.eps_coef * e + sigma * z
            });
        Ok(SampleStep {
            sample,
            pred_xstart: out.pred_xstart,
        })
    }

    /// The deterministic reverse-ODE DDIM step from `x_t` to `x_{t+1}` (encoding, Song et al. 2021, §4.3):
    /// `x_{t+1} = √ᾱ_{t+1} x̂_0 + √(1 − ᾱ_{t+1}) ε̂`.
    ///
    /// # Shapes
    /// As [`p_mean_variance`](Self::p_mean_variance).
    ///
    /// # Errors
    /// As [`p_mean_variance`](Self::p_mean_variance).
    pub fn ddim_reverse_sample<S1, S2, D>(
        &self,
        model_output: &ArrayBase<S1, D>,
        x_t: &ArrayBase<S2, D>,
        t: &[usize],
        clip_denoised: bool,
    ) -> Result<SampleStep<D>>
    where
        S1: Data<Elem = f64>,
        S2: Data<Elem = f64>,
        D: Dimension,
    {
        let out = self.p_mean_variance(model_output, x_t, t, clip_denoised)?;
        let eps = self.predict_eps_from_xstart(x_t, t, &out.pred_xstart)?;
        let sample = map2(&out.pred_xstart, &eps, t, |tb, x0, e| {
            self.sqrt_alphas_cumprod_next[tb] * x0 + (1.0 - self.alphas_cumprod_next[tb]).sqrt() * e
        });
        Ok(SampleStep {
            sample,
            pred_xstart: out.pred_xstart,
        })
    }

    /// The prior term `L_T = KL(q(x_T | x_0) ‖ N(0, I))` in bits/dim (mean over the non-batch axes / ln 2),
    /// with `q(x_T | x_0) = N(√ᾱ_{T−1} x_0, 1 − ᾱ_{T−1})`. It does not depend on the network.
    ///
    /// # Shapes
    /// `x_start: [N, …]` → `[N]`.
    ///
    /// # Example
    /// ```
    /// use ddpm_math::{BetaSchedule, GaussianDiffusion, LossType, ModelMeanType, ModelVarType};
    /// use ndarray::array;
    /// let d = GaussianDiffusion::new(BetaSchedule::Linear.betas(1000)?, ModelMeanType::Epsilon,
    ///     ModelVarType::FixedLarge, LossType::Simple)?;
    /// let prior = d.prior_bpd(&array![[1.0, -1.0, 0.0]])?;
    /// assert!(prior[0] > 0.0 && prior[0] < 1e-4);
    /// # Ok::<(), ddpm_math::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::TooFewAxes`] for a 0-d array.
    pub fn prior_bpd<S, D>(&self, x_start: &ArrayBase<S, D>) -> Result<Array1<f64>>
    where
        S: Data<Elem = f64>,
        D: Dimension,
    {
        check_has_batch_axis("x_start", x_start.shape())?;
        let last = self.num_timesteps() - 1;
        let sqrt_a = self.sqrt_alphas_cumprod[last];
        let log_var = self.log_one_minus_alphas_cumprod[last];
        let kl = x_start.mapv(|x| normal_kl(sqrt_a * x, log_var, 0.0, 0.0));
        Ok(mean_per_item(&kl) / LN_2)
    }

    /// The variational-bound term for each batch element in bits/dim (Ho et al. 2020, eq. 5):
    /// `L_t = KL(q(x_{t−1} | x_t, x_0) ‖ p_θ(x_{t−1} | x_t))` for `t > 0` and the decoder negative log-likelihood
    /// `L_0 = −log p_θ(x_0 | x_1)` ([`discretized_gaussian_log_likelihood`]) for `t = 0`; both averaged over the
    /// non-batch axes and divided by ln 2.
    ///
    /// # Shapes
    /// `model_output` as in [`p_mean_variance`](Self::p_mean_variance); `x_start, x_t: [N, C, …]` → `output: [N]`.
    ///
    /// # Errors
    /// As [`p_mean_variance`](Self::p_mean_variance).
    pub fn vb_terms_bpd<S1, S2, S3, D>(
        &self,
        model_output: &ArrayBase<S1, D>,
        x_start: &ArrayBase<S2, D>,
        x_t: &ArrayBase<S3, D>,
        t: &[usize],
        clip_denoised: bool,
    ) -> Result<VbTerms<D>>
    where
        S1: Data<Elem = f64>,
        S2: Data<Elem = f64>,
        S3: Data<Elem = f64>,
        D: Dimension,
    {
        let truth = self.q_posterior_mean_variance(x_start, x_t, t)?;
        let out = self.p_mean_variance(model_output, x_t, t, clip_denoised)?;
        let mut per_element = Zip::from(&truth.mean)
            .and(&truth.log_variance)
            .and(&out.mean)
            .and(&out.log_variance)
            .map_collect(|&qm, &qlv, &pm, &plv| normal_kl(qm, qlv, pm, plv));
        let batch = batch_index::<D>(t.len(), x_t.ndim());
        Zip::from(&mut per_element)
            .and(x_start)
            .and(&out.mean)
            .and(&out.log_variance)
            .and_broadcast(&batch)
            .for_each(|o, &x0, &m, &lv, &b| {
                if t[b] == 0 {
                    *o = -discretized_gaussian_log_likelihood(x0, m, 0.5 * lv);
                }
            });
        Ok(VbTerms {
            output: mean_per_item(&per_element) / LN_2,
            pred_xstart: out.pred_xstart,
        })
    }

    /// The per-sample training loss for a network output computed on `x_t = q_sample(x_start, t, noise)`
    /// (Ho et al. 2020, Algorithm 1; Nichol & Dhariwal 2021, §3.1).
    ///
    /// `mse` = mean over the non-batch axes of `(target − mean part)²`, the target being `ε`, `x_0` or `v` by the
    /// mean type; `vb` = [`vb_terms_bpd`](Self::vb_terms_bpd) without clipping; they are combined with
    /// [`loss_weights`](Self::loss_weights). On plain arrays there are no gradients: a caller that
    /// differentiates must detach the mean in the vb term when `detach_mean_in_vb` says so.
    ///
    /// # Shapes
    /// `model_output` as in [`p_mean_variance`](Self::p_mean_variance); `x_start, noise: [N, C, …]` → `[N]`.
    ///
    /// # Errors
    /// As [`p_mean_variance`](Self::p_mean_variance).
    pub fn training_losses<S1, S2, S3, D>(
        &self,
        model_output: &ArrayBase<S1, D>,
        x_start: &ArrayBase<S2, D>,
        t: &[usize],
        noise: &ArrayBase<S3, D>,
    ) -> Result<LossTerms>
    where
        S1: Data<Elem = f64>,
        S2: Data<Elem = f64>,
        S3: Data<Elem = f64>,
        D: Dimension,
    {
        let x_t = self.q_sample(x_start, t, noise)?;
        let (mean_part, _) = self.split_model_output(model_output, x_t.shape())?;
        let weights = self.loss_weights();
        let mut loss = Array1::zeros(t.len());
        let mse = if weights.mse > 0.0 {
            let target = match self.mean_type {
                ModelMeanType::Epsilon => noise.to_owned(),
                ModelMeanType::StartX => x_start.to_owned(),
                ModelMeanType::V => self.predict_v(x_start, t, noise)?,
            };
            let sq = Zip::from(&target)
                .and(&mean_part)
                .map_collect(|&a, &b| (a - b) * (a - b));
            let mse = mean_per_item(&sq);
            loss.scaled_add(weights.mse, &mse);
            Some(mse)
        } else {
            None
        };
        let vb = if weights.vb > 0.0 {
            let vb = self
                .vb_terms_bpd(model_output, x_start, &x_t, t, false)?
                .output;
            loss.scaled_add(weights.vb, &vb);
            Some(vb)
        } else {
            None
        };
        Ok(LossTerms { loss, mse, vb })
    }

    /// `μ̃_t = c₁ x_0 + c₂ x_t` without checks (callers have checked shapes and `t`).
    fn posterior_mean<S1, S2, D>(
        &self,
        x_start: &ArrayBase<S1, D>,
        x_t: &ArrayBase<S2, D>,
        t: &[usize],
    ) -> Array<f64, D>
    where
        S1: Data<Elem = f64>,
        S2: Data<Elem = f64>,
        D: Dimension,
    {
        map2(x_start, x_t, t, |tb, x0, xt| {
            self.posterior_mean_coef1[tb] * x0 + self.posterior_mean_coef2[tb] * xt
        })
    }

    /// Splits a model output into its mean part and (for learned variances) its variance part along axis 1.
    fn split_model_output<'a, S, D>(
        &self,
        model_output: &'a ArrayBase<S, D>,
        x_shape: &[usize],
    ) -> Result<ModelOutputParts<'a, D>>
    where
        S: Data<Elem = f64>,
        D: Dimension,
    {
        if !self.var_type.is_learned() {
            same_shape("model_output", model_output.shape(), x_shape)?;
            return Ok((model_output.view(), None));
        }
        if x_shape.len() < 2 {
            return Err(Error::TooFewAxes {
                name: "x_t (a learned variance splits the channel axis 1)",
                min: 2,
                got: x_shape.len(),
            });
        }
        let mut expected = x_shape.to_vec();
        expected[1] *= 2;
        same_shape("model_output", model_output.shape(), &expected)?;
        let c = x_shape[1];
        Ok((
            model_output.slice_axis(Axis(1), Slice::from(0..c)),
            Some(model_output.slice_axis(Axis(1), Slice::from(c..2 * c))),
        ))
    }

    fn check_t(&self, t: usize) -> Result<()> {
        if t < self.num_timesteps() {
            Ok(())
        } else {
            Err(Error::TimestepOutOfRange {
                t,
                num_timesteps: self.num_timesteps(),
            })
        }
    }

    fn check_batch(&self, name: &'static str, shape: &[usize], t: &[usize]) -> Result<()> {
        check_has_batch_axis(name, shape)?;
        if shape[0] != t.len() {
            return Err(Error::BatchMismatch {
                timesteps: t.len(),
                batch: shape[0],
            });
        }
        t.iter().try_for_each(|&tb| self.check_t(tb))
    }
}

fn check_has_batch_axis(name: &'static str, shape: &[usize]) -> Result<()> {
    if shape.is_empty() {
        Err(Error::TooFewAxes {
            name,
            min: 1,
            got: 0,
        })
    } else {
        Ok(())
    }
}

/// The batch index `b` as an array of shape `[N, 1, …, 1]` with `ndim` axes, to broadcast against `[N, …]`.
fn batch_index<D: Dimension>(batch: usize, ndim: usize) -> Array<usize, D> {
    let mut dim = D::zeros(ndim);
    dim.slice_mut().fill(1);
    dim.slice_mut()[0] = batch;
    Array::from_shape_vec(dim, (0..batch).collect()).expect("N·1·…·1 holds N elements")
}

/// `out[b, …] = f(t_b, a[b, …])`; `a` has a leading batch axis of length `t.len()`.
fn map1<S, D>(a: &ArrayBase<S, D>, t: &[usize], f: impl Fn(usize, f64) -> f64) -> Array<f64, D>
where
    S: Data<Elem = f64>,
    D: Dimension,
{
    let batch = batch_index::<D>(t.len(), a.ndim());
    Zip::from(a)
        .and_broadcast(&batch)
        .map_collect(|&a, &b| f(t[b], a))
}

/// `out[b, …] = f(t_b, a[b, …], b[b, …])`; `a` and `b` have the same shape with a leading batch axis.
fn map2<S1, S2, D>(
    a: &ArrayBase<S1, D>,
    b: &ArrayBase<S2, D>,
    t: &[usize],
    f: impl Fn(usize, f64, f64) -> f64,
) -> Array<f64, D>
where
    S1: Data<Elem = f64>,
    S2: Data<Elem = f64>,
    D: Dimension,
{
    let batch = batch_index::<D>(t.len(), a.ndim());
    Zip::from(a)
        .and(b)
        .and_broadcast(&batch)
        .map_collect(|&a, &b, &i| f(t[i], a, b))
}

/// The mean over every axis but the leading (batch) one: `[N, …] → [N]`.
fn mean_per_item<S, D>(x: &ArrayBase<S, D>) -> Array1<f64>
where
    S: Data<Elem = f64>,
    D: Dimension,
{
    let batch = x.shape()[0];
    if batch == 0 {
        return Array1::zeros(0);
    }
    let per_item = x.len() / batch;
    let rows = x
        .to_shape((batch, per_item))
        .expect("[N, …] reshapes to [N, len/N]");
    rows.sum_axis(Axis(1)) / per_item as f64
}

/// The smallest positive `ᾱ_t` accepted: below it f32 tables would round `ᾱ_t` (and the ratios of
/// respacing and DDIM) to 0.
pub const MIN_ALPHA_BAR: f64 = 1e-30;

/// The checks of [`GaussianDiffusion::new`] on where `ᾱ` reaches 0: only at the last timestep, and not under an
/// ε-prediction loss with a variational-bound term.
fn check_zero_terminal_snr(
    betas: &Array1<f64>,
    alphas_cumprod: &Array1<f64>,
    mean_type: ModelMeanType,
    loss_type: LossType,
) -> Result<()> {
    let last = alphas_cumprod.len() - 1;
    if let Some(index) = alphas_cumprod
        .iter()
        .position(|&a| a > 0.0 && a < MIN_ALPHA_BAR)
    {
        return Err(Error::AlphaBarUnderflow {
            index,
            num_timesteps: last + 1,
            value: alphas_cumprod[index],
        });
    }
    if let Some(index) = alphas_cumprod.iter().position(|&a| a == 0.0) {
        if index < last {
            return Err(Error::ZeroAlphaBarBeforeEnd {
                index,
                num_timesteps: last + 1,
                beta: betas[index],
            });
        }
        if mean_type == ModelMeanType::Epsilon && loss_type != LossType::Simple {
            return Err(Error::InvalidConfig(format!(
                "alpha_bar reaches 0 at the last timestep (beta[{last}] = {}), where an epsilon-prediction \
                 model cannot predict x_0, so the {loss_type:?} loss has no finite variational-bound term; \
                 use v- or x0-prediction, the simple loss, or a schedule with beta < 1",
                betas[last]
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::BetaSchedule;
    use ndarray::{array, Array3};

    fn linear(mean: ModelMeanType, var: ModelVarType, loss: LossType) -> GaussianDiffusion {
        GaussianDiffusion::new(BetaSchedule::Linear.betas(1000).unwrap(), mean, var, loss).unwrap()
    }

    #[test]
    fn alpha_bar_may_reach_zero_only_at_the_last_step() {
        let new = |betas: Array1<f64>, mean, loss| {
            let var = if loss == LossType::Simple {
                ModelVarType::FixedSmall
            } else {
                ModelVarType::LearnedRange
            };
            GaussianDiffusion::new(betas, mean, var, loss)
        };
        use LossType::*;
        use ModelMeanType::*;
        assert_eq!(
            new(array![0.1, 1.0, 0.5], Epsilon, Simple),
            Err(Error::ZeroAlphaBarBeforeEnd {
                index: 1,
                num_timesteps: 3,
                beta: 1.0
            })
        );
        // 0.001^k falls below 1e-30 at k = 11 (f32 tables would hold 0) and underflows later.
        let err = new(Array1::from_elem(300, 0.999), V, Simple).unwrap_err();
        assert!(
            matches!(err, Error::AlphaBarUnderflow { index: 10, .. }),
            "{err:?}"
        );
        // 1 − 1e-9 is 1 in f32.
        assert_eq!(
            new(array![1e-9, 0.1], V, Simple),
            Err(Error::BetaTooSmall { value: 1e-9 })
        );
        let jsd = || BetaSchedule::Jsd.betas(20).unwrap();
        assert!(new(jsd(), Epsilon, Simple).is_ok());
        assert!(new(jsd(), V, Hybrid).is_ok());
        assert!(new(jsd(), StartX, Vlb).is_ok());
        for loss in [Hybrid, Vlb] {
            let msg = new(jsd(), Epsilon, loss).unwrap_err().to_string();
            assert!(
                msg.contains("epsilon") && msg.contains("beta[19] = 1"),
                "{msg}"
            );
        }
    }

    #[test]
    fn the_first_step_at_zero_terminal_snr_is_finite_with_clipping() {
        // jsd ends with β = 1: ᾱ_{T−1} = 0 and x_{T−1} = ε exactly.
        let d = GaussianDiffusion::new(
            BetaSchedule::Jsd.betas(20).unwrap(),
            ModelMeanType::Epsilon,
            ModelVarType::FixedLarge,
            LossType::Simple,
        )
        .unwrap();
        assert_eq!(d.alphas_cumprod()[19], 0.0);
        let x = array![[0.5, -0.25, 2.0]];
        let eps = array![[0.25, 0.5, 1.0]];
        let x0 = d.predict_xstart_from_eps(&x, &[19], &eps).unwrap();
        assert_eq!(
            x0,
            array![[f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY]]
        );
        // ε from x̂_0 is x_t itself at ᾱ = 0, whatever x̂_0 is.
        let e = d
            .predict_eps_from_xstart(&x, &[19], &array![[1.0, -1.0, 0.3]])
            .unwrap();
        assert_eq!(e, x);
        let p = d.p_mean_variance(&eps, &x, &[19], true).unwrap();
        assert_eq!(p.pred_xstart, array![[1.0, -1.0, 1.0]]);
        let c1 = d.alphas_cumprod()[18].sqrt();
        for (m, want) in p.mean.iter().zip([c1, -c1, c1]) {
            assert!((m - want).abs() < 1e-15, "{m} vs {want}");
        }
        for eta in [0.0, 1.0] {
            let step = d
                .ddim_sample(&eps, &x, &[19], eta, true, &array![[0.1, 0.2, 0.3]])
                .unwrap();
            assert!(step.sample.iter().all(|v| v.is_finite()));
        }
        // Without clipping there is no finite x̂_0: the values are ±∞, not NaN.
        let p = d.p_mean_variance(&eps, &x, &[19], false).unwrap();
        assert!(p.pred_xstart.iter().all(|v| v.is_infinite()));
    }

    #[test]
    fn construction_rejects_bad_inputs() {
        let new = |betas: Array1<f64>, var, loss| {
            GaussianDiffusion::new(betas, ModelMeanType::Epsilon, var, loss)
        };
        use LossType::*;
        use ModelVarType::*;
        assert_eq!(
            new(array![0.1], FixedLarge, Simple),
            Err(Error::TooFewTimesteps(1))
        );
        assert_eq!(new(array![], FixedLarge, Simple), Err(Error::EmptyBetas));
        assert_eq!(
            new(array![1e-17, 0.1], FixedLarge, Simple),
            Err(Error::BetaTooSmall { value: 1e-17 })
        );
        assert!(matches!(
            new(array![0.1, 0.2], LearnedRange, Simple),
            Err(Error::InvalidConfig(_))
        ));
        assert!(matches!(
            new(array![0.1, 0.2], FixedSmall, Hybrid),
            Err(Error::InvalidConfig(_))
        ));
        assert!(new(array![0.1, 0.9], Learned, Vlb).is_ok());
        // β = 1 at the end is zero terminal SNR, which an ε-model cannot train with a vb term.
        assert!(matches!(
            new(array![0.1, 1.0], Learned, Vlb),
            Err(Error::InvalidConfig(_))
        ));
        assert!(new(array![0.1, 1.0], FixedSmall, Simple).is_ok());
    }

    #[test]
    fn shapes_and_timesteps_are_checked() {
        let d = linear(
            ModelMeanType::Epsilon,
            ModelVarType::LearnedRange,
            LossType::Hybrid,
        );
        let x = Array3::<f64>::zeros((2, 3, 4));
        assert_eq!(
            d.q_sample(&x, &[0], &x),
            Err(Error::BatchMismatch {
                timesteps: 1,
                batch: 2
            })
        );
        assert_eq!(
            d.q_sample(&x, &[0, 1000], &x),
            Err(Error::TimestepOutOfRange {
                t: 1000,
                num_timesteps: 1000
            })
        );
        // A learned variance needs 2C channels on axis 1.
        assert!(matches!(
            d.p_mean_variance(&x, &x, &[0, 1], false),
            Err(Error::ShapeMismatch {
                name: "model_output",
                ..
            })
        ));
        let out = Array3::<f64>::zeros((2, 6, 4));
        let p = d.p_mean_variance(&out, &x, &[0, 1], false).unwrap();
        assert_eq!(p.mean.shape(), &[2, 3, 4]);
        // v = 0 is the midpoint of the learned range.
        let mid = 0.5 * (d.log_betas()[1] + d.posterior_log_variance_clipped()[1]);
        assert!((p.log_variance[[1, 2, 3]] - mid).abs() < 1e-15);
    }

    #[test]
    fn exact_epsilon_gives_the_true_posterior_and_zero_mse() {
        let d = linear(
            ModelMeanType::Epsilon,
            ModelVarType::FixedSmall,
            LossType::Simple,
        );
        let x0 = array![[0.5, -0.25], [0.75, 0.0]];
        let eps = array![[1.0, -2.0], [0.3, 0.7]];
        let t = [10, 900];
        let x_t = d.q_sample(&x0, &t, &eps).unwrap();
        let p = d.p_mean_variance(&eps, &x_t, &t, false).unwrap();
        let q = d.q_posterior_mean_variance(&x0, &x_t, &t).unwrap();
        for (a, b) in p.mean.iter().zip(q.mean.iter()) {
            assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        }
        assert_eq!(p.log_variance, q.log_variance);
        let vb = d.vb_terms_bpd(&eps, &x0, &x_t, &t, false).unwrap();
        assert!(vb.output.iter().all(|&v| v.abs() < 1e-12), "{}", vb.output);
        let losses = d.training_losses(&eps, &x0, &t, &eps).unwrap();
        assert_eq!(losses.mse, Some(array![0.0, 0.0]));
        assert_eq!(losses.vb, None);
    }

    #[test]
    fn loss_terms_follow_the_weights() {
        let d = linear(ModelMeanType::V, ModelVarType::Learned, LossType::Hybrid);
        let x0 = Array3::from_shape_fn((2, 1, 3), |(b, _, p)| (b as f64 - 0.5) * p as f64 / 3.0);
        let noise = Array3::from_shape_fn((2, 1, 3), |(b, _, p)| (b + p) as f64 * 0.3 - 0.5);
        let out = Array3::from_shape_fn((2, 2, 3), |(b, c, p)| (b + 2 * c + p) as f64 * 0.1 - 0.4);
        let t = [0, 500];
        let terms = d.training_losses(&out, &x0, &t, &noise).unwrap();
        let (mse, vb) = (terms.mse.unwrap(), terms.vb.unwrap());
        assert_eq!(terms.loss, &mse + &(&vb * 1.0));
        let d = linear(ModelMeanType::V, ModelVarType::Learned, LossType::Vlb);
        let terms = d.training_losses(&out, &x0, &t, &noise).unwrap();
        assert_eq!(terms.mse, None);
        assert_eq!(Some(terms.loss), terms.vb);
    }

    #[test]
    fn ancestral_step_adds_no_noise_at_t_zero() {
        let d = linear(
            ModelMeanType::StartX,
            ModelVarType::FixedLarge,
            LossType::Simple,
        );
        let x_t = array![[0.1, 0.2], [0.3, 0.4]];
        let out = array![[2.0, -0.5], [0.0, 0.5]];
        let z = array![[1.0, 1.0], [1.0, 1.0]];
        let step = d.p_sample(&out, &x_t, &[0, 5], true, &z).unwrap();
        let p = d.p_mean_variance(&out, &x_t, &[0, 5], true).unwrap();
        assert_eq!(step.pred_xstart[[0, 0]], 1.0, "x̂_0 is clamped");
        assert_eq!(step.sample.row(0), p.mean.row(0));
        let sigma = d.fixed_large_variance()[5].sqrt();
        assert!((step.sample[[1, 1]] - p.mean[[1, 1]] - sigma).abs() < 1e-12);
    }

    #[test]
    fn deterministic_ddim_with_exact_epsilon_follows_the_marginals() {
        // With ε̂ = ε, DDIM (η = 0) maps q_sample(x_0, t, ε) to q_sample(x_0, t − 1, ε), and its reverse
        // maps it to q_sample(x_0, t + 1, ε).
        let d = linear(
            ModelMeanType::Epsilon,
            ModelVarType::FixedSmall,
            LossType::Simple,
        );
        let x0 = array![[0.4, -0.8]];
        let eps = array![[0.9, 0.1]];
        let zero = array![[0.0, 0.0]];
        let x_t = d.q_sample(&x0, &[300], &eps).unwrap();
        let prev = d
            .ddim_sample(&eps, &x_t, &[300], 0.0, false, &zero)
            .unwrap();
        let expected = d.q_sample(&x0, &[299], &eps).unwrap();
        let next = d.ddim_reverse_sample(&eps, &x_t, &[300], false).unwrap();
        let expected_next = d.q_sample(&x0, &[301], &eps).unwrap();
        for (pair, name) in [
            ((&prev.sample, &expected), "x_{t−1}"),
            ((&next.sample, &expected_next), "x_{t+1}"),
        ] {
            for (a, b) in pair.0.iter().zip(pair.1.iter()) {
                assert!((a - b).abs() < 1e-12, "{name}: {a} vs {b}");
            }
        }
        assert!(d.ddim_coefficients(3, 1.5).is_err());
        assert!(d.ddim_coefficients(1000, 0.0).is_err());
    }

    #[test]
    fn prior_is_nearly_standard_normal_for_linear() {
        let d = linear(
            ModelMeanType::Epsilon,
            ModelVarType::FixedLarge,
            LossType::Simple,
        );
        let prior = d.prior_bpd(&array![[1.0, -1.0], [0.0, 0.0]]).unwrap();
        // ᾱ_{T−1} ≈ 4e-5: KL ≈ ½(ᾱ x² + ᾱ + log(1 − ᾱ)) ≈ ½ᾱ x² per dim.
        let a = d.alphas_cumprod()[999];
        assert!((prior[0] - 0.5 * a / LN_2).abs() < 1e-3 * a);
        assert!(prior[1] >= 0.0 && prior[1] < 1e-8);
    }
}
