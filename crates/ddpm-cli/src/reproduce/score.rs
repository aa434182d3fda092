//! Scoring with the reproduction's protocol: FID with the FID Inception on the first `fid_n`
//! samples against as many MNIST test images (their statistics cached in `DIR/eval/`), FID_cls and
//! IS_cls with the digit classifier on the first `cls_n` samples against as many test images, and
//! the real-vs-real floor of both at the same n (training digits scored like samples).
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use ddpm_metrics::domain::{fid_cls, is_cls, ClassifierOutputs, DomainClassifier};
use ddpm_metrics::refstats::{reference_stats, source_description};
use ddpm_metrics::samples::MAX_INCEPTION_BATCH;
use ddpm_metrics::{frechet_distance, EvalOptions, FeatureStats, ImageSource, Inception};
use ndarray::{s, ArrayView4};
use serde::{Deserialize, Serialize};
use tch::Device;

use super::plan::Plan;
use crate::weights;

/// The scores of one set of images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    /// FID (FID Inception, pool3) against `fid_n` test images.
    pub fid: f64,
    /// Images on each side of `fid`.
    pub fid_n: usize,
    /// Fréchet distance of the digit classifier's features against `cls_n` test images.
    pub fid_cls: f64,
    /// Inception Score of the classifier's probabilities (10 splits): mean.
    pub is_cls: f64,
    /// IS_cls: standard deviation over the splits.
    pub is_cls_std: f64,
    /// Images on each side of `fid_cls`; IS_cls is of these `cls_n` images too.
    pub cls_n: usize,
}

/// The reference side of the protocol, built once per command.
pub struct Scorer {
    classifier: DomainClassifier,
    /// The classifier's outputs of the first `cls_samples` test images.
    cls_reference: ClassifierOutputs,
    batch_size: usize,
    inception: Inception,
    /// Test images of FID and the folder of the statistics cache.
    test: ImageSource,
    fid_n: usize,
    cache: PathBuf,
    /// Inception seconds per image, as measured so far (for the time estimates).
    pub inception_secs_per_image: std::cell::Cell<Option<f64>>,
}

impl Scorer {
    /// Loads the classifier and the Inception, runs the classifier on the first `cls_samples`
    /// test images of `plan.data` and (through `dir/eval/`) the Inception on the first
    /// `fid_samples`.
    ///
    /// # Errors
    /// A missing network (naming the command that makes it), a dataset without enough test images.
    pub fn new(plan: &Plan, dir: &Path, device: Device) -> Result<Self> {
        let p = &plan.protocol;
        let classifier = weights::load_classifier(&plan.classifier, device, "--classifier DIR")?;
        let inception = weights::load_inception(&plan.inception, device, "--inception FILE")?;
        let test = ImageSource::Split {
            path: plan.data.clone(),
            split: "test".into(),
        };
        let images = test
            .load(Some(p.cls_samples.max(p.fid_samples)))
            .with_context(|| format!("the reference images {test}"))?;
        let n = images.dim().0;
        if n < p.cls_samples.max(p.fid_samples) {
            anyhow::bail!(
                "{test}: {n} test images, the protocol needs {} (--cls-samples, --fid-samples)",
                p.cls_samples.max(p.fid_samples)
            );
        }
        let cls_reference =
            classifier.evaluate(images.slice(s![..p.cls_samples, .., .., ..]), p.batch_size)?;
        let scorer = Self {
            classifier,
            cls_reference,
            batch_size: p.batch_size,
            inception,
            test,
            fid_n: p.fid_samples,
            cache: dir.join("eval"),
            inception_secs_per_image: std::cell::Cell::new(None),
        };
        scorer.test_stats(images.view(), p.fid_samples)?;
        Ok(scorer)
    }

    /// The classifier's description (for the protocol text).
    pub fn classifier(&self) -> String {
        self.classifier.describe()
    }

    /// The Inception's description.
    pub fn inception(&self) -> String {
        self.inception.describe()
    }

    /// Inception statistics of the first `n` test images (`images` holds at least `n`), cached.
    fn test_stats(&self, images: ArrayView4<'_, u8>, n: usize) -> Result<FeatureStats> {
        let cache = self.cache.join(format!("inception-test-{n}.h5"));
        let source = source_description(&self.test, n);
        self.timed(n, || {
            reference_stats(
                &self.inception,
                images.slice(s![..n, .., .., ..]),
                &source,
                Some(&cache),
                &inception_options(),
            )
        })
    }

    /// Runs `f` (an Inception pass over `n` images) and updates the measured speed when it
    /// took long enough to be a computation rather than a cache read.
    fn timed<T>(&self, n: usize, f: impl FnOnce() -> ddpm_metrics::Result<T>) -> Result<T> {
        let start = Instant::now();
        let out = f()?;
        let per = start.elapsed().as_secs_f64() / n.max(1) as f64;
        if per > 1e-3 {
            self.inception_secs_per_image.set(Some(per));
        }
        Ok(out)
    }

    /// Scores `images` (uint8 `[N, H, W, C]`): FID on the first min(N, fid_samples) against as
    /// many test images, FID_cls / IS_cls on the first min(N, cls_samples) against as many.
    ///
    /// # Errors
    /// Fewer than 2 images, or images the networks cannot take.
    pub fn score(&self, images: ArrayView4<'_, u8>) -> Result<Scores> {
        let n = images.dim().0;
        let cls_max = self.cls_reference.features.dim().0;
        let (fid_n, cls_n) = (n.min(self.fid_n), n.min(cls_max));
        let test = self
            .test
            .load(Some(fid_n))
            .with_context(|| format!("{}", self.test))?;
        let reference = self.test_stats(test.view(), fid_n)?;
        let samples = self.timed(fid_n, || {
            reference_stats(
                &self.inception,
                images.slice(s![..fid_n, .., .., ..]),
                "",
                None,
                &inception_options(),
            )
        })?;
        let fid = frechet_distance(&reference, &samples)?;
        let fake = self
            .classifier
            .evaluate(images.slice(s![..cls_n, .., .., ..]), self.batch_size)?;
        let real = self.cls_reference.features.slice(s![..cls_n, ..]);
        let fid_cls = fid_cls(real, fake.features.view())?;
        let is = is_cls(fake.probabilities.view(), IS_SPLITS.min(cls_n))?;
        Ok(Scores {
            fid,
            fid_n,
            fid_cls,
            is_cls: is.mean,
            is_cls_std: is.std,
            cls_n,
        })
    }
}

/// Splits of IS_cls (as the Inception Score's usual 10).
const IS_SPLITS: usize = 10;

fn inception_options() -> EvalOptions {
    EvalOptions {
        batch_size: MAX_INCEPTION_BATCH,
        progress: true,
        ..EvalOptions::default()
    }
}
