//! The DDPM as a training task (Ho et al. 2020, Algorithm 1; Nichol & Dhariwal 2021 for L_hybrid,
//! L_vlb and its importance sampler): per image a timestep t and noise ε, x_t = √ᾱ_t x_0 +
//! √(1 − ᾱ_t) ε, the UNet's output, the loss of `diffusion.loss_type`; Adam with clipping, then
//! the EMA of the weights (its decay warmed up by the global step when `optim.ema_warmup` is set,
//! so a resumed run uses the same decays). The MSE term is weighted per timestep when
//! `diffusion.loss_weighting` says so. Checkpoint groups: `model`, `ema`, `optim`.
use ddpm_math::{
    GaussianDiffusion, LossSecondMomentSampler, LossType, LossWeights, ScheduleSampler,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ddpm_nets::UNet2DModel;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::{json, Map, Value};
use tch::{nn, Device, Kind, Tensor};

use crate::config::{SampleSteps, TrainConfig};
use crate::engine::{
    scaled, split_rows, split_rows_opt, step_seed, Metric, MicroBatches, Plot, Probe, Shard,
    StateGroup, StepMetrics, TrainTask,
};
use crate::error::{Result, TrainError};
use crate::loader::ImageData;
use crate::objective::training_losses;
use crate::optim::{named_trainables, Adam, Ema, EmaDecay};
use crate::parallel::DataParallel;
use crate::run_dir::TrainState;
use crate::sampler::{to_uint8_nhwc, Sampler};
use crate::tables::DeviceTables;

/// The networks and their variable stores: the live model and its EMA copy.
#[derive(Debug)]
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
        let unet = UNet2DModel::new(vs.root(), cfg.unet()?)?;
        let mut ema_vs = nn::VarStore::new(device);
        let ema_unet = UNet2DModel::new(ema_vs.root(), cfg.unet()?)?;
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

/// The prepared batch of a DDPM step: images and all draws of the step.
#[derive(Debug)]
pub struct DdpmBatch {
    /// x_0 `[N, C, H, W]` in [−1, 1].
    pub x0: Tensor,
    /// Timesteps `[N]` (int64).
    pub t: Tensor,
    /// ε `[N, C, H, W]`.
    pub noise: Tensor,
    /// Class labels after label dropout `[N]` (conditional models).
    pub class: Option<Tensor>,
    /// Importance weights of the drawn t `[N]` (L_vlb with importance sampling).
    pub is_weights: Option<Tensor>,
}

impl MicroBatches for DdpmBatch {
    fn split(self, k: usize) -> Vec<Self> {
        let (x0, t, noise) = (
            split_rows(&self.x0, k),
            split_rows(&self.t, k),
            split_rows(&self.noise, k),
        );
        let (class, w) = (
            split_rows_opt(&self.class, k),
            split_rows_opt(&self.is_weights, k),
        );
        x0.into_iter()
            .zip(t)
            .zip(noise)
            .zip(class.into_iter().zip(w))
            .map(|(((x0, t), noise), (class, is_weights))| Self {
                x0,
                t,
                noise,
                class,
                is_weights,
            })
            .collect()
    }
}

const METRICS: [Metric; 10] = [
    Metric::loss("loss", Plot::Log),
    Metric::diagnostic("grad_norm"),
    Metric::diagnostic("q_sum0"),
    Metric::diagnostic("q_sum1"),
    Metric::diagnostic("q_sum2"),
    Metric::diagnostic("q_sum3"),
    Metric::diagnostic("q_count0"),
    Metric::diagnostic("q_count1"),
    Metric::diagnostic("q_count2"),
    Metric::diagnostic("q_count3"),
];

/// The DDPM training task.
pub struct DdpmTask {
    cfg: TrainConfig,
    device: Device,
    diffusion: GaussianDiffusion,
    tables: DeviceTables,
    weights: LossWeights,
    autocast: bool,
    null_class: Option<i64>,
    /// The networks.
    pub model: DdpmModel,
    adam: Adam,
    ema: Ema,
    ema_decay: EmaDecay,
    /// The global step being taken (0-based; set by `prepare`, restored with the run's state).
    step: usize,
    is_sampler: Option<LossSecondMomentSampler>,
    metrics: StepMetrics,
    /// Per-sample losses and timesteps of the step's micro-batches.
    per_sample: Vec<(Tensor, Tensor)>,
    grad_norm: Option<Tensor>,
}

impl DdpmTask {
    /// The task of `cfg` on `device`; the initial weights are a function of `run.seed`.
    pub fn new(cfg: &TrainConfig, device: Device) -> Result<Self> {
        let diffusion = cfg.diffusion.build()?;
        tch::manual_seed(cfg.run.seed as i64);
        let model = DdpmModel::new(cfg, device)?;
        let adam = Adam::for_store(&model.vs, &cfg.optim);
        let all = model.ema_vs.variables();
        let shadow = named_trainables(&model.vs)
            .into_iter()
            .map(|(n, _)| (n.clone(), all[&n].shallow_clone()))
            .collect();
        let ema = Ema {
            decay: cfg.optim.ema_decay,
            shadow,
        };
        let is_sampler = (cfg.diffusion.importance_sampling
            && diffusion.loss_type() == LossType::Vlb)
            .then(|| LossSecondMomentSampler::new(diffusion.num_timesteps()));
        Ok(Self {
            cfg: cfg.clone(),
            device,
            tables: DeviceTables::full(&diffusion, device)
                .with_mse_weights(cfg.diffusion.mse_weights(&diffusion)?.as_ref()),
            weights: diffusion.loss_weights(),
            autocast: super::uses_bf16(cfg, device),
            null_class: cfg.unet()?.num_class_embeds.map(|n| n - 1),
            diffusion,
            model,
            adam,
            ema,
            ema_decay: EmaDecay::of(&cfg.optim),
            step: 0,
            is_sampler,
            metrics: StepMetrics::default(),
            per_sample: Vec::new(),
            grad_norm: None,
        })
    }

    /// The diffusion process.
    pub fn diffusion(&self) -> &GaussianDiffusion {
        &self.diffusion
    }

    /// Whether the network runs under bf16 autocast.
    pub fn autocast(&self) -> bool {
        self.autocast
    }

    /// Timesteps `[n]` (and importance weights) of step `step`.
    fn draw_t(&self, n: i64, step: usize) -> Result<(Tensor, Option<Tensor>)> {
        let Some(s) = &self.is_sampler else {
            let t_len = self.diffusion.num_timesteps() as i64;
            return Ok((
                Tensor::randint(t_len, [n], (Kind::Int64, self.device)),
                None,
            ));
        };
        let mut rng = StdRng::seed_from_u64(step_seed(self.cfg.run.seed, step) ^ 0x5A);
        let draw = s.sample(n as usize, &mut rng)?;
        let t: Vec<i64> = draw.timesteps.iter().map(|&t| t as i64).collect();
        let w: Vec<f32> = draw.weights.iter().map(|&w| w as f32).collect();
        Ok((
            Tensor::from_slice(&t).to_device(self.device),
            Some(Tensor::from_slice(&w).to_device(self.device)),
        ))
    }

    /// [`sample_ema_images`] of the EMA network: `n` images with the sampler `steps`.
    fn ema_images(
        &self,
        n: usize,
        steps: &SampleSteps,
        seed: u64,
        shard: Shard,
        stop: &Arc<AtomicBool>,
    ) -> Result<Option<Tensor>> {
        let chains = Chains {
            n,
            steps,
            seed,
            shard,
        };
        let (d, unet) = (&self.diffusion, &self.model.ema_unet);
        sample_ema_images(&self.cfg, d, unet, &chains, self.device, Some(stop))
    }

    /// Feeds the step's per-t losses to the importance sampler (a host read-back every step).
    fn update_importance_sampler(&mut self, losses: &Tensor, t: &Tensor) -> Result<()> {
        let Some(s) = self.is_sampler.as_mut() else {
            return Ok(());
        };
        let losses = Vec::<f64>::try_from(losses.to_kind(Kind::Double).to_device(Device::Cpu))?;
        let ts: Vec<usize> = Vec::<i64>::try_from(t.to_device(Device::Cpu))?
            .into_iter()
            .map(|v| v as usize)
            .collect();
        if losses.iter().all(|l| l.is_finite()) {
            s.update_with_losses(&ts, &losses)?;
        }
        Ok(())
    }
}

impl TrainTask for DdpmTask {
    type Batch = DdpmBatch;

    fn name(&self) -> &'static str {
        "DDPM"
    }

    fn metrics(&self) -> &'static [Metric] {
        &METRICS
    }

    fn device(&self) -> Device {
        self.device
    }

    fn prepare(&mut self, x0: Tensor, labels: Tensor, step: usize) -> Result<DdpmBatch> {
        self.step = step;
        let n = x0.size()[0];
        let (t, is_weights) = self.draw_t(n, step)?;
        let noise = x0.randn_like();
        let class = self.null_class.map(|null| {
            let y = labels.to_device(self.device);
            let drop =
                Tensor::rand([n], (Kind::Float, self.device)).lt(self.cfg.data.label_dropout);
            y.where_self(
                &drop.logical_not(),
                &Tensor::full([n], null, (Kind::Int64, self.device)),
            )
        });
        Ok(DdpmBatch {
            x0,
            t,
            noise,
            class,
            is_weights,
        })
    }

    fn zero_grad(&mut self, _phase: usize) {
        self.adam.zero_grad();
    }

    fn forward_backward(
        &mut self,
        _phase: usize,
        b: &DdpmBatch,
        scale: f64,
        probe: &mut Probe,
    ) -> Result<()> {
        let x_t = self.tables.q_sample(&b.x0, &b.t, &b.noise);
        let unet = &self.model.unet;
        let out = ddpm_nets::autocast::bf16_if(self.autocast, self.device, || {
            unet.f_forward_t(&x_t, &b.t, b.class.as_ref(), true)
        })?
        .to_kind(Kind::Float);
        let terms = training_losses(
            &self.tables,
            self.weights,
            &out,
            &b.x0,
            &x_t,
            &b.t,
            &b.noise,
        );
        let loss = match &b.is_weights {
            Some(w) => (&terms.loss * w).mean(Kind::Float),
            None => terms.loss.mean(Kind::Float),
        };
        probe.mark("forward_loss");
        scaled(&loss, scale).backward();
        probe.mark("backward");
        self.metrics.add(0, &scaled(&loss, scale));
        self.per_sample
            .push((terms.loss.detach(), b.t.shallow_clone()));
        Ok(())
    }

    fn optimizer(&mut self, _phase: usize) -> &mut Adam {
        &mut self.adam
    }

    fn optimize(&mut self, _phase: usize, lr: f64, probe: &mut Probe) -> Result<()> {
        let norm = self.adam.grad_norm();
        if self.cfg.optim.grad_clip > 0.0 {
            self.adam.clip_grad_norm(&norm, self.cfg.optim.grad_clip);
        }
        probe.mark("grad_norm_clip");
        self.adam.step(lr);
        probe.mark("adam");
        let decay = self.ema_decay.at(self.step);
        if decay > 0.0 {
            self.ema.decay = decay;
            self.ema.update(self.adam.params());
        } else {
            self.ema.copy_from(self.adam.params());
        }
        probe.mark("ema");
        self.grad_norm = Some(norm);
        Ok(())
    }

    fn finish_step(&mut self, _step: usize, par: Option<&DataParallel>) -> Result<Tensor> {
        let (losses, ts): (Vec<Tensor>, Vec<Tensor>) = self.per_sample.drain(..).unzip();
        let (losses, t) = (Tensor::cat(&losses, 0), Tensor::cat(&ts, 0));
        match par.filter(|_| self.is_sampler.is_some()) {
            // The sampler learns from the whole global batch, in its order, on every rank.
            Some(p) => {
                let all_t = p.gather_rows(&t)?.to_kind(Kind::Int64);
                self.update_importance_sampler(&p.gather_rows(&losses)?, &all_t)?;
            }
            None => self.update_importance_sampler(&losses, &t)?,
        }
        if let Some(norm) = self.grad_norm.take() {
            self.metrics.add(1, &norm);
        }
        let head = self.metrics.take(2, self.device);
        // Per-step sums and counts of the losses by quartile of t (their window ratio is loss_q).
        let q = (&t * 4).divide_scalar_mode(self.diffusion.num_timesteps() as i64, "floor");
        let zeros = Tensor::zeros([4], (Kind::Float, self.device));
        let q_sum = zeros.scatter_add(0, &q, &losses.to_kind(Kind::Float));
        let q_count = zeros.scatter_add(0, &q, &losses.ones_like().to_kind(Kind::Float));
        Ok(Tensor::cat(&[head, q_sum, q_count], 0))
    }

    fn state_groups(&mut self) -> Vec<(&'static str, StateGroup<'_>)> {
        vec![
            ("model", StateGroup::Vars(&mut self.model.vs)),
            ("ema", StateGroup::Vars(&mut self.model.ema_vs)),
            ("optim", StateGroup::Optimizer(&mut self.adam)),
        ]
    }

    fn save_extra(&self, state: &mut TrainState) {
        state.sampler_history = self.is_sampler.as_ref().map(|s| s.history());
    }

    fn restore_extra(&mut self, state: &TrainState) -> Result<()> {
        if let (Some(s), Some(h)) = (self.is_sampler.as_mut(), &state.sampler_history) {
            s.set_history(h.clone())?;
        }
        Ok(())
    }

    fn sample_images(&self, n: usize, seed: u64, stop: &Arc<AtomicBool>) -> Result<Option<Tensor>> {
        self.ema_images(n, &self.cfg.run.sample_steps, seed, Shard::ALL, stop)
    }

    fn eval_images(
        &self,
        n: usize,
        seed: u64,
        stop: &Arc<AtomicBool>,
        shard: Shard,
    ) -> Result<Option<Tensor>> {
        self.ema_images(n, &self.cfg.run.eval_sampler, seed, shard, stop)
    }

    fn summarize(&self, means: &[f64]) -> Map<String, Value> {
        let quartiles: Vec<f64> = (0..4)
            .map(|j| {
                let (s, c) = (means[2 + j], means[6 + j]);
                if c > 0.0 {
                    s / c
                } else {
                    f64::NAN
                }
            })
            .collect();
        let mut m = Map::new();
        m.insert("loss".into(), json!(means[0]));
        m.insert("loss_q".into(), json!(quartiles));
        m.insert("grad_norm".into(), json!(means[1]));
        m
    }
}

/// Images per sampling batch of [`sample_ema_images`].
const SAMPLE_BATCH: usize = 128;

/// Which sampling chains [`sample_ema_images`] runs.
#[derive(Debug, Clone, Copy)]
pub struct Chains<'a> {
    /// Images in all.
    pub n: usize,
    /// The sampler.
    pub steps: &'a SampleSteps,
    /// Batch b (of [`SAMPLE_BATCH`] images) starts from noise seeded with `step_seed(seed, b)`.
    pub seed: u64,
    /// The batches to draw; the rows of the others stay zero.
    pub shard: Shard,
}

/// `c.n` uint8 images `[n, H, W, C]` (CPU) from `unet` with the sampler `c.steps` (the run's x̂₀
/// processing), in batches of [`SAMPLE_BATCH`], each from its own seed, so that any split of the
/// batches among processes ([`Chains::shard`]) draws the same images; a conditional model draws
/// the classes in turn (0, 1, …), one per image. `None` when `stop` is set (checked before every
/// step of the chain).
pub fn sample_ema_images(
    cfg: &TrainConfig,
    diffusion: &GaussianDiffusion,
    unet: &UNet2DModel,
    c: &Chains,
    device: Device,
    stop: Option<&Arc<AtomicBool>>,
) -> Result<Option<Tensor>> {
    let mut spec = c.steps.resolve(diffusion.num_timesteps())?;
    spec.x0 = cfg.diffusion.sampling()?.x0;
    let mut sampler = Sampler::new(diffusion, &spec, device)?;
    if let Some(stop) = stop {
        sampler = sampler.stop_on(stop.clone());
    }
    let u = cfg.unet()?;
    let (h, w) = sample_hw(cfg);
    let _guard = tch::no_grad_guard();
    let mut chunks = Vec::with_capacity(c.n.div_ceil(SAMPLE_BATCH));
    for (batch, start) in (0..c.n).step_by(SAMPLE_BATCH).enumerate() {
        if stop.is_some_and(|s| s.load(Ordering::SeqCst)) {
            return Ok(None);
        }
        let b = SAMPLE_BATCH.min(c.n - start) as i64;
        if !c.shard.owns(batch) {
            let shape = [b, h, w, u.in_channels];
            chunks.push(Tensor::zeros(shape, (Kind::Uint8, Device::Cpu)));
            continue;
        }
        tch::manual_seed(step_seed(c.seed, batch) as i64);
        let noise = Tensor::randn([b, u.in_channels, h, w], (Kind::Float, device));
        let labels = u
            .num_class_embeds
            .map(|k| (Tensor::arange(b, (Kind::Int64, device)) + start as i64).remainder(k - 1));
        let samples = match sampler.sample(
            |x, t, _| unet.forward_t(x, t, labels.as_ref(), false),
            noise,
            None,
            0,
            |_| {},
        ) {
            Err(TrainError::Stopped { .. }) => return Ok(None),
            other => other?,
        };
        chunks.push(to_uint8_nhwc(&samples.images).to_device(Device::Cpu));
    }
    Ok(Some(Tensor::cat(&chunks, 0)))
}

/// The image size a model of this run samples at.
pub fn sample_hw(cfg: &TrainConfig) -> (i64, i64) {
    let base = match cfg.model.unet().and_then(|u| u.sample_size) {
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

/// Checks that the UNet of `cfg` fits the images of `data` (channels, size, classes; see
/// [`TrainConfig::check_fits_data`]).
pub fn check_model_fits_data(cfg: &TrainConfig, data: &ImageData) -> Result<()> {
    cfg.check_fits_data(&crate::fit::DataShape::of(data))
}
