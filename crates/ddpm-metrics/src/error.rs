//! The error type of ddpm-metrics: one enum, with the file path in every I/O error.
//!
//! A leaf of the crate's module graph: it imports only [`crate::inception_files`], which imports
//! nothing.
use std::path::PathBuf;

use crate::inception_files::{FULL_SHA256, POOL3_SHA256};

/// Everything that can go wrong while computing FID / IS and their inputs.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// Reading or writing a plain file or folder failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An HDF5 operation on a file failed.
    #[error("{path}: {what}: {source}")]
    Hdf5 {
        /// The HDF5 file.
        path: PathBuf,
        /// What was being done (e.g. "reading dataset /test/images").
        what: String,
        /// The underlying error.
        source: hdf5::Error,
    },
    /// libtorch reported an error (loading or running the network).
    #[error("{what}: {source}")]
    Torch {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: tch::TchError,
    },
    /// The Inception weights file does not exist. (How to get it is the caller's to say: the
    /// command line adds the command that installs it.)
    #[error("{path}: Inception weights not found", path = path.display())]
    MissingInception {
        /// The file that was looked for.
        path: PathBuf,
    },
    /// A TorchScript file that is neither of the two known FID Inception networks.
    #[error("{path}: not a known FID Inception network ({reason}); expected NVIDIA's inception-2015-12-05.pt (sha256 {full}) or fid-inception-pool3.pt (sha256 {pool3})", full = FULL_SHA256, pool3 = POOL3_SHA256)]
    UnknownInception {
        /// The file.
        path: PathBuf,
        /// What did not match.
        reason: String,
    },
    /// The Inception Score was asked of a network without a classification layer.
    #[error("the Inception Score needs the full NVIDIA Inception `inception-2015-12-05.pt` (sha256 {full}, 1008-class logits); {path} is the pool3-only FID network, which has no classification layer", full = FULL_SHA256)]
    IsNeedsFullInception {
        /// The pool3-only file that was given.
        path: PathBuf,
    },
    /// Image data of an unusable shape or layout.
    #[error("{0}")]
    BadImages(String),
    /// An image-source string that names nothing usable.
    #[error("image source `{source_str}`: {reason}")]
    BadSource {
        /// The source as the user wrote it.
        source_str: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// Matrices or vectors whose shapes do not fit together, or too few samples.
    #[error("{0}")]
    Shape(String),
    /// Numbers that are not what the metric needs (NaN, negative probabilities, ...).
    #[error("{0}")]
    InvalidValue(String),
    /// The digit classifier of FID_cls / IS_cls is not where it was looked for. (How to create one
    /// is the caller's to say: the command line adds the command that trains it.)
    #[error("no digit classifier at {dir} (config.json + model.safetensors)", dir = dir.display())]
    MissingClassifier {
        /// The folder that was looked in.
        dir: PathBuf,
    },
    /// Loading a model through ddpm-train (the digit classifier) failed.
    #[error(transparent)]
    Train(#[from] ddpm_train::TrainError),
}

impl From<ddpm_nets::atomic::WriteError> for MetricsError {
    fn from(e: ddpm_nets::atomic::WriteError) -> Self {
        Self::io(e.path, e.source)
    }
}

impl From<ddpm_train::data::DataError> for MetricsError {
    fn from(e: ddpm_train::data::DataError) -> Self {
        Self::Train(e.into())
    }
}

/// `Result` with [`MetricsError`].
pub type Result<T> = std::result::Result<T, MetricsError>;

impl MetricsError {
    /// Wraps an HDF5 error with the file and what was being done.
    pub(crate) fn hdf5(
        path: impl Into<PathBuf>,
        what: impl Into<String>,
        source: hdf5::Error,
    ) -> Self {
        Self::Hdf5 {
            path: path.into(),
            what: what.into(),
            source,
        }
    }

    /// Wraps a libtorch error with what was being done.
    pub(crate) fn torch(what: impl Into<String>, source: tch::TchError) -> Self {
        Self::Torch {
            what: what.into(),
            source,
        }
    }

    /// Wraps an I/O error with its path.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
