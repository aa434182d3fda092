//! The DDPM / GAN / VAE comparison on MNIST: load (or train, when a run directory is missing) the
//! three runs, draw the same number of samples from each (the DDPM once per sampler setting),
//! evaluate all of them against the same reference images, and write `report.md` (the table),
//! `report.json` (the same numbers) and `report.png` (sample grids side by side, one per row).
//!
//! Metrics per row: FID with the Inception network (optional: slow on a CPU), FID_cls and IS_cls
//! with the digit classifier, bits/dim where a likelihood is defined (the DDPM's variational
//! bound, the VAE's negative ELBO; on the first `nll_images` reference images), parameters,
//! training time (`elapsed_secs` of the run's last checkpoint) and sampling time per image.
use std::path::{Path, PathBuf};
use std::time::Instant;

use ddpm_train::baselines::{load_baseline_for_sampling, LatentGenerator};
use ddpm_train::config::ModelKind;
use ddpm_train::engine::TrainOptions;
use ddpm_train::model_io::{load_ddpm, write_samples, Weights};
use ddpm_train::run_dir::RunDir;
use ddpm_train::sampler::{to_uint8_nhwc, Sampler, SamplerSpec};
use ddpm_train::{viz, TrainConfig};
use ndarray::{Array4, ArrayView4};
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use crate::domain::{domain_scores, DomainClassifier, DEFAULT_MNIST_CLASSIFIER};
use crate::error::{MetricsError, Result};
use crate::inception::{EvalOptions, Inception};
use crate::inputs::ImageSource;
use crate::nll::{ddpm_bits_per_dim, vae_bits_per_dim, NllOptions, NllReport};
use crate::refstats::RefStats;
use crate::stats::FeatureStats;

/// One DDPM row: a sampler spec and, optionally, its own sample count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplerRow {
    /// `ddimN` (DDIM, η = 0) or a respacing such as `1000` (ancestral sampling).
    pub spec: String,
    /// Samples for this row (default: the config's `samples`).
    #[serde(default)]
    pub samples: Option<usize>,
}

/// One model of the comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelEntry {
    /// Include this model.
    pub include: bool,
    /// Its run directory (trained here with `train.preset` when missing and `train.missing`).
    pub run: PathBuf,
    /// Extra `KEY=VALUE` overrides when training it here.
    pub set: Vec<String>,
}

impl Default for ModelEntry {
    /// Included, with no run directory (a table that names the model must give `run`).
    fn default() -> Self {
        Self {
            include: true,
            run: PathBuf::new(),
            set: Vec::new(),
        }
    }
}

/// What to do about missing run directories.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainMissing {
    /// Train a missing run (otherwise it is an error).
    pub missing: bool,
    /// The preset of runs trained here (`preset_for_model`).
    pub preset: String,
    /// `KEY=VALUE` overrides for every run trained here.
    pub set: Vec<String>,
}

impl Default for TrainMissing {
    fn default() -> Self {
        Self {
            missing: true,
            preset: "mnist-cpu".into(),
            set: Vec::new(),
        }
    }
}

/// `compare.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompareConfig {
    /// Where `report.md`, `report.json`, `report.png` and the samples go.
    pub out_dir: PathBuf,
    /// `auto`, `cpu`, `cuda`, `cuda:N`.
    pub device: String,
    /// libtorch CPU threads (0 = libtorch's default).
    pub cpu_threads: usize,
    /// Seed of the samples and of the bound's noise.
    pub seed: u64,
    /// Samples per row.
    pub samples: usize,
    /// Reference images (the MNIST test split).
    pub reference: String,
    /// Reference images used for FID / FID_cls (the first N).
    pub reference_images: usize,
    /// Reference images for bits/dim (the first N; 0 = no bits/dim).
    pub nll_images: usize,
    /// Compute FID with the Inception network (slow on a CPU: a few images/s).
    pub fid_inception: bool,
    /// Cache of the reference images' Inception statistics (default `out_dir/reference-inception-stats.h5`);
    /// the same file format and source description as `ddpm-cli eval --real-stats`.
    pub reference_inception_stats: Option<PathBuf>,
    /// The TorchScript Inception of FID.
    pub inception: PathBuf,
    /// The digit classifier folder of FID_cls / IS_cls.
    pub classifier: PathBuf,
    /// Splits of IS_cls.
    pub splits: usize,
    /// Images per network call when sampling and evaluating.
    pub batch_size: usize,
    /// Images in each grid of `report.png`.
    pub grid_images: usize,
    /// The DDPM.
    pub ddpm: ModelEntry,
    /// The DDPM's rows: one per sampler setting.
    pub ddpm_rows: Vec<SamplerRow>,
    /// The GAN.
    pub gan: ModelEntry,
    /// The VAE.
    pub vae: ModelEntry,
    /// Training of missing runs.
    pub train: TrainMissing,
}

impl Default for CompareConfig {
    /// Small CPU settings: 256 samples per row (64 for 1000-step ancestral sampling), FID_cls /
    /// IS_cls against 2000 test images, bits/dim on 32 test images, no Inception FID.
    fn default() -> Self {
        let entry = |run: &str| ModelEntry {
            include: true,
            run: PathBuf::from(run),
            set: Vec::new(),
        };
        Self {
            out_dir: PathBuf::from("runs/compare"),
            device: "auto".into(),
            cpu_threads: 0,
            seed: 0,
            samples: 256,
            reference: "datasets/mnist.h5:test".into(),
            reference_images: 2000,
            nll_images: 32,
            fid_inception: false,
            reference_inception_stats: None,
            inception: PathBuf::from("datasets/weights/fid-inception-pool3.pt"),
            classifier: PathBuf::from(DEFAULT_MNIST_CLASSIFIER),
            splits: 10,
            batch_size: 128,
            grid_images: 64,
            ddpm: entry("runs/mnist-cpu"),
            ddpm_rows: vec![
                SamplerRow {
                    spec: "1000".into(),
                    samples: Some(64),
                },
                SamplerRow {
                    spec: "ddim50".into(),
                    samples: None,
                },
                SamplerRow {
                    spec: "ddim10".into(),
                    samples: None,
                },
            ],
            gan: entry("runs/mnist-cpu-gan"),
            vae: entry("runs/mnist-cpu-vae"),
            train: TrainMissing::default(),
        }
    }
}

impl CompareConfig {
    /// Reads a TOML file (unknown keys are errors).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| MetricsError::io(path, e))?;
        Self::from_toml(&text).map_err(|message| MetricsError::Config {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> std::result::Result<Self, String> {
        let c: Self = toml::from_str(text).map_err(|e| e.to_string())?;
        c.validate()?;
        Ok(c)
    }

    /// The configuration as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a CompareConfig always serialises")
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if self.samples == 0 || self.batch_size == 0 || self.reference_images < 2 {
            return Err("samples and batch_size must be ≥ 1 and reference_images ≥ 2".into());
        }
        if self.ddpm_rows.iter().any(|r| r.samples == Some(0)) {
            return Err("a DDPM row with samples = 0".into());
        }
        if !self.ddpm.include && !self.gan.include && !self.vae.include {
            return Err("no model included".into());
        }
        for (name, e) in [("ddpm", &self.ddpm), ("gan", &self.gan), ("vae", &self.vae)] {
            if e.include && e.run.as_os_str().is_empty() {
                return Err(format!(
                    "{name}.run is empty (a [{name}] table must name its run directory)"
                ));
            }
        }
        Ok(())
    }
}

/// One row of the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    /// `DDPM`, `GAN` or `VAE`.
    pub model: String,
    /// Sampler and steps (`ancestral 1000`, `DDIM 50`, `generator`, `decoder mean`).
    pub sampler: String,
    /// Samples drawn.
    pub n: usize,
    /// FID with the Inception network.
    pub fid_inception: Option<f64>,
    /// FID with the classifier features.
    pub fid_cls: f64,
    /// IS with the classifier probabilities: mean.
    pub is_cls_mean: f64,
    /// IS_cls standard deviation over the splits.
    pub is_cls_std: f64,
    /// Bits/dim (DDPM bound, VAE negative ELBO), on the first `nll_images` reference images.
    pub bpd: Option<f64>,
    /// Parameters of the sampling network.
    pub parameters: usize,
    /// Training steps of the loaded checkpoint.
    pub train_steps: usize,
    /// Training wall-clock seconds (`state.json` of the last checkpoint).
    pub train_secs: f64,
    /// Sampling seconds per image.
    pub sample_secs_per_image: f64,
}

/// What [`run_compare`] produced.
#[derive(Debug, Clone, Serialize)]
pub struct CompareReport {
    /// The rows, in order.
    pub rows: Vec<Row>,
    /// Bits/dim details per model.
    pub nll: Vec<(String, NllReport)>,
    /// Reference images used for FID / FID_cls.
    pub reference_images: usize,
    /// The classifier's description.
    pub classifier: String,
    /// The Inception network's description, when FID-Inception was computed.
    pub inception: Option<String>,
    /// The configuration.
    pub config: CompareConfig,
}

/// Parameter count of a variable store.
fn parameters(vs: &nn::VarStore) -> usize {
    vs.variables().values().map(|t| t.numel()).sum()
}

/// Loads a run directory, or trains it first when it is missing and `train.missing` allows.
fn ensure_run(cfg: &CompareConfig, entry: &ModelEntry, kind: ModelKind) -> Result<()> {
    let dir = &entry.run;
    let has_ckpt = dir.join("config.toml").is_file()
        && RunDir::open(dir)
            .and_then(|r| r.latest_checkpoint())
            .ok()
            .flatten()
            .is_some();
    if has_ckpt {
        return Ok(());
    }
    if !cfg.train.missing {
        return Err(MetricsError::Config {
            path: dir.clone(),
            message: format!("no {kind:?} run with a checkpoint here, and train.missing = false"),
        });
    }
    let resume = dir.join("config.toml").is_file();
    let tc = if resume {
        RunDir::open(dir)?.config()?
    } else {
        let mut set = cfg.train.set.clone();
        set.extend(entry.set.iter().cloned());
        // The runs train on the reference's dataset file (its train split) unless `set` says otherwise.
        let mut tc = TrainConfig::preset_for_model(&cfg.train.preset, kind)?;
        if let Ok(ImageSource::Split { path, .. }) = ImageSource::parse(&cfg.reference) {
            tc.data.path = path;
        }
        tc.with_overrides(&set)?
    };
    tracing::info!(dir = %dir.display(), ?kind, steps = tc.run.steps, resume, "training a missing run");
    let opts = TrainOptions::default();
    ddpm_train::train(dir, &tc, resume, &opts)?;
    Ok(())
}

fn train_state(dir: &Path) -> Result<(usize, f64)> {
    let run = RunDir::open(dir)?;
    let ckpt = run
        .latest_checkpoint()?
        .ok_or_else(|| MetricsError::Config {
            path: dir.to_path_buf(),
            message: "has no checkpoint".into(),
        })?;
    let s = RunDir::read_state(&ckpt)?;
    Ok((s.step, s.elapsed_secs))
}

/// uint8 `[N, H, W, C]` tensor → ndarray.
fn to_array(images: &Tensor) -> Result<Array4<u8>> {
    let t = images
        .to_device(Device::Cpu)
        .to_kind(Kind::Uint8)
        .contiguous();
    let s: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
    let data =
        Vec::<u8>::try_from(t.view([-1])).map_err(|e| MetricsError::torch("reading samples", e))?;
    Array4::from_shape_vec((s[0], s[1], s[2], s[3]), data)
        .map_err(|e| MetricsError::Shape(e.to_string()))
}

/// ndarray `[N, H, W, C]` → uint8 tensor `[N, C, H, W]`.
fn to_nchw(images: ArrayView4<'_, u8>) -> Tensor {
    let (n, h, w, c) = images.dim();
    let data: Vec<u8> = images.iter().copied().collect();
    Tensor::from_slice(&data)
        .view([n as i64, h as i64, w as i64, c as i64])
        .permute([0, 3, 1, 2])
        .contiguous()
}

/// Centre-crops samples `[N, H, W, C]` to `(h, w)` (a 32×32 model of 28×28 data).
fn crop_to(images: Tensor, h: i64, w: i64) -> Tensor {
    let s = images.size();
    if s[1] == h && s[2] == w {
        return images;
    }
    images
        .narrow(1, (s[1] - h) / 2, h)
        .narrow(2, (s[2] - w) / 2, w)
        .contiguous()
}

/// Everything shared by the rows: the reference images and their statistics, the networks.
struct Evaluator<'a> {
    cfg: &'a CompareConfig,
    reference: Array4<u8>,
    classifier: DomainClassifier,
    real_cls: crate::domain::ClassifierOutputs,
    inception: Option<(Inception, FeatureStats)>,
}

impl Evaluator<'_> {
    fn row_metrics(&self, images: &Array4<u8>) -> Result<(Option<f64>, f64, f64, f64)> {
        let fake = self
            .classifier
            .evaluate(images.view(), self.cfg.batch_size)?;
        let splits = self.cfg.splits.min(images.dim().0).max(1);
        let s = domain_scores(Some(&self.real_cls), &fake, Some(splits))?;
        let fid_inception = match &self.inception {
            Some((net, real)) => {
                let start = Instant::now();
                let opts = EvalOptions {
                    batch_size: self.cfg.batch_size.min(50),
                    ..EvalOptions::default()
                };
                let st = net
                    .evaluate(images.view(), &opts)?
                    .stats
                    .expect("features were asked for");
                tracing::info!(
                    images_per_sec = images.dim().0 as f64 / start.elapsed().as_secs_f64(),
                    "Inception on samples"
                );
                Some(crate::fid::frechet_distance(real, &st)?)
            }
            None => None,
        };
        let is = s.is_cls.expect("asked for");
        Ok((
            fid_inception,
            s.fid_cls.expect("asked for"),
            is.mean,
            is.std,
        ))
    }
}

/// Runs the comparison described by `cfg` and writes the report files into `cfg.out_dir`.
pub fn run_compare(cfg: &CompareConfig) -> Result<CompareReport> {
    if cfg.cpu_threads > 0 {
        tch::set_num_threads(cfg.cpu_threads as i32);
    }
    let device = cfg
        .device
        .parse::<ddpm_nets::device::DeviceSpec>()
        .and_then(|d| d.resolve())
        .map_err(|e| MetricsError::Config {
            path: PathBuf::from("device"),
            message: e.to_string(),
        })?;
    std::fs::create_dir_all(&cfg.out_dir).map_err(|e| MetricsError::io(&cfg.out_dir, e))?;
    // The classifier first: a missing one fails before any training or sampling.
    let classifier = DomainClassifier::load(&cfg.classifier, device)?;
    let src = ImageSource::parse(&cfg.reference)?;
    let reference = src.load(Some(cfg.reference_images.max(cfg.nll_images)))?;
    let n_ref = cfg.reference_images.min(reference.dim().0);
    let ref_fid = reference.slice(ndarray::s![..n_ref, .., .., ..]).to_owned();
    let real_cls = classifier.evaluate(ref_fid.view(), cfg.batch_size)?;
    let inception = if cfg.fid_inception {
        let net = Inception::load(&cfg.inception, device)?;
        let description = crate::refstats::source_description(&src, n_ref);
        let cache = cfg
            .reference_inception_stats
            .clone()
            .unwrap_or_else(|| cfg.out_dir.join("reference-inception-stats.h5"));
        let stats = match RefStats::load_matching(&cache, &description, &net.describe())? {
            Some(s) => s,
            None => {
                let start = Instant::now();
                let s = net
                    .evaluate(ref_fid.view(), &EvalOptions::default())?
                    .stats
                    .expect("features were asked for");
                tracing::info!(
                    images_per_sec = n_ref as f64 / start.elapsed().as_secs_f64(),
                    "Inception on the reference images"
                );
                RefStats {
                    stats: s.clone(),
                    source: description,
                    network: net.describe(),
                }
                .save(&cache)?;
                s
            }
        };
        Some((net, stats))
    } else {
        None
    };
    let inception_desc = inception.as_ref().map(|(n, _)| n.describe());
    let ev = Evaluator {
        cfg,
        reference,
        classifier,
        real_cls,
        inception,
    };
    let (h, w) = (ev.reference.dim().1 as i64, ev.reference.dim().2 as i64);
    let nll_images = cfg.nll_images.min(ev.reference.dim().0);
    let nll_data = to_nchw(ev.reference.slice(ndarray::s![..nll_images, .., .., ..]));
    let nll_opts = NllOptions {
        seed: cfg.seed,
        ..NllOptions::default()
    };

    let mut rows = Vec::new();
    let mut grids = Vec::new();
    let mut nlls = Vec::new();
    let samples_dir = cfg.out_dir.join("samples");

    if cfg.ddpm.include {
        ensure_run(cfg, &cfg.ddpm, ModelKind::Ddpm)?;
        let m = load_ddpm(&cfg.ddpm.run, Weights::Ema, device)?;
        let (steps, train_secs) = train_state(&cfg.ddpm.run)?;
        let params = parameters(&m.vs);
        let unet = &m.unet;
        let bpd = if nll_images > 0 {
            let pad_to_32 = m.hw != (h, w);
            let r = ddpm_bits_per_dim(
                |x, t| unet.forward_t(x, t, None, false),
                &m.diffusion,
                &nll_data,
                device,
                &NllOptions {
                    pad_to_32,
                    ..nll_opts.clone()
                },
            )?;
            let total = r.total;
            nlls.push(("DDPM".to_string(), r));
            Some(total)
        } else {
            None
        };
        let c = m.unet.config().in_channels;
        for row in &cfg.ddpm_rows {
            let n = row.samples.unwrap_or(cfg.samples);
            let spec = SamplerSpec::parse(&row.spec, m.diffusion.num_timesteps())?;
            let sampler = Sampler::new(&m.diffusion, &spec, device)?;
            tracing::info!(spec = %row.spec, n, steps = sampler.num_steps(), "DDPM sampling");
            tch::manual_seed(cfg.seed as i64);
            let start = Instant::now();
            let mut chunks = Vec::new();
            let mut done = 0;
            while done < n {
                let k = (n - done).min(cfg.batch_size) as i64;
                let noise = Tensor::randn([k, c, m.hw.0, m.hw.1], (Kind::Float, device));
                let s = sampler.sample(
                    |x, t, _| unet.forward_t(x, t, None, false),
                    noise,
                    None,
                    0,
                    |_| {},
                );
                chunks.push(to_uint8_nhwc(&s.images).to_device(Device::Cpu));
                done += k as usize;
            }
            let secs = start.elapsed().as_secs_f64();
            let images = crop_to(Tensor::cat(&chunks, 0), h, w);
            let label = match spec.kind {
                ddpm_train::sampler::SamplerKind::Ddpm => {
                    format!("ancestral {}", spec.timesteps.len())
                }
                ddpm_train::sampler::SamplerKind::Ddim { .. } => {
                    format!("DDIM {}", spec.timesteps.len())
                }
            };
            rows.push(finish_row(
                &ev,
                "DDPM",
                &label,
                &images,
                params,
                steps,
                train_secs,
                secs,
                bpd,
                &mut grids,
                &samples_dir,
            )?);
        }
    }
    for (entry, kind, name, label) in [
        (&cfg.gan, ModelKind::Gan, "GAN", "generator"),
        (&cfg.vae, ModelKind::Vae, "VAE", "decoder mean"),
    ] {
        if !entry.include {
            continue;
        }
        ensure_run(cfg, entry, kind)?;
        let m = load_baseline_for_sampling(&entry.run, device)?;
        if m.kind != kind {
            return Err(MetricsError::Config {
                path: entry.run.clone(),
                message: format!("holds a {:?} run, expected {kind:?}", m.kind),
            });
        }
        let (steps, train_secs) = train_state(&entry.run)?;
        let bpd = match (&m.net, nll_images > 0) {
            (LatentGenerator::Vae(vae), true) => {
                let s = vae.config().image_size;
                let r = vae_bits_per_dim(
                    vae,
                    &nll_data,
                    device,
                    &NllOptions {
                        pad_to_32: (s, s) != (h, w),
                        ..nll_opts.clone()
                    },
                )?;
                let total = r.total;
                nlls.push((name.to_string(), r));
                Some(total)
            }
            _ => None,
        };
        tracing::info!(model = name, n = cfg.samples, "sampling");
        let start = Instant::now();
        let images = m
            .net
            .sample_uint8(cfg.samples, cfg.batch_size, cfg.seed, device);
        let secs = start.elapsed().as_secs_f64();
        let images = crop_to(images, h, w);
        rows.push(finish_row(
            &ev,
            name,
            label,
            &images,
            parameters(&m.vs),
            steps,
            train_secs,
            secs,
            bpd,
            &mut grids,
            &samples_dir,
        )?);
    }

    let report = CompareReport {
        rows,
        nll: nlls,
        reference_images: n_ref,
        classifier: ev.classifier.describe(),
        inception: inception_desc,
        config: cfg.clone(),
    };
    let md = render_markdown(&report);
    let write = |name: &str, text: &str| {
        let p = cfg.out_dir.join(name);
        std::fs::write(&p, text).map_err(|e| MetricsError::io(&p, e))
    };
    write("report.md", &md)?;
    write(
        "report.json",
        &serde_json::to_string_pretty(&report).expect("serialisable"),
    )?;
    viz::save_png(&viz::hstack(&grids, 12), &cfg.out_dir.join("report.png"))?;
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
fn finish_row(
    ev: &Evaluator<'_>,
    model: &str,
    sampler: &str,
    images: &Tensor,
    parameters: usize,
    train_steps: usize,
    train_secs: f64,
    sample_secs: f64,
    bpd: Option<f64>,
    grids: &mut Vec<image::RgbImage>,
    samples_dir: &Path,
) -> Result<Row> {
    let arr = to_array(images)?;
    let n = arr.dim().0;
    let (fid_inception, fid_cls, is_cls_mean, is_cls_std) = ev.row_metrics(&arr)?;
    let k = ev.cfg.grid_images.clamp(1, n) as i64;
    grids.push(viz::grid_nhwc(
        &images.narrow(0, 0, k),
        (k as f64).sqrt().ceil() as usize,
    ));
    let file = samples_dir.join(format!(
        "{}-{}.h5",
        model.to_lowercase(),
        sampler.to_lowercase().replace(' ', "")
    ));
    write_samples(
        &file,
        images,
        &[
            ("model", model.to_string()),
            ("sampler", sampler.to_string()),
        ],
    )?;
    let row = Row {
        model: model.into(),
        sampler: sampler.into(),
        n,
        fid_inception,
        fid_cls,
        is_cls_mean,
        is_cls_std,
        bpd,
        parameters,
        train_steps,
        train_secs,
        sample_secs_per_image: sample_secs / n as f64,
    };
    tracing::info!(?row, "compare row");
    Ok(row)
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "—".into(), |x| format!("{x:.digits$}"))
}

/// The Markdown report: the table, the bits/dim parts, and how the numbers were made.
pub fn render_markdown(r: &CompareReport) -> String {
    let c = &r.config;
    let mut s = String::from("# DDPM vs GAN vs VAE on MNIST\n\n");
    s.push_str(
        "| model | sampler / steps | n | FID-Inception | FID_cls | IS_cls | bits/dim | parameters | training (steps, time) | sampling s/image |\n",
    );
    s.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for row in &r.rows {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {:.3} | {:.3} ± {:.3} | {} | {} | {} steps, {:.0} s | {:.4} |\n",
            row.model,
            row.sampler,
            row.n,
            opt(row.fid_inception, 2),
            row.fid_cls,
            row.is_cls_mean,
            row.is_cls_std,
            opt(row.bpd, 3),
            row.parameters,
            row.train_steps,
            row.train_secs,
            row.sample_secs_per_image,
        ));
    }
    s.push_str("\n## Bits/dim\n\n");
    if r.nll.is_empty() {
        s.push_str("Not computed (nll_images = 0).\n");
    }
    for (name, n) in &r.nll {
        match n.vb_sum {
            Some(vb) => s.push_str(&format!(
                "- {name}: {:.4} bits/dim = L_T {:.4} + Σ_(t≥1) L_t {:.4} + L_0 {:.4} (full variational bound over all T, {} test images, one x_t sample per step)\n",
                n.total, n.prior, vb, n.decoder, n.n
            )),
            None => s.push_str(&format!(
                "- {name}: {:.4} bits/dim = KL {:.4} + reconstruction {:.4} (negative ELBO, one latent sample, {} test images)\n",
                n.total, n.prior, n.decoder, n.n
            )),
        }
    }
    s.push_str(&format!(
        "\n## Setup\n\n- Reference: `{}`, first {} images (FID, FID_cls); bits/dim on the first {} (same discretisation: 256 bins on x = p/127.5 − 1).\n- {}; FID_cls = Fréchet distance of its penultimate features, IS_cls = Inception Score of its softmax ({} splits).\n- FID-Inception: {}.\n- Runs: DDPM `{}`, GAN `{}`, VAE `{}`; DDPM samples from the EMA weights. Seed {}.\n- Training time = `elapsed_secs` of the run's last checkpoint; sampling time = wall clock of drawing the row's samples (batch {}) / n, device `{}`.\n- `report.png`: the first {} samples of each row, left to right in table order.\n",
        c.reference,
        r.reference_images,
        c.nll_images,
        r.classifier,
        c.splits,
        r.inception.as_deref().unwrap_or("not computed (fid_inception = false)"),
        c.ddpm.run.display(),
        c.gan.run.display(),
        c.vae.run.display(),
        c.seed,
        c.batch_size,
        c.device,
        c.grid_images,
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_round_trips_and_rejects_unknown_keys() {
        let c = CompareConfig::default();
        assert_eq!(CompareConfig::from_toml(&c.to_toml()).unwrap(), c);
        let err = CompareConfig::from_toml("sampels = 3").unwrap_err();
        assert!(err.contains("sampels"), "{err}");
        let c = CompareConfig::from_toml("samples = 8\n[gan]\ninclude = false\n").unwrap();
        assert!(CompareConfig::from_toml("[vae]\nset = []\n")
            .unwrap_err()
            .contains("vae.run"));
        assert_eq!(c.samples, 8);
        assert!(!c.gan.include && c.vae.include);
    }

    #[test]
    fn markdown_has_one_line_per_row() {
        let row = Row {
            model: "GAN".into(),
            sampler: "generator".into(),
            n: 4,
            fid_inception: None,
            fid_cls: 1.5,
            is_cls_mean: 2.0,
            is_cls_std: 0.1,
            bpd: None,
            parameters: 10,
            train_steps: 2,
            train_secs: 3.0,
            sample_secs_per_image: 0.01,
        };
        let r = CompareReport {
            rows: vec![
                row.clone(),
                Row {
                    model: "VAE".into(),
                    bpd: Some(1.25),
                    ..row
                },
            ],
            nll: Vec::new(),
            reference_images: 10,
            classifier: "classifier x".into(),
            inception: None,
            config: CompareConfig::default(),
        };
        let md = render_markdown(&r);
        assert!(md.contains("| GAN | generator | 4 | — | 1.500 | 2.000 ± 0.100 | — | 10 | 2 steps, 3 s | 0.0100 |"), "{md}");
        assert!(
            md.contains("| VAE | generator | 4 | — | 1.500 | 2.000 ± 0.100 | 1.250 |"),
            "{md}"
        );
    }
}
