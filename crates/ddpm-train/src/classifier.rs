//! The domain classifier of the evaluation (FID_cls / IS_cls on MNIST and Fashion-MNIST): training
//! ddpm-nets' `Classifier` on an HDF5 split through the training engine ([`crate::tasks::classifier`]: a run
//! directory with checkpoints, exact resume), test accuracy, and the model folder that ddpm-metrics loads
//! (`config.json` + `model.safetensors` + `accuracy.json`).
use std::path::Path;

use ddpm_nets::checkpoint::{
    load_model_weights, read_json, read_model_config, save_model, write_json,
};
use ddpm_nets::classifier::{Classifier, ClassifierConfig};
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use crate::error::{Result, TrainError};
use crate::loader::{self, ImageData};

/// The file beside the weights that records how the classifier was trained and its test accuracy.
pub const ACCURACY_FILE: &str = "accuracy.json";

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
