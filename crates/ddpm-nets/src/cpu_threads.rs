//! How libtorch's CPU threads share the machine with other jobs.
//!
//! libtorch (the PyPI build) runs its intra-op parallel regions, oneDNN's included, on GNU OpenMP
//! (`libgomp`). By default an idle libgomp worker spin-waits for the next parallel region (up to
//! `GOMP_SPINCOUNT`, 300,000 iterations) before it sleeps. On a quiet machine that saves a wake-up per
//! region; on a machine that other jobs load, the spinning workers take the cores from the one thread
//! that still has work, and from the other jobs. Measured on a 2-core machine with two busy-loop
//! competitors (`ddpm-cli bench --preset mnist-cpu --steps 5 --background-load 2`, 3 interleaved
//! pairs): a training step took 2.7× as long with the spinning default as with passive waiting
//! (medians 5.60 s and 2.09 s), at the same 2 threads.
//!
//! Two decisions, both overridable:
//! - **Wait policy.** libgomp reads `OMP_WAIT_POLICY` once, when it is loaded, before `main`. So
//!   `ddpm-cli` restarts itself (`execve` of its own binary, same PID, same arguments) with
//!   `OMP_WAIT_POLICY=PASSIVE` when neither `OMP_WAIT_POLICY` (with a value libgomp accepts) nor
//!   `GOMP_SPINCOUNT` is set
//!   ([`restart_env`]). Setting either one (e.g. `OMP_WAIT_POLICY=ACTIVE`) keeps the user's choice and
//!   skips the restart.
//! - **Thread count.** Without `--threads` (or `run.cpu_threads`), the intra-op threads are the CPUs this
//!   process may actually use ([`available_cpus`]: its affinity mask and its cgroup CPU quota), not the
//!   machine's count, which libgomp would take from the affinity mask alone.
//!
//! The same restart sets `TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1` (when unset): libtorch then runs f32
//! matrix products on CUDA in TF32, as PyTorch does with `torch.backends.cuda.matmul.allow_tf32 = True`
//! (cuDNN convolutions use TF32 by default already). `TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=0` keeps full f32.

/// The OpenMP variable of the wait policy (OpenMP 5.2, section 21.2.4).
pub const WAIT_POLICY_VAR: &str = "OMP_WAIT_POLICY";
/// libgomp's own spin count; setting it is also a choice of wait behaviour that we keep.
pub const SPIN_COUNT_VAR: &str = "GOMP_SPINCOUNT";
/// The policy `ddpm-cli` starts libgomp with.
pub const PASSIVE: &str = "PASSIVE";
/// libtorch's switch for TF32 in cuBLAS matrix products (read on first use).
pub const TF32_VAR: &str = "TORCH_ALLOW_TF32_CUBLAS_OVERRIDE";
/// Set by the restart, so that a process can tell who chose its wait policy.
pub const RESTARTED_VAR: &str = "DDPM_CPU_POLICY_RESTARTED";

/// The variables to set before restarting, or `None` when the process must not restart: the user
/// chose a wait policy (`OMP_WAIT_POLICY` or `GOMP_SPINCOUNT` set), or this process is already the
/// restarted one. `env` reads an environment variable.
pub fn restart_env(
    env: impl Fn(&str) -> Option<String>,
) -> Option<Vec<(&'static str, &'static str)>> {
    if env(RESTARTED_VAR).is_some() || env(SPIN_COUNT_VAR).is_some() {
        return None;
    }
    // A value libgomp rejects (it warns and spins) is no choice: it is replaced.
    if env(WAIT_POLICY_VAR).is_some_and(|v| is_valid_wait_policy(&v)) {
        return None;
    }
    let mut vars = vec![(WAIT_POLICY_VAR, PASSIVE), (RESTARTED_VAR, "1")];
    if env(TF32_VAR).is_none() {
        vars.push((TF32_VAR, "1"));
    }
    Some(vars)
}

/// Whether libgomp accepts `value` for `OMP_WAIT_POLICY` (`ACTIVE` or `PASSIVE`, any case, blanks
/// around allowed).
pub fn is_valid_wait_policy(value: &str) -> bool {
    let v = value.trim();
    v.eq_ignore_ascii_case("active") || v.eq_ignore_ascii_case("passive")
}

/// How this process's OpenMP threads wait, and who decided it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WaitPolicy {
    /// `OMP_WAIT_POLICY` as libgomp read it (`None`: unset, libgomp's spin-then-sleep default).
    pub omp_wait_policy: Option<String>,
    /// `GOMP_SPINCOUNT`, when set.
    pub gomp_spincount: Option<String>,
    /// `ddpm-cli` (it restarted itself with the policy), `environment` (the user's), or `libgomp
    /// default`.
    pub set_by: &'static str,
}

impl WaitPolicy {
    /// Reads the policy from this process's environment.
    pub fn current() -> Self {
        Self::from_env(|k| std::env::var(k).ok())
    }

    fn from_env(env: impl Fn(&str) -> Option<String>) -> Self {
        let omp_wait_policy = env(WAIT_POLICY_VAR);
        let gomp_spincount = env(SPIN_COUNT_VAR);
        let set_by = if env(RESTARTED_VAR).is_some() && omp_wait_policy.as_deref() == Some(PASSIVE)
        {
            "ddpm-cli"
        } else if omp_wait_policy.is_some() || gomp_spincount.is_some() {
            "environment"
        } else {
            "libgomp default"
        };
        Self {
            omp_wait_policy,
            gomp_spincount,
            set_by,
        }
    }
}

/// The CPUs this process may run on: its affinity mask (`taskset`, `numactl`, a container's
/// `--cpuset-cpus`) capped by its cgroup CPU quota (`cpu.max`, `docker --cpus`), at least 1. This is
/// `std::thread::available_parallelism`, which reads both.
pub fn available_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Sets libtorch's intra-op threads: `requested` when given, else [`available_cpus`]. Returns the count.
pub fn set_threads(requested: Option<usize>) -> usize {
    let n = requested.unwrap_or_else(available_cpus).max(1);
    tch::set_num_threads(n as i32);
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn restarts_only_when_no_one_chose_a_policy() {
        let vars = restart_env(env_of(&[])).expect("nothing set: restart");
        assert!(vars.contains(&(WAIT_POLICY_VAR, PASSIVE)));
        assert!(vars.contains(&(TF32_VAR, "1")));
        assert!(vars.iter().any(|(k, _)| *k == RESTARTED_VAR));
        for bad in ["", "fast", "passive;x"] {
            assert!(
                restart_env(env_of(&[(WAIT_POLICY_VAR, bad)])).is_some(),
                "{bad:?}"
            );
        }
        for set in [
            (WAIT_POLICY_VAR, "ACTIVE"),
            (WAIT_POLICY_VAR, " passive "),
            (SPIN_COUNT_VAR, "1000"),
            (RESTARTED_VAR, "1"),
        ] {
            assert_eq!(restart_env(env_of(&[set])), None, "{set:?}");
        }
        let vars = restart_env(env_of(&[(TF32_VAR, "0")])).unwrap();
        assert!(
            !vars.iter().any(|(k, _)| *k == TF32_VAR),
            "the user's TF32 choice stays"
        );
    }

    #[test]
    fn reports_who_set_the_policy() {
        let ours =
            WaitPolicy::from_env(env_of(&[(WAIT_POLICY_VAR, PASSIVE), (RESTARTED_VAR, "1")]));
        assert_eq!(ours.set_by, "ddpm-cli");
        assert_eq!(ours.omp_wait_policy.as_deref(), Some(PASSIVE));
        let user = WaitPolicy::from_env(env_of(&[(SPIN_COUNT_VAR, "0")]));
        assert_eq!(user.set_by, "environment");
        assert_eq!(WaitPolicy::from_env(env_of(&[])).set_by, "libgomp default");
        // The marker alone (a restart prevented, or the variable removed since) is not a policy.
        assert_eq!(
            WaitPolicy::from_env(env_of(&[(RESTARTED_VAR, "1")])).set_by,
            "libgomp default"
        );
    }

    #[test]
    fn available_cpus_is_within_the_affinity_mask() {
        let n = available_cpus();
        // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity fills it for this thread.
        let in_mask = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            assert_eq!(
                libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set),
                0
            );
            libc::CPU_COUNT(&set) as usize
        };
        assert!(
            n >= 1 && n <= in_mask,
            "{n} CPUs available, {in_mask} in the mask"
        );
    }
}
