//! diffusers' `scheduler_config.json`: every key of `DDPMScheduler`, `DDIMScheduler` and
//! `DPMSolverMultistepScheduler` (diffusers 0.42) is either honoured as diffusers defines it or
//! refused with an error naming the key and its value; keys no such scheduler defines are refused
//! by name.
//!
//! The config is read as `DDPMScheduler.from_config(config)` (ancestral sampling) or
//! `DDIMScheduler.from_config(config)` (DDIM) would read it: a key that is absent takes those
//! classes' default (they agree on every shared key). Betas are rounded to f32, as diffusers keeps
//! them; the tables are then built in f64 by ddpm-math.
use std::path::Path;

use ddpm_math::{
    user_betas, BetaSchedule, DpmSolverOptions, FinalSigma, GaussianDiffusion, LossType,
    ModelMeanType, ModelVarType,
};
use serde_json::{Map, Value};

use crate::error::{Result, TrainError};
use crate::sampler::{DiffusersTimesteps, SamplingSettings, TimestepSpacing, X0Processing};

/// What a scheduler config describes: the diffusion and how to sample it.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// The forward process, the prediction type and the variance type.
    pub diffusion: GaussianDiffusion,
    /// x̂₀ processing and the timestep spacing of `set_timesteps`.
    pub sampling: SamplingSettings,
}

/// The scheduler classes whose configs are read.
const CLASSES: [&str; 3] = [
    "DDPMScheduler",
    "DDIMScheduler",
    "DPMSolverMultistepScheduler",
];

/// DPM-Solver settings with diffusers' default: ddpm-rs's `--sampler dpm++` is DPM-Solver++(2M)
/// with exactly these values, so each is accepted at its default and refused otherwise.
const DPM_SOLVER_ONLY: [(&str, &str); 12] = [
    ("solver_order", "2"),
    ("algorithm_type", "\"dpmsolver++\""),
    ("solver_type", "\"midpoint\""),
    ("use_karras_sigmas", "false"),
    ("use_exponential_sigmas", "false"),
    ("use_beta_sigmas", "false"),
    ("use_lu_lambdas", "false"),
    ("use_flow_sigmas", "false"),
    ("flow_shift", "1.0"),
    ("lambda_min_clipped", "\"-Infinity\""),
    ("use_dynamic_shifting", "false"),
    ("time_shift_type", "\"exponential\""),
];

/// The keys honoured (see [`read`] for what each does).
const HONOURED: [&str; 20] = [
    "final_sigmas_type",
    "lower_order_final",
    "euler_at_final",
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "variance_type",
    "clip_sample",
    "clip_sample_range",
    "prediction_type",
    "thresholding",
    "dynamic_thresholding_ratio",
    "sample_max_value",
    "timestep_spacing",
    "steps_offset",
    "set_alpha_to_one",
    "rescale_betas_zero_snr",
    "_class_name",
];

/// The key of ddpm-rs's own metadata in a scheduler config it exported ([`to_json`]); diffusers
/// drops keys that start with `_` before it builds a scheduler.
pub const DDPM_RS_KEY: &str = "_ddpm_rs";

/// The largest `num_train_timesteps` read (the tables take 8 bytes × 20 per timestep).
const MAX_TIMESTEPS: usize = 1_000_000;

/// Reads `path` for a UNet with (`learned_variance`) or without a variance output.
///
/// Honoured: `num_train_timesteps`, `beta_start`, `beta_end`, `beta_schedule` (`linear`,
/// `scaled_linear`, `squaredcos_cap_v2`, `sigmoid`), `trained_betas`, `rescale_betas_zero_snr`
/// (Lin et al. 2024, Algorithm 1), `prediction_type` (`epsilon`, `sample`, `v_prediction`),
/// `variance_type` (`fixed_small`, `fixed_small_log`, `fixed_large`, `learned_range`),
/// `clip_sample`, `clip_sample_range`, `thresholding`, `dynamic_thresholding_ratio`,
/// `sample_max_value`, `timestep_spacing` (`linspace`, `leading`, `trailing`), `steps_offset`,
/// `set_alpha_to_one`; `_class_name` must be one of the three classes; `_diffusers_version` and
/// other `_`-prefixed metadata are ignored.
///
/// # Errors
/// Unreadable or malformed JSON; an unknown key; a value of the wrong type or one that is
/// refused (`variance_type` `learned` or `fixed_large_log`, a DPM-Solver-only setting away from
/// its default, `prediction_type` `flow_prediction`, …); betas that ddpm-math rejects. Each error
/// names the file, the key and the value.
pub fn read(path: &Path, learned_variance: bool) -> Result<SchedulerConfig> {
    let text = std::fs::read_to_string(path).map_err(TrainError::io(path))?;
    let v: Value =
        serde_json::from_str(&quote_non_finite(&text)).map_err(|e| TrainError::Checkpoint {
            path: path.to_path_buf(),
            message: format!("not valid JSON: {e}"),
        })?;
    let map = v.as_object().ok_or_else(|| TrainError::Checkpoint {
        path: path.to_path_buf(),
        message: "is not a JSON object".into(),
    })?;
    from_map(path, map, learned_variance)
}

/// What diffusers' `DDPMScheduler()` (every key at its default) describes, for a diffusers folder
/// without a scheduler config.
pub fn defaults(learned_variance: bool) -> Result<SchedulerConfig> {
    from_map(
        Path::new("(DDPMScheduler defaults)"),
        &Map::new(),
        learned_variance,
    )
}

fn from_map(
    path: &Path,
    map: &Map<String, Value>,
    learned_variance: bool,
) -> Result<SchedulerConfig> {
    let c = Config { path, map };
    c.check_keys()?;
    let exported = c.exported();
    let diffusion = c.diffusion(learned_variance, exported)?;
    // Checked also when unused, like every other key.
    let timesteps = c.timesteps()?;
    let sampling = SamplingSettings {
        x0: c.x0_processing()?,
        clip_sample_range: c.f64("clip_sample_range", 1.0)?,
        threshold: (
            c.f64("dynamic_thresholding_ratio", 0.995)?,
            c.f64("sample_max_value", 1.0)?,
        ),
        diffusers: (!exported).then_some(timesteps),
        x0_explicit: false,
    };
    Ok(SchedulerConfig {
        diffusion,
        sampling,
    })
}

/// Python's `json.dump` writes ±∞ and NaN as bare `Infinity`/`-Infinity`/`NaN` (e.g. DPM-Solver's
/// `lambda_min_clipped`), which strict JSON lacks: quote them outside strings.
fn quote_non_finite(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    let mut rest = text;
    while let Some(ch) = rest.chars().next() {
        if in_string {
            out.push(ch);
            match (escaped, ch) {
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => escaped = false,
            }
            rest = &rest[ch.len_utf8()..];
            continue;
        }
        if ch == '"' {
            in_string = true;
        }
        if let Some(token) = ["-Infinity", "Infinity", "NaN"]
            .into_iter()
            .find(|t| rest.starts_with(t))
        {
            out.push('"');
            out.push_str(token);
            out.push('"');
            rest = &rest[token.len()..];
            continue;
        }
        out.push(ch);
        rest = &rest[ch.len_utf8()..];
    }
    out
}

/// A parsed config with typed getters whose errors name the file, key and value.
struct Config<'a> {
    path: &'a Path,
    map: &'a Map<String, Value>,
}

impl Config<'_> {
    fn error(&self, key: &str, message: impl std::fmt::Display) -> TrainError {
        TrainError::config(
            &format!("{}: {key}", self.path.display()),
            message.to_string(),
        )
    }

    /// The value of `key`, `None` when absent (diffusers' default then applies). A `null` is a
    /// value: diffusers passes it on as `None` (see [`Config::bool`] and [`Config::nullable`]).
    fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key)
    }

    /// `key` when present and not null (for `trained_betas`, `variance_type`, where diffusers
    /// reads `None` as "not given").
    fn nullable(&self, key: &str) -> Option<&Value> {
        self.get(key).filter(|v| !v.is_null())
    }

    /// A flag; `null` is `None`, which diffusers' `if config.key:` reads as false.
    fn bool(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::Null) => Ok(false),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.error(key, format!("{v} is not true or false"))),
        }
    }

    fn f64(&self, key: &str, default: f64) -> Result<f64> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .filter(|x| x.is_finite())
                .ok_or_else(|| self.error(key, format!("{v} is not a finite number"))),
        }
    }

    /// A count; a float with no fractional part (`20.0`, `1e3`) is accepted.
    fn usize(&self, key: &str, default: usize) -> Result<usize> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_u64()
                .or_else(|| {
                    v.as_f64()
                        .filter(|x| x.fract() == 0.0 && *x >= 0.0 && *x < 1e15)
                        .map(|x| x as u64)
                })
                .map(|x| x as usize)
                .ok_or_else(|| self.error(key, format!("{v} is not a whole number >= 0"))),
        }
    }

    fn str<'s>(&'s self, key: &str, default: &'s str) -> Result<&'s str> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_str()
                .ok_or_else(|| self.error(key, format!("{v} is not a string"))),
        }
    }

    /// Unknown keys, an unknown class and DPM-Solver settings away from their default.
    fn check_keys(&self) -> Result<()> {
        let class = self.str("_class_name", "DDPMScheduler")?;
        if !CLASSES.contains(&class) {
            return Err(self.error(
                "_class_name",
                format!(
                    "`{class}` is not read (ddpm-rs reads {}; it samples with DDPM, DDIM or \
                     DPM-Solver++)",
                    CLASSES.join(", ")
                ),
            ));
        }
        for (key, value) in self.map {
            if key.starts_with('_') || HONOURED.contains(&key.as_str()) {
                continue;
            }
            match DPM_SOLVER_ONLY.iter().find(|(k, _)| k == key) {
                Some((_, default)) => {
                    let default: Value = serde_json::from_str(default).expect("valid defaults");
                    if value != &default {
                        return Err(self.error(
                            key,
                            format!(
                                "{value}: ddpm-rs's `--sampler dpm++` is DPM-Solver++(2M) with this \
                                 setting at diffusers' default {default} only"
                            ),
                        ));
                    }
                }
                None => {
                    return Err(self.error(
                        key,
                        format!(
                            "{value}: no diffusers DDPM, DDIM or DPM-Solver scheduler has this key"
                        ),
                    ))
                }
            }
        }
        Ok(())
    }

    /// Whether ddpm-rs exported this config from a run ([`to_json`]) and it still holds the
    /// run's `trained_betas`: then the betas are used unrounded and the sampling conventions are
    /// the run's (improved-diffusion's), so that the folder samples exactly as the run did.
    fn exported(&self) -> bool {
        let marked = self
            .get(DDPM_RS_KEY)
            .and_then(|m| m.get("conventions"))
            .and_then(Value::as_str)
            == Some(EXPORTED_CONVENTIONS);
        if marked && self.nullable("trained_betas").is_none() {
            tracing::warn!(file = %self.path.display(), "{DDPM_RS_KEY} without trained_betas: read as a plain diffusers config");
        }
        marked && self.nullable("trained_betas").is_some()
    }

    /// The diffusion: betas (rounded to f32 as diffusers keeps them, except in a config ddpm-rs
    /// `exported`), prediction type and variance type.
    fn diffusion(&self, learned_variance: bool, exported: bool) -> Result<GaussianDiffusion> {
        let mut betas = self.betas()?;
        if self.bool("rescale_betas_zero_snr", false)? {
            betas = rescale_zero_terminal_snr(&betas);
        }
        if !exported {
            betas = betas.into_iter().map(|b| b as f32 as f64).collect();
        }
        let betas = user_betas(betas).map_err(|e| self.error("betas", e))?;
        let mean = match self.str("prediction_type", "epsilon")? {
            "epsilon" => ModelMeanType::Epsilon,
            "sample" => ModelMeanType::StartX,
            "v_prediction" => ModelMeanType::V,
            other => {
                return Err(self.error(
                    "prediction_type",
                    format!("`{other}` is not read (epsilon, sample, v_prediction)"),
                ))
            }
        };
        let var = self.var_type(learned_variance)?;
        let loss = if var.is_learned() {
            LossType::Hybrid
        } else {
            LossType::Simple
        };
        GaussianDiffusion::new(betas, mean, var, loss).map_err(|e| self.error("betas", e))
    }

    /// `trained_betas`, else the `beta_schedule` over `num_train_timesteps` steps.
    fn betas(&self) -> Result<Vec<f64>> {
        let t = self.usize("num_train_timesteps", 1000)?;
        if !(1..=MAX_TIMESTEPS).contains(&t) {
            return Err(self.error(
                "num_train_timesteps",
                format!("{t} is outside 1..={MAX_TIMESTEPS}"),
            ));
        }
        if let Some(v) = self.nullable("trained_betas") {
            let list = v
                .as_array()
                .and_then(|a| a.iter().map(Value::as_f64).collect::<Option<Vec<f64>>>())
                .ok_or_else(|| self.error("trained_betas", "is not a list of numbers"))?;
            if list.len() != t {
                return Err(self.error(
                    "trained_betas",
                    format!("has {} betas but num_train_timesteps is {t}", list.len()),
                ));
            }
            return Ok(list);
        }
        if t < 2 {
            return Err(self.error("num_train_timesteps", format!("{t}: at least 2 are needed")));
        }
        let start = self.f64("beta_start", 1e-4)?;
        let end = self.f64("beta_end", 0.02)?;
        // numpy/torch `linspace(a, b, t)`, both ends exact.
        let lin = |a: f64, b: f64| -> Vec<f64> {
            (0..t)
                .map(|i| {
                    if i + 1 == t {
                        b
                    } else {
                        a + (b - a) * (i as f64 / (t - 1) as f64)
                    }
                })
                .collect()
        };
        Ok(match self.str("beta_schedule", "linear")? {
            "linear" => lin(start, end),
            "scaled_linear" => lin(start.sqrt(), end.sqrt())
                .into_iter()
                .map(|b| b * b)
                .collect(),
            "squaredcos_cap_v2" => BetaSchedule::Cosine
                .betas(t)
                .map_err(|e| self.error("beta_schedule", e))?
                .to_vec(),
            "sigmoid" => lin(-6.0, 6.0)
                .into_iter()
                .map(|x| (end - start) / (1.0 + (-x).exp()) + start)
                .collect(),
            other => {
                return Err(self.error(
                    "beta_schedule",
                    format!(
                        "`{other}` is not read (linear, scaled_linear, squaredcos_cap_v2, sigmoid)"
                    ),
                ))
            }
        })
    }

    fn var_type(&self, learned_variance: bool) -> Result<ModelVarType> {
        let name = match self.nullable("variance_type") {
            None => "fixed_small",
            Some(_) => self.str("variance_type", "fixed_small")?,
        };
        let var = match name {
            "fixed_small" | "fixed_small_log" => ModelVarType::FixedSmall,
            "fixed_large" => ModelVarType::FixedLarge,
            "learned_range" => ModelVarType::LearnedRange,
            "fixed_large_log" => return Err(self.error(
                "variance_type",
                "`fixed_large_log` is refused: diffusers' DDPMScheduler takes the square root of \
                     log(beta) < 0 and samples NaN with it; fixed_large is the variance meant",
            )),
            "learned" => {
                return Err(self.error(
                    "variance_type",
                    "`learned` is refused: diffusers reads the variance channels as the variance \
                     itself, ddpm-rs's learned type as a log-variance (improved-diffusion); \
                     learned_range is read",
                ))
            }
            other => {
                return Err(self.error(
                    "variance_type",
                    format!("`{other}` is not a diffusers variance type"),
                ))
            }
        };
        if var.is_learned() != learned_variance {
            return Err(self.error(
                "variance_type",
                format!(
                    "`{name}` does not fit a UNet with{} a variance output",
                    if learned_variance { "" } else { "out" }
                ),
            ));
        }
        Ok(var)
    }

    /// `thresholding`, else `clip_sample` with `clip_sample_range`, else nothing.
    /// Every value is checked, also those of the mode not chosen.
    fn x0_processing(&self) -> Result<X0Processing> {
        let file = self.path.display().to_string();
        let key = |k: &str| format!("{file}: {k}");
        let threshold = X0Processing::DynamicThreshold {
            ratio: self.f64("dynamic_thresholding_ratio", 0.995)?,
            max_value: self.f64("sample_max_value", 1.0)?,
        }
        .validate(key)?;
        let clip = X0Processing::Clip {
            range: self.f64("clip_sample_range", 1.0)?,
        }
        .validate(key)?;
        Ok(if self.bool("thresholding", false)? {
            threshold
        } else if self.bool("clip_sample", true)? {
            clip
        } else {
            X0Processing::None
        })
    }

    fn timesteps(&self) -> Result<DiffusersTimesteps> {
        // The class's own default when the key is absent (saved configs always carry it).
        let default_spacing = match self.str("_class_name", "DDPMScheduler")? {
            "DPMSolverMultistepScheduler" => "linspace",
            _ => "leading",
        };
        let spacing = self.str("timestep_spacing", default_spacing)?;
        Ok(DiffusersTimesteps {
            spacing: TimestepSpacing::parse(spacing).ok_or_else(|| {
                self.error(
                    "timestep_spacing",
                    format!("`{spacing}` is not linspace, leading or trailing"),
                )
            })?,
            steps_offset: self.usize("steps_offset", 0)?,
            set_alpha_to_one: self.bool("set_alpha_to_one", true)?,
            dpm_solver: DpmSolverOptions {
                final_sigma: match self.str("final_sigmas_type", "zero")? {
                    "zero" => FinalSigma::Zero,
                    "sigma_min" => FinalSigma::SigmaMin,
                    other => {
                        return Err(self.error(
                            "final_sigmas_type",
                            format!("`{other}` is not zero or sigma_min"),
                        ))
                    }
                },
                lower_order_final: self.bool("lower_order_final", true)?,
                euler_at_final: self.bool("euler_at_final", false)?,
            },
            rescale_betas_zero_snr: self.bool("rescale_betas_zero_snr", false)?,
        })
    }
}

/// The `conventions` value of [`DDPM_RS_KEY`] in an exported config.
const EXPORTED_CONVENTIONS: &str = "improved-diffusion";

/// The `scheduler_config.json` of diffusers' `DDPMScheduler` for a diffusion trained by ddpm-rs
/// and its sampling settings, read back by [`read`] as the same diffusion and settings.
///
/// The betas are written as `trained_betas` in full f64 precision (diffusers rounds them to f32;
/// ddpm-rs, seeing [`DDPM_RS_KEY`], does not); `prediction_type`, `variance_type` and the x̂₀
/// settings map one to one; `timestep_spacing` is `leading` with `steps_offset` 0, under which
/// diffusers' `set_timesteps(N)` visits the timesteps of improved-diffusion's `ddimN` striding.
/// `meta` (e.g. the run's step) is stored under [`DDPM_RS_KEY`].
///
/// # Errors
/// A variance type diffusers cannot express as ddpm-rs means it: `learned` (improved-diffusion's
/// log-variance; diffusers' `learned` is the variance itself).
pub fn to_json(
    diffusion: &GaussianDiffusion,
    sampling: &SamplingSettings,
    meta: Map<String, Value>,
) -> Result<Value> {
    let variance_type = match diffusion.var_type() {
        ModelVarType::FixedSmall => "fixed_small",
        ModelVarType::FixedLarge => "fixed_large",
        ModelVarType::LearnedRange => "learned_range",
        ModelVarType::Learned => {
            return Err(TrainError::config(
                "diffusion.var_type",
                "`learned` (a log-variance output, improved-diffusion) has no diffusers variance type that means the same (diffusers' `learned` reads the variance itself); learned-range exports",
            ))
        }
    };
    let prediction_type = match diffusion.mean_type() {
        ModelMeanType::Epsilon => "epsilon",
        ModelMeanType::StartX => "sample",
        ModelMeanType::V => "v_prediction",
    };
    let (clip_sample, thresholding) = match sampling.x0 {
        X0Processing::None => (false, false),
        X0Processing::Clip { .. } => (true, false),
        X0Processing::DynamicThreshold { .. } => (false, true),
    };
    let clip_sample_range = match sampling.x0 {
        X0Processing::Clip { range } => range,
        _ => sampling.clip_sample_range,
    };
    let (ratio, max_value) = match sampling.x0 {
        X0Processing::DynamicThreshold { ratio, max_value } => (ratio, max_value),
        _ => sampling.threshold,
    };
    let mut meta = meta;
    meta.insert("conventions".into(), EXPORTED_CONVENTIONS.into());
    meta.insert(
        "note".into(),
        "written by ddpm-rs; it reads trained_betas unrounded and samples with improved-diffusion's conventions"
            .into(),
    );
    Ok(serde_json::json!({
        "_class_name": "DDPMScheduler",
        "_diffusers_version": ddpm_nets::diffusers::DIFFUSERS_VERSION,
        "num_train_timesteps": diffusion.num_timesteps(),
        "trained_betas": diffusion.betas().to_vec(),
        "variance_type": variance_type,
        "prediction_type": prediction_type,
        "clip_sample": clip_sample,
        "clip_sample_range": clip_sample_range,
        "thresholding": thresholding,
        "dynamic_thresholding_ratio": ratio,
        "sample_max_value": max_value,
        "timestep_spacing": "leading",
        "steps_offset": 0,
        "rescale_betas_zero_snr": false,
        DDPM_RS_KEY: meta,
    }))
}

/// Rescales betas so that `ᾱ_{T−1} = 0` while `ᾱ_0` is kept (Lin et al. 2024, "Common Diffusion
/// Noise Schedules and Sample Steps are Flawed", Algorithm 1): `√ᾱ` is shifted so that its last
/// value is 0 and scaled so that its first is unchanged; the betas are read back from the ratios.
pub fn rescale_zero_terminal_snr(betas: &[f64]) -> Vec<f64> {
    let mut acc = 1.0;
    let sqrt_ab: Vec<f64> = betas
        .iter()
        .map(|b| {
            acc *= 1.0 - b;
            acc.sqrt()
        })
        .collect();
    let (first, last) = (sqrt_ab[0], sqrt_ab[sqrt_ab.len() - 1]);
    let ab: Vec<f64> = sqrt_ab
        .iter()
        .map(|s| ((s - last) * first / (first - last)).powi(2))
        .collect();
    (0..ab.len())
        .map(|i| 1.0 - if i == 0 { ab[0] } else { ab[i] / ab[i - 1] })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exported_configs_read_back_as_the_run_and_learned_is_refused() {
        let x0s = [
            X0Processing::None,
            X0Processing::Clip { range: 2.5 },
            X0Processing::DynamicThreshold {
                ratio: 0.9,
                max_value: 1.7,
            },
        ];
        let cases = [
            (
                BetaSchedule::Linear,
                ModelMeanType::Epsilon,
                ModelVarType::FixedLarge,
            ),
            (
                BetaSchedule::Cosine,
                ModelMeanType::V,
                ModelVarType::FixedSmall,
            ),
            (
                BetaSchedule::Sigmoid,
                ModelMeanType::StartX,
                ModelVarType::LearnedRange,
            ),
        ];
        for ((schedule, mean, var), x0) in cases.into_iter().zip(x0s) {
            let betas = schedule.betas(37).unwrap();
            let loss = if var.is_learned() {
                LossType::Hybrid
            } else {
                LossType::Simple
            };
            let d = GaussianDiffusion::new(betas, mean, var, loss).unwrap();
            let sampling = SamplingSettings {
                x0,
                clip_sample_range: 2.5,
                threshold: (0.9, 1.7),
                ..SamplingSettings::default()
            };
            let json = to_json(&d, &sampling, Map::new()).unwrap();
            // Through text, as on disk.
            let text = serde_json::to_string_pretty(&json).unwrap();
            let map: Map<String, Value> = serde_json::from_str(&text).unwrap();
            let back = from_map(Path::new("s.json"), &map, var.is_learned()).unwrap();
            let label = format!("{schedule:?} {mean:?} {var:?}");
            assert_eq!(
                back.diffusion.betas(),
                d.betas(),
                "{label}: betas not exact"
            );
            assert_eq!(back.diffusion.mean_type(), mean, "{label}");
            assert_eq!(back.diffusion.var_type(), var, "{label}");
            assert_eq!(back.sampling, sampling, "{label}");
            // Without ddpm-rs's key it is a plain diffusers config: f32 betas, diffusers' spacing.
            let mut plain = map.clone();
            plain.remove(DDPM_RS_KEY);
            let diffusers = from_map(Path::new("s.json"), &plain, var.is_learned()).unwrap();
            assert!(diffusers.sampling.diffusers.is_some(), "{label}");
            let rounded: Vec<f64> = d.betas().iter().map(|&b| b as f32 as f64).collect();
            assert_eq!(diffusers.diffusion.betas().to_vec(), rounded, "{label}");
        }
        let learned = GaussianDiffusion::new(
            BetaSchedule::Linear.betas(100).unwrap(),
            ModelMeanType::Epsilon,
            ModelVarType::Learned,
            LossType::Vlb,
        )
        .unwrap();
        let err = to_json(&learned, &SamplingSettings::default(), Map::new()).unwrap_err();
        assert!(err.to_string().contains("learned"), "{err}");
    }

    #[test]
    fn bare_infinities_are_quoted_outside_strings_only() {
        let text = r#"{"a": -Infinity, "b": "NaN and Infinity", "c": [NaN, Infinity]}"#;
        let v: Value = serde_json::from_str(&quote_non_finite(text)).unwrap();
        assert_eq!(v["a"], "-Infinity");
        assert_eq!(v["b"], "NaN and Infinity");
        assert_eq!(v["c"][0], "NaN");
        assert_eq!(v["c"][1], "Infinity");
    }

    #[test]
    fn zero_terminal_snr_rescaling_keeps_the_first_alpha_bar_and_ends_at_zero() {
        let betas: Vec<f64> = (0..50).map(|i| 1e-3 + 0.02 * i as f64 / 49.0).collect();
        let out = rescale_zero_terminal_snr(&betas);
        assert!((out[0] - betas[0]).abs() < 1e-15);
        assert_eq!(out[49], 1.0);
        assert!(out.iter().all(|&b| b > 0.0 && b <= 1.0));
    }
}
