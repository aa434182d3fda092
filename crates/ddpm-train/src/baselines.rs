//! The lecture's baselines, the DCGAN and the convolutional VAE of ddpm-nets: their network
//! configs and loading them from a run directory for sampling. They train through the one loop
//! ([`crate::tasks::gan`], [`crate::tasks::vae`]).
//!
//! Checkpoint tensor groups: GAN `generator`, `discriminator`, `optim_g`, `optim_d`; VAE `model`,
//! `optim`. The networks' own configs (derived from `[model]` and the data's image shape) are kept
//! in `RUN_DIR/networks.json`, so sampling needs no dataset.
use std::path::{Path, PathBuf};

use ddpm_nets::checkpoint::{load_varstore, read_json};
use ddpm_nets::gan::{DiscriminatorConfig, Generator, GeneratorConfig};
use ddpm_nets::vae::{Vae, VaeConfig};
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use crate::config::{ModelConfig, ModelKind, TrainConfig};
use crate::error::{Result, TrainError};
use crate::loader::ImageData;
use crate::run_dir::RunDir;

/// File of a baseline run directory that holds the networks' configs.
pub const NETWORKS_FILE: &str = "networks.json";

/// The network configs of a baseline run (`RUN_DIR/networks.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum NetworkConfigs {
    /// DCGAN generator and discriminator.
    Gan {
        /// The generator.
        generator: GeneratorConfig,
        /// The discriminator.
        discriminator: DiscriminatorConfig,
    },
    /// The VAE.
    Vae {
        /// The VAE.
        vae: VaeConfig,
    },
}

impl NetworkConfigs {
    /// The networks of `cfg` for images of `channels` × `size` × `size`.
    pub fn from_config(cfg: &TrainConfig, channels: i64, size: i64) -> Result<Self> {
        match &cfg.model {
            ModelConfig::Gan(m) => Ok(Self::Gan {
                generator: GeneratorConfig {
                    z_dim: m.latent_dim,
                    base_channels: m.base_channels,
                    out_channels: channels,
                    image_size: size,
                },
                discriminator: DiscriminatorConfig {
                    in_channels: channels,
                    base_channels: m.disc_channels,
                    image_size: size,
                    dropout: m.disc_dropout,
                    ..DiscriminatorConfig::default()
                },
            }),
            ModelConfig::Vae(m) => Ok(Self::Vae {
                vae: VaeConfig {
                    in_channels: channels,
                    image_size: size,
                    latent_dim: m.latent_dim,
                    base_channels: m.base_channels,
                    per_pixel_scale: m.per_pixel_scale,
                    min_log_scale: m.min_log_scale,
                },
            }),
            ModelConfig::Ddpm(_) => Err(TrainError::config(
                "model.kind",
                "is ddpm, not a baseline (gan or vae)",
            )),
        }
    }

    /// The networks of a run of `cfg` on `data` (square images, padded to 32×32 when
    /// `data.pad_to_32`). When resuming, they must equal those in the run's [`NETWORKS_FILE`].
    pub fn for_run(dir: &Path, cfg: &TrainConfig, data: &ImageData, resume: bool) -> Result<Self> {
        let (c, h, w) = data.chw();
        let (h, w) = if cfg.data.pad_to_32 {
            (h.max(32), w.max(32))
        } else {
            (h, w)
        };
        if h != w {
            return Err(TrainError::config(
                "data.path",
                format!("the baselines need square images, got {h}×{w}"),
            ));
        }
        let nets = Self::from_config(cfg, c, h)?;
        let path = dir.join(NETWORKS_FILE);
        if resume && path.is_file() {
            let old: Self = read_json(&path)?;
            if old != nets {
                return Err(TrainError::Checkpoint {
                    path,
                    message: "the networks of the run differ from those of this config and data"
                        .into(),
                });
            }
        }
        Ok(nets)
    }

    /// The pretty-printed JSON of [`NETWORKS_FILE`].
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("network configs serialise")
    }
}

/// A network that turns latents z ~ N(0, I) into images: the GAN's generator or the VAE's decoder.
#[derive(Debug)]
pub enum LatentGenerator {
    /// G(z).
    Gan(Generator),
    /// The decoder mean of z.
    Vae(Vae),
}

impl LatentGenerator {
    /// Size of z.
    pub fn latent_dim(&self) -> i64 {
        match self {
            Self::Gan(g) => g.config().z_dim,
            Self::Vae(v) => v.config().latent_dim,
        }
    }

    /// Images in [−1, 1] from latents, in eval mode, without gradients.
    ///
    /// # Shapes
    /// `z`: `[N, latent_dim]` → `[N, C, H, W]`.
    pub fn generate(&self, z: &Tensor) -> Tensor {
        match self {
            Self::Gan(g) => gan_images(g, z),
            Self::Vae(v) => vae_images(v, z),
        }
    }

    /// uint8 images `[n, H, W, C]` on the CPU from z ~ N(0, I) seeded by `seed`, `batch` at a time.
    pub fn sample_uint8(&self, n: usize, batch: usize, seed: u64, device: Device) -> Tensor {
        images_from_latents(self.latent_dim(), n, batch, seed, device, |z| {
            self.generate(z)
        })
    }
}

/// G(z) in eval mode without gradients: `[N, z_dim]` → `[N, C, H, W]` in [−1, 1].
pub fn gan_images(g: &Generator, z: &Tensor) -> Tensor {
    tch::no_grad(|| g.forward_t(z, false))
}

/// The VAE's decoder means of z, clamped to [−1, 1], without gradients.
pub fn vae_images(v: &Vae, z: &Tensor) -> Tensor {
    tch::no_grad(|| v.decode(z).0.clamp(-1.0, 1.0))
}

/// uint8 images `[n, H, W, C]` on the CPU from `generate(z)`, z ~ N(0, I) `[k, latent_dim]`
/// drawn `batch` at a time after seeding the torch generator with `seed`.
pub fn images_from_latents(
    latent_dim: i64,
    n: usize,
    batch: usize,
    seed: u64,
    device: Device,
    generate: impl Fn(&Tensor) -> Tensor,
) -> Tensor {
    tch::manual_seed(seed as i64);
    let mut chunks = Vec::new();
    let mut done = 0;
    while done < n {
        let k = (n - done).min(batch.max(1)) as i64;
        let z = Tensor::randn([k, latent_dim], (Kind::Float, device));
        chunks.push(crate::sampler::to_uint8_nhwc(&generate(&z)).to_device(Device::Cpu));
        done += k as usize;
    }
    Tensor::cat(&chunks, 0)
}

/// A baseline loaded from a run directory for sampling.
pub struct LoadedBaseline {
    /// Its variables (keep alive with the network).
    pub vs: nn::VarStore,
    /// The generator or decoder.
    pub net: LatentGenerator,
    /// `gan` or `vae`.
    pub kind: ModelKind,
    /// The weights file.
    pub source: PathBuf,
    /// Training steps of the checkpoint.
    pub step: usize,
}

/// Loads the generator (GAN) or the VAE of the newest checkpoint of a baseline run directory.
pub fn load_baseline_for_sampling(run_dir: &Path, device: Device) -> Result<LoadedBaseline> {
    let run = RunDir::open(run_dir)?;
    let cfg = run.config()?;
    let ckpt = run
        .latest_checkpoint()?
        .ok_or_else(|| TrainError::Checkpoint {
            path: run_dir.to_path_buf(),
            message: "has no checkpoint yet".into(),
        })?;
    let state = RunDir::read_state(&ckpt)?;
    let nets: NetworkConfigs = read_json(&run_dir.join(NETWORKS_FILE))?;
    let mut vs = nn::VarStore::new(device);
    let (net, source) = match (&nets, cfg.model.kind()) {
        (NetworkConfigs::Gan { generator, .. }, ModelKind::Gan) => {
            (LatentGenerator::Gan(Generator::new(vs.root(), generator)?), ckpt.join("generator.safetensors"))
        }
        (NetworkConfigs::Vae { vae }, ModelKind::Vae) => {
            (LatentGenerator::Vae(Vae::new(vs.root(), vae)?), ckpt.join("model.safetensors"))
        }
        (_, kind) => {
            return Err(TrainError::Checkpoint {
                path: run_dir.to_path_buf(),
                message: format!("config.toml says model.kind {kind:?} but {NETWORKS_FILE} disagrees or it is no baseline"),
            })
        }
    };
    load_varstore(&mut vs, &source)?;
    vs.freeze();
    Ok(LoadedBaseline {
        vs,
        net,
        kind: cfg.model.kind(),
        source,
        step: state.step,
    })
}

/// `n` uint8 samples `[n, H, W, C]` (CPU) of a baseline run: GAN = G(z), VAE = decoder means of z,
/// z ~ N(0, I) seeded by `seed`.
pub fn sample_baseline(run_dir: &Path, n: usize, seed: u64, device: Device) -> Result<Tensor> {
    let model = load_baseline_for_sampling(run_dir, device)?;
    Ok(model.net.sample_uint8(n, 256, seed, device))
}
