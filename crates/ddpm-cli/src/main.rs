//! `ddpm-cli`: the ddpm-rs command line.
use anyhow::Result;
use clap::{Parser, Subcommand};

mod bench;
mod bits_per_dim;
mod check;
mod choices;
mod compare;
mod data;
mod dist_job;
mod eval;
mod exit;
mod export;
mod forward;
mod info;
mod launch;
mod models;
mod outputs;
mod reproduce;
mod run_log;
mod sample;
mod schedule;
mod signals;
mod train;
mod train_classifier;
mod train_eval;
mod visualize;
mod weights;

/// Denoising diffusion probabilistic models on libtorch.
#[derive(Parser)]
#[command(name = "ddpm-cli", version, about, propagate_version = true)]
struct Cli {
    /// libtorch intra-op CPU threads, ≥ 1, for any command (default: a training config's
    /// run.cpu_threads, else the CPUs this process may use: affinity mask and cgroup quota).
    #[arg(long, global = true, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Versions, the device libtorch would use, and which datasets and weights are present.
    Info(info::InfoArgs),
    /// Import, check and look at the HDF5 datasets.
    #[command(subcommand)]
    Data(data::DataCommand),
    /// Print or plot a noise schedule and its derived tables.
    Schedule(schedule::ScheduleArgs),
    /// Run a UNet on tensors from a safetensors file (checks conversions and parity).
    Forward(forward::ForwardArgs),
    /// Evaluate generated images against real ones (FID, IS).
    Eval(eval::EvalArgs),
    /// Train a DDPM (or --model gan|vae) into a run directory, or --resume one.
    Train(train::TrainArgs),
    /// Train the domain classifier of FID_cls / IS_cls and report its test accuracy.
    TrainClassifier(train_classifier::TrainClassifierArgs),
    /// Sample images from a run directory or a diffusers folder.
    Sample(sample::SampleArgs),
    /// Verify a run directory: every checkpoint against its manifest (sizes, sha256).
    Check(check::CheckArgs),
    /// Write a run's DDPM as a diffusers DDPMPipeline folder (model_index.json, unet/, scheduler/).
    Export(export::ExportArgs),
    /// Pictures of the diffusion process.
    #[command(subcommand)]
    Visualize(visualize::VisualizeCommand),
    /// DDPM (per sampler) vs GAN vs VAE: FID, FID_cls, IS_cls, bits/dim, times → report.md/png.
    Compare(compare::CompareArgs),
    /// The lecture's experiment end to end (DDPM vs GAN vs VAE on MNIST): train each model for a
    /// wall-clock budget, score every row with one protocol beside its real-vs-real floor, write
    /// results.json, results.md, results.png; a rerun continues where it stopped.
    Reproduce(reproduce::ReproduceArgs),
    /// Benchmark a preset: training images/s, sampling evaluations/s, chain images/s, peak memory (JSON).
    Bench(bench::BenchArgs),
}

fn main() -> std::process::ExitCode {
    exit::quiet_on_closed_pipe();
    exit::quiet_on_stdout_errors();
    // Before any tensor exists: keep freed CPU blocks for reuse (see ddpm_nets::host_memory).
    ddpm_nets::host_memory::retain_freed_memory();
    // Paths go into JSON reports, logs and HDF5 attributes as text: a non-UTF-8 argument is a usage
    // error before anything runs.
    if let Some((i, arg)) = std::env::args_os()
        .enumerate()
        .skip(1)
        .find(|(_, a)| a.to_str().is_none())
    {
        return exit::report(
            &exit::Usage(format!(
                "argument {i} ({}) is not valid UTF-8; ddpm-cli takes UTF-8 paths and values",
                arg.to_string_lossy()
            ))
            .into(),
        );
    }
    // Usage errors end here with clap's message and status 2.
    let cli = Cli::parse();
    if cli.command.runs_libtorch_kernels() {
        restart_with_cpu_policy();
    }
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => exit::report(&e),
    }
}

fn run(cli: Cli) -> Result<()> {
    // The ranks of a data-parallel run other than 0, and the launcher of `--nproc-per-node`,
    // write no train.log and print warnings and errors only (rank 0 reports the run).
    let rank = std::env::var("RANK")
        .ok()
        .filter(|_| std::env::var_os("WORLD_SIZE").is_some());
    let quiet_rank = rank.as_deref().is_some_and(|r| r != "0");
    init_tracing(
        match &cli.command {
            Command::Train(args) if args.nproc_per_node.is_none() && !quiet_rank => {
                Some(args.run_dir()?)
            }
            _ => None,
        },
        quiet_rank || cli.command.launches_ranks(),
    )?;
    let threads = cli.threads.map(usize::from);
    ddpm_nets::cpu_threads::set_threads(threads);
    match cli.command {
        Command::Info(args) => info::run(args),
        Command::Data(cmd) => data::run(cmd),
        Command::Schedule(args) => schedule::run(args),
        Command::Forward(args) => forward::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Train(args) => train::run(args, threads),
        Command::TrainClassifier(args) => train_classifier::run(args),
        Command::Sample(args) => sample::run(args),
        Command::Export(args) => export::run(args),
        Command::Check(args) => check::run(args),
        Command::Visualize(cmd) => visualize::run(cmd),
        Command::Compare(args) => compare::run(args),
        Command::Reproduce(args) => reproduce::run(args),
        Command::Bench(args) => bench::run(args, threads),
    }
}

impl Command {
    /// Whether the command only starts the ranks of a data-parallel job (`--nproc-per-node`).
    fn launches_ranks(&self) -> bool {
        match self {
            Command::Train(a) => a.nproc_per_node.is_some(),
            Command::TrainClassifier(a) => a.nproc_per_node.is_some(),
            _ => false,
        }
    }

    /// Whether the command runs libtorch's CPU kernels (and so needs the CPU policy of
    /// `ddpm_nets::cpu_threads` in force when libgomp starts).
    fn runs_libtorch_kernels(&self) -> bool {
        match self {
            Command::Data(_) | Command::Schedule(_) | Command::Check(_) => false,
            // info reports the policy the computing commands run with.
            Command::Info(_)
            | Command::Forward(_)
            | Command::Eval(_)
            | Command::Train(_)
            | Command::TrainClassifier(_)
            | Command::Sample(_)
            | Command::Export(_)
            | Command::Visualize(_)
            | Command::Compare(_)
            | Command::Reproduce(_)
            | Command::Bench(_) => true,
        }
    }
}

/// Restarts this process (`execve` of its own binary: same PID and arguments) with the environment
/// of `ddpm_nets::cpu_threads::restart_env` — OpenMP threads that sleep instead of spinning — when
/// the user has not chosen a wait policy. Returns when no restart is needed, or when it failed
/// (the command then runs with libgomp's default).
fn restart_with_cpu_policy() {
    use std::os::unix::process::CommandExt;
    let Some(vars) = ddpm_nets::cpu_threads::restart_env(|k| std::env::var(k).ok()) else {
        return;
    };
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    // Started through the dynamic loader (`ld-linux-x86-64.so.2 ddpm-cli …`): the process image is
    // the loader, and re-running it with our arguments would lose the program.
    if exe
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("ld-"))
    {
        eprintln!("warning: started through {}: not restarting with OMP_WAIT_POLICY=PASSIVE; libtorch's threads spin-wait", exe.display());
        return;
    }
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_default();
    let err = std::process::Command::new(&exe)
        .arg0(argv0)
        .args(args)
        .envs(vars)
        .exec();
    eprintln!(
        "warning: cannot restart {} with OMP_WAIT_POLICY=PASSIVE ({err}); libtorch's threads spin-wait",
        exe.display()
    );
}

/// Logs to stderr (filter from `RUST_LOG`, default `info`) and, for a training run, also to
/// `RUN_DIR/train.log` once the run exists ([`run_log::RunLog`]: a command that fails before
/// creating its run leaves no folder behind).
/// Colours (ANSI escape codes) only go to a terminal: never into a file or a pipe.
/// `quiet`: the default level is `warn` (ranks of a data-parallel run other than 0).
fn init_tracing(run_dir: Option<std::path::PathBuf>, quiet: bool) -> Result<()> {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{fmt, EnvFilter, Layer};
    let level = if quiet { "warn" } else { "info" };
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let stderr = fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .with_filter(filter());
    let file = run_dir.map(|dir| {
        fmt::layer()
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(run_log::RunLog::new(dir)))
            .with_filter(filter())
    });
    tracing_subscriber::registry()
        .with(stderr)
        .with(file)
        .init();
    Ok(())
}
