//! The training tasks that [`crate::engine`] drives: the DDPM ([`ddpm`]), the lecture's baselines
//! ([`gan`], [`vae`]) and the digit classifier of the domain metrics ([`classifier`]), and
//! [`train`], which trains the model of a [`TrainConfig`] through the one loop.
use std::path::Path;

use tch::Device;

use crate::baselines::{NetworkConfigs, NETWORKS_FILE};
use crate::config::{ModelKind, TrainConfig};
use crate::engine::{self, LoopSettings, RunTarget, TrainOptions, TrainSummary, TrainTask};
use crate::error::{Result, TrainError};
use crate::loader::{self, ImageData};

pub mod classifier;
pub mod ddpm;
pub mod gan;
pub mod vae;

/// Selects the device and CPU threads of a run.
pub fn setup_device(cfg: &TrainConfig) -> Result<Device> {
    if cfg.run.cpu_threads > 0 {
        tch::set_num_threads(cfg.run.cpu_threads as i32);
    }
    Ok(cfg.run.device.resolve()?)
}

/// Whether the network runs under bf16 autocast on `device`: `run.bf16` on CUDA, `run.cpu_bf16` on
/// the CPU.
pub fn uses_bf16(cfg: &TrainConfig, device: Device) -> bool {
    if device.is_cuda() {
        cfg.run.bf16
    } else {
        cfg.run.cpu_bf16
    }
}

/// The loop settings of a [`TrainConfig`].
pub fn loop_settings(cfg: &TrainConfig) -> LoopSettings {
    LoopSettings {
        steps: cfg.run.steps,
        seed: cfg.run.seed,
        batch_size: cfg.data.batch_size,
        grad_accum: cfg.optim.grad_accum,
        data_limit: None,
        pad_to_32: cfg.data.pad_to_32,
        random_flip: cfg.data.random_flip,
        optim: cfg.optim.clone(),
        log_every: cfg.run.log_every,
        checkpoint_every: cfg.run.checkpoint_every,
        keep_checkpoints: cfg.run.keep_checkpoints,
        sample_every: cfg.run.sample_every,
        sample_num: cfg.run.sample_num,
        eval_every: cfg.run.eval_every,
        eval_samples: cfg.run.eval_samples,
        time_limit_secs: (cfg.run.time_limit_minutes > 0.0)
            .then_some(cfg.run.time_limit_minutes * 60.0),
        eval_setting: format!(
            "{} samples with {}, {} reference images of {}:{}, network {}",
            cfg.run.eval_samples,
            cfg.run.eval_sampler.as_str(),
            cfg.run.eval_reference_images,
            cfg.data.path.display(),
            cfg.data.split,
            cfg.run
                .eval_network
                .as_ref()
                .map_or("(default)".into(), |p| p.display().to_string()),
        ),
        tensorboard: cfg.run.tensorboard,
    }
}

/// Trains the model of `cfg` (`model.kind`: DDPM, GAN or VAE) in a new run directory
/// (`resume = false`; `dir` must not hold a run) or continues the run in `dir` from its newest
/// checkpoint.
///
/// # Errors
/// Invalid config (naming the key), unreadable data (naming the file), run-directory and
/// checkpoint problems, a non-finite loss (naming the step).
pub fn train(
    dir: &Path,
    cfg: &TrainConfig,
    resume: bool,
    opts: &TrainOptions,
) -> Result<TrainSummary> {
    match cfg.model.kind() {
        ModelKind::Ddpm => train_ddpm(dir, cfg, resume, opts),
        ModelKind::Gan => train_gan(dir, cfg, resume, opts),
        ModelKind::Vae => train_vae(dir, cfg, resume, opts),
    }
}

/// Checks `cfg` for `kind`, sets up the device and loads the training images.
fn prepare(cfg: &TrainConfig, kind: ModelKind) -> Result<(Device, ImageData)> {
    cfg.validate()?;
    if cfg.model.kind() != kind {
        return Err(TrainError::config(
            "model.kind",
            format!("is {:?}; this trains {kind:?}", cfg.model.kind()),
        ));
    }
    let device = setup_device(cfg)?;
    let data = loader::load_images(&cfg.data.path, &cfg.data.split)?;
    loader::check_data(&cfg.data, &data)?;
    Ok((device, data))
}

fn run<T: TrainTask>(
    task: &mut T,
    dir: &Path,
    cfg: &TrainConfig,
    resume: bool,
    files: Vec<(&'static str, String)>,
    data: &ImageData,
    opts: &TrainOptions,
) -> Result<TrainSummary> {
    let target = RunTarget {
        dir,
        resume,
        config_toml: cfg.to_toml(),
        files,
    };
    engine::train(task, target, &loop_settings(cfg), data, opts)
}

/// Trains a DDPM (`model.kind = "ddpm"`); see [`train`].
pub fn train_ddpm(
    dir: &Path,
    cfg: &TrainConfig,
    resume: bool,
    opts: &TrainOptions,
) -> Result<TrainSummary> {
    let (device, data) = prepare(cfg, ModelKind::Ddpm)?;
    ddpm::check_model_fits_data(cfg, &data)?;
    let mut task = ddpm::DdpmTask::new(cfg, device)?;
    run(&mut task, dir, cfg, resume, Vec::new(), &data, opts)
}

/// Trains the DCGAN baseline (`model.kind = "gan"`); see [`train`] and [`gan::GanTask`].
pub fn train_gan(
    dir: &Path,
    cfg: &TrainConfig,
    resume: bool,
    opts: &TrainOptions,
) -> Result<TrainSummary> {
    train_baseline(dir, cfg, resume, opts, ModelKind::Gan, gan::GanTask::new)
}

/// Trains the VAE baseline (`model.kind = "vae"`); see [`train`] and [`vae::VaeTask`].
pub fn train_vae(
    dir: &Path,
    cfg: &TrainConfig,
    resume: bool,
    opts: &TrainOptions,
) -> Result<TrainSummary> {
    train_baseline(dir, cfg, resume, opts, ModelKind::Vae, vae::VaeTask::new)
}

/// A baseline run: its networks follow from the config and the data's image shape (and must
/// match the run's `networks.json` when resuming), which the run directory records.
fn train_baseline<T: TrainTask>(
    dir: &Path,
    cfg: &TrainConfig,
    resume: bool,
    opts: &TrainOptions,
    kind: ModelKind,
    new_task: impl FnOnce(&TrainConfig, &NetworkConfigs, Device) -> Result<T>,
) -> Result<TrainSummary> {
    let (device, data) = prepare(cfg, kind)?;
    let nets = NetworkConfigs::for_run(dir, cfg, &data, resume)?;
    let mut task = new_task(cfg, &nets, device)?;
    let files = vec![(NETWORKS_FILE, nets.to_json())];
    run(&mut task, dir, cfg, resume, files, &data, opts)
}
