//! The DDPM training loop: data → q_sample → ε_θ → loss → Adam → EMA, with logging every N steps
//! (the only host synchronisation), periodic sample grids and atomic checkpoints, exact resume,
//! clean stop on request, and NaN/inf detection that names the step.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use ddpm_math::{
    GaussianDiffusion, LossSecondMomentSampler, LossType, LossWeights, ScheduleSampler,
};
use ddpm_nets::checkpoint::{load_varstore, read_tensors};
use ddpm_nets::device::DeviceSpec;
use ddpm_nets::UNet2DModel;
use rand::rngs::StdRng;
use rand::SeedableRng;
use tch::{nn, Device, Kind, Tensor};

use crate::config::{ModelKind, TrainConfig};
use crate::error::{Result, TrainError};
use crate::loader::{self, BatchSampler, ImageData};
use crate::objective::training_losses;
use crate::optim::{Adam, Ema};
use crate::run_dir::{RunDir, TrainState};
use crate::sampler::{Sampler, SamplerSpec};
use crate::tables::DeviceTables;
use crate::viz;

/// How a training call was started and how it should report.
pub struct TrainOptions {
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// Set to true (e.g. by Ctrl-C) to save a checkpoint and stop after the current step.
    pub stop: Arc<AtomicBool>,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            progress: false,
            stop: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// What a finished (or stopped) run reports.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// Steps completed in total.
    pub step: usize,
    /// Mean loss over the last log interval.
    pub last_loss: f64,
    /// Wall-clock training seconds (all sessions).
    pub elapsed_secs: f64,
    /// Whether the run stopped early on request.
    pub interrupted: bool,
    /// The newest checkpoint.
    pub checkpoint: PathBuf,
}

/// Selects the device and CPU threads of a run.
pub fn setup_device(cfg: &TrainConfig) -> Result<Device> {
    if cfg.run.cpu_threads > 0 {
        tch::set_num_threads(cfg.run.cpu_threads as i32);
    }
    let spec: DeviceSpec = cfg.run.device.parse()?;
    Ok(spec.resolve()?)
}

/// Whether the network runs under bf16 autocast on `device`: `run.bf16` on CUDA, `run.cpu_bf16` on the CPU.
pub fn uses_bf16(cfg: &TrainConfig, device: Device) -> bool {
    if device.is_cuda() {
        cfg.run.bf16
    } else {
        cfg.run.cpu_bf16
    }
}

/// The networks and their variable stores: the live model and its EMA copy.
pub struct DdpmModel {
    /// Trainable variables.
    pub vs: nn::VarStore,
    /// The UNet on `vs`.
    pub unet: UNet2DModel,
    /// EMA variables (same names).
    pub ema_vs: nn::VarStore,
    /// The UNet on `ema_vs`.
    pub ema_unet: UNet2DModel,
}

impl DdpmModel {
    /// Builds both networks on `device` (the EMA starts equal to the fresh weights).
    pub fn new(cfg: &TrainConfig, device: Device) -> Result<Self> {
        let vs = nn::VarStore::new(device);
        let unet = UNet2DModel::new(vs.root(), &cfg.model.unet)?;
        let mut ema_vs = nn::VarStore::new(device);
        let ema_unet = UNet2DModel::new(ema_vs.root(), &cfg.model.unet)?;
        ema_vs.copy(&vs)?;
        ema_vs.freeze();
        Ok(Self {
            vs,
            unet,
            ema_vs,
            ema_unet,
        })
    }
}

/// Named trainable variables, sorted by name (a stable order for the optimiser and EMA).
pub fn named_trainables(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(_, t)| t.requires_grad())
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Named variables of the EMA store in the same order as [`named_trainables`] of the live one.
fn named_like(vs: &nn::VarStore, names: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
    let all = vs.variables();
    names
        .iter()
        .map(|(n, _)| (n.clone(), all[n].shallow_clone()))
        .collect()
}

/// What one optimisation step needs besides the batch and the optimiser state: shared by
/// [`train_ddpm`] and the benchmark (`crate::bench`), so both time the same code.
pub struct StepContext<'a> {
    /// The run's configuration (objective weights, optimiser, label dropout, bf16).
    pub cfg: &'a TrainConfig,
    /// q_sample / loss tables on the device.
    pub tables: &'a DeviceTables,
    /// Loss weights of the objective.
    pub weights: LossWeights,
    /// The training device.
    pub device: Device,
    /// bf16 autocast of the network (`run.bf16` on CUDA, `run.cpu_bf16` on the CPU).
    pub autocast: bool,
    /// The null label of a class-conditional model.
    pub null_class: Option<i64>,
    /// Number of diffusion steps T.
    pub t_len: i64,
}

impl<'a> StepContext<'a> {
    /// The context of `cfg` on `device` with `tables` built from `diffusion`.
    pub fn new(
        cfg: &'a TrainConfig,
        diffusion: &GaussianDiffusion,
        tables: &'a DeviceTables,
        device: Device,
    ) -> Self {
        Self {
            cfg,
            tables,
            weights: diffusion.loss_weights(),
            device,
            autocast: uses_bf16(cfg, device),
            null_class: cfg.model.unet.num_class_embeds.map(|n| n - 1),
            t_len: diffusion.num_timesteps() as i64,
        }
    }
}

/// What one step leaves on the device (nothing is read back).
pub struct StepOutput {
    /// The (importance-weighted) mean loss, 0-d.
    pub loss: Tensor,
    /// The unweighted per-sample losses `[N]`.
    pub per_sample: Tensor,
    /// The timesteps drawn `[N]`.
    pub t: Tensor,
    /// The global gradient norm before clipping, 0-d.
    pub grad_norm: Tensor,
    /// The learning rate used.
    pub lr: f64,
    /// Batch size.
    pub n: i64,
}

/// The batch of step `step`: gather (uint8, host) → float in [−1, 1] on the device → flips.
pub fn prepare_batch(
    data: &ImageData,
    batches: &mut BatchSampler,
    cfg: &TrainConfig,
    step: usize,
    device: Device,
) -> (Tensor, Tensor) {
    let idx = batches.indices(step);
    let (x_u8, labels) = data.gather(&idx);
    let mut x0 = loader::to_model_input(&x_u8, cfg.data.pad_to_32, device);
    if cfg.data.random_flip {
        x0 = loader::random_flip(&x0, cfg.run.seed, step);
    }
    (x0, labels)
}

/// One optimisation step on the batch `x0` (labels on the host or device): t and ε draws,
/// q_sample, ε_θ (bf16 autocast on CUDA), loss, backward, grad-norm clipping, Adam, EMA. No host
/// synchronisation (unless an importance sampler draws t). The torch RNG must be seeded by the
/// caller.
#[allow(clippy::too_many_arguments)]
pub fn train_step(
    ctx: &StepContext,
    unet: &UNet2DModel,
    adam: &mut Adam,
    ema: &mut Ema,
    params: &[(String, Tensor)],
    is_sampler: Option<&LossSecondMomentSampler>,
    x0: &Tensor,
    labels: &Tensor,
    step: usize,
) -> Result<StepOutput> {
    let (cfg, device, tables) = (ctx.cfg, ctx.device, ctx.tables);
    let n = x0.size()[0];
    let (t, is_weights) = match is_sampler {
        Some(s) => {
            let mut rng = StdRng::seed_from_u64(step_seed(cfg.run.seed, step) ^ 0x5A);
            let draw = s.sample(n as usize, &mut rng)?;
            let t: Vec<i64> = draw.timesteps.iter().map(|&t| t as i64).collect();
            let w: Vec<f32> = draw.weights.iter().map(|&w| w as f32).collect();
            (
                Tensor::from_slice(&t).to_device(device),
                Some(Tensor::from_slice(&w).to_device(device)),
            )
        }
        None => (Tensor::randint(ctx.t_len, [n], (Kind::Int64, device)), None),
    };
    let noise = x0.randn_like();
    let x_t = tables.q_sample(x0, &t, &noise);
    let class = ctx.null_class.map(|null| {
        let y = labels.to_device(device);
        let drop = Tensor::rand([n], (Kind::Float, device)).lt(cfg.data.label_dropout);
        y.where_self(
            &drop.logical_not(),
            &Tensor::full([n], null, (Kind::Int64, device)),
        )
    });
    let out = ddpm_nets::autocast::bf16_if(ctx.autocast, ctx.device, || {
        unet.f_forward_t(&x_t, &t, class.as_ref(), true)
    })?
    .to_kind(Kind::Float);
    let terms = training_losses(tables, ctx.weights, &out, x0, &x_t, &t, &noise);
    let weighted = match &is_weights {
        Some(w) => &terms.loss * w,
        None => terms.loss.shallow_clone(),
    };
    let loss = weighted.mean(Kind::Float);
    adam.zero_grad();
    loss.backward();
    let grad_norm = adam.grad_norm();
    if cfg.optim.grad_clip > 0.0 {
        adam.clip_grad_norm(&grad_norm, cfg.optim.grad_clip);
    }
    let lr = Adam::lr_at(&cfg.optim, step);
    adam.step(lr);
    if cfg.optim.ema_decay > 0.0 {
        ema.update(params);
    } else {
        ema.copy_from(params);
    }
    Ok(StepOutput {
        loss,
        per_sample: terms.loss,
        t,
        grad_norm,
        lr,
        n,
    })
}

/// Trains a DDPM in a new run directory (`resume = false`) or continues the run in `dir`.
pub fn train_ddpm(
    dir: &Path,
    cfg: &TrainConfig,
    resume: bool,
    opts: &TrainOptions,
) -> Result<TrainSummary> {
    cfg.validate()?;
    if cfg.model.kind != ModelKind::Ddpm {
        return Err(TrainError::config(
            "model.kind",
            "train_ddpm trains kind = \"ddpm\"",
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
    let diffusion = cfg.diffusion.build()?;
    let data = loader::load_images(&cfg.data.path, &cfg.data.split)?;
    loader::check_data(&cfg.data, &data)?;
    check_model_fits_data(cfg, &data)?;
    // The initial weights depend on the seed only.
    tch::manual_seed(cfg.run.seed as i64);
    let mut model = DdpmModel::new(cfg, device)?;
    let params = named_trainables(&model.vs);
    let mut adam = Adam::new(
        params
            .iter()
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect(),
        &cfg.optim,
    );
    let ema_params = named_like(&model.ema_vs, &params);
    let mut ema = Ema {
        decay: cfg.optim.ema_decay,
        shadow: ema_params,
    };
    let mut state = TrainState {
        step: 0,
        seed: cfg.run.seed,
        elapsed_secs: 0.0,
        images_seen: 0,
        sampler_history: None,
    };
    let mut is_sampler = (cfg.diffusion.importance_sampling
        && diffusion.loss_type() == LossType::Vlb)
        .then(|| LossSecondMomentSampler::new(diffusion.num_timesteps()));
    let mut last_checkpoint = None;
    if resume {
        if let Some(ckpt) = run.latest_checkpoint()? {
            state = restore(&ckpt, &mut model, &mut adam, is_sampler.as_mut())?;
            if state.seed != cfg.run.seed {
                return Err(TrainError::config(
                    "run.seed",
                    format!(
                        "the run was started with seed {}, not {}",
                        state.seed, cfg.run.seed
                    ),
                ));
            }
            tracing::info!(step = state.step, checkpoint = %ckpt.display(), "resumed");
            run.truncate_metrics(state.step)?;
            last_checkpoint = Some(ckpt);
        } else {
            tracing::warn!(dir = %dir.display(), "no checkpoint yet; starting from step 0");
        }
    }
    let tables = DeviceTables::full(&diffusion, device);
    let ctx = StepContext::new(cfg, &diffusion, &tables, device);
    let mut batches = BatchSampler::new(data.len(), cfg.data.batch_size, cfg.run.seed);
    let t_len = diffusion.num_timesteps() as i64;
    let bar = progress_bar(opts.progress, cfg.run.steps, state.step);
    let session_start = Instant::now();
    let elapsed_before = state.elapsed_secs;
    let mut interval = Interval::new(cfg.run.log_every, device);
    let mut last_loss = f64::NAN;
    let mut interrupted = false;

    while state.step < cfg.run.steps {
        let step = state.step;
        // All randomness of this step derives from (seed, step): resuming needs no RNG state.
        tch::manual_seed(step_seed(cfg.run.seed, step) as i64);
        let (x0, labels) = prepare_batch(&data, &mut batches, cfg, step, device);
        let out = train_step(
            &ctx,
            &model.unet,
            &mut adam,
            &mut ema,
            &params,
            is_sampler.as_ref(),
            &x0,
            &labels,
            step,
        )?;
        let StepOutput {
            loss,
            per_sample,
            t,
            grad_norm,
            lr,
            n,
        } = out;
        if let Some(s) = is_sampler.as_mut() {
            // The importance sampler needs the per-t losses on the host every step.
            let losses = Vec::<f64>::try_from(
                per_sample
                    .detach()
                    .to_kind(Kind::Double)
                    .to_device(Device::Cpu),
            )?;
            let ts: Vec<usize> = Vec::<i64>::try_from(t.to_device(Device::Cpu))?
                .into_iter()
                .map(|v| v as usize)
                .collect();
            if losses.iter().all(|l| l.is_finite()) {
                s.update_with_losses(&ts, &losses)?;
            }
        }
        interval.record(&loss, &per_sample.detach(), &t, t_len, &grad_norm);
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
            let report = interval.flush(state.step, &last_checkpoint)?;
            state.elapsed_secs = elapsed_before + session_start.elapsed().as_secs_f64();
            if let Some(r) = report {
                last_loss = r.loss;
                let record = serde_json::json!({
                    "step": state.step,
                    "loss": r.loss,
                    "loss_q": r.quartiles,
                    "grad_norm": r.grad_norm,
                    "lr": lr,
                    "img_per_s": r.steps as f64 * n as f64 / r.secs.max(1e-9),
                    "elapsed_s": state.elapsed_secs,
                });
                run.append_metrics(&record)?;
                tracing::info!(
                    step = state.step,
                    loss = r.loss,
                    grad_norm = r.grad_norm,
                    lr,
                    "train"
                );
                if let Some(b) = &bar {
                    b.set_message(format!(
                        "loss {:.4} | {:.1} img/s",
                        r.loss,
                        r.steps as f64 * n as f64 / r.secs.max(1e-9)
                    ));
                }
            }
        }
        if at_ckpt || last || stop {
            // A loss can be finite while the update that followed it was not: never checkpoint
            // non-finite weights.
            if !all_finite(&params) {
                return Err(TrainError::NonFinite {
                    what: "weights",
                    step: state.step,
                    value: f64::NAN,
                    last_checkpoint,
                });
            }
            state.sampler_history = is_sampler.as_ref().map(|s| s.history());
            let ckpt = save(&run, cfg, &state, &model, &adam)?;
            tracing::info!(step = state.step, checkpoint = %ckpt.display(), "checkpoint");
            last_checkpoint = Some(ckpt);
            plot_loss(&run)?;
        }
        let at_sample = cfg.run.sample_every > 0 && state.step % cfg.run.sample_every == 0;
        if at_sample || (last && cfg.run.sample_num > 0) {
            let path = run
                .path
                .join("samples")
                .join(format!("step_{}.png", state.step));
            sample_grid(cfg, &diffusion, &model.ema_unet, device, &path)?;
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

/// Ends a training loop (DDPM or baseline): closes the progress bar and reports the run, whose
/// newest checkpoint is `last_checkpoint` or, when this session wrote none, the newest on disk.
pub(crate) fn finish_run(
    run: &RunDir,
    bar: Option<indicatif::ProgressBar>,
    last_checkpoint: Option<PathBuf>,
    state: &TrainState,
    last_loss: f64,
    interrupted: bool,
) -> Result<TrainSummary> {
    if let Some(b) = bar {
        b.finish();
    }
    let checkpoint = match last_checkpoint {
        Some(c) => c,
        None => run
            .latest_checkpoint()?
            .ok_or_else(|| TrainError::Checkpoint {
                path: run.path.clone(),
                message: "no checkpoint was written".into(),
            })?,
    };
    Ok(TrainSummary {
        step: state.step,
        last_loss,
        elapsed_secs: state.elapsed_secs,
        interrupted,
        checkpoint,
    })
}

/// Whether every tensor is finite (one host sync).
pub(crate) fn all_finite(params: &[(String, Tensor)]) -> bool {
    let flags: Vec<Tensor> = params.iter().map(|(_, p)| p.isfinite().all()).collect();
    Tensor::stack(&flags, 0).all().int64_value(&[]) == 1
}

/// The seed of step `step` (a SplitMix64-style mix of the run seed and the step).
pub fn step_seed(seed: u64, step: usize) -> u64 {
    let mut z = seed.wrapping_add((step as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) & 0x7FFF_FFFF_FFFF_FFFF
}

fn check_model_fits_data(cfg: &TrainConfig, data: &ImageData) -> Result<()> {
    let (c, _, _) = data.chw();
    if c != cfg.model.unet.in_channels {
        return Err(TrainError::config(
            "model.unet.in_channels",
            format!(
                "is {} but {} has {c}-channel images",
                cfg.model.unet.in_channels,
                cfg.data.path.display()
            ),
        ));
    }
    if let Some(k) = cfg.model.unet.num_class_embeds {
        if k < data.num_classes + 1 {
            return Err(TrainError::config(
                "model.unet.num_class_embeds",
                format!(
                    "is {k} but the data has {} classes (+1 null label needed)",
                    data.num_classes
                ),
            ));
        }
    }
    Ok(())
}

pub(crate) fn progress_bar(
    show: bool,
    total: usize,
    start: usize,
) -> Option<indicatif::ProgressBar> {
    show.then(|| {
        let b = indicatif::ProgressBar::new(total as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] {pos}/{len} steps, ETA {eta} | {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        b.set_position(start as u64);
        b
    })
}

/// Device-side accumulation of the losses of one log interval; read back once per interval.
struct Interval {
    every: usize,
    losses: Vec<Tensor>,
    q_sum: Tensor,
    q_count: Tensor,
    grad_norms: Vec<Tensor>,
    first_step: Option<usize>,
    start: Instant,
}

struct IntervalReport {
    loss: f64,
    quartiles: Vec<f64>,
    grad_norm: f64,
    steps: usize,
    secs: f64,
}

impl Interval {
    fn new(every: usize, device: Device) -> Self {
        Self {
            every,
            losses: Vec::with_capacity(every),
            q_sum: Tensor::zeros([4], (Kind::Float, device)),
            q_count: Tensor::zeros([4], (Kind::Float, device)),
            grad_norms: Vec::with_capacity(every),
            first_step: None,
            start: Instant::now(),
        }
    }

    fn record(
        &mut self,
        loss: &Tensor,
        per_sample: &Tensor,
        t: &Tensor,
        t_len: i64,
        grad_norm: &Tensor,
    ) {
        self.losses.push(loss.detach());
        self.grad_norms.push(grad_norm.detach());
        let q = (t * 4).divide_scalar_mode(t_len, "floor");
        let _ = self
            .q_sum
            .scatter_add_(0, &q, &per_sample.to_kind(Kind::Float));
        let _ = self
            .q_count
            .scatter_add_(0, &q, &per_sample.ones_like().to_kind(Kind::Float));
    }

    /// Reads the interval back (one host sync); a non-finite loss is an error naming its step.
    fn flush(
        &mut self,
        step_after: usize,
        last_ckpt: &Option<PathBuf>,
    ) -> Result<Option<IntervalReport>> {
        if self.losses.is_empty() {
            return Ok(None);
        }
        let first = step_after - self.losses.len();
        let losses = Vec::<f64>::try_from(
            Tensor::stack(&self.losses, 0)
                .to_kind(Kind::Double)
                .to_device(Device::Cpu),
        )?;
        if let Some(i) = losses.iter().position(|l| !l.is_finite()) {
            return Err(TrainError::NonFinite {
                what: "loss",
                step: first + i + 1,
                value: losses[i],
                last_checkpoint: last_ckpt.clone(),
            });
        }
        let norms = Vec::<f64>::try_from(
            Tensor::stack(&self.grad_norms, 0)
                .to_kind(Kind::Double)
                .to_device(Device::Cpu),
        )?;
        let sums = Vec::<f64>::try_from(self.q_sum.to_kind(Kind::Double).to_device(Device::Cpu))?;
        let counts =
            Vec::<f64>::try_from(self.q_count.to_kind(Kind::Double).to_device(Device::Cpu))?;
        let report = IntervalReport {
            loss: losses.iter().sum::<f64>() / losses.len() as f64,
            quartiles: sums
                .iter()
                .zip(&counts)
                .map(|(s, c)| if *c > 0.0 { s / c } else { f64::NAN })
                .collect(),
            grad_norm: norms.iter().sum::<f64>() / norms.len() as f64,
            steps: losses.len(),
            secs: self.start.elapsed().as_secs_f64(),
        };
        let _ = self.every;
        self.losses.clear();
        self.grad_norms.clear();
        let _ = self.q_sum.zero_();
        let _ = self.q_count.zero_();
        self.first_step = None;
        self.start = Instant::now();
        Ok(Some(report))
    }
}

fn save(
    run: &RunDir,
    cfg: &TrainConfig,
    state: &TrainState,
    model: &DdpmModel,
    adam: &Adam,
) -> Result<PathBuf> {
    let vars = |vs: &nn::VarStore| {
        let mut v: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    run.save_checkpoint(
        state,
        cfg,
        &[
            ("model", vars(&model.vs)),
            ("ema", vars(&model.ema_vs)),
            ("optim", adam.state_tensors()),
        ],
        cfg.run.keep_checkpoints,
    )
}

fn restore(
    ckpt: &Path,
    model: &mut DdpmModel,
    adam: &mut Adam,
    sampler: Option<&mut LossSecondMomentSampler>,
) -> Result<TrainState> {
    let state = RunDir::read_state(ckpt)?;
    load_varstore(&mut model.vs, &ckpt.join("model.safetensors"))?;
    load_varstore(&mut model.ema_vs, &ckpt.join("ema.safetensors"))?;
    let opt_path = ckpt.join("optim.safetensors");
    let tensors = read_tensors(&opt_path)?;
    adam.load_state(&tensors)
        .map_err(|message| TrainError::Checkpoint {
            path: opt_path.clone(),
            message,
        })?;
    if adam.step as usize != state.step {
        return Err(TrainError::Checkpoint {
            path: ckpt.to_path_buf(),
            message: format!(
                "optimiser step {} differs from the recorded step {}",
                adam.step, state.step
            ),
        });
    }
    if let (Some(s), Some(h)) = (sampler, &state.sampler_history) {
        s.set_history(h.clone())?;
    }
    Ok(state)
}

/// Samples a grid with the run's sampler spec from the EMA network and writes it.
pub fn sample_grid(
    cfg: &TrainConfig,
    diffusion: &GaussianDiffusion,
    unet: &UNet2DModel,
    device: Device,
    path: &Path,
) -> Result<()> {
    let spec = SamplerSpec::parse(&cfg.run.sample_steps, diffusion.num_timesteps())?;
    let sampler = Sampler::new(diffusion, &spec, device)?;
    let u = &cfg.model.unet;
    let (h, w) = sample_hw(cfg);
    let n = cfg.run.sample_num.max(1) as i64;
    let _guard = tch::no_grad_guard();
    let gen_seed = step_seed(cfg.run.seed, usize::MAX / 2);
    tch::manual_seed(gen_seed as i64);
    let noise = Tensor::randn([n, u.in_channels, h, w], (Kind::Float, device));
    // A conditional model draws the classes in turn (0, 1, …), one per grid cell.
    let labels = u
        .num_class_embeds
        .map(|k| Tensor::arange(n, (Kind::Int64, device)).remainder(k - 1));
    let samples = sampler.sample(
        |x, t, _| unet.forward_t(x, t, labels.as_ref(), false),
        noise,
        None,
        0,
        |_| {},
    );
    let img = viz::grid_nhwc(
        &crate::sampler::to_uint8_nhwc(&samples.images),
        (n as f64).sqrt().ceil() as usize,
    );
    viz::save_png(&img, path)
}

/// The image size a model of this run samples at.
pub fn sample_hw(cfg: &TrainConfig) -> (i64, i64) {
    let base = match cfg.model.unet.sample_size {
        Some(ddpm_nets::unet::SampleSize::Square(s)) => (s, s),
        Some(ddpm_nets::unet::SampleSize::Rect([h, w])) => (h, w),
        None => (32, 32),
    };
    if cfg.data.pad_to_32 {
        (base.0.max(32), base.1.max(32))
    } else {
        base
    }
}

/// Redraws `loss.png` from `metrics.jsonl` (log-scale loss against step).
pub fn plot_loss(run: &RunDir) -> Result<()> {
    let records = run.read_metrics()?;
    if records.len() < 2 {
        return Ok(());
    }
    let xs: Vec<f64> = records
        .iter()
        .map(|r| r["step"].as_f64().unwrap_or(f64::NAN))
        .collect();
    let ys: Vec<f64> = records
        .iter()
        .map(|r| r["loss"].as_f64().unwrap_or(f64::NAN))
        .collect();
    let img = viz::plot_panels(&[viz::Panel {
        xs,
        ys,
        color: [31, 119, 180],
        log_y: true,
    }]);
    viz::save_png(&img, &run.path.join("loss.png"))
}
