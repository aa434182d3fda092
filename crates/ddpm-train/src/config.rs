//! The training configuration: nested TOML (model, diffusion, optim, data, run), presets, overrides
//! (`key.path=value`) and validation with errors that name the key.
use std::path::{Path, PathBuf};

use ddpm_math::{BetaSchedule, GaussianDiffusion, LossType, ModelMeanType, ModelVarType};
use ddpm_nets::device::DeviceSpec;
use ddpm_nets::unet::{DownBlockType, SampleSize, UpBlockType};
use ddpm_nets::UNetConfig;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// Which family of generative model a run trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// Denoising diffusion (the UNet ε_θ).
    #[default]
    Ddpm,
    /// DCGAN baseline.
    Gan,
    /// Convolutional VAE baseline.
    Vae,
}

impl ModelKind {
    /// The TOML spelling (`ddpm`, `gan`, `vae`).
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Ddpm => "ddpm",
            ModelKind::Gan => "gan",
            ModelKind::Vae => "vae",
        }
    }
}

/// The networks of a DDPM run (`kind = "ddpm"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct DdpmModelConfig {
    /// The UNet (diffusers `config.json` keys).
    pub unet: UNetConfig,
}

/// The networks of the DCGAN baseline (`kind = "gan"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GanModelConfig {
    /// Latent size of the generator.
    pub latent_dim: i64,
    /// Base width of the generator's convolutions.
    pub base_channels: i64,
    /// Base width of the discriminator.
    pub disc_channels: i64,
    /// Dropout after each discriminator convolution.
    pub disc_dropout: f64,
}

impl Default for GanModelConfig {
    fn default() -> Self {
        Self {
            latent_dim: 64,
            base_channels: 64,
            disc_channels: 64,
            disc_dropout: 0.3,
        }
    }
}

/// The network of the VAE baseline (`kind = "vae"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VaeModelConfig {
    /// Latent size.
    pub latent_dim: i64,
    /// Base width of the convolutions.
    pub base_channels: i64,
    /// Per-pixel decoder log σ; otherwise one learned log σ per channel.
    pub per_pixel_scale: bool,
    /// Lower bound of the decoder's log σ.
    pub min_log_scale: f64,
}

impl Default for VaeModelConfig {
    fn default() -> Self {
        Self {
            latent_dim: 64,
            base_channels: 64,
            per_pixel_scale: true,
            min_log_scale: -7.0,
        }
    }
}

/// The networks of a run: a `[model]` table tagged by `kind`, holding only that kind's keys:
///
/// ```toml
/// [model]
/// kind = "gan"          # or "vae": latent_dim, base_channels, per_pixel_scale, min_log_scale
/// latent_dim = 64
/// base_channels = 32
/// disc_channels = 32
/// disc_dropout = 0.3
/// ```
///
/// or `kind = "ddpm"` with a `[model.unet]` table. A missing `kind` means `ddpm`; missing keys take
/// the kind's defaults; a key of another kind is an error naming it. The flat layout written before
/// the section was typed (every kind's keys, VAE keys as `vae_per_pixel_scale` /
/// `vae_min_log_scale`) is still read — recognised by those two `vae_` keys — and the keys of
/// other kinds, which it ignored, are dropped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", try_from = "RawModelConfig")]
#[allow(clippy::large_enum_variant)] // built once per run; a Box would only add indirection
pub enum ModelConfig {
    /// Denoising diffusion (the UNet ε_θ).
    Ddpm(DdpmModelConfig),
    /// DCGAN baseline.
    Gan(GanModelConfig),
    /// Convolutional VAE baseline.
    Vae(VaeModelConfig),
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig::Ddpm(DdpmModelConfig::default())
    }
}

impl ModelConfig {
    /// The default networks of `kind`.
    pub fn default_for(kind: ModelKind) -> Self {
        match kind {
            ModelKind::Ddpm => ModelConfig::Ddpm(DdpmModelConfig::default()),
            ModelKind::Gan => ModelConfig::Gan(GanModelConfig::default()),
            ModelKind::Vae => ModelConfig::Vae(VaeModelConfig::default()),
        }
    }

    /// Which family this is.
    pub fn kind(&self) -> ModelKind {
        match self {
            ModelConfig::Ddpm(_) => ModelKind::Ddpm,
            ModelConfig::Gan(_) => ModelKind::Gan,
            ModelConfig::Vae(_) => ModelKind::Vae,
        }
    }

    /// The UNet of a DDPM.
    pub fn unet(&self) -> Option<&UNetConfig> {
        match self {
            ModelConfig::Ddpm(d) => Some(&d.unet),
            _ => None,
        }
    }

    /// The UNet of a DDPM, mutably.
    pub fn unet_mut(&mut self) -> Option<&mut UNetConfig> {
        match self {
            ModelConfig::Ddpm(d) => Some(&mut d.unet),
            _ => None,
        }
    }

    /// The GAN's networks.
    pub fn gan(&self) -> Option<&GanModelConfig> {
        match self {
            ModelConfig::Gan(g) => Some(g),
            _ => None,
        }
    }

    /// The VAE's network.
    pub fn vae(&self) -> Option<&VaeModelConfig> {
        match self {
            ModelConfig::Vae(v) => Some(v),
            _ => None,
        }
    }
}

/// What a `[model]` table may hold: the keys of every kind, each optional (see [`ModelConfig`]).
/// Deserialised field by field, so an error inside it keeps its dotted key.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModelConfig {
    kind: Option<ModelKind>,
    unet: Option<UNetConfig>,
    latent_dim: Option<i64>,
    base_channels: Option<i64>,
    disc_channels: Option<i64>,
    disc_dropout: Option<f64>,
    per_pixel_scale: Option<bool>,
    min_log_scale: Option<f64>,
    /// The pre-typed layout's name of `per_pixel_scale` (marks that layout).
    vae_per_pixel_scale: Option<bool>,
    /// The pre-typed layout's name of `min_log_scale` (marks that layout).
    vae_min_log_scale: Option<f64>,
}

impl TryFrom<RawModelConfig> for ModelConfig {
    type Error = String;

    fn try_from(r: RawModelConfig) -> std::result::Result<Self, String> {
        let kind = r.kind.unwrap_or_default();
        let legacy = r.vae_per_pixel_scale.is_some() || r.vae_min_log_scale.is_some();
        let (per_pixel_scale, min_log_scale) = if legacy {
            (r.vae_per_pixel_scale, r.vae_min_log_scale)
        } else {
            (r.per_pixel_scale, r.min_log_scale)
        };
        let present = [
            ("unet", r.unet.is_some()),
            ("latent_dim", r.latent_dim.is_some()),
            ("base_channels", r.base_channels.is_some()),
            ("disc_channels", r.disc_channels.is_some()),
            ("disc_dropout", r.disc_dropout.is_some()),
            ("per_pixel_scale", r.per_pixel_scale.is_some()),
            ("min_log_scale", r.min_log_scale.is_some()),
        ];
        let allowed: &[&str] = match kind {
            ModelKind::Ddpm => &["unet"],
            ModelKind::Gan => &[
                "latent_dim",
                "base_channels",
                "disc_channels",
                "disc_dropout",
            ],
            ModelKind::Vae => &[
                "latent_dim",
                "base_channels",
                "per_pixel_scale",
                "min_log_scale",
            ],
        };
        if !legacy {
            if let Some((key, _)) = present
                .iter()
                .find(|(key, set)| *set && !allowed.contains(key))
            {
                return Err(format!(
                    "unknown field `{key}` for kind = \"{}\", expected one of {}",
                    kind.name(),
                    allowed.join(", ")
                ));
            }
        }
        Ok(match kind {
            ModelKind::Ddpm => ModelConfig::Ddpm(DdpmModelConfig {
                unet: r.unet.unwrap_or_default(),
            }),
            ModelKind::Gan => {
                let d = GanModelConfig::default();
                ModelConfig::Gan(GanModelConfig {
                    latent_dim: r.latent_dim.unwrap_or(d.latent_dim),
                    base_channels: r.base_channels.unwrap_or(d.base_channels),
                    disc_channels: r.disc_channels.unwrap_or(d.disc_channels),
                    disc_dropout: r.disc_dropout.unwrap_or(d.disc_dropout),
                })
            }
            ModelKind::Vae => {
                let d = VaeModelConfig::default();
                ModelConfig::Vae(VaeModelConfig {
                    latent_dim: r.latent_dim.unwrap_or(d.latent_dim),
                    base_channels: r.base_channels.unwrap_or(d.base_channels),
                    per_pixel_scale: per_pixel_scale.unwrap_or(d.per_pixel_scale),
                    min_log_scale: min_log_scale.unwrap_or(d.min_log_scale),
                })
            }
        })
    }
}

/// A closed set of names for one setting: the first name of each value is the canonical spelling
/// (what serialisation writes), the others are accepted aliases.
pub trait Vocabulary: Sized + Copy + PartialEq + 'static {
    /// `(name, value)` pairs; canonical names first.
    const NAMES: &'static [(&'static str, Self)];

    /// The canonical name of `self`.
    fn canonical(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(_, v)| *v == self)
            .map(|(n, _)| *n)
            .expect("every value has a name")
    }

    /// The value called `name` (canonical or alias), or an error listing the canonical names.
    fn from_name(name: &str) -> std::result::Result<Self, String> {
        let name = name.trim();
        Self::NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
            .ok_or_else(|| {
                let canonical: Vec<&str> = Self::NAMES
                    .iter()
                    .filter(|(n, v)| v.canonical() == *n)
                    .map(|(n, _)| *n)
                    .collect();
                format!(
                    "unknown variant `{name}`, expected one of {}",
                    canonical.join(", ")
                )
            })
    }
}

impl Vocabulary for BetaSchedule {
    const NAMES: &'static [(&'static str, Self)] = &[
        ("linear", BetaSchedule::Linear),
        ("cosine", BetaSchedule::Cosine),
        ("quad", BetaSchedule::Quad),
        ("sigmoid", BetaSchedule::Sigmoid),
        ("const", BetaSchedule::Const),
        ("jsd", BetaSchedule::Jsd),
    ];
}

impl Vocabulary for ModelMeanType {
    const NAMES: &'static [(&'static str, Self)] = &[
        ("epsilon", ModelMeanType::Epsilon),
        ("x0", ModelMeanType::StartX),
        ("v", ModelMeanType::V),
        ("eps", ModelMeanType::Epsilon),
        ("start_x", ModelMeanType::StartX),
        ("sample", ModelMeanType::StartX),
        ("v_prediction", ModelMeanType::V),
    ];
}

impl Vocabulary for ModelVarType {
    const NAMES: &'static [(&'static str, Self)] = &[
        ("fixed-small", ModelVarType::FixedSmall),
        ("fixed-large", ModelVarType::FixedLarge),
        ("learned", ModelVarType::Learned),
        ("learned-range", ModelVarType::LearnedRange),
        ("fixed_small", ModelVarType::FixedSmall),
        ("fixed_large", ModelVarType::FixedLarge),
        ("learned_range", ModelVarType::LearnedRange),
    ];
}

impl Vocabulary for LossType {
    const NAMES: &'static [(&'static str, Self)] = &[
        ("simple", LossType::Simple),
        ("hybrid", LossType::Hybrid),
        ("vlb", LossType::Vlb),
    ];
}

/// `#[serde(with = "vocab")]`: a [`Vocabulary`] value as its canonical name.
mod vocab {
    use serde::{de::Error as _, Deserialize, Deserializer, Serializer};

    use super::Vocabulary;

    pub fn serialize<T: Vocabulary, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(v.canonical())
    }

    pub fn deserialize<'de, T: Vocabulary, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
        let name = String::deserialize(d)?;
        T::from_name(&name).map_err(D::Error::custom)
    }
}

/// `#[serde(with = "via_str")]`: a value as its `Display` text, read back through `FromStr`.
mod via_str {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::{de::Error as _, Deserialize, Deserializer, Serializer};

    pub fn serialize<T: Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: Deserializer<'de>,
    {
        String::deserialize(d)?.parse().map_err(D::Error::custom)
    }
}

/// The optimiser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Optimizer {
    /// Adam (weight decay as L2).
    #[default]
    Adam,
    /// AdamW (decoupled weight decay).
    AdamW,
}

/// The sampler of the sample grids (`run.sample_steps`): `ddimN` (DDIM on the `ddimN` respacing),
/// `dpm++N` (DPM-Solver++(2M) with N steps) or a respacing like `100` or `10,20,30` for ancestral
/// sampling. The syntax is checked when the
/// config is read; whether the steps fit `diffusion.timesteps` is checked by
/// [`SampleSteps::resolve`] (and so by [`TrainConfig::validate`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "SpecText", into = "String")]
pub struct SampleSteps(String);

/// What a config may hold for a [`SampleSteps`]: its text, or a bare number of steps
/// (`sample_steps = 100`, also from `--set run.sample_steps=100`).
#[derive(Deserialize)]
#[serde(untagged)]
enum SpecText {
    Text(String),
    Count(u64),
}

impl TryFrom<SpecText> for SampleSteps {
    type Error = String;

    fn try_from(s: SpecText) -> std::result::Result<Self, String> {
        match s {
            SpecText::Text(t) => Self::new(&t),
            SpecText::Count(n) => Self::new(&n.to_string()),
        }
    }
}

impl SampleSteps {
    /// Checks the syntax of `spec`.
    pub fn new(spec: &str) -> std::result::Result<Self, String> {
        let spec = spec.trim();
        let ok = match spec.strip_prefix("dpm++") {
            Some(n) => n.trim().parse::<usize>().is_ok(),
            None => {
                let counts = spec.strip_prefix("ddim").unwrap_or(spec);
                counts.split(',').all(|c| c.trim().parse::<usize>().is_ok())
            }
        };
        if spec.is_empty() || !ok {
            return Err(format!(
                "`{spec}` is no sampler spec: expected ddimN, dpm++N or a respacing like 100 or \
                 10,20,30"
            ));
        }
        Ok(Self(spec.to_string()))
    }

    /// The spec's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The sampler for a process of `num_timesteps` steps.
    pub fn resolve(&self, num_timesteps: usize) -> Result<crate::sampler::SamplerSpec> {
        crate::sampler::SamplerSpec::parse(&self.0, num_timesteps)
    }
}

impl TryFrom<String> for SampleSteps {
    type Error = String;

    fn try_from(s: String) -> std::result::Result<Self, String> {
        Self::new(&s)
    }
}

impl From<SampleSteps> for String {
    fn from(s: SampleSteps) -> String {
        s.0
    }
}

impl std::str::FromStr for SampleSteps {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Self::new(s)
    }
}

impl std::fmt::Display for SampleSteps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `e` as an error of the config key `key` (a [`TrainError::Config`] of a nested key keeps its
/// message only, so that the key is not named twice).
fn rekey(key: &str, e: TrainError) -> TrainError {
    match e {
        TrainError::Config { message, .. } => TrainError::config(key, message),
        e => TrainError::config(key, e.to_string()),
    }
}

/// How the MSE term of the loss is weighted across timesteps (`diffusion.loss_weighting`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LossWeighting {
    /// Every timestep weighs 1 (`L_simple` of Ho et al. 2020).
    #[default]
    None,
    /// min-SNR-γ (Hang et al. 2023), γ = `diffusion.min_snr_gamma`.
    #[serde(alias = "min-snr")]
    MinSnr,
}

/// The diffusion process and objective.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiffusionConfig {
    /// `linear`, `cosine`, `quad`, `sigmoid`, `const`, `jsd`.
    #[serde(with = "vocab")]
    pub schedule: BetaSchedule,
    /// Number of diffusion steps T.
    pub timesteps: usize,
    /// What the network predicts: `epsilon` (alias `eps`), `x0` (aliases `start_x`, `sample`) or
    /// `v` (alias `v_prediction`).
    #[serde(with = "vocab")]
    pub mean_type: ModelMeanType,
    /// `fixed-small`, `fixed-large`, `learned` or `learned-range` (or with `_` for `-`).
    #[serde(with = "vocab")]
    pub var_type: ModelVarType,
    /// `simple`, `hybrid` or `vlb`.
    #[serde(with = "vocab")]
    pub loss_type: LossType,
    /// For `vlb`: draw t by the loss-second-moment importance sampler (else uniformly).
    pub importance_sampling: bool,
    /// Per-timestep weights on the MSE term of `simple` and `hybrid` (not on the vb term): `none`
    /// or `min_snr` (min-SNR-γ, Hang et al. 2023: `min(SNR_t, γ)/SNR_t` for ε, `min(SNR_t, γ)` for
    /// x0, `min(SNR_t, γ)/(SNR_t + 1)` for v, with `SNR_t = ᾱ_t/(1 − ᾱ_t)`).
    pub loss_weighting: LossWeighting,
    /// γ of `min_snr` (finite, > 0; checked also when unused).
    pub min_snr_gamma: f64,
    /// Sampling clamps x̂₀ to `[−clip_sample_range, clip_sample_range]` (diffusers' `clip_sample`;
    /// DDPM clips to the data range [−1, 1]).
    pub clip_sample: bool,
    /// The clipping bound (> 0).
    pub clip_sample_range: f64,
    /// Sampling uses dynamic thresholding instead of clipping (diffusers' `thresholding`;
    /// Saharia et al. 2022, §2.3).
    pub thresholding: bool,
    /// The quantile of |x̂₀| that sets the threshold, in (0, 1].
    pub dynamic_thresholding_ratio: f64,
    /// The largest threshold (≥ 1).
    pub sample_max_value: f64,
}

impl Default for DiffusionConfig {
    fn default() -> Self {
        Self {
            schedule: BetaSchedule::Linear,
            timesteps: 1000,
            mean_type: ModelMeanType::Epsilon,
            var_type: ModelVarType::FixedLarge,
            loss_type: LossType::Simple,
            importance_sampling: false,
            loss_weighting: LossWeighting::None,
            min_snr_gamma: ddpm_math::losses::MIN_SNR_DEFAULT_GAMMA,
            clip_sample: true,
            clip_sample_range: 1.0,
            thresholding: false,
            dynamic_thresholding_ratio: 0.995,
            sample_max_value: 1.0,
        }
    }
}

impl DiffusionConfig {
    /// Builds the process (errors name the `diffusion.*` key).
    pub fn build(&self) -> Result<GaussianDiffusion> {
        let betas = self
            .schedule
            .betas(self.timesteps)
            .map_err(|e| TrainError::config("diffusion.timesteps", e.to_string()))?;
        self.sampling()?;
        GaussianDiffusion::new(betas, self.mean_type, self.var_type, self.loss_type)
            .map_err(|e| TrainError::config("diffusion", e.to_string()))
    }

    /// The per-timestep weights `[T]` of the MSE term of `d` (built from this config), indexed like
    /// its tables, or `None` for `loss_weighting = "none"`; errors name the `diffusion.*` key.
    pub fn mse_weights(&self, d: &GaussianDiffusion) -> Result<Option<ndarray::Array1<f64>>> {
        self.check_loss_weighting(d.loss_type())?;
        match self.loss_weighting {
            LossWeighting::None => Ok(None),
            LossWeighting::MinSnr => d
                .min_snr_weights(self.min_snr_gamma)
                .map(Some)
                .map_err(|e| TrainError::config("diffusion.min_snr_gamma", e.to_string())),
        }
    }

    /// `min_snr_gamma` is a finite number > 0, and a weighting other than `none` has an MSE term
    /// to weight (`vlb` has none).
    fn check_loss_weighting(&self, loss_type: LossType) -> Result<()> {
        let gamma = self.min_snr_gamma;
        if !(gamma.is_finite() && gamma > 0.0) {
            return Err(TrainError::config(
                "diffusion.min_snr_gamma",
                format!("must be a positive finite number, got {gamma}"),
            ));
        }
        if self.loss_weighting != LossWeighting::None && loss_type == LossType::Vlb {
            return Err(TrainError::config(
                "diffusion.loss_weighting",
                "weights the MSE term of loss_type simple or hybrid; vlb has none",
            ));
        }
        Ok(())
    }

    /// For training: the run's own sample grids must be able to sample it (an ε-model on a
    /// zero-terminal-SNR schedule needs clipping).
    fn check_sampleable(&self) -> Result<()> {
        let d = self.build()?;
        let sampling = self.sampling()?;
        let zero_snr = d.alphas_cumprod()[d.num_timesteps() - 1] == 0.0;
        let clipped = matches!(sampling.x0, crate::sampler::X0Processing::Clip { .. });
        if zero_snr && self.mean_type == ModelMeanType::Epsilon && !clipped {
            return Err(TrainError::config(
                "diffusion.clip_sample",
                format!(
                    "`{}` reaches alpha_bar = 0 at its last timestep (zero terminal SNR), where an \
                     epsilon-prediction model's x0 estimate is +-infinity; only clipping \
                     (clip_sample = true, thresholding = false) samples it to finite images; or \
                     use mean_type = \"v\" or \"x0\"",
                    self.schedule
                ),
            ));
        }
        Ok(())
    }

    /// How this run's models sample: thresholding, else clipping, else nothing (diffusers'
    /// precedence); errors name the `diffusion.*` key.
    pub fn sampling(&self) -> Result<crate::sampler::SamplingSettings> {
        use crate::sampler::X0Processing;
        let key = |k: &str| format!("diffusion.{k}");
        // Every value is checked, also those of the mode not chosen (`sample` may switch to it).
        let threshold = X0Processing::DynamicThreshold {
            ratio: self.dynamic_thresholding_ratio,
            max_value: self.sample_max_value,
        }
        .validate(key)?;
        let clip = X0Processing::Clip {
            range: self.clip_sample_range,
        }
        .validate(key)?;
        let x0 = if self.thresholding {
            threshold
        } else if self.clip_sample {
            clip
        } else {
            X0Processing::None
        };
        Ok(crate::sampler::SamplingSettings {
            x0,
            clip_sample_range: self.clip_sample_range,
            threshold: (self.dynamic_thresholding_ratio, self.sample_max_value),
            diffusers: None,
            x0_explicit: false,
        })
    }
}

/// The shape of the learning rate after the warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    /// Constant (Ho et al. 2020).
    #[default]
    Constant,
    /// A half cosine from the peak to 0 at the last step (Loshchilov & Hutter 2017, no restarts).
    Cosine,
}

/// The optimiser and its schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    /// `adam` or `adamw`.
    pub optimizer: Optimizer,
    /// Peak learning rate.
    pub lr: f64,
    /// Adam β₁.
    pub beta1: f64,
    /// Adam β₂.
    pub beta2: f64,
    /// Adam ε.
    pub eps: f64,
    /// Weight decay (decoupled for adamw, L2 for adam).
    pub weight_decay: f64,
    /// Linear warm-up of the learning rate over this many steps.
    pub warmup_steps: usize,
    /// After the warm-up: `constant` or `cosine` (decay to 0 at `run.steps`).
    pub lr_schedule: LrSchedule,
    /// Gradient accumulation: each step runs this many micro-batches of
    /// `data.batch_size / grad_accum` images and updates once (must divide the batch size).
    pub grad_accum: usize,
    /// Clip the global gradient norm to this value (0 = off).
    pub grad_clip: f64,
    /// EMA decay of the parameters (0 = no EMA); with `ema_warmup`, the largest decay.
    pub ema_decay: f64,
    /// Warm the EMA decay up: at optimiser step k (counted from 0 over the whole run, resumes
    /// included) it is `min(ema_decay, 1 − (1 + k/ema_inv_gamma)^(−ema_power))` (diffusers'
    /// `EMAModel` with `use_ema_warmup`), so the average forgets the random initial weights.
    pub ema_warmup: bool,
    /// `inv_gamma` of the warm-up (finite, > 0): the step scale of the warm-up.
    pub ema_inv_gamma: f64,
    /// `power` of the warm-up (finite, > 0): 2/3 suits runs of a million steps or more, 3/4 shorter
    /// ones (decay 0.999 at about 10K steps, 0.9999 at about 215K).
    pub ema_power: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            optimizer: Optimizer::Adam,
            lr: 2e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            warmup_steps: 5000,
            lr_schedule: LrSchedule::Constant,
            grad_accum: 1,
            grad_clip: 1.0,
            ema_decay: 0.9999,
            ema_warmup: false,
            ema_inv_gamma: 1.0,
            ema_power: 0.75,
        }
    }
}

/// Where the images come from and how they are prepared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// HDF5 dataset file (ours: `/train/images` uint8 `[N,H,W]` or `[N,H,W,C]`, `/train/labels`).
    /// Empty by default and in the presets (the library knows no dataset locations): the caller sets
    /// it (`ddpm-cli train --preset` uses `datasets/<dataset>.h5`); [`TrainConfig::validate`]
    /// refuses an empty path.
    pub path: PathBuf,
    /// Split to train on.
    pub split: String,
    /// Images per step.
    pub batch_size: usize,
    /// Pad 28×28 images to 32×32 (with the background value −1).
    pub pad_to_32: bool,
    /// Random horizontal flips (not for digits).
    pub random_flip: bool,
    /// Train a class-conditional model (needs `model.unet.num_class_embeds`).
    pub conditional: bool,
    /// Probability of dropping the label (classifier-free guidance); the null class is `num_classes`.
    pub label_dropout: f64,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::new(),
            split: "train".into(),
            batch_size: 128,
            pad_to_32: false,
            random_flip: false,
            conditional: false,
            label_dropout: 0.1,
        }
    }
}

/// The run: length, device, seeding, logging, checkpoints, samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Total optimisation steps.
    pub steps: usize,
    /// Seed of everything random (data order, t, noise, dropout).
    pub seed: u64,
    /// `auto`, `cpu`, `cuda` (written `cuda:0`), `cuda:N`.
    #[serde(with = "via_str")]
    pub device: DeviceSpec,
    /// bf16 autocast of the network on CUDA.
    pub bf16: bool,
    /// bf16 autocast of the network on the CPU too (off by default: it changes the arithmetic; it pays
    /// on CPUs with AVX512-BF16 or AMX).
    pub cpu_bf16: bool,
    /// libtorch intra-op CPU threads (0 = the CPUs the process may use; see ddpm_nets::cpu_threads).
    pub cpu_threads: usize,
    /// Steps between log lines / metrics records (the only host synchronisation of the loss).
    pub log_every: usize,
    /// Steps between sample grids (0 = only at the end).
    pub sample_every: usize,
    /// Steps between checkpoints (0 = only at the end).
    pub checkpoint_every: usize,
    /// How many checkpoints to keep.
    pub keep_checkpoints: usize,
    /// Images in a sample grid.
    pub sample_num: usize,
    /// Sampler spec of the grids: `ddimN`, or a respacing like `100` for ancestral sampling.
    pub sample_steps: SampleSteps,
    /// Steps between evaluations of sample quality (0 = none): `eval_samples` images from the EMA
    /// weights with `eval_sampler`, scored with `eval_metric` against the first
    /// `eval_reference_images` training images; recorded in `metrics.jsonl` and `eval.png`, and
    /// the checkpoint with the lowest score is kept as `checkpoints/best`. A stop request (Ctrl-C)
    /// skips the evaluation of its step.
    pub eval_every: usize,
    /// Images per evaluation.
    pub eval_samples: usize,
    /// Sampler of the evaluations (as `sample_steps`).
    pub eval_sampler: SampleSteps,
    /// `fid_cls` (Fréchet distance of the digit classifier's features; MNIST, Fashion-MNIST) or
    /// `fid` (Inception pool3).
    pub eval_metric: EvalMetric,
    /// The metric's network: the classifier folder (`fid_cls`) or the TorchScript Inception
    /// (`fid`); absent = the command line's default (`datasets/weights/…`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_network: Option<PathBuf>,
    /// Reference images of the evaluation: the first N of the training split.
    pub eval_reference_images: usize,
    /// Training wall-clock minutes after which the run stops with a checkpoint, over all
    /// sessions (grids and evaluations not counted); 0 = no limit. With a limit, `run.steps` is
    /// an upper bound and the learning-rate schedule still runs over `run.steps`.
    pub time_limit_minutes: f64,
    /// Write TensorBoard event files in `RUN/tensorboard/` (every metrics record, evaluation,
    /// sample grid and the resolved config); rank 0 only.
    pub tensorboard: bool,
}

/// The sample-quality metric of evaluations during training (`run.eval_metric`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum EvalMetric {
    /// The Fréchet distance of the digit classifier's penultimate features (fast on a CPU).
    #[default]
    FidCls,
    /// FID with the Inception pool3 features (Heusel et al. 2017).
    Fid,
}

impl EvalMetric {
    /// The metric's name, its key in `metrics.jsonl`.
    pub fn name(self) -> &'static str {
        match self {
            EvalMetric::FidCls => "fid_cls",
            EvalMetric::Fid => "fid",
        }
    }
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            steps: 800_000,
            seed: 0,
            device: DeviceSpec::Auto,
            bf16: true,
            cpu_bf16: false,
            cpu_threads: 0,
            log_every: 100,
            sample_every: 10_000,
            checkpoint_every: 10_000,
            keep_checkpoints: 3,
            sample_num: 64,
            sample_steps: SampleSteps::new("ddim50").expect("valid spec"),
            eval_every: 0,
            eval_samples: 1000,
            eval_sampler: SampleSteps::new("dpm++20").expect("valid spec"),
            eval_metric: EvalMetric::FidCls,
            eval_network: None,
            eval_reference_images: 10_000,
            time_limit_minutes: 0.0,
            tensorboard: true,
        }
    }
}

/// Everything a training run needs; the run directory starts with this, resolved, as `config.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Networks.
    pub model: ModelConfig,
    /// Diffusion process and objective.
    pub diffusion: DiffusionConfig,
    /// Optimiser.
    pub optim: OptimConfig,
    /// Data.
    pub data: DataConfig,
    /// Run settings.
    pub run: RunConfig,
}

/// Names of the built-in presets.
pub const PRESETS: [&str; 4] = ["mnist-cpu", "mnist", "fashion-mnist", "cifar10"];

/// The block types of a UNet with `levels` levels and self-attention at encoder level
/// `attn_level` (0 = full resolution) and at the decoder level of the same resolution.
pub(crate) fn block_types(
    levels: usize,
    attn_level: usize,
) -> (Vec<DownBlockType>, Vec<UpBlockType>) {
    let down = (0..levels)
        .map(|i| {
            if i == attn_level {
                DownBlockType::AttnDown
            } else {
                DownBlockType::Down
            }
        })
        .collect();
    let up = (0..levels)
        .map(|i| {
            if levels - 1 - i == attn_level {
                UpBlockType::AttnUp
            } else {
                UpBlockType::Up
            }
        })
        .collect();
    (down, up)
}

fn small_unet(channels: Vec<i64>, layers: i64, attn_level: usize, groups: i64) -> UNetConfig {
    let (down, up) = block_types(channels.len(), attn_level);
    UNetConfig {
        sample_size: Some(SampleSize::Square(28)),
        in_channels: 1,
        out_channels: 1,
        block_out_channels: channels,
        layers_per_block: layers,
        down_block_types: down,
        up_block_types: up,
        norm_num_groups: groups,
        dropout: 0.1,
        ..UNetConfig::default()
    }
}

/// Every value of a TOML document by its dotted key (`optim.lr`, the keys `--set` addresses), in key
/// order, written back as TOML.
pub fn dotted_values(v: &toml::Value) -> std::collections::BTreeMap<String, String> {
    fn walk(prefix: &str, v: &toml::Value, out: &mut std::collections::BTreeMap<String, String>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            other => {
                out.insert(prefix.to_string(), other.to_string());
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk("", v, &mut out);
    out
}

impl TrainConfig {
    /// `mnist-cpu`: a DDPM small enough for a 2-core CPU (28 → 14 → 7, attention only at 7×7),
    /// with the short-run recipe: min-SNR-5 loss weighting (Hang et al. 2023) and an EMA whose
    /// decay warms up to 0.999 (`1 − (1 + k)^−0.75`, as diffusers' EMAModel). Side by side on 2
    /// cores for 5 minutes (≈460 steps each, one thread each), FID_cls of 1000 DPM-Solver++ 20
    /// samples against 1000 test digits was 274 with it against 356 for plain L_simple with EMA
    /// 0.995.
    pub fn mnist_cpu() -> Self {
        let mut unet = small_unet(vec![32, 64, 64], 1, 2, 8);
        unet.dropout = 0.0;
        let mut c = TrainConfig {
            model: ModelConfig::Ddpm(DdpmModelConfig { unet }),
            ..TrainConfig::default()
        };
        c.data.batch_size = 64;
        c.optim.lr = 1e-3;
        c.optim.warmup_steps = 200;
        c.optim.ema_decay = 0.999;
        c.optim.ema_warmup = true;
        c.diffusion.loss_weighting = LossWeighting::MinSnr;
        c.run.steps = 3000;
        c.run.device = DeviceSpec::Cpu;
        c.run.log_every = 50;
        c.run.sample_every = 1000;
        c.run.checkpoint_every = 500;
        c
    }

    /// `mnist`: the GPU DDPM of MNIST (`[64, 128, 128]`, 20k steps).
    pub fn mnist() -> Self {
        let mut c = TrainConfig {
            model: ModelConfig::Ddpm(DdpmModelConfig {
                unet: small_unet(vec![64, 128, 128], 2, 1, 32),
            }),
            ..TrainConfig::default()
        };
        c.data.batch_size = 128;
        c.optim.lr = 2e-4;
        c.optim.warmup_steps = 1000;
        c.optim.ema_decay = 0.9995;
        c.run.steps = 20_000;
        c.run.sample_every = 2000;
        c.run.checkpoint_every = 2000;
        c
    }

    /// `fashion-mnist`: the same recipe as [`TrainConfig::mnist`] (for Fashion-MNIST data).
    pub fn fashion_mnist() -> Self {
        Self::mnist()
    }

    /// `cifar10`: Ho et al. 2020 — the 35.7M UNet, Adam 2e-4, warm-up 5000, clip 1, batch 128,
    /// EMA 0.9999, random flips, T = 1000 linear, ε target, fixed-large sampling.
    pub fn cifar10() -> Self {
        let mut c = TrainConfig::default();
        c.data.random_flip = true;
        c.run.steps = 800_000;
        c
    }

    /// The UNet of a DDPM config; for a baseline an error naming `model.kind`.
    pub fn unet(&self) -> Result<&UNetConfig> {
        self.model.unet().ok_or_else(|| {
            TrainError::config(
                "model.kind",
                format!("is {}, not ddpm (no UNet)", self.model.kind().name()),
            )
        })
    }

    /// A built-in preset by name (see [`PRESETS`]); `data.path` is left empty for the caller.
    pub fn preset(name: &str) -> Result<Self> {
        match name {
            "mnist-cpu" => Ok(Self::mnist_cpu()),
            "mnist" => Ok(Self::mnist()),
            "fashion-mnist" => Ok(Self::fashion_mnist()),
            "cifar10" => Ok(Self::cifar10()),
            other => Err(TrainError::config(
                "preset",
                format!("unknown preset `{other}`; known: {}", PRESETS.join(", ")),
            )),
        }
    }

    /// A built-in preset for one kind of model. For `ddpm` this is [`TrainConfig::preset`]; for the
    /// baselines it starts from the same preset (data, device, logging) and replaces the model,
    /// optimiser and length with the lecture's baseline recipes:
    ///
    /// - `gan`: DCGAN (Radford et al. 2016): two Adams with lr 2e-4 and β₁ = 0.5 (both networks use
    ///   `[optim]`), no warm-up, no clipping, no EMA, batch 64, 30 epochs on the GPU presets.
    /// - `vae`: Adam lr 1e-3, no warm-up, clipping 1, no EMA, 16-dimensional latent, batch 128,
    ///   50 epochs on the GPU presets.
    ///
    /// `mnist-cpu` keeps both small enough to train in about ten minutes on two CPU cores.
    pub fn preset_for_model(name: &str, kind: ModelKind) -> Result<Self> {
        let mut c = Self::preset(name)?;
        let cpu = name == "mnist-cpu";
        let train_images = if name == "cifar10" { 50_000 } else { 60_000 };
        let epochs = |e: usize, batch: usize| (e * train_images).div_ceil(batch);
        match kind {
            ModelKind::Ddpm => {}
            ModelKind::Gan => {
                c.model = ModelConfig::Gan(GanModelConfig {
                    latent_dim: 64,
                    base_channels: if cpu { 32 } else { 64 },
                    disc_channels: if cpu { 32 } else { 64 },
                    disc_dropout: 0.3,
                });
                c.optim = OptimConfig {
                    lr: 2e-4,
                    beta1: 0.5,
                    beta2: 0.999,
                    warmup_steps: 0,
                    grad_clip: 0.0,
                    ema_decay: 0.0,
                    ..OptimConfig::default()
                };
                c.data.batch_size = 64;
                c.run.steps = if cpu { 2000 } else { epochs(30, 64) };
            }
            ModelKind::Vae => {
                c.model = ModelConfig::Vae(VaeModelConfig {
                    latent_dim: 16,
                    base_channels: 32,
                    ..VaeModelConfig::default()
                });
                c.optim = OptimConfig {
                    lr: 1e-3,
                    warmup_steps: 0,
                    grad_clip: 1.0,
                    ema_decay: 0.0,
                    ..OptimConfig::default()
                };
                c.data.batch_size = 128;
                c.run.steps = if cpu { 2500 } else { epochs(50, 128) };
            }
        }
        if kind != ModelKind::Ddpm {
            // No diffusion: its section keeps the defaults, whatever the DDPM preset's recipe.
            c.diffusion = DiffusionConfig::default();
            c.data.conditional = false;
            c.data.random_flip = name == "cifar10";
            c.run.log_every = if cpu { 50 } else { 100 };
            c.run.checkpoint_every = if cpu { 500 } else { 2000 };
            c.run.sample_every = if cpu { 500 } else { 2000 };
            c.run.bf16 = false;
        }
        Ok(c)
    }

    /// Reads a TOML file (unknown keys are errors naming the key).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| TrainError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text).map_err(|e| match e {
            TrainError::Config { key, message } => TrainError::Config {
                key,
                message: format!("{}: {message}", path.display()),
            },
            other => other,
        })
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Self> {
        toml::from_str(text)
            .map_err(|e| TrainError::config(&toml_error_key(&e, text), e.message().to_string()))
    }

    /// The resolved TOML text (what a run directory starts with).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a TrainConfig always serialises")
    }

    /// Applies `key.path=value` overrides (value in TOML syntax; bare words are strings) and
    /// re-validates through serde, so a misspelt key is an error naming it.
    pub fn with_overrides(&self, overrides: &[String]) -> Result<Self> {
        if overrides.is_empty() {
            return Ok(self.clone());
        }
        let mut root: toml::Value =
            toml::Value::try_from(self).expect("a TrainConfig always serialises");
        for o in overrides {
            let (key, raw) = o.split_once('=').ok_or_else(|| {
                TrainError::config(o, "an override is KEY=VALUE, e.g. run.steps=1000")
            })?;
            let key = key.trim();
            let value = parse_value(raw.trim());
            let mut node = &mut root;
            let parts: Vec<&str> = key.split('.').collect();
            for (i, part) in parts.iter().enumerate() {
                let table = node.as_table_mut().ok_or_else(|| {
                    TrainError::config(key, format!("`{}` is not a table", parts[..i].join(".")))
                })?;
                if i + 1 == parts.len() {
                    table.insert(part.to_string(), value.clone());
                    break;
                }
                node = table
                    .entry(part.to_string())
                    .or_insert_with(|| toml::Value::Table(Default::default()));
            }
        }
        let text = toml::to_string(&root).expect("a TOML value serialises");
        Self::from_toml(&text)
    }

    /// Checks the values (each error names its key).
    pub fn validate(&self) -> Result<()> {
        self.diffusion.check_sampleable()?;
        self.validate_optim()?;
        self.validate_data_and_run()?;
        self.validate_model()?;
        if self.data.path.as_os_str().is_empty() {
            return Err(TrainError::config(
                "data.path",
                "is empty: set it to the HDF5 dataset file to train on",
            ));
        }
        Ok(())
    }

    /// The checks of `[optim]`.
    fn validate_optim(&self) -> Result<()> {
        let o = &self.optim;
        let positive = |key: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(TrainError::config(
                    key,
                    format!("must be a positive finite number, got {v}"),
                ))
            }
        };
        positive("optim.lr", o.lr)?;
        positive("optim.eps", o.eps)?;
        positive("optim.ema_inv_gamma", o.ema_inv_gamma)?;
        positive("optim.ema_power", o.ema_power)?;
        for (key, v) in [
            ("optim.beta1", o.beta1),
            ("optim.beta2", o.beta2),
            ("optim.ema_decay", o.ema_decay),
        ] {
            if !(0.0..1.0).contains(&v) {
                return Err(TrainError::config(
                    key,
                    format!("must be in [0, 1), got {v}"),
                ));
            }
        }
        if !(o.weight_decay >= 0.0 && o.weight_decay.is_finite()) {
            return Err(TrainError::config(
                "optim.weight_decay",
                format!("must be ≥ 0, got {}", o.weight_decay),
            ));
        }
        if !(o.grad_clip >= 0.0 && o.grad_clip.is_finite()) {
            return Err(TrainError::config(
                "optim.grad_clip",
                format!("must be ≥ 0 (0 = off), got {}", o.grad_clip),
            ));
        }
        Ok(())
    }

    /// The checks of `[data]` and `[run]` (with `optim.grad_accum`, which must divide the batch).
    fn validate_data_and_run(&self) -> Result<()> {
        let o = &self.optim;
        if self.data.batch_size == 0 {
            return Err(TrainError::config("data.batch_size", "must be ≥ 1"));
        }
        if o.grad_accum == 0 || self.data.batch_size % o.grad_accum != 0 {
            return Err(TrainError::config(
                "optim.grad_accum",
                format!(
                    "must be ≥ 1 and divide data.batch_size {}, got {}",
                    self.data.batch_size, o.grad_accum
                ),
            ));
        }
        if !(0.0..1.0).contains(&self.data.label_dropout) {
            return Err(TrainError::config(
                "data.label_dropout",
                "must be in [0, 1)",
            ));
        }
        if !["train", "test"].contains(&self.data.split.as_str()) {
            return Err(TrainError::config(
                "data.split",
                format!("`{}` is not train or test", self.data.split),
            ));
        }
        if self.run.steps == 0 {
            return Err(TrainError::config("run.steps", "must be ≥ 1"));
        }
        if self.run.log_every == 0 {
            return Err(TrainError::config("run.log_every", "must be ≥ 1"));
        }
        let limit = self.run.time_limit_minutes;
        if !(limit.is_finite() && limit >= 0.0) {
            return Err(TrainError::config(
                "run.time_limit_minutes",
                format!("must be a finite number ≥ 0 (0 = no limit), got {limit}"),
            ));
        }
        if self.run.keep_checkpoints == 0 {
            return Err(TrainError::config("run.keep_checkpoints", "must be ≥ 1"));
        }
        self.run
            .sample_steps
            .resolve(self.diffusion.timesteps)
            .map_err(|e| rekey("run.sample_steps", e))?;
        if self.run.eval_every > 0 {
            // Only when evaluations are made: the default `dpm++20` does not fit T ≤ 20.
            self.run
                .eval_sampler
                .resolve(self.diffusion.timesteps)
                .map_err(|e| rekey("run.eval_sampler", e))?;
            if self.run.eval_samples < 2 {
                return Err(TrainError::config(
                    "run.eval_samples",
                    "must be ≥ 2 (a Fréchet distance needs a covariance)",
                ));
            }
            if self.run.eval_reference_images < 2 {
                return Err(TrainError::config(
                    "run.eval_reference_images",
                    "must be ≥ 2",
                ));
            }
        }
        Ok(())
    }

    /// The checks of `[model]` for its kind.
    fn validate_model(&self) -> Result<()> {
        match &self.model {
            ModelConfig::Ddpm(m) => self.validate_ddpm(&m.unet)?,
            ModelConfig::Gan(m) => {
                self.validate_baseline(m.latent_dim, m.base_channels)?;
                if m.disc_channels < 1 {
                    return Err(TrainError::config(
                        "model.disc_channels",
                        format!("must be ≥ 1, got {}", m.disc_channels),
                    ));
                }
                if !(0.0..1.0).contains(&m.disc_dropout) {
                    return Err(TrainError::config(
                        "model.disc_dropout",
                        format!("must be in [0, 1), got {}", m.disc_dropout),
                    ));
                }
            }
            ModelConfig::Vae(m) => {
                self.validate_baseline(m.latent_dim, m.base_channels)?;
                if !m.min_log_scale.is_finite() {
                    return Err(TrainError::config("model.min_log_scale", "must be finite"));
                }
            }
        }
        Ok(())
    }

    /// The checks shared by the GAN and the VAE.
    fn validate_baseline(&self, latent_dim: i64, base_channels: i64) -> Result<()> {
        for (key, v) in [
            ("model.latent_dim", latent_dim),
            ("model.base_channels", base_channels),
        ] {
            if v < 1 {
                return Err(TrainError::config(key, format!("must be ≥ 1, got {v}")));
            }
        }
        if self.data.conditional {
            return Err(TrainError::config(
                "data.conditional",
                "the GAN and VAE baselines are unconditional",
            ));
        }
        Ok(())
    }

    /// The checks of a DDPM: the process, the UNet and how they fit together.
    fn validate_ddpm(&self, u: &UNetConfig) -> Result<()> {
        let d = self.diffusion.build()?;
        u.validate()
            .map_err(|e| TrainError::config("model.unet", e.to_string()))?;
        let want_out = if d.var_type().is_learned() {
            2 * u.in_channels
        } else {
            u.in_channels
        };
        if u.out_channels != want_out {
            return Err(TrainError::config(
                "model.unet.out_channels",
                format!(
                    "is {} but var_type {} needs {want_out}",
                    u.out_channels,
                    self.diffusion.var_type.canonical()
                ),
            ));
        }
        if self.data.conditional != u.num_class_embeds.is_some() {
            return Err(TrainError::config(
                "data.conditional",
                "a conditional run needs model.unet.num_class_embeds (classes + 1 for the null label), \
                 and only a conditional run may set it",
            ));
        }
        self.diffusion.check_loss_weighting(d.loss_type())?;
        if self.diffusion.importance_sampling && d.loss_type() != LossType::Vlb {
            return Err(TrainError::config(
                "diffusion.importance_sampling",
                "is only for loss_type vlb",
            ));
        }
        Ok(())
    }
}

fn parse_value(raw: &str) -> toml::Value {
    match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t.remove("v").expect("parsed key"),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

/// The dotted key a TOML error is about (e.g. `run.steps`), from the error's span in `text`: the
/// table header above it and the key on its line (or the field an "unknown field" message names).
fn toml_error_key(e: &toml::de::Error, text: &str) -> String {
    let named = |prefix: &str| {
        let rest = e.message().strip_prefix(prefix)?;
        Some(rest[..rest.find('`')?].to_string())
    };
    let field = named("unknown field `").or_else(|| named("missing field `"));
    let Some(span) = e.span() else {
        return field.unwrap_or_else(|| "config".to_string());
    };
    let before = &text[..span.start.min(text.len())];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("").trim();
    let header = |l: &str| {
        l.strip_prefix('[')
            .and_then(|l| l.strip_suffix(']'))
            .map(|h| h.trim().to_string())
    };
    if let Some(h) = header(line) {
        // The error is about a table itself (an unknown section), or about a key the table's own
        // check names (e.g. a key of another kind in `[model]`).
        return match field {
            Some(f) if h != f && !h.ends_with(&format!(".{f}")) => format!("{h}.{f}"),
            _ => h,
        };
    }
    let section = before[..line_start]
        .lines()
        .rev()
        .find_map(|l| header(l.trim()));
    let key = field.or_else(|| {
        line.split_once('=')
            .map(|(k, _)| k.trim().trim_matches('"').to_string())
    });
    match (section, key) {
        (Some(s), Some(k)) => format!("{s}.{k}"),
        (None, Some(k)) => k,
        (Some(s), None) => s,
        (None, None) => "config".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eval_settings_are_checked_only_when_evaluations_are_made() {
        let mut c = TrainConfig::preset("mnist-cpu").unwrap();
        c.data.path = "mnist.h5".into();
        c.diffusion.timesteps = 20;
        c.run.sample_steps = SampleSteps::new("ddim5").unwrap();
        c.validate().unwrap();
        c.run.eval_every = 10;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("run.eval_sampler"), "{err}");
        c.run.eval_sampler = SampleSteps::new("dpm++10").unwrap();
        c.validate().unwrap();
    }

    #[test]
    fn sample_steps_take_a_bare_number_and_name_their_key_once() {
        let base = TrainConfig::preset("mnist-cpu")
            .unwrap()
            .with_overrides(&["data.path=\"x.h5\"".into()])
            .unwrap();
        let c = base.with_overrides(&["run.sample_steps=2".into()]).unwrap();
        assert_eq!(c.run.sample_steps.as_str(), "2");
        c.validate().unwrap();
        let err = base
            .with_overrides(&["run.sample_steps=1".into()])
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("config `run.sample_steps`: `1`"), "{err}");
        assert_eq!(err.matches("config `").count(), 1, "{err}");
    }

    #[test]
    fn sample_steps_name_every_sampler() {
        use crate::sampler::SamplerKind;
        let kind = |s: &str| SampleSteps::new(s).unwrap().resolve(1000).unwrap();
        assert_eq!(kind("ddim50").kind, SamplerKind::Ddim { eta: 0.0 });
        let dpm = kind("dpm++20");
        assert_eq!(dpm.kind, SamplerKind::DpmSolverPlusPlus);
        assert_eq!(dpm.timesteps.len(), 20);
        assert_eq!(dpm.timesteps.last(), Some(&999));
        assert_eq!(kind("100").kind, SamplerKind::Ddpm);
        for bad in ["dpm++", "dpm++x", "ddim", "fast"] {
            assert!(SampleSteps::new(bad).is_err(), "{bad}");
        }
        assert!(SampleSteps::new("dpm++1000")
            .unwrap()
            .resolve(1000)
            .is_err());
        // One-step chains are refused when the config is read, not after training.
        for one in ["dpm++1", "1"] {
            let err = SampleSteps::new(one).unwrap().resolve(1000).unwrap_err();
            assert!(err.to_string().contains("at least 2"), "{one}: {err}");
        }
    }

    #[test]
    fn presets_validate_and_round_trip_through_toml() {
        for name in PRESETS {
            let mut c = TrainConfig::preset(name).unwrap();
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains("config `data.path`"), "{name}: {err}");
            c.data.path = PathBuf::from("data.h5");
            c.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(TrainConfig::from_toml(&c.to_toml()).unwrap(), c, "{name}");
        }
        assert!(TrainConfig::preset("imagenet")
            .unwrap_err()
            .to_string()
            .contains("imagenet"));
    }

    #[test]
    fn baseline_presets_validate_and_round_trip() {
        for name in PRESETS {
            for kind in [ModelKind::Ddpm, ModelKind::Gan, ModelKind::Vae] {
                let mut c = TrainConfig::preset_for_model(name, kind).unwrap();
                c.data.path = PathBuf::from("data.h5");
                c.validate()
                    .unwrap_or_else(|e| panic!("{name} {kind:?}: {e}"));
                assert_eq!(c.model.kind(), kind);
                assert_eq!(
                    TrainConfig::from_toml(&c.to_toml()).unwrap(),
                    c,
                    "{name} {kind:?}"
                );
            }
        }
        assert_eq!(
            TrainConfig::preset_for_model("mnist", ModelKind::Ddpm).unwrap(),
            TrainConfig::preset("mnist").unwrap()
        );
        // The lecture's lengths: 30 GAN epochs at batch 64, 50 VAE epochs at batch 128.
        let gan = TrainConfig::preset_for_model("mnist", ModelKind::Gan).unwrap();
        assert_eq!(
            (gan.run.steps, gan.data.batch_size, gan.optim.beta1),
            (28_125, 64, 0.5)
        );
        let vae = TrainConfig::preset_for_model("fashion-mnist", ModelKind::Vae).unwrap();
        assert_eq!((vae.run.steps, vae.data.batch_size), (23_438, 128));
        let mut base = TrainConfig::preset_for_model("mnist-cpu", ModelKind::Gan).unwrap();
        base.data.path = PathBuf::from("data.h5");
        for (o, key) in [
            ("model.latent_dim=0", "model.latent_dim"),
            ("model.disc_channels=0", "model.disc_channels"),
            ("model.disc_dropout=1.0", "model.disc_dropout"),
            ("data.conditional=true", "data.conditional"),
        ] {
            let err = base
                .with_overrides(&[o.to_string()])
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{o}: {err}");
        }
    }

    #[test]
    fn unknown_key_is_named() {
        let err = TrainConfig::from_toml("[optim]\nlrr = 0.1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("config `optim.lrr`"), "{err}");
        let err = TrainConfig::from_toml("[optimiser]\nlr = 0.1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("optimiser"), "{err}");
    }

    #[test]
    fn wrong_type_is_reported() {
        let err = TrainConfig::from_toml("[run]\nseed = 1\nsteps = \"many\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("config `run.steps`"), "{err}");
    }

    #[test]
    fn overrides_apply_and_misspelt_overrides_fail() {
        let c = TrainConfig::preset("mnist-cpu").unwrap();
        let c2 = c
            .with_overrides(&[
                "run.steps=10".into(),
                "diffusion.schedule=cosine".into(),
                "optim.lr=3e-4".into(),
            ])
            .unwrap();
        assert_eq!(
            (c2.run.steps, c2.diffusion.schedule, c2.optim.lr),
            (10, BetaSchedule::Cosine, 3e-4)
        );
        let err = c
            .with_overrides(&["run.stepz=10".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("stepz"), "{err}");
        let err = c
            .with_overrides(&["run.steps".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("KEY=VALUE"), "{err}");
    }

    #[test]
    fn validation_names_the_key() {
        let base = TrainConfig::preset("mnist-cpu").unwrap();
        let cases: [(&str, &str); 5] = [
            ("optim.lr=-1.0", "optim.lr"),
            ("optim.beta2=1.5", "optim.beta2"),
            ("data.batch_size=0", "data.batch_size"),
            ("diffusion.loss_type=hybrid", "diffusion"),
            ("run.sample_steps=ddim7000", "run.sample_steps"),
        ];
        for (o, key) in cases {
            let c = base.with_overrides(&[o.to_string()]).unwrap();
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(key), "{o}: {err}");
        }
        // Names outside a setting's vocabulary are parse errors naming the key.
        for (o, key) in [
            ("optim.optimizer=sgd", "config `optim.optimizer`"),
            ("run.device=gpu", "config `run.device`"),
            ("diffusion.schedule=cubic", "config `diffusion.schedule`"),
            ("diffusion.mean_type=noise", "config `diffusion.mean_type`"),
            ("diffusion.var_type=fixed", "config `diffusion.var_type`"),
            ("diffusion.loss_type=l2", "config `diffusion.loss_type`"),
            ("run.sample_steps=ddimfast", "config `run.sample_steps`"),
        ] {
            let err = base
                .with_overrides(&[o.to_string()])
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{o}: {err}");
        }
        let err = base
            .with_overrides(&["diffusion.schedule=cubic".into()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown variant `cubic`, expected one of linear, cosine, quad, sigmoid, const, jsd"),
            "{err}"
        );
        // A learned variance needs twice the output channels.
        let c = base
            .with_overrides(&[
                "diffusion.var_type=learned-range".into(),
                "diffusion.loss_type=hybrid".into(),
            ])
            .unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("model.unet.out_channels"), "{err}");
        let c = base.with_overrides(&["run.steps=0".to_string()]).unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("run.steps"), "{err}");
    }

    #[test]
    fn names_accept_aliases_and_serialise_canonically() {
        let c = TrainConfig::from_toml(
            "[diffusion]\nmean_type = \"v_prediction\"\nvar_type = \"learned_range\"\n\
             loss_type = \"hybrid\"\nschedule = \"cosine\"\n[optim]\noptimizer = \"adamw\"\n\
             [run]\ndevice = \"cuda\"\nsample_steps = \"10,20\"\n",
        )
        .unwrap();
        let d = &c.diffusion;
        assert_eq!(
            (d.mean_type, d.var_type, d.loss_type, d.schedule),
            (
                ModelMeanType::V,
                ModelVarType::LearnedRange,
                LossType::Hybrid,
                BetaSchedule::Cosine
            )
        );
        assert_eq!(c.optim.optimizer, Optimizer::AdamW);
        assert_eq!(c.run.device, DeviceSpec::Cuda(0));
        for (alias, want) in [
            ("eps", ModelMeanType::Epsilon),
            ("start_x", ModelMeanType::StartX),
            ("sample", ModelMeanType::StartX),
            ("x0", ModelMeanType::StartX),
        ] {
            assert_eq!(ModelMeanType::from_name(alias), Ok(want), "{alias}");
        }
        let text = c.to_toml();
        for canonical in [
            "mean_type = \"v\"",
            "var_type = \"learned-range\"",
            "optimizer = \"adamw\"",
            "device = \"cuda:0\"",
            "sample_steps = \"10,20\"",
        ] {
            assert!(text.contains(canonical), "{canonical} in\n{text}");
        }
        assert_eq!(TrainConfig::from_toml(&text).unwrap(), c);
        // Every schedule name that ddpm-math parses is accepted, and only those.
        for s in BetaSchedule::ALL {
            assert_eq!(BetaSchedule::from_name(s.name()), Ok(s));
        }
    }

    #[test]
    fn model_section_is_tagged_by_kind() {
        let c = TrainConfig::from_toml("[model]\nkind = \"gan\"\nlatent_dim = 16\n").unwrap();
        let want = GanModelConfig {
            latent_dim: 16,
            ..GanModelConfig::default()
        };
        assert_eq!(c.model, ModelConfig::Gan(want));
        assert!(c.model.unet().is_none());
        assert!(c.unet().unwrap_err().to_string().contains("model.kind"));
        // Without `kind` a model is a DDPM.
        let c = TrainConfig::from_toml("[model.unet]\nlayers_per_block = 1\n").unwrap();
        assert_eq!(c.model.kind(), ModelKind::Ddpm);
        assert_eq!(c.unet().unwrap().layers_per_block, 1);
        // A GAN's `[model]` cannot carry UNet (or VAE) keys, and misspelt keys are named.
        for (text, key) in [
            (
                "[model]\nkind = \"gan\"\n[model.unet]\ndropout = 0.0\n",
                "config `model.unet`",
            ),
            (
                "[model]\nkind = \"gan\"\nmin_log_scale = -5.0\n",
                "config `model.min_log_scale`",
            ),
            (
                "[model]\nkind = \"vae\"\ndisc_channels = 8\n",
                "config `model.disc_channels`",
            ),
            (
                "[model]\nkind = \"ddpm\"\nlatent_dim = 8\n",
                "config `model.latent_dim`",
            ),
            (
                "[model]\nkind = \"gan\"\nlatent_dimm = 8\n",
                "config `model.latent_dimm`",
            ),
            (
                "[model]\nkind = \"gan\"\nlatent_dim = \"big\"\n",
                "config `model.latent_dim`",
            ),
            ("[model]\nkind = \"flow\"\n", "config `model.kind`"),
            (
                "[model.unet]\nlayers_per_blok = 1\n",
                "config `model.unet.layers_per_blok`",
            ),
        ] {
            let err = TrainConfig::from_toml(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
        let gan = TrainConfig::preset_for_model("mnist-cpu", ModelKind::Gan).unwrap();
        let err = gan
            .with_overrides(&["model.unet.dropout=0.1".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("config `model.unet`"), "{err}");
    }

    /// `config.toml` files written before the model section was typed (every kind's keys in one
    /// flat `[model]`) still load, as the model they trained.
    #[test]
    fn old_flat_config_files_still_load() {
        let fixtures = [
            (
                ModelKind::Gan,
                include_str!("../tests/fixtures/old_config_gan.toml"),
            ),
            (
                ModelKind::Vae,
                include_str!("../tests/fixtures/old_config_vae.toml"),
            ),
            (
                ModelKind::Ddpm,
                include_str!("../tests/fixtures/old_config_ddpm.toml"),
            ),
        ];
        for (kind, text) in fixtures {
            let c = TrainConfig::from_toml(text).unwrap_or_else(|e| panic!("{kind:?}: {e}"));
            let mut want = TrainConfig::preset_for_model("mnist-cpu", kind).unwrap();
            if kind == ModelKind::Ddpm {
                // The fixture predates mnist-cpu's min-SNR and EMA warm-up recipe.
                want.diffusion.loss_weighting = LossWeighting::None;
                want.optim.ema_decay = 0.995;
                want.optim.ema_warmup = false;
            }
            want.run.steps = 1;
            want.data.path = PathBuf::from("datasets/mnist.h5");
            assert_eq!(c, want, "{kind:?}");
            c.validate().unwrap();
        }
    }

    /// `diffusion.loss_weighting`, `diffusion.min_snr_gamma` and the `optim.ema_*` warm-up keys:
    /// defaults that leave old runs unchanged, dotted keys, aliases, and validation naming the key.
    #[test]
    fn loss_weighting_and_ema_warmup_keys() {
        // mnist-cpu's short-run recipe turns both on; the other presets leave them off.
        let cpu = TrainConfig::preset("mnist-cpu").unwrap();
        assert_eq!(cpu.diffusion.loss_weighting, LossWeighting::MinSnr);
        assert!(cpu.optim.ema_warmup && cpu.optim.ema_decay == 0.999);
        let base = TrainConfig::preset("mnist").unwrap();
        let (d, o) = (&base.diffusion, &base.optim);
        assert_eq!(
            (d.loss_weighting, d.min_snr_gamma),
            (LossWeighting::None, 5.0)
        );
        assert_eq!(
            (o.ema_warmup, o.ema_inv_gamma, o.ema_power),
            (false, 1.0, 0.75)
        );
        let keys = dotted_values(&toml::Value::try_from(&base).unwrap());
        for (key, value) in [
            ("diffusion.loss_weighting", "\"none\""),
            ("diffusion.min_snr_gamma", "5.0"),
            ("optim.ema_warmup", "false"),
            ("optim.ema_inv_gamma", "1.0"),
            ("optim.ema_power", "0.75"),
        ] {
            assert_eq!(keys.get(key).map(String::as_str), Some(value), "{key}");
        }
        for spelling in ["min_snr", "min-snr"] {
            let c = base
                .with_overrides(&[format!("diffusion.loss_weighting={spelling}")])
                .unwrap();
            assert_eq!(c.diffusion.loss_weighting, LossWeighting::MinSnr);
            assert!(c.to_toml().contains("loss_weighting = \"min_snr\""));
            let built = c.diffusion.build().unwrap();
            let w = c.diffusion.mse_weights(&built).unwrap().unwrap();
            assert_eq!(w, built.min_snr_weights(5.0).unwrap());
        }
        assert_eq!(
            base.diffusion
                .mse_weights(&base.diffusion.build().unwrap())
                .unwrap(),
            None
        );
        let err = base
            .with_overrides(&["diffusion.loss_weighting=p2".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("config `diffusion.loss_weighting`"), "{err}");
        for (o, key, value) in [
            (
                "diffusion.min_snr_gamma=0.0",
                "diffusion.min_snr_gamma",
                "0",
            ),
            (
                "diffusion.min_snr_gamma=-2.5",
                "diffusion.min_snr_gamma",
                "-2.5",
            ),
            (
                "diffusion.min_snr_gamma=inf",
                "diffusion.min_snr_gamma",
                "inf",
            ),
            ("optim.ema_inv_gamma=0.0", "optim.ema_inv_gamma", "0"),
            ("optim.ema_power=-0.5", "optim.ema_power", "-0.5"),
            ("optim.ema_power=nan", "optim.ema_power", "NaN"),
        ] {
            let c = base.with_overrides(&[o.to_string()]).unwrap();
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(key) && err.contains(value), "{o}: {err}");
        }
        // L_vlb has no MSE term to weight.
        let c = base
            .with_overrides(&[
                "diffusion.var_type=learned-range".into(),
                "diffusion.loss_type=vlb".into(),
                "model.unet.out_channels=2".into(),
                "diffusion.loss_weighting=min_snr".into(),
            ])
            .unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("diffusion.loss_weighting"), "{err}");
        let c = base
            .with_overrides(&[
                "diffusion.loss_weighting=min_snr".into(),
                "diffusion.min_snr_gamma=1.5".into(),
                "optim.ema_warmup=true".into(),
                "optim.ema_power=0.6667".into(),
                "data.path=\"x.h5\"".into(),
            ])
            .unwrap();
        c.validate().unwrap();
    }
}
