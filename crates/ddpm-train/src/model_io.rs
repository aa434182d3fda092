//! Loading a trained ε-network with its diffusion for sampling — from one of our run directories
//! (config.toml + the newest checkpoint) or from a diffusers folder (UNet `config.json` +
//! safetensors, and `scheduler_config.json` when present) — and writing sample files.
use std::path::{Path, PathBuf};

use ddpm_math::GaussianDiffusion;
use ddpm_nets::{diffusers, UNet2DModel};
use tch::{nn, Device, Tensor};

use crate::config::ModelKind;
use crate::error::{Result, TrainError};
use crate::h5images;
use crate::run_dir::RunDir;
use crate::sampler::SamplingSettings;

/// Which weights of a run to sample from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Weights {
    /// The EMA of the parameters (what DDPM reports).
    Ema,
    /// The raw parameters.
    Raw,
}

/// A loaded model ready to sample.
pub struct LoadedDdpm {
    /// Its variables (keep alive with the network).
    pub vs: nn::VarStore,
    /// The network.
    pub unet: UNet2DModel,
    /// The diffusion it was trained with.
    pub diffusion: GaussianDiffusion,
    /// Image size `(H, W)` to sample at.
    pub hw: (i64, i64),
    /// Where the weights came from.
    pub source: PathBuf,
    /// Training steps of the checkpoint (our runs only).
    pub step: Option<usize>,
    /// How it samples (x̂₀ processing; diffusers' timestep spacing for a diffusers folder).
    pub sampling: SamplingSettings,
}

/// Loads a run directory (its newest checkpoint), one checkpoint folder of a run (e.g.
/// `RUN/checkpoints/best`, with its own `config.toml` and `state.json`) or a diffusers folder.
pub fn load_ddpm(dir: &Path, weights: Weights, device: Device) -> Result<LoadedDdpm> {
    if dir.join("state.json").is_file() && dir.join("config.toml").is_file() {
        let cfg = crate::config::TrainConfig::from_file(&dir.join("config.toml"))?;
        load_checkpoint(dir, &cfg, weights, device)
    } else if dir.join("config.toml").is_file() {
        load_run(dir, weights, device)
    } else if dir.join("config.json").is_file() || dir.join("unet/config.json").is_file() {
        load_diffusers(dir, device)
    } else {
        let message = if dir.exists() {
            "neither a run directory (config.toml), a checkpoint folder (config.toml and \
             state.json) nor a diffusers folder (config.json, or unet/config.json)"
        } else {
            "no such run directory or diffusers folder"
        };
        Err(TrainError::Checkpoint {
            path: dir.to_path_buf(),
            message: message.into(),
        })
    }
}

fn load_run(dir: &Path, weights: Weights, device: Device) -> Result<LoadedDdpm> {
    let run = RunDir::open(dir)?;
    let cfg = run.config()?;
    if cfg.model.kind() != ModelKind::Ddpm {
        return Err(TrainError::Checkpoint {
            path: dir.to_path_buf(),
            message: format!("holds a {:?} run, not a DDPM", cfg.model.kind()),
        });
    }
    let ckpt = run
        .latest_checkpoint()?
        .ok_or_else(|| TrainError::Checkpoint {
            path: dir.to_path_buf(),
            message: "has no checkpoint yet".into(),
        })?;
    load_checkpoint(&ckpt, &cfg, weights, device)
}

/// Loads the checkpoint folder `ckpt` of a DDPM run with config `cfg`.
fn load_checkpoint(
    ckpt: &Path,
    cfg: &crate::config::TrainConfig,
    weights: Weights,
    device: Device,
) -> Result<LoadedDdpm> {
    if cfg.model.kind() != ModelKind::Ddpm {
        return Err(TrainError::Checkpoint {
            path: ckpt.to_path_buf(),
            message: format!("holds a {:?} checkpoint, not a DDPM", cfg.model.kind()),
        });
    }
    let state = RunDir::read_state(ckpt)?;
    let mut vs = nn::VarStore::new(device);
    let unet = UNet2DModel::new(vs.root(), cfg.unet()?)?;
    let file = ckpt.join(match weights {
        Weights::Ema => "ema.safetensors",
        Weights::Raw => "model.safetensors",
    });
    ddpm_nets::checkpoint::load_varstore(&mut vs, &file)?;
    Ok(LoadedDdpm {
        vs,
        unet,
        diffusion: cfg.diffusion.build()?,
        hw: crate::tasks::ddpm::sample_hw(cfg),
        source: file,
        step: Some(state.step),
        sampling: cfg.diffusion.sampling()?,
    })
}

fn load_diffusers(dir: &Path, device: Device) -> Result<LoadedDdpm> {
    let unet_dir = if dir.join("unet/config.json").is_file() {
        dir.join("unet")
    } else {
        dir.to_path_buf()
    };
    let (vs, unet) = diffusers::load_pretrained(&unet_dir, device)?;
    let candidates = [
        dir.join("scheduler/scheduler_config.json"),
        dir.join("scheduler_config.json"),
    ];
    // `symlink_metadata` also sees a dangling link, which `exists` calls absent.
    if let Some(p) = candidates
        .iter()
        .find(|p| p.symlink_metadata().is_ok() && !p.is_file())
    {
        return Err(TrainError::Checkpoint {
            path: p.clone(),
            message: "is not a readable file (a folder or a dangling link); a diffusers \
                      scheduler config is a JSON file"
                .into(),
        });
    }
    let found: Vec<&PathBuf> = candidates.iter().filter(|p| p.is_file()).collect();
    if found.len() == 2 {
        tracing::warn!(used = %found[0].display(), ignored = %found[1].display(), "two scheduler configs: the pipeline layout's is used");
    }
    let learned = unet.config().out_channels == 2 * unet.config().in_channels;
    let c = match found.first() {
        Some(p) => crate::scheduler_config::read(p, learned)?,
        None => {
            tracing::warn!(dir = %dir.display(), "no scheduler_config.json: using diffusers' DDPMScheduler defaults (linear betas 1e-4..0.02, T = 1000, fixed_small, epsilon, clip_sample, leading spacing)");
            crate::scheduler_config::defaults(learned)?
        }
    };
    let (diffusion, sampling) = (c.diffusion, c.sampling);
    let hw = match unet.config().sample_size {
        Some(ddpm_nets::unet::SampleSize::Square(s)) => (s, s),
        Some(ddpm_nets::unet::SampleSize::Rect([h, w])) => (h, w),
        None => (32, 32),
    };
    Ok(LoadedDdpm {
        vs,
        unet,
        diffusion,
        hw,
        source: unet_dir,
        step: None,
        sampling,
    })
}

/// Writes uint8 samples `[N, H, W, C]` (C = 1 or 3, any device) to the HDF5 file `path` as
/// dataset `images` (h5py-readable), with string attributes describing how they were made;
/// atomically, through [`h5images::write_images`]. Errors name the file.
pub fn write_samples(path: &Path, images_nhwc: &Tensor, attrs: &[(&str, String)]) -> Result<()> {
    if images_nhwc.dim() != 4 {
        return Err(TrainError::Checkpoint {
            path: path.to_path_buf(),
            message: format!("samples must be [N,H,W,C], got {:?}", images_nhwc.size()),
        });
    }
    let arr: ndarray::ArrayD<u8> = (&images_nhwc
        .to_device(Device::Cpu)
        .to_kind(tch::Kind::Uint8)
        .contiguous())
        .try_into()?;
    let arr = arr
        .into_dimensionality::<ndarray::Ix4>()
        .expect("checked to be 4-D");
    let attrs: Vec<(&str, &str)> = attrs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Ok(h5images::write_images(path, arr.view(), None, &attrs)?)
}

/// The files of an exported pipeline folder, relative to it.
pub const PIPELINE_FILES: [&str; 4] = [
    "model_index.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "scheduler/scheduler_config.json",
];

/// Writes the DDPM of the run directory `run` (its newest checkpoint, EMA or raw `weights`; or
/// the checkpoint folder `run`, e.g. `RUN/checkpoints/best`) as a
/// diffusers `DDPMPipeline` folder `out`: `model_index.json`, `unet/` (`config.json` with the
/// run's sampling size, `diffusion_pytorch_model.safetensors`) and
/// `scheduler/scheduler_config.json` ([`scheduler_config::to_json`](crate::scheduler_config::to_json):
/// the trained betas, prediction and variance types, x̂₀ settings). The folder is assembled beside
/// `out` and renamed into place only after it has been read back with [`load_ddpm`] and found
/// equal to the run (tables, types, settings, every weight), so a failure leaves no `out`.
/// Returns the checkpoint's step.
///
/// # Errors
/// `out` exists; `run` is not a DDPM run with a checkpoint; a variance type diffusers cannot
/// express (`learned`); a write failure or a read-back mismatch, naming the path.
pub fn export_diffusers(run: &Path, out: &Path, weights: Weights) -> Result<usize> {
    if out.symlink_metadata().is_ok() {
        return Err(TrainError::Checkpoint {
            path: out.to_path_buf(),
            message: "already exists; export writes a new folder".into(),
        });
    }
    let model = load_ddpm(run, weights, Device::Cpu)?;
    let Some(step) = model.step else {
        return Err(TrainError::Checkpoint {
            path: run.to_path_buf(),
            message: "is a diffusers folder already; export takes a run directory or one of its checkpoint folders"
                .into(),
        });
    };
    let mut meta = serde_json::Map::new();
    meta.insert("step".into(), step.into());
    meta.insert(
        "weights".into(),
        match weights {
            Weights::Ema => "ema",
            Weights::Raw => "raw",
        }
        .into(),
    );
    let scheduler = crate::scheduler_config::to_json(&model.diffusion, &model.sampling, meta)?;
    let mut unet_cfg = model.unet.config().clone();
    unet_cfg.sample_size = Some(if model.hw.0 == model.hw.1 {
        ddpm_nets::unet::SampleSize::Square(model.hw.0)
    } else {
        ddpm_nets::unet::SampleSize::Rect([model.hw.0, model.hw.1])
    });
    let name = out.file_name().ok_or_else(|| TrainError::Checkpoint {
        path: out.to_path_buf(),
        message: "has no folder name".into(),
    })?;
    let tmp = out.with_file_name(format!(
        ".{}.export-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = write_pipeline(&tmp, &unet_cfg, &model, &scheduler)
        .and_then(|()| check_export(&tmp, &model))
        .and_then(|()| std::fs::rename(&tmp, out).map_err(TrainError::io(out)));
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result.map(|()| step)
}

fn write_pipeline(
    dir: &Path,
    unet_cfg: &ddpm_nets::UNetConfig,
    model: &LoadedDdpm,
    scheduler: &serde_json::Value,
) -> Result<()> {
    let index = serde_json::json!({
        "_class_name": "DDPMPipeline",
        "_diffusers_version": diffusers::DIFFUSERS_VERSION,
        "scheduler": ["diffusers", "DDPMScheduler"],
        "unet": ["diffusers", "UNet2DModel"],
    });
    ddpm_nets::checkpoint::write_json(&dir.join(PIPELINE_FILES[0]), &index)?;
    diffusers::save_pretrained(&dir.join("unet"), unet_cfg, &model.vs)?;
    ddpm_nets::checkpoint::write_json(&dir.join(PIPELINE_FILES[3]), scheduler)?;
    Ok(())
}

/// Reads the folder `dir` back and checks that it is `model`: the diffusion's tables, its types,
/// the sampling settings, the image size and every weight, exactly.
fn check_export(dir: &Path, model: &LoadedDdpm) -> Result<()> {
    let back = load_ddpm(dir, Weights::Ema, Device::Cpu)?;
    let (a, b) = (&model.diffusion, &back.diffusion);
    let mismatch = |what: &str| TrainError::Checkpoint {
        path: dir.to_path_buf(),
        message: format!("reads back with a different {what} (an export bug; nothing was written)"),
    };
    if a.betas() != b.betas() || a.mean_type() != b.mean_type() || a.var_type() != b.var_type() {
        return Err(mismatch("diffusion"));
    }
    if model.sampling != back.sampling || model.hw != back.hw {
        return Err(mismatch("sampling setting or image size"));
    }
    let theirs = back.vs.variables();
    for (name, t) in model.vs.variables() {
        match theirs.get(&name) {
            Some(u) if u.size() == t.size() && u.equal(&t) => {}
            _ => return Err(mismatch(&format!("weight `{name}`"))),
        }
    }
    Ok(())
}
