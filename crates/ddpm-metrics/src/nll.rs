//! Negative log-likelihood in bits/dim: the full variational bound of a DDPM over all T steps
//! (Ho et al. 2020, eq. 5; improved-diffusion's `calc_bpd_loop`) with its parts, and the VAE's
//! negative ELBO on the same discretisation (256 bins of width 2/255 on x = p/127.5 − 1).
//!
//! `total = L_T + Σ_{t≥1} L_t + L_0`, each term a mean over the image's dimensions in bits, one
//! sample of `x_t ~ q(x_t | x_0)` per image and step. The formulas are those of
//! [`ddpm_train::tables::DeviceTables`] (`vb_terms_bpd`, `prior_bpd`, `q_sample`); this module only
//! tiles a batch of images over many timesteps so that one network call evaluates
//! `images × timesteps` terms.
//!
//! Padding: a model trained on MNIST padded to 32×32 (background −1) is evaluated on padded
//! images, but bits are divided by the number of *real* dimensions (28·28·C): the sum over all
//! 32×32 pixel terms bounds −log₂ p(x, pad = −1) ≥ −log₂ p(x), so the number stays an upper bound
//! on the real pixels' NLL and is not diluted by the near-free padding pixels.
use std::path::Path;

use ddpm_math::GaussianDiffusion;
use ddpm_nets::vae::Vae;
use ddpm_train::baselines::{load_baseline_for_sampling, LatentGenerator};
use ddpm_train::config::ModelKind;
use ddpm_train::loader::to_model_input;
use ddpm_train::model_io::{load_ddpm, Weights};
use ddpm_train::run_dir::RunDir;
use ddpm_train::tables::DeviceTables;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::error::{MetricsError, Result};

/// How to evaluate the bound.
#[derive(Debug, Clone, PartialEq)]
pub struct NllOptions {
    /// Images per group; each group is tiled over timesteps.
    pub batch_size: usize,
    /// Largest network batch (images × timesteps per call).
    pub forward_batch: usize,
    /// Clamp x̂_0 to [−1, 1] in `p_θ` (improved-diffusion's `clip_denoised`, on by default).
    pub clip_denoised: bool,
    /// Pad 28×28 images to 32×32 for a model trained with `data.pad_to_32`.
    pub pad_to_32: bool,
    /// Seed of the noise of `x_t` (and of the VAE's latent sample).
    pub seed: u64,
    /// Draw a progress bar on stderr.
    pub progress: bool,
}

impl Default for NllOptions {
    fn default() -> Self {
        Self {
            batch_size: 16,
            forward_batch: 512,
            clip_denoised: true,
            pad_to_32: false,
            seed: 0,
            progress: false,
        }
    }
}

/// Bits/dim of a set of images, averaged over the images.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NllReport {
    /// `"ddpm"` (variational bound) or `"vae"` (negative ELBO).
    pub model: String,
    /// The bound: `prior + vb_sum + decoder`.
    pub total: f64,
    /// DDPM: `L_T = KL(q(x_T | x_0) ‖ N(0, I))`; VAE: `KL(q(z | x) ‖ N(0, I))`.
    pub prior: f64,
    /// DDPM: `Σ_{t≥1} L_t`; VAE: none.
    pub vb_sum: Option<f64>,
    /// DDPM: `L_0 = −log p_θ(x_0 | x_1)`; VAE: `−log p(x | z)`.
    pub decoder: f64,
    /// Images evaluated.
    pub n: usize,
    /// DDPM: the mean `L_t` of each step t = 0 … T−1 (`L_0` first); empty for the VAE.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub per_timestep: Vec<f64>,
}

/// The terms `L_t` in bits/dim for every image of `x_start` (`[B, C, H, W]`) and every step,
/// `[B, T]` (`L_0` in column 0), from `model(x_t, t_network) → output`. `noise(shape)` gives the ε
/// of `x_t = q_sample(x_start, t, ε)` for one call: shape `[K·B, C, H, W]`, row `k·B + b` for
/// image b at the call's k-th timestep; at most `t_chunk` timesteps go into one call.
pub fn per_timestep_bpd<F, N>(
    mut model: F,
    tables: &DeviceTables,
    x_start: &Tensor,
    mut noise: N,
    t_chunk: usize,
    clip_denoised: bool,
) -> Tensor
where
    F: FnMut(&Tensor, &Tensor) -> Tensor,
    N: FnMut(&[i64]) -> Tensor,
{
    let b = x_start.size()[0];
    let device = x_start.device();
    let steps = tables.num_timesteps() as i64;
    let chunk = t_chunk.max(1) as i64;
    let mut columns = Vec::new();
    tch::no_grad(|| {
        let mut start = 0;
        while start < steps {
            let k = chunk.min(steps - start);
            // t-major tiling: row k·B + b is image b at timestep start + k.
            let t = Tensor::arange_start(start, start + k, (Kind::Int64, device))
                .repeat_interleave_self_int(b, 0, None);
            let mut shape = x_start.size();
            shape[0] *= k;
            let x0 = x_start.repeat([k, 1, 1, 1]);
            let eps = noise(&shape).to_device(device).to_kind(x_start.kind());
            let x_t = tables.q_sample(&x0, &t, &eps);
            let t_model = tables.timestep_map.index_select(0, &t);
            let out = model(&x_t, &t_model);
            let terms = tables.vb_terms_bpd(&out, &x0, &x_t, &t, clip_denoised);
            columns.push(terms.view([k, b]).transpose(0, 1));
            start += k;
        }
    });
    Tensor::cat(&columns, 1)
}

/// The full variational bound of a DDPM on `images` (uint8 `[N, C, H, W]`, any device) in bits
/// per real dimension, with its parts. `model(x_t, t) → output` is the network in eval mode on
/// `device` (it sees the original timestep indices of the unrespaced chain).
pub fn ddpm_bits_per_dim<F>(
    mut model: F,
    diffusion: &GaussianDiffusion,
    images: &Tensor,
    device: Device,
    opts: &NllOptions,
) -> Result<NllReport>
where
    F: FnMut(&Tensor, &Tensor) -> Tensor,
{
    let n = check_images(images, opts)?;
    let tables = DeviceTables::full(diffusion, device);
    let steps = tables.num_timesteps();
    let batch = opts.batch_size.max(1);
    let t_chunk = (opts.forward_batch / batch).max(1);
    let bar = progress(opts.progress, n as u64, "bits/dim");
    let mut per_t = vec![0.0f64; steps];
    let mut prior = 0.0;
    tch::manual_seed(opts.seed as i64);
    let mut start = 0;
    while start < n {
        let k = batch.min(n - start);
        let x_u8 = images.narrow(0, start as i64, k as i64);
        let (x0, scale) = model_input(&x_u8, opts.pad_to_32, device);
        let terms = per_timestep_bpd(
            &mut model,
            &tables,
            &x0,
            |shape| Tensor::randn(shape, (Kind::Float, device)),
            t_chunk,
            opts.clip_denoised,
        );
        let sums = to_f64_vec(&(terms.sum_dim_intlist(0, false, Kind::Double) * scale))?;
        for (acc, v) in per_t.iter_mut().zip(sums) {
            *acc += v;
        }
        prior +=
            to_f64_vec(&(tch::no_grad(|| tables.prior_bpd(&x0)).sum(Kind::Double) * scale))?[0];
        start += k;
        bar.inc(k as u64);
    }
    bar.finish_and_clear();
    let per_t: Vec<f64> = per_t.into_iter().map(|s| s / n as f64).collect();
    let prior = prior / n as f64;
    let decoder = per_t[0];
    let vb_sum: f64 = per_t[1..].iter().sum();
    let report = NllReport {
        model: "ddpm".into(),
        total: prior + vb_sum + decoder,
        prior,
        vb_sum: Some(vb_sum),
        decoder,
        n,
        per_timestep: per_t,
    };
    check_finite(&report)?;
    tracing::info!(
        bpd = report.total,
        prior,
        vb_sum,
        decoder,
        n,
        "DDPM variational bound"
    );
    Ok(report)
}

/// The VAE's negative ELBO on `images` (uint8 `[N, C, H, W]`) in bits per real dimension (one
/// latent sample per image): `total = KL + reconstruction`.
pub fn vae_bits_per_dim(
    vae: &Vae,
    images: &Tensor,
    device: Device,
    opts: &NllOptions,
) -> Result<NllReport> {
    let n = check_images(images, opts)?;
    let batch = opts.forward_batch.max(1);
    tch::manual_seed(opts.seed as i64);
    let (mut kl, mut rec) = (0.0, 0.0);
    let mut start = 0;
    while start < n {
        let k = batch.min(n - start);
        let (x, scale) = model_input(
            &images.narrow(0, start as i64, k as i64),
            opts.pad_to_32,
            device,
        );
        let elbo = tch::no_grad(|| vae.elbo_bits_per_dim(&x, false));
        kl += to_f64_vec(&(elbo.kl.sum(Kind::Double) * scale))?[0];
        rec += to_f64_vec(&(elbo.reconstruction.sum(Kind::Double) * scale))?[0];
        start += k;
    }
    let (prior, decoder) = (kl / n as f64, rec / n as f64);
    let report = NllReport {
        model: "vae".into(),
        total: prior + decoder,
        prior,
        vb_sum: None,
        decoder,
        n,
        per_timestep: Vec::new(),
    };
    check_finite(&report)?;
    tracing::info!(
        bpd = report.total,
        kl = prior,
        reconstruction = decoder,
        n,
        "VAE negative ELBO"
    );
    Ok(report)
}

/// Bits/dim of a DDPM run directory or diffusers folder (EMA weights; variational bound) or of a
/// VAE run directory (negative ELBO) on `images` (uint8 `[N, H, W, C]`). A GAN defines no
/// likelihood and is an error. A model that works at 32×32 on 28×28 images is evaluated padded
/// (see the module documentation).
pub fn run_bits_per_dim(
    dir: &Path,
    images: &Tensor,
    device: Device,
    opts: &NllOptions,
) -> Result<NllReport> {
    let nchw = images.permute([0, 3, 1, 2]).contiguous();
    let (h, w) = (nchw.size()[2], nchw.size()[3]);
    let kind = if dir.join("config.toml").is_file() {
        RunDir::open(dir)?.config()?.model.kind()
    } else {
        ModelKind::Ddpm
    };
    match kind {
        ModelKind::Ddpm => {
            let m = load_ddpm(dir, Weights::Ema, device)?;
            let pad_to_32 = padding(m.hw, (h, w), dir)?;
            let unet = &m.unet;
            ddpm_bits_per_dim(
                |x, t| unet.forward_t(x, t, None, false),
                &m.diffusion,
                &nchw,
                device,
                &NllOptions {
                    pad_to_32,
                    ..opts.clone()
                },
            )
        }
        ModelKind::Vae => {
            let m = load_baseline_for_sampling(dir, device)?;
            let LatentGenerator::Vae(vae) = &m.net else {
                unreachable!("a VAE run loads a VAE")
            };
            let s = vae.config().image_size;
            let pad_to_32 = padding((s, s), (h, w), dir)?;
            vae_bits_per_dim(
                vae,
                &nchw,
                device,
                &NllOptions {
                    pad_to_32,
                    ..opts.clone()
                },
            )
        }
        ModelKind::Gan => Err(MetricsError::InvalidValue(format!(
            "{}: a GAN defines no likelihood; bits/dim needs a DDPM or VAE run",
            dir.display()
        ))),
    }
}

/// Whether images of size `data` must be padded for a model working at `model` size.
fn padding(model: (i64, i64), data: (i64, i64), dir: &Path) -> Result<bool> {
    if model == data {
        Ok(false)
    } else if model == (32, 32) && data.0 <= 32 && data.1 <= 32 {
        Ok(true)
    } else {
        Err(MetricsError::Shape(format!(
            "{}: the model works on {}×{} images but the data are {}×{}",
            dir.display(),
            model.0,
            model.1,
            data.0,
            data.1
        )))
    }
}

/// The model input and the factor (all dims / real dims) that turns bits per model dimension into
/// bits per real dimension.
fn model_input(x_u8: &Tensor, pad_to_32: bool, device: Device) -> (Tensor, f64) {
    let x = to_model_input(x_u8, pad_to_32, device);
    let real = x_u8.size()[1..].iter().product::<i64>() as f64;
    let all = x.size()[1..].iter().product::<i64>() as f64;
    (x, all / real)
}

fn check_images(images: &Tensor, opts: &NllOptions) -> Result<usize> {
    if images.dim() != 4 || images.kind() != Kind::Uint8 {
        return Err(MetricsError::BadImages(format!(
            "bits/dim needs uint8 images [N, C, H, W], got {:?} {:?}",
            images.kind(),
            images.size()
        )));
    }
    if opts.batch_size == 0 || opts.forward_batch == 0 {
        return Err(MetricsError::Shape("batch sizes must be at least 1".into()));
    }
    let n = images.size()[0] as usize;
    if n == 0 {
        return Err(MetricsError::BadImages("no images to evaluate".into()));
    }
    Ok(n)
}

fn check_finite(r: &NllReport) -> Result<()> {
    if [r.total, r.prior, r.decoder].iter().all(|v| v.is_finite()) {
        Ok(())
    } else {
        Err(MetricsError::InvalidValue(format!(
            "non-finite bits/dim (total {}, prior {}, decoder {})",
            r.total, r.prior, r.decoder
        )))
    }
}

fn to_f64_vec(t: &Tensor) -> Result<Vec<f64>> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).to_device(Device::Cpu).reshape([-1]))
        .map_err(|e| MetricsError::torch("reading bits/dim", e))
}

fn progress(show: bool, total: u64, what: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} images, {per_sec}, eta {eta}")
            .expect("valid template"),
    );
    bar.set_message(what.to_string());
    bar
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_relative_eq;
    use ddpm_math::losses::{discretized_gaussian_log_likelihood, normal_kl};
    use ddpm_math::{user_betas, LossType, ModelMeanType, ModelVarType};
    use ndarray::{Array, ArrayD, IxDyn};
    use std::f64::consts::LN_2;

    const SHAPE: [usize; 4] = [3, 1, 2, 2];
    const PIXELS: [u8; 12] = [0, 1, 17, 127, 128, 200, 254, 255, 64, 3, 250, 99];

    fn x0_f64() -> ArrayD<f64> {
        Array::from_shape_vec(
            IxDyn(&SHAPE),
            PIXELS.iter().map(|&p| f64::from(p) / 127.5 - 1.0).collect(),
        )
        .unwrap()
    }

    fn tensor(a: &ArrayD<f64>) -> Tensor {
        let shape: Vec<i64> = a.shape().iter().map(|&d| d as i64).collect();
        Tensor::from_slice(a.as_slice().unwrap()).view(shape.as_slice())
    }

    fn images_u8() -> Tensor {
        Tensor::from_slice(&PIXELS).view([3, 1, 2, 2])
    }

    fn tiny(mean: ModelMeanType, var: ModelVarType) -> GaussianDiffusion {
        GaussianDiffusion::new(
            user_betas(vec![0.1, 0.3, 0.6]).unwrap(),
            mean,
            var,
            LossType::Simple,
        )
        .unwrap()
    }

    /// T = 3, x_0-prediction by an oracle (the model returns the true x_0), fixed-large variance:
    /// every term is independent of the noise, so the bound is computed here by hand in f64.
    #[test]
    fn oracle_bound_matches_a_hand_computation() {
        let d = tiny(ModelMeanType::StartX, ModelVarType::FixedLarge);
        let x0 = images_u8().to_kind(Kind::Float) / 127.5 - 1.0;
        let oracle = |x_t: &Tensor, _t: &Tensor| {
            let reps = x_t.size()[0] / 3;
            x0.repeat([reps, 1, 1, 1])
        };
        let opts = NllOptions {
            batch_size: 3,
            forward_batch: 9,
            clip_denoised: false,
            ..NllOptions::default()
        };
        let r = ddpm_bits_per_dim(oracle, &d, &images_u8(), Device::Cpu, &opts).unwrap();

        // By hand: β = (0.1, 0.3, 0.6), ᾱ = (0.9, 0.63, 0.252).
        let betas = [0.1, 0.3, 0.6];
        let abar = [0.9, 0.9 * 0.7, 0.9 * 0.7 * 0.4];
        let abar_prev = [1.0, abar[0], abar[1]];
        let post_var: Vec<f64> = (0..3)
            .map(|t| betas[t] * (1.0 - abar_prev[t]) / (1.0 - abar[t]))
            .collect();
        // Fixed-large: variance (post_var[1], β_1, β_2); the oracle's mean equals the posterior mean.
        let large = [post_var[1], betas[1], betas[2]];
        let kl = |t: usize| normal_kl(0.0, post_var[t].ln(), 0.0, large[t].ln()) / LN_2;
        let vb_sum = kl(1) + kl(2);
        // Prior: mean over dims of KL(N(√ᾱ_2 x, 1 − ᾱ_2) ‖ N(0, 1)), averaged over the images.
        let xs: Vec<f64> = PIXELS.iter().map(|&p| f64::from(p) / 127.5 - 1.0).collect();
        let prior = xs
            .iter()
            .map(|&x| normal_kl(abar[2].sqrt() * x, (1.0 - abar[2]).ln(), 0.0, 0.0))
            .sum::<f64>()
            / xs.len() as f64
            / LN_2;
        // Decoder at t = 0: mean x_0 (posterior coefficients 1 and 0), log σ = ½ log post_var[1].
        let decoder = -xs
            .iter()
            .map(|&x| discretized_gaussian_log_likelihood(x, x, 0.5 * large[0].ln()))
            .sum::<f64>()
            / xs.len() as f64
            / LN_2;
        assert_eq!(r.n, 3);
        assert_relative_eq!(r.prior, prior, max_relative = 1e-5);
        assert_relative_eq!(r.vb_sum.unwrap(), vb_sum, max_relative = 1e-5);
        assert_relative_eq!(r.decoder, decoder, max_relative = 1e-5);
        assert_relative_eq!(r.total, prior + vb_sum + decoder, max_relative = 1e-5);
        assert_eq!(r.per_timestep.len(), 3);
    }

    /// A model whose output depends on x_t and t: every per-step term equals ddpm-math's
    /// `vb_terms_bpd` on the same x_t (f64 tables), the t = 0 column is the decoder NLL of
    /// `discretized_gaussian_log_likelihood`, and the bound is Σ_t L_t + prior_bpd.
    #[test]
    fn every_term_matches_ddpm_math() {
        let steps = 5;
        let d = GaussianDiffusion::new(
            user_betas(vec![0.05, 0.1, 0.2, 0.3, 0.5]).unwrap(),
            ModelMeanType::Epsilon,
            ModelVarType::FixedSmall,
            LossType::Simple,
        )
        .unwrap();
        let tables = DeviceTables::with_kind(
            &d,
            &(0..steps).collect::<Vec<_>>(),
            Device::Cpu,
            Kind::Double,
        );
        let x0 = x0_f64();
        let model = |x_t: &Tensor, t: &Tensor| {
            (x_t * 0.4 + t.to_kind(Kind::Double).view([-1, 1, 1, 1]) * 0.07).tanh()
        };
        let mut noises = Vec::new();
        let mut noise = |shape: &[i64]| {
            let e = Tensor::randn(shape, (Kind::Double, Device::Cpu));
            noises.push(e.shallow_clone());
            e
        };
        // Two steps per call: three calls (2 + 2 + 1 timesteps).
        let terms = per_timestep_bpd(model, &tables, &tensor(&x0), &mut noise, 2, true);
        assert_eq!(terms.size(), [3, steps as i64]);
        let eps = Tensor::cat(&noises, 0);
        let eps: ArrayD<f64> = Array::from_shape_vec(
            IxDyn(&[steps * 3, 1, 2, 2]),
            Vec::<f64>::try_from(eps.reshape([-1])).unwrap(),
        )
        .unwrap();
        // The same tiling in f64 through ddpm-math.
        let ts: Vec<usize> = (0..steps).flat_map(|t| std::iter::repeat_n(t, 3)).collect();
        let x0_tiled = ndarray::concatenate(ndarray::Axis(0), &vec![x0.view(); steps]).unwrap();
        let x_t = d.q_sample(&x0_tiled, &ts, &eps).unwrap();
        let out_t = model(
            &tensor(&x_t),
            &Tensor::from_slice(&ts.iter().map(|&t| t as i64).collect::<Vec<_>>()),
        );
        let out: ArrayD<f64> = Array::from_shape_vec(
            IxDyn(x_t.shape()),
            Vec::<f64>::try_from(out_t.reshape([-1])).unwrap(),
        )
        .unwrap();
        let want = d
            .vb_terms_bpd(&out, &x0_tiled, &x_t, &ts, true)
            .unwrap()
            .output;
        let got = Vec::<f64>::try_from(terms.transpose(0, 1).contiguous().reshape([-1])).unwrap();
        for (g, w) in got.iter().zip(want.iter()) {
            assert_relative_eq!(*g, *w, max_relative = 1e-9, epsilon = 1e-12);
        }
        // The decoder column against discretized_gaussian_log_likelihood directly.
        let p = d.p_mean_variance(&out, &x_t, &ts, true).unwrap();
        for (b, got_b) in got.iter().take(3).enumerate() {
            let mut nll = 0.0;
            for j in 0..4 {
                let idx = [b, 0, j / 2, j % 2];
                nll -= discretized_gaussian_log_likelihood(
                    x0[idx],
                    p.mean[idx],
                    0.5 * p.log_variance[idx],
                );
            }
            assert_relative_eq!(*got_b, nll / 4.0 / LN_2, max_relative = 1e-9);
        }
        // Full bound = Σ_t vb terms + prior.
        let prior = d.prior_bpd(&x0).unwrap();
        let bound_math: f64 = (want.sum() + prior.sum()) / 3.0;
        let bound_tensor = (terms.sum(Kind::Double).double_value(&[])
            + tables
                .prior_bpd(&tensor(&x0))
                .sum(Kind::Double)
                .double_value(&[]))
            / 3.0;
        assert_relative_eq!(bound_tensor, bound_math, max_relative = 1e-9);
    }

    /// The f32 driver and the f64 pieces agree: same noise seed → same bound.
    #[test]
    fn driver_sums_the_per_step_terms() {
        let d = tiny(ModelMeanType::Epsilon, ModelVarType::FixedLarge);
        let model = |x_t: &Tensor, _t: &Tensor| x_t * 0.5;
        let opts = NllOptions {
            batch_size: 2,
            forward_batch: 4,
            ..NllOptions::default()
        };
        let r = ddpm_bits_per_dim(model, &d, &images_u8(), Device::Cpu, &opts).unwrap();
        let sum: f64 = r.per_timestep.iter().sum();
        assert_relative_eq!(r.total, r.prior + sum, max_relative = 1e-12);
        assert_relative_eq!(r.decoder, r.per_timestep[0], max_relative = 1e-12);
        let again = ddpm_bits_per_dim(model, &d, &images_u8(), Device::Cpu, &opts).unwrap();
        assert_eq!(r, again, "seeded noise makes the estimate reproducible");
    }

    /// Padding to 32×32 rescales to bits per real dimension: an all-background image padded with
    /// background has the same total bits, spread over 784 instead of 1024 dimensions.
    #[test]
    fn padding_divides_by_the_real_dimensions() {
        let x = Tensor::zeros([1, 1, 28, 28], (Kind::Uint8, Device::Cpu));
        let (padded, scale) = model_input(&x, true, Device::Cpu);
        assert_eq!(padded.size(), [1, 1, 32, 32]);
        assert_relative_eq!(scale, 1024.0 / 784.0);
        assert!(padding((32, 32), (28, 28), Path::new("r")).unwrap());
        assert!(!padding((28, 28), (28, 28), Path::new("r")).unwrap());
        assert!(padding((28, 28), (32, 32), Path::new("r")).is_err());
    }
}
