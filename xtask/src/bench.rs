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
    /// Intra-op threads on both sides (default 1: on a loaded 2-core machine more threads spin
    /// against each other).
    #[arg(long, default_value_t = 1)]
    threads: usize,
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
    eprintln!("\n==> cargo build --release -p ddpm-cli");
    run(ctx
        .cargo()
        .args(["build", "--release", "--package", "ddpm-cli"]))?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| ctx.root.join("target"));
    let cli = target.join("release/ddpm-cli");
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| ctx.root.join("target/bench").join(&args.preset));
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let weights = out.join("weights");
    let script = ctx.root.join("scripts/bench_pytorch.py");
    let (mut ours_files, mut pt_files) = (Vec::new(), Vec::new());
    for r in 0..args.repeats.max(1) {
        let ours_json = out.join(format!("ours_{r}.json"));
        let pt_json = out.join(format!("pytorch_{r}.json"));
        let mut cmd = ours_command(ctx, args, &cli, &weights);
        eprintln!(
            "\n==> repeat {}/{} ddpm-rs ({}): {cmd:?}",
            r + 1,
            args.repeats.max(1),
            uptime()
        );
        let output = cmd
            .output()
            .with_context(|| format!("cannot start {}", cli.display()))?;
        if !output.status.success() {
            bail!(
                "ddpm-cli bench failed ({}):\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        crate::fetch::write_atomic(&ours_json, &output.stdout)?;

        let mut cmd = pytorch_command(args, &python, &script, [&weights, &ours_json, &pt_json]);
        eprintln!(
            "==> repeat {}/{} pytorch ({}): {cmd:?}",
            r + 1,
            args.repeats.max(1),
            uptime()
        );
        let output = cmd.output().context("cannot start the PyTorch benchmark")?;
        if !output.status.success() {
            bail!(
                "scripts/bench_pytorch.py failed ({}):\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        ours_files.push(ours_json);
        pt_files.push(pt_json);
    }
    println!();
    let mut cmd = Command::new(&python);
    cmd.arg(&script)
        .arg("--compare-ours")
        .args(&ours_files)
        .arg("--compare-pytorch")
        .args(&pt_files);
    run(&mut cmd)?;
    println!("reports: {}", out.display());
    Ok(())
}

/// `ddpm-cli bench --json …` for one repeat, writing the initial weights to `weights`.
fn ours_command(ctx: &Ctx, args: &BenchArgs, cli: &Path, weights: &Path) -> Command {
    let mut cmd = Command::new(cli);
    venv::apply_env(&mut cmd, &ctx.venv());
    cmd.args([
        "bench",
        "--json",
        "--preset",
        &args.preset,
        "--device",
        &args.device,
    ])
    .args([
        "--threads",
        &args.threads.to_string(),
        "--steps",
        &args.steps.to_string(),
    ])
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
fn pytorch_command(args: &BenchArgs, python: &Path, script: &Path, files: [&Path; 3]) -> Command {
    let [weights, ours_json, pt_json] = files;
    let mut cmd = Command::new(python);
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
