//! DCGAN-style generator and discriminator for small grey images (28×28), the GAN baseline of the comparison.
use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module, nn::ModuleT, Device, Kind, Tensor};

use crate::error::{Error, Result};

/// Hyper-parameters of [`Generator`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GeneratorConfig {
    /// Latent dimension.
    pub z_dim: i64,
    /// Channels of the last hidden layer (×2 and ×4 below it).
    pub base_channels: i64,
    /// Image channels.
    pub out_channels: i64,
    /// Image side (a multiple of 4).
    pub image_size: i64,
}

impl Default for GeneratorConfig {
    /// 64-dimensional latent, 1×28×28 images.
    fn default() -> Self {
        Self {
            z_dim: 64,
            base_channels: 64,
            out_channels: 1,
            image_size: 28,
        }
    }
}

fn check_size(image_size: i64) -> Result<()> {
    if image_size < 4 || image_size % 4 != 0 {
        return Err(Error::InvalidConfig(format!(
            "image_size = {image_size} (must be a positive multiple of 4)"
        )));
    }
    Ok(())
}

fn positive(name: &str, v: i64) -> Result<()> {
    if v < 1 {
        return Err(Error::InvalidConfig(format!("{name} = {v} (must be ≥ 1)")));
    }
    Ok(())
}

fn deconv(p: nn::Path, c_in: i64, c_out: i64) -> nn::ConvTranspose2D {
    let cfg = nn::ConvTransposeConfig {
        stride: 2,
        padding: 1,
        ..Default::default()
    };
    nn::conv_transpose2d(p, c_in, c_out, 4, cfg)
}

fn down_conv(p: nn::Path, c_in: i64, c_out: i64) -> nn::Conv2D {
    let cfg = nn::ConvConfig {
        stride: 2,
        padding: 1,
        ..Default::default()
    };
    nn::conv2d(p, c_in, c_out, 4, cfg)
}

/// DCGAN generator: `z → fc → [4b, s/4, s/4] → BN, ReLU → deconv ×2 (each ×2 up, BN, ReLU) → 3×3 conv → tanh`.
#[derive(Debug)]
pub struct Generator {
    config: GeneratorConfig,
    fc: nn::Linear,
    bn0: nn::BatchNorm,
    deconv1: nn::ConvTranspose2D,
    bn1: nn::BatchNorm,
    deconv2: nn::ConvTranspose2D,
    bn2: nn::BatchNorm,
    conv_out: nn::Conv2D,
}

impl Generator {
    /// Creates the layers under `p`.
    pub fn new(p: nn::Path, cfg: &GeneratorConfig) -> Result<Self> {
        check_size(cfg.image_size)?;
        positive("z_dim", cfg.z_dim)?;
        positive("base_channels", cfg.base_channels)?;
        positive("out_channels", cfg.out_channels)?;
        let (b, s) = (cfg.base_channels, cfg.image_size / 4);
        let bn = |name: &str, c: i64| nn::batch_norm2d(&p / name, c, Default::default());
        Ok(Self {
            config: cfg.clone(),
            fc: nn::linear(&p / "fc", cfg.z_dim, 4 * b * s * s, Default::default()),
            bn0: bn("bn0", 4 * b),
            deconv1: deconv(&p / "deconv1", 4 * b, 2 * b),
            bn1: bn("bn1", 2 * b),
            deconv2: deconv(&p / "deconv2", 2 * b, b),
            bn2: bn("bn2", b),
            conv_out: nn::conv2d(
                &p / "conv_out",
                b,
                cfg.out_channels,
                3,
                nn::ConvConfig {
                    padding: 1,
                    ..Default::default()
                },
            ),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &GeneratorConfig {
        &self.config
    }

    /// Standard normal latents.
    ///
    /// # Shapes
    /// → `[n, z_dim]`.
    pub fn sample_latent(&self, n: i64, device: Device) -> Tensor {
        Tensor::randn([n, self.config.z_dim], (Kind::Float, device))
    }

    /// Images in [-1, 1].
    ///
    /// # Shapes
    /// `z`: `[N, z_dim]` → `[N, out_channels, image_size, image_size]`.
    pub fn forward_t(&self, z: &Tensor, train: bool) -> Tensor {
        let (b, s) = (self.config.base_channels, self.config.image_size / 4);
        let n = z.size()[0];
        let xs = self.fc.forward(z).view([n, 4 * b, s, s]);
        let xs = self.bn0.forward_t(&xs, train).relu();
        let xs = self.deconv1.forward(&xs);
        let xs = self.bn1.forward_t(&xs, train).relu();
        let xs = self.deconv2.forward(&xs);
        let xs = self.bn2.forward_t(&xs, train).relu();
        self.conv_out.forward(&xs).tanh()
    }
}

/// Hyper-parameters of [`Discriminator`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiscriminatorConfig {
    /// Image channels.
    pub in_channels: i64,
    /// Channels of the first layer (×2 in the second).
    pub base_channels: i64,
    /// Image side (a multiple of 4).
    pub image_size: i64,
    /// Slope of the LeakyReLU for negative inputs.
    pub negative_slope: f64,
    /// Dropout after each convolution (training only).
    pub dropout: f64,
}

impl Default for DiscriminatorConfig {
    /// 1×28×28 images, LeakyReLU 0.2, dropout 0.3.
    fn default() -> Self {
        Self {
            in_channels: 1,
            base_channels: 64,
            image_size: 28,
            negative_slope: 0.2,
            dropout: 0.3,
        }
    }
}

/// DCGAN discriminator: two stride-2 4×4 convolutions with LeakyReLU (and dropout), then a linear logit.
#[derive(Debug)]
pub struct Discriminator {
    config: DiscriminatorConfig,
    conv1: nn::Conv2D,
    conv2: nn::Conv2D,
    fc: nn::Linear,
}

impl Discriminator {
    /// Creates the layers under `p`.
    pub fn new(p: nn::Path, cfg: &DiscriminatorConfig) -> Result<Self> {
        check_size(cfg.image_size)?;
        positive("in_channels", cfg.in_channels)?;
        positive("base_channels", cfg.base_channels)?;
        let (b, s) = (cfg.base_channels, cfg.image_size / 4);
        Ok(Self {
            config: cfg.clone(),
            conv1: down_conv(&p / "conv1", cfg.in_channels, b),
            conv2: down_conv(&p / "conv2", b, 2 * b),
            fc: nn::linear(&p / "fc", 2 * b * s * s, 1, Default::default()),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &DiscriminatorConfig {
        &self.config
    }

    /// The logit of "real".
    ///
    /// # Shapes
    /// `xs`: `[N, in_channels, image_size, image_size]` in [-1, 1] → `[N]`.
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let slope = self.config.negative_slope;
        let leaky = |t: Tensor| t.maximum(&(&t * slope));
        let xs = leaky(self.conv1.forward(xs)).dropout(self.config.dropout, train);
        let xs = leaky(self.conv2.forward(&xs)).dropout(self.config.dropout, train);
        self.fc.forward(&xs.flatten(1, -1)).squeeze_dim(1)
    }
}

/// Non-saturating GAN loss of the discriminator: `E[−log σ(D(x))] + E[−log(1 − σ(D(G(z))))]`
/// (Goodfellow et al. 2014), from logits.
///
/// # Shapes
/// `real_logits`: `[N]`, `fake_logits`: `[M]` → scalar.
pub fn discriminator_loss(real_logits: &Tensor, fake_logits: &Tensor) -> Tensor {
    (-real_logits).softplus().mean(Kind::Float) + fake_logits.softplus().mean(Kind::Float)
}

/// Non-saturating GAN loss of the generator: `E[−log σ(D(G(z)))]`, from logits.
///
/// # Shapes
/// `fake_logits`: `[M]` → scalar.
pub fn generator_loss(fake_logits: &Tensor) -> Tensor {
    (-fake_logits).softplus().mean(Kind::Float)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{load_model_weights, read_model_config, save_model};

    #[test]
    fn shapes_and_range() {
        let vs = nn::VarStore::new(Device::Cpu);
        let g = Generator::new(vs.root() / "g", &GeneratorConfig::default()).unwrap();
        let d = Discriminator::new(vs.root() / "d", &DiscriminatorConfig::default()).unwrap();
        let z = g.sample_latent(5, Device::Cpu);
        assert_eq!(z.size(), [5, 64]);
        let xs = g.forward_t(&z, true);
        assert_eq!(xs.size(), [5, 1, 28, 28]);
        assert!(xs.abs().max().double_value(&[]) <= 1.0);
        let logits = d.forward_t(&xs, true);
        assert_eq!(logits.size(), [5]);
        let (ld, lg) = (
            discriminator_loss(&logits, &logits),
            generator_loss(&logits),
        );
        assert_eq!(ld.size(), Vec::<i64>::new());
        assert!(ld.double_value(&[]) > 0.0 && lg.double_value(&[]) > 0.0);
        assert!(Generator::new(
            vs.root() / "bad",
            &GeneratorConfig {
                image_size: 30,
                ..Default::default()
            }
        )
        .is_err());
    }

    #[test]
    fn losses_match_closed_form() {
        let real = Tensor::from_slice(&[2.0f32, -1.0]);
        let fake = Tensor::from_slice(&[0.5f32]);
        let sp = |x: f64| (1.0 + x.exp()).ln();
        let expected = (sp(-2.0) + sp(1.0)) / 2.0 + sp(0.5);
        assert!((discriminator_loss(&real, &fake).double_value(&[]) - expected).abs() < 1e-6);
        assert!((generator_loss(&fake).double_value(&[]) - sp(-0.5)).abs() < 1e-6);
    }

    #[test]
    fn save_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = GeneratorConfig {
            base_channels: 8,
            ..Default::default()
        };
        let vs = nn::VarStore::new(Device::Cpu);
        let g = Generator::new(vs.root(), &cfg).unwrap();
        // One training step's batch-norm statistics, so that the running stats differ from their init.
        let z = g.sample_latent(4, Device::Cpu);
        let _ = g.forward_t(&z, true);
        save_model(dir.path(), g.config(), &vs).unwrap();
        let cfg2: GeneratorConfig = read_model_config(dir.path()).unwrap();
        assert_eq!(cfg2, cfg);
        let mut vs2 = nn::VarStore::new(Device::Cpu);
        let g2 = Generator::new(vs2.root(), &cfg2).unwrap();
        load_model_weights(&mut vs2, dir.path()).unwrap();
        assert!(g.forward_t(&z, false).equal(&g2.forward_t(&z, false)));

        let dcfg = DiscriminatorConfig::default();
        let dvs = nn::VarStore::new(Device::Cpu);
        let d = Discriminator::new(dvs.root(), &dcfg).unwrap();
        save_model(&dir.path().join("d"), d.config(), &dvs).unwrap();
        let mut dvs2 = nn::VarStore::new(Device::Cpu);
        let d2 = Discriminator::new(dvs2.root(), &dcfg).unwrap();
        load_model_weights(&mut dvs2, &dir.path().join("d")).unwrap();
        let xs = Tensor::rand([3, 1, 28, 28], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
        assert!(d.forward_t(&xs, false).equal(&d2.forward_t(&xs, false)));
    }
}
