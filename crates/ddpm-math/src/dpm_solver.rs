//! DPM-Solver++ (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
//! Probabilistic Models", §4, Algorithm 2: the multistep second-order solver "2M") for a
//! discrete-time diffusion, as diffusers' `DPMSolverMultistepScheduler` runs it with
//! `algorithm_type = "dpmsolver++"`, `solver_order = 2`, `solver_type = "midpoint"`.
//!
//! The solver integrates the probability-flow ODE in `λ = log(α/σ)` (half the log-SNR) with the
//! data prediction `x̂₀`: with `α_t = √ᾱ_t`, `σ_t = √(1 − ᾱ_t)` and `h = λ_{i+1} − λ_i`,
//!
//! - first order (DDIM): `x_{i+1} = (σ_{i+1}/σ_i) x_i + α_{i+1}(1 − e^{−h}) m_i`;
//! - second order: the same plus `½ α_{i+1}(1 − e^{−h}) (h/h_{i−1}) (m_i − m_{i−1})`,
//!   `h_{i−1} = λ_i − λ_{i−1}` (the midpoint form of `D₁ = (m_i − m_{i−1})/r`, `r = h_{i−1}/h`).
//!
//! The visited timesteps are diffusers' `linspace` spacing for `n` steps,
//! `round(linspace(0, T − 1, n + 1))` reversed without its last element, and the chain ends at
//! `σ = 0` (`final_sigmas_type = "zero"`: the last step returns `x̂₀`) or at `σ_0`
//! (`"sigma_min"`). The first step is first order (there is no `m_{−1}`); so is the last one when
//! it ends at `σ = 0`, or with `lower_order_final` and fewer than 15 steps, or `euler_at_final`.
//! A first point with `ᾱ = 0` (zero terminal SNR) has `λ = −∞`: its step has `e^{−h} = 0` and the
//! next step's second-order term vanishes (`h/h_{i−1} = 0`).
use ndarray::{Array, ArrayBase, Data, Dimension, Zip};

use crate::diffusion::GaussianDiffusion;
use crate::error::{Error, Result};

/// Where the chain ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FinalSigma {
    /// `σ = 0`: the last step returns the data prediction (diffusers' `"zero"`).
    #[default]
    Zero,
    /// `σ_0 = √(1 − ᾱ_0)` (diffusers' `"sigma_min"`).
    SigmaMin,
}

/// Options of the solver beyond its timesteps (diffusers' names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DpmSolverOptions {
    /// The end point.
    pub final_sigma: FinalSigma,
    /// First order at the last step when there are fewer than 15 steps.
    pub lower_order_final: bool,
    /// First order at the last step always.
    pub euler_at_final: bool,
}

impl Default for DpmSolverOptions {
    fn default() -> Self {
        Self {
            final_sigma: FinalSigma::Zero,
            lower_order_final: true,
            euler_at_final: false,
        }
    }
}

/// The coefficients of step `i`: `x_{i+1} = x·x_i + d0·m_i + d1·(m_i − m_{i−1})`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DpmSolverStep {
    /// 1 or 2.
    pub order: usize,
    /// `σ_{i+1}/σ_i`.
    pub x: f64,
    /// `α_{i+1}(1 − e^{−h})`.
    pub d0: f64,
    /// `½ d0 · h/h_{i−1}` for order 2, else 0.
    pub d1: f64,
}

/// A DPM-Solver++(2M) chain over given timesteps of a diffusion.
#[derive(Debug, Clone, PartialEq)]
pub struct DpmSolverPlusPlus {
    timesteps: Vec<usize>,
    alpha: Vec<f64>,
    sigma: Vec<f64>,
    lambda: Vec<f64>,
    steps: Vec<DpmSolverStep>,
}

/// diffusers' `linspace` timesteps of DPM-Solver for `n` steps over `T` training timesteps:
/// `round(linspace(0, T − 1, n + 1))` (half to even), decreasing, without the final 0.
///
/// # Errors
/// [`Error::InvalidSpacing`] for `n = 0` or `n ≥ T` (fewer distinct timesteps than steps).
pub fn dpm_solver_timesteps(num_timesteps: usize, n: usize) -> Result<Vec<usize>> {
    if n == 0 || n >= num_timesteps {
        return Err(Error::InvalidSpacing {
            spec: n.to_string(),
            num_timesteps,
            reason: format!("DPM-Solver takes 1 to {} steps", num_timesteps.max(2) - 1),
        });
    }
    let step = (num_timesteps - 1) as f64 / n as f64;
    Ok((1..=n)
        .rev()
        .map(|i| {
            let v = if i == n {
                (num_timesteps - 1) as f64
            } else {
                i as f64 * step
            };
            v.round_ties_even() as usize
        })
        .collect())
}

impl DpmSolverPlusPlus {
    /// The solver over `timesteps` (strictly decreasing original indices of `diffusion`).
    ///
    /// # Errors
    /// [`Error::InvalidSpacing`] for an empty, non-decreasing or out-of-range list.
    pub fn new(
        diffusion: &GaussianDiffusion,
        timesteps: &[usize],
        options: DpmSolverOptions,
    ) -> Result<Self> {
        let t_len = diffusion.num_timesteps();
        let bad = |reason: &str| Error::InvalidSpacing {
            spec: format!("{timesteps:?}"),
            num_timesteps: t_len,
            reason: reason.to_string(),
        };
        if timesteps.is_empty() {
            return Err(bad("no timesteps"));
        }
        if timesteps.windows(2).any(|w| w[0] <= w[1]) || timesteps[0] >= t_len {
            return Err(bad("timesteps must decrease and lie in 0..T"));
        }
        let abar = diffusion.alphas_cumprod();
        let mut alpha: Vec<f64> = timesteps.iter().map(|&t| abar[t].sqrt()).collect();
        let mut sigma: Vec<f64> = timesteps.iter().map(|&t| (1.0 - abar[t]).sqrt()).collect();
        match options.final_sigma {
            FinalSigma::Zero => {
                alpha.push(1.0);
                sigma.push(0.0);
            }
            FinalSigma::SigmaMin => {
                alpha.push(abar[0].sqrt());
                sigma.push((1.0 - abar[0]).sqrt());
            }
        }
        let lambda: Vec<f64> = alpha
            .iter()
            .zip(&sigma)
            .map(|(a, s)| a.ln() - s.ln())
            .collect();
        let n = timesteps.len();
        let steps = (0..n)
            .map(|i| {
                let last_first_order = options.euler_at_final
                    || (options.lower_order_final && n < 15)
                    || options.final_sigma == FinalSigma::Zero;
                let order = if i == 0 || (i + 1 == n && last_first_order) {
                    1
                } else {
                    2
                };
                let h = lambda[i + 1] - lambda[i];
                let d0 = alpha[i + 1] * (1.0 - (-h).exp());
                let d1 = if order == 2 {
                    0.5 * d0 * h / (lambda[i] - lambda[i - 1])
                } else {
                    0.0
                };
                DpmSolverStep {
                    order,
                    x: sigma[i + 1] / sigma[i],
                    d0,
                    d1,
                }
            })
            .collect();
        Ok(Self {
            timesteps: timesteps.to_vec(),
            alpha,
            sigma,
            lambda,
            steps,
        })
    }

    /// The visited timesteps, decreasing (one network evaluation each).
    pub fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    /// `α` at the `n + 1` points (the last is the end point).
    pub fn alphas(&self) -> &[f64] {
        &self.alpha
    }

    /// `σ` at the `n + 1` points.
    pub fn sigmas(&self) -> &[f64] {
        &self.sigma
    }

    /// `λ = log α − log σ` at the `n + 1` points.
    pub fn lambdas(&self) -> &[f64] {
        &self.lambda
    }

    /// The coefficients of every step.
    pub fn steps(&self) -> &[DpmSolverStep] {
        &self.steps
    }

    /// Step `i`: `x_{i+1}` from `x_i`, the data prediction `m_i` and the previous one `m_{i−1}`
    /// (needed for a second-order step).
    ///
    /// # Shapes
    /// `x, m, m_prev: [N, …]` → `[N, …]`.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`]; [`Error::InvalidArgument`] for a second-order step without
    /// `m_prev` or `i` out of range.
    pub fn step<S1, S2, S3, D>(
        &self,
        i: usize,
        x: &ArrayBase<S1, D>,
        m: &ArrayBase<S2, D>,
        m_prev: Option<&ArrayBase<S3, D>>,
    ) -> Result<Array<f64, D>>
    where
        S1: Data<Elem = f64>,
        S2: Data<Elem = f64>,
        S3: Data<Elem = f64>,
        D: Dimension,
    {
        let c = *self.steps.get(i).ok_or(Error::InvalidArgument {
            name: "i",
            value: i as f64,
            reason: "no such DPM-Solver step",
        })?;
        if m.shape() != x.shape() {
            return Err(Error::ShapeMismatch {
                name: "m",
                got: m.shape().to_vec(),
                expected: x.shape().to_vec(),
            });
        }
        let first = Zip::from(x).and(m).map_collect(|&x, &m| c.x * x + c.d0 * m);
        if c.order == 1 {
            return Ok(first);
        }
        let prev = m_prev.ok_or(Error::InvalidArgument {
            name: "i",
            value: i as f64,
            reason: "a second-order step needs the previous data prediction",
        })?;
        if prev.shape() != x.shape() {
            return Err(Error::ShapeMismatch {
                name: "m_prev",
                got: prev.shape().to_vec(),
                expected: x.shape().to_vec(),
            });
        }
        Ok(Zip::from(&first)
            .and(m)
            .and(prev)
            .map_collect(|&f, &m, &p| f + c.d1 * (m - p)))
    }
}
