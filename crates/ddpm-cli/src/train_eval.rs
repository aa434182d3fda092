//! Evaluation during training (`run.eval_every`): the [`Evaluator`] that the engine calls, built
//! from ddpm-metrics before the run starts, so that a missing network or reference is an error
//! before any file is written. `fid_cls` scores with the digit classifier (fast on a CPU), `fid`
//! with the Inception; both against the first `run.eval_reference_images` training images.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ddpm_metrics::{
    frechet_distance, reference_stats, EvalOptions, FeatureStats, ImageSource, Inception,
};
use ddpm_metrics::{images_from_tensor, SampleEvaluator};
use ddpm_train::config::{EvalMetric, ModelKind, TrainConfig};
use ddpm_train::engine::Evaluator;
use tch::{Device, Tensor};

use crate::weights;

/// Images per network call of the evaluation.
const BATCH: usize = 250;

/// FID_cls with the digit classifier's [`SampleEvaluator`].
struct ClassifierFid(SampleEvaluator);

impl Evaluator for ClassifierFid {
    fn name(&self) -> &str {
        EvalMetric::FidCls.name()
    }

    fn score(&self, images: &Tensor) -> std::result::Result<f64, String> {
        self.0
            .evaluate_tensor(images)
            .map(|s| s.fid_cls)
            .map_err(|e| e.to_string())
    }
}

/// FID with the Inception and the reference images' pool3 statistics.
struct InceptionFid {
    net: Inception,
    reference: FeatureStats,
}

impl Evaluator for InceptionFid {
    fn name(&self) -> &str {
        EvalMetric::Fid.name()
    }

    fn score(&self, images: &Tensor) -> std::result::Result<f64, String> {
        let images = images_from_tensor(images).map_err(|e| e.to_string())?;
        let opts = EvalOptions {
            batch_size: ddpm_metrics::samples::MAX_INCEPTION_BATCH,
            ..EvalOptions::default()
        };
        let stats = self
            .net
            .evaluate(images.view(), &opts)
            .map_err(|e| e.to_string())?
            .stats
            .ok_or("the Inception returned no statistics")?;
        frechet_distance(&self.reference, &stats).map_err(|e| e.to_string())
    }
}

/// The network file or folder of `run.eval_metric`: `run.eval_network`, else the default one
/// (the classifier of the dataset named by `data.path`'s file stem, or the pool3 Inception).
pub fn eval_network(cfg: &TrainConfig) -> PathBuf {
    if let Some(p) = &cfg.run.eval_network {
        return p.clone();
    }
    match cfg.run.eval_metric {
        EvalMetric::FidCls => {
            let stem = cfg
                .data
                .path
                .file_stem()
                .map_or("mnist".into(), |s| s.to_string_lossy());
            weights::default_classifier_dir(&stem)
        }
        EvalMetric::Fid => PathBuf::from(weights::POOL3_INCEPTION),
    }
}

/// The evaluator of a run with `run.eval_every > 0` (`None` otherwise), on `device`.
///
/// # Errors
/// A missing network (naming the command that makes it), unreadable reference images, or
/// samples of another size or channel count than the network takes.
pub fn evaluator(cfg: &TrainConfig, device: Device) -> Result<Option<Box<dyn Evaluator>>> {
    if cfg.run.eval_every == 0 {
        return Ok(None);
    }
    if cfg.model.kind() != ModelKind::Ddpm {
        bail!("run.eval_every: evaluation during training is for DDPM runs; set it to 0");
    }
    let source = ImageSource::Split {
        path: cfg.data.path.clone(),
        split: cfg.data.split.clone(),
    };
    let reference = source
        .load(Some(cfg.run.eval_reference_images))
        .with_context(|| {
            format!(
                "the reference images of run.eval_every ({})",
                cfg.data.path.display()
            )
        })?;
    let (_, h, w, _) = reference.dim();
    let sampled = ddpm_train::tasks::ddpm::sample_hw(cfg);
    if (h as i64, w as i64) != sampled {
        bail!(
            "run.eval_every: the run samples {}×{} images but its data is {h}×{w} (data.pad_to_32); \
             the metric compares them, so they must match",
            sampled.0,
            sampled.1
        );
    }
    let network = eval_network(cfg);
    let option = "--set run.eval_network=PATH";
    Ok(Some(match cfg.run.eval_metric {
        EvalMetric::FidCls => {
            let classifier = weights::load_classifier(&network, device, option)?;
            let ev = SampleEvaluator::new(classifier, reference.view(), None, BATCH, 10)
                .with_context(|| format!("run.eval_metric fid_cls with {}", network.display()))?;
            Box::new(ClassifierFid(ev))
        }
        EvalMetric::Fid => Box::new(inception_fid(&network, &reference, device, option)?),
    }))
}

fn inception_fid(
    path: &Path,
    reference: &ndarray::Array4<u8>,
    device: Device,
    option: &str,
) -> Result<InceptionFid> {
    let net = weights::load_inception(path, device, option)?;
    tracing::info!(
        images = reference.dim().0,
        "Inception statistics of the evaluation's reference images"
    );
    let opts = EvalOptions {
        batch_size: ddpm_metrics::samples::MAX_INCEPTION_BATCH,
        progress: true,
        ..EvalOptions::default()
    };
    // Computed once per training process (no cache file: the run directory does not exist yet).
    let reference = reference_stats(&net, reference.view(), "", None, &opts)?;
    Ok(InceptionFid { net, reference })
}
