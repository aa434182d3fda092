//! Convolutional VAE for small grey images, with the DDPM decoder's discretised Gaussian likelihood, so that its
//! negative ELBO in bits/dim compares with DDPM's NLL bound.
use std::f64::consts::LN_2;

use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module, Device, Kind, Tensor};

use crate::error::{Error, Result};

/// Half the width of a pixel bin on [-1, 1]: `1/255`.
const HALF_BIN: f64 = 1.0 / 255.0;
/// Floor of bin probabilities before the log.
const PROB_FLOOR: f64 = 1e-12;

/// `Φ̃(x) = ½(1 + tanh(√(2/π)(x + 0.044715 x³)))`, the approximate standard normal CDF of Ho et al. 2020 (as in
/// ddpm-math's `losses::approx_standard_normal_cdf`), elementwise.
pub fn approx_standard_normal_cdf(xs: &Tensor) -> Tensor {
    let k = (2.0 / std::f64::consts::PI).sqrt();
    ((xs + xs.pow_tensor_scalar(3) * 0.044715) * k).tanh() * 0.5 + 0.5
}

/// `log p(x | μ, σ)` of a Gaussian discretised to the 256 bins of width 2/255 on [-1, 1] with open edge bins
/// (Ho et al. 2020, eq. 13; the same function as ddpm-math's `discretized_gaussian_log_likelihood`), elementwise.
///
/// With `c = x − μ`, `inv = e^{−log σ}`, `cdf± = Φ̃(inv·(c ± 1/255))`: `log max(cdf⁺, 1e-12)` where `x < −0.999`,
/// `log max(1 − cdf⁻, 1e-12)` where `x > 0.999`, otherwise `log max(cdf⁺ − cdf⁻, 1e-12)`. In nats.
///
/// # Shapes
/// `xs`, `means`, `log_scales`: broadcastable → their broadcast shape.
pub fn discretized_gaussian_log_likelihood(
    xs: &Tensor,
    means: &Tensor,
    log_scales: &Tensor,
) -> Tensor {
    let centered = xs - means;
    let inv_stdv = (-log_scales).exp();
    let cdf_plus = approx_standard_normal_cdf(&(&inv_stdv * (&centered + HALF_BIN)));
    let cdf_min = approx_standard_normal_cdf(&(&inv_stdv * (&centered - HALF_BIN)));
    let log_cdf_plus = cdf_plus.clamp_min(PROB_FLOOR).log();
    let log_one_minus_cdf_min = (-&cdf_min + 1.0).clamp_min(PROB_FLOOR).log();
    let log_delta = (cdf_plus - cdf_min).clamp_min(PROB_FLOOR).log();
    let upper = log_one_minus_cdf_min.where_self(&xs.gt(0.999), &log_delta);
    log_cdf_plus.where_self(&xs.lt(-0.999), &upper)
}

/// `KL(N(μ, e^{lv}) ‖ N(0, 1)) = ½(μ² + e^{lv} − 1 − lv)` in nats, elementwise.
pub fn standard_normal_kl(mu: &Tensor, logvar: &Tensor) -> Tensor {
    (mu.square() + logvar.exp() - 1.0 - logvar) * 0.5
}

/// Hyper-parameters of [`Vae`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VaeConfig {
    /// Image channels.
    pub in_channels: i64,
    /// Image side (a multiple of 4).
    pub image_size: i64,
    /// Latent dimension.
    pub latent_dim: i64,
    /// Channels of the first encoder layer (×2 in the second).
    pub base_channels: i64,
    /// Per-pixel log σ from the decoder; otherwise one learned log σ per channel.
    pub per_pixel_scale: bool,
    /// Lower bound on the decoder's log σ (keeps the likelihood finite early in training).
    pub min_log_scale: f64,
}

impl Default for VaeConfig {
    /// 1×28×28 images, 16-dimensional latent, per-pixel scales.
    fn default() -> Self {
        Self {
            in_channels: 1,
            image_size: 28,
            latent_dim: 16,
            base_channels: 32,
            per_pixel_scale: true,
            min_log_scale: -7.0,
        }
    }
}

/// What [`Vae::forward_t`] returns.
#[derive(Debug)]
pub struct VaeOutput {
    /// Decoder mean, `[N, C, H, W]`.
    pub mean: Tensor,
    /// Decoder log σ, `[N, C, H, W]`.
    pub log_scale: Tensor,
    /// Posterior mean, `[N, latent_dim]`.
    pub mu: Tensor,
    /// Posterior log variance, `[N, latent_dim]`.
    pub logvar: Tensor,
    /// The latent sample `μ + e^{lv/2} ε`, `[N, latent_dim]`.
    pub z: Tensor,
}

/// The negative ELBO per image in bits per dimension, and its two parts (`total = reconstruction + kl`).
#[derive(Debug)]
pub struct ElboBitsPerDim {
    /// `−log p(x | z) / (D ln 2)`, `[N]`.
    pub reconstruction: Tensor,
    /// `KL(q(z | x) ‖ N(0, I)) / (D ln 2)`, `[N]`.
    pub kl: Tensor,
    /// Their sum: an upper bound on the NLL in bits/dim, `[N]`.
    pub total: Tensor,
}

/// Convolutional VAE: encoder `conv(4, s2) ×2 → fc → (μ, log σ²)`, decoder `fc → deconv(4, s2) ×2 → conv 3×3 →
/// (mean, log σ)`; SiLU activations. Variables: `encoder.{conv1,conv2,fc}`, `decoder.{fc,deconv1,deconv2,conv_out}`
/// and `decoder.log_scale` without per-pixel scales.
#[derive(Debug)]
pub struct Vae {
    config: VaeConfig,
    enc_conv1: nn::Conv2D,
    enc_conv2: nn::Conv2D,
    enc_fc: nn::Linear,
    dec_fc: nn::Linear,
    dec_deconv1: nn::ConvTranspose2D,
    dec_deconv2: nn::ConvTranspose2D,
    dec_conv_out: nn::Conv2D,
    log_scale: Option<Tensor>,
}

impl Vae {
    /// Creates the layers under `p`.
    pub fn new(p: nn::Path, cfg: &VaeConfig) -> Result<Self> {
        if cfg.image_size < 4 || cfg.image_size % 4 != 0 {
            return Err(Error::InvalidConfig(format!(
                "image_size = {} (must be a positive multiple of 4)",
                cfg.image_size
            )));
        }
        if cfg.in_channels < 1 || cfg.latent_dim < 1 || cfg.base_channels < 1 {
            return Err(Error::InvalidConfig(
                "in_channels, latent_dim and base_channels must be ≥ 1".into(),
            ));
        }
        let (b, s, c) = (cfg.base_channels, cfg.image_size / 4, cfg.in_channels);
        let stride2 = nn::ConvConfig {
            stride: 2,
            padding: 1,
            ..Default::default()
        };
        let up2 = nn::ConvTransposeConfig {
            stride: 2,
            padding: 1,
            ..Default::default()
        };
        let enc = &p / "encoder";
        let dec = &p / "decoder";
        let out_channels = if cfg.per_pixel_scale { 2 * c } else { c };
        let log_scale = (!cfg.per_pixel_scale).then(|| dec.zeros("log_scale", &[c]));
        Ok(Self {
            config: cfg.clone(),
            enc_conv1: nn::conv2d(&enc / "conv1", c, b, 4, stride2),
            enc_conv2: nn::conv2d(&enc / "conv2", b, 2 * b, 4, stride2),
            enc_fc: nn::linear(
                &enc / "fc",
                2 * b * s * s,
                2 * cfg.latent_dim,
                Default::default(),
            ),
            dec_fc: nn::linear(
                &dec / "fc",
                cfg.latent_dim,
                2 * b * s * s,
                Default::default(),
            ),
            dec_deconv1: nn::conv_transpose2d(&dec / "deconv1", 2 * b, b, 4, up2),
            dec_deconv2: nn::conv_transpose2d(&dec / "deconv2", b, b, 4, up2),
            dec_conv_out: nn::conv2d(
                &dec / "conv_out",
                b,
                out_channels,
                3,
                nn::ConvConfig {
                    padding: 1,
                    ..Default::default()
                },
            ),
            log_scale,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &VaeConfig {
        &self.config
    }

    /// The posterior `q(z | x) = N(μ, diag e^{lv})`.
    ///
    /// # Shapes
    /// `xs`: `[N, C, H, W]` in [-1, 1] → (`μ`, `lv`), each `[N, latent_dim]`.
    pub fn encode(&self, xs: &Tensor) -> (Tensor, Tensor) {
        let hs = self.enc_conv1.forward(xs).silu();
        let hs = self.enc_conv2.forward(&hs).silu();
        let stats = self.enc_fc.forward(&hs.flatten(1, -1));
        let parts = stats.chunk(2, 1);
        (parts[0].shallow_clone(), parts[1].shallow_clone())
    }

    /// The likelihood's parameters: mean and log σ per pixel.
    ///
    /// # Shapes
    /// `z`: `[N, latent_dim]` → (`mean`, `log_scale`), each `[N, C, H, W]`.
    pub fn decode(&self, z: &Tensor) -> (Tensor, Tensor) {
        let (b, s) = (self.config.base_channels, self.config.image_size / 4);
        let n = z.size()[0];
        let hs = self.dec_fc.forward(z).silu().view([n, 2 * b, s, s]);
        let hs = self.dec_deconv1.forward(&hs).silu();
        let hs = self.dec_deconv2.forward(&hs).silu();
        let out = self.dec_conv_out.forward(&hs);
        let (mean, log_scale) = match &self.log_scale {
            None => {
                let parts = out.chunk(2, 1);
                (parts[0].shallow_clone(), parts[1].shallow_clone())
            }
            Some(ls) => {
                let ls = ls.view([1, -1, 1, 1]).expand_as(&out);
                (out, ls)
            }
        };
        (mean, log_scale.clamp_min(self.config.min_log_scale))
    }

    /// Encodes, samples `z = μ + e^{lv/2} ε` (always: the ELBO is an expectation over q), decodes.
    ///
    /// # Shapes
    /// `xs`: `[N, C, H, W]` in [-1, 1] → [`VaeOutput`].
    pub fn forward_t(&self, xs: &Tensor, _train: bool) -> VaeOutput {
        let (mu, logvar) = self.encode(xs);
        let z = &mu + (&logvar * 0.5).exp() * mu.randn_like();
        let (mean, log_scale) = self.decode(&z);
        VaeOutput {
            mean,
            log_scale,
            mu,
            logvar,
            z,
        }
    }

    /// One-sample estimate of the negative ELBO in bits/dim: `(−log p(x | z) + KL(q(z | x) ‖ N(0, I))) / (D ln 2)`
    /// with `D = C·H·W` and the discretised likelihood, so `x` must hold pixel-bin centres `p/127.5 − 1`.
    ///
    /// # Shapes
    /// `xs`: `[N, C, H, W]` → [`ElboBitsPerDim`] of `[N]` tensors.
    pub fn elbo_bits_per_dim(&self, xs: &Tensor, train: bool) -> ElboBitsPerDim {
        let out = self.forward_t(xs, train);
        let dims = (xs.numel() as i64 / xs.size()[0]) as f64;
        let log_px = discretized_gaussian_log_likelihood(xs, &out.mean, &out.log_scale);
        let reconstruction =
            -log_px.flatten(1, -1).sum_dim_intlist(1, false, Kind::Float) / (dims * LN_2);
        let kl = standard_normal_kl(&out.mu, &out.logvar).sum_dim_intlist(1, false, Kind::Float)
            / (dims * LN_2);
        let total = &reconstruction + &kl;
        ElboBitsPerDim {
            reconstruction,
            kl,
            total,
        }
    }

    /// The training loss: the batch mean of the negative ELBO in bits/dim.
    ///
    /// # Shapes
    /// `xs`: `[N, C, H, W]` → scalar.
    pub fn loss(&self, xs: &Tensor) -> Tensor {
        self.elbo_bits_per_dim(xs, true).total.mean(Kind::Float)
    }

    /// Images from the prior: `z ~ N(0, I)`, then the decoder mean clamped to [-1, 1].
    ///
    /// # Shapes
    /// → `[n, C, H, W]`.
    pub fn sample_means(&self, n: i64, device: Device) -> Tensor {
        let z = Tensor::randn([n, self.config.latent_dim], (Kind::Float, device));
        self.decode(&z).0.clamp(-1.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{load_model_weights, read_model_config, save_model};

    #[test]
    fn likelihood_matches_ddpm_math() {
        let pixels: Vec<f64> = [0.0, 1.0, 17.0, 127.0, 128.0, 200.0, 254.0, 255.0]
            .iter()
            .map(|p| p / 127.5 - 1.0)
            .collect();
        let means = [0.0, -0.98, 0.3, 0.01, -0.5, 0.6, 1.2, 0.99];
        let log_scales = [-1.0, -3.0, -5.0, -0.5, -2.0, -7.0, -1.5, -4.0];
        let got = discretized_gaussian_log_likelihood(
            &Tensor::from_slice(&pixels),
            &Tensor::from_slice(&means),
            &Tensor::from_slice(&log_scales),
        );
        for i in 0..pixels.len() {
            let expected = ddpm_math::losses::discretized_gaussian_log_likelihood(
                pixels[i],
                means[i],
                log_scales[i],
            );
            let g = got.double_value(&[i as i64]);
            assert!(
                (g - expected).abs() < 1e-9 * expected.abs().max(1.0),
                "{i}: {g} vs {expected}"
            );
        }
        // In f32 too, within f32 accuracy (cdf⁺ − cdf⁻ cancels in the tails: relative tolerance).
        let got32 = discretized_gaussian_log_likelihood(
            &Tensor::from_slice(&pixels).to_kind(Kind::Float),
            &Tensor::from_slice(&means).to_kind(Kind::Float),
            &Tensor::from_slice(&log_scales).to_kind(Kind::Float),
        );
        let rel = (got32.to_kind(Kind::Double) - &got).abs() / got.abs().clamp_min(1.0);
        assert!(rel.max().double_value(&[]) < 1e-3, "{rel}");
    }

    #[test]
    fn bin_probabilities_sum_to_one() {
        let xs = Tensor::arange(256, (Kind::Double, Device::Cpu)) / 127.5 - 1.0;
        let p =
            discretized_gaussian_log_likelihood(&xs, &Tensor::from(0.2f64), &Tensor::from(-2.5f64))
                .exp()
                .sum(Kind::Double);
        assert!((p.double_value(&[]) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn kl_closed_form() {
        let kl = standard_normal_kl(
            &Tensor::from_slice(&[0.0, 1.0]),
            &Tensor::from_slice(&[0.0, 2.0f64]),
        );
        assert_eq!(kl.double_value(&[0]), 0.0);
        let expected = 0.5 * (1.0 + 2f64.exp() - 1.0 - 2.0);
        assert!((kl.double_value(&[1]) - expected).abs() < 1e-12);
    }

    #[test]
    fn shapes_and_elbo() {
        for per_pixel_scale in [true, false] {
            let vs = nn::VarStore::new(Device::Cpu);
            let cfg = VaeConfig {
                per_pixel_scale,
                base_channels: 8,
                ..Default::default()
            };
            let vae = Vae::new(vs.root(), &cfg).unwrap();
            let xs =
                (Tensor::randint(256, [3, 1, 28, 28], (Kind::Float, Device::Cpu)) / 127.5) - 1.0;
            let out = vae.forward_t(&xs, true);
            assert_eq!(out.mean.size(), [3, 1, 28, 28]);
            assert_eq!(out.log_scale.size(), [3, 1, 28, 28]);
            assert_eq!(out.mu.size(), [3, 16]);
            assert_eq!(out.z.size(), [3, 16]);
            let elbo = vae.elbo_bits_per_dim(&xs, false);
            assert_eq!(elbo.total.size(), [3]);
            assert!(elbo.kl.min().double_value(&[]) >= 0.0);
            assert!(elbo.reconstruction.min().double_value(&[]) > 0.0);
            assert!(elbo.total.isfinite().all().int64_value(&[]) == 1);
            assert_eq!(vae.sample_means(2, Device::Cpu).size(), [2, 1, 28, 28]);
            let loss = vae.loss(&xs);
            loss.backward();
        }
    }

    #[test]
    fn save_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = VaeConfig {
            base_channels: 8,
            per_pixel_scale: false,
            ..Default::default()
        };
        let vs = nn::VarStore::new(Device::Cpu);
        let vae = Vae::new(vs.root(), &cfg).unwrap();
        save_model(dir.path(), vae.config(), &vs).unwrap();
        assert!(vs.variables().contains_key("decoder.log_scale"));
        let cfg2: VaeConfig = read_model_config(dir.path()).unwrap();
        let mut vs2 = nn::VarStore::new(Device::Cpu);
        let vae2 = Vae::new(vs2.root(), &cfg2).unwrap();
        load_model_weights(&mut vs2, dir.path()).unwrap();
        let xs = Tensor::rand([2, 1, 28, 28], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
        let z = Tensor::randn([2, 16], (Kind::Float, Device::Cpu));
        assert!(vae.encode(&xs).0.equal(&vae2.encode(&xs).0));
        assert!(vae.decode(&z).0.equal(&vae2.decode(&z).0));
        assert!(vae.decode(&z).1.equal(&vae2.decode(&z).1));
    }
}
