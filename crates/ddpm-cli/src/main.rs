//! `ddpm-cli`: the ddpm-rs command line.
use anyhow::Result;
use clap::{Parser, Subcommand};

mod bench;
mod bits_per_dim;
mod check;
mod choices;
mod compare;
mod data;
mod eval;
mod exit;
mod export;
mod forward;
mod info;
mod models;
mod outputs;
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
    /// libtorch intra-op CPU threads, ≥ 1, for any command (default: libtorch's, or a training
    /// config's run.cpu_threads; on a machine busy with other jobs, 1 avoids spinning threads).
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
    /// Benchmark a preset: training images/s, sampling evaluations/s, chain images/s, peak memory (JSON).
    Bench(bench::BenchArgs),
}

fn main() -> std::process::ExitCode {
    exit::quiet_on_closed_pipe();
    exit::quiet_on_stdout_errors();
    // Before any tensor exists: keep freed CPU blocks for reuse (see ddpm_nets::host_memory).
    ddpm_nets::host_memory::retain_freed_memory();
    // Usage errors end here with clap's message and status 2.
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => exit::report(&e),
    }
}

fn run(cli: Cli) -> Result<()> {
    init_tracing(match &cli.command {
        Command::Train(args) => Some(args.run_dir()?),
        _ => None,
    })?;
    let threads = cli.threads.map(usize::from);
    if let Some(n) = threads {
        tch::set_num_threads(n as i32);
    }
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
        Command::Bench(args) => bench::run(args, threads),
    }
}

/// Logs to stderr (filter from `RUST_LOG`, default `info`) and, for a training run, also to
/// `RUN_DIR/train.log` once the run exists ([`run_log::RunLog`]: a command that fails before
/// creating its run leaves no folder behind).
/// Colours (ANSI escape codes) only go to a terminal: never into a file or a pipe.
fn init_tracing(run_dir: Option<std::path::PathBuf>) -> Result<()> {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{fmt, EnvFilter, Layer};
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
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
