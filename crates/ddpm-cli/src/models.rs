//! The one place where ddpm-cli trains models and loads trained ones through ddpm-train
//! (`ddpm_train::train`, `model_io::load_ddpm`, `baselines::load_baseline_for_sampling`,
//! `LatentGenerator`, run directories): one small function
//! per call, so that a change of that API is adapted here and nowhere else.
use std::path::Path;

use anyhow::{Context, Result};
use ddpm_nets::vae::Vae;
use ddpm_train::baselines::{self, LatentGenerator, LoadedBaseline};
use ddpm_train::config::{ModelKind, TrainConfig};
use ddpm_train::engine::{TrainOptions, TrainSummary};
use ddpm_train::model_io::{self, LoadedDdpm, Weights};
use ddpm_train::run_dir::{RunDir, TrainState};
use tch::{Device, Tensor};

/// The resolved `config.toml` of the run directory `dir`.
pub fn run_config(dir: &Path) -> Result<TrainConfig> {
    Ok(RunDir::open(dir)?.config()?)
}

/// The model kind of the run directory `dir`, or `None` when `dir` has no `config.toml` (a
/// diffusers folder, or nothing yet).
pub fn run_kind(dir: &Path) -> Result<Option<ModelKind>> {
    if !dir.join("config.toml").is_file() {
        return Ok(None);
    }
    Ok(Some(run_config(dir)?.model.kind()))
}

/// Whether `dir` is a run directory with at least one checkpoint.
pub fn has_checkpoint(dir: &Path) -> bool {
    dir.join("config.toml").is_file()
        && RunDir::open(dir)
            .and_then(|r| r.latest_checkpoint())
            .ok()
            .flatten()
            .is_some()
}

/// The state (`step`, `elapsed_secs`, …) of the newest checkpoint of the run directory `dir`.
pub fn latest_state(dir: &Path) -> Result<TrainState> {
    let ckpt = RunDir::open(dir)?
        .latest_checkpoint()?
        .with_context(|| format!("{}: has no checkpoint", dir.display()))?;
    Ok(RunDir::read_state(&ckpt)?)
}

/// The last line of `metrics.jsonl` of the run directory `dir`, when there is one.
pub fn last_metrics(dir: &Path) -> Result<Option<serde_json::Value>> {
    Ok(RunDir::open(dir)?.read_metrics()?.pop())
}

/// Trains `cfg.model.kind` (DDPM, GAN or VAE) into a new run directory `dir`, or continues the
/// run there (`resume`).
pub fn train(
    dir: &Path,
    cfg: &TrainConfig,
    resume: bool,
    opts: &TrainOptions,
) -> Result<TrainSummary> {
    Ok(ddpm_train::train(dir, cfg, resume, opts)?)
}

/// Loads a DDPM (newest checkpoint of a run directory, or a diffusers folder) onto `device`.
pub fn load_ddpm(dir: &Path, weights: Weights, device: Device) -> Result<LoadedDdpm> {
    Ok(model_io::load_ddpm(dir, weights, device)?)
}

/// Loads the generator (GAN) or the VAE of the newest checkpoint of a baseline run directory.
pub fn load_baseline(dir: &Path, device: Device) -> Result<LoadedBaseline> {
    Ok(baselines::load_baseline_for_sampling(dir, device)?)
}

/// The VAE of a loaded baseline; `None` for a GAN.
pub fn vae_of(model: &LoadedBaseline) -> Option<&Vae> {
    match &model.net {
        LatentGenerator::Vae(vae) => Some(vae),
        LatentGenerator::Gan(_) => None,
    }
}

/// `n` uint8 samples `[n, H, W, C]` (CPU) of a loaded baseline from z ~ N(0, I) seeded by
/// `seed`, `batch` at a time: G(z) for a GAN, the decoder means for a VAE.
pub fn sample_baseline(
    model: &LoadedBaseline,
    n: usize,
    batch: usize,
    seed: u64,
    device: Device,
) -> Tensor {
    model.net.sample_uint8(n, batch, seed, device)
}
