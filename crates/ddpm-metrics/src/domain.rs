//! Domain metrics with a digit classifier (FID_cls, IS_cls): the Fréchet distance of the
//! classifier's penultimate features and the Inception Score of its softmax, through the same
//! matrix functions as FID / IS ([`crate::fid`], [`crate::inception_score`]).
//!
//! The classifier is the folder written by `ddpm-cli train-classifier` (ddpm-train's
//! `classifier::save_classifier`: `config.json` + `model.safetensors` + `accuracy.json`).
use std::path::{Path, PathBuf};

use ddpm_nets::classifier::Classifier;
use ddpm_train::classifier::{load_classifier, read_report, ClassifierReport};
use ndarray::{Array2, ArrayView2, ArrayView4, Axis};
use serde::Serialize;
use tch::{nn, Device, Kind, Tensor};

use crate::error::{MetricsError, Result};
use crate::fid::frechet_distance_from_features;
use crate::inception_score::{inception_score, InceptionScore};

/// A loaded digit classifier on a device, in eval mode.
pub struct DomainClassifier {
    _vs: nn::VarStore,
    net: Classifier,
    dir: PathBuf,
    device: Device,
    report: Option<ClassifierReport>,
}

impl std::fmt::Debug for DomainClassifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DomainClassifier")
            .field("dir", &self.dir)
            .field("device", &self.device)
            .finish()
    }
}

/// Features and class probabilities of a set of images.
#[derive(Debug, Clone)]
pub struct ClassifierOutputs {
    /// Penultimate features `[N, feature_dim]`.
    pub features: Array2<f32>,
    /// Softmax probabilities `[N, num_classes]`.
    pub probabilities: Array2<f32>,
}

/// FID_cls and IS_cls.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DomainScores {
    /// Fréchet distance of the classifier features (real vs fake).
    pub fid_cls: Option<f64>,
    /// Inception Score of the classifier probabilities (fake).
    pub is_cls: Option<InceptionScore>,
}

impl DomainClassifier {
    /// Loads the classifier folder `dir` (`config.json` + `model.safetensors`, optionally
    /// `accuracy.json`) onto `device`.
    ///
    /// # Errors
    /// [`MetricsError::MissingClassifier`] naming `dir` when either file is missing (so that a
    /// caller can add how to create one); [`MetricsError::Train`] when the files do not load.
    pub fn load(dir: &Path, device: Device) -> Result<Self> {
        if !dir.join("config.json").is_file() || !dir.join("model.safetensors").is_file() {
            return Err(MetricsError::MissingClassifier {
                dir: dir.to_path_buf(),
            });
        }
        let (vs, net) = load_classifier(dir, device)?;
        let report = read_report(dir).ok();
        Ok(Self {
            _vs: vs,
            net,
            dir: dir.to_path_buf(),
            device,
            report,
        })
    }

    /// The folder it was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The training report (`accuracy.json`), when present.
    pub fn report(&self) -> Option<&ClassifierReport> {
        self.report.as_ref()
    }

    /// One line naming the classifier and its test accuracy.
    pub fn describe(&self) -> String {
        match &self.report {
            Some(r) => format!(
                "classifier {} (test accuracy {:.4})",
                self.dir.display(),
                r.test_accuracy
            ),
            None => format!("classifier {}", self.dir.display()),
        }
    }

    /// Features and probabilities of `images` (uint8 `[N, H, W, C]`) in batches, in eval mode.
    pub fn evaluate(
        &self,
        images: ArrayView4<'_, u8>,
        batch_size: usize,
    ) -> Result<ClassifierOutputs> {
        let cfg = self.net.config();
        let (n, h, w, c) = images.dim();
        if c as i64 != cfg.in_channels || h as i64 != cfg.image_size || w as i64 != cfg.image_size {
            return Err(MetricsError::BadImages(format!(
                "the classifier {} takes {}×{}×{} images, got {h}×{w}×{c}",
                self.dir.display(),
                cfg.image_size,
                cfg.image_size,
                cfg.in_channels
            )));
        }
        if n == 0 || batch_size == 0 {
            return Err(MetricsError::Shape(format!(
                "{n} images in batches of {batch_size}"
            )));
        }
        let mut feats = Vec::with_capacity(n * cfg.feature_dim as usize);
        let mut probs = Vec::with_capacity(n * cfg.num_classes as usize);
        for batch in images.axis_chunks_iter(Axis(0), batch_size) {
            let b = batch.len_of(Axis(0)) as i64;
            let data: Vec<u8> = batch.iter().copied().collect();
            let x = Tensor::from_slice(&data)
                .view([b, h as i64, w as i64, c as i64])
                .permute([0, 3, 1, 2]);
            let x = ddpm_train::loader::to_model_input(&x, false, self.device);
            let (f, p) = tch::no_grad(|| {
                let f = self.net.features(&x);
                let p = self
                    .net
                    .logits_from_features(&f, false)
                    .softmax(-1, Kind::Float);
                (f, p)
            });
            feats.extend(to_vec_f32(&f)?);
            probs.extend(to_vec_f32(&p)?);
        }
        let shape = |k: i64, v: Vec<f32>| {
            Array2::from_shape_vec((n, k as usize), v)
                .map_err(|e| MetricsError::Shape(e.to_string()))
        };
        Ok(ClassifierOutputs {
            features: shape(cfg.feature_dim, feats)?,
            probabilities: shape(cfg.num_classes, probs)?,
        })
    }
}

fn to_vec_f32(t: &Tensor) -> Result<Vec<f32>> {
    Vec::<f32>::try_from(
        t.to_kind(Kind::Float)
            .to_device(Device::Cpu)
            .contiguous()
            .view([-1]),
    )
    .map_err(|e| MetricsError::torch("reading classifier outputs", e))
}

/// FID_cls: the Fréchet distance between the classifier features of real and fake images.
pub fn fid_cls(
    real_features: ArrayView2<'_, f32>,
    fake_features: ArrayView2<'_, f32>,
) -> Result<f64> {
    frechet_distance_from_features(real_features, fake_features)
}

/// IS_cls: the Inception Score of the classifier's probabilities of the fake images.
pub fn is_cls(fake_probabilities: ArrayView2<'_, f32>, splits: usize) -> Result<InceptionScore> {
    inception_score(fake_probabilities, splits)
}

/// FID_cls (when `real` is given) and IS_cls (when `splits` is given) from classifier outputs.
pub fn domain_scores(
    real: Option<&ClassifierOutputs>,
    fake: &ClassifierOutputs,
    splits: Option<usize>,
) -> Result<DomainScores> {
    Ok(DomainScores {
        fid_cls: real
            .map(|r| fid_cls(r.features.view(), fake.features.view()))
            .transpose()?,
        is_cls: splits
            .map(|s| is_cls(fake.probabilities.view(), s))
            .transpose()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::FeatureStats;
    use ddpm_nets::classifier::ClassifierConfig;

    fn outputs(seed: usize, n: usize) -> ClassifierOutputs {
        let features = Array2::from_shape_fn((n, 6), |(i, j)| {
            (((i * 31 + j * 17 + seed * 7) % 23) as f32) * 0.1
        });
        let probabilities = Array2::from_shape_fn((n, 4), |(i, j)| {
            let w = [1.0, 2.0, 3.0, 4.0];
            let r = (i + seed) % 4;
            w[(j + r) % 4] / 10.0
        });
        ClassifierOutputs {
            features,
            probabilities,
        }
    }

    #[test]
    fn scores_are_the_core_functions_on_the_matrices() {
        let (real, fake) = (outputs(0, 40), outputs(3, 30));
        let s = domain_scores(Some(&real), &fake, Some(5)).unwrap();
        let want_fid = crate::fid::frechet_distance(
            &FeatureStats::from_features(real.features.view()).unwrap(),
            &FeatureStats::from_features(fake.features.view()).unwrap(),
        )
        .unwrap();
        assert_eq!(s.fid_cls, Some(want_fid));
        assert_eq!(
            s.is_cls,
            Some(inception_score(fake.probabilities.view(), 5).unwrap())
        );
        let none = domain_scores(None, &fake, None).unwrap();
        assert_eq!(
            none,
            DomainScores {
                fid_cls: None,
                is_cls: None
            }
        );
    }

    #[test]
    fn missing_classifier_is_its_own_error_naming_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let err = DomainClassifier::load(&missing, Device::Cpu).unwrap_err();
        assert!(
            matches!(&err, MetricsError::MissingClassifier { dir } if dir == &missing),
            "{err:?}"
        );
        assert!(
            err.to_string().contains(&missing.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn evaluate_gives_the_network_features_and_softmax() {
        let dir = tempfile::tempdir().unwrap();
        tch::manual_seed(1);
        let vs = nn::VarStore::new(Device::Cpu);
        let net = Classifier::new(vs.root(), &ClassifierConfig::default()).unwrap();
        ddpm_nets::checkpoint::save_model(dir.path(), net.config(), &vs).unwrap();
        let clf = DomainClassifier::load(dir.path(), Device::Cpu).unwrap();
        let images = ndarray::Array4::from_shape_fn((5, 28, 28, 1), |(n, y, x, _)| {
            ((n * 40 + x * 9 + y * 5) % 256) as u8
        });
        let out = clf.evaluate(images.view(), 2).unwrap();
        assert_eq!(out.features.dim(), (5, 128));
        assert_eq!(out.probabilities.dim(), (5, 10));
        let x = Tensor::from_slice(images.as_slice().unwrap())
            .view([5, 28, 28, 1])
            .permute([0, 3, 1, 2]);
        let x = ddpm_train::loader::to_model_input(&x, false, Device::Cpu);
        let want = tch::no_grad(|| net.probabilities(&x));
        let want = Vec::<f32>::try_from(want.contiguous().view([-1])).unwrap();
        for (g, w) in out.probabilities.iter().zip(want.iter()) {
            assert!((g - w).abs() < 1e-5, "{g} vs {w}");
        }
        let bad = ndarray::Array4::<u8>::zeros((2, 32, 32, 1));
        assert!(clf.evaluate(bad.view(), 2).is_err());
    }
}
