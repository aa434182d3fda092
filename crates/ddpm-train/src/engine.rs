//! The one training loop. A [`TrainTask`] (the DDPM, the GAN, the VAE, the digit classifier) says
//! how to take one optimisation step on a batch, which scalars it reports, which tensors make its
//! checkpoint and how it draws a sample grid; [`train`] owns everything else: the step counter,
//! the seeded batches, the learning-rate schedule, gradient accumulation, the log window with its
//! one host read-back every `run.log_every` steps, NaN/inf detection naming the step, stop on
//! request, checkpoint cadence and keep-N, restore for `--resume`, sample grids, `metrics.jsonl`
//! and its TensorBoard copy ([`crate::tensorboard`], every record through `append_record`), the
//! loss plot and the progress bar.
//!
//! One step ([`train_step`], also what `ddpm-cli bench` times) is split like improved-diffusion's
//! `run_step` → `forward_backward` → `optimize`:
//!
//! ```text
//! seed(seed, step) → batch (uint8 → [−1, 1], flips) → task.prepare (all draws of the full batch)
//!   → for each phase (the GAN has two: discriminator, generator):
//!        zero_grad → k × forward_backward(micro-batch, scale 1/k) → optimize(lr)
//!   → task.finish_step → a [M] tensor of the step's metrics (stays on the device)
//! ```
//!
//! **Invariants.** All randomness of step s derives from (seed, s), so a resumed run reproduces an
//! uninterrupted one exactly on the CPU. The metrics are read back to the host once per log
//! window (plus once per checkpoint for the finiteness of the weights). Only the engine writes
//! the run directory.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::run_lock::RunLock;
use crate::tensorboard::EventWriter;

/// Set once a training of this process has opened its run (lock held, checkpoint restored):
/// from then on its log belongs in the run directory (see [`session_started`]).
static SESSION_STARTED: AtomicBool = AtomicBool::new(false);

/// Whether a training of this process has started on its run directory: a command that was
/// refused before (a live run's lock, a resume with fewer steps than done, a damaged run) has
/// written nothing there.
pub fn session_started() -> bool {
    SESSION_STARTED.load(Ordering::SeqCst)
}

use ddpm_nets::checkpoint::{load_varstore, read_tensors};
use serde_json::{json, Map, Value};
use tch::{nn, Device, Kind, Tensor};

use crate::config::{LrSchedule, OptimConfig};
use crate::error::{Result, TrainError};
use crate::loader::{self, BatchSampler, ImageData};
use crate::optim::Adam;
use crate::parallel::DataParallel;
use crate::run_dir::{RunDir, TrainState};
use crate::viz;

/// How a training call was started and how it should report.
#[derive(Debug)]
pub struct TrainOptions {
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// Set to true (e.g. by Ctrl-C) to save a checkpoint and stop after the current step.
    pub stop: Arc<AtomicBool>,
    /// Scores samples every `eval_every` steps ([`LoopSettings::eval_every`]); none: no evaluation.
    pub evaluator: Option<Box<dyn Evaluator>>,
    /// This process's part in a data-parallel run ([`crate::parallel`]); `None`: one process.
    pub parallel: Option<DataParallel>,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            progress: false,
            stop: Arc::new(AtomicBool::new(false)),
            evaluator: None,
            parallel: None,
        }
    }
}

/// A measure of sample quality computed during training, lower is better (FID, FID_cls): the
/// engine draws [`TrainTask::eval_images`] every `eval_every` steps, records the score in
/// `metrics.jsonl` and `eval.png`, and keeps the checkpoint with the lowest score as
/// `checkpoints/best`. Implemented where the metric networks live (the command line, through
/// ddpm-metrics), since ddpm-train comes before ddpm-metrics in the crate chain.
pub trait Evaluator {
    /// The metric's name, the key of its records in `metrics.jsonl` (e.g. `fid_cls`).
    fn name(&self) -> &str;

    /// Scores uint8 images `[N, H, W, C]` (CPU); the error is a message for the log.
    fn score(&self, images: &Tensor) -> std::result::Result<f64, String>;
}

impl std::fmt::Debug for dyn Evaluator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Evaluator({})", self.name())
    }
}

/// What a finished (or stopped) run reports.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// Steps completed in total.
    pub step: usize,
    /// Mean of the task's first metric (its loss) over the last log window.
    pub last_loss: f64,
    /// Wall-clock training seconds (all sessions).
    pub elapsed_secs: f64,
    /// Whether the run stopped early on request.
    pub interrupted: bool,
    /// Whether the run stopped at its time limit ([`LoopSettings::time_limit_secs`]), in this
    /// session or an earlier one.
    pub time_up: bool,
    /// The newest checkpoint.
    pub checkpoint: PathBuf,
}

/// How a metric appears in `loss.png`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plot {
    /// Not plotted.
    No,
    /// A panel with a linear y axis.
    Linear,
    /// A panel with a logarithmic y axis.
    Log,
}

/// One scalar a task reports per step; the log window records its mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metric {
    /// Its key in `metrics.jsonl`.
    pub name: &'static str,
    /// Its panel in `loss.png`.
    pub plot: Plot,
    /// A non-finite value stops the run with [`TrainError::NonFinite`] naming the step.
    pub must_be_finite: bool,
}

impl Metric {
    /// A loss: plotted, must stay finite.
    pub const fn loss(name: &'static str, plot: Plot) -> Self {
        Self {
            name,
            plot,
            must_be_finite: true,
        }
    }

    /// A diagnostic that is logged as it comes (not plotted, not checked).
    pub const fn diagnostic(name: &'static str) -> Self {
        Self {
            name,
            plot: Plot::No,
            must_be_finite: false,
        }
    }
}

/// A named part of a checkpoint: the variables of a network, or an optimiser's state. The engine
/// writes each as `NAME.safetensors` and reads it back on `--resume`.
pub enum StateGroup<'a> {
    /// All variables of a store (trainable or not), by name.
    Vars(&'a mut nn::VarStore),
    /// Adam's step and moments; restoring checks its step against the checkpoint's.
    Optimizer(&'a mut Adam),
}

/// Splits a prepared batch into `k` equal micro-batches along dimension 0.
pub trait MicroBatches: Sized {
    /// The `k` micro-batches in order (`k = 1`: the batch itself).
    fn split(self, k: usize) -> Vec<Self>;
}

/// Splits a tensor into `k` equal parts along dimension 0 (`k = 1`: the tensor itself).
pub fn split_rows(t: &Tensor, k: usize) -> Vec<Tensor> {
    if k == 1 {
        vec![t.shallow_clone()]
    } else {
        t.chunk(k as i64, 0)
    }
}

/// Splits an optional tensor like [`split_rows`].
pub fn split_rows_opt(t: &Option<Tensor>, k: usize) -> Vec<Option<Tensor>> {
    match t {
        Some(t) => split_rows(t, k).into_iter().map(Some).collect(),
        None => (0..k).map(|_| None).collect(),
    }
}

/// Marks the end of the phases of a step (`data`, `forward_loss`, `backward`, `grad_norm_clip`,
/// `adam`, `ema`, …) for a timing hook; does nothing without one. `ddpm-cli bench --profile` times
/// the training step through this instead of a copy of it.
pub struct Probe<'a> {
    hook: Option<&'a mut dyn FnMut(&'static str)>,
}

impl<'a> Probe<'a> {
    /// No hook: marks cost nothing.
    pub fn none() -> Probe<'static> {
        Probe { hook: None }
    }

    /// Calls `hook(phase)` at the end of every phase.
    pub fn with(hook: &'a mut dyn FnMut(&'static str)) -> Self {
        Self { hook: Some(hook) }
    }

    /// The phase `name` has just ended.
    pub fn mark(&mut self, name: &'static str) {
        if let Some(h) = self.hook.as_mut() {
            h(name);
        }
    }
}

/// Device-side sums of a step's metrics over its micro-batches.
#[derive(Default)]
pub struct StepMetrics {
    sums: Vec<Option<Tensor>>,
}

impl StepMetrics {
    /// Adds `value` (0-d or `[1]`, detached) to metric `i`.
    pub fn add(&mut self, i: usize, value: &Tensor) {
        if self.sums.len() <= i {
            self.sums.resize_with(i + 1, || None);
        }
        let v = value.detach().to_kind(Kind::Float).reshape([1]);
        self.sums[i] = Some(match self.sums[i].take() {
            Some(s) => s + v,
            None => v,
        });
    }

    /// The sums as one `[M]` float tensor (metrics never added are NaN), and resets.
    pub fn take(&mut self, m: usize, device: Device) -> Tensor {
        let parts: Vec<Tensor> = (0..m)
            .map(|i| match self.sums.get_mut(i).and_then(Option::take) {
                Some(t) => t,
                None => Tensor::full([1], f64::NAN, (Kind::Float, device)),
            })
            .collect();
        self.sums.clear();
        Tensor::cat(&parts, 0)
    }
}

/// `loss · scale`, skipping the multiplication for a whole batch (`scale = 1`).
pub fn scaled(loss: &Tensor, scale: f64) -> Tensor {
    if scale == 1.0 {
        loss.shallow_clone()
    } else {
        loss * scale
    }
}

/// What a training task supplies to the loop.
pub trait TrainTask {
    /// The prepared batch of one step (images plus every random draw of the step).
    type Batch: MicroBatches;

    /// What is trained, for titles (e.g. `DDPM`).
    fn name(&self) -> &'static str;

    /// The scalars of a step, in the order of [`TrainTask::finish_step`]'s tensor; the first is the
    /// task's loss.
    fn metrics(&self) -> &'static [Metric];

    /// Names of the optimisation phases of a step (the GAN: discriminator, then generator).
    fn phases(&self) -> &'static [&'static str] {
        &["step"]
    }

    /// The device of the networks.
    fn device(&self) -> Device;

    /// Draws everything random of the step for the whole batch (so that gradient accumulation
    /// sees the same draws as one full-batch step). `x0`: `[N, C, H, W]` in [−1, 1]; `labels`:
    /// `[N]` int64 on the CPU.
    fn prepare(&mut self, x0: Tensor, labels: Tensor, step: usize) -> Result<Self::Batch>;

    /// Zeroes the gradients of the networks that `phase` updates.
    fn zero_grad(&mut self, phase: usize);

    /// Forward pass, loss and backward of one micro-batch in `phase`; the loss is multiplied by
    /// `scale` (1/k) before backward so that k micro-batches add up to the full batch's gradient.
    fn forward_backward(
        &mut self,
        phase: usize,
        micro: &Self::Batch,
        scale: f64,
        probe: &mut Probe,
    ) -> Result<()>;

    /// The optimiser that `phase` updates; a data-parallel run averages its gradients over the
    /// ranks between [`TrainTask::forward_backward`] and [`TrainTask::optimize`].
    fn optimizer(&mut self, phase: usize) -> &mut Adam;

    /// Clipping, optimiser update (learning rate `lr`) and EMA of `phase`.
    fn optimize(&mut self, phase: usize, lr: f64, probe: &mut Probe) -> Result<()>;

    /// The step's metrics as one `[M]` float tensor on the device (no host sync unless the task
    /// needs one, e.g. the importance sampler of L_vlb). In a data-parallel run (`par`) the
    /// metrics are this rank's (the engine averages them over ranks per log window); a task that
    /// needs the whole batch's per-sample values gathers them through `par`.
    fn finish_step(&mut self, step: usize, par: Option<&DataParallel>) -> Result<Tensor>;

    /// The checkpoint's parts, by file stem.
    fn state_groups(&mut self) -> Vec<(&'static str, StateGroup<'_>)>;

    /// Extra host state for `state.json` (e.g. the importance sampler's loss history).
    fn save_extra(&self, _state: &mut TrainState) {}

    /// Restores what [`TrainTask::save_extra`] saved.
    fn restore_extra(&mut self, _state: &TrainState) -> Result<()> {
        Ok(())
    }

    /// `n` uint8 sample images `[n, H, W, C]` on the CPU for a grid; the torch generator has been
    /// seeded with `seed` (the same at every call of a run). `None`: the task draws no grids, or
    /// `stop` was set while drawing (a task whose grid takes long checks it).
    fn sample_images(&self, n: usize, seed: u64, stop: &Arc<AtomicBool>) -> Result<Option<Tensor>>;

    /// `n` uint8 images `[n, H, W, C]` on the CPU to score during training (the torch generator
    /// seeded with `seed`, the same at every evaluation of a run). In a data-parallel run each
    /// rank draws its `shard` only and leaves the other rows zero (the engine sums the ranks'
    /// tensors); the images must not depend on the shard. By default the grid's sampler, drawn
    /// whole by shard 0 (the others return zeros). `None` when the task draws none, or when `stop`
    /// was set while drawing (checked between batches).
    fn eval_images(
        &self,
        n: usize,
        seed: u64,
        stop: &Arc<AtomicBool>,
        shard: Shard,
    ) -> Result<Option<Tensor>> {
        let images = self.sample_images(n, seed, stop)?;
        Ok(images.map(|t| if shard.index == 0 { t } else { t.zeros_like() }))
    }

    /// The `metrics.jsonl` fields of a log window from the window means of [`TrainTask::metrics`].
    fn summarize(&self, means: &[f64]) -> Map<String, Value> {
        self.metrics()
            .iter()
            .zip(means)
            .map(|(m, v)| (m.name.to_string(), json!(v)))
            .collect()
    }
}

/// The part of a piece of work split into numbered batches (an evaluation's sampling) that one
/// rank of a data-parallel run does: batch b is rank (b mod `count`)'s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This rank.
    pub index: usize,
    /// Number of ranks.
    pub count: usize,
}

impl Shard {
    /// All of the work (one process).
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// Whether batch `batch` is this shard's.
    pub fn owns(self, batch: usize) -> bool {
        batch % self.count == self.index
    }
}

/// The loop's settings, from a run's config.
#[derive(Debug, Clone)]
pub struct LoopSettings {
    /// Total optimisation steps.
    pub steps: usize,
    /// Seed of all draws.
    pub seed: u64,
    /// Images per step (the global batch).
    pub batch_size: usize,
    /// Micro-batches per step (gradient accumulation); divides `batch_size`.
    pub grad_accum: usize,
    /// Draw batches from the first `data_limit` images only (`None`: all).
    pub data_limit: Option<usize>,
    /// Pad 28×28 images to 32×32.
    pub pad_to_32: bool,
    /// Random horizontal flips.
    pub random_flip: bool,
    /// The optimiser's learning-rate schedule.
    pub optim: OptimConfig,
    /// Steps per log window.
    pub log_every: usize,
    /// Steps between checkpoints (0: only at the end and on stop).
    pub checkpoint_every: usize,
    /// Checkpoints kept.
    pub keep_checkpoints: usize,
    /// Steps between sample grids (0: only at the end).
    pub sample_every: usize,
    /// Images per grid (0: none).
    pub sample_num: usize,
    /// Steps between evaluations with [`TrainOptions::evaluator`] (0: none).
    pub eval_every: usize,
    /// Images per evaluation.
    pub eval_samples: usize,
    /// Write TensorBoard event files in `RUN/tensorboard/` (rank 0 or the single process).
    pub tensorboard: bool,
    /// How evaluations are made (sampler, sample and reference counts, network): scores made
    /// otherwise are not compared with each other.
    pub eval_setting: String,
    /// Training wall-clock seconds after which the run stops with a checkpoint, counted like
    /// [`TrainState::elapsed_secs`] over all sessions (grids and evaluations excluded); `None`:
    /// no limit (`run.steps` ends the run).
    pub time_limit_secs: Option<f64>,
}

impl LoopSettings {
    /// The learning rate of step `step` (0-based): linear warm-up over `optim.warmup_steps`, then
    /// constant or a half cosine to 0 at `steps`.
    pub fn lr_at(&self, step: usize) -> f64 {
        lr_at(&self.optim, step, self.steps)
    }
}

/// The learning rate at step `step` of `total` (see [`LoopSettings::lr_at`]).
pub fn lr_at(o: &OptimConfig, step: usize, total: usize) -> f64 {
    let warm = if o.warmup_steps == 0 {
        1.0
    } else {
        ((step + 1) as f64 / o.warmup_steps as f64).min(1.0)
    };
    let decay = match o.lr_schedule {
        LrSchedule::Constant => 1.0,
        LrSchedule::Cosine => {
            // The half cosine runs over the steps after the warm-up.
            let span = total.saturating_sub(o.warmup_steps).max(1) as f64;
            let done = step.saturating_sub(o.warmup_steps) as f64;
            0.5 * (1.0 + (std::f64::consts::PI * done / span).cos())
        }
    };
    o.lr * warm * decay
}

/// The seed of step `step` (a SplitMix64-style mix of the run seed and the step).
pub fn step_seed(seed: u64, step: usize) -> u64 {
    let mut z = seed.wrapping_add((step as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) & 0x7FFF_FFFF_FFFF_FFFF
}

/// The seed of the sample grids of a run (the same latents at every grid).
pub fn grid_seed(seed: u64) -> u64 {
    step_seed(seed, usize::MAX / 2)
}

/// What one step leaves: its metrics on the device, the batch size and the learning rate.
#[derive(Debug)]
pub struct StepRecord {
    /// `[M]` float metrics, in the order of [`TrainTask::metrics`].
    pub values: Tensor,
    /// Images in the step.
    pub n: i64,
    /// The learning rate used.
    pub lr: f64,
}

/// One optimisation step of `task` on the uint8 batch `images` (`[N, C, H, W]`, CPU) with
/// `labels` (`[N]`): seeds the torch generator with (seed, step), converts and flips the batch,
/// and runs the task's phases over `grad_accum` micro-batches. No host synchronisation.
///
/// In a data-parallel run (`par`), `images` is the step's global batch: the draws of the whole
/// batch are made as in one process, then this rank keeps its slice, and the gradients of each
/// phase are averaged over the ranks before the optimiser step. Draws inside the networks
/// (dropout, the VAE's reparameterisation) come from a generator seeded per rank.
pub fn train_step<T: TrainTask>(
    task: &mut T,
    s: &LoopSettings,
    images: &Tensor,
    labels: Tensor,
    step: usize,
    par: Option<&DataParallel>,
    probe: &mut Probe,
) -> Result<StepRecord> {
    // All randomness of this step derives from (seed, step): resuming needs no RNG state.
    tch::manual_seed(step_seed(s.seed, step) as i64);
    let mut x0 = loader::to_model_input(images, s.pad_to_32, task.device());
    if s.random_flip {
        x0 = loader::random_flip(&x0, s.seed, step);
    }
    let n = x0.size()[0];
    let mut batch = task.prepare(x0, labels, step)?;
    if let Some(p) = par.filter(|p| p.world_size() > 1) {
        batch = p.slice(batch);
        let rank_seed = s.seed ^ (p.rank() as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03);
        tch::manual_seed(step_seed(rank_seed, step) as i64);
    }
    let micro = batch.split(s.grad_accum);
    probe.mark("data");
    let lr = s.lr_at(step);
    let scale = 1.0 / micro.len() as f64;
    for phase in 0..task.phases().len() {
        task.zero_grad(phase);
        for m in &micro {
            task.forward_backward(phase, m, scale, probe)?;
        }
        if let Some(p) = par {
            p.average_gradients(task.optimizer(phase))?;
            probe.mark("all_reduce");
        }
        task.optimize(phase, lr, probe)?;
    }
    let values = task.finish_step(step, par)?;
    Ok(StepRecord { values, n, lr })
}

/// Where a run lives and what starts it.
#[derive(Debug, Clone)]
pub struct RunTarget<'a> {
    /// The run directory.
    pub dir: &'a Path,
    /// Continue the run in `dir` (else create it; it must not hold a run).
    pub resume: bool,
    /// The resolved config, written as `config.toml` (and into every checkpoint).
    pub config_toml: String,
    /// Further files of the run (name, text), e.g. the baselines' `networks.json`.
    pub files: Vec<(&'static str, String)>,
}

/// Trains `task` on `data` in the run directory of `target` (created, or resumed from its newest
/// checkpoint) until `s.steps`, or until `opts.stop` is set.
///
/// In a data-parallel run ([`TrainOptions::parallel`]) every rank calls this with the same
/// arguments; rank 0 alone touches the run directory, and a stop request is honoured at the end
/// of the next log window, on every rank at the same step ([`crate::parallel`]).
///
/// # Errors
/// Run-directory and checkpoint I/O (naming the path), a checkpoint that does not fit the task
/// (naming the file or tensor), a seed that differs from the run's, and
/// [`TrainError::NonFinite`] naming the step of the first non-finite loss (and its rank); in a
/// data-parallel run also [`TrainError::RankFailed`] when rank 0 could not open the run and
/// [`TrainError::Dist`] when a peer died or stalled past the timeout.
pub fn train<T: TrainTask>(
    task: &mut T,
    target: RunTarget,
    s: &LoopSettings,
    data: &ImageData,
    opts: &TrainOptions,
) -> Result<TrainSummary> {
    let par = opts.parallel.as_ref();
    check_batch_split(s, par)?;
    let Opened {
        run,
        _lock,
        events,
        mut state,
        mut last_checkpoint,
        mut last_loss,
    } = open_or_follow(task, &target, s, data, par)?;
    let n_data = s.data_limit.map_or(data.len(), |k| k.min(data.len()));
    let mut batches = BatchSampler::new(n_data, s.batch_size, s.seed);
    let bar = progress_bar(opts.progress && run.is_some(), s.steps, state.step);
    let mut clock = TrainClock::start(state.elapsed_secs, s.time_limit_secs);
    let mut window = LogWindow::new(s.log_every);
    let mut interrupted = false;
    let evaluator = opts.evaluator.as_deref().filter(|_| s.eval_every > 0);
    let mut best = match (evaluator, &run) {
        (Some(ev), Some(run)) => best_so_far(run, ev.name(), &s.eval_setting)?,
        _ => None,
    };
    let writer = run.as_ref().map(|run| Writer {
        run,
        events: events.as_ref(),
        target: &target,
        s,
        evaluator,
        stop_flag: &opts.stop,
    });
    let mut time_up = clock.spent_before(&state, s.steps);
    while state.step < s.steps && !time_up {
        let (images, labels) = data.gather(&batches.indices(state.step));
        let rec = train_step(
            task,
            s,
            &images,
            labels,
            state.step,
            par,
            &mut Probe::none(),
        )
        .map_err(|e| e.at_step(state.step + 1))?;
        window.push(rec.values, rec.n);
        state.step += 1;
        state.images_seen += rec.n as u64;
        if let Some(b) = &bar {
            b.inc(1);
        }
        // The time limit stops the run like a stop request (the ranks of a data-parallel run
        // agree on it at the next boundary), but the run is then complete, not interrupted.
        let local = (
            opts.stop.load(Ordering::SeqCst),
            clock.spent(clock.elapsed()),
        );
        let last = state.step == s.steps;
        let boundary =
            last || every(state.step, s.checkpoint_every) || every(state.step, s.log_every);
        // One process stops at any step; the ranks of a data-parallel run agree at boundaries.
        let mut stop = (local.0 || local.1) && par.is_none();
        time_up = local.1 && !local.0 && par.is_none();
        if boundary || stop {
            state.elapsed_secs = clock.elapsed();
            let ctx = WindowContext {
                run: run.as_ref(),
                events: events.as_ref(),
                state: &state,
                lr: rec.lr,
                last_checkpoint: &last_checkpoint,
                bar: bar.as_ref(),
            };
            let agreed = end_window(task, &mut window, &ctx, par, local, &mut last_loss)?;
            stop |= agreed.stop;
            time_up |= agreed.time_up;
        }
        // A run at its time limit ends as one at run.steps does (checkpoint, grid).
        let end = StepEnd {
            last: last || time_up,
            stop: stop && !time_up,
        };
        let set_aside = evaluate_and_write(
            task,
            (s, par, opts),
            writer.as_ref(),
            end,
            (&mut state, &mut last_checkpoint, &mut best),
        )?;
        clock.aside += set_aside;
        window.set_aside(set_aside);
        if time_up || (stop && !last) {
            interrupted = !time_up;
            if run.is_some() && !last {
                report_stop(&state, time_up);
            }
            break;
        }
    }
    if let Some(b) = bar {
        b.finish();
    }
    if let Some(ev) = &events {
        ev.flush()?;
    }
    if let Some(p) = par {
        p.finish().map_err(|e| e.at_step(state.step))?;
    }
    Ok(TrainSummary {
        checkpoint: session_checkpoint(last_checkpoint, run.as_ref(), &target)?,
        step: state.step,
        last_loss,
        elapsed_secs: state.elapsed_secs,
        interrupted,
        time_up,
    })
}

/// The training clock of a session: seconds of training over all sessions (grids and
/// evaluations set aside), and the run's time limit.
struct TrainClock {
    start: Instant,
    before: f64,
    /// Time spent on grids and evaluations, which is not training time.
    aside: Duration,
    limit: Option<f64>,
}

impl TrainClock {
    /// A clock at `before` seconds of earlier sessions' training.
    fn start(before: f64, limit: Option<f64>) -> Self {
        Self {
            start: Instant::now(),
            before,
            aside: Duration::ZERO,
            limit,
        }
    }

    /// Training seconds so far, all sessions.
    fn elapsed(&self) -> f64 {
        self.before
            + self
                .start
                .elapsed()
                .saturating_sub(self.aside)
                .as_secs_f64()
    }

    /// Whether `elapsed` training seconds reach the time limit.
    fn spent(&self, elapsed: f64) -> bool {
        self.limit.is_some_and(|l| elapsed >= l)
    }

    /// Whether the limit was spent before this session (a resumed run then trains no step).
    fn spent_before(&self, state: &TrainState, steps: usize) -> bool {
        let spent = self.spent(state.elapsed_secs);
        if spent && state.step < steps {
            tracing::info!(
                step = state.step,
                elapsed_secs = state.elapsed_secs,
                "the run's time limit is spent: no training"
            );
        }
        spent
    }
}

/// After a step: the evaluation's images when one is due (all ranks draw; a stop request skips
/// it — it can take minutes — and the resumed run goes on), then on rank 0 (`writer`) the
/// checkpoint, grid and evaluation record ([`write_outputs`]). Returns the time spent, which is
/// not training time.
fn evaluate_and_write<T: TrainTask>(
    task: &mut T,
    (s, par, opts): (&LoopSettings, Option<&DataParallel>, &TrainOptions),
    writer: Option<&Writer>,
    end: StepEnd,
    (state, last_checkpoint, best): (&mut TrainState, &mut Option<PathBuf>, &mut Option<f64>),
) -> Result<Duration> {
    let eval_start = Instant::now();
    let evaluating = opts.evaluator.is_some() && s.eval_every > 0;
    let eval_images =
        (every(state.step, s.eval_every) && !end.stop && (par.is_some() || evaluating))
            .then(|| draw_eval_images(task, s, par, &opts.stop))
            .transpose()?;
    let mut set_aside = eval_start.elapsed();
    // Ranks other than 0 write nothing: no checkpoint, grid or evaluation record.
    if let Some(w) = writer {
        set_aside += write_outputs(
            task,
            w,
            end,
            state,
            last_checkpoint,
            best,
            eval_images,
            eval_start,
        )?;
    }
    Ok(set_aside)
}

/// The log line of a run that stops before `run.steps`: at its time limit, or on request.
fn report_stop(state: &TrainState, time_up: bool) {
    if time_up {
        tracing::info!(
            step = state.step,
            elapsed_secs = state.elapsed_secs,
            "time limit reached; checkpoint saved"
        );
    } else {
        tracing::warn!(step = state.step, "stopped on request; checkpoint saved");
    }
}

/// The checkpoint a session reports: the one it wrote last, else the run's newest (a resume of a
/// finished run); on ranks other than 0, which write none, the run directory.
fn session_checkpoint(
    written: Option<PathBuf>,
    run: Option<&RunDir>,
    target: &RunTarget,
) -> Result<PathBuf> {
    match (written, run) {
        (Some(c), _) => Ok(c),
        (None, Some(run)) => run
            .latest_checkpoint()?
            .ok_or_else(|| TrainError::Checkpoint {
                path: run.path.clone(),
                message: "no checkpoint was written".into(),
            }),
        (None, None) => Ok(target.dir.to_path_buf()),
    }
}

/// What rank 0 (or the single process) writes after a step, and where.
struct Writer<'a> {
    run: &'a RunDir,
    events: Option<&'a EventWriter>,
    target: &'a RunTarget<'a>,
    s: &'a LoopSettings,
    evaluator: Option<&'a dyn Evaluator>,
    /// The stop request, which ends a grid being drawn.
    stop_flag: &'a Arc<AtomicBool>,
}

/// How a step ended: the run's last step, and whether the run stops after it.
#[derive(Clone, Copy)]
struct StepEnd {
    last: bool,
    stop: bool,
}

/// After a step: the checkpoint when due (every `checkpoint_every` steps, at the end, on stop),
/// the sample grid when due (not on stop), and the record of an evaluation whose images were
/// drawn (`eval_images`, drawn since `eval_start`). Returns the time spent on the grid and the
/// evaluation, which is not training time.
#[allow(clippy::too_many_arguments)]
fn write_outputs<T: TrainTask>(
    task: &mut T,
    w: &Writer,
    end: StepEnd,
    state: &mut TrainState,
    last_checkpoint: &mut Option<PathBuf>,
    best: &mut Option<f64>,
    eval_images: Option<Option<Tensor>>,
    eval_start: Instant,
) -> Result<Duration> {
    let s = w.s;
    if end.last || end.stop || every(state.step, s.checkpoint_every) {
        let previous = last_checkpoint.take();
        *last_checkpoint = Some(checkpoint(task, w.run, w.target, s, state, previous)?);
    }
    let start = Instant::now();
    // A stop request skips the grid (and one during the grid ends it).
    if (every(state.step, s.sample_every) || (end.last && s.sample_num > 0)) && !end.stop {
        write_grid(task, w.run, w.events, s, state.step, w.stop_flag)?;
    }
    if let (Some(ev), Some(images)) = (w.evaluator, eval_images) {
        let at = EvalPoint {
            run: w.run,
            events: w.events,
            target: w.target,
            state,
        };
        evaluate(task, ev, &at, s, best, images, eval_start)?;
    }
    Ok(start.elapsed())
}

/// Checks that `optim.grad_accum` divides the batch, and in a data-parallel run that the batch
/// splits into the ranks' equal shares of `grad_accum` micro-batches.
fn check_batch_split(s: &LoopSettings, par: Option<&DataParallel>) -> Result<()> {
    if s.grad_accum == 0 || s.batch_size % s.grad_accum != 0 {
        return Err(TrainError::config(
            "optim.grad_accum",
            format!(
                "{} does not divide data.batch_size {}",
                s.grad_accum, s.batch_size
            ),
        ));
    }
    match par {
        Some(p) => p.check_batch(s.batch_size, s.grad_accum),
        None => Ok(()),
    }
}

/// [`log_window`] at a boundary step, naming the step in a communication error; updates
/// `last_loss` and returns whether the ranks agreed to stop.
fn end_window<T: TrainTask>(
    task: &T,
    window: &mut LogWindow,
    ctx: &WindowContext,
    par: Option<&DataParallel>,
    local: (bool, bool),
    last_loss: &mut f64,
) -> Result<Stops> {
    let (loss, stops) =
        log_window(task, window, ctx, par, local).map_err(|e| e.at_step(ctx.state.step))?;
    if let Some(loss) = loss {
        *last_loss = loss;
    }
    Ok(stops)
}

/// What the ranks of a data-parallel run agreed at the end of a log window (nothing in a single
/// process, which decides alone).
#[derive(Debug, Clone, Copy, Default)]
struct Stops {
    /// Some rank was asked to stop or reached the time limit.
    stop: bool,
    /// Some rank reached the time limit and none was asked to stop.
    time_up: bool,
}

/// Where a training starts: the run (rank 0 and single processes only), its lock, the state and
/// checkpoint to continue from, and the loss of the last logged window.
struct Opened {
    run: Option<RunDir>,
    _lock: Option<RunLock>,
    /// The session's TensorBoard event file (where the run has one and this process writes).
    events: Option<EventWriter>,
    state: TrainState,
    last_checkpoint: Option<PathBuf>,
    last_loss: f64,
}

/// Opens the run ([`open_run`]) in a single process or on rank 0; in a data-parallel run, the
/// ranks first agree that they run rank 0's config, rank 0 then publishes the state to start from
/// (or its error), and every rank takes rank 0's weights and optimiser state.
fn open_or_follow<T: TrainTask>(
    task: &mut T,
    target: &RunTarget,
    s: &LoopSettings,
    data: &ImageData,
    par: Option<&DataParallel>,
) -> Result<Opened> {
    let Some(p) = par else {
        let opened = open_run(task, target, s)?;
        SESSION_STARTED.store(true, Ordering::SeqCst);
        return Ok(opened);
    };
    // Nothing is written before every rank is known to run the same config on the same data.
    p.agree_config(&target.config_toml, &data.fingerprint())?;
    let opened = if p.is_root() {
        let result = open_run(task, target, s);
        p.publish_start(
            result
                .as_ref()
                .map(|o| &o.state)
                .map_err(ToString::to_string),
        )?;
        let opened = result?;
        SESSION_STARTED.store(true, Ordering::SeqCst);
        opened
    } else {
        let state = p.follow_start()?;
        task.restore_extra(&state)?;
        Opened {
            run: None,
            _lock: None,
            events: None,
            state,
            last_checkpoint: None,
            last_loss: f64::NAN,
        }
    };
    p.broadcast_state(task)?;
    tracing::info!(
        rank = p.rank(),
        world_size = p.world_size(),
        step = opened.state.step,
        "data-parallel: weights and optimiser state taken from rank 0"
    );
    Ok(opened)
}

/// The training progress bar (steps, rate, ETA and the latest metrics), when `show`.
fn progress_bar(show: bool, total: usize, start: usize) -> Option<indicatif::ProgressBar> {
    show.then(|| {
        let b = crate::progress::bar(true, total as u64, "steps", "training");
        b.set_position(start as u64);
        b
    })
}

fn every(step: usize, period: usize) -> bool {
    period > 0 && step % period == 0
}

/// Creates the run directory, or opens it when resuming, restores the newest checkpoint and only
/// then rewrites its config (a refused resume leaves the run as it was); writes the task's
/// further files and opens the session's event file ([`open_events`]). Returns the run, its lock,
/// the state to continue from, its checkpoint and the loss of the last logged window.
fn open_run<T: TrainTask>(task: &mut T, target: &RunTarget, s: &LoopSettings) -> Result<Opened> {
    let (run, lock, state, ckpt) = if target.resume {
        let run = RunDir::open(target.dir)?;
        let lock = RunLock::acquire(&run.path)?;
        run.recover()?;
        let (state, ckpt) = restore_latest(task, &run, s)?;
        run.write_config_text(&target.config_toml)?;
        (run, lock, state, ckpt)
    } else {
        // A folder that exists may be a live run's: its lock is checked before anything else.
        let early = if target.dir.is_dir() {
            Some(RunLock::acquire(target.dir)?)
        } else {
            None
        };
        let run = RunDir::create_with_text(target.dir, &target.config_toml)?;
        let lock = match early {
            Some(l) => l,
            None => RunLock::acquire(&run.path)?,
        };
        (run, lock, TrainState::new(s.seed), None)
    };
    for (name, text) in &target.files {
        run.write_file(name, text)?;
    }
    let loss_name = task.metrics()[0].name;
    let last_loss = run
        .read_metrics()?
        .iter()
        .rev()
        .find_map(|r| r[loss_name].as_f64())
        .unwrap_or(f64::NAN);
    let events = s
        .tensorboard
        .then(|| open_events(&run, target, &state))
        .transpose()?;
    Ok(Opened {
        run: Some(run),
        _lock: Some(lock),
        events,
        state,
        last_checkpoint: ckpt,
        last_loss,
    })
}

/// Opens this session's event file in `RUN/tensorboard/` and writes the resolved config as text
/// at the session's first step. A resumed session starts at the step after its checkpoint's (at
/// 0 when there was none): its event file first purges what earlier sessions recorded from that
/// step on, the steps after the checkpoint that an interrupted session logged and that this one
/// logs again.
fn open_events(run: &RunDir, target: &RunTarget, state: &TrainState) -> Result<EventWriter> {
    let first = if state.step == 0 { 0 } else { state.step + 1 };
    let events = EventWriter::create(&run.tensorboard_dir(), target.resume.then_some(first))?;
    let text = format!("```toml\n{}\n```", target.config_toml.trim_end());
    events.text(first, "config", &text)?;
    events.flush()?;
    tracing::info!(file = %events.path().display(), "TensorBoard event file");
    Ok(events)
}

/// Restores the newest checkpoint of `run` into `task` (step 0 when there is none yet; the log
/// records of a session that wrote no checkpoint are dropped). The run's seed must be `s.seed`
/// and its step at most `s.steps`.
fn restore_latest<T: TrainTask>(
    task: &mut T,
    run: &RunDir,
    s: &LoopSettings,
) -> Result<(TrainState, Option<PathBuf>)> {
    let Some(ckpt) = run.latest_checkpoint()? else {
        tracing::warn!(dir = %run.path.display(), "no checkpoint yet; starting from step 0");
        run.truncate_metrics(0)?;
        return Ok((TrainState::new(s.seed), None));
    };
    let state = RunDir::read_state(&ckpt)?;
    if state.seed != s.seed {
        return Err(TrainError::config(
            "run.seed",
            format!(
                "the run was started with seed {}, not {}",
                state.seed, s.seed
            ),
        ));
    }
    if state.step > s.steps {
        return Err(TrainError::config(
            "run.steps",
            format!(
                "is {} but the run is at step {} already ({})",
                s.steps,
                state.step,
                ckpt.display()
            ),
        ));
    }
    for (name, group) in task.state_groups() {
        let path = ckpt.join(format!("{name}.safetensors"));
        match group {
            StateGroup::Vars(vs) => load_varstore(vs, &path)?,
            StateGroup::Optimizer(adam) => restore_optimizer(adam, &path, state.step)?,
        }
    }
    task.restore_extra(&state)?;
    tracing::info!(step = state.step, checkpoint = %ckpt.display(), "resumed");
    run.truncate_metrics(state.step)?;
    Ok((state, Some(ckpt)))
}

/// Loads an optimiser's state and checks that it took `step` updates.
fn restore_optimizer(adam: &mut Adam, path: &Path, step: usize) -> Result<()> {
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

/// Checks the weights, writes a checkpoint (keeping the newest `keep_checkpoints`) and redraws the
/// loss plot. Returns the checkpoint's folder.
fn checkpoint<T: TrainTask>(
    task: &mut T,
    run: &RunDir,
    target: &RunTarget,
    s: &LoopSettings,
    state: &mut TrainState,
    last_checkpoint: Option<PathBuf>,
) -> Result<PathBuf> {
    // A loss can be finite while the update that followed it was not: never checkpoint
    // non-finite weights.
    if !weights_finite(task) {
        return Err(TrainError::NonFinite {
            what: "weights",
            step: state.step,
            value: f64::NAN,
            last_checkpoint,
            rank: None,
        });
    }
    task.save_extra(state);
    let groups: Vec<(&str, Vec<(String, Tensor)>)> = task
        .state_groups()
        .into_iter()
        .map(|(name, g)| (name, group_tensors(&g)))
        .collect();
    let ckpt = run.save_checkpoint(state, &target.config_toml, &groups, s.keep_checkpoints)?;
    tracing::info!(step = state.step, checkpoint = %ckpt.display(), "checkpoint");
    plot_metrics(run, task.name(), task.metrics())?;
    Ok(ckpt)
}

/// The tensors of a checkpoint group, sorted by name.
fn group_tensors(g: &StateGroup) -> Vec<(String, Tensor)> {
    match g {
        StateGroup::Vars(vs) => {
            let mut v: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        }
        StateGroup::Optimizer(adam) => adam.state_tensors(),
    }
}

/// Whether every variable of every network of the task is finite (one host sync).
fn weights_finite<T: TrainTask>(task: &mut T) -> bool {
    let flags: Vec<Tensor> = task
        .state_groups()
        .iter()
        .filter_map(|(_, g)| match g {
            StateGroup::Vars(vs) => Some(vs.variables()),
            StateGroup::Optimizer(_) => None,
        })
        .flat_map(|vars| vars.into_values())
        .filter(|t| t.is_floating_point())
        .map(|t| t.isfinite().all())
        .collect();
    flags.is_empty() || Tensor::stack(&flags, 0).all().int64_value(&[]) == 1
}

/// The seed of the evaluation images of a run (the same chains at every evaluation, so that
/// scores differ by the weights only).
pub fn eval_seed(seed: u64) -> u64 {
    grid_seed(seed) ^ 0x5eed_e7a1
}

/// The score of the run's `checkpoints/best` when it was chosen by `metric` computed as
/// `setting` (also one written after the checkpoint a resume starts from: its weights did reach
/// that score); `None` when there is none or it was chosen otherwise (scores of another metric,
/// sampler or sample count do not compare; the first evaluation then replaces it).
fn best_so_far(run: &RunDir, metric: &str, setting: &str) -> Result<Option<f64>> {
    let Some((m, value, step, was)) = run.best()? else {
        return Ok(None);
    };
    if m != metric || was != setting {
        tracing::warn!(step, was = %format!("{m}: {was}"), now = %format!("{metric}: {setting}"), "checkpoints/best was chosen with other evaluation settings; the next evaluation replaces it");
        return Ok(None);
    }
    Ok(Some(value))
}

/// Where an evaluation happens: the run, what started it and its state.
struct EvalPoint<'a> {
    run: &'a RunDir,
    events: Option<&'a EventWriter>,
    target: &'a RunTarget<'a>,
    state: &'a TrainState,
}

/// The `s.eval_samples` images of an evaluation, drawn from the run's evaluation seed: by this
/// process alone, or in a data-parallel run split among the ranks (batch b on rank b mod W, each
/// batch from its own seed, so the images are those of one process) and summed into one tensor on
/// every rank. `None` when the task draws none or a single process was asked to stop meanwhile;
/// the ranks of a data-parallel run finish their share (the gather is a collective) and stop at
/// the next log window.
fn draw_eval_images<T: TrainTask>(
    task: &T,
    s: &LoopSettings,
    par: Option<&DataParallel>,
    stop: &Arc<AtomicBool>,
) -> Result<Option<Tensor>> {
    let seed = eval_seed(s.seed);
    tch::manual_seed(seed as i64);
    let Some(p) = par.filter(|p| p.world_size() > 1) else {
        return task.eval_images(s.eval_samples, seed, stop, Shard::ALL);
    };
    let shard = Shard {
        index: p.rank(),
        count: p.world_size(),
    };
    let never = Arc::new(AtomicBool::new(false));
    match task.eval_images(s.eval_samples, seed, &never, shard)? {
        Some(mut images) => {
            p.sum_shards(&mut images)?;
            Ok(Some(images))
        }
        None => Ok(None),
    }
}

/// Scores the evaluation images `images` (or notes an evaluation the stop request interrupted)
/// with `ev`, appends `{step, <metric>, eval_samples, eval_secs}` to `metrics.jsonl` (seconds
/// since `start`, drawing included), redraws `eval.png`, and saves `checkpoints/best` when the
/// score is the lowest so far.
fn evaluate<T: TrainTask>(
    task: &mut T,
    ev: &dyn Evaluator,
    at: &EvalPoint,
    s: &LoopSettings,
    best: &mut Option<f64>,
    images: Option<Tensor>,
    start: Instant,
) -> Result<()> {
    let step = at.state.step;
    let Some(images) = images else {
        tracing::warn!(
            step,
            "no evaluation: the stop request interrupted the drawing"
        );
        return Ok(());
    };
    let value = ev
        .score(&images)
        .map_err(|message| TrainError::Eval { step, message })?;
    let secs = start.elapsed().as_secs_f64();
    let name = ev.name();
    let record = json!({
        "step": step,
        name: value,
        "eval_samples": s.eval_samples,
        "eval_secs": secs,
    });
    append_record(at.run, at.events, &record)?;
    let improved = value.is_finite() && best.is_none_or(|b| value < b);
    tracing::info!(
        step,
        metric = name,
        value,
        seconds = secs,
        best = improved,
        "evaluation"
    );
    if improved {
        let groups: Vec<(&str, Vec<(String, Tensor)>)> = task
            .state_groups()
            .into_iter()
            .map(|(name, g)| (name, group_tensors(&g)))
            .collect();
        let dir = at.run.save_best(
            at.state,
            &at.target.config_toml,
            &groups,
            (name, value, &s.eval_setting),
        )?;
        tracing::info!(step, checkpoint = %dir.display(), "best checkpoint");
        *best = Some(value);
    }
    plot_eval(at.run, name)
}

/// Redraws `eval.png`: the evaluation metric against step.
fn plot_eval(run: &RunDir, metric: &str) -> Result<()> {
    let (xs, ys): (Vec<f64>, Vec<f64>) = run
        .read_metrics()?
        .iter()
        .filter_map(|r| Some((r["step"].as_f64()?, r[metric].as_f64()?)))
        .unzip();
    let panel = viz::PlotPanel::new(metric, xs, ys)
        .y_label(format!("{metric} (lower is better)"))
        .color([214, 39, 40]);
    let img = viz::plot(&format!("{metric} during training"), "step", &[panel]);
    viz::save_png(&img, &run.path.join("eval.png"))
}

/// Draws and writes `samples/step_N.png`, and the grid as the image `samples` at its step in the
/// event file.
fn write_grid<T: TrainTask>(
    task: &T,
    run: &RunDir,
    events: Option<&EventWriter>,
    s: &LoopSettings,
    step: usize,
    stop: &Arc<AtomicBool>,
) -> Result<()> {
    let n = s.sample_num.max(1);
    let seed = grid_seed(s.seed);
    tch::manual_seed(seed as i64);
    tracing::info!(
        step,
        images = n,
        "drawing the sample grid (Ctrl-C skips it)"
    );
    let Some(images) = task.sample_images(n, seed, stop)? else {
        if stop.load(Ordering::SeqCst) {
            tracing::warn!(step, "sample grid skipped on request");
        }
        return Ok(());
    };
    let path = run.path.join("samples").join(format!("step_{step}.png"));
    let img = viz::grid_nhwc(&images, (n as f64).sqrt().ceil() as usize);
    viz::save_png(&img, &path)?;
    if let Some(ev) = events {
        ev.image(step, "samples", &img)?;
        ev.flush()?;
    }
    tracing::info!(path = %path.display(), "sample grid");
    Ok(())
}

/// Redraws `loss.png` from `metrics.jsonl`: one panel per plotted metric, against step, under
/// the title `"{title}: training metrics"`.
pub fn plot_metrics(run: &RunDir, title: &str, metrics: &[Metric]) -> Result<()> {
    // The training records (evaluation records carry their own metric only).
    let records: Vec<Value> = run
        .read_metrics()?
        .into_iter()
        .filter(|r| metrics.first().is_some_and(|m| !r[m.name].is_null()))
        .collect();
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
    let panels: Vec<viz::PlotPanel> = metrics
        .iter()
        .filter(|m| m.plot != Plot::No)
        .enumerate()
        .map(|(i, m)| {
            let ys = records
                .iter()
                .map(|r| r[m.name].as_f64().unwrap_or(f64::NAN))
                .collect();
            let log = m.plot == Plot::Log;
            viz::PlotPanel::new(m.name, xs.clone(), ys)
                .y_label(if log {
                    format!("{} (log scale)", m.name)
                } else {
                    m.name.to_string()
                })
                .color(COLORS[i % COLORS.len()])
                .log_y(log)
        })
        .collect();
    if panels.is_empty() {
        return Ok(());
    }
    let img = viz::plot(&format!("{title}: training metrics"), "step", &panels);
    viz::save_png(&img, &run.path.join("loss.png"))
}

/// The metrics of the steps since the last read-back, on the device.
struct LogWindow {
    rows: Vec<Tensor>,
    images: i64,
    start: Instant,
}

/// The means of a log window.
struct WindowMeans {
    means: Vec<f64>,
    steps: usize,
    images: i64,
    secs: f64,
}

impl LogWindow {
    fn new(every: usize) -> Self {
        Self {
            rows: Vec::with_capacity(every),
            images: 0,
            start: Instant::now(),
        }
    }

    /// Excludes `d` (spent on grids or evaluations) from the window's time.
    fn set_aside(&mut self, d: Duration) {
        self.start += d;
    }

    fn push(&mut self, values: Tensor, n: i64) {
        self.rows.push(values);
        self.images += n;
    }

    /// Reads the window back (one host sync) and resets it, as [`log_window`] does in one
    /// process; the first value of a metric that must be finite and is not is an error naming
    /// its step (`step_after` is the step count after the window's last step).
    #[cfg(test)]
    fn flush(
        &mut self,
        metrics: &[Metric],
        step_after: usize,
        last_checkpoint: &Option<PathBuf>,
    ) -> Result<Option<WindowMeans>> {
        let all = self.read()?;
        let bad = first_non_finite(metrics, &all).map(|i| (None, i));
        self.finish(metrics, all, bad, step_after, last_checkpoint)
    }

    /// The window's values on the host, `steps × M` row-major (one host sync; empty when no
    /// step was pushed).
    fn read(&self) -> Result<Vec<f64>> {
        if self.rows.is_empty() {
            return Ok(Vec::new());
        }
        Ok(Vec::<f64>::try_from(
            Tensor::stack(&self.rows, 0)
                .to_kind(Kind::Double)
                .to_device(Device::Cpu)
                .view([-1]),
        )?)
    }

    /// The means of the window's values `all` (as read, or as averaged over the ranks) and a
    /// reset; `bad` (the rank, if data-parallel, and the index in `all` of the first non-finite
    /// value of a checked metric) is an error naming its step.
    fn finish(
        &mut self,
        metrics: &[Metric],
        all: Vec<f64>,
        bad: Option<(Option<usize>, usize)>,
        step_after: usize,
        last_checkpoint: &Option<PathBuf>,
    ) -> Result<Option<WindowMeans>> {
        if self.rows.is_empty() {
            return Ok(None);
        }
        let (steps, k) = (self.rows.len(), metrics.len());
        if let Some((rank, i)) = bad {
            return Err(TrainError::NonFinite {
                what: metrics[i % k].name,
                step: step_after - steps + i / k + 1,
                value: all[i],
                last_checkpoint: last_checkpoint.clone(),
                rank,
            });
        }
        let means = (0..k)
            .map(|j| all.iter().skip(j).step_by(k).sum::<f64>() / steps as f64)
            .collect();
        let out = WindowMeans {
            means,
            steps,
            images: self.images,
            secs: self.start.elapsed().as_secs_f64(),
        };
        self.rows.clear();
        self.images = 0;
        self.start = Instant::now();
        Ok(Some(out))
    }
}

/// The index in a window's values (`steps × M` row-major) of the first value of a metric that
/// must be finite and is not.
fn first_non_finite(metrics: &[Metric], all: &[f64]) -> Option<usize> {
    let k = metrics.len();
    all.iter()
        .enumerate()
        .position(|(i, v)| metrics[i % k].must_be_finite && !v.is_finite())
}

/// What writing a log record needs besides the task and the window.
struct WindowContext<'a> {
    /// The run (`None` on ranks other than 0, which write nothing).
    run: Option<&'a RunDir>,
    /// Its event file, when it logs to TensorBoard.
    events: Option<&'a EventWriter>,
    state: &'a TrainState,
    lr: f64,
    last_checkpoint: &'a Option<PathBuf>,
    bar: Option<&'a indicatif::ProgressBar>,
}

/// Ends the log window: in a data-parallel run (`par`) the ranks first average their windows and
/// agree on stopping ([`DataParallel::agree`], with this rank's `local`: asked to stop, time
/// limit reached); then one `metrics.jsonl` record (where there is a run), a log line and the
/// progress message. Returns the window's loss (the task's first metric) and what the ranks
/// agreed.
fn log_window<T: TrainTask>(
    task: &T,
    window: &mut LogWindow,
    ctx: &WindowContext,
    par: Option<&DataParallel>,
    local: (bool, bool),
) -> Result<(Option<f64>, Stops)> {
    let metrics = task.metrics();
    let mut all = window.read()?;
    let local_bad = first_non_finite(metrics, &all);
    let (bad, stop) = match par {
        Some(p) => {
            let agreed = p.agree(&mut all, metrics.len(), local, local_bad)?;
            let stops = Stops {
                stop: agreed.stop,
                time_up: agreed.time_up,
            };
            (agreed.non_finite.map(|(r, i)| (Some(r), i)), stops)
        }
        None => (local_bad.map(|i| (None, i)), Stops::default()),
    };
    let step = ctx.state.step;
    let Some(w) = window.finish(metrics, all, bad, step, ctx.last_checkpoint)? else {
        return Ok((None, stop));
    };
    let world = par.map_or(1, DataParallel::world_size);
    let img_per_s = w.images as f64 / w.secs.max(1e-9);
    if let Some(run) = ctx.run {
        let mut record = Map::new();
        record.insert("step".into(), json!(step));
        record.extend(task.summarize(&w.means));
        record.insert("lr".into(), json!(ctx.lr));
        record.insert("img_per_s".into(), json!(img_per_s));
        record.insert("elapsed_s".into(), json!(ctx.state.elapsed_secs));
        if let Some(p) = par {
            record.insert("world_size".into(), json!(world));
            // Rank 0's time in the gradient all-reduces (waiting for slower ranks included).
            let per_step = p.take_reduce_secs() / w.steps as f64;
            record.insert("allreduce_s_per_step".into(), json!(per_step));
        }
        append_record(run, ctx.events, &Value::Object(record))?;
    }
    let line = metrics_line(metrics, &w.means);
    tracing::info!(step, steps = w.steps, lr = %format_args!("{:.4e}", ctx.lr), metrics = %line, "train");
    if let Some(b) = ctx.bar {
        b.set_message(format!("{line} | {img_per_s:.1} img/s"));
    }
    Ok((w.means.first().copied(), stop))
}

/// The one place where records are logged: appends `record` to `metrics.jsonl` and, where the
/// run logs to TensorBoard, writes each of its fields as a scalar at its step and flushes the
/// event file (once per log window or evaluation).
fn append_record(run: &RunDir, events: Option<&EventWriter>, record: &Value) -> Result<()> {
    run.append_metrics(record)?;
    if let Some(ev) = events {
        ev.record(record)?;
        ev.flush()?;
    }
    Ok(())
}

/// `name value | name value` of the plotted and checked metrics.
fn metrics_line(metrics: &[Metric], means: &[f64]) -> String {
    metrics
        .iter()
        .zip(means)
        .filter(|(m, _)| m.plot != Plot::No || m.must_be_finite)
        .map(|(m, v)| format!("{} {v:.4}", m.name))
        .collect::<Vec<_>>()
        .join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lr_schedules() {
        let mut o = OptimConfig {
            lr: 1.0,
            warmup_steps: 4,
            ..OptimConfig::default()
        };
        let warm: Vec<f64> = (0..6).map(|s| lr_at(&o, s, 100)).collect();
        assert_eq!(warm, vec![0.25, 0.5, 0.75, 1.0, 1.0, 1.0]);
        assert_eq!(lr_at(&o, 99, 100), 1.0);
        o.lr_schedule = LrSchedule::Cosine;
        o.warmup_steps = 0;
        assert_eq!(lr_at(&o, 0, 100), 1.0);
        assert!((lr_at(&o, 50, 100) - 0.5).abs() < 1e-15);
        assert!(lr_at(&o, 99, 100) < 1e-3);
        // With a warm-up, the cosine starts at its end.
        o.warmup_steps = 10;
        assert_eq!(lr_at(&o, 9, 110), 1.0);
        assert!((lr_at(&o, 60, 110) - 0.5).abs() < 1e-15);
    }

    #[test]
    fn step_metrics_sum_micro_batches_and_mark_missing_ones() {
        let mut m = StepMetrics::default();
        m.add(0, &Tensor::from(1.5f32));
        m.add(0, &Tensor::from(2.0f32));
        m.add(2, &Tensor::from(4.0f32));
        let v = Vec::<f32>::try_from(m.take(3, Device::Cpu)).unwrap();
        assert_eq!(v[0], 3.5);
        assert!(v[1].is_nan());
        assert_eq!(v[2], 4.0);
        // Reset after take.
        let v = Vec::<f32>::try_from(m.take(1, Device::Cpu)).unwrap();
        assert!(v[0].is_nan());
    }

    #[test]
    fn window_names_the_first_bad_step_and_metric() {
        const M: [Metric; 2] = [
            Metric::loss("loss", Plot::Log),
            Metric::diagnostic("grad_norm"),
        ];
        let mut w = LogWindow::new(4);
        for row in [[1.0f32, f32::NAN], [2.0, 1.0], [f32::INFINITY, 1.0]] {
            w.push(Tensor::from_slice(&row), 2);
        }
        match w.flush(&M, 13, &None) {
            Err(TrainError::NonFinite { what, step, .. }) => {
                assert_eq!((what, step), ("loss", 13));
            }
            other => panic!("{:?}", other.map(|o| o.map(|w| w.means))),
        }
        let mut w = LogWindow::new(2);
        w.push(Tensor::from_slice(&[1.0f32, 3.0]), 2);
        w.push(Tensor::from_slice(&[2.0f32, 5.0]), 2);
        let out = w.flush(&M, 2, &None).unwrap().unwrap();
        assert_eq!((out.means, out.steps, out.images), (vec![1.5, 4.0], 2, 4));
        assert!(w.flush(&M, 2, &None).unwrap().is_none());
    }
}
