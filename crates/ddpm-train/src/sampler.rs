//! Sampling from a trained network: ancestral DDPM (fixed-small, fixed-large or learned
//! variance) on the full or a respaced chain, and DDIM with η; classifier-free guidance; the x̂₀
//! processing of diffusers' schedulers (clipping to a range, dynamic thresholding) and their
//! timestep spacings, so that a diffusers `scheduler_config.json` is followed as diffusers does.
use ddpm_math::{
    dpm_solver_timesteps, space_timesteps, DpmSolverOptions, DpmSolverPlusPlus, DpmSolverStep,
    GaussianDiffusion, ModelVarType, SpacedDiffusion,
};
use tch::{Device, Kind, Tensor};

use crate::error::{Result, TrainError};
use crate::tables::{DeviceTables, PMean};

/// Which reverse process to run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SamplerKind {
    /// Ancestral sampling `x_{t−1} ~ p_θ(x_{t−1}|x_t)` (Ho et al. 2020, Algorithm 2).
    Ddpm,
    /// DDIM (Song et al. 2021) with stochasticity η (0 = deterministic).
    Ddim {
        /// η.
        eta: f64,
    },
    /// DPM-Solver++(2M) (Lu et al. 2022; ddpm-math `DpmSolverPlusPlus`), deterministic.
    DpmSolverPlusPlus,
}

/// What is done to the predicted x̂₀ before it enters the posterior mean (diffusers'
/// `clip_sample` / `clip_sample_range` / `thresholding` settings).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum X0Processing {
    /// x̂₀ is used as predicted.
    None,
    /// x̂₀ is clamped to `[−range, range]` (`range` = 1 is DDPM's clipping to the data range).
    Clip {
        /// The bound, > 0.
        range: f64,
    },
    /// Dynamic thresholding (Saharia et al. 2022, Imagen §2.3): per image, `s` = the `ratio`
    /// quantile of `|x̂₀|`, clamped to `[1, max_value]`; then `x̂₀ ← clamp(x̂₀, −s, s)/s`.
    DynamicThreshold {
        /// The quantile, in (0, 1].
        ratio: f64,
        /// The largest `s`, ≥ 1.
        max_value: f64,
    },
}

impl X0Processing {
    /// DDPM's default: clip to [−1, 1] when `clip`, else nothing.
    pub fn clip(clip: bool) -> Self {
        if clip {
            X0Processing::Clip { range: 1.0 }
        } else {
            X0Processing::None
        }
    }

    /// Checks the parameters; errors name the setting as `key(name)` gives it (e.g.
    /// `diffusion.clip_sample_range`) and the value.
    pub fn validate(self, key: impl Fn(&str) -> String) -> Result<Self> {
        let bad = |what: &str, v: f64, why: &str| {
            Err(TrainError::config(&key(what), format!("{v} {why}")))
        };
        match self {
            X0Processing::Clip { range } if !(range > 0.0 && range.is_finite()) => {
                bad("clip_sample_range", range, "must be a finite number > 0")
            }
            X0Processing::DynamicThreshold { ratio, .. } if !(ratio > 0.0 && ratio <= 1.0) => {
                bad("dynamic_thresholding_ratio", ratio, "must lie in (0, 1]")
            }
            X0Processing::DynamicThreshold { max_value, .. }
                if !(max_value >= 1.0 && max_value.is_finite()) =>
            {
                bad(
                    "sample_max_value",
                    max_value,
                    "must be a finite number >= 1",
                )
            }
            ok => Ok(ok),
        }
    }

    /// Applies the processing to x̂₀ `[N, …]`.
    pub fn apply(self, x0: Tensor) -> Tensor {
        match self {
            X0Processing::None => x0,
            X0Processing::Clip { range } => x0.clamp(-range, range),
            X0Processing::DynamicThreshold { ratio, max_value } => {
                let n = x0.size()[0];
                let kind = x0.kind();
                let flat = x0.to_kind(Kind::Float).reshape([n, -1]);
                let s = flat
                    .abs()
                    .quantile_scalar(ratio, Some(1), true, "linear")
                    .clamp(1.0, max_value);
                let out = flat.clamp_tensor(Some(&-&s), Some(&s)) / &s;
                out.reshape(x0.size().as_slice()).to_kind(kind)
            }
        }
    }

    /// A short label, e.g. `clip1`, `noclip`, `threshold0.995x1`.
    pub fn label(self) -> String {
        match self {
            X0Processing::None => "noclip".into(),
            X0Processing::Clip { range } => format!("clip{range}"),
            X0Processing::DynamicThreshold { ratio, max_value } => {
                format!("threshold{ratio}x{max_value}")
            }
        }
    }
}

/// diffusers' `timestep_spacing`: how `set_timesteps(n)` picks n of the T training timesteps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestepSpacing {
    /// `round(linspace(0, T − 1, n))`.
    Linspace,
    /// `i · (T div n) + steps_offset` for i = 0 … n − 1 (Stable Diffusion's default).
    Leading,
    /// `round(T − i·T/n) − 1` for i = 0 … n − 1 (Lin et al. 2024, table 2).
    Trailing,
}

impl TimestepSpacing {
    /// diffusers' name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Linspace => "linspace",
            Self::Leading => "leading",
            Self::Trailing => "trailing",
        }
    }

    /// Parses diffusers' names `linspace`, `leading`, `trailing`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "linspace" => Some(Self::Linspace),
            "leading" => Some(Self::Leading),
            "trailing" => Some(Self::Trailing),
            _ => None,
        }
    }
}

/// The sampling settings of a diffusers scheduler config that decide the chain, beyond the
/// diffusion itself.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DiffusersTimesteps {
    /// `timestep_spacing`.
    pub spacing: TimestepSpacing,
    /// `steps_offset` (added by the `leading` spacing only, as diffusers does).
    pub steps_offset: usize,
    /// DDIM's `set_alpha_to_one`: ᾱ after the last step is 1 (else ᾱ_0).
    pub set_alpha_to_one: bool,
    /// DPM-Solver's `final_sigmas_type`, `lower_order_final`, `euler_at_final`.
    pub dpm_solver: DpmSolverOptions,
    /// `rescale_betas_zero_snr` (DPM-Solver then samples with ᾱ_{T−1} = 2⁻²⁴, as diffusers does).
    pub rescale_betas_zero_snr: bool,
}

impl DiffusersTimesteps {
    /// The timesteps diffusers' `set_timesteps(n)` visits for `T` training timesteps, increasing.
    ///
    /// # Errors
    /// `n` < 2 or > T, or a timestep that falls outside `0..T` (a `steps_offset` too large).
    pub fn timesteps(&self, num_train_timesteps: usize, n: usize) -> Result<Vec<usize>> {
        let t = num_train_timesteps;
        if n < 2 || n > t {
            return Err(TrainError::config(
                "steps",
                format!(
                    "{n} sampling steps: a scheduler with {t} training timesteps takes 2 to {t}"
                ),
            ));
        }
        let raw: Vec<i64> = match self.spacing {
            TimestepSpacing::Linspace => (0..n)
                .map(|i| {
                    let step = if n == 1 {
                        0.0
                    } else {
                        (t - 1) as f64 / (n - 1) as f64
                    };
                    let v = if i + 1 == n && n > 1 {
                        (t - 1) as f64
                    } else {
                        i as f64 * step
                    };
                    v.round_ties_even() as i64
                })
                .collect(),
            TimestepSpacing::Leading => (0..n)
                .map(|i| (i * (t / n) + self.steps_offset) as i64)
                .collect(),
            TimestepSpacing::Trailing => {
                let ratio = t as f64 / n as f64;
                // numpy's arange(T, 0, −T/n) has ceil(T/(T/n)) elements, which rounding makes
                // n + 1 for some (T, n) (e.g. 1000, 61); diffusers then visits timestep −1, i.e.
                // wraps to ᾱ_{T−1}. Refused rather than imitated.
                if (t as f64 / ratio).ceil() as usize != n {
                    return Err(TrainError::config(
                        "scheduler config timestep_spacing",
                        format!(
                            "`trailing` with {t} timesteps and {n} steps makes diffusers visit \
                             timestep -1 (a rounding in numpy's arange); choose another number of steps"
                        ),
                    ));
                }
                let mut v: Vec<i64> = (0..n)
                    .map(|i| (t as f64 - i as f64 * ratio).round_ties_even() as i64 - 1)
                    .collect();
                v.reverse();
                v
            }
        };
        if let Some(&bad) = raw.iter().find(|&&v| v < 0 || v >= t as i64) {
            return Err(TrainError::config(
                "scheduler config steps_offset",
                format!(
                    "{} with `{}` spacing and {n} steps puts timestep {bad} outside 0..{t}",
                    self.steps_offset,
                    self.spacing.name()
                ),
            ));
        }
        let mut out: Vec<usize> = raw.into_iter().map(|v| v as usize).collect();
        out.dedup();
        Ok(out)
    }
}

/// Which conventions the chain follows where improved-diffusion and diffusers differ.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Convention {
    /// improved-diffusion (our runs): DDIM steps to the next kept timestep (ᾱ = 1 after the last)
    /// and re-derives ε̂ from the processed x̂₀.
    ImprovedDiffusion,
    /// diffusers' `DDIMScheduler`: DDIM steps from t to `t − T div n` (ᾱ of `set_alpha_to_one`
    /// below 0) and takes ε̂ from the unprocessed model output (`use_clipped_model_output` off).
    Diffusers {
        /// `T div n`.
        step_ratio: usize,
        /// ᾱ below timestep 0 is 1 (else ᾱ_0).
        set_alpha_to_one: bool,
    },
    /// DPM-Solver++'s end point and last-step order.
    DpmSolver {
        /// `final_sigmas_type`, `lower_order_final`, `euler_at_final`.
        options: DpmSolverOptions,
        /// diffusers' DPM-Solver replaces a terminal ᾱ = 0 by 2⁻²⁴ when the config rescales to
        /// zero terminal SNR; `Some(2⁻²⁴)` does the same here.
        terminal_alpha_bar: Option<f64>,
    },
}

/// A sampler and the timesteps it visits.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerSpec {
    /// Ancestral or DDIM.
    pub kind: SamplerKind,
    /// The kept original timesteps, increasing.
    pub timesteps: Vec<usize>,
    /// What is done to x̂₀ at each step.
    pub x0: X0Processing,
    /// improved-diffusion's or diffusers' conventions.
    pub convention: Convention,
}

/// How a model samples: its x̂₀ processing and, for a diffusers scheduler, how steps are spaced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingSettings {
    /// The x̂₀ processing.
    pub x0: X0Processing,
    /// The model's clipping bound, also when its clipping is off (what `--clip-sample` uses).
    pub clip_sample_range: f64,
    /// The model's dynamic-thresholding quantile and maximum, also when thresholding is off.
    pub threshold: (f64, f64),
    /// `Some` for a diffusers scheduler config: `--steps N` follows its `set_timesteps(N)`.
    pub diffusers: Option<DiffusersTimesteps>,
    /// `x0` was asked for on the command line (then DPM-Solver++ applies it even to a diffusers
    /// config, whose own clipping only DDPM/DDIM read).
    pub x0_explicit: bool,
}

impl Default for SamplingSettings {
    fn default() -> Self {
        Self {
            x0: X0Processing::Clip { range: 1.0 },
            clip_sample_range: 1.0,
            threshold: (0.995, 1.0),
            diffusers: None,
            x0_explicit: false,
        }
    }
}

impl SamplerSpec {
    /// Parses a config-style spec: `ddimN` = DDIM (η = 0) on the `ddimN` respacing; `dpm++N` =
    /// DPM-Solver++(2M) with N steps; anything else (`1000`, `100`, `10,20,30`) = ancestral
    /// sampling on that respacing; x̂₀ clipped to [−1, 1].
    pub fn parse(spec: &str, num_timesteps: usize) -> Result<Self> {
        if let Some(n) = spec.strip_prefix("dpm++") {
            return Self::dpm_solver(n, num_timesteps, &SamplingSettings::default());
        }
        let kind = if spec.starts_with("ddim") {
            SamplerKind::Ddim { eta: 0.0 }
        } else {
            SamplerKind::Ddpm
        };
        let timesteps = space_timesteps(num_timesteps, spec)?;
        check_chain_length(spec, &timesteps)?;
        Ok(Self {
            kind,
            timesteps,
            x0: X0Processing::Clip { range: 1.0 },
            convention: Convention::ImprovedDiffusion,
        })
    }

    /// The command line's form: `--sampler ddpm|ddim --steps SPEC [--eta E]`. For DDIM a plain
    /// number N means the evenly strided `ddimN` chain when T allows it. With diffusers settings a
    /// plain number N is diffusers' `set_timesteps(N)` (other specs are refused).
    pub fn from_cli(
        sampler: &str,
        steps: &str,
        eta: f64,
        num_timesteps: usize,
        settings: &SamplingSettings,
    ) -> Result<Self> {
        let kind = match sampler {
            "ddpm" => SamplerKind::Ddpm,
            "ddim" => SamplerKind::Ddim { eta },
            "dpm++" | "dpmsolver++" => SamplerKind::DpmSolverPlusPlus,
            other => {
                return Err(TrainError::config(
                    "sampler",
                    format!("`{other}` is not ddpm, ddim or dpm++"),
                ))
            }
        };
        if kind == SamplerKind::DpmSolverPlusPlus {
            return Self::dpm_solver(steps, num_timesteps, settings);
        }
        if let Some(d) = settings.diffusers {
            let n = steps.trim().parse::<usize>().map_err(|_| {
                TrainError::config(
                    "steps",
                    format!("`{steps}`: a diffusers scheduler takes a number of steps"),
                )
            })?;
            return Ok(Self {
                kind,
                timesteps: d.timesteps(num_timesteps, n)?,
                x0: settings.x0,
                convention: Convention::Diffusers {
                    step_ratio: num_timesteps / n,
                    set_alpha_to_one: d.set_alpha_to_one,
                },
            });
        }
        let timesteps = match (kind, steps.parse::<usize>()) {
            (SamplerKind::Ddim { .. }, Ok(n)) => {
                space_timesteps(num_timesteps, &format!("ddim{n}"))
                    .or_else(|_| space_timesteps(num_timesteps, steps))?
            }
            _ => space_timesteps(num_timesteps, steps)?,
        };
        check_chain_length(steps, &timesteps)?;
        Ok(Self {
            kind,
            timesteps,
            x0: settings.x0,
            convention: Convention::ImprovedDiffusion,
        })
    }

    /// DPM-Solver++ over `steps` = N of diffusers' `linspace` timesteps. With a diffusers config
    /// the x̂₀ processing is its thresholding or none (`DPMSolverMultistepScheduler` never clips),
    /// and its spacing must be `linspace`.
    fn dpm_solver(steps: &str, num_timesteps: usize, settings: &SamplingSettings) -> Result<Self> {
        let n = steps.trim().parse::<usize>().map_err(|_| {
            TrainError::config("steps", format!("`{steps}`: dpm++ takes a number of steps"))
        })?;
        let (x0, options, terminal_alpha_bar) = match settings.diffusers {
            None => (settings.x0, DpmSolverOptions::default(), None),
            Some(d) => {
                if d.spacing != TimestepSpacing::Linspace {
                    return Err(TrainError::config(
                        "timestep_spacing",
                        format!(
                            "`{}` with --sampler dpm++: only DPM-Solver's `linspace` spacing is \
                             implemented",
                            d.spacing.name()
                        ),
                    ));
                }
                let x0 = match settings.x0 {
                    x0 if settings.x0_explicit => x0,
                    t @ X0Processing::DynamicThreshold { .. } => t,
                    _ => X0Processing::None,
                };
                let terminal = d.rescale_betas_zero_snr.then_some(2f64.powi(-24));
                (x0, d.dpm_solver, terminal)
            }
        };
        if n < 2 {
            return Err(TrainError::config(
                "steps",
                format!("dpm++{n}: a sampling chain takes at least 2 steps"),
            ));
        }
        let mut timesteps = dpm_solver_timesteps(num_timesteps, n)?;
        timesteps.reverse();
        Ok(Self {
            kind: SamplerKind::DpmSolverPlusPlus,
            timesteps,
            x0,
            convention: Convention::DpmSolver {
                options,
                terminal_alpha_bar,
            },
        })
    }

    /// A short human-readable name, e.g. `ddim50` or `ddpm1000`.
    pub fn label(&self) -> String {
        match self.kind {
            SamplerKind::DpmSolverPlusPlus => format!("dpm++{}", self.timesteps.len()),
            SamplerKind::Ddpm => format!("ddpm{}", self.timesteps.len()),
            SamplerKind::Ddim { eta: 0.0 } => format!("ddim{}", self.timesteps.len()),
            SamplerKind::Ddim { eta } => format!("ddim{}-eta{eta}", self.timesteps.len()),
        }
    }
}

/// Classifier-free guidance: class labels and the guidance weight w (ε = ε_∅ + w (ε_c − ε_∅)).
#[derive(Debug, Clone, Copy)]
pub struct Guidance {
    /// Class to draw.
    pub class: i64,
    /// The null label the model was trained with when the label was dropped.
    pub null_class: i64,
    /// Guidance weight w (1 = plain conditional sampling).
    pub weight: f64,
}

/// A prepared sampler for one diffusion and one spec.
pub struct Sampler {
    tables: DeviceTables,
    kind: SamplerKind,
    x0: X0Processing,
    convention: Convention,
    /// Original timestep of each step k.
    timesteps: Vec<usize>,
    /// DDIM's ᾱ before each step k, `[steps]` on the device.
    ddim_alphas_prev: Tensor,
    /// DDIM's σ_k (host copy, to know when noise is needed).
    ddim_sigmas: Vec<f64>,
    /// The ancestral std of step 0 when the chain ends above t = 0 (diffusers' `leading` spacing
    /// with a `steps_offset`): fixed-small 0, fixed-large √β̂_0.
    final_std: f64,
    /// DPM-Solver++'s coefficients, in chain order.
    dpm_steps: Vec<DpmSolverStep>,
    /// A chain stops with [`TrainError::Stopped`] once this is set (checked before each step).
    stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

/// What a sampling call returns.
pub struct Samples {
    /// Final samples in [−1, 1], `[N, C, H, W]`.
    pub images: Tensor,
    /// The final chain state before the clamp to [−1, 1], `[N, C, H, W]`.
    pub raw: Tensor,
    /// Snapshots of the first chain, from x_T towards x_0 (when asked for).
    pub trajectory: Vec<Tensor>,
}

impl Sampler {
    /// Respaces `diffusion` to the spec's timesteps and moves the tables to `device`.
    ///
    /// # Errors
    /// A bad respacing or x̂₀ setting; DDIM's η outside [0, 1]; ε-prediction without clipping on a
    /// chain that starts at ᾱ_{T−1} = 0 (x̂₀ = ±∞ there; clipping gives the "clamped first step",
    /// nothing else gives a finite one); a learned variance on a chain that ends above t = 0.
    pub fn new(diffusion: &GaussianDiffusion, spec: &SamplerSpec, device: Device) -> Result<Self> {
        let x0 = spec.x0.validate(|k| format!("sampling {k}"))?;
        let patched = match spec.convention {
            Convention::DpmSolver {
                terminal_alpha_bar: Some(a),
                ..
            } => with_terminal_alpha_bar(diffusion, a)?,
            _ => None,
        };
        let diffusion = patched.as_ref().unwrap_or(diffusion);
        check_zero_snr(diffusion, spec)?;
        let spaced = SpacedDiffusion::new(diffusion, &spec.timesteps)?;
        let d = spaced.diffusion();
        let alpha_bar = d.alphas_cumprod();
        let alphas_prev: Vec<f64> = match spec.convention {
            Convention::ImprovedDiffusion | Convention::DpmSolver { .. } => {
                d.alphas_cumprod_prev().to_vec()
            }
            Convention::Diffusers {
                step_ratio,
                set_alpha_to_one,
            } => {
                let base = diffusion.alphas_cumprod();
                let last = if set_alpha_to_one { 1.0 } else { base[0] };
                spec.timesteps
                    .iter()
                    .map(|&t| t.checked_sub(step_ratio).map_or(last, |p| base[p]))
                    .collect()
            }
        };
        let eta = match spec.kind {
            SamplerKind::Ddim { eta } if !(0.0..=1.0).contains(&eta) => {
                return Err(TrainError::config(
                    "eta",
                    format!("{eta} is outside [0, 1]"),
                ))
            }
            SamplerKind::Ddim { eta } => eta,
            SamplerKind::Ddpm | SamplerKind::DpmSolverPlusPlus => 0.0,
        };
        let dpm_steps = match (spec.kind, spec.convention) {
            (SamplerKind::DpmSolverPlusPlus, convention) => {
                let options = match convention {
                    Convention::DpmSolver { options, .. } => options,
                    _ => DpmSolverOptions::default(),
                };
                let desc: Vec<usize> = spec.timesteps.iter().rev().copied().collect();
                DpmSolverPlusPlus::new(diffusion, &desc, options)?
                    .steps()
                    .to_vec()
            }
            _ => Vec::new(),
        };
        let ddim_sigmas = alphas_prev
            .iter()
            .zip(alpha_bar.iter())
            .map(|(&ap, &a)| eta * ((1.0 - ap) / (1.0 - a)).sqrt() * (1.0 - a / ap).sqrt())
            .collect();
        let ends_above_zero = spec.timesteps[0] > 0;
        let final_std = match (spec.kind, d.var_type()) {
            (SamplerKind::Ddpm, ModelVarType::FixedLarge) if ends_above_zero => d.betas()[0].sqrt(),
            (SamplerKind::Ddpm, v) if ends_above_zero && v.is_learned() => {
                return Err(TrainError::config(
                    "steps_offset",
                    format!(
                        "the chain ends at timestep {} > 0, where a learned variance has no defined \
                         last step; use the `linspace` or `trailing` spacing or steps_offset 0",
                        spec.timesteps[0]
                    ),
                ))
            }
            _ => 0.0,
        };
        Ok(Self {
            tables: DeviceTables::new(d, spaced.timestep_map(), device),
            kind: spec.kind,
            x0,
            convention: spec.convention,
            timesteps: spec.timesteps.clone(),
            ddim_alphas_prev: Tensor::from_slice(&alphas_prev)
                .to_kind(Kind::Float)
                .to_device(device),
            ddim_sigmas,
            final_std,
            dpm_steps,
            stop: None,
        })
    }

    /// Chains of this sampler end with [`TrainError::Stopped`] at the first step after `stop`
    /// is set (e.g. by Ctrl-C), instead of running to x_0.
    pub fn stop_on(mut self, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> Self {
        self.stop = Some(stop);
        self
    }

    /// Number of network evaluations per image (doubled by guidance).
    pub fn num_steps(&self) -> usize {
        self.tables.num_timesteps()
    }

    /// Number of steps of a chain that draw noise (the calls of `step_noise` in
    /// [`sample_with_noise`](Self::sample_with_noise)): ancestral steps above t = 0, DDIM steps
    /// with σ > 0 (η > 0); none for DPM-Solver++.
    pub fn noise_steps(&self) -> usize {
        let steps = self.tables.num_timesteps();
        match self.kind {
            SamplerKind::Ddpm => self.timesteps.iter().filter(|&&t| t != 0).count(),
            SamplerKind::Ddim { .. } => self.ddim_sigmas.iter().filter(|&&s| s > 0.0).count(),
            SamplerKind::DpmSolverPlusPlus => 0,
        }
        .min(steps)
    }

    /// Runs the chain from x_T = `noise` with `model(x_t, t_original, labels) → output`, drawing
    /// the per-step noise from the torch generator. `keep_trajectory` snapshots of chain 0 are
    /// returned (0 = none). `on_step` is called after each step with the number done. Runs under
    /// `no_grad`.
    ///
    /// # Errors
    /// A NaN or infinite value in the chain, naming the first step (and its timestep) where it
    /// appeared; [`TrainError::Stopped`] after a stop request (see [`Sampler::stop_on`]).
    pub fn sample<F>(
        &self,
        model: F,
        noise: Tensor,
        guidance: Option<Guidance>,
        keep_trajectory: usize,
        on_step: impl FnMut(usize),
    ) -> Result<Samples>
    where
        F: FnMut(&Tensor, &Tensor, Option<&Tensor>) -> Tensor,
    {
        self.sample_with_noise(
            model,
            noise,
            guidance,
            keep_trajectory,
            on_step,
            |_, like| like.randn_like(),
        )
    }

    /// As [`sample`](Self::sample) with the per-step noise from `step_noise(done, x_t)` (called
    /// only at steps that add noise; `done` counts the steps before it), e.g. to replay another
    /// implementation's chain.
    pub fn sample_with_noise<F>(
        &self,
        mut model: F,
        noise: Tensor,
        guidance: Option<Guidance>,
        keep_trajectory: usize,
        mut on_step: impl FnMut(usize),
        mut step_noise: impl FnMut(usize, &Tensor) -> Tensor,
    ) -> Result<Samples>
    where
        F: FnMut(&Tensor, &Tensor, Option<&Tensor>) -> Tensor,
    {
        let _guard = tch::no_grad_guard();
        let n = noise.size()[0];
        let device = noise.device();
        let steps = self.tables.num_timesteps();
        let every = if keep_trajectory > 0 {
            steps.div_ceil(keep_trajectory).max(1)
        } else {
            usize::MAX
        };
        let mut x = noise;
        let mut trajectory = Vec::new();
        if keep_trajectory > 0 {
            trajectory.push(x.narrow(0, 0, 1).copy());
        }
        let mut finite = Vec::with_capacity(steps);
        let mut prev_x0 = None;
        for (done, k) in (0..steps).rev().enumerate() {
            if self
                .stop
                .as_ref()
                .is_some_and(|s| s.load(std::sync::atomic::Ordering::SeqCst))
            {
                return Err(TrainError::Stopped { step: done, steps });
            }
            let t = Tensor::full([n], k as i64, (Kind::Int64, device));
            let t_model = self.tables.timestep_map.index_select(0, &t);
            let out = match guidance {
                None => model(&x, &t_model, None),
                Some(g) => guided(&mut model, &x, &t_model, g, &self.tables),
            };
            x = self.step(&out, &x, &t, k, &mut prev_x0, |like| step_noise(done, like));
            finite.push(x.isfinite().all());
            if keep_trajectory > 0 && ((done + 1) % every == 0 || k == 0) {
                trajectory.push(x.narrow(0, 0, 1).copy());
            }
            on_step(done + 1);
        }
        self.check_finite(&finite)?;
        Ok(Samples {
            images: x.clamp(-1.0, 1.0),
            raw: x,
            trajectory,
        })
    }

    /// One reverse step at spaced index `k` (`t = [k; N]`).
    fn step(
        &self,
        out: &Tensor,
        x: &Tensor,
        t: &Tensor,
        k: usize,
        prev_x0: &mut Option<Tensor>,
        mut draw: impl FnMut(&Tensor) -> Tensor,
    ) -> Tensor {
        let p = self
            .tables
            .p_mean_variance_with(out, x, t, |x0| self.x0.apply(x0));
        match self.kind {
            SamplerKind::DpmSolverPlusPlus => {
                let c = self.dpm_steps[self.dpm_steps.len() - 1 - k];
                let m = p.pred_xstart;
                let mut next = x * c.x + &m * c.d0;
                if c.order == 2 {
                    let prev = prev_x0
                        .as_ref()
                        .expect("a second-order step follows another");
                    next += (&m - prev) * c.d1;
                }
                *prev_x0 = Some(m);
                next
            }
            SamplerKind::Ddpm if self.timesteps[k] == 0 => p.dist.mean,
            SamplerKind::Ddpm if k == 0 => &p.dist.mean + draw(x) * self.final_std,
            SamplerKind::Ddpm => self.tables.p_sample(&p, t, &draw(x)),
            SamplerKind::Ddim { eta } => {
                let eps = self.ddim_eps(&p, out, x, t);
                let a_prev = DeviceTables::extract(&self.ddim_alphas_prev, t, x);
                let noise = (self.ddim_sigmas[k] > 0.0).then(|| draw(x));
                self.tables
                    .ddim_update(&p.pred_xstart, &eps, t, &a_prev, eta, noise.as_ref())
            }
        }
    }

    /// DDIM's ε̂: from the processed x̂₀ (improved-diffusion) or the raw output (diffusers).
    fn ddim_eps(&self, p: &PMean, out: &Tensor, x: &Tensor, t: &Tensor) -> Tensor {
        match self.convention {
            Convention::ImprovedDiffusion | Convention::DpmSolver { .. } => {
                self.tables.eps_from_xstart(x, t, &p.pred_xstart)
            }
            Convention::Diffusers { .. } => self.tables.eps_from_output(out, x, t),
        }
    }

    /// The error for the first step whose output is not finite.
    fn check_finite(&self, finite: &[Tensor]) -> Result<()> {
        if finite.is_empty() {
            return Ok(());
        }
        let flags = Vec::<bool>::try_from(Tensor::stack(finite, 0).to_device(Device::Cpu))?;
        match flags.iter().position(|ok| !ok) {
            None => Ok(()),
            Some(done) => {
                let k = flags.len() - 1 - done;
                Err(TrainError::SamplingNonFinite {
                    step: done + 1,
                    steps: flags.len(),
                    timestep: self.timesteps[k],
                })
            }
        }
    }
}

/// A chain needs two steps (its respaced diffusion does).
fn check_chain_length(spec: &str, timesteps: &[usize]) -> Result<()> {
    if timesteps.len() < 2 {
        return Err(TrainError::config(
            "steps",
            format!(
                "`{spec}` visits {} timestep(s): a sampling chain takes at least 2",
                timesteps.len()
            ),
        ));
    }
    Ok(())
}

/// The diffusion with a terminal ᾱ = 0 replaced by `alpha_bar` (through the last β), or `None`
/// when its ᾱ_{T−1} is not 0.
fn with_terminal_alpha_bar(
    diffusion: &GaussianDiffusion,
    alpha_bar: f64,
) -> Result<Option<GaussianDiffusion>> {
    let abar = diffusion.alphas_cumprod();
    let last = abar.len() - 1;
    if abar[last] != 0.0 {
        return Ok(None);
    }
    let mut betas = diffusion.betas().clone();
    betas[last] = 1.0 - alpha_bar / abar[last - 1];
    Ok(Some(GaussianDiffusion::new(
        betas,
        diffusion.mean_type(),
        diffusion.var_type(),
        diffusion.loss_type(),
    )?))
}

/// Refuses ε-prediction without x̂₀ processing on a chain that starts at ᾱ = 0.
fn check_zero_snr(diffusion: &GaussianDiffusion, spec: &SamplerSpec) -> Result<()> {
    let last = diffusion.num_timesteps() - 1;
    let starts_at_zero_snr =
        spec.timesteps.last() == Some(&last) && diffusion.alphas_cumprod()[last] == 0.0;
    let clipped = matches!(spec.x0, X0Processing::Clip { .. });
    if starts_at_zero_snr && diffusion.mean_type() == ddpm_math::ModelMeanType::Epsilon && !clipped
    {
        return Err(TrainError::config(
            "clip_sample",
            format!(
                "the schedule reaches alpha_bar = 0 at timestep {last} (zero terminal SNR), where an \
                 epsilon-prediction model's x0 estimate is +-infinity: only clipping makes that \
                 first step finite (dynamic thresholding's quantile of infinities is NaN); sample \
                 with clipping, or use a v- or x0-prediction model"
            ),
        ));
    }
    Ok(())
}

/// One guided model evaluation: the conditional and the null-label outputs in one batch; the mean
/// part is mixed, a learned variance part comes from the conditional output.
fn guided<F>(model: &mut F, x: &Tensor, t: &Tensor, g: Guidance, tables: &DeviceTables) -> Tensor
where
    F: FnMut(&Tensor, &Tensor, Option<&Tensor>) -> Tensor,
{
    let n = x.size()[0];
    let device = x.device();
    let labels = Tensor::cat(
        &[
            Tensor::full([n], g.class, (Kind::Int64, device)),
            Tensor::full([n], g.null_class, (Kind::Int64, device)),
        ],
        0,
    );
    let out = model(
        &Tensor::cat(&[x, x], 0),
        &Tensor::cat(&[t, t], 0),
        Some(&labels),
    );
    let cond = out.narrow(0, 0, n);
    let uncond = out.narrow(0, n, n);
    let (c_mean, c_var) = tables.split_output(&cond);
    let (u_mean, _) = tables.split_output(&uncond);
    let mixed = &u_mean + (&c_mean - &u_mean) * g.weight;
    match c_var {
        Some(v) => Tensor::cat(&[mixed, v], 1),
        None => mixed,
    }
}

/// uint8 images `[N, H, W, C]` from samples in [−1, 1] `[N, C, H, W]` (p = round((x + 1)·127.5)).
pub fn to_uint8_nhwc(x: &Tensor) -> Tensor {
    ((x.clamp(-1.0, 1.0) + 1.0) * 127.5)
        .round()
        .to_kind(Kind::Uint8)
        .permute([0, 2, 3, 1])
        .contiguous()
}
