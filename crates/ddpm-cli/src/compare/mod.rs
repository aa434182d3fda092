//! `ddpm-cli compare`: DDPM (one row per sampler setting) vs GAN vs VAE on MNIST, written to
//! `report.md`, `report.json` and `report.png`.
//!
//! Load (or train, when a run directory is missing) the three runs, draw the same number of
//! samples from each (the DDPM once per sampler setting), evaluate all of them against the same
//! reference images, and write the table, the same numbers as JSON, and the sample grids side by
//! side. Metrics per row: FID with the Inception network (optional: slow on a CPU), FID_cls and
//! IS_cls with the digit classifier, bits/dim where a likelihood is defined (the DDPM's
//! variational bound, the VAE's negative ELBO; on the first `nll_images` reference images),
//! parameters, training time (`elapsed_secs` of the run's last checkpoint) and sampling time per
//! image. The metric code is ddpm-metrics'; this module decides what to run and writes the report.
//!
//! Pieces: [`config`] (`compare.toml` and its defaults), [`run`] (the reference side, training
//! missing runs, the rows), [`sample`] (the DDPM's chains), [`report`] (rows and report files).
use std::path::PathBuf;

use anyhow::{Context, Result};

pub mod config;
pub mod report;
pub mod run;
pub mod sample;

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
        Some(p) => config::CompareConfig::from_file(p)
            .with_context(|| format!("--config {}", p.display()))?,
        None => config::CompareConfig::default(),
    };
    if args.print_config {
        print!("{}", cfg.to_toml());
        return Ok(());
    }
    let report = run::run_compare(&cfg).context("compare")?;
    print!("{}", report::render_markdown(&report));
    println!(
        "\nwrote {}/report.md, report.json, report.png",
        cfg.out_dir.display()
    );
    Ok(())
}
