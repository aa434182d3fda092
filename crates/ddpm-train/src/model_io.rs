//! Loading a trained ε-network with its diffusion for sampling — from one of our run directories
//! (config.toml + the newest checkpoint) or from a diffusers folder (UNet `config.json` +
//! safetensors, and `scheduler_config.json` when present) — and writing sample files.
use std::path::{Path, PathBuf};

use ddpm_math::{
    user_betas, BetaSchedule, GaussianDiffusion, LossType, ModelMeanType, ModelVarType,
};
use ddpm_nets::{diffusers, UNet2DModel};
use serde_json::Value;
use tch::{nn, Device, Tensor};

use crate::config::ModelKind;
use crate::error::{Result, TrainError};
use crate::h5images;
use crate::run_dir::RunDir;

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
}

/// Loads a run directory or a diffusers folder.
pub fn load_ddpm(dir: &Path, weights: Weights, device: Device) -> Result<LoadedDdpm> {
    if dir.join("config.toml").is_file() {
        load_run(dir, weights, device)
    } else if dir.join("config.json").is_file() || dir.join("unet/config.json").is_file() {
        load_diffusers(dir, device)
    } else {
        Err(TrainError::Checkpoint {
            path: dir.to_path_buf(),
            message: "neither a run directory (config.toml) nor a diffusers folder (config.json)"
                .into(),
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
    let state = RunDir::read_state(&ckpt)?;
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
        hw: crate::tasks::ddpm::sample_hw(&cfg),
        source: file,
        step: Some(state.step),
    })
}

fn load_diffusers(dir: &Path, device: Device) -> Result<LoadedDdpm> {
    let unet_dir = if dir.join("unet/config.json").is_file() {
        dir.join("unet")
    } else {
        dir.to_path_buf()
    };
    let (vs, unet) = diffusers::load_pretrained(&unet_dir, device)?;
    let sched_path = [
        dir.join("scheduler/scheduler_config.json"),
        dir.join("scheduler_config.json"),
    ]
    .into_iter()
    .find(|p| p.is_file());
    let diffusion = match &sched_path {
        Some(p) => diffusion_from_scheduler(
            p,
            unet.config().out_channels == 2 * unet.config().in_channels,
        )?,
        None => {
            tracing::warn!(dir = %dir.display(), "no scheduler_config.json: assuming DDPM's linear T=1000, fixed-large, epsilon");
            GaussianDiffusion::new(
                BetaSchedule::Linear.betas(1000)?,
                ModelMeanType::Epsilon,
                ModelVarType::FixedLarge,
                LossType::Simple,
            )?
        }
    };
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
    })
}

/// Builds the diffusion described by a diffusers `DDPMScheduler` config (errors name the key).
pub fn diffusion_from_scheduler(path: &Path, learned_variance: bool) -> Result<GaussianDiffusion> {
    let text = std::fs::read_to_string(path).map_err(TrainError::io(path))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| TrainError::Checkpoint {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let key = |k: &str| format!("{}: {k}", path.display());
    let t = v["num_train_timesteps"].as_u64().unwrap_or(1000) as usize;
    let start = v["beta_start"].as_f64().unwrap_or(1e-4);
    let end = v["beta_end"].as_f64().unwrap_or(0.02);
    let betas = match v["beta_schedule"].as_str().unwrap_or("linear") {
        "linear" => user_betas(
            (0..t)
                .map(|i| start + (end - start) * i as f64 / (t - 1).max(1) as f64)
                .collect(),
        )?,
        "scaled_linear" => user_betas(
            (0..t)
                .map(|i| {
                    (start.sqrt() + (end.sqrt() - start.sqrt()) * i as f64 / (t - 1).max(1) as f64)
                        .powi(2)
                })
                .collect(),
        )?,
        "squaredcos_cap_v2" => BetaSchedule::Cosine.betas(t)?,
        other => {
            return Err(TrainError::config(
                &key("beta_schedule"),
                format!("`{other}` is not supported (linear, scaled_linear, squaredcos_cap_v2)"),
            ))
        }
    };
    let mean = match v["prediction_type"].as_str().unwrap_or("epsilon") {
        "epsilon" => ModelMeanType::Epsilon,
        "sample" => ModelMeanType::StartX,
        "v_prediction" => ModelMeanType::V,
        other => {
            return Err(TrainError::config(
                &key("prediction_type"),
                format!("`{other}` is not supported"),
            ))
        }
    };
    let var = match (
        v["variance_type"].as_str().unwrap_or("fixed_small"),
        learned_variance,
    ) {
        ("fixed_small" | "fixed_small_log", false) => ModelVarType::FixedSmall,
        ("fixed_large" | "fixed_large_log", false) => ModelVarType::FixedLarge,
        ("learned", true) => ModelVarType::Learned,
        ("learned_range", true) => ModelVarType::LearnedRange,
        (other, l) => {
            return Err(TrainError::config(
                &key("variance_type"),
                format!(
                    "`{other}` does not fit a UNet with{} a variance output",
                    if l { "" } else { "out" }
                ),
            ))
        }
    };
    let loss = if var.is_learned() {
        LossType::Hybrid
    } else {
        LossType::Simple
    };
    Ok(GaussianDiffusion::new(betas, mean, var, loss)?)
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
