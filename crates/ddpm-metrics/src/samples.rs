//! Scores of generated samples against one fixed reference set: FID_cls and IS_cls with the digit
//! classifier and, optionally, FID with the Inception network (the numbers of one row of a model
//! comparison). The reference side (classifier outputs, Inception statistics) is computed once
//! and reused for every set of samples.
use std::time::Instant;

use ndarray::ArrayView4;
use serde::Serialize;
use tch::Tensor;

use crate::domain::{domain_scores, ClassifierOutputs, DomainClassifier};
use crate::error::{MetricsError, Result};
use crate::fid::frechet_distance;
use crate::inception::{EvalOptions, Inception};
use crate::inception_score::InceptionScore;
use crate::inputs::images_from_tensor;
use crate::stats::FeatureStats;

/// Most images per Inception forward pass when scoring samples (the network's activations at
/// 299×299 are large).
pub const MAX_INCEPTION_BATCH: usize = 50;

/// The Inception network and the reference images' feature statistics under it (e.g. from
/// [`crate::refstats::reference_stats`]).
#[derive(Debug)]
pub struct InceptionReference {
    /// The network.
    pub net: Inception,
    /// μ, Σ of the reference images' pool3 features.
    pub stats: FeatureStats,
}

/// The reference side of sample scoring, built once.
#[derive(Debug)]
pub struct SampleEvaluator {
    classifier: DomainClassifier,
    reference: ClassifierOutputs,
    inception: Option<InceptionReference>,
    batch_size: usize,
    splits: usize,
}

/// The scores of one set of samples.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SampleScores {
    /// FID with the Inception network, when the evaluator has one.
    pub fid_inception: Option<f64>,
    /// Fréchet distance of the classifier features (reference vs samples).
    pub fid_cls: f64,
    /// Inception Score of the classifier probabilities of the samples.
    pub is_cls: InceptionScore,
}

impl SampleEvaluator {
    /// Runs `classifier` on the `reference` images (uint8 `[N, H, W, C]`, N ≥ 2) once.
    /// `batch_size` is the number of images per network call (at most [`MAX_INCEPTION_BATCH`]
    /// for the Inception); `splits` the IS_cls splits, clamped to 1 ..= the number of samples
    /// scored.
    ///
    /// # Errors
    /// [`MetricsError::Shape`] for a zero `batch_size` or fewer than 2 reference images;
    /// [`MetricsError::BadImages`] when the classifier does not take images of this size.
    pub fn new(
        classifier: DomainClassifier,
        reference: ArrayView4<'_, u8>,
        inception: Option<InceptionReference>,
        batch_size: usize,
        splits: usize,
    ) -> Result<Self> {
        if batch_size == 0 || reference.dim().0 < 2 {
            return Err(MetricsError::Shape(format!(
                "sample scoring needs batch_size ≥ 1 and ≥ 2 reference images; got {batch_size} and {}",
                reference.dim().0
            )));
        }
        let reference = classifier.evaluate(reference, batch_size)?;
        Ok(Self {
            classifier,
            reference,
            inception,
            batch_size,
            splits,
        })
    }

    /// The digit classifier.
    pub fn classifier(&self) -> &DomainClassifier {
        &self.classifier
    }

    /// The Inception network, when FID-Inception is computed.
    pub fn inception(&self) -> Option<&Inception> {
        self.inception.as_ref().map(|r| &r.net)
    }

    /// Scores `images` (uint8 `[N, H, W, C]`, the reference images' H, W, C).
    ///
    /// # Errors
    /// Images the classifier or the Inception cannot take; too few images for a covariance.
    pub fn evaluate(&self, images: ArrayView4<'_, u8>) -> Result<SampleScores> {
        let fake = self.classifier.evaluate(images, self.batch_size)?;
        let splits = self.splits.min(images.dim().0).max(1);
        let s = domain_scores(Some(&self.reference), &fake, Some(splits))?;
        let fid_inception = match &self.inception {
            Some(r) => Some(self.inception_fid(r, images)?),
            None => None,
        };
        Ok(SampleScores {
            fid_inception,
            fid_cls: s.fid_cls.expect("a reference was given"),
            is_cls: s.is_cls.expect("splits were given"),
        })
    }

    /// [`SampleEvaluator::evaluate`] of a uint8 tensor `[N, H, W, C]` on any device (what the
    /// samplers return).
    pub fn evaluate_tensor(&self, images: &Tensor) -> Result<SampleScores> {
        self.evaluate(images_from_tensor(images)?.view())
    }

    fn inception_fid(&self, r: &InceptionReference, images: ArrayView4<'_, u8>) -> Result<f64> {
        let start = Instant::now();
        let opts = EvalOptions {
            batch_size: self.batch_size.min(MAX_INCEPTION_BATCH),
            ..EvalOptions::default()
        };
        let stats = r
            .net
            .evaluate(images, &opts)?
            .stats
            .expect("features were asked for");
        tracing::info!(
            images_per_sec = images.dim().0 as f64 / start.elapsed().as_secs_f64(),
            "Inception on samples"
        );
        frechet_distance(&r.stats, &stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inputs::images_to_nchw_tensor;
    use ddpm_nets::classifier::{Classifier, ClassifierConfig};
    use ndarray::Array4;
    use tch::{nn, Device};

    fn classifier(dir: &std::path::Path) -> DomainClassifier {
        tch::manual_seed(5);
        let vs = nn::VarStore::new(Device::Cpu);
        let net = Classifier::new(vs.root(), &ClassifierConfig::default()).unwrap();
        ddpm_nets::checkpoint::save_model(dir, net.config(), &vs).unwrap();
        DomainClassifier::load(dir, Device::Cpu).unwrap()
    }

    fn images(n: usize, seed: usize) -> Array4<u8> {
        Array4::from_shape_fn((n, 28, 28, 1), |(i, y, x, _)| {
            ((i * 41 + y * 13 + x * 7 + seed * 29 + (x * y) % 11) % 256) as u8
        })
    }

    #[test]
    fn scores_are_the_domain_scores_against_the_reference() {
        let dir = tempfile::tempdir().unwrap();
        let (reference, fake) = (images(12, 0), images(6, 1));
        let ev =
            SampleEvaluator::new(classifier(dir.path()), reference.view(), None, 4, 10).unwrap();
        let got = ev.evaluate(fake.view()).unwrap();
        // The same network calls (batches of 4) by hand give the same numbers exactly.
        let clf = DomainClassifier::load(dir.path(), Device::Cpu).unwrap();
        let want = domain_scores(
            Some(&clf.evaluate(reference.view(), 4).unwrap()),
            &clf.evaluate(fake.view(), 4).unwrap(),
            Some(6),
        )
        .unwrap();
        assert_eq!(
            got,
            SampleScores {
                fid_inception: None,
                fid_cls: want.fid_cls.unwrap(),
                is_cls: want.is_cls.unwrap(),
            }
        );
        assert!(got.fid_cls > 0.0, "{got:?}");
        // The same images as an NHWC tensor give the same scores.
        let t = images_to_nchw_tensor(fake.view()).permute([0, 2, 3, 1]);
        assert_eq!(ev.evaluate_tensor(&t).unwrap(), got);
    }

    #[test]
    fn rejects_unusable_settings() {
        let dir = tempfile::tempdir().unwrap();
        let clf = classifier(dir.path());
        let err = SampleEvaluator::new(clf, images(1, 0).view(), None, 4, 2).unwrap_err();
        assert!(matches!(err, MetricsError::Shape(_)), "{err:?}");
    }
}
