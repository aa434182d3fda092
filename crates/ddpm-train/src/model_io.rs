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
