//! The domain classifier of the evaluation (FID_cls / IS_cls on MNIST and Fashion-MNIST): training
//! ddpm-nets' `Classifier` on an HDF5 split with per-step seeding, test accuracy, and the model
//! folder that ddpm-metrics loads (`config.json` + `model.safetensors` + `accuracy.json`).
use std::path::{Path, PathBuf};
use std::time::Instant;

use ddpm_nets::checkpoint::{
    load_model_weights, read_json, read_model_config, save_model, write_json,
};
use ddpm_nets::classifier::{Classifier, ClassifierConfig};
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use crate::config::OptimConfig;
use crate::error::{Result, TrainError};
use crate::loader::{self, BatchSampler, ImageData};
use crate::optim::Adam;
use crate::trainer::{named_trainables, progress_bar, step_seed};

/// The file beside the weights that records how the classifier was trained and its test accuracy.
pub const ACCURACY_FILE: &str = "accuracy.json";

/// Where `ddpm-cli train-classifier` saves the classifier of `dataset` by default.
pub fn default_dir(dataset: &str) -> PathBuf {
    PathBuf::from("datasets/weights").join(format!("classifier-{dataset}"))
}

/// How to train the classifier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClassifierTrainConfig {
    /// Passes over the training images (ignored when `steps` is set).
    pub epochs: usize,
    /// Exact number of optimisation steps (overrides `epochs`).
    pub steps: Option<usize>,
    /// Images per step.
    pub batch_size: usize,
    /// Peak Adam learning rate, decayed to 0 by a half cosine.
    pub lr: f64,
    /// L2 weight decay.
    pub weight_decay: f64,
    /// Seed of the initialisation, data order and dropout.
    pub seed: u64,
    /// Train on the first N training images only.
    pub train_limit: Option<usize>,
    /// Report the accuracy on the first N test images only.
    pub test_limit: Option<usize>,
    /// Steps between log lines (one host sync each).
    pub log_every: usize,
}

impl Default for ClassifierTrainConfig {
    /// 5 epochs of Adam 1e-3 (cosine decay) at batch 128.
    fn default() -> Self {
        Self {
            epochs: 5,
            steps: None,
            batch_size: 128,
            lr: 1e-3,
            weight_decay: 0.0,
            seed: 0,
            train_limit: None,
            test_limit: None,
            log_every: 100,
        }
    }
}

/// What a training run reports (and `accuracy.json` records).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassifierReport {
    /// Dataset name or path.
    pub dataset: String,
    /// Fraction of the test images classified correctly.
    pub test_accuracy: f64,
    /// Test images evaluated.
    pub test_images: usize,
    /// Training images used.
    pub train_images: usize,
    /// Optimisation steps.
    pub steps: usize,
    /// Passes over the training images (steps · batch / images).
    pub epochs: f64,
    /// Batch size.
    pub batch_size: usize,
    /// Mean cross-entropy over the last log interval.
    pub final_train_loss: f64,
    /// Wall-clock seconds of training.
    pub train_seconds: f64,
    /// Seed.
    pub seed: u64,
}

/// Trains a [`Classifier`] (its config's channels, size and classes are taken from `train`) and
/// measures its test accuracy.
pub fn train_classifier(
    dataset: &str,
    train: &ImageData,
    test: &ImageData,
    net: &ClassifierConfig,
    cfg: &ClassifierTrainConfig,
    device: Device,
    progress: bool,
) -> Result<(nn::VarStore, Classifier, ClassifierReport)> {
    if cfg.batch_size == 0 || cfg.log_every == 0 {
        return Err(TrainError::config(
            "classifier",
            "batch_size and log_every must be ≥ 1",
        ));
    }
    if !(cfg.lr.is_finite() && cfg.lr > 0.0) {
        return Err(TrainError::config(
            "classifier.lr",
            format!("must be a positive finite number, got {}", cfg.lr),
        ));
    }
    let n_train = cfg.train_limit.map_or(train.len(), |k| k.min(train.len()));
    if n_train == 0 {
        return Err(TrainError::config(
            "classifier.train_limit",
            "no training images",
        ));
    }
    let (c, h, w) = train.chw();
    if h != w {
        return Err(TrainError::config(
            "data",
            format!("the classifier needs square images, got {h}×{w}"),
        ));
    }
    let net = ClassifierConfig {
        in_channels: c,
        image_size: h,
        num_classes: train.num_classes,
        ..net.clone()
    };
    let steps = cfg
        .steps
        .unwrap_or_else(|| (cfg.epochs * n_train).div_ceil(cfg.batch_size));
    if steps == 0 {
        return Err(TrainError::config("classifier.epochs", "must be ≥ 1"));
    }
    tch::manual_seed(cfg.seed as i64);
    let vs = nn::VarStore::new(device);
    let clf = Classifier::new(vs.root(), &net)?;
    let params = named_trainables(&vs);
    let optim = OptimConfig {
        lr: cfg.lr,
        weight_decay: cfg.weight_decay,
        warmup_steps: 0,
        grad_clip: 0.0,
        ema_decay: 0.0,
        ..OptimConfig::default()
    };
    let mut adam = Adam::new(
        params
            .iter()
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect(),
        &optim,
    );
    let mut batches = BatchSampler::new(n_train, cfg.batch_size, cfg.seed);
    let bar = progress_bar(progress, steps, 0);
    let start = Instant::now();
    let mut losses: Vec<Tensor> = Vec::with_capacity(cfg.log_every);
    let mut final_loss = f64::NAN;
    for step in 0..steps {
        tch::manual_seed(step_seed(cfg.seed, step) as i64);
        let (x_u8, y) = train.gather(&batches.indices(step));
        let x = loader::to_model_input(&x_u8, false, device);
        let loss = clf
            .forward_t(&x, true)
            .cross_entropy_for_logits(&y.to_device(device));
        adam.zero_grad();
        loss.backward();
        let lr = cfg.lr * 0.5 * (1.0 + (std::f64::consts::PI * step as f64 / steps as f64).cos());
        adam.step(lr);
        losses.push(loss.detach());
        if let Some(b) = &bar {
            b.inc(1);
        }
        if (step + 1) % cfg.log_every == 0 || step + 1 == steps {
            let vals = Vec::<f64>::try_from(
                Tensor::stack(&losses, 0)
                    .to_kind(Kind::Double)
                    .to_device(Device::Cpu),
            )?;
            if let Some(i) = vals.iter().position(|v| !v.is_finite()) {
                return Err(TrainError::NonFinite {
                    what: "loss",
                    step: step + 1 - vals.len() + i + 1,
                    value: vals[i],
                    last_checkpoint: None,
                });
            }
            final_loss = vals.iter().sum::<f64>() / vals.len() as f64;
            losses.clear();
            tracing::info!(step = step + 1, loss = final_loss, lr, "classifier");
            if let Some(b) = &bar {
                b.set_message(format!("loss {final_loss:.4}"));
            }
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let train_seconds = start.elapsed().as_secs_f64();
    let test_images = cfg.test_limit.map_or(test.len(), |k| k.min(test.len()));
    let test_accuracy = accuracy(&clf, test, test_images, device)?;
    let report = ClassifierReport {
        dataset: dataset.to_string(),
        test_accuracy,
        test_images,
        train_images: n_train,
        steps,
        epochs: (steps * cfg.batch_size) as f64 / n_train as f64,
        batch_size: cfg.batch_size,
        final_train_loss: final_loss,
        train_seconds,
        seed: cfg.seed,
    };
    tracing::info!(
        accuracy = test_accuracy,
        test_images,
        "classifier test accuracy"
    );
    Ok((vs, clf, report))
}

/// Fraction of the first `limit` images of `data` that `clf` classifies correctly (eval mode,
/// batches of 1000, one host sync).
pub fn accuracy(clf: &Classifier, data: &ImageData, limit: usize, device: Device) -> Result<f64> {
    let n = limit.min(data.len());
    if n == 0 {
        return Err(TrainError::config("data", "no images to evaluate"));
    }
    let correct = tch::no_grad(|| {
        let mut correct = Tensor::zeros([], (Kind::Int64, device));
        for start in (0..n).step_by(1000) {
            let idx: Vec<usize> = (start..(start + 1000).min(n)).collect();
            let (x_u8, y) = data.gather(&idx);
            let x = loader::to_model_input(&x_u8, false, device);
            let pred = clf.forward_t(&x, false).argmax(-1, false);
            correct += pred.eq_tensor(&y.to_device(device)).sum(Kind::Int64);
        }
        correct
    });
    Ok(correct.int64_value(&[]) as f64 / n as f64)
}

/// Saves the classifier folder: `config.json`, `model.safetensors` and [`ACCURACY_FILE`].
pub fn save_classifier(
    dir: &Path,
    vs: &nn::VarStore,
    clf: &Classifier,
    report: &ClassifierReport,
) -> Result<()> {
    save_model(dir, clf.config(), vs)?;
    write_json(&dir.join(ACCURACY_FILE), report)?;
    Ok(())
}

/// Loads a classifier folder written by [`save_classifier`] (frozen, for evaluation).
pub fn load_classifier(dir: &Path, device: Device) -> Result<(nn::VarStore, Classifier)> {
    let cfg: ClassifierConfig = read_model_config(dir)?;
    let mut vs = nn::VarStore::new(device);
    let clf = Classifier::new(vs.root(), &cfg)?;
    load_model_weights(&mut vs, dir)?;
    vs.freeze();
    Ok((vs, clf))
}

/// Reads the [`ACCURACY_FILE`] of a classifier folder.
pub fn read_report(dir: &Path) -> Result<ClassifierReport> {
    Ok(read_json(&dir.join(ACCURACY_FILE))?)
}
