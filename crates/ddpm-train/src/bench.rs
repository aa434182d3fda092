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

/// Runs the benchmark and returns its JSON report.
pub fn run_bench(opts: &BenchOptions) -> Result<Value> {
    let cfg = bench_config(opts)?;
    ddpm_nets::fast::set_enabled(!opts.reference_layers);
    let device = setup_device(&cfg)?;
    let diffusion = cfg.diffusion.build()?;
    let u = cfg.unet()?;
    let batch = cfg.data.batch_size as i64;
    let (h, w) = match u.sample_size {
        Some(ddpm_nets::unet::SampleSize::Square(s)) => (s, s),
        Some(ddpm_nets::unet::SampleSize::Rect([h, w])) => (h, w),
        None => (32, 32),
    };
    let (sh, sw) = sample_hw(&cfg);
    let load_before = load_average();

    let mut task = DdpmTask::new(&cfg, device)?;
    let settings = loop_settings(&cfg);
    let num_params = ddpm_nets::unet::num_parameters(&task.model.vs);
    if let Some(dir) = &opts.weights_out {
        ddpm_nets::diffusers::save_pretrained(dir, u, &task.model.vs)?;
    }
    // Σ|θ| of the initial weights: PyTorch's report shows the same number when it loaded them.
    let weights_abs_sum: f64 = named_trainables(&task.model.vs)
        .iter()
        .map(|(_, p)| p.abs().sum(Kind::Double).double_value(&[]))
        .sum();

    // Synthetic uint8 images of the preset's shape stand in for the dataset (the gather from the
    // in-memory array is not timed); the conversion to the model input is the engine's.
    tch::manual_seed(step_seed(cfg.run.seed, 0) as i64);
    let images_u8 = Tensor::randint(
        256,
        [batch, u.in_channels, h, w],
        (Kind::Uint8, Device::Cpu),
    );
    let labels = Tensor::randint(10, [batch], (Kind::Int64, Device::Cpu));

    // Training.
    let _ = reset_peak_rss();
    let mut train_times = Vec::with_capacity(opts.steps);
    let mut last_loss = Tensor::zeros([1], (Kind::Float, device));
    let mut block_start = Instant::now();
    let mut cpu_start = process_cpu_secs();
    for step in 0..opts.warmup + opts.steps {
        if step == opts.warmup {
            sync(device);
            block_start = Instant::now();
            cpu_start = process_cpu_secs();
        }
        let start = Instant::now();
        let rec = train_step(
            &mut task,
            &settings,
            &images_u8,
            labels.shallow_clone(),
            step,
            &mut Probe::none(),
        )?;
        last_loss = rec.values.get(0);
        if !device.is_cuda() && step >= opts.warmup {
            // On the CPU every op has finished when it returns: per-step times are exact.
            train_times.push(start.elapsed().as_secs_f64());
        }
    }
    if device.is_cuda() {
        // On CUDA the steps run asynchronously: the block is timed as a whole (one sync).
        sync(device);
        let per = block_start.elapsed().as_secs_f64() / opts.steps.max(1) as f64;
        train_times = vec![per; opts.steps];
    }
    let train_cpu = cpu_start
        .zip(process_cpu_secs())
        .map(|(a, b)| (b - a) / opts.steps.max(1) as f64);
    let final_loss = last_loss.double_value(&[]);
    if !final_loss.is_finite() {
        return Err(TrainError::NonFinite {
            what: "loss",
            step: opts.warmup + opts.steps,
            value: final_loss,
            last_checkpoint: None,
        });
    }
    let train_peak = proc_status_mib("VmHWM:");
    let train_summary = summary(&train_times);
    let train_mean = train_summary["mean_s"].as_f64().unwrap_or(f64::NAN);
    let train_median = train_summary["median_s"].as_f64().unwrap_or(f64::NAN);

    let profile = if opts.profile {
        Some(profile_steps(&mut task, &cfg, &images_u8, &labels, opts)?)
    } else {
        None
    };

    // Sampling: network evaluations of the EMA model at batch B under no_grad.
    let _ = reset_peak_rss();
    let autocast = task.autocast();
    let ema_unet = &task.model.ema_unet;
    let class = u
        .num_class_embeds
        .map(|k| Tensor::arange(batch, (Kind::Int64, device)).remainder(k - 1));
    let eval = |x: &Tensor, t: &Tensor, labels: Option<&Tensor>| -> Tensor {
        ddpm_nets::autocast::bf16_if(autocast, device, || ema_unet.forward_t(x, t, labels, false))
            .to_kind(Kind::Float)
    };
    let mut sample_times = Vec::with_capacity(opts.sample_steps);
    let mut sample_cpu = None;
    tch::no_grad(|| {
        tch::manual_seed(step_seed(cfg.run.seed, usize::MAX / 3) as i64);
        let x = Tensor::randn([batch, u.in_channels, sh, sw], (Kind::Float, device));
        let mut block_start = Instant::now();
        let mut cpu_start = process_cpu_secs();
        for i in 0..opts.warmup + opts.sample_steps {
            if i == opts.warmup {
                sync(device);
                block_start = Instant::now();
                cpu_start = process_cpu_secs();
            }
            let t = Tensor::full([batch], 999 - (i as i64 * 20) % 1000, (Kind::Int64, device));
            let start = Instant::now();
            let y = eval(&x, &t, class.as_ref());
            if !device.is_cuda() && i >= opts.warmup {
                sample_times.push(start.elapsed().as_secs_f64());
            }
            drop(y);
        }
        sample_cpu = cpu_start
            .zip(process_cpu_secs())
            .map(|(a, b)| (b - a) / opts.sample_steps.max(1) as f64);
        if device.is_cuda() {
            sync(device);
            let per = block_start.elapsed().as_secs_f64() / opts.sample_steps.max(1) as f64;
            sample_times = vec![per; opts.sample_steps];
        }
    });
    let sample_summary = summary(&sample_times);
    let sample_mean = sample_summary["mean_s"].as_f64().unwrap_or(f64::NAN);

    // A full chain of the (fast) sampler the preset's grids use.
    let chain_spec = opts
        .chain
        .clone()
        .unwrap_or_else(|| cfg.run.sample_steps.to_string());
    let chain = if chain_spec == "none" {
        Value::Null
    } else {
        let spec = SamplerSpec::parse(&chain_spec, diffusion.num_timesteps())?;
        let sampler = Sampler::new(&diffusion, &spec, device)?;
        let n = opts.chain_batch.map(|b| b as i64).unwrap_or(batch);
        let chain_class = u
            .num_class_embeds
            .map(|k| Tensor::arange(n, (Kind::Int64, device)).remainder(k - 1));
        tch::manual_seed(step_seed(cfg.run.seed, usize::MAX / 2) as i64);
        let noise = Tensor::randn([n, u.in_channels, sh, sw], (Kind::Float, device));
        sync(device);
        let start = Instant::now();
        let samples = sampler.sample(
            |x, t, _| eval(x, t, chain_class.as_ref()),
            noise,
            None,
            0,
            |_| {},
        );
        sync(device);
        let secs = start.elapsed().as_secs_f64();
        let finite = samples.images.isfinite().all().int64_value(&[]) == 1;
        json!({
            "sampler": spec.label(),
            "evals": sampler.num_steps(),
            "batch": n,
            "secs": secs,
            "images_per_s": n as f64 / secs,
            "finite": finite,
        })
    };
    let sample_peak = proc_status_mib("VmHWM:");

    Ok(json!({
        "impl": "ddpm-rs",
        "host_allocator": ddpm_nets::host_memory::current().to_string(),
        "layers": if ddpm_nets::fast::enabled() { "fast (ddpm_nets::fast)" } else { "reference" },
        "preset": opts.preset,
        "device": format!("{device:?}"),
        "dtype": if autocast { "bf16-autocast" } else { "f32" },
        "threads": tch::get_num_threads(),
        "interop_threads": tch::get_num_interop_threads(),
        "batch": batch,
        "image": [u.in_channels, sh, sw],
        "params": num_params,
        "weights_abs_sum": weights_abs_sum,
        "data": "synthetic uint8, converted by loader::to_model_input",
        "pad_to_32": cfg.data.pad_to_32,
        "random_flip": cfg.data.random_flip,
        "optim": serde_json::to_value(&cfg.optim).unwrap_or(Value::Null),
        "diffusion": serde_json::to_value(&cfg.diffusion).unwrap_or(Value::Null),
        "load_avg_before": load_before,
        "load_avg_after": load_average(),
        "train": {
            "steps": opts.steps,
            "warmup": opts.warmup,
            "step": train_summary,
            "step_s": train_median,
            "cpu_s_per_step": train_cpu,
            "images_per_s": batch as f64 / train_mean,
            "final_loss": final_loss,
            "includes": "t/ε draws, q_sample, forward, ε-MSE loss, backward, grad-norm clip, Adam, EMA",
        },
        "sample": {
            "evals": opts.sample_steps,
            "eval": sample_summary,
            "eval_s": sample_summary["median_s"],
            "evals_per_s": 1.0 / sample_mean,
            "cpu_s_per_eval": sample_cpu,
            "image_evals_per_s": batch as f64 / sample_mean,
            "grad_mode": "no_grad (tch has no InferenceMode guard)",
        },
        "chain": chain,
        "profile": profile,
        "memory": {
            "train_peak_rss_mib": train_peak,
            "sample_peak_rss_mib": sample_peak,
            "cuda_peak_mib": Value::Null,
            "note": if device.is_cuda() { "CUDA peak allocation is not exposed by tch 0.24: n/a" } else { "VmHWM of this process, reset before each phase" },
        },
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
