//! Where the evaluation networks live by default (`datasets/weights/…`, relative to the working
//! folder), and loading them so that a missing file says how to create it. ddpm-metrics takes
//! the paths as arguments and knows neither the defaults nor the commands.
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};
use ddpm_metrics::domain::DomainClassifier;
use ddpm_metrics::{Inception, MetricsError};
use tch::Device;

/// NVIDIA's full Inception (FID and IS), where `cargo xtask fetch-weights` installs it.
pub const FULL_INCEPTION: &str = "datasets/weights/inception-2015-12-05.pt";
/// The pool3-only Inception (FID), where `cargo xtask fetch-weights` installs it.
pub const POOL3_INCEPTION: &str = "datasets/weights/fid-inception-pool3.pt";
/// The command that installs the Inception weights.
pub const FETCH_WEIGHTS_COMMAND: &str = "cargo xtask fetch-weights";
/// Where `ddpm-cli train-classifier --dataset mnist` saves the MNIST classifier.
pub const DEFAULT_MNIST_CLASSIFIER: &str = "datasets/weights/classifier-mnist";
/// The command that creates the default MNIST classifier.
pub const TRAIN_CLASSIFIER_COMMAND: &str = "ddpm-cli train-classifier --dataset mnist";

/// Where `ddpm-cli train-classifier` saves the classifier of `dataset` by default.
pub fn default_classifier_dir(dataset: &str) -> PathBuf {
    PathBuf::from("datasets/weights").join(format!("classifier-{dataset}"))
}

/// Loads the digit classifier folder `dir` onto `device`. A missing one is an error naming the
/// folder, the command that creates it and `option`, the setting that chooses another folder.
pub fn load_classifier(dir: &Path, device: Device, option: &str) -> Result<DomainClassifier> {
    DomainClassifier::load(dir, device).map_err(|e| match e {
        MetricsError::MissingClassifier { .. } => anyhow!(
            "{e}: create it with `{TRAIN_CLASSIFIER_COMMAND}` or pass the folder of another one ({option})"
        ),
        e => anyhow::Error::new(e).context(format!("{option} {}", dir.display())),
    })
}

/// Loads the TorchScript Inception `path` onto `device`. A missing file is an error naming it,
/// the command that installs the weights and `option`, the setting that chooses another file.
pub fn load_inception(path: &Path, device: Device, option: &str) -> Result<Inception> {
    Inception::load(path, device).map_err(|e| match e {
        MetricsError::MissingInception { .. } => {
            anyhow!("{e}: run `{FETCH_WEIGHTS_COMMAND}` or pass {option}")
        }
        e => anyhow::Error::new(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_classifier_names_the_folder_and_the_command() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("no-classifier");
        let err = load_classifier(&dir, Device::Cpu, "--classifier DIR")
            .unwrap_err()
            .to_string();
        assert!(err.contains(TRAIN_CLASSIFIER_COMMAND), "{err}");
        assert!(err.contains(&dir.display().to_string()), "{err}");
        assert!(err.contains("--classifier DIR"), "{err}");
    }

    #[test]
    fn missing_inception_names_the_file_and_the_command() {
        let path = Path::new("/nonexistent/fid-inception-pool3.pt");
        let err = load_inception(path, Device::Cpu, "--inception FILE")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/nonexistent/fid-inception-pool3.pt")
                && err.contains(FETCH_WEIGHTS_COMMAND),
            "{err}"
        );
    }

    #[test]
    fn default_mnist_classifier_is_the_train_classifier_default() {
        assert_eq!(
            default_classifier_dir("mnist"),
            PathBuf::from(DEFAULT_MNIST_CLASSIFIER)
        );
    }
}
