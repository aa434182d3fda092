//! `ddpm-cli compare`: DDPM (one row per sampler setting) vs GAN vs VAE on MNIST, written to
//! `report.md`, `report.json` and `report.png` (ddpm-metrics' `compare` module does the work).
use std::path::PathBuf;

use anyhow::{Context, Result};
use ddpm_metrics::compare::{render_markdown, run_compare, CompareConfig};

/// Compare DDPM, GAN and VAE runs: samples, FID (Inception, optional), FID_cls, IS_cls, bits/dim,
/// parameters, training and sampling time. Missing runs are trained first (train.missing).
#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// The comparison's TOML config (see scripts/compare.toml); without it, the built-in CPU
    /// defaults (runs/mnist-cpu, runs/mnist-cpu-gan, runs/mnist-cpu-vae → runs/compare).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the resolved config and exit.
    #[arg(long)]
    pub print_config: bool,
}

/// Runs `ddpm-cli compare`.
pub fn run(args: CompareArgs) -> Result<()> {
    let cfg = match &args.config {
        Some(p) => {
            CompareConfig::from_file(p).with_context(|| format!("--config {}", p.display()))?
        }
        None => CompareConfig::default(),
    };
    if args.print_config {
        print!("{}", cfg.to_toml());
        return Ok(());
    }
    let report = run_compare(&cfg).context("compare")?;
    print!("{}", render_markdown(&report));
    println!(
        "\nwrote {}/report.md, report.json, report.png",
        cfg.out_dir.display()
    );
    Ok(())
}
