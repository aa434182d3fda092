//! Training the digit classifier of the domain metrics through the engine: cross-entropy of its
//! logits, Adam with a half-cosine learning rate, then the test accuracy. Logged: `loss`
//! (cross-entropy, nats). Checkpoint groups: `model`, `optim`.
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use ddpm_nets::classifier::{Classifier, ClassifierConfig};
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Tensor};

use crate::classifier::{accuracy, ClassifierReport};
use crate::config::{LrSchedule, OptimConfig};
use crate::engine::{
    self, scaled, split_rows, LoopSettings, Metric, MicroBatches, Plot, Probe, RunTarget,
    StateGroup, StepMetrics, TrainOptions, TrainSummary, TrainTask,
};
use crate::error::{Result, TrainError};
use crate::loader::ImageData;
use crate::optim::Adam;
use crate::parallel::DataParallel;

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
    /// Steps between checkpoints of the run (0: only at the end and on stop).
    pub checkpoint_every: usize,
    /// Write TensorBoard event files in `RUN/tensorboard/` (rank 0 only).
    pub tensorboard: bool,
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
            checkpoint_every: 0,
            tensorboard: true,
        }
    }
}

/// What `config.toml` of a classifier run holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifierRunConfig {
    /// Dataset name or path (recorded in the report).
    pub dataset: String,
    /// The HDF5 file trained on (a resumed run reads it again).
    pub data: std::path::PathBuf,
    /// The network (channels, size and classes are taken from the training images).
    pub net: ClassifierConfig,
    /// The training settings.
    pub train: ClassifierTrainConfig,
}

impl ClassifierRunConfig {
    /// The TOML text of `config.toml`.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a classifier run config always serialises")
    }

    /// The config of the classifier run in `dir` (its `config.toml`).
    ///
    /// # Errors
    /// A missing or unreadable file, or one that is not a classifier run's, naming the file.
    pub fn from_run_dir(dir: &Path) -> Result<Self> {
        let path = crate::run_dir::RunDir::open(dir)?.path.join("config.toml");
        let text = std::fs::read_to_string(&path).map_err(TrainError::io(&path))?;
        toml::from_str(&text).map_err(|e| TrainError::Checkpoint {
            path,
            message: format!("not a classifier run's config: {}", e.message()),
        })
    }
}

/// A trained classifier, its report and how the run ended.
#[derive(Debug)]
pub struct TrainedClassifier {
    /// Its variables.
    pub vs: nn::VarStore,
    /// The network on `vs`.
    pub net: Classifier,
    /// Test accuracy and training facts; `None` when the run was stopped before its last step
    /// (the test set is then not evaluated), and on the ranks other than 0 of a data-parallel run.
    pub report: Option<ClassifierReport>,
    /// The engine's summary (steps, interrupted, newest checkpoint).
    pub summary: TrainSummary,
}

/// Trains a [`Classifier`] (its config's channels, size and classes are taken from `train`)
/// through the training engine in the run directory `dir` (new, or continued when `resume`),
/// then measures its test accuracy on `test`.
///
/// # Errors
/// Invalid settings (naming the `classifier.*` key), non-square images, run-directory problems,
/// a non-finite loss (naming the step).
pub fn train_classifier(
    dir: &Path,
    resume: bool,
    run: &ClassifierRunConfig,
    train: &ImageData,
    test: &ImageData,
    device: Device,
    opts: &TrainOptions,
) -> Result<TrainedClassifier> {
    let cfg = &run.train;
    let n_train = check_settings(cfg, train)?;
    let (c, h, _) = train.chw();
    let net = ClassifierConfig {
        in_channels: c,
        image_size: h,
        num_classes: train.num_classes,
        ..run.net.clone()
    };
    let steps = cfg
        .steps
        .unwrap_or_else(|| (cfg.epochs * n_train).div_ceil(cfg.batch_size));
    if steps == 0 {
        return Err(TrainError::config("classifier.epochs", "must be ≥ 1"));
    }
    let optim = OptimConfig {
        lr: cfg.lr,
        weight_decay: cfg.weight_decay,
        warmup_steps: 0,
        lr_schedule: LrSchedule::Cosine,
        grad_clip: 0.0,
        ema_decay: 0.0,
        ..OptimConfig::default()
    };
    let mut task = ClassifierTask::new(&net, &optim, cfg.seed, device)?;
    let settings = LoopSettings {
        steps,
        seed: cfg.seed,
        batch_size: cfg.batch_size,
        grad_accum: 1,
        data_limit: Some(n_train),
        pad_to_32: false,
        random_flip: false,
        optim,
        log_every: cfg.log_every,
        checkpoint_every: cfg.checkpoint_every,
        keep_checkpoints: 1,
        sample_every: 0,
        sample_num: 0,
        eval_every: 0,
        eval_samples: 0,
        eval_setting: String::new(),
        time_limit_secs: None,
        tensorboard: cfg.tensorboard,
    };
    let target = RunTarget {
        dir,
        resume,
        config_toml: run.to_toml(),
        files: Vec::new(),
    };
    let summary = engine::train(&mut task, target, &settings, train, opts)?;
    // Rank 0 alone tests the trained network (the ranks hold the same weights).
    let follower = opts.parallel.as_ref().is_some_and(|p| !p.is_root());
    let report = if summary.interrupted || follower {
        None
    } else {
        Some(evaluate(&task.net, run, n_train, test, &summary, device)?)
    };
    Ok(TrainedClassifier {
        vs: task.vs,
        net: task.net,
        report,
        summary,
    })
}

/// The report of a finished run: test accuracy on the first `test_limit` test images and the
/// training facts.
fn evaluate(
    net: &Classifier,
    run: &ClassifierRunConfig,
    n_train: usize,
    test: &ImageData,
    summary: &TrainSummary,
    device: Device,
) -> Result<ClassifierReport> {
    let cfg = &run.train;
    let test_images = cfg.test_limit.map_or(test.len(), |k| k.min(test.len()));
    let test_accuracy = accuracy(net, test, test_images, device)?;
    tracing::info!(
        accuracy = test_accuracy,
        test_images,
        "classifier test accuracy"
    );
    Ok(ClassifierReport {
        dataset: run.dataset.clone(),
        test_accuracy,
        test_images,
        train_images: n_train,
        steps: summary.step,
        epochs: (summary.step * cfg.batch_size) as f64 / n_train as f64,
        batch_size: cfg.batch_size,
        final_train_loss: summary.last_loss,
        train_seconds: summary.elapsed_secs,
        seed: cfg.seed,
    })
}

/// Checks the settings against the training images; returns the number of images used.
fn check_settings(cfg: &ClassifierTrainConfig, train: &ImageData) -> Result<usize> {
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
    let (_, h, w) = train.chw();
    if h != w {
        return Err(TrainError::config(
            "data",
            format!("the classifier needs square images, got {h}×{w}"),
        ));
    }
    Ok(n_train)
}

/// A classifier step's batch.
#[derive(Debug)]
pub struct LabelledBatch {
    /// Images `[N, C, H, W]` in [−1, 1].
    pub x: Tensor,
    /// Class indices `[N]` (int64, on the device).
    pub y: Tensor,
}

impl MicroBatches for LabelledBatch {
    fn split(self, k: usize) -> Vec<Self> {
        split_rows(&self.x, k)
            .into_iter()
            .zip(split_rows(&self.y, k))
            .map(|(x, y)| Self { x, y })
            .collect()
    }
}

const METRICS: [Metric; 1] = [Metric::loss("loss", Plot::Linear)];

/// The classifier training task.
pub struct ClassifierTask {
    /// Its variables.
    pub vs: nn::VarStore,
    /// The network.
    pub net: Classifier,
    adam: Adam,
    device: Device,
    metrics: StepMetrics,
}

impl ClassifierTask {
    /// A fresh network of `net` (weights from `seed`) with Adam of `optim` (the learning rate
    /// itself comes from the engine's schedule each step).
    pub fn new(
        net: &ClassifierConfig,
        optim: &OptimConfig,
        seed: u64,
        device: Device,
    ) -> Result<Self> {
        tch::manual_seed(seed as i64);
        let vs = nn::VarStore::new(device);
        let clf = Classifier::new(vs.root(), net)?;
        Ok(Self {
            adam: Adam::for_store(&vs, optim),
            vs,
            net: clf,
            device,
            metrics: StepMetrics::default(),
        })
    }
}

impl TrainTask for ClassifierTask {
    type Batch = LabelledBatch;

    fn name(&self) -> &'static str {
        "digit classifier"
    }

    fn metrics(&self) -> &'static [Metric] {
        &METRICS
    }

    fn device(&self) -> Device {
        self.device
    }

    fn prepare(&mut self, x: Tensor, labels: Tensor, _step: usize) -> Result<LabelledBatch> {
        Ok(LabelledBatch {
            x,
            y: labels.to_device(self.device),
        })
    }

    fn zero_grad(&mut self, _phase: usize) {
        self.adam.zero_grad();
    }

    fn forward_backward(
        &mut self,
        _phase: usize,
        b: &LabelledBatch,
        scale: f64,
        probe: &mut Probe,
    ) -> Result<()> {
        let loss = self
            .net
            .forward_t(&b.x, true)
            .cross_entropy_for_logits(&b.y);
        probe.mark("forward_loss");
        scaled(&loss, scale).backward();
        probe.mark("backward");
        self.metrics.add(0, &scaled(&loss, scale));
        Ok(())
    }

    fn optimizer(&mut self, _phase: usize) -> &mut Adam {
        &mut self.adam
    }

    fn optimize(&mut self, _phase: usize, lr: f64, probe: &mut Probe) -> Result<()> {
        let _ = self.adam.clipped_step(0.0, lr);
        probe.mark("adam");
        Ok(())
    }

    fn finish_step(&mut self, _step: usize, _par: Option<&DataParallel>) -> Result<Tensor> {
        Ok(self.metrics.take(METRICS.len(), self.device))
    }

    fn state_groups(&mut self) -> Vec<(&'static str, StateGroup<'_>)> {
        vec![
            ("model", StateGroup::Vars(&mut self.vs)),
            ("optim", StateGroup::Optimizer(&mut self.adam)),
        ]
    }

    fn sample_images(
        &self,
        _n: usize,
        _seed: u64,
        _stop: &Arc<AtomicBool>,
    ) -> Result<Option<Tensor>> {
        Ok(None)
    }
}
