//! The plan of a reproduction: the three models' training configs, the training budget and the
//! evaluation protocol, resolved from the command line and stored as `DIR/plan.toml`, so that a
//! later run of the same command continues the same experiment, and a changed budget or config is
//! refused naming what changed ([`Plan::differences`]).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ddpm_train::config::{dotted_values, ModelKind, TrainConfig};
use serde::{Deserialize, Serialize};

/// Wall-clock training minutes per model on a CPU when `--minutes-per-model` is not given. Measured
/// with 25 on 2 cores (2026-12-08): `ddpm-cli reproduce` took 150 minutes (3 × 25 of training plus
/// the DDPM's curve evaluations, about 70 of references, sampling and scoring), the whole `cargo
/// xtask reproduce mnist` on a fresh checkout 157.
pub const CPU_MINUTES_PER_MODEL: f64 = 25.0;

/// A step count no budgeted run reaches: on a CPU the budget ends training, not `run.steps`.
pub const BUDGETED_STEPS: usize = 10_000_000;

/// How every row is scored (the same for all rows).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Protocol {
    /// Samples (and test images) of FID with the Inception (pytorch-fid's pool3 network).
    pub fid_samples: usize,
    /// Samples (and test images) of FID_cls and IS_cls.
    pub cls_samples: usize,
    /// Samples of the ancestral 1000-step row (fewer on a CPU: 1000 network calls per image).
    pub ancestral_samples: usize,
    /// Test images of bits/dim (DDPM: T network calls per image).
    pub nll_images: usize,
    /// Images per network call when sampling and scoring.
    pub batch_size: usize,
    /// Samples per chunk file: a stopped run loses at most one chunk of sampling.
    pub chunk: usize,
    /// Seed of the samples and of the bound's noise.
    pub seed: u64,
}

impl Protocol {
    /// The protocol: FID on 2000, FID_cls / IS_cls on 10,000, every DDPM sampler on the
    /// full sample count (the GPU plan).
    pub fn full() -> Self {
        Self {
            fid_samples: 2000,
            cls_samples: 10_000,
            ancestral_samples: 10_000,
            nll_images: 1000,
            batch_size: 500,
            chunk: 1000,
            seed: 0,
        }
    }

    /// The CPU plan: the same FID and FID_cls sample counts; ancestral sampling (1000 network
    /// calls per image) on 500 samples and bits/dim on 100 test images, stated in the results.
    pub fn cpu() -> Self {
        Self {
            ancestral_samples: 500,
            nll_images: 100,
            batch_size: 250,
            ..Self::full()
        }
    }

    /// Samples drawn for a row: enough for both FIDs, or the ancestral row's own count.
    pub fn samples_for(&self, ancestral: bool) -> usize {
        if ancestral {
            self.ancestral_samples
        } else {
            self.fid_samples.max(self.cls_samples)
        }
    }

    fn validate(&self) -> Result<()> {
        for (flag, v) in [
            ("--fid-samples", self.fid_samples),
            ("--cls-samples", self.cls_samples),
            ("--ancestral-samples", self.ancestral_samples),
        ] {
            if v < 2 {
                bail!(crate::usage!(
                    "{flag} {v}: a Fréchet distance needs at least 2 images"
                ));
            }
        }
        if self.chunk == 0 {
            bail!(crate::usage!(
                "--chunk 0: a chunk holds at least one sample"
            ));
        }
        Ok(())
    }
}

/// The three models' training configs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Models {
    /// The DDPM (with `run.eval_every` for the FID_cls-against-minutes curve).
    pub ddpm: TrainConfig,
    /// The GAN baseline.
    pub gan: TrainConfig,
    /// The VAE baseline.
    pub vae: TrainConfig,
}

impl Models {
    /// `(name, kind, config)` in training order.
    pub fn iter(&self) -> [(&'static str, ModelKind, &TrainConfig); 3] {
        [
            ("ddpm", ModelKind::Ddpm, &self.ddpm),
            ("gan", ModelKind::Gan, &self.gan),
            ("vae", ModelKind::Vae, &self.vae),
        ]
    }
}

/// `DIR/plan.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// The experiment (`mnist`).
    pub experiment: String,
    /// `cpu` or `cuda` (`cuda:N`).
    pub device: String,
    /// Training wall-clock minutes per model; 0 = the presets' step counts (CUDA).
    pub minutes_per_model: f64,
    /// The MNIST dataset file (its `train` split trains, its `test` split is the reference).
    pub data: PathBuf,
    /// The digit classifier of FID_cls / IS_cls.
    pub classifier: PathBuf,
    /// The FID Inception (TorchScript).
    pub inception: PathBuf,
    /// How the rows are scored.
    pub protocol: Protocol,
    /// What is trained.
    pub models: Models,
}

/// What the command line decides about a plan.
pub struct PlanInputs<'a> {
    /// The resolved device: CUDA uses the GPU presets and their step counts.
    pub cuda: bool,
    /// The device as given (`cpu`, `cuda`, `cuda:1`).
    pub device: String,
    /// `--minutes-per-model`, when given.
    pub minutes: Option<f64>,
    /// Dataset file, classifier and Inception paths.
    pub data: PathBuf,
    /// The classifier folder.
    pub classifier: PathBuf,
    /// The Inception file.
    pub inception: PathBuf,
    /// `--set` overrides: `KEY=VALUE` for all three models, `MODEL:KEY=VALUE` for one.
    pub set: &'a [String],
    /// Protocol overrides.
    pub protocol: ProtocolOverrides,
    /// The shape of the training images (the DDPM's UNet is fitted to it).
    pub shape: &'a ddpm_train::fit::DataShape,
}

/// The protocol options of the command line (`None`: the plan's default).
#[derive(Debug, Default, Clone, Copy)]
pub struct ProtocolOverrides {
    /// `--fid-samples`.
    pub fid_samples: Option<usize>,
    /// `--cls-samples`.
    pub cls_samples: Option<usize>,
    /// `--ancestral-samples`.
    pub ancestral_samples: Option<usize>,
    /// `--nll-images`.
    pub nll_images: Option<usize>,
    /// `--chunk`.
    pub chunk: Option<usize>,
}

/// Points of the DDPM's FID_cls-against-minutes curve (evaluations during training).
const CURVE_POINTS: f64 = 8.0;
/// Samples of each curve point (DPM-Solver++ 20, scored against 10,000 training digits).
const CURVE_SAMPLES: usize = 500;

impl Plan {
    /// The plan the command line asks for.
    ///
    /// # Errors
    /// A non-finite or negative budget, an unknown `--set` model or key, a bad protocol value.
    pub fn resolve(inp: &PlanInputs<'_>) -> Result<Self> {
        let minutes = match (inp.minutes, inp.cuda) {
            (Some(m), _) if !(m.is_finite() && m > 0.0) => {
                bail!(crate::usage!(
                    "--minutes-per-model {m}: must be a positive number of minutes"
                ))
            }
            (Some(m), _) => m,
            (None, true) => 0.0,
            (None, false) => CPU_MINUTES_PER_MODEL,
        };
        let mut protocol = if inp.cuda {
            Protocol::full()
        } else {
            Protocol::cpu()
        };
        let o = inp.protocol;
        protocol.fid_samples = o.fid_samples.unwrap_or(protocol.fid_samples);
        protocol.cls_samples = o.cls_samples.unwrap_or(protocol.cls_samples);
        protocol.ancestral_samples = o.ancestral_samples.unwrap_or(protocol.ancestral_samples);
        protocol.nll_images = o.nll_images.unwrap_or(protocol.nll_images);
        protocol.chunk = o.chunk.unwrap_or(protocol.chunk);
        protocol.validate()?;
        let preset = if inp.cuda { "mnist" } else { "mnist-cpu" };
        let model = |name: &str, kind: ModelKind| -> Result<TrainConfig> {
            let mut c = TrainConfig::preset_for_model(preset, kind)?;
            let preset_steps = c.run.steps;
            c.data.path = inp.data.clone();
            c.data.split = "train".into();
            c.run.device = inp
                .device
                .parse()
                .with_context(|| format!("--device {}", inp.device))?;
            if minutes > 0.0 {
                c.run.steps = BUDGETED_STEPS;
                c.run.time_limit_minutes = minutes;
                if kind == ModelKind::Ddpm && !inp.cuda {
                    c.data.batch_size = CPU_BUDGET_DDPM_BATCH;
                }
            }
            let set = overrides_for(inp.set, name)?;
            let mut c = c.with_overrides(&set)?;
            if kind == ModelKind::Ddpm {
                let steps = if minutes > 0.0 && !inp.cuda {
                    // The curve needs only a rough spacing.
                    (minutes * 60.0 * CPU_STEPS_PER_SEC) as usize
                } else {
                    preset_steps
                };
                curve_settings(&mut c, steps, &inp.classifier);
                c = c.with_overrides(&set)?;
                c.fit_to_data(inp.shape)?;
            }
            c.validate()
                .with_context(|| format!("the {name} config (--set {name}:KEY=VALUE)"))?;
            if minutes > 0.0 && c.run.time_limit_minutes <= 0.0 {
                bail!(crate::usage!(
                    "--set {name}:run.time_limit_minutes=0: a budgeted reproduction needs a limit for every model"
                ));
            }
            Ok(c)
        };
        Ok(Self {
            experiment: "mnist".into(),
            device: inp.device.clone(),
            minutes_per_model: minutes,
            data: inp.data.clone(),
            classifier: inp.classifier.clone(),
            inception: inp.inception.clone(),
            protocol,
            models: Models {
                ddpm: model("ddpm", ModelKind::Ddpm)?,
                gan: model("gan", ModelKind::Gan)?,
                vae: model("vae", ModelKind::Vae)?,
            },
        })
    }

    /// Reads `DIR/plan.toml`; `None` when there is none.
    ///
    /// # Errors
    /// An unreadable or invalid file, naming it.
    pub fn read(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join("plan.toml");
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let plan = toml::from_str(&text).with_context(|| {
            format!(
                "{}: not a reproduction plan (remove the folder or pass another --out)",
                path.display()
            )
        })?;
        Ok(Some(plan))
    }

    /// Writes `DIR/plan.toml` atomically.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let text = toml::to_string_pretty(self).context("the plan serialises")?;
        write_text(&dir.join("plan.toml"), &text)
    }

    /// The dotted keys whose values differ between `self` and `other` (e.g.
    /// `minutes_per_model`, `models.ddpm.optim.lr`), with both values.
    pub fn differences(&self, other: &Plan) -> Vec<String> {
        let flat = |p: &Plan| dotted_values(&toml::Value::try_from(p).expect("serialisable"));
        let (a, b) = (flat(self), flat(other));
        let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
        keys.sort();
        keys.dedup();
        let none = String::from("(absent)");
        keys.into_iter()
            .filter(|k| a.get(*k) != b.get(*k))
            .map(|k| {
                format!(
                    "{k}: {} → {}",
                    a.get(k).unwrap_or(&none),
                    b.get(k).unwrap_or(&none)
                )
            })
            .collect()
    }
}

/// The DDPM's evaluations during training: about [`CURVE_POINTS`] of them over `steps` (the
/// budget's steps at the CPU's measured speed, or the preset's step count).
fn curve_settings(c: &mut TrainConfig, steps: usize, classifier: &Path) {
    let every = ((steps as f64 / CURVE_POINTS) as usize).max(1);
    c.run.eval_every = round_to(every, c.run.log_every.max(1));
    c.run.eval_samples = CURVE_SAMPLES;
    c.run.eval_sampler = ddpm_train::config::SampleSteps::new("dpm++20").expect("valid spec");
    c.run.eval_network = Some(classifier.to_path_buf());
    c.run.eval_reference_images = 10_000;
}

/// The DDPM's batch on a CPU budget. mnist-cpu's 64 suits its fixed step count; against the
/// clock, more and smaller steps win: side by side for 8 minutes (one thread each), batch 32 took
/// 2098 steps to FID_cls 146 (1000 DPM-Solver++ 20 samples against 1000 test digits), batch 64
/// 1038 steps to 189.
pub const CPU_BUDGET_DDPM_BATCH: usize = 32;

/// mnist-cpu's training speed at [`CPU_BUDGET_DDPM_BATCH`] on 2 cores (steps/s), for spacing the
/// curve's points only.
const CPU_STEPS_PER_SEC: f64 = 5.0;

/// `n` rounded to a multiple of `m` (at least `m`).
fn round_to(n: usize, m: usize) -> usize {
    (n.div_ceil(m) * m).max(m)
}

/// The `--set` overrides of one model: `KEY=VALUE` (all models) and `MODEL:KEY=VALUE` (this one).
fn overrides_for(set: &[String], model: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for s in set {
        let (target, kv) = match s.split_once(':') {
            Some((m, kv)) if !m.contains('=') => (Some(m), kv),
            _ => (None, s.as_str()),
        };
        if let Some(m) = target {
            if !["ddpm", "gan", "vae"].contains(&m) {
                bail!(crate::usage!(
                    "--set {s}: unknown model `{m}` (ddpm, gan or vae)"
                ));
            }
        }
        if target.is_none_or(|m| m == model) {
            out.push(kv.to_string());
        }
    }
    Ok(out)
}

/// Writes `text` to `path` atomically (folders are created).
pub fn write_text(path: &Path, text: &str) -> Result<()> {
    ddpm_nets::atomic::write_atomically(path, |tmp| -> Result<()> {
        Ok(std::fs::write(tmp, text)?)
    })
    .with_context(|| format!("cannot write {}", path.display()))
}

/// Whether two training configs differ at most in their budget: `run.time_limit_minutes` and
/// the curve's `run.eval_every`, which follows it.
pub fn same_but_budget(a: &TrainConfig, b: &TrainConfig) -> bool {
    let unbudgeted = |c: &TrainConfig| {
        let mut c = c.clone();
        c.run.time_limit_minutes = 0.0;
        c.run.eval_every = 0;
        c
    };
    unbudgeted(a) == unbudgeted(b)
}

/// The training configs as the run directories store them, by model name.
pub fn by_name(models: &Models) -> BTreeMap<&'static str, &TrainConfig> {
    models.iter().into_iter().map(|(n, _, c)| (n, c)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    static SHAPE: ddpm_train::fit::DataShape = ddpm_train::fit::DataShape {
        height: 28,
        width: 28,
        channels: 1,
        num_classes: 10,
    };

    fn inputs(set: &[String], minutes: Option<f64>) -> PlanInputs<'_> {
        PlanInputs {
            cuda: false,
            device: "cpu".into(),
            minutes,
            data: "datasets/mnist.h5".into(),
            classifier: "datasets/weights/classifier-mnist".into(),
            inception: "datasets/weights/fid-inception-pool3.pt".into(),
            set,
            protocol: ProtocolOverrides::default(),
            shape: &SHAPE,
        }
    }

    #[test]
    fn the_cpu_plan_is_budgeted_and_round_trips() {
        let p = Plan::resolve(&inputs(&[], None)).unwrap();
        assert_eq!(p.minutes_per_model, CPU_MINUTES_PER_MODEL);
        assert_eq!(p.protocol, Protocol::cpu());
        for (_, _, c) in p.models.iter() {
            assert_eq!(c.run.steps, BUDGETED_STEPS);
            assert_eq!(c.run.time_limit_minutes, CPU_MINUTES_PER_MODEL);
            assert_eq!(c.data.path, PathBuf::from("datasets/mnist.h5"));
        }
        assert!(p.models.ddpm.run.eval_every > 0);
        assert_eq!(p.models.ddpm.data.batch_size, CPU_BUDGET_DDPM_BATCH);
        assert_eq!(
            p.models.gan.data.batch_size,
            TrainConfig::preset_for_model("mnist-cpu", ModelKind::Gan)
                .unwrap()
                .data
                .batch_size
        );
        assert_eq!(p.models.gan.run.eval_every, 0);
        let dir = tempfile::tempdir().unwrap();
        p.write(dir.path()).unwrap();
        assert_eq!(Plan::read(dir.path()).unwrap().unwrap(), p);
        assert!(Plan::read(&dir.path().join("absent")).unwrap().is_none());
    }

    #[test]
    fn differences_name_the_changed_keys() {
        let a = Plan::resolve(&inputs(&[], None)).unwrap();
        let set = vec!["gan:optim.lr=0.001".to_string()];
        let b = Plan::resolve(&inputs(&set, Some(5.0))).unwrap();
        let d = a.differences(&b);
        assert!(
            d.contains(&format!(
                "minutes_per_model: {CPU_MINUTES_PER_MODEL:?} → 5.0"
            )),
            "{d:?}"
        );
        assert!(
            d.iter().any(|l| l.starts_with("models.gan.optim.lr: ")),
            "{d:?}"
        );
        assert!(
            d.contains(&format!(
                "models.vae.run.time_limit_minutes: {CPU_MINUTES_PER_MODEL:?} → 5.0"
            )),
            "{d:?}"
        );
        assert!(a.differences(&a).is_empty());
        assert_eq!(a.models.ddpm.optim.lr, b.models.ddpm.optim.lr);
    }

    #[test]
    fn bad_inputs_are_named() {
        let err = Plan::resolve(&inputs(&[], Some(-1.0))).unwrap_err();
        assert!(
            err.downcast_ref::<crate::exit::Usage>().is_some(),
            "{err:#}"
        );
        assert!(
            format!("{err:#}").contains("--minutes-per-model -1"),
            "{err:#}"
        );
        let set = vec!["unet:optim.lr=1".to_string()];
        let err = Plan::resolve(&inputs(&set, None)).unwrap_err();
        assert!(
            format!("{err:#}").contains("unknown model `unet`"),
            "{err:#}"
        );
        let set = vec!["optim.lrr=1".to_string()];
        let err = Plan::resolve(&inputs(&set, None)).unwrap_err();
        assert!(format!("{err:#}").contains("optim.lrr"), "{err:#}");
        let mut inp = inputs(&[], None);
        inp.protocol.fid_samples = Some(1);
        let err = Plan::resolve(&inp).unwrap_err();
        assert!(format!("{err:#}").contains("--fid-samples 1"), "{err:#}");
        assert!(err.downcast_ref::<crate::exit::Usage>().is_some());
    }

    #[test]
    fn a_set_without_a_model_applies_to_all_and_the_curve_follows_the_budget() {
        let set = vec!["run.log_every=10".to_string()];
        let p = Plan::resolve(&inputs(&set, Some(1.0))).unwrap();
        for (_, _, c) in p.models.iter() {
            assert_eq!(c.run.log_every, 10);
        }
        // 1 minute at 5 steps/s over 8 points: every 37 steps, rounded up to the log window.
        assert_eq!(CPU_STEPS_PER_SEC, 5.0);
        assert_eq!(p.models.ddpm.run.eval_every, 40);
        let set = vec!["ddpm:run.eval_every=7".to_string()];
        let p = Plan::resolve(&inputs(&set, Some(1.0))).unwrap();
        assert_eq!(p.models.ddpm.run.eval_every, 7, "--set wins over the curve");
    }
}
