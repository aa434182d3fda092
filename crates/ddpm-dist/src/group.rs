//! [`ProcessGroup`]: a joined c10d process group and its collectives; [`Work`]: one in flight.
use std::ffi::{c_int, c_void, CString};
use std::fmt;
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use tch::{Device, Tensor};

use crate::env::DistEnv;
use crate::error::{DistError, Op, Result};
use crate::ffi;

/// A c10d communication backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// `c10d::ProcessGroupGloo`: CPU tensors over TCP. Always built.
    Gloo,
    /// `c10d::ProcessGroupNCCL`: CUDA tensors, one CUDA device per rank (`LOCAL_RANK`). Built
    /// where the libtorch has CUDA and the build found NCCL's headers ([`Backend::is_built`]);
    /// otherwise asking for it is [`DistError::BackendNotBuilt`].
    Nccl,
}

impl Backend {
    /// Every backend ddpm-dist knows, built or not.
    pub const ALL: [Backend; 2] = [Backend::Gloo, Backend::Nccl];

    /// torch.distributed's name of the backend (`"gloo"`, `"nccl"`).
    pub fn name(self) -> &'static str {
        match self {
            Backend::Gloo => "gloo",
            Backend::Nccl => "nccl",
        }
    }

    /// Whether the shim was compiled with this backend (asked of the shim itself).
    pub fn is_built(self) -> bool {
        let name = CString::new(self.name()).expect("backend names have no NUL");
        // SAFETY: a NUL-terminated string that outlives the call.
        unsafe { ffi::ddpm_dist_has_backend(name.as_ptr()) != 0 }
    }

    /// The device of the tensors this backend communicates.
    pub fn device(self, local_rank: usize) -> Device {
        match self {
            Backend::Gloo => Device::Cpu,
            Backend::Nccl => Device::Cuda(local_rank),
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where Gloo's TCP transport listens, chosen from the job's environment.
#[derive(Debug, Clone, PartialEq, Eq)]
enum GlooDevice {
    /// `GLOO_SOCKET_IFNAME`: these interfaces (comma-separated), as torch.distributed does.
    Interfaces(String),
    /// Bind this address.
    Hostname(String),
    /// c10d's default: the address this host's name resolves to, else loopback.
    Default,
}

impl GlooDevice {
    /// `GLOO_SOCKET_IFNAME` when set; loopback when every rank is on this machine or the store
    /// is on loopback (the host name may resolve to an address that a container or a laptop
    /// cannot reach); otherwise c10d's default.
    fn for_env(env: &DistEnv) -> Self {
        if let Some(ifnames) = &env.gloo_socket_ifname {
            return GlooDevice::Interfaces(ifnames.clone());
        }
        let loopback = env.master_addr == "localhost"
            || env
                .master_addr
                .parse::<std::net::IpAddr>()
                .is_ok_and(|a| a.is_loopback());
        if env.single_machine() || loopback {
            GlooDevice::Hostname("127.0.0.1".into())
        } else {
            GlooDevice::Default
        }
    }
}

/// A joined c10d process group: this process is rank [`rank`](Self::rank) of
/// [`world_size`](Self::world_size), connected to every other rank by the backend (Gloo on CPU)
/// and to the job's `TCPStore`.
///
/// **Every rank must issue the same collectives, with tensors of the same shape and dtype, in the
/// same order.** A rank that skips one, or a peer that dies or stalls, makes the others fail with
/// [`DistError::Collective`] — at once when the peer's connection closes, else after the group's
/// timeout. After such an error the group is not usable any more (drop it and end the process,
/// as torch.distributed's users do).
///
/// A group is driven by one thread at a time (`Send`, not `Sync`). Dropping it closes the
/// connections; collectives in flight ([`Work`]) borrow it, so they end first.
pub struct ProcessGroup {
    raw: NonNull<ffi::Group>,
    backend: Backend,
    rank: usize,
    world_size: usize,
    device: Device,
    timeout: Duration,
}

// SAFETY: the c10d group may be used from any thread, one at a time. `ProcessGroup` stays
// `!Sync` (through `NonNull`), so collectives are issued from one thread, in one order, and the
// shim's per-thread error text is read on the thread of the failing call.
unsafe impl Send for ProcessGroup {}

impl fmt::Debug for ProcessGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessGroup")
            .field("backend", &self.backend)
            .field("rank", &self.rank)
            .field("world_size", &self.world_size)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl ProcessGroup {
    /// Joins the job described by `env`: connects to the `TCPStore` at
    /// `MASTER_ADDR:MASTER_PORT` (rank 0 hosts it unless torchrun's agent does), then builds the
    /// backend, which connects to every other rank. Returns once all `world_size` ranks have
    /// joined.
    ///
    /// `timeout` bounds the rendezvous, every collective and every store read (torch.distributed
    /// defaults to 30 minutes; it must exceed any work one rank does alone between two
    /// collectives, such as rank 0 writing a checkpoint).
    ///
    /// Gloo listens on `GLOO_SOCKET_IFNAME`'s interfaces when set, on 127.0.0.1 when every rank
    /// runs on this machine or the store is on loopback, and otherwise on the address this host's
    /// name resolves to. Store keys live under `ddpm_dist/attempt_{restart_count}/`, so a
    /// restarted torchrun job does not read its previous attempt's keys.
    ///
    /// # Errors
    /// [`DistError::BackendNotBuilt`] for a backend this build lacks; [`DistError::InvalidArgument`]
    /// for a zero timeout; [`DistError::Init`] naming this rank, the store and the timeout when a
    /// peer does not join within it, the store cannot be reached (or its port bound), or the
    /// backend cannot connect. (c10d's store gives up up to about a second after the timeout:
    /// 3.0 s and 3.3 s for 2 s in the tests.)
    pub fn init(env: &DistEnv, backend: Backend, timeout: Duration) -> Result<Self> {
        if !backend.is_built() {
            let built: Vec<&str> = Backend::ALL
                .iter()
                .filter(|b| b.is_built())
                .map(|b| b.name())
                .collect();
            return Err(DistError::BackendNotBuilt {
                backend,
                built: built.join(", "),
            });
        }
        if timeout.is_zero() {
            return Err(DistError::InvalidArgument {
                rank: env.rank,
                op: Op::Init,
                problem: "the timeout must be positive".into(),
            });
        }
        let timeout_ms = i64::try_from(timeout.as_millis())
            .unwrap_or(i64::MAX)
            .max(1);
        let cstr = |s: &str| CString::new(s).expect("checked for NUL below");
        let init_error = |message: String| DistError::Init {
            rank: env.rank,
            world_size: env.world_size,
            backend,
            store: format!("{}:{}", env.master_addr, env.master_port),
            host: if env.agent_store {
                "hosted by torchrun's agent"
            } else {
                "hosted by rank 0"
            },
            timeout,
            message,
        };
        let gloo = GlooDevice::for_env(env);
        let (ifnames, hostname) = match &gloo {
            GlooDevice::Interfaces(names) => (Some(names.as_str()), None),
            GlooDevice::Hostname(host) => (None, Some(host.as_str())),
            GlooDevice::Default => (None, None),
        };
        let strings = [Some(env.master_addr.as_str()), ifnames, hostname];
        if strings.iter().flatten().any(|s| s.contains('\0')) {
            return Err(init_error(
                "MASTER_ADDR or GLOO_SOCKET_IFNAME contains a NUL byte".into(),
            ));
        }
        let (Ok(rank), Ok(world_size), Ok(device_index)) = (
            c_int::try_from(env.rank),
            c_int::try_from(env.world_size),
            c_int::try_from(env.local_rank),
        ) else {
            return Err(init_error(
                "RANK, WORLD_SIZE or LOCAL_RANK does not fit a C int".into(),
            ));
        };
        let name = cstr(backend.name());
        let store_host = cstr(&env.master_addr);
        let key_prefix = cstr(&format!("ddpm_dist/attempt_{}/", env.restart_count));
        let ifnames = ifnames.map(cstr);
        let hostname = hostname.map(cstr);
        let options = ffi::GroupOptions {
            backend: name.as_ptr(),
            store_host: store_host.as_ptr(),
            store_port: env.master_port,
            host_store: c_int::from(env.hosts_store()),
            rank,
            world_size,
            timeout_ms,
            key_prefix: key_prefix.as_ptr(),
            gloo_ifnames: ifnames.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            gloo_hostname: hostname.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            device_index,
        };
        let start = Instant::now();
        // SAFETY: every pointer in `options` refers to a CString that outlives the call.
        let raw = unsafe { ffi::ddpm_dist_group_new(&options) };
        let raw = NonNull::new(raw).ok_or_else(|| init_error(ffi::last_error()))?;
        tracing::info!(
            rank = env.rank,
            world_size = env.world_size,
            backend = backend.name(),
            store = %format_args!("{}:{}", env.master_addr, env.master_port),
            gloo_device = ?gloo,
            seconds = start.elapsed().as_secs_f64(),
            "joined the process group"
        );
        Ok(Self {
            raw,
            backend,
            rank: env.rank,
            world_size: env.world_size,
            device: backend.device(env.local_rank),
            timeout,
        })
    }

    /// This process's rank, `0..world_size`.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The number of ranks.
    pub fn world_size(&self) -> usize {
        self.world_size
    }

    /// The backend.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The device whose tensors the group communicates (`Cpu` for Gloo).
    pub fn device(&self) -> Device {
        self.device
    }

    /// The rendezvous, collective and store timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Replaces `t` on every rank by the element-wise sum of all ranks' `t`, in place.
    ///
    /// `t`: any shape, the same shape and dtype on every rank; contiguous, on
    /// [`device`](Self::device). Floating-point sums are rounded in an order that may differ from
    /// a sequential sum, but every rank receives bit-identical values.
    ///
    /// # Errors
    /// [`DistError::InvalidArgument`] (before communicating) for an undefined, sparse,
    /// non-contiguous or wrong-device tensor; [`DistError::Collective`] naming the operation and
    /// timeout when a peer dies, stalls past the timeout or disagrees about the operation.
    pub fn all_reduce_sum(&self, t: &mut Tensor) -> Result<()> {
        self.check_tensor(Op::AllReduceSum, t)?;
        // SAFETY: a live group and a checked, live tensor; the call returns when it is done.
        let rc = unsafe { ffi::ddpm_dist_all_reduce_sum(self.raw.as_ptr(), tensor_ptr(t)) };
        self.collective_result(Op::AllReduceSum, rc)
    }

    /// Replaces `t` on every rank by the element-wise mean over ranks, in place: the sum, then a
    /// division by `world_size` (Gloo has no average).
    ///
    /// `t`: as for [`all_reduce_sum`](Self::all_reduce_sum), and floating-point.
    ///
    /// # Errors
    /// As [`all_reduce_sum`](Self::all_reduce_sum); an integer tensor is
    /// [`DistError::InvalidArgument`].
    pub fn all_reduce_mean(&self, t: &mut Tensor) -> Result<()> {
        self.check_tensor(Op::AllReduceMean, t)?;
        if !t.is_floating_point() {
            return Err(self.invalid(
                Op::AllReduceMean,
                format!("the mean needs a floating-point tensor, got {:?}", t.kind()),
            ));
        }
        // SAFETY: as in all_reduce_sum.
        let rc = unsafe { ffi::ddpm_dist_all_reduce_sum(self.raw.as_ptr(), tensor_ptr(t)) };
        self.collective_result(Op::AllReduceMean, rc)?;
        tch::no_grad(|| t.f_div_scalar_(self.world_size as f64))
            .map(drop)
            .map_err(|e| self.invalid(Op::AllReduceMean, e.to_string()))
    }

    /// Starts summing `t` over ranks in place and returns at once; [`Work::wait`] finishes it.
    ///
    /// `t` stays mutably borrowed until the [`Work`] is waited on or dropped, and dropping a
    /// `Work` waits for it. Other handles to the same storage (a `shallow_clone`, a view, the
    /// buffer `t` is a view of) must not be read or written meanwhile: Gloo writes the result
    /// into that memory from its own threads. Several works may be in flight (e.g. one per
    /// `narrow` slice of a gradient buffer); every rank must issue them in the same order.
    ///
    /// # Errors
    /// As [`all_reduce_sum`](Self::all_reduce_sum); failures of the communication itself come
    /// from [`Work::wait`].
    pub fn all_reduce_sum_async<'a>(&'a self, t: &'a mut Tensor) -> Result<Work<'a>> {
        self.check_tensor(Op::AllReduceSumAsync, t)?;
        // SAFETY: a live group and a checked tensor; the work keeps the tensor's storage alive
        // and `t` stays borrowed until the work has been waited on.
        let raw = unsafe { ffi::ddpm_dist_all_reduce_sum_async(self.raw.as_ptr(), tensor_ptr(t)) };
        let raw = NonNull::new(raw)
            .ok_or_else(|| self.collective_error(Op::AllReduceSumAsync, ffi::last_error()))?;
        Ok(Work {
            raw: Some(raw),
            group: self,
            _tensor: PhantomData,
        })
    }

    /// Replaces `t` on every rank by rank `root`'s `t`, in place (bit for bit).
    ///
    /// `t`: the same shape and dtype on every rank; contiguous, on [`device`](Self::device).
    ///
    /// # Errors
    /// [`DistError::InvalidArgument`] for a bad tensor or `root ≥ world_size`;
    /// [`DistError::Collective`] as for [`all_reduce_sum`](Self::all_reduce_sum).
    pub fn broadcast(&self, t: &mut Tensor, root: usize) -> Result<()> {
        let op = Op::Broadcast { root };
        self.check_tensor(op, t)?;
        if root >= self.world_size {
            return Err(self.invalid(
                op,
                format!(
                    "root {root} is not a rank of a group of {}",
                    self.world_size
                ),
            ));
        }
        // SAFETY: as in all_reduce_sum; root < world_size fits a C int.
        let rc =
            unsafe { ffi::ddpm_dist_broadcast(self.raw.as_ptr(), tensor_ptr(t), root as c_int) };
        self.collective_result(op, rc)
    }

    /// Returns once every rank has entered the barrier (and this rank's earlier collectives have
    /// finished).
    ///
    /// # Errors
    /// [`DistError::Collective`] when a peer dies or does not arrive within the timeout.
    pub fn barrier(&self) -> Result<()> {
        // SAFETY: a live group.
        let rc = unsafe { ffi::ddpm_dist_barrier(self.raw.as_ptr()) };
        self.collective_result(Op::Barrier, rc)
    }

    /// Sets `key` to `value` in the job's store, for every rank to read with
    /// [`store_get`](Self::store_get) (small control data: a run directory, a flag). Setting a key
    /// again replaces its value.
    ///
    /// # Errors
    /// [`DistError::InvalidArgument`] for a key with a NUL byte; [`DistError::Store`] when the
    /// store is unreachable.
    pub fn store_set(&self, key: &str, value: &[u8]) -> Result<()> {
        let k = self.key(Op::StoreSet, key)?;
        // SAFETY: a live group; `k` and `value` outlive the call, which copies them.
        let rc = unsafe {
            ffi::ddpm_dist_store_set(self.raw.as_ptr(), k.as_ptr(), value.as_ptr(), value.len())
        };
        if rc != 0 {
            return Err(self.store_error(Op::StoreSet, key));
        }
        Ok(())
    }

    /// The value of `key` in the job's store, waiting until some rank has set it.
    ///
    /// # Errors
    /// [`DistError::InvalidArgument`] for a key with a NUL byte; [`DistError::Store`] naming the
    /// key and the timeout when no rank sets it within the timeout, or the store is gone.
    pub fn store_get(&self, key: &str) -> Result<Vec<u8>> {
        let k = self.key(Op::StoreGet, key)?;
        let mut data: *mut u8 = std::ptr::null_mut();
        let mut len = 0usize;
        // SAFETY: a live group; the out-pointers are valid for writes.
        let rc =
            unsafe { ffi::ddpm_dist_store_get(self.raw.as_ptr(), k.as_ptr(), &mut data, &mut len) };
        if rc != 0 {
            return Err(self.store_error(Op::StoreGet, key));
        }
        if data.is_null() {
            return Ok(Vec::new());
        }
        // SAFETY: on success the shim hands over a malloc'd buffer of `len` bytes, copied here
        // and then freed by the shim's `free`.
        let value = unsafe { std::slice::from_raw_parts(data, len) }.to_vec();
        unsafe { ffi::ddpm_dist_bytes_free(data) };
        Ok(value)
    }

    /// Checks what the shim would otherwise have to trust: a defined, dense, contiguous tensor on
    /// the group's device.
    fn check_tensor(&self, op: Op, t: &Tensor) -> Result<()> {
        let problem = if !t.defined() {
            "the tensor is undefined".to_string()
        } else if t.is_sparse() {
            "the tensor is sparse; collectives need a dense one".to_string()
        } else if t.device() != self.device {
            format!(
                "the tensor is on {:?}; the {} group communicates {:?} tensors",
                t.device(),
                self.backend,
                self.device
            )
        } else if !t.is_contiguous() {
            format!(
                "the tensor (shape {:?}, strides {:?}) is not contiguous; pass `.contiguous()` \
                 and copy the result back",
                t.size(),
                t.stride()
            )
        } else {
            return Ok(());
        };
        Err(self.invalid(op, problem))
    }

    fn key(&self, op: Op, key: &str) -> Result<CString> {
        CString::new(key).map_err(|_| self.invalid(op, format!("key {key:?} contains a NUL byte")))
    }

    fn invalid(&self, op: Op, problem: String) -> DistError {
        DistError::InvalidArgument {
            rank: self.rank,
            op,
            problem,
        }
    }

    fn collective_error(&self, op: Op, message: String) -> DistError {
        DistError::Collective {
            rank: self.rank,
            world_size: self.world_size,
            op,
            timeout: self.timeout,
            message,
        }
    }

    fn collective_result(&self, op: Op, rc: c_int) -> Result<()> {
        if rc != 0 {
            return Err(self.collective_error(op, ffi::last_error()));
        }
        Ok(())
    }

    fn store_error(&self, op: Op, key: &str) -> DistError {
        DistError::Store {
            rank: self.rank,
            op,
            key: key.to_string(),
            timeout: self.timeout,
            message: ffi::last_error(),
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: the group is live and, since every `Work` borrows it, has nothing in flight.
        unsafe { ffi::ddpm_dist_group_free(self.raw.as_ptr()) }
    }
}

/// The `at::Tensor*` behind a tch tensor, as the shim takes it.
fn tensor_ptr(t: &mut Tensor) -> *mut c_void {
    t.as_mut_ptr().cast()
}

/// An all-reduce in flight, from [`ProcessGroup::all_reduce_sum_async`].
///
/// It borrows its group and, mutably, its tensor. [`wait`](Self::wait) finishes it and reports
/// its failure; dropping it without `wait` also waits (up to the group's timeout), logging a
/// failure as a `tracing` warning — so the tensor is never handed back while Gloo may still write
/// it. Leaking it (`mem::forget`) leaves the collective writing the tensor in the background.
#[must_use = "the result is in the tensor only after `wait`"]
pub struct Work<'a> {
    raw: Option<NonNull<ffi::Work>>,
    group: &'a ProcessGroup,
    _tensor: PhantomData<&'a mut Tensor>,
}

impl fmt::Debug for Work<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Work")
            .field("rank", &self.group.rank)
            .field("pending", &self.raw.is_some())
            .finish()
    }
}

impl Work<'_> {
    /// Blocks until the all-reduce has finished on this rank; the sum is then in the tensor.
    ///
    /// # Errors
    /// [`DistError::Collective`] for [`Op::AllReduceSumAsync`] when a peer died, stalled past the
    /// timeout or disagreed about the operation.
    pub fn wait(mut self) -> Result<()> {
        self.finish()
    }

    fn finish(&mut self) -> Result<()> {
        let Some(raw) = self.raw.take() else {
            return Ok(());
        };
        // SAFETY: a live work of a live group; freed once, after waiting.
        let rc = unsafe { ffi::ddpm_dist_work_wait(raw.as_ptr()) };
        let result = self.group.collective_result(Op::AllReduceSumAsync, rc);
        unsafe { ffi::ddpm_dist_work_free(raw.as_ptr()) };
        result
    }
}

impl Drop for Work<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.finish() {
            tracing::warn!("an all_reduce_sum_async dropped without wait failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(master_addr: &str, local_world_size: usize, ifname: Option<&str>) -> DistEnv {
        DistEnv {
            rank: 0,
            world_size: 4,
            local_rank: 0,
            local_world_size,
            master_addr: master_addr.into(),
            master_port: 29500,
            agent_store: false,
            restart_count: 0,
            gloo_socket_ifname: ifname.map(String::from),
        }
    }

    #[test]
    fn gloo_listens_on_loopback_unless_ranks_are_on_other_machines() {
        let lo = GlooDevice::Hostname("127.0.0.1".into());
        assert_eq!(GlooDevice::for_env(&env("node7", 4, None)), lo);
        assert_eq!(GlooDevice::for_env(&env("127.0.0.1", 2, None)), lo);
        assert_eq!(GlooDevice::for_env(&env("localhost", 2, None)), lo);
        assert_eq!(GlooDevice::for_env(&env("::1", 2, None)), lo);
        assert_eq!(
            GlooDevice::for_env(&env("10.0.0.1", 2, None)),
            GlooDevice::Default
        );
        assert_eq!(
            GlooDevice::for_env(&env("node7", 2, None)),
            GlooDevice::Default
        );
        assert_eq!(
            GlooDevice::for_env(&env("127.0.0.1", 4, Some("eth0,eth1"))),
            GlooDevice::Interfaces("eth0,eth1".into())
        );
    }

    #[test]
    fn gloo_is_built_and_nccl_where_the_build_found_libtorch_cuda_and_its_headers() {
        assert!(Backend::Gloo.is_built());
        assert_eq!(Backend::Nccl.is_built(), cfg!(ddpm_dist_nccl));
        if !cfg!(ddpm_dist_nccl) {
            let e = ProcessGroup::init(
                &env("127.0.0.1", 4, None),
                Backend::Nccl,
                Duration::from_secs(1),
            )
            .unwrap_err();
            assert!(
                matches!(
                    e,
                    DistError::BackendNotBuilt {
                        backend: Backend::Nccl,
                        ..
                    }
                ),
                "{e}"
            );
            assert_eq!(
                e.to_string(),
                "the nccl backend is not built into this ddpm-dist (it has: gloo); use gloo with CPU tensors"
            );
        }
    }

    #[test]
    fn nccl_without_a_cuda_device_is_an_error_naming_the_device() {
        if !cfg!(ddpm_dist_nccl) || tch::Cuda::device_count() > 0 {
            // Nothing to check here: NCCL is not built, or there is a device (scripts/gpu_check.sh
            // trains through NCCL there).
            return;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut one = env("127.0.0.1", 1, None);
        one.world_size = 1;
        one.master_port = port;
        let e = ProcessGroup::init(&one, Backend::Nccl, Duration::from_secs(5)).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, DistError::Init { .. }), "{msg}");
        assert!(
            msg.contains(
                "NCCL needs CUDA device 0 (LOCAL_RANK) but this process sees 0 CUDA device(s)"
            ),
            "{msg}"
        );
    }

    #[test]
    fn a_zero_timeout_is_refused_before_any_connection() {
        let e = ProcessGroup::init(&env("127.0.0.1", 4, None), Backend::Gloo, Duration::ZERO)
            .unwrap_err();
        assert!(
            matches!(e, DistError::InvalidArgument { op: Op::Init, .. }),
            "{e}"
        );
    }
}
