//! Training and sampling of the lecture's baselines, the DCGAN and the convolutional VAE of
//! ddpm-nets, with the DDPM trainer's conventions: run directories, per-step seeding (exact resume
//! without RNG state), one host sync per log interval, NaN detection that names the step, atomic
//! checkpoints, sample grids from fixed latents, and a clean stop on request.
//!
//! Checkpoint tensor groups: GAN `generator`, `discriminator`, `optim_g`, `optim_d`; VAE `model`,
//! `optim`. The networks' own configs (derived from `[model]` and the data's image shape) are kept
//! in `RUN_DIR/networks.json`, so sampling needs no dataset.
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

use ddpm_nets::checkpoint::{load_varstore, read_json, read_tensors, write_json};
use ddpm_nets::gan::{self, Discriminator, DiscriminatorConfig, Generator, GeneratorConfig};
use ddpm_nets::vae::{Vae, VaeConfig};
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use crate::config::{ModelKind, TrainConfig};
use crate::error::{Result, TrainError};
use crate::loader;
use crate::optim::Adam;
use crate::run_dir::{RunDir, TrainState};
use crate::trainer::{
    all_finite, finish_run, named_trainables, progress_bar, setup_device, step_seed, TrainOptions,
    TrainSummary,
};
use crate::viz;

/// File of a baseline run directory that holds the networks' configs.
pub const NETWORKS_FILE: &str = "networks.json";

/// The network configs of a baseline run (`RUN_DIR/networks.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum NetworkConfigs {
    /// DCGAN generator and discriminator.
    Gan {
        /// The generator.
        generator: GeneratorConfig,
        /// The discriminator.
        discriminator: DiscriminatorConfig,
    },
    /// The VAE.
    Vae {
        /// The VAE.
        vae: VaeConfig,
    },
}

impl NetworkConfigs {
    /// The networks of `cfg` for images of `channels` × `size` × `size`.
    pub fn from_config(cfg: &TrainConfig, channels: i64, size: i64) -> Result<Self> {
        let m = &cfg.model;
        match m.kind {
            ModelKind::Gan => Ok(Self::Gan {
                generator: GeneratorConfig {
                    z_dim: m.latent_dim,
                    base_channels: m.base_channels,
                    out_channels: channels,
                    image_size: size,
                },
                discriminator: DiscriminatorConfig {
                    in_channels: channels,
                    base_channels: m.disc_channels,
                    image_size: size,
                    dropout: m.disc_dropout,
                    ..DiscriminatorConfig::default()
                },
            }),
            ModelKind::Vae => Ok(Self::Vae {
                vae: VaeConfig {
                    in_channels: channels,
                    image_size: size,
                    latent_dim: m.latent_dim,
                    base_channels: m.base_channels,
                    per_pixel_scale: m.vae_per_pixel_scale,
                    min_log_scale: m.vae_min_log_scale,
                },
            }),
            ModelKind::Ddpm => Err(TrainError::config(
                "model.kind",
                "is ddpm, not a baseline (gan or vae)",
            )),
        }
    }
}

/// A network that turns latents z ~ N(0, I) into images: the GAN's generator or the VAE's decoder.
#[derive(Debug)]
pub enum Generative {
    /// G(z).
    Gan(Generator),
    /// The decoder mean of z.
    Vae(Vae),
}

impl Generative {
    /// Size of z.
    pub fn latent_dim(&self) -> i64 {
        match self {
            Self::Gan(g) => g.config().z_dim,
            Self::Vae(v) => v.config().latent_dim,
        }
    }

    /// Images in [−1, 1] from latents, in eval mode, without gradients.
    ///
    /// # Shapes
    /// `z`: `[N, latent_dim]` → `[N, C, H, W]`.
    pub fn generate(&self, z: &Tensor) -> Tensor {
        tch::no_grad(|| match self {
            Self::Gan(g) => g.forward_t(z, false),
            Self::Vae(v) => v.decode(z).0.clamp(-1.0, 1.0),
        })
    }

    /// uint8 images `[n, H, W, C]` on the CPU from z ~ N(0, I) seeded by `seed`, `batch` at a time.
    pub fn sample_uint8(&self, n: usize, batch: usize, seed: u64, device: Device) -> Tensor {
        tch::manual_seed(seed as i64);
        let mut chunks = Vec::new();
        let mut done = 0;
        while done < n {
            let k = (n - done).min(batch.max(1)) as i64;
            let z = Tensor::randn([k, self.latent_dim()], (Kind::Float, device));
            chunks.push(crate::sampler::to_uint8_nhwc(&self.generate(&z)).to_device(Device::Cpu));
            done += k as usize;
        }
        Tensor::cat(&chunks, 0)
    }
}

/// A baseline loaded from a run directory for sampling.
pub struct LoadedBaseline {
    /// Its variables (keep alive with the network).
    pub vs: nn::VarStore,
    /// The generator or decoder.
    pub net: Generative,
    /// `gan` or `vae`.
    pub kind: ModelKind,
    /// The weights file.
    pub source: PathBuf,
    /// Training steps of the checkpoint.
    pub step: usize,
}

/// Loads the generator (GAN) or the VAE of the newest checkpoint of a baseline run directory.
pub fn load_baseline_for_sampling(run_dir: &Path, device: Device) -> Result<LoadedBaseline> {
    let run = RunDir::open(run_dir)?;
    let cfg = run.config()?;
    let ckpt = run
        .latest_checkpoint()?
        .ok_or_else(|| TrainError::Checkpoint {
            path: run_dir.to_path_buf(),
            message: "has no checkpoint yet".into(),
        })?;
    let state = RunDir::read_state(&ckpt)?;
    let nets: NetworkConfigs = read_json(&run_dir.join(NETWORKS_FILE))?;
    let mut vs = nn::VarStore::new(device);
    let (net, source) = match (&nets, cfg.model.kind) {
        (NetworkConfigs::Gan { generator, .. }, ModelKind::Gan) => {
            (Generative::Gan(Generator::new(vs.root(), generator)?), ckpt.join("generator.safetensors"))
        }
        (NetworkConfigs::Vae { vae }, ModelKind::Vae) => {
            (Generative::Vae(Vae::new(vs.root(), vae)?), ckpt.join("model.safetensors"))
        }
        (_, kind) => {
            return Err(TrainError::Checkpoint {
                path: run_dir.to_path_buf(),
                message: format!("config.toml says model.kind {kind:?} but {NETWORKS_FILE} disagrees or it is no baseline"),
            })
        }
    };
    load_varstore(&mut vs, &source)?;
    vs.freeze();
    Ok(LoadedBaseline {
        vs,
        net,
        kind: cfg.model.kind,
        source,
        step: state.step,
    })
}

/// `n` uint8 samples `[n, H, W, C]` (CPU) of a baseline run: GAN = G(z), VAE = decoder means of z,
/// z ~ N(0, I) seeded by `seed`.
pub fn sample_baseline(run_dir: &Path, n: usize, seed: u64, device: Device) -> Result<Tensor> {
    let model = load_baseline_for_sampling(run_dir, device)?;
    Ok(model.net.sample_uint8(n, 256, seed, device))
}

/// What a baseline's training loop needs from its networks.
trait Baseline: Sized {
    /// The kind this trains.
    const KIND: ModelKind;
    /// Names of the scalars that [`Baseline::train_step`] returns (all checked for finiteness).
    const METRICS: &'static [&'static str];
    /// Builds the networks and optimisers.
    fn new(cfg: &TrainConfig, nets: &NetworkConfigs, device: Device) -> Result<Self>;
    /// One optimisation step on a batch in [−1, 1]; returns 0-d device tensors (no host sync).
    fn train_step(&mut self, x: &Tensor, cfg: &TrainConfig, lr: f64) -> Vec<Tensor>;
    /// Whether every trainable parameter is finite.
    fn finite(&self) -> bool;
    /// The checkpoint's tensor groups.
    fn groups(&self) -> Vec<(&'static str, Vec<(String, Tensor)>)>;
    /// Loads a checkpoint written from [`Baseline::groups`]; the optimisers must be at `step`.
    fn restore(&mut self, ckpt: &Path, step: usize) -> Result<()>;
    /// The image generator (for grids).
    fn generative(&self) -> &Generative;
}

/// All variables of a store, sorted by name.
fn sorted_vars(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn adam_for(vs: &nn::VarStore, cfg: &TrainConfig) -> (Vec<(String, Tensor)>, Adam) {
    let params = named_trainables(vs);
    let adam = Adam::new(
        params
            .iter()
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect(),
        &cfg.optim,
    );
    (params, adam)
}

fn clip_and_step(adam: &mut Adam, cfg: &TrainConfig, lr: f64) {
    if cfg.optim.grad_clip > 0.0 {
        let norm = adam.grad_norm();
        adam.clip_grad_norm(&norm, cfg.optim.grad_clip);
    }
    adam.step(lr);
}

fn restore_adam(adam: &mut Adam, path: &Path, step: usize) -> Result<()> {
    let tensors = read_tensors(path)?;
    adam.load_state(&tensors)
        .map_err(|message| TrainError::Checkpoint {
            path: path.to_path_buf(),
            message,
        })?;
    if adam.step as usize != step {
        return Err(TrainError::Checkpoint {
            path: path.to_path_buf(),
            message: format!(
                "optimiser step {} differs from the recorded step {step}",
                adam.step
            ),
        });
    }
    Ok(())
}

struct GanModel {
    vs_g: nn::VarStore,
    vs_d: nn::VarStore,
    g: Generative,
    d: Discriminator,
    params: Vec<(String, Tensor)>,
    opt_g: Adam,
    opt_d: Adam,
}

impl GanModel {
    fn generator(&self) -> &Generator {
        match &self.g {
            Generative::Gan(g) => g,
            Generative::Vae(_) => unreachable!("a GanModel holds a generator"),
        }
    }
}

impl Baseline for GanModel {
    const KIND: ModelKind = ModelKind::Gan;
    const METRICS: &'static [&'static str] = &["d_loss", "g_loss", "d_real", "d_fake"];

    fn new(cfg: &TrainConfig, nets: &NetworkConfigs, device: Device) -> Result<Self> {
        let NetworkConfigs::Gan {
            generator,
            discriminator,
        } = nets
        else {
            return Err(TrainError::config("model.kind", "expected GAN networks"));
        };
        let vs_g = nn::VarStore::new(device);
        let g = Generator::new(vs_g.root(), generator)?;
        let vs_d = nn::VarStore::new(device);
        let d = Discriminator::new(vs_d.root(), discriminator)?;
        let (mut params, opt_g) = adam_for(&vs_g, cfg);
        let (d_params, opt_d) = adam_for(&vs_d, cfg);
        params.extend(d_params);
        Ok(Self {
            vs_g,
            vs_d,
            g: Generative::Gan(g),
            d,
            params,
            opt_g,
            opt_d,
        })
    }

    fn train_step(&mut self, x: &Tensor, cfg: &TrainConfig, lr: f64) -> Vec<Tensor> {
        let n = x.size()[0];
        let z = Tensor::randn(
            [n, self.generator().config().z_dim],
            (Kind::Float, x.device()),
        );
        let fake = self.generator().forward_t(&z, true);
        // Discriminator: real vs. detached fakes.
        let real_logits = self.d.forward_t(x, true);
        let fake_logits = self.d.forward_t(&fake.detach(), true);
        let d_loss = gan::discriminator_loss(&real_logits, &fake_logits);
        self.opt_d.zero_grad();
        d_loss.backward();
        clip_and_step(&mut self.opt_d, cfg, lr);
        // Generator: the non-saturating loss on the same fakes through the updated discriminator.
        let g_loss = gan::generator_loss(&self.d.forward_t(&fake, true));
        self.opt_g.zero_grad();
        g_loss.backward();
        clip_and_step(&mut self.opt_g, cfg, lr);
        let d_real = real_logits.detach().sigmoid().mean(Kind::Float);
        let d_fake = fake_logits.detach().sigmoid().mean(Kind::Float);
        vec![d_loss.detach(), g_loss.detach(), d_real, d_fake]
    }

    fn finite(&self) -> bool {
        all_finite(&self.params)
    }

    fn groups(&self) -> Vec<(&'static str, Vec<(String, Tensor)>)> {
        vec![
            ("generator", sorted_vars(&self.vs_g)),
            ("discriminator", sorted_vars(&self.vs_d)),
            ("optim_g", self.opt_g.state_tensors()),
            ("optim_d", self.opt_d.state_tensors()),
        ]
    }

    fn restore(&mut self, ckpt: &Path, step: usize) -> Result<()> {
        load_varstore(&mut self.vs_g, &ckpt.join("generator.safetensors"))?;
        load_varstore(&mut self.vs_d, &ckpt.join("discriminator.safetensors"))?;
        restore_adam(&mut self.opt_g, &ckpt.join("optim_g.safetensors"), step)?;
        restore_adam(&mut self.opt_d, &ckpt.join("optim_d.safetensors"), step)
    }

    fn generative(&self) -> &Generative {
        &self.g
    }
}

struct VaeModel {
    vs: nn::VarStore,
    net: Generative,
    params: Vec<(String, Tensor)>,
    opt: Adam,
}

impl Baseline for VaeModel {
    const KIND: ModelKind = ModelKind::Vae;
    const METRICS: &'static [&'static str] = &["loss", "recon_bpd", "kl_bpd"];

    fn new(cfg: &TrainConfig, nets: &NetworkConfigs, device: Device) -> Result<Self> {
        let NetworkConfigs::Vae { vae } = nets else {
            return Err(TrainError::config("model.kind", "expected VAE networks"));
        };
        let vs = nn::VarStore::new(device);
        let net = Vae::new(vs.root(), vae)?;
        let (params, opt) = adam_for(&vs, cfg);
        Ok(Self {
            vs,
            net: Generative::Vae(net),
            params,
            opt,
        })
    }

    fn train_step(&mut self, x: &Tensor, cfg: &TrainConfig, lr: f64) -> Vec<Tensor> {
        let Generative::Vae(vae) = &self.net else {
            unreachable!("a VaeModel holds a VAE")
        };
        // The loss is the negative ELBO in bits/dim (one latent sample per image).
        let elbo = vae.elbo_bits_per_dim(x, true);
        let loss = elbo.total.mean(Kind::Float);
        self.opt.zero_grad();
        loss.backward();
        clip_and_step(&mut self.opt, cfg, lr);
        vec![
            loss.detach(),
            elbo.reconstruction.detach().mean(Kind::Float),
            elbo.kl.detach().mean(Kind::Float),
        ]
    }

    fn finite(&self) -> bool {
        all_finite(&self.params)
    }

    fn groups(&self) -> Vec<(&'static str, Vec<(String, Tensor)>)> {
        vec![
            ("model", sorted_vars(&self.vs)),
            ("optim", self.opt.state_tensors()),
        ]
    }

    fn restore(&mut self, ckpt: &Path, step: usize) -> Result<()> {
        load_varstore(&mut self.vs, &ckpt.join("model.safetensors"))?;
        restore_adam(&mut self.opt, &ckpt.join("optim.safetensors"), step)
    }

    fn generative(&self) -> &Generative {
        &self.net
    }
}

/// Trains the DCGAN baseline (`model.kind = "gan"`) in a new run directory (`resume = false`) or
/// continues the run in `dir`. Per step: one discriminator update on a real batch and as many
/// fakes, then one generator update (non-saturating loss) on the same fakes. Logged per interval:
/// `d_loss`, `g_loss`, `d_real` = mean D(x), `d_fake` = mean D(G(z)) (before the D update).
pub fn train_gan(
    dir: &Path,
    cfg: &TrainConfig,
    resume: bool,
    opts: &TrainOptions,
) -> Result<TrainSummary> {
    drive::<GanModel>(dir, cfg, resume, opts)
}

/// Trains the VAE baseline (`model.kind = "vae"`) on the negative ELBO in bits/dim (discretised
/// Gaussian decoder, as DDPM's L_0), in a new run directory or continuing the one in `dir`.
/// Logged per interval: `loss` = `elbo_bpd` (negative ELBO, bits/dim), `recon_bpd`, `kl_bpd`.
pub fn train_vae(
    dir: &Path,
    cfg: &TrainConfig,
    resume: bool,
    opts: &TrainOptions,
) -> Result<TrainSummary> {
    drive::<VaeModel>(dir, cfg, resume, opts)
}

/// Device-side scalars of one log interval, read back once per interval.
struct Scalars {
    rows: Vec<Tensor>,
    start: Instant,
}

impl Scalars {
    fn record(&mut self, values: &[Tensor]) {
        self.rows
            .push(Tensor::stack(values, 0).to_kind(Kind::Float));
    }

    /// The interval's means (one host sync); a non-finite value is an error naming its step.
    fn flush(
        &mut self,
        step_after: usize,
        last_ckpt: &Option<PathBuf>,
    ) -> Result<Option<(Vec<f64>, usize, f64)>> {
        if self.rows.is_empty() {
            return Ok(None);
        }
        let steps = self.rows.len();
        let k = self.rows[0].size()[0] as usize;
        let all = Vec::<f64>::try_from(
            Tensor::stack(&self.rows, 0)
                .to_kind(Kind::Double)
                .to_device(Device::Cpu)
                .view([-1]),
        )?;
        if let Some(i) = all.iter().position(|v| !v.is_finite()) {
            return Err(TrainError::NonFinite {
                what: "loss",
                step: step_after - steps + i / k + 1,
                value: all[i],
                last_checkpoint: last_ckpt.clone(),
            });
        }
        let means = (0..k)
            .map(|j| all.iter().skip(j).step_by(k).sum::<f64>() / steps as f64)
            .collect();
        let secs = self.start.elapsed().as_secs_f64();
        self.rows.clear();
        self.start = Instant::now();
        Ok(Some((means, steps, secs)))
    }
}

fn drive<B: Baseline>(
    dir: &Path,
    cfg: &TrainConfig,
    resume: bool,
    opts: &TrainOptions,
) -> Result<TrainSummary> {
    cfg.validate()?;
    if cfg.model.kind != B::KIND {
        return Err(TrainError::config(
            "model.kind",
            format!("is {:?}; this trainer trains {:?}", cfg.model.kind, B::KIND),
        ));
    }
    let run = if resume {
        let run = RunDir::open(dir)?;
        run.write_config(cfg)?;
        run
    } else {
        RunDir::create(dir, cfg)?
    };
    let device = setup_device(cfg)?;
    let data = loader::load_images(&cfg.data.path, &cfg.data.split)?;
    loader::check_data(&cfg.data, &data)?;
    let (c, h, w) = data.chw();
    let (h, w) = if cfg.data.pad_to_32 {
        (h.max(32), w.max(32))
    } else {
        (h, w)
    };
    if h != w {
        return Err(TrainError::config(
            "data.path",
            format!("the baselines need square images, got {h}×{w}"),
        ));
    }
    let nets = NetworkConfigs::from_config(cfg, c, h)?;
    let nets_path = run.path.join(NETWORKS_FILE);
    if resume && nets_path.is_file() {
        let old: NetworkConfigs = read_json(&nets_path)?;
        if old != nets {
            return Err(TrainError::Checkpoint {
                path: nets_path,
                message: "the networks of the run differ from those of this config and data".into(),
            });
        }
    }
    write_json(&nets_path, &nets)?;
    // The initial weights are a function of the seed too (a fresh run in the same process as
    // another one starts from the same weights).
    tch::manual_seed(cfg.run.seed as i64);
    let mut model = B::new(cfg, &nets, device)?;
    let mut state = TrainState {
        step: 0,
        seed: cfg.run.seed,
        elapsed_secs: 0.0,
        images_seen: 0,
        sampler_history: None,
    };
    let mut last_checkpoint = None;
    if resume {
        if let Some(ckpt) = run.latest_checkpoint()? {
            state = RunDir::read_state(&ckpt)?;
            if state.seed != cfg.run.seed {
                return Err(TrainError::config(
                    "run.seed",
                    format!(
                        "the run was started with seed {}, not {}",
                        state.seed, cfg.run.seed
                    ),
                ));
            }
            model.restore(&ckpt, state.step)?;
            tracing::info!(step = state.step, checkpoint = %ckpt.display(), "resumed");
            run.truncate_metrics(state.step)?;
            last_checkpoint = Some(ckpt);
        } else {
            tracing::warn!(dir = %dir.display(), "no checkpoint yet; starting from step 0");
        }
    }
    let mut batches = loader::BatchSampler::new(data.len(), cfg.data.batch_size, cfg.run.seed);
    let bar = progress_bar(opts.progress, cfg.run.steps, state.step);
    let session_start = Instant::now();
    let elapsed_before = state.elapsed_secs;
    let mut scalars = Scalars {
        rows: Vec::with_capacity(cfg.run.log_every),
        start: Instant::now(),
    };
    let mut last_loss = f64::NAN;
    let mut interrupted = false;

    while state.step < cfg.run.steps {
        let step = state.step;
        // All randomness of this step derives from (seed, step): resuming needs no RNG state.
        tch::manual_seed(step_seed(cfg.run.seed, step) as i64);
        let (x_u8, _) = data.gather(&batches.indices(step));
        let mut x = loader::to_model_input(&x_u8, cfg.data.pad_to_32, device);
        if cfg.data.random_flip {
            x = loader::random_flip(&x, cfg.run.seed, step);
        }
        let n = x.size()[0];
        let lr = Adam::lr_at(&cfg.optim, step);
        let values = model.train_step(&x, cfg, lr);
        scalars.record(&values);
        state.step += 1;
        state.images_seen += n as u64;
        if let Some(b) = &bar {
            b.inc(1);
        }

        let stop = opts.stop.load(Ordering::SeqCst);
        let at_log = state.step % cfg.run.log_every == 0;
        let at_ckpt = cfg.run.checkpoint_every > 0 && state.step % cfg.run.checkpoint_every == 0;
        let last = state.step == cfg.run.steps;
        if at_log || at_ckpt || last || stop {
            state.elapsed_secs = elapsed_before + session_start.elapsed().as_secs_f64();
            if let Some((means, steps, secs)) = scalars.flush(state.step, &last_checkpoint)? {
                last_loss = means[0];
                let mut record = serde_json::json!({ "step": state.step });
                for (name, v) in B::METRICS.iter().zip(&means) {
                    record[*name] = serde_json::json!(v);
                }
                if B::KIND == ModelKind::Vae {
                    record["elbo_bpd"] = serde_json::json!(means[0]);
                }
                record["lr"] = serde_json::json!(lr);
                record["img_per_s"] = serde_json::json!(steps as f64 * n as f64 / secs.max(1e-9));
                record["elapsed_s"] = serde_json::json!(state.elapsed_secs);
                run.append_metrics(&record)?;
                tracing::info!(step = state.step, metrics = %metrics_line(B::METRICS, &means), "train");
                if let Some(b) = &bar {
                    b.set_message(metrics_line(B::METRICS, &means));
                }
            }
        }
        if at_ckpt || last || stop {
            // A loss can be finite while the update that followed it was not: never checkpoint
            // non-finite weights.
            if !model.finite() {
                return Err(TrainError::NonFinite {
                    what: "weights",
                    step: state.step,
                    value: f64::NAN,
                    last_checkpoint,
                });
            }
            let ckpt =
                run.save_checkpoint(&state, cfg, &model.groups(), cfg.run.keep_checkpoints)?;
            tracing::info!(step = state.step, checkpoint = %ckpt.display(), "checkpoint");
            last_checkpoint = Some(ckpt);
            plot_metrics(&run, B::METRICS)?;
        }
        let at_sample = cfg.run.sample_every > 0 && state.step % cfg.run.sample_every == 0;
        if at_sample || (last && cfg.run.sample_num > 0) {
            let path = run
                .path
                .join("samples")
                .join(format!("step_{}.png", state.step));
            sample_grid(model.generative(), cfg, device, &path)?;
            tracing::info!(path = %path.display(), "sample grid");
        }
        if stop && !last {
            interrupted = true;
            tracing::warn!(step = state.step, "stopped on request; checkpoint saved");
            break;
        }
    }
    finish_run(&run, bar, last_checkpoint, &state, last_loss, interrupted)
}

fn metrics_line(names: &[&str], values: &[f64]) -> String {
    names
        .iter()
        .zip(values)
        .map(|(n, v)| format!("{n} {v:.4}"))
        .collect::<Vec<_>>()
        .join(" | ")
}

/// A grid of `run.sample_num` images from latents that are the same at every call of a run.
fn sample_grid(net: &Generative, cfg: &TrainConfig, device: Device, path: &Path) -> Result<()> {
    let n = cfg.run.sample_num.max(1);
    let images = net.sample_uint8(n, n, step_seed(cfg.run.seed, usize::MAX / 2), device);
    let img = viz::grid_nhwc(&images, (n as f64).sqrt().ceil() as usize);
    viz::save_png(&img, path)
}

/// Redraws `loss.png` from `metrics.jsonl`: one panel per metric, against step.
fn plot_metrics(run: &RunDir, names: &[&str]) -> Result<()> {
    let records = run.read_metrics()?;
    if records.len() < 2 {
        return Ok(());
    }
    const COLORS: [[u8; 3]; 4] = [
        [31, 119, 180],
        [214, 39, 40],
        [44, 160, 44],
        [148, 103, 189],
    ];
    let xs: Vec<f64> = records
        .iter()
        .map(|r| r["step"].as_f64().unwrap_or(f64::NAN))
        .collect();
    let panels: Vec<viz::Panel> = names
        .iter()
        .enumerate()
        .map(|(i, name)| viz::Panel {
            xs: xs.clone(),
            ys: records
                .iter()
                .map(|r| r[*name].as_f64().unwrap_or(f64::NAN))
                .collect(),
            color: COLORS[i % COLORS.len()],
            log_y: false,
        })
        .collect();
    viz::save_png(&viz::plot_panels(&panels), &run.path.join("loss.png"))
}
