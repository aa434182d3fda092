//! Small CNN digit classifier (MNIST / Fashion-MNIST) whose penultimate features and softmax give ddpm-metrics its
//! domain-specific FID and Inception-style scores.
use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module, Kind, Tensor};

use crate::error::{Error, Result};

/// Hyper-parameters of [`Classifier`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClassifierConfig {
    /// Image channels.
    pub in_channels: i64,
    /// Image side (a multiple of 4).
    pub image_size: i64,
    /// Channels of the first conv block (×2 in the second).
    pub base_channels: i64,
    /// Width of the penultimate features.
    pub feature_dim: i64,
    /// Number of classes.
    pub num_classes: i64,
    /// Dropout before the last layer (training only).
    pub dropout: f64,
}

impl Default for ClassifierConfig {
    /// 1×28×28 digits, 10 classes, 128 features.
    fn default() -> Self {
        Self {
            in_channels: 1,
            image_size: 28,
            base_channels: 32,
            feature_dim: 128,
            num_classes: 10,
            dropout: 0.3,
        }
    }
}

/// Two conv blocks (two 3×3 conv + ReLU each, then 2×2 max-pool), a ReLU feature layer `fc1`, and `fc2` to logits.
/// Variables: `block1.{conv1,conv2}`, `block2.{conv1,conv2}`, `fc1`, `fc2`.
#[derive(Debug)]
pub struct Classifier {
    config: ClassifierConfig,
    convs: [nn::Conv2D; 4],
    fc1: nn::Linear,
    fc2: nn::Linear,
}

impl Classifier {
    /// Creates the layers under `p`.
    pub fn new(p: nn::Path, cfg: &ClassifierConfig) -> Result<Self> {
        if cfg.image_size < 4 || cfg.image_size % 4 != 0 {
            return Err(Error::InvalidConfig(format!(
                "image_size = {} (must be a positive multiple of 4)",
                cfg.image_size
            )));
        }
        if [
            cfg.in_channels,
            cfg.base_channels,
            cfg.feature_dim,
            cfg.num_classes,
        ]
        .iter()
        .any(|&v| v < 1)
        {
            return Err(Error::InvalidConfig(
                "in_channels, base_channels, feature_dim and num_classes must be ≥ 1".into(),
            ));
        }
        let (b, s) = (cfg.base_channels, cfg.image_size / 4);
        let same = nn::ConvConfig {
            padding: 1,
            ..Default::default()
        };
        let conv =
            |block: &str, name: &str, i: i64, o: i64| nn::conv2d(&p / block / name, i, o, 3, same);
        Ok(Self {
            config: cfg.clone(),
            convs: [
                conv("block1", "conv1", cfg.in_channels, b),
                conv("block1", "conv2", b, b),
                conv("block2", "conv1", b, 2 * b),
                conv("block2", "conv2", 2 * b, 2 * b),
            ],
            fc1: nn::linear(
                &p / "fc1",
                2 * b * s * s,
                cfg.feature_dim,
                Default::default(),
            ),
            fc2: nn::linear(
                &p / "fc2",
                cfg.feature_dim,
                cfg.num_classes,
                Default::default(),
            ),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ClassifierConfig {
        &self.config
    }

    /// The penultimate features (after the ReLU of `fc1`, before dropout).
    ///
    /// # Shapes
    /// `xs`: `[N, in_channels, image_size, image_size]` in [-1, 1] → `[N, feature_dim]`.
    pub fn features(&self, xs: &Tensor) -> Tensor {
        let [c1, c2, c3, c4] = &self.convs;
        let hs = c2
            .forward(&c1.forward(xs).relu())
            .relu()
            .max_pool2d_default(2);
        let hs = c4
            .forward(&c3.forward(&hs).relu())
            .relu()
            .max_pool2d_default(2);
        self.fc1.forward(&hs.flatten(1, -1)).relu()
    }

    /// Class logits.
    ///
    /// # Shapes
    /// `xs`: `[N, in_channels, image_size, image_size]` → `[N, num_classes]`.
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.logits_from_features(&self.features(xs), train)
    }

    /// Logits from features computed by [`Classifier::features`] (to get both in one pass).
    ///
    /// # Shapes
    /// `features`: `[N, feature_dim]` → `[N, num_classes]`.
    pub fn logits_from_features(&self, features: &Tensor, train: bool) -> Tensor {
        self.fc2
            .forward(&features.dropout(self.config.dropout, train))
    }

    /// Class probabilities `softmax(logits)` in eval mode.
    ///
    /// # Shapes
    /// `xs`: `[N, in_channels, image_size, image_size]` → `[N, num_classes]`.
    pub fn probabilities(&self, xs: &Tensor) -> Tensor {
        self.forward_t(xs, false).softmax(-1, Kind::Float)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{load_model_weights, read_model_config, save_model};
    use tch::Device;

    #[test]
    fn shapes() {
        let vs = nn::VarStore::new(Device::Cpu);
        let clf = Classifier::new(vs.root(), &ClassifierConfig::default()).unwrap();
        let xs = Tensor::rand([4, 1, 28, 28], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
        assert_eq!(clf.features(&xs).size(), [4, 128]);
        assert_eq!(clf.forward_t(&xs, true).size(), [4, 10]);
        let p = clf.probabilities(&xs);
        assert_eq!(p.size(), [4, 10]);
        let sums = p.sum_dim_intlist(1, false, Kind::Float);
        assert!((sums - 1.0).abs().max().double_value(&[]) < 1e-5);
        assert!(clf.features(&xs).min().double_value(&[]) >= 0.0);
    }

    #[test]
    fn save_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ClassifierConfig {
            base_channels: 8,
            ..Default::default()
        };
        let vs = nn::VarStore::new(Device::Cpu);
        let clf = Classifier::new(vs.root(), &cfg).unwrap();
        save_model(dir.path(), clf.config(), &vs).unwrap();
        let cfg2: ClassifierConfig = read_model_config(dir.path()).unwrap();
        assert_eq!(cfg2, cfg);
        let mut vs2 = nn::VarStore::new(Device::Cpu);
        let clf2 = Classifier::new(vs2.root(), &cfg2).unwrap();
        load_model_weights(&mut vs2, dir.path()).unwrap();
        let xs = Tensor::rand([2, 1, 28, 28], (Kind::Float, Device::Cpu));
        assert!(clf.forward_t(&xs, false).equal(&clf2.forward_t(&xs, false)));
        assert!(clf.features(&xs).equal(&clf2.features(&xs)));
    }
}
