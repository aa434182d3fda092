//! `cargo xtask bench-pytorch`: ddpm-rs against PyTorch eager + diffusers' `UNet2DModel` with the
//! same architecture, weights, batch, dtype and thread count, run back to back and repeated; prints
//! the side-by-side table (medians) with ratios and the targets met or missed.
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::ctx::{run, Ctx};
use crate::venv;

/// The diffusers version the parity fixtures and `save_pretrained` folders are written for.
const DIFFUSERS_VERSION: &str = "0.42.1";

/// Options of `bench-pytorch`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Preset: mnist-cpu, mnist, fashion-mnist or cifar10.
    #[arg(long, default_value = "mnist-cpu")]
    preset: String,
    /// cpu or cuda[:N] (both sides).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Images per training step / sampling evaluation (default: the preset's).
    #[arg(long)]
    batch: Option<usize>,
    /// Intra-op thread settings, comma-separated, each run on both sides: a number, or `default`
    /// (each side's own policy: ddpm-cli without --threads and without a wait policy in the
    /// environment, so it restarts itself with its own; PyTorch as it starts). With several, the
    /// table ends with each side's default against its best fixed count.
    #[arg(long, default_value = "1", value_delimiter = ',')]
    threads: Vec<ThreadSetting>,
    /// Busy-loop processes competing for the CPUs during every run (both sides).
    #[arg(long, default_value_t = 0)]
    background_load: u16,
    /// Timed training steps per run.
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Timed sampling evaluations per run.
    #[arg(long, default_value_t = 10)]
    sample_steps: usize,
    /// Sampler of the full chain (ddimN or none).
    #[arg(long, default_value = "ddim50")]
    chain: String,
    /// Images of the full chain (default: the batch).
    #[arg(long)]
    chain_batch: Option<usize>,
    /// f32, or bf16 (autocast, on CUDA or the CPU, on both sides).
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Back-to-back repeats (ours, then PyTorch); the table shows medians.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// PyTorch's Adam: fused, foreach or for-loop.
    #[arg(long, default_value = "fused")]
    adam: String,
    /// Also time the phases of our training step.
    #[arg(long)]
    profile: bool,
    /// Give the PyTorch process the same glibc malloc settings ddpm-cli applies to itself (freed memory
    /// kept for reuse; see ddpm_nets::host_memory), to see how much of the difference they make.
    #[arg(long)]
    pytorch_retain_memory: bool,
    /// Run our side with the textbook layers instead of ddpm_nets::fast's exact reformulations.
    #[arg(long)]
    reference_layers: bool,
    /// Where the weights and the JSON reports go (default target/bench/<preset>).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// One intra-op thread setting of the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadSetting {
    /// Each side's default policy.
    Default,
    /// This many threads on both sides.
    Fixed(usize),
}

impl std::str::FromStr for ThreadSetting {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "default" => Ok(Self::Default),
            n => match n.parse::<usize>() {
                Ok(k) if k >= 1 => Ok(Self::Fixed(k)),
                _ => Err(format!("`{s}`: expected `default` or a thread count ≥ 1")),
            },
        }
    }
}

impl std::fmt::Display for ThreadSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Default => f.write_str("default"),
            Self::Fixed(n) => write!(f, "{n}"),
        }
    }
}

/// The variables that choose libgomp's wait policy (and ddpm-cli's marker of its own choice):
/// removed from both sides' environments so that each runs with its own policy, not the one
/// `.cargo/config.toml` gives programs started through cargo.
const POLICY_VARS: [&str; 3] = [
    "OMP_WAIT_POLICY",
    "GOMP_SPINCOUNT",
    "DDPM_CPU_POLICY_RESTARTED",
];

/// The throw-away venv with diffusers (torch comes from the project's `.venv` through a .pth
/// file, or from PyPI when that has none). Created or completed when needed.
pub fn ensure_diffusers_venv(ctx: &Ctx) -> Result<PathBuf> {
    let dir = std::env::var_os("DDPM_DIFFUSERS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/venv-diffusers"));
    let python = dir.join("bin/python");
    let probe = |python: &Path| {
        Command::new(python)
            .args([
                "-c",
                "import diffusers, safetensors, torch; print(diffusers.__version__)",
            ])
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .map(|o| {
                o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == DIFFUSERS_VERSION
            })
            .unwrap_or(false)
    };
    if python.exists() && probe(&python) {
        return Ok(python);
    }
    if !python.exists() {
        eprintln!(
            "creating {} (diffusers=={DIFFUSERS_VERSION})",
            dir.display()
        );
        run(Command::new("python3").args(["-m", "venv"]).arg(&dir))
            .context("python3 -m venv failed (Debian: install python3-venv)")?;
    }
    let project_python = venv::ensure(&ctx.venv())?;
    let purelib = |py: &Path| -> Result<PathBuf> {
        let out = Command::new(py)
            .args([
                "-c",
                "import sysconfig; print(sysconfig.get_paths()['purelib'])",
            ])
            .output()
            .with_context(|| format!("cannot run {}", py.display()))?;
        if !out.status.success() {
            bail!("{} cannot report its site-packages", py.display());
        }
        Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
    };
    let project_site = purelib(&project_python)?;
    let mut packages = vec![
        format!("diffusers=={DIFFUSERS_VERSION}"),
        "safetensors".into(),
        "numpy".into(),
    ];
    if project_site.join("torch").is_dir() {
        let pth = purelib(&python)?.join("ddpm-project-torch.pth");
        crate::fetch::write_atomic(&pth, format!("{}\n", project_site.display()).as_bytes())?;
    } else {
        packages.push(format!("torch=={}", venv::TORCH_VERSION));
    }
    run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--progress-bar",
            "off",
            "-q",
        ])
        .args(&packages))?;
    if !probe(&python) {
        bail!(
            "{} still cannot import diffusers {DIFFUSERS_VERSION}, safetensors and torch",
            python.display()
        );
    }
    Ok(python)
}

fn uptime() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| {
            format!(
                "load average {}",
                s.split_whitespace().take(3).collect::<Vec<_>>().join(", ")
            )
        })
        .unwrap_or_else(|_| "load average n/a".into())
}

/// Runs the comparison and prints the table.
pub fn bench_pytorch(ctx: &Ctx, args: &BenchArgs) -> Result<()> {
    venv::ensure(&ctx.venv())?;
    let python = ensure_diffusers_venv(ctx)?;
    let cli = ctx.build_release_cli()?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| ctx.root.join("target/bench").join(&args.preset));
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let weights = out.join("weights");
    let script = ctx.root.join("scripts/bench_pytorch.py");
    // Repeats outermost, so that every thread setting of a repeat runs back to back (a load that
    // drifts over time then touches each setting alike).
    let mut files = vec![(Vec::new(), Vec::new()); args.threads.len()];
    for r in 0..args.repeats.max(1) {
        for (k, &threads) in args.threads.iter().enumerate() {
            let tag = format!("t{threads}_{r}");
            let ours_json = out.join(format!("ours_{tag}.json"));
            let pt_json = out.join(format!("pytorch_{tag}.json"));
            let label = format!(
                "threads {threads}, repeat {}/{}",
                r + 1,
                args.repeats.max(1)
            );
            let mut cmd = ours_command(ctx, args, threads, &cli, &weights);
            let stdout = run_measured(&mut cmd, &format!("ddpm-rs ({label})"))?;
            crate::fetch::write_atomic(&ours_json, &stdout)?;
            let mut cmd = pytorch_command(
                args,
                threads,
                &python,
                &script,
                [&weights, &ours_json, &pt_json],
            );
            run_measured(&mut cmd, &format!("pytorch ({label})"))?;
            files[k].0.push(ours_json);
            files[k].1.push(pt_json);
        }
    }
    let groups: Vec<_> = args
        .threads
        .iter()
        .zip(&files)
        .map(|(threads, (ours, pytorch))| {
            serde_json::json!({ "threads": threads.to_string(), "ours": ours, "pytorch": pytorch })
        })
        .collect();
    let manifest = out.join("runs.json");
    let text = serde_json::json!({ "background_load": args.background_load, "groups": groups });
    crate::fetch::write_atomic(&manifest, format!("{text:#}\n").as_bytes())?;
    println!();
    run(Command::new(&python)
        .arg(&script)
        .arg("--summary")
        .arg(&manifest))?;
    println!("reports: {}", out.display());
    Ok(())
}

/// Runs one side's benchmark, failing with its stderr; returns its stdout.
fn run_measured(cmd: &mut Command, what: &str) -> Result<Vec<u8>> {
    eprintln!("\n==> {what} ({}): {cmd:?}", uptime());
    let output = cmd
        .output()
        .with_context(|| format!("cannot start {what}"))?;
    if !output.status.success() {
        bail!(
            "{what} failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output.stdout)
}

/// `ddpm-cli bench --json …` for one repeat, writing the initial weights to `weights`.
fn ours_command(
    ctx: &Ctx,
    args: &BenchArgs,
    threads: ThreadSetting,
    cli: &Path,
    weights: &Path,
) -> Command {
    let mut cmd = Command::new(cli);
    venv::apply_env(&mut cmd, &ctx.venv());
    for var in POLICY_VARS {
        cmd.env_remove(var);
    }
    cmd.args([
        "bench",
        "--json",
        "--preset",
        &args.preset,
        "--device",
        &args.device,
    ])
    .args(["--steps", &args.steps.to_string()])
    .args(["--background-load", &args.background_load.to_string()])
    .args([
        "--sample-steps",
        &args.sample_steps.to_string(),
        "--chain",
        &args.chain,
        "--dtype",
        &args.dtype,
    ])
    .arg("--weights-out")
    .arg(weights);
    if let ThreadSetting::Fixed(n) = threads {
        cmd.args(["--threads", &n.to_string()]);
    }
    if let Some(b) = args.batch {
        cmd.args(["--batch", &b.to_string()]);
    }
    if let Some(b) = args.chain_batch {
        cmd.args(["--chain-batch", &b.to_string()]);
    }
    if args.profile {
        cmd.arg("--profile");
    }
    if args.reference_layers {
        cmd.arg("--reference-layers");
    }
    cmd
}

/// `scripts/bench_pytorch.py` for one repeat on the same `weights`, beside `ours_json`, writing
/// `pt_json`.
fn pytorch_command(
    args: &BenchArgs,
    threads: ThreadSetting,
    python: &Path,
    script: &Path,
    files: [&Path; 3],
) -> Command {
    let [weights, ours_json, pt_json] = files;
    let mut cmd = Command::new(python);
    for var in POLICY_VARS {
        cmd.env_remove(var);
    }
    cmd.env("HF_HUB_OFFLINE", "1")
        .arg(script)
        .arg("--weights")
        .arg(weights)
        .arg("--ours")
        .arg(ours_json)
        .args([
            "--device",
            &args.device,
            "--dtype",
            &args.dtype,
            "--adam",
            &args.adam,
        ])
        .args(["--threads", &threads.to_string()])
        .args(["--background-load", &args.background_load.to_string()])
        .arg("--out")
        .arg(pt_json);
    if args.pytorch_retain_memory {
        // The values ddpm_nets::host_memory sets through mallopt.
        cmd.env("MALLOC_MMAP_THRESHOLD_", "1073741824")
            .env("MALLOC_TRIM_THRESHOLD_", "2147483647")
            .env("MALLOC_TOP_PAD_", "67108864");
    }
    cmd
}
