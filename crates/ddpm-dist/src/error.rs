//! The crate's error type: what went wrong, on which rank, in which operation, under which timeout.
use std::fmt;
use std::time::Duration;

use crate::Backend;

/// A communication operation, as errors name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Joining the group ([`crate::ProcessGroup::init`]).
    Init,
    /// [`crate::ProcessGroup::all_reduce_sum`].
    AllReduceSum,
    /// [`crate::ProcessGroup::all_reduce_mean`].
    AllReduceMean,
    /// [`crate::ProcessGroup::all_reduce_sum_async`] (issuing it, or [`crate::Work::wait`]).
    AllReduceSumAsync,
    /// [`crate::ProcessGroup::broadcast`] from rank `root`.
    Broadcast {
        /// The rank whose values every rank receives.
        root: usize,
    },
    /// [`crate::ProcessGroup::barrier`].
    Barrier,
    /// [`crate::ProcessGroup::store_set`].
    StoreSet,
    /// [`crate::ProcessGroup::store_get`].
    StoreGet,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Init => f.write_str("init"),
            Op::AllReduceSum => f.write_str("all_reduce_sum"),
            Op::AllReduceMean => f.write_str("all_reduce_mean"),
            Op::AllReduceSumAsync => f.write_str("all_reduce_sum_async"),
            Op::Broadcast { root } => write!(f, "broadcast from rank {root}"),
            Op::Barrier => f.write_str("barrier"),
            Op::StoreSet => f.write_str("store_set"),
            Op::StoreGet => f.write_str("store_get"),
        }
    }
}

/// Errors of ddpm-dist.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// WORLD_SIZE is set but another variable of torchrun's set is not.
    #[error(
        "WORLD_SIZE is set but {name} is not (torchrun sets RANK, LOCAL_RANK, WORLD_SIZE, \
         LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT; a launch by hand must set them all)"
    )]
    MissingVar {
        /// The variable.
        name: &'static str,
    },
    /// An environment variable is set to something unusable.
    #[error("environment variable {name}={value:?} is invalid: {problem}")]
    InvalidVar {
        /// The variable.
        name: &'static str,
        /// Its value (lossily decoded when it is not UTF-8).
        value: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The backend was not compiled into this build.
    #[error(
        "the {backend} backend is not built into this ddpm-dist (it has: {built}); \
         use gloo with CPU tensors"
    )]
    BackendNotBuilt {
        /// The backend asked for.
        backend: Backend,
        /// The backends that are built, comma-separated.
        built: String,
    },
    /// The arguments of a call are wrong on this rank (a tensor that is not contiguous or not on
    /// the group's device, a root outside the group, a zero timeout, a key with a NUL byte). Found
    /// before any communication, so the other ranks are left waiting in the operation until their
    /// timeout.
    #[error("rank {rank}: {op}: {problem}")]
    InvalidArgument {
        /// This process's rank.
        rank: usize,
        /// The operation.
        op: Op,
        /// What is wrong.
        problem: String,
    },
    /// Joining the group failed: a peer did not come within the timeout, the store could not be
    /// reached or hosted, or the backend could not connect.
    #[error(
        "rank {rank} of {world_size}: joining the {backend} group through the store at \
         {store} ({host}) failed within the timeout of {timeout:?}: {message}"
    )]
    Init {
        /// This process's rank.
        rank: usize,
        /// The number of ranks.
        world_size: usize,
        /// The backend.
        backend: Backend,
        /// The store's `host:port`.
        store: String,
        /// Who hosts the store.
        host: &'static str,
        /// The rendezvous timeout.
        timeout: Duration,
        /// c10d's message.
        message: String,
    },
    /// A collective failed: a peer died (the connection was closed or reset), a peer did not take
    /// part within the timeout, or the ranks disagree about the operation (shapes, dtypes, order).
    #[error("rank {rank} of {world_size}: {op} failed (timeout {timeout:?}): {message}")]
    Collective {
        /// This process's rank.
        rank: usize,
        /// The number of ranks.
        world_size: usize,
        /// The operation.
        op: Op,
        /// The group's timeout.
        timeout: Duration,
        /// c10d's or Gloo's message.
        message: String,
    },
    /// A store operation failed: the key was not set within the timeout, or the store is gone.
    #[error("rank {rank}: {op} of key {key:?} failed (timeout {timeout:?}): {message}")]
    Store {
        /// This process's rank.
        rank: usize,
        /// [`Op::StoreSet`] or [`Op::StoreGet`].
        op: Op,
        /// The key (as the caller named it, without the group's prefix).
        key: String,
        /// The group's timeout.
        timeout: Duration,
        /// c10d's message.
        message: String,
    },
}

/// `Result` with [`DistError`].
pub type Result<T> = std::result::Result<T, DistError>;
