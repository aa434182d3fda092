//! `ddpm-cli bench`: training images/s, sampling evaluations/s, a full chain's images/s and peak
//! memory for a preset's DDPM (see `ddpm_train::bench`). A measurement, not a test.
use std::path::PathBuf;

use anyhow::{bail, Result};
use ddpm_train::bench::{run_bench, BenchOptions};

/// Arguments of `ddpm-cli bench`.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// Preset: mnist-cpu, mnist, fashion-mnist or cifar10.
    #[arg(long, default_value = "mnist-cpu", value_parser = crate::choices::preset())]
    preset: String,
    /// Device: auto, cpu, cuda or cuda:N (default: the preset's).
    #[arg(long, value_parser = crate::choices::device)]
    device: Option<ddpm_nets::device::DeviceSpec>,
    /// Images per training step and per sampling evaluation (default: the preset's batch).
    #[arg(long)]
    batch: Option<usize>,
    /// Timed training steps.
    #[arg(long, default_value_t = 10, value_parser = crate::choices::count)]
    steps: usize,
    /// Timed sampling network evaluations.
    #[arg(long, default_value_t = 20)]
    sample_steps: usize,
    /// Untimed warm-up iterations before each timed phase.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Sampler of the full chain (ddim50, 100, …; default: the preset's run.sample_steps; none = skip).
    #[arg(long)]
    chain: Option<String>,
    /// Images in the full chain (default: --batch).
    #[arg(long)]
    chain_batch: Option<usize>,
    /// auto (bf16 autocast on CUDA, f32 on the CPU), f32, or bf16 (autocast on either device).
    #[arg(long, default_value = "auto", value_parser = crate::choices::dtype())]
    dtype: String,
    /// Also time the phases of a training step (forward+loss, backward, clip, Adam, EMA).
    #[arg(long)]
    profile: bool,
    /// Seed of the weights and draws.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write the initial weights as a diffusers folder here (for scripts/bench_pytorch.py).
    #[arg(long)]
    weights_out: Option<PathBuf>,
    /// Use the textbook layers (upsample then 3×3 conv; direct conv_out) instead of the exact faster
    /// reformulations, to measure what those buy.
    #[arg(long)]
    reference_layers: bool,
    /// Run the benchmark while N busy-loop processes compete for the CPUs (to measure how the
    /// thread policy copes with a loaded machine; they end with the benchmark).
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=256))]
    background_load: u16,
    /// Print the report as JSON (otherwise a short summary and the JSON).
    #[arg(long)]
    json: bool,
}

/// Busy-loop processes (`sh -c 'while :; do :; done'`) that load the CPUs while they live. Each is
/// killed when this is dropped, and by the kernel when this process dies (`PR_SET_PDEATHSIG`), so a
/// killed benchmark leaves none behind.
struct BackgroundLoad(Vec<std::process::Child>);

impl BackgroundLoad {
    fn start(n: usize) -> Result<Self> {
        use std::os::unix::process::CommandExt;
        let mut load = BackgroundLoad(Vec::with_capacity(n));
        for _ in 0..n {
            let mut cmd = std::process::Command::new("sh");
            cmd.args(["-c", "while :; do :; done"])
                .stdin(std::process::Stdio::null());
            // SAFETY: prctl is async-signal-safe; the closure allocates nothing.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let child = cmd
                .spawn()
                .map_err(|e| anyhow::anyhow!("--background-load: cannot start `sh`: {e}"))?;
            load.0.push(child);
        }
        // Let the loops reach the scheduler's steady state before anything is timed.
        std::thread::sleep(std::time::Duration::from_millis(300));
        Ok(load)
    }
}

impl Drop for BackgroundLoad {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Benchmarks; `threads` is the global `--threads` (default: the preset's run.cpu_threads
/// policy).
pub fn run(args: BenchArgs, threads: Option<usize>) -> Result<()> {
    let bf16 = match args.dtype.as_str() {
        "auto" => None,
        "bf16" => Some(true),
        "f32" => Some(false),
        other => bail!("--dtype {other}: expected auto, f32 or bf16"),
    };
    let opts = BenchOptions {
        preset: args.preset,
        device: args.device.map(|d| d.to_string()),
        batch: args.batch,
        threads,
        steps: args.steps.max(1),
        sample_steps: args.sample_steps.max(1),
        warmup: args.warmup,
        chain: args.chain,
        chain_batch: args.chain_batch,
        bf16,
        weights_out: args.weights_out,
        profile: args.profile,
        seed: args.seed,
        reference_layers: args.reference_layers,
    };
    let load = BackgroundLoad::start(usize::from(args.background_load))?;
    let mut report = run_bench(&opts)?;
    drop(load);
    report["background_load"] = serde_json::json!(args.background_load);
    report["thread_policy"] = serde_json::json!({
        "threads_requested": threads,
        "cpu_available": ddpm_nets::cpu_threads::available_cpus(),
        "wait": ddpm_nets::cpu_threads::WaitPolicy::current(),
    });
    if !args.json {
        let f = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
        eprintln!(
            "{} on {} ({} threads, batch {}, background load {}): train {:.4} s/step ({:.1} img/s); sample {:.4} s/eval ({:.1} img·evals/s); chain {}",
            report["preset"].as_str().unwrap_or("?"),
            report["device"].as_str().unwrap_or("?"),
            report["threads"],
            report["batch"],
            args.background_load,
            f(&report["train"]["step_s"]),
            f(&report["train"]["images_per_s"]),
            f(&report["sample"]["eval_s"]),
            f(&report["sample"]["image_evals_per_s"]),
            if report["chain"].is_null() {
                "skipped".to_string()
            } else {
                format!("{} {:.2} img/s", report["chain"]["sampler"].as_str().unwrap_or("?"), f(&report["chain"]["images_per_s"]))
            },
        );
    }
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
