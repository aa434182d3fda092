//! The error type of ddpm-nets: configuration, checkpoint I/O and tensor-name mismatches.
use std::path::PathBuf;

/// Errors of building, loading and saving networks.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A JSON config could not be parsed or written.
    #[error("{path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: serde_json::Error,
    },
    /// A config option that this crate does not implement.
    #[error("unsupported option `{key}` = {value}: {supported}")]
    Unsupported {
        /// The config key.
        key: String,
        /// Its value, as JSON.
        value: String,
        /// What is supported instead.
        supported: String,
    },
    /// A config whose values contradict each other or the architecture.
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    /// Variables of the network that the checkpoint does not hold.
    #[error("{path}: missing tensor(s) {}", list(names))]
    MissingTensors {
        /// The checkpoint.
        path: PathBuf,
        /// The missing names.
        names: Vec<String>,
    },
    /// Tensors of the checkpoint that the network does not have.
    #[error("{path}: unexpected tensor(s) {}", list(names))]
    UnexpectedTensors {
        /// The checkpoint.
        path: PathBuf,
        /// The names without a variable.
        names: Vec<String>,
    },
    /// A tensor whose shape differs from the network's variable.
    #[error("{path}: tensor `{name}` has shape {found:?}, the network expects {expected:?}")]
    ShapeMismatch {
        /// The checkpoint.
        path: PathBuf,
        /// The tensor name.
        name: String,
        /// The variable's shape.
        expected: Vec<i64>,
        /// The checkpoint's shape.
        found: Vec<i64>,
    },
    /// A forward pass was called with inputs that do not fit the network.
    #[error("bad input: {0}")]
    BadInput(String),
    /// An error reported by libtorch.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    /// A file that libtorch could not turn into tensors (e.g. a safetensors dtype it lacks).
    #[error("{path}: {source}")]
    TorchFile {
        /// The file.
        path: PathBuf,
        /// What libtorch reported.
        source: tch::TchError,
    },
}

/// Results of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Formats up to 10 names, then a count of the rest.
fn list(names: &[String]) -> String {
    const SHOWN: usize = 10;
    let mut s = names
        .iter()
        .take(SHOWN)
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        s.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    s
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
