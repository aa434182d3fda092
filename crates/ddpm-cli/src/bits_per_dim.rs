//! Bits/dim of trained models: the model is loaded through [`crate::models`] and evaluated with
//! ddpm-metrics' bound functions (the DDPM's full variational bound, the VAE's negative ELBO).
use std::path::Path;

use anyhow::{bail, Result};
use ddpm_metrics::nll::{ddpm_bits_per_dim, needs_padding, vae_bits_per_dim};
use ddpm_metrics::{NllOptions, NllReport};
use ddpm_nets::vae::Vae;
use ddpm_train::config::ModelKind;
use ddpm_train::model_io::{LoadedDdpm, Weights};
use tch::{Device, Tensor};

use crate::models;

/// `(H, W)` of images `[N, C, H, W]`.
fn hw(images: &Tensor) -> (i64, i64) {
    let s = images.size();
    (s[2], s[3])
}

/// The variational bound of a loaded DDPM (from `dir`, named in errors) on `images` (uint8
/// `[N, C, H, W]`), padded to 32×32 when the model works at that size.
pub fn of_ddpm(
    model: &LoadedDdpm,
    dir: &Path,
    images: &Tensor,
    device: Device,
    opts: &NllOptions,
) -> Result<NllReport> {
    let pad_to_32 = needs_padding(model.hw, hw(images), dir)?;
    let unet = &model.unet;
    Ok(ddpm_bits_per_dim(
        |x, t| unet.forward_t(x, t, None, false),
        &model.diffusion,
        images,
        device,
        &NllOptions {
            pad_to_32,
            ..opts.clone()
        },
    )?)
}

/// The negative ELBO of a VAE (from `dir`, named in errors) on `images` (uint8 `[N, C, H, W]`),
/// padded to 32×32 when the model works at that size.
pub fn of_vae(
    vae: &Vae,
    dir: &Path,
    images: &Tensor,
    device: Device,
    opts: &NllOptions,
) -> Result<NllReport> {
    let s = vae.config().image_size;
    let pad_to_32 = needs_padding((s, s), hw(images), dir)?;
    Ok(vae_bits_per_dim(
        vae,
        images,
        device,
        &NllOptions {
            pad_to_32,
            ..opts.clone()
        },
    )?)
}

/// Bits/dim of a DDPM run directory or diffusers folder (EMA weights; variational bound) or of a
/// VAE run directory (negative ELBO) on `images` (uint8 `[N, C, H, W]`). A GAN defines no
/// likelihood and is an error naming the run.
pub fn of_run(dir: &Path, images: &Tensor, device: Device, opts: &NllOptions) -> Result<NllReport> {
    match models::run_kind(dir)?.unwrap_or(ModelKind::Ddpm) {
        ModelKind::Ddpm => {
            let model = models::load_ddpm(dir, Weights::Ema, device)?;
            of_ddpm(&model, dir, images, device, opts)
        }
        ModelKind::Vae => {
            let model = models::load_baseline(dir, device)?;
            let Some(vae) = models::vae_of(&model) else {
                bail!("{}: a VAE run that did not load a VAE", dir.display())
            };
            of_vae(vae, dir, images, device, opts)
        }
        ModelKind::Gan => bail!(
            "{}: a GAN defines no likelihood; bits/dim needs a DDPM or VAE run",
            dir.display()
        ),
    }
}
