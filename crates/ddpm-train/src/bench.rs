//! Benchmarks of a preset's DDPM: training images/s through the engine's own step
//! ([`crate::engine::train_step`] on [`crate::tasks::ddpm::DdpmTask`], phase timings through its
//! [`Probe`] hook), sampling network evaluations/s under `no_grad`, a full
//! chain's images/s for the preset's (fast, DDIM) sampler, and peak memory.
//!
//! These are measurements, not tests: nothing here asserts a speed. The report is JSON with the
//! same keys as `scripts/bench_pytorch.py` writes for PyTorch eager + diffusers' `UNet2DModel`
//! (which `ddpm-cli bench --weights-out DIR` gives the same initial weights).
use std::path::PathBuf;
use std::time::Instant;

use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

use crate::config::TrainConfig;
use crate::engine::{step_seed, train_step, Probe};
use crate::error::{Result, TrainError};
use crate::optim::named_trainables;
use crate::sampler::{Sampler, SamplerSpec};
use crate::tasks::ddpm::{sample_hw, DdpmTask};
use crate::tasks::{loop_settings, setup_device};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// A preset name (`mnist-cpu`, `mnist`, `fashion-mnist`, `cifar10`).
    pub preset: String,
    /// `cpu`, `cuda`, `cuda:N` or `auto` (default: the preset's device).
    pub device: Option<String>,
    /// Images per training step and per sampling evaluation (default: the preset's batch).
    pub batch: Option<usize>,
    /// libtorch intra-op threads (default: the preset's `run.cpu_threads` policy).
    pub threads: Option<usize>,
    /// Timed training steps.
    pub steps: usize,
    /// Timed sampling network evaluations.
    pub sample_steps: usize,
    /// Untimed warm-up iterations before each timed phase.
    pub warmup: usize,
    /// Sampler spec of the full chain (`ddim50`, `100`, …); default: the preset's
    /// `run.sample_steps`; `none` skips the chain.
    pub chain: Option<String>,
    /// Images of the full chain (default: `batch`).
    pub chain_batch: Option<usize>,
    /// bf16 autocast of the network: `None` = on CUDA only (the presets' default), `Some(b)` = `b` on any
    /// device.
    pub bf16: Option<bool>,
    /// Write the initial weights as a diffusers folder here (for `scripts/bench_pytorch.py`).
    pub weights_out: Option<PathBuf>,
    /// Also time the phases of a training step separately (forward+loss, backward, clip, Adam,
    /// EMA); CPU timings are exact, CUDA ones synchronise after each phase.
    pub profile: bool,
    /// Seed of the weights and of all draws.
    pub seed: u64,
    /// Run the textbook layers instead of `ddpm_nets::fast`'s reformulations (to measure what they buy).
    pub reference_layers: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            preset: "mnist-cpu".into(),
            device: None,
            batch: None,
            threads: None,
            steps: 10,
            sample_steps: 20,
            warmup: 2,
            chain: None,
            chain_batch: None,
            bf16: None,
            weights_out: None,
            profile: false,
            reference_layers: false,
            seed: 0,
        }
    }
}

/// Per-iteration wall times and their summary.
fn summary(times: &[f64]) -> Value {
    let mut s = times.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let median = if s.is_empty() {
        f64::NAN
    } else if s.len() % 2 == 1 {
        s[s.len() / 2]
    } else {
        0.5 * (s[s.len() / 2 - 1] + s[s.len() / 2])
    };
    let mean = s.iter().sum::<f64>() / s.len().max(1) as f64;
    json!({
        "n": s.len(),
        "median_s": median,
        "mean_s": mean,
        "min_s": s.first().copied().unwrap_or(f64::NAN),
        "max_s": s.last().copied().unwrap_or(f64::NAN),
        "all_s": times,
    })
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// A kB field of `/proc/self/status` in MiB (Linux only; `None` elsewhere).
fn proc_status_mib(field: &str) -> Option<f64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// CPU seconds (user + system, all threads) this process has used: `/proc/self/stat` fields 14
/// and 15 in clock ticks (100 Hz on Linux). Under load, CPU time per step is a steadier measure of
/// the work than wall time (with one thread; more threads add their spin-waiting).
fn process_cpu_secs() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Resets the peak resident set size (`VmHWM`) so that the next phase's peak is its own.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The 1-minute load average (`/proc/loadavg`), to judge how busy the machine was.
pub fn load_average() -> Option<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let v: Vec<f64> = text
        .split_whitespace()
        .take(3)
        .filter_map(|x| x.parse().ok())
        .collect();
    (v.len() == 3).then(|| [v[0], v[1], v[2]])
}

/// The benchmark's configuration: the preset with the options applied.
pub fn bench_config(opts: &BenchOptions) -> Result<TrainConfig> {
    let mut cfg = TrainConfig::preset(&opts.preset)?;
    // The benchmark draws random images and never opens a dataset; this only names that.
    cfg.data.path = PathBuf::from("<random images>");
    if let Some(b) = opts.batch {
        cfg.data.batch_size = b;
    }
    if let Some(t) = opts.threads {
        cfg.run.cpu_threads = t;
    }
    if let Some(d) = &opts.device {
        cfg.run.device = d.parse().map_err(|e: ddpm_nets::device::DeviceError| {
            TrainError::config("run.device", e.to_string())
        })?;
    }
    if let Some(b) = opts.bf16 {
        cfg.run.bf16 = b;
        cfg.run.cpu_bf16 = b;
    }
    cfg.run.seed = opts.seed;
    cfg.validate()?;
    Ok(cfg)
}

/// Per-iteration wall times of a timed loop and its CPU seconds per iteration.
struct Timing {
    times: Vec<f64>,
    cpu_per_iter: Option<f64>,
}

/// Runs `body(i)` for `warmup + n` iterations and times the last `n`: per iteration on the CPU
/// (every op has finished when it returns), as the block's mean on CUDA (asynchronous; one sync).
fn timed(
    device: Device,
    warmup: usize,
    n: usize,
    mut body: impl FnMut(usize) -> Result<()>,
) -> Result<Timing> {
    let mut times = Vec::with_capacity(n);
    let mut block_start = Instant::now();
    let mut cpu_start = process_cpu_secs();
    for i in 0..warmup + n {
        if i == warmup {
            sync(device);
            block_start = Instant::now();
            cpu_start = process_cpu_secs();
        }
        let start = Instant::now();
        body(i)?;
        if !device.is_cuda() && i >= warmup {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    let cpu_per_iter = cpu_start
        .zip(process_cpu_secs())
        .map(|(a, b)| (b - a) / n.max(1) as f64);
    if device.is_cuda() {
        sync(device);
        times = vec![block_start.elapsed().as_secs_f64() / n.max(1) as f64; n];
    }
    Ok(Timing {
        times,
        cpu_per_iter,
    })
}

/// The image shape of the preset's data (before padding) and of its samples.
fn shapes(cfg: &TrainConfig) -> Result<((i64, i64), (i64, i64))> {
    let data_hw = match cfg.unet()?.sample_size {
        Some(ddpm_nets::unet::SampleSize::Square(s)) => (s, s),
        Some(ddpm_nets::unet::SampleSize::Rect([h, w])) => (h, w),
        None => (32, 32),
    };
    Ok((data_hw, sample_hw(cfg)))
}

/// Runs the benchmark and returns its JSON report.
pub fn run_bench(opts: &BenchOptions) -> Result<Value> {
    let cfg = bench_config(opts)?;
    ddpm_nets::fast::set_enabled(!opts.reference_layers);
    let device = setup_device(&cfg)?;
    let load_before = load_average();
    let mut task = DdpmTask::new(&cfg, device)?;
    if let Some(dir) = &opts.weights_out {
        ddpm_nets::diffusers::save_pretrained(dir, cfg.unet()?, &task.model.vs)?;
    }
    // Σ|θ| of the initial weights: PyTorch's report shows the same number when it loaded them.
    let weights_abs_sum: f64 = named_trainables(&task.model.vs)
        .iter()
        .map(|(_, p)| p.abs().sum(Kind::Double).double_value(&[]))
        .sum();
    let (mut train, train_peak) = bench_training(&mut task, &cfg, opts)?;
    let profile = train
        .as_object_mut()
        .and_then(|t| t.remove("profile"))
        .unwrap_or(Value::Null);
    let gpu_mib = || {
        device
            .is_cuda()
            .then(ddpm_nets::device::cuda_driver::memory_in_use_mib)
            .flatten()
    };
    let train_gpu = gpu_mib();
    let (sample, sample_peak) = bench_sampling(&task, &cfg, opts)?;
    let sample_gpu = gpu_mib();
    let chain = bench_chain(&task, &cfg, opts)?;
    let chain_gpu = gpu_mib();
    let (_, (sh, sw)) = shapes(&cfg)?;
    let u = cfg.unet()?;
    Ok(json!({
        "impl": "ddpm-rs",
        "host_allocator": ddpm_nets::host_memory::current().to_string(),
        "layers": if ddpm_nets::fast::enabled() { "fast (ddpm_nets::fast)" } else { "reference" },
        "preset": opts.preset,
        "device": format!("{device:?}"),
        "dtype": if task.autocast() { "bf16-autocast" } else { "f32" },
        "threads": tch::get_num_threads(),
        "interop_threads": tch::get_num_interop_threads(),
        "batch": cfg.data.batch_size,
        "image": [u.in_channels, sh, sw],
        "params": ddpm_nets::unet::num_parameters(&task.model.vs),
        "weights_abs_sum": weights_abs_sum,
        "data": "synthetic uint8, converted by loader::to_model_input",
        "pad_to_32": cfg.data.pad_to_32,
        "random_flip": cfg.data.random_flip,
        "optim": serde_json::to_value(&cfg.optim).unwrap_or(Value::Null),
        "diffusion": serde_json::to_value(&cfg.diffusion).unwrap_or(Value::Null),
        "load_avg_before": load_before,
        "load_avg_after": load_average(),
        "train": train,
        "sample": sample,
        "chain": chain,
        "profile": profile,
        "memory": {
            "train_peak_rss_mib": train_peak,
            "sample_peak_rss_mib": sample_peak,
            "cuda_in_use_after_train_mib": train_gpu,
            "cuda_in_use_after_sample_mib": sample_gpu,
            "cuda_in_use_after_chain_mib": chain_gpu,
            "note": if device.is_cuda() {
                "CUDA: device memory in use (cuMemGetInfo total - free, CUDA context included) after each phase, cumulative; libtorch's caching allocator keeps its peak reservation, so this bounds the peak from above (tch 0.24 exposes no allocator statistics)"
            } else {
                "VmHWM of this process, reset before each phase"
            },
        },
    }))
}

/// Times `opts.steps` training steps through the engine's [`train_step`] on synthetic uint8
/// images of the preset's shape (the gather from the in-memory array is not timed; the
/// conversion to the model input is the engine's), plus the phase profile when asked. Returns
/// the `train` section of the report and the peak RSS.
fn bench_training(
    task: &mut DdpmTask,
    cfg: &TrainConfig,
    opts: &BenchOptions,
) -> Result<(Value, Option<f64>)> {
    let device = task.model.vs.device();
    let settings = loop_settings(cfg);
    let ((h, w), _) = shapes(cfg)?;
    let batch = cfg.data.batch_size as i64;
    tch::manual_seed(step_seed(cfg.run.seed, 0) as i64);
    let shape = [batch, cfg.unet()?.in_channels, h, w];
    let images_u8 = Tensor::randint(256, shape, (Kind::Uint8, Device::Cpu));
    let labels = Tensor::randint(10, [batch], (Kind::Int64, Device::Cpu));
    let _ = reset_peak_rss();
    let mut last_loss = Tensor::zeros([1], (Kind::Float, device));
    let timing = timed(device, opts.warmup, opts.steps, |step| {
        let rec = train_step(
            task,
            &settings,
            &images_u8,
            labels.shallow_clone(),
            step,
            None,
            &mut Probe::none(),
        )?;
        last_loss = rec.values.get(0);
        Ok(())
    })?;
    let final_loss = last_loss.double_value(&[]);
    if !final_loss.is_finite() {
        return Err(TrainError::NonFinite {
            what: "loss",
            step: opts.warmup + opts.steps,
            value: final_loss,
            last_checkpoint: None,
            rank: None,
        });
    }
    let peak = proc_status_mib("VmHWM:");
    let stats = summary(&timing.times);
    let profile = if opts.profile {
        Some(profile_steps(task, cfg, &images_u8, &labels, opts)?)
    } else {
        None
    };
    let section = json!({
        "steps": opts.steps,
        "warmup": opts.warmup,
        "step_s": stats["median_s"],
        "cpu_s_per_step": timing.cpu_per_iter,
        "images_per_s": batch as f64 / stats["mean_s"].as_f64().unwrap_or(f64::NAN),
        "final_loss": final_loss,
        "includes": "t/ε draws, q_sample, forward, ε-MSE loss, backward, grad-norm clip, Adam, EMA",
        "step": stats,
        "profile": profile,
    });
    Ok((section, peak))
}

/// The EMA network's forward pass as the samplers call it (bf16 autocast when the run uses it).
fn ema_eval<'a>(
    task: &'a DdpmTask,
    class: Option<&'a Tensor>,
) -> impl Fn(&Tensor, &Tensor) -> Tensor + 'a {
    move |x, t| {
        ddpm_nets::autocast::bf16_if(task.autocast(), task.model.vs.device(), || {
            task.model.ema_unet.forward_t(x, t, class, false)
        })
        .to_kind(Kind::Float)
    }
}

/// Classes 0, 1, … in turn for `n` images of a conditional model.
fn cycling_classes(cfg: &TrainConfig, n: i64, device: Device) -> Option<Tensor> {
    cfg.model
        .unet()
        .and_then(|u| u.num_class_embeds)
        .map(|k| Tensor::arange(n, (Kind::Int64, device)).remainder(k - 1))
}

/// Times `opts.sample_steps` network evaluations of the EMA model at batch B under no_grad.
/// Returns the `sample` section of the report and the peak RSS.
fn bench_sampling(
    task: &DdpmTask,
    cfg: &TrainConfig,
    opts: &BenchOptions,
) -> Result<(Value, Option<f64>)> {
    let device = task.model.vs.device();
    let batch = cfg.data.batch_size as i64;
    let (_, (sh, sw)) = shapes(cfg)?;
    let _ = reset_peak_rss();
    let class = cycling_classes(cfg, batch, device);
    let eval = ema_eval(task, class.as_ref());
    let timing = tch::no_grad(|| {
        tch::manual_seed(step_seed(cfg.run.seed, usize::MAX / 3) as i64);
        let x = Tensor::randn(
            [batch, cfg.unet()?.in_channels, sh, sw],
            (Kind::Float, device),
        );
        timed(device, opts.warmup, opts.sample_steps, |i| {
            let t = Tensor::full([batch], 999 - (i as i64 * 20) % 1000, (Kind::Int64, device));
            drop(eval(&x, &t));
            Ok(())
        })
    })?;
    let stats = summary(&timing.times);
    let mean = stats["mean_s"].as_f64().unwrap_or(f64::NAN);
    let section = json!({
        "evals": opts.sample_steps,
        "eval_s": stats["median_s"],
        "evals_per_s": 1.0 / mean,
        "cpu_s_per_eval": timing.cpu_per_iter,
        "image_evals_per_s": batch as f64 / mean,
        "grad_mode": "no_grad (tch has no InferenceMode guard)",
        "eval": stats,
    });
    Ok((section, proc_status_mib("VmHWM:")))
}

/// Times a full chain of the (fast) sampler the preset's grids use (`opts.chain`, default
/// `run.sample_steps`; `none`: skipped).
fn bench_chain(task: &DdpmTask, cfg: &TrainConfig, opts: &BenchOptions) -> Result<Value> {
    let spec = opts
        .chain
        .clone()
        .unwrap_or_else(|| cfg.run.sample_steps.to_string());
    if spec == "none" {
        return Ok(Value::Null);
    }
    let device = task.model.vs.device();
    let diffusion = task.diffusion();
    let mut spec = SamplerSpec::parse(&spec, diffusion.num_timesteps())?;
    spec.x0 = cfg.diffusion.sampling()?.x0;
    let sampler = Sampler::new(diffusion, &spec, device)?;
    let n = opts.chain_batch.unwrap_or(cfg.data.batch_size) as i64;
    let (_, (sh, sw)) = shapes(cfg)?;
    let class = cycling_classes(cfg, n, device);
    let eval = ema_eval(task, class.as_ref());
    tch::manual_seed(step_seed(cfg.run.seed, usize::MAX / 2) as i64);
    let noise = Tensor::randn([n, cfg.unet()?.in_channels, sh, sw], (Kind::Float, device));
    sync(device);
    let start = Instant::now();
    let samples = sampler.sample(|x, t, _| eval(x, t), noise, None, 0, |_| {})?;
    sync(device);
    let secs = start.elapsed().as_secs_f64();
    Ok(json!({
        "sampler": spec.label(),
        "evals": sampler.num_steps(),
        "batch": n,
        "secs": secs,
        "images_per_s": n as f64 / secs,
        "finite": samples.images.isfinite().all().int64_value(&[]) == 1,
    }))
}

/// Times the phases of `opts.steps` extra training steps separately (data, forward+loss,
/// backward, grad-norm clip, Adam, EMA) through the engine's [`Probe`] hook, synchronising the
/// device at each mark.
fn profile_steps(
    task: &mut DdpmTask,
    cfg: &TrainConfig,
    images_u8: &Tensor,
    labels: &Tensor,
    opts: &BenchOptions,
) -> Result<Value> {
    const NAMES: [&str; 6] = [
        "data",
        "forward_loss",
        "backward",
        "grad_norm_clip",
        "adam",
        "ema",
    ];
    let device = task.model.vs.device();
    let settings = loop_settings(cfg);
    let mut acc: Vec<Vec<f64>> = vec![Vec::with_capacity(opts.steps); NAMES.len()];
    let base = 10 * (opts.warmup + opts.steps + 1);
    for step in base..base + opts.steps {
        let mut mark = Instant::now();
        let mut hook = |name: &'static str| {
            sync(device);
            if let Some(k) = NAMES.iter().position(|n| *n == name) {
                acc[k].push(mark.elapsed().as_secs_f64());
            }
            mark = Instant::now();
        };
        train_step(
            task,
            &settings,
            images_u8,
            labels.shallow_clone(),
            step,
            None,
            &mut Probe::with(&mut hook),
        )?;
    }
    let mut out = serde_json::Map::new();
    let mut total = 0.0;
    for (k, name) in NAMES.iter().enumerate() {
        let s = summary(&acc[k]);
        total += s["median_s"].as_f64().unwrap_or(0.0);
        out.insert(format!("{name}_s"), s["median_s"].clone());
    }
    out.insert("sum_of_medians_s".into(), json!(total));
    out.insert("steps".into(), json!(opts.steps));
    Ok(Value::Object(out))
}
