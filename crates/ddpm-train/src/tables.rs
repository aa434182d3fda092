//! The one place where ddpm-math's f64 tables become device tensors, and the closed forms of
//! ddpm-math written again on tensors for the training and sampling hot paths.
//!
//! Every formula here mirrors a function of `ddpm_math` (named in its doc) and is tested against it
//! in `tests/tables_vs_math.rs`; the tables are computed once in f64 by ddpm-math and only cast to
//! f32 here.
use ddpm_math::{GaussianDiffusion, ModelMeanType, ModelVarType};
use tch::{Device, Kind, Tensor};

/// The per-timestep tables of a (possibly respaced) diffusion on a device, in f32.
pub struct DeviceTables {
    mean_type: ModelMeanType,
    var_type: ModelVarType,
    num_timesteps: usize,
    /// Original timestep index of each step (identity unless respaced); what the network sees.
    pub timestep_map: Tensor,
    log_betas: Tensor,
    alphas_cumprod: Tensor,
    alphas_cumprod_prev: Tensor,
    sqrt_alphas_cumprod: Tensor,
    sqrt_one_minus_alphas_cumprod: Tensor,
    posterior_variance: Tensor,
    posterior_log_variance_clipped: Tensor,
    posterior_mean_coef1: Tensor,
    posterior_mean_coef2: Tensor,
    fixed_large_variance: Tensor,
    fixed_large_log_variance: Tensor,
    /// Per-step weights of the MSE term (min-SNR-γ), when the loss has any.
    mse_weights: Option<Tensor>,
}

fn to_device(a: &ndarray::Array1<f64>, device: Device, kind: Kind) -> Tensor {
    Tensor::from_slice(a.as_slice().expect("ddpm-math tables are contiguous"))
        .to_kind(kind)
        .to_device(device)
}

/// A distribution's mean, variance and log-variance, each `[N, …]`.
pub struct Gaussian {
    /// Mean.
    pub mean: Tensor,
    /// Variance.
    pub variance: Tensor,
    /// Log-variance.
    pub log_variance: Tensor,
}

/// `p_θ(x_{t−1} | x_t)` and the model's x̂_0.
pub struct PMean {
    /// The reverse-step Gaussian.
    pub dist: Gaussian,
    /// The predicted (optionally clipped) x̂_0.
    pub pred_xstart: Tensor,
}

impl DeviceTables {
    /// Copies the tables of `diffusion` to `device` in f32; `timestep_map` maps step k to the
    /// network's t.
    pub fn new(diffusion: &GaussianDiffusion, timestep_map: &[usize], device: Device) -> Self {
        Self::with_kind(diffusion, timestep_map, device, Kind::Float)
    }

    /// As [`DeviceTables::new`] with tables of another floating kind (f64 for reference checks).
    pub fn with_kind(
        diffusion: &GaussianDiffusion,
        timestep_map: &[usize],
        device: Device,
        kind: Kind,
    ) -> Self {
        assert_eq!(
            timestep_map.len(),
            diffusion.num_timesteps(),
            "one original index per step"
        );
        let map: Vec<i64> = timestep_map.iter().map(|&t| t as i64).collect();
        let d = diffusion;
        Self {
            mean_type: d.mean_type(),
            var_type: d.var_type(),
            num_timesteps: d.num_timesteps(),
            timestep_map: Tensor::from_slice(&map).to_device(device),
            log_betas: to_device(d.log_betas(), device, kind),
            alphas_cumprod: to_device(d.alphas_cumprod(), device, kind),
            alphas_cumprod_prev: to_device(d.alphas_cumprod_prev(), device, kind),
            sqrt_alphas_cumprod: to_device(d.sqrt_alphas_cumprod(), device, kind),
            sqrt_one_minus_alphas_cumprod: to_device(
                d.sqrt_one_minus_alphas_cumprod(),
                device,
                kind,
            ),
            posterior_variance: to_device(d.posterior_variance(), device, kind),
            posterior_log_variance_clipped: to_device(
                d.posterior_log_variance_clipped(),
                device,
                kind,
            ),
            posterior_mean_coef1: to_device(d.posterior_mean_coef1(), device, kind),
            posterior_mean_coef2: to_device(d.posterior_mean_coef2(), device, kind),
            fixed_large_variance: to_device(d.fixed_large_variance(), device, kind),
            fixed_large_log_variance: to_device(d.fixed_large_log_variance(), device, kind),
            mse_weights: None,
        }
    }

    /// These tables with per-step weights `[T]` of the MSE term (e.g. ddpm-math's
    /// `min_snr_weights`, indexed like the tables), applied by
    /// [`training_losses`](crate::objective::training_losses); `None` removes them.
    ///
    /// # Panics
    /// If `weights` does not have one value per step.
    pub fn with_mse_weights(mut self, weights: Option<&ndarray::Array1<f64>>) -> Self {
        let kind = self.alphas_cumprod.kind();
        let device = self.alphas_cumprod.device();
        self.mse_weights = weights.map(|w| {
            assert_eq!(w.len(), self.num_timesteps, "one MSE weight per step");
            to_device(w, device, kind)
        });
        self
    }

    /// The MSE weights of the timesteps `t: [N]` as `[N]` (float), or `None` when unweighted.
    pub fn mse_weight(&self, t: &Tensor) -> Option<Tensor> {
        self.mse_weights
            .as_ref()
            .map(|w| w.index_select(0, t).to_kind(Kind::Float))
    }

    /// Tables of an unrespaced diffusion.
    pub fn full(diffusion: &GaussianDiffusion, device: Device) -> Self {
        let map: Vec<usize> = (0..diffusion.num_timesteps()).collect();
        Self::new(diffusion, &map, device)
    }

    /// Number of steps.
    pub fn num_timesteps(&self) -> usize {
        self.num_timesteps
    }

    /// The variance type.
    pub fn var_type(&self) -> ModelVarType {
        self.var_type
    }

    /// `table[t]` reshaped to `[N, 1, …, 1]` so that it broadcasts over `like` (the
    /// `_extract_into_tensor` of improved-diffusion).
    pub fn extract(table: &Tensor, t: &Tensor, like: &Tensor) -> Tensor {
        let mut shape = vec![t.size()[0]];
        shape.extend(std::iter::repeat_n(1, like.dim() - 1));
        table
            .index_select(0, t)
            .view(shape.as_slice())
            .to_kind(like.kind())
    }

    /// `x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε` (ddpm-math `q_sample`).
    pub fn q_sample(&self, x_start: &Tensor, t: &Tensor, noise: &Tensor) -> Tensor {
        Self::extract(&self.sqrt_alphas_cumprod, t, x_start) * x_start
            + Self::extract(&self.sqrt_one_minus_alphas_cumprod, t, x_start) * noise
    }

    /// `q(x_{t−1} | x_t, x_0)` (ddpm-math `q_posterior_mean_variance`).
    pub fn q_posterior(&self, x_start: &Tensor, x_t: &Tensor, t: &Tensor) -> Gaussian {
        Gaussian {
            mean: Self::extract(&self.posterior_mean_coef1, t, x_t) * x_start
                + Self::extract(&self.posterior_mean_coef2, t, x_t) * x_t,
            variance: Self::extract(&self.posterior_variance, t, x_t),
            log_variance: Self::extract(&self.posterior_log_variance_clipped, t, x_t),
        }
    }

    /// `x_0 = (x_t − √(1 − ᾱ) ε)/√ᾱ` (ddpm-math `predict_xstart_from_eps`; `±∞` at `ᾱ = 0`).
    pub fn xstart_from_eps(&self, x_t: &Tensor, t: &Tensor, eps: &Tensor) -> Tensor {
        (x_t - Self::extract(&self.sqrt_one_minus_alphas_cumprod, t, x_t) * eps)
            / Self::extract(&self.sqrt_alphas_cumprod, t, x_t)
    }

    /// `ε = (x_t − √ᾱ x_0)/√(1 − ᾱ)` (ddpm-math `predict_eps_from_xstart`; `x_t` at `ᾱ = 0`).
    pub fn eps_from_xstart(&self, x_t: &Tensor, t: &Tensor, x_start: &Tensor) -> Tensor {
        (x_t - Self::extract(&self.sqrt_alphas_cumprod, t, x_t) * x_start)
            / Self::extract(&self.sqrt_one_minus_alphas_cumprod, t, x_t)
    }

    /// `ε = √ᾱ v + √(1 − ᾱ) x_t` (ddpm-math `predict_eps_from_v`).
    pub fn eps_from_v(&self, x_t: &Tensor, t: &Tensor, v: &Tensor) -> Tensor {
        Self::extract(&self.sqrt_alphas_cumprod, t, x_t) * v
            + Self::extract(&self.sqrt_one_minus_alphas_cumprod, t, x_t) * x_t
    }

    /// `x_0 = √ᾱ x_t − √(1 − ᾱ) v`.
    pub fn xstart_from_v(&self, x_t: &Tensor, t: &Tensor, v: &Tensor) -> Tensor {
        Self::extract(&self.sqrt_alphas_cumprod, t, x_t) * x_t
            - Self::extract(&self.sqrt_one_minus_alphas_cumprod, t, x_t) * v
    }

    /// `v = √ᾱ ε − √(1 − ᾱ) x_0`.
    pub fn v_target(&self, x_start: &Tensor, t: &Tensor, noise: &Tensor) -> Tensor {
        Self::extract(&self.sqrt_alphas_cumprod, t, x_start) * noise
            - Self::extract(&self.sqrt_one_minus_alphas_cumprod, t, x_start) * x_start
    }

    /// The regression target of the mean type (ε, x_0 or v).
    pub fn target(&self, x_start: &Tensor, t: &Tensor, noise: &Tensor) -> Tensor {
        match self.mean_type {
            ModelMeanType::Epsilon => noise.shallow_clone(),
            ModelMeanType::StartX => x_start.shallow_clone(),
            ModelMeanType::V => self.v_target(x_start, t, noise),
        }
    }

    /// Splits a model output into (mean part, variance part) along channels for learned variances.
    pub fn split_output(&self, model_output: &Tensor) -> (Tensor, Option<Tensor>) {
        if self.var_type.is_learned() {
            let c = model_output.size()[1] / 2;
            let parts = model_output.split(c, 1);
            (parts[0].shallow_clone(), Some(parts[1].shallow_clone()))
        } else {
            (model_output.shallow_clone(), None)
        }
    }

    /// `p_θ(x_{t−1} | x_t)` from a model output (ddpm-math `p_mean_variance`); `clip` clamps x̂_0
    /// to [−1, 1].
    pub fn p_mean_variance(
        &self,
        model_output: &Tensor,
        x_t: &Tensor,
        t: &Tensor,
        clip: bool,
    ) -> PMean {
        self.p_mean_variance_with(model_output, x_t, t, |x0| {
            if clip {
                x0.clamp(-1.0, 1.0)
            } else {
                x0
            }
        })
    }

    /// The x̂_0 of a model output's mean part by the mean type (ε: ddpm-math
    /// `predict_xstart_from_eps`; v: `predict_xstart_from_v`).
    pub fn xstart_from_output(&self, mean_out: &Tensor, x_t: &Tensor, t: &Tensor) -> Tensor {
        match self.mean_type {
            ModelMeanType::Epsilon => self.xstart_from_eps(x_t, t, mean_out),
            ModelMeanType::StartX => mean_out.shallow_clone(),
            ModelMeanType::V => self.xstart_from_v(x_t, t, mean_out),
        }
    }

    /// The ε̂ of a model output (its mean part) by the mean type, from the unprocessed prediction.
    pub fn eps_from_output(&self, model_output: &Tensor, x_t: &Tensor, t: &Tensor) -> Tensor {
        let (mean_out, _) = self.split_output(model_output);
        match self.mean_type {
            ModelMeanType::Epsilon => mean_out,
            ModelMeanType::StartX => self.eps_from_xstart(x_t, t, &mean_out),
            ModelMeanType::V => self.eps_from_v(x_t, t, &mean_out),
        }
    }

    /// [`p_mean_variance`](Self::p_mean_variance) with x̂_0 passed through `process` (clipping,
    /// dynamic thresholding) before the posterior mean.
    pub fn p_mean_variance_with(
        &self,
        model_output: &Tensor,
        x_t: &Tensor,
        t: &Tensor,
        process: impl FnOnce(Tensor) -> Tensor,
    ) -> PMean {
        let (mean_out, var_out) = self.split_output(model_output);
        let (variance, log_variance) = match (self.var_type, var_out) {
            (ModelVarType::Learned, Some(v)) => (v.exp(), v),
            (ModelVarType::LearnedRange, Some(v)) => {
                let min_log = Self::extract(&self.posterior_log_variance_clipped, t, x_t);
                let max_log = Self::extract(&self.log_betas, t, x_t);
                let frac = (v + 1.0) / 2.0;
                let lv: Tensor = &frac * max_log + (-&frac + 1.0) * min_log;
                (lv.exp(), lv)
            }
            (ModelVarType::FixedSmall, _) => (
                Self::extract(&self.posterior_variance, t, x_t).expand_as(x_t),
                Self::extract(&self.posterior_log_variance_clipped, t, x_t).expand_as(x_t),
            ),
            (ModelVarType::FixedLarge, _) => (
                Self::extract(&self.fixed_large_variance, t, x_t).expand_as(x_t),
                Self::extract(&self.fixed_large_log_variance, t, x_t).expand_as(x_t),
            ),
            (_, None) => unreachable!("learned variance types always split the output"),
        };
        let pred_xstart = process(self.xstart_from_output(&mean_out, x_t, t));
        let mean = self.q_posterior(&pred_xstart, x_t, t).mean;
        PMean {
            dist: Gaussian {
                mean,
                variance,
                log_variance,
            },
            pred_xstart,
        }
    }

    /// One ancestral step `x_{t−1} = μ + 1[t ≠ 0] σ z`.
    pub fn p_sample(&self, p: &PMean, t: &Tensor, noise: &Tensor) -> Tensor {
        let x = &p.dist.mean;
        x + nonzero_mask(t, x) * (&p.dist.log_variance * 0.5).exp() * noise
    }

    /// One DDIM step with `η` (Song et al. 2021, eq. 12; ddpm-math `ddim_sample`).
    pub fn ddim_step(
        &self,
        p: &PMean,
        x_t: &Tensor,
        t: &Tensor,
        eta: f64,
        noise: &Tensor,
    ) -> Tensor {
        let eps = self.eps_from_xstart(x_t, t, &p.pred_xstart);
        let a_prev = Self::extract(&self.alphas_cumprod_prev, t, x_t);
        let noise = nonzero_mask(t, x_t) * noise;
        self.ddim_update(&p.pred_xstart, &eps, t, &a_prev, eta, Some(&noise))
    }

    /// The DDIM update from x̂_0 and ε̂ towards ᾱ_prev (`[N, 1, …]`, any value in (0, 1]):
    /// `√ᾱ_prev x̂_0 + √(1 − ᾱ_prev − σ²) ε̂ + σ z`,
    /// `σ = η √((1 − ᾱ_prev)/(1 − ᾱ_t)) √(1 − ᾱ_t/ᾱ_prev)` (Song et al. 2021, eq. 12 and 16).
    pub fn ddim_update(
        &self,
        pred_xstart: &Tensor,
        eps: &Tensor,
        t: &Tensor,
        a_prev: &Tensor,
        eta: f64,
        noise: Option<&Tensor>,
    ) -> Tensor {
        let a = Self::extract(&self.alphas_cumprod, t, pred_xstart);
        let sigma: Tensor =
            ((-a_prev + 1.0) / (-&a + 1.0)).sqrt() * (-(&a / a_prev) + 1.0).sqrt() * eta;
        let mean = pred_xstart * a_prev.sqrt()
            + (-a_prev + 1.0 - sigma.square()).clamp_min(0.0).sqrt() * eps;
        match noise {
            Some(z) => mean + sigma * z,
            None => mean,
        }
    }

    /// Variational-bound term `L_t` in bits/dim per sample `[N]` (ddpm-math `vb_terms_bpd`):
    /// KL(q(x_{t−1}|x_t,x_0) ‖ p_θ) for t > 0 and the discretised decoder NLL at t = 0.
    pub fn vb_terms_bpd(
        &self,
        model_output: &Tensor,
        x_start: &Tensor,
        x_t: &Tensor,
        t: &Tensor,
        clip: bool,
    ) -> Tensor {
        let q = self.q_posterior(x_start, x_t, t);
        let p = self.p_mean_variance(model_output, x_t, t, clip);
        let kl = mean_flat(&normal_kl(
            &q.mean,
            &q.log_variance,
            &p.dist.mean,
            &p.dist.log_variance,
        )) / std::f64::consts::LN_2;
        let nll = -mean_flat(&discretized_gaussian_log_likelihood(
            x_start,
            &p.dist.mean,
            &(&p.dist.log_variance * 0.5),
        )) / std::f64::consts::LN_2;
        nll.where_self(&t.eq(0), &kl)
    }

    /// `L_T`: KL(q(x_{T−1}|x_0) ‖ N(0, I)) in bits/dim per sample (ddpm-math `prior_bpd`).
    pub fn prior_bpd(&self, x_start: &Tensor) -> Tensor {
        let n = x_start.size()[0];
        let t = Tensor::full(
            [n],
            self.num_timesteps as i64 - 1,
            (Kind::Int64, x_start.device()),
        );
        let mean = Self::extract(&self.sqrt_alphas_cumprod, &t, x_start) * x_start;
        let log_var = Self::extract(&self.sqrt_one_minus_alphas_cumprod, &t, x_start)
            .square()
            .log()
            .expand_as(x_start);
        let zeros = x_start.zeros_like();
        mean_flat(&normal_kl(&mean, &log_var, &zeros, &zeros)) / std::f64::consts::LN_2
    }
}

/// `1[t ≠ 0]` as `[N, 1, …, 1]` in `like`'s kind.
fn nonzero_mask(t: &Tensor, like: &Tensor) -> Tensor {
    let mut shape = vec![-1i64];
    shape.extend(std::iter::repeat_n(1, like.dim() - 1));
    t.ne(0).to_kind(like.kind()).view(shape.as_slice())
}

/// Mean over every axis but the first: `[N, …] → [N]`.
pub fn mean_flat(x: &Tensor) -> Tensor {
    let dims: Vec<i64> = (1..x.dim() as i64).collect();
    x.mean_dim(dims.as_slice(), false, x.kind())
}

/// KL(N(μ₁, e^{lv₁}) ‖ N(μ₂, e^{lv₂})) elementwise, in nats (ddpm-math `normal_kl`).
pub fn normal_kl(mean1: &Tensor, logvar1: &Tensor, mean2: &Tensor, logvar2: &Tensor) -> Tensor {
    ((logvar2 - logvar1) - 1.0
        + (logvar1 - logvar2).exp()
        + (mean1 - mean2).square() * (-logvar2).exp())
        * 0.5
}

/// Φ̃(x) = ½(1 + tanh(√(2/π)(x + 0.044715 x³))) (ddpm-math `approx_standard_normal_cdf`).
pub fn approx_standard_normal_cdf(x: &Tensor) -> Tensor {
    let c = (2.0 / std::f64::consts::PI).sqrt();
    (((x + x.pow_tensor_scalar(3) * 0.044715) * c).tanh() + 1.0) * 0.5
}

/// log-likelihood of x ∈ [−1, 1] (256 bins of width 2/255) under a discretised Gaussian,
/// elementwise in nats (ddpm-math `discretized_gaussian_log_likelihood`).
pub fn discretized_gaussian_log_likelihood(
    x: &Tensor,
    means: &Tensor,
    log_scales: &Tensor,
) -> Tensor {
    let centered = x - means;
    let inv_stdv = (-log_scales).exp();
    let cdf_plus = approx_standard_normal_cdf(&(&inv_stdv * (&centered + 1.0 / 255.0)));
    let cdf_min = approx_standard_normal_cdf(&(&inv_stdv * (&centered - 1.0 / 255.0)));
    let log_cdf_plus = cdf_plus.clamp_min(1e-12).log();
    let log_one_minus_cdf_min = (-&cdf_min + 1.0).clamp_min(1e-12).log();
    let log_delta = (&cdf_plus - &cdf_min).clamp_min(1e-12).log();
    let upper = log_one_minus_cdf_min.where_self(&x.gt(0.999), &log_delta);
    log_cdf_plus.where_self(&x.lt(-0.999), &upper)
}
