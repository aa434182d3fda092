//! Joining a data-parallel job (torchrun's variables, see `ddpm_dist::DistEnv`) for the training
//! commands: which backend and device a rank uses, how many CPU threads, and the process group.
use std::time::Duration;

use anyhow::Result;
use ddpm_dist::{Backend, DistEnv, ProcessGroup};
use ddpm_train::parallel::DataParallel;
use tch::Device;

/// How long a rank waits for the others by default (torch.distributed's default too).
pub const DEFAULT_TIMEOUT_SECS: u64 = 1800;
/// The longest `--dist-timeout`: 30 days (c10d counts the timeout in nanoseconds in places, which
/// overflows near 292 years; no job needs more than this).
pub const MAX_TIMEOUT_SECS: u64 = 30 * 24 * 3600;

/// The message of the first Ctrl-C / SIGTERM of a training: in a job, every rank stops at the end
/// of the log window in which the request arrived.
pub fn stop_message(in_job: bool) -> &'static str {
    if in_job {
        "every rank stops at the end of this log window, with a checkpoint"
    } else {
        "stopping after this step with a checkpoint"
    }
}

/// Whether this process is rank 0 of a job, or runs alone: the one that writes and reports.
pub fn is_root(env: Option<&DistEnv>) -> bool {
    env.is_none_or(|e| e.rank == 0)
}

/// Joins the job of `env`. `device` becomes `cuda:LOCAL_RANK` when it was a CUDA device (NCCL),
/// else stays the CPU (Gloo). Unless the command set its own thread count (`own_threads`), the
/// CPU threads become `OMP_NUM_THREADS` (torchrun sets 1) or this machine's CPUs shared among its
/// ranks.
///
/// # Errors
/// A backend that is not built (NCCL), a rendezvous that fails or times out (naming the store
/// and the rank).
pub fn join(
    env: &DistEnv,
    device: &mut Device,
    own_threads: bool,
    timeout_secs: u64,
) -> Result<DataParallel> {
    let backend = if device.is_cuda() {
        Backend::Nccl
    } else {
        Backend::Gloo
    };
    *device = backend.device(env.local_rank);
    if !own_threads {
        let omp = std::env::var("OMP_NUM_THREADS")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|&n| n > 0);
        let share = ddpm_nets::cpu_threads::available_cpus() / env.local_world_size.max(1);
        tch::set_num_threads(omp.unwrap_or(share).max(1) as i32);
    }
    tracing::info!(
        rank = env.rank,
        world_size = env.world_size,
        local_rank = env.local_rank,
        backend = %backend,
        store = %format!("{}:{}", env.master_addr, env.master_port),
        cpu_threads = tch::get_num_threads(),
        "joining the data-parallel job"
    );
    let group = ProcessGroup::init(env, backend, Duration::from_secs(timeout_secs))?;
    let parallel = DataParallel::new(group);
    // DDPM_DIST_BUCKET_KB: the gradient bucket size (PyTorch DDP's bucket_cap_mb), default 25 MB.
    Ok(match std::env::var("DDPM_DIST_BUCKET_KB") {
        Err(_) => parallel,
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(kb) if kb > 0 => parallel.with_bucket_bytes(kb << 10),
            _ => anyhow::bail!("DDPM_DIST_BUCKET_KB={v:?}: expected a whole number of KiB ≥ 1"),
        },
    })
}
