//! `ddpm-cli`: the ddpm-rs command line.
use anyhow::Result;
use clap::{Parser, Subcommand};

mod data;
mod forward;
mod info;
mod schedule;

/// Denoising diffusion probabilistic models on libtorch.
#[derive(Parser)]
#[command(name = "ddpm-cli", version, about, propagate_version = true)]
struct Cli {
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
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Info(args) => info::run(args),
        Command::Data(cmd) => data::run(cmd),
        Command::Schedule(args) => schedule::run(args),
        Command::Forward(args) => forward::run(args),
    }
}

/// Writes a PNG atomically (temporary file in the same folder, then rename), creating folders.
pub(crate) fn write_png(img: &image::GrayImage, path: &std::path::Path) -> Result<()> {
    use anyhow::Context;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = dir.join(format!(".{}.{}.tmp.png", path.file_name().and_then(|n| n.to_str()).unwrap_or("img"), std::process::id()));
    let res = img.save_with_format(&tmp, image::ImageFormat::Png).map_err(anyhow::Error::from).and_then(|_| std::fs::rename(&tmp, path).map_err(anyhow::Error::from));
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res.with_context(|| format!("cannot write {}", path.display()))
}
