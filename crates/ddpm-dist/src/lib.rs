//! Data-parallel communication for ddpm-rs on PyTorch's own c10d: the `TCPStore` rendezvous and
//! `ProcessGroupGloo` of the libtorch that tch links, through a small C++ shim (`shim/`).
//!
//! A job is launched the way torch.distributed's are — `torchrun --nproc-per-node N --no-python
//! BINARY …`, or any launcher that sets torchrun's variables — and each process then does:
//!
//! ```no_run
//! use std::time::Duration;
//! use ddpm_dist::{Backend, DistEnv, ProcessGroup};
//!
//! # fn main() -> ddpm_dist::Result<()> {
//! if let Some(env) = DistEnv::from_env()? {
//!     let group = ProcessGroup::init(&env, Backend::Gloo, Duration::from_secs(600))?;
//!     let mut grads = tch::Tensor::ones([1000], (tch::Kind::Float, tch::Device::Cpu));
//!     group.all_reduce_mean(&mut grads)?; // the same values on every rank
//!     group.barrier()?;
//! }
//! # Ok(())
//! # }
//! ```
//!
//! * [`DistEnv`]: the torchrun variables (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`,
//!   `MASTER_ADDR`, `MASTER_PORT`, `TORCHELASTIC_USE_AGENT_STORE`, …), parsed and checked.
//! * [`ProcessGroup`]: joining, in-place collectives on contiguous tensors (sum, mean, broadcast,
//!   barrier, an asynchronous sum returning a [`Work`]) and the job's key-value store.
//! * [`DistError`]: a peer that dies, stalls past the timeout or never joins is an error naming
//!   this rank, the operation and the timeout — not a hang, not an abort. The shim turns every C++
//!   exception into an error (and blocks SIGPIPE on the threads it and c10d run, so that a write to
//!   a dead peer's socket cannot kill a process whose SIGPIPE has its default action).
//!
//! Gloo (CPU tensors) is always built; [`Backend::Nccl`] (CUDA tensors, one device per rank) where
//! the libtorch has CUDA and the build found NCCL's headers — otherwise it reports
//! [`DistError::BackendNotBuilt`].
mod env;
mod error;
mod ffi;
mod group;

pub use env::DistEnv;
pub use error::{DistError, Op, Result};
pub use group::{Backend, ProcessGroup, Work};
