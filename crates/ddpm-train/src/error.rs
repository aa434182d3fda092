//! The error type of ddpm-train.
use std::path::PathBuf;

/// Errors of configuration, data, training, checkpoints and sampling.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A configuration value is missing, misspelt or out of range.
    #[error("config `{key}`: {message}")]
    Config {
        /// The dotted key (e.g. `optim.lr`).
        key: String,
        /// What is wrong.
        message: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A dataset problem.
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    /// A network or network-file problem.
    #[error(transparent)]
    Net(#[from] ddpm_nets::Error),
    /// A diffusion-math problem.
    #[error(transparent)]
    Math(#[from] ddpm_math::Error),
    /// A libtorch error.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// The loss became NaN or infinite.
    #[error("non-finite {what} ({value}) at step {step}{}; {}", rank.map(|r| format!(" on rank {r}")).unwrap_or_default(), last_checkpoint.as_ref().map(|p| format!("the last good checkpoint is kept ({})", p.display())).unwrap_or_else(|| "no checkpoint was written before it".into()))]
    NonFinite {
        /// `loss` or `weights`.
        what: &'static str,
        /// Step at which it was observed.
        step: usize,
        /// The loss value.
        value: f64,
        /// The newest checkpoint on disk.
        last_checkpoint: Option<PathBuf>,
        /// The data-parallel rank that saw it first (`None`: a single-process run).
        rank: Option<usize>,
    },
    /// A sampling chain produced NaN or infinite values.
    #[error(
        "the sampling chain became non-finite (NaN or infinite) at step {step} of {steps} \
         (timestep {timestep}); no images were written"
    )]
    SamplingNonFinite {
        /// The 1-based step at which it first appeared.
        step: usize,
        /// The chain's length.
        steps: usize,
        /// The step's original timestep.
        timestep: usize,
    },
    /// A sampling chain stopped on request (see `Sampler::stop_on`) before reaching x_0.
    #[error("sampling stopped on request after {step} of {steps} steps")]
    Stopped {
        /// The steps done.
        step: usize,
        /// The chain's length.
        steps: usize,
    },
    /// Scoring samples during training failed.
    #[error("evaluation at step {step}: {message}")]
    Eval {
        /// The step evaluated.
        step: usize,
        /// What went wrong.
        message: String,
    },
    /// A checkpoint or run directory does not fit what is asked of it.
    #[error("{path}: {message}")]
    Checkpoint {
        /// The checkpoint or run directory.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A TensorBoard event file that does not read back: a record that fails its CRC-32C check,
    /// is cut short or is not an event.
    #[error("{path}: {message} (record at byte {offset})")]
    EventFile {
        /// The event file.
        path: PathBuf,
        /// The offset of the record.
        offset: u64,
        /// What is wrong.
        message: String,
    },
    /// Another rank of a data-parallel run failed, and this one stops with it.
    #[error("rank {rank} failed: {message}")]
    RankFailed {
        /// The rank that failed.
        rank: usize,
        /// Its error.
        message: String,
    },
    /// Communication between the processes of a data-parallel run failed (a peer died or
    /// stalled past the timeout).
    #[error("{}{source}", step.map(|s| format!("training step {s}: ")).unwrap_or_default())]
    Dist {
        /// The training step (1-based) during which it failed, when known.
        step: Option<usize>,
        /// What failed (naming this rank, the operation and the timeout).
        #[source]
        source: ddpm_dist::DistError,
    },
    /// A device that cannot be had.
    #[error(transparent)]
    Device(#[from] ddpm_nets::device::DeviceError),
}

impl TrainError {
    /// A [`TrainError::Config`] for `key`.
    pub fn config(key: &str, message: impl Into<String>) -> Self {
        Self::Config {
            key: key.to_string(),
            message: message.into(),
        }
    }

    /// A [`TrainError::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}

impl From<ddpm_dist::DistError> for TrainError {
    fn from(source: ddpm_dist::DistError) -> Self {
        Self::Dist { step: None, source }
    }
}

impl TrainError {
    /// This error, with the training step (1-based) during which a collective failed.
    pub fn at_step(self, step: usize) -> Self {
        match self {
            Self::Dist { step: None, source } => Self::Dist {
                step: Some(step),
                source,
            },
            other => other,
        }
    }
}

impl From<ddpm_nets::atomic::WriteError> for TrainError {
    fn from(e: ddpm_nets::atomic::WriteError) -> Self {
        Self::Io {
            path: e.path,
            source: e.source,
        }
    }
}

/// Result type of ddpm-train.
pub type Result<T> = std::result::Result<T, TrainError>;
