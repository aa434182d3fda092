//! Data-parallel training: what the one loop ([`crate::engine`]) does differently when it is one
//! of W processes of a c10d job ([`ddpm_dist::ProcessGroup`], launched by torchrun or by
//! `ddpm-cli train --nproc-per-node`).
//!
//! The scheme is PyTorch DDP's (Li et al. 2020, "PyTorch Distributed"), written out for this
//! engine:
//!
//! * `data.batch_size` is the **global** batch. Every rank draws the whole step's batch from
//!   (seed, step) — indices, flips, timesteps, noise, label dropout — and keeps its slice
//!   [`DataParallel::slice`]: rows `rank·B/W .. (rank+1)·B/W`. A W-process step therefore sees
//!   exactly the draws of a 1-process step, and `--resume` works with another W.
//! * After backward and before clipping, the packed gradient buffer of the phase's optimiser is
//!   averaged over ranks ([`DataParallel::average_gradients`]). Clipping, Adam and the EMA then
//!   run on identical values on every rank, so the replicas stay identical without further
//!   communication.
//! * Rank 0 alone opens (or creates) the run directory and restores the checkpoint; it publishes
//!   the run's state (or its error) in the job's store, and every tensor of the checkpoint groups
//!   is broadcast from it ([`DataParallel::start`], [`DataParallel::broadcast_state`]).
//! * Each log window ends with one small all-reduce of the window's metrics, the stop requests
//!   and the first non-finite step of every rank ([`DataParallel::agree`]): every rank logs the
//!   same means, stops at the same step, and a NaN on any rank stops all of them naming that rank.
//! * Only rank 0 writes (logs, metrics, grids, checkpoints); a barrier ends the run.
use std::time::Instant;

use ddpm_dist::ProcessGroup;
use tch::{Device, Kind, Tensor};

use crate::engine::{MicroBatches, StateGroup, TrainTask};
use crate::error::{Result, TrainError};
use crate::optim::Adam;
use crate::run_dir::TrainState;

/// The default largest gradient bucket of one all-reduce (PyTorch DDP's default `bucket_cap_mb`,
/// 25).
pub const BUCKET_BYTES: usize = 25 << 20;

/// The store key under which rank 0 publishes how the run starts.
const START_KEY: &str = "ddpm_train/start";
/// The store key under which rank 0 publishes its resolved config.
const CONFIG_KEY: &str = "ddpm_train/config";

/// This process's part in a data-parallel run: a joined process group.
#[derive(Debug)]
pub struct DataParallel {
    group: ProcessGroup,
    /// The largest gradient bucket of one all-reduce, in bytes.
    bucket_bytes: usize,
    /// Seconds spent in gradient all-reduces since the last log window.
    reduce_secs: std::cell::Cell<f64>,
}

/// What the ranks agreed on at the end of a log window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreement {
    /// Some rank was asked to stop, or reached the run's time limit.
    pub stop: bool,
    /// Some rank reached the run's time limit (and none was asked to stop).
    pub time_up: bool,
    /// Where the window's first non-finite value arose: the rank, and the value's index in the
    /// window.
    pub non_finite: Option<(usize, usize)>,
}

impl DataParallel {
    /// Training on `group` (its device is where the networks must live).
    pub fn new(group: ProcessGroup) -> Self {
        Self {
            group,
            bucket_bytes: BUCKET_BYTES,
            reduce_secs: std::cell::Cell::new(0.0),
        }
    }

    /// The same, with gradient buckets of at most `bytes` (≥ 1) instead of [`BUCKET_BYTES`].
    pub fn with_bucket_bytes(mut self, bytes: usize) -> Self {
        self.bucket_bytes = bytes.max(1);
        self
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.group.rank()
    }

    /// Number of processes.
    pub fn world_size(&self) -> usize {
        self.group.world_size()
    }

    /// Whether this is rank 0, the one that writes the run directory.
    pub fn is_root(&self) -> bool {
        self.group.rank() == 0
    }

    /// The process group.
    pub fn group(&self) -> &ProcessGroup {
        &self.group
    }

    /// Seconds this rank spent averaging gradients since the last call (and resets the count).
    pub fn take_reduce_secs(&self) -> f64 {
        self.reduce_secs.replace(0.0)
    }

    /// Checks that the global batch of `batch_size` images splits into `world_size` equal
    /// slices of `grad_accum` equal micro-batches.
    ///
    /// # Errors
    /// [`TrainError::Config`] naming `data.batch_size`.
    pub fn check_batch(&self, batch_size: usize, grad_accum: usize) -> Result<()> {
        let w = self.world_size();
        if batch_size % (w * grad_accum) != 0 {
            return Err(TrainError::config(
                "data.batch_size",
                format!(
                    "{batch_size} is the global batch of {w} processes with optim.grad_accum \
                     {grad_accum}: it must be a multiple of {}",
                    w * grad_accum
                ),
            ));
        }
        Ok(())
    }

    /// This rank's rows of a prepared global batch (see the module documentation).
    pub fn slice<B: MicroBatches>(&self, batch: B) -> B {
        batch.split(self.world_size()).swap_remove(self.rank())
    }

    /// Replaces the gradients of `adam`'s parameters by their mean over ranks: the packed buffer
    /// is summed in buckets of at most [`BUCKET_BYTES`] (or the size given to
    /// [`DataParallel::with_bucket_bytes`]), all in flight at once, then divided by
    /// the world size. (For the CIFAR-10 UNet's 143 MB, six buckets took 0.12 s where one call
    /// took 0.16 s: `examples/all_reduce_bench.rs` of ddpm-dist.)
    ///
    /// # Errors
    /// [`TrainError::Dist`] when a peer died or stalled past the timeout.
    pub fn average_gradients(&self, adam: &mut Adam) -> Result<()> {
        let start = Instant::now();
        let out = adam.with_grad_buffer(|g| self.bucketed_mean(g));
        self.reduce_secs
            .set(self.reduce_secs.get() + start.elapsed().as_secs_f64());
        out
    }

    /// The element-wise mean over ranks of a 1-D buffer, in place, summed bucket by bucket with
    /// every bucket in flight at once.
    fn bucketed_mean(&self, g: &mut Tensor) -> Result<()> {
        let n = g.numel() as i64;
        let per_bucket = (self.bucket_bytes / g.kind().elt_size_in_bytes()).max(1) as i64;
        let mut buckets: Vec<Tensor> = (0..n)
            .step_by(per_bucket as usize)
            .map(|s| g.narrow(0, s, per_bucket.min(n - s)))
            .collect();
        let works = buckets
            .iter_mut()
            .map(|b| self.group.all_reduce_sum_async(b))
            .collect::<ddpm_dist::Result<Vec<_>>>()?;
        for work in works {
            work.wait()?;
        }
        let _ = tch::no_grad(|| g.f_div_scalar_(self.world_size() as f64))?;
        Ok(())
    }

    /// Makes sure that every rank was started with rank 0's settings and data before anything is
    /// written: rank 0 publishes its resolved config (`config_toml`) and its data's fingerprint
    /// ([`crate::loader::ImageData::fingerprint`]), each other rank compares its own with them
    /// ([`config_difference`]), and all ranks agree on the outcome ([`DataParallel::check_all`]).
    ///
    /// # Errors
    /// [`TrainError::RankFailed`] naming the lowest rank whose config or data differs, and the
    /// first differing key; [`TrainError::Dist`] when a peer fails.
    pub fn agree_config(&self, config_toml: &str, data_fingerprint: &str) -> Result<()> {
        let verdict = if self.is_root() {
            let doc = serde_json::json!({ "config": config_toml, "data": data_fingerprint });
            self.group
                .store_set(CONFIG_KEY, doc.to_string().as_bytes())?;
            Ok(())
        } else {
            let doc: serde_json::Value =
                serde_json::from_slice(&self.group.store_get(CONFIG_KEY)?).unwrap_or_default();
            let (root_config, root_data) = (
                doc["config"].as_str().unwrap_or_default(),
                doc["data"].as_str().unwrap_or_default(),
            );
            match config_difference(root_config, config_toml, self.rank()) {
                Some(difference) => Err(difference),
                None if root_data != data_fingerprint => Err(format!(
                    "its training images differ from rank 0's: {data_fingerprint} on rank {}, \
                     {root_data} on rank 0 (data.path may differ between machines, the data \
                     may not)",
                    self.rank()
                )),
                None => Ok(()),
            }
        };
        self.check_all("config", verdict)
    }

    /// Rank 0: publishes the outcome of opening the run — the state to start from, or the
    /// error's text — for the other ranks ([`DataParallel::follow_start`]).
    ///
    /// # Errors
    /// [`TrainError::Dist`] when the store cannot be reached.
    pub fn publish_start(&self, opened: std::result::Result<&TrainState, String>) -> Result<()> {
        let doc = match opened {
            Ok(state) => serde_json::json!({ "state": state }),
            Err(message) => serde_json::json!({ "error": message }),
        };
        Ok(self
            .group
            .store_set(START_KEY, doc.to_string().as_bytes())?)
    }

    /// Ranks other than 0: waits for rank 0 to open the run and returns the state it starts
    /// from.
    ///
    /// # Errors
    /// [`TrainError::RankFailed`] with rank 0's message when it could not open the run;
    /// [`TrainError::Dist`] when rank 0 publishes nothing within the timeout.
    pub fn follow_start(&self) -> Result<TrainState> {
        let bytes = self.group.store_get(START_KEY)?;
        let failed = |message: String| TrainError::RankFailed { rank: 0, message };
        let doc: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| failed(format!("unreadable start record: {e}")))?;
        if let Some(message) = doc["error"].as_str() {
            return Err(failed(message.to_string()));
        }
        serde_json::from_value(doc["state"].clone())
            .map_err(|e| failed(format!("unreadable start state: {e}")))
    }

    /// Every rank's verdict on a check it made for itself (`local`: `Err(message)` when it
    /// failed), agreed in one all-reduce: all ranks fail together, with the message of the
    /// lowest failing rank (read from the store), or all go on.
    ///
    /// # Errors
    /// [`TrainError::RankFailed`] naming that rank and its message; [`TrainError::Dist`] when a
    /// peer fails.
    pub fn check_all(&self, what: &str, local: std::result::Result<(), String>) -> Result<()> {
        let key = |rank: usize| format!("ddpm_train/check/{what}/{rank}");
        let mut flags = Tensor::zeros(
            [self.world_size() as i64],
            (Kind::Float, self.group.device()),
        );
        if let Err(message) = &local {
            self.group
                .store_set(&key(self.rank()), message.as_bytes())?;
            let _ = flags.get(self.rank() as i64).fill_(1.0);
        }
        self.group.all_reduce_sum(&mut flags)?;
        let flags = Vec::<f32>::try_from(flags.to_device(Device::Cpu))?;
        let Some(rank) = flags.iter().position(|&f| f > 0.0) else {
            return Ok(());
        };
        let message = match local {
            Err(message) if rank == self.rank() => message,
            _ => String::from_utf8_lossy(&self.group.store_get(&key(rank))?).into_owned(),
        };
        Err(TrainError::RankFailed { rank, message })
    }

    /// Makes every tensor of the task's checkpoint groups (network variables, optimiser moments
    /// and step) rank 0's, in a fixed order (variables sorted by name).
    ///
    /// # Errors
    /// [`TrainError::Dist`] when a peer fails; [`TrainError::RankFailed`] when rank 0's optimiser
    /// state does not fit this rank's (ranks built from different configs).
    pub fn broadcast_state<T: TrainTask>(&self, task: &mut T) -> Result<()> {
        let root = self.is_root();
        for (name, group) in task.state_groups() {
            match group {
                StateGroup::Vars(vs) => {
                    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
                    vars.sort_by(|a, b| a.0.cmp(&b.0));
                    for (_, mut t) in vars {
                        tch::no_grad(|| self.group.broadcast(&mut t, 0))?;
                    }
                }
                StateGroup::Optimizer(adam) => {
                    let mut tensors = adam.state_tensors();
                    for (_, t) in tensors.iter_mut() {
                        // The step count is a CPU tensor; NCCL communicates CUDA ones.
                        if t.device() == self.group.device() {
                            self.group.broadcast(t, 0)?;
                        } else {
                            let mut on = t.to_device(self.group.device());
                            self.group.broadcast(&mut on, 0)?;
                            *t = on.to_device(t.device());
                        }
                    }
                    if !root {
                        adam.load_state(&tensors)
                            .map_err(|message| TrainError::RankFailed {
                                rank: 0,
                                message: format!("optimiser state `{name}`: {message}"),
                            })?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Ends a log window on every rank: `values` (this rank's window, `steps × per_step`
    /// row-major) becomes the mean over ranks, and the ranks learn whether any of them was asked
    /// to stop (`stop.0`) or reached the time limit (`stop.1`) and where the first non-finite value arose (`local_bad`: its index in `values`):
    /// the earliest step, then the lowest rank at that step — a NaN spreads to every rank
    /// through the averaged gradients one step later.
    ///
    /// # Errors
    /// [`TrainError::Dist`] when a peer died or stalled past the timeout.
    pub fn agree(
        &self,
        values: &mut [f64],
        per_step: usize,
        (stop, time_up): (bool, bool),
        local_bad: Option<usize>,
    ) -> Result<Agreement> {
        let (n, w) = (values.len(), self.world_size());
        let mut payload = vec![0.0f64; n + 2 + w];
        payload[..n].copy_from_slice(values);
        payload[n] = f64::from(u8::from(stop));
        payload[n + 1] = f64::from(u8::from(time_up));
        if let Some(i) = local_bad {
            payload[n + 2 + self.rank()] = (i + 1) as f64;
        }
        let mut t = Tensor::from_slice(&payload);
        if self.group.device() != Device::Cpu {
            t = t.to_device(self.group.device());
        }
        self.group.all_reduce_sum(&mut t)?;
        let sums = Vec::<f64>::try_from(t.to_device(Device::Cpu).to_kind(Kind::Double))?;
        for (v, s) in values.iter_mut().zip(&sums) {
            *v = s / w as f64;
        }
        let non_finite = (0..w)
            .filter(|r| sums[n + 2 + r] > 0.0)
            .map(|r| (r, sums[n + 2 + r] as usize - 1))
            .min_by_key(|&(r, i)| (i / per_step.max(1), r));
        let (asked, timed_out) = (sums[n] > 0.0, sums[n + 1] > 0.0);
        Ok(Agreement {
            stop: asked || timed_out,
            time_up: timed_out && !asked,
            non_finite,
        })
    }

    /// The rows of a per-sample vector of the global batch: this rank's `local` (`[B/W]`) placed
    /// at its slice, the other ranks' rows filled in (one all-reduce of `[B]`). Float64 on the
    /// CPU.
    ///
    /// # Errors
    /// [`TrainError::Dist`] when a peer fails.
    pub fn gather_rows(&self, local: &Tensor) -> Result<Tensor> {
        let local = local.to_kind(Kind::Double).to_device(self.group.device());
        let n = local.size()[0];
        let mut all = Tensor::zeros(
            [n * self.world_size() as i64],
            (Kind::Double, self.group.device()),
        );
        all.narrow(0, n * self.rank() as i64, n).copy_(&local);
        self.group.all_reduce_sum(&mut all)?;
        Ok(all.to_device(Device::Cpu))
    }

    /// Completes a tensor of which each rank filled its own rows and left the others zero (the
    /// images of an evaluation split among the ranks): one all-reduce sum, exact for any dtype
    /// since every element is non-zero on one rank at most.
    ///
    /// # Errors
    /// [`TrainError::Dist`] when a peer fails.
    pub fn sum_shards(&self, t: &mut Tensor) -> Result<()> {
        if self.group.device() != t.device() {
            let mut on = t.to_device(self.group.device());
            self.group.all_reduce_sum(&mut on)?;
            *t = on.to_device(t.device());
            return Ok(());
        }
        Ok(self.group.all_reduce_sum(t)?)
    }

    /// Waits for every rank at the end of the run (so that no rank reports success while rank
    /// 0 is still writing, or has failed writing, the last checkpoint).
    ///
    /// # Errors
    /// [`TrainError::Dist`] when a peer failed.
    pub fn finish(&self) -> Result<()> {
        Ok(self.group.barrier()?)
    }
}

/// Config keys that may differ between the ranks of one run: the device (`cuda:LOCAL_RANK`), the
/// CPU threads and the data file's path (each machine its own mount).
const PER_RANK_KEYS: [&str; 3] = ["run.device", "run.cpu_threads", "data.path"];

/// The first setting (dotted key, in key order) in which the resolved config of rank `rank`
/// (`here`) differs from rank 0's (`root`), as a message naming both values; `None` when they
/// agree apart from [`PER_RANK_KEYS`].
pub fn config_difference(root: &str, here: &str, rank: usize) -> Option<String> {
    let parse = |text: &str| match text.parse::<toml::Value>() {
        Ok(v) => crate::config::dotted_values(&v),
        Err(e) => [("(config)".to_string(), format!("unreadable: {e}"))].into(),
    };
    let (a, b) = (parse(root), parse(here));
    let keys: std::collections::BTreeSet<String> = a.keys().chain(b.keys()).cloned().collect();
    let key = keys
        .into_iter()
        .filter(|k| !PER_RANK_KEYS.contains(&k.as_str()))
        .find(|k| a.get(k) != b.get(k))?;
    let show = |m: &std::collections::BTreeMap<String, String>| {
        m.get(&key).cloned().unwrap_or_else(|| "(not set)".into())
    };
    Some(format!(
        "its config differs from rank 0's at `{key}`: {} on rank {rank}, {} on rank 0 (every rank \
         of a run must be started with the same settings)",
        show(&b),
        show(&a)
    ))
}

#[cfg(test)]
mod tests {
    use super::config_difference;

    #[test]
    fn configs_are_compared_key_by_key_except_per_rank_ones() {
        let root = "[optim]\nlr = 0.0002\n[run]\ndevice = \"cuda:0\"\ncpu_threads = 1\n[data]\npath = \"/a/mnist.h5\"\n";
        let same = "[run]\ndevice = \"cuda:1\"\ncpu_threads = 4\n[data]\npath = \"/b/mnist.h5\"\n[optim]\nlr = 0.0002\n";
        assert_eq!(config_difference(root, same, 1), None);
        let other = same.replace("0.0002", "0.1");
        let msg = config_difference(root, &other, 1).unwrap();
        assert!(
            msg.contains("`optim.lr`: 0.1 on rank 1, 0.0002 on rank 0"),
            "{msg}"
        );
        let missing = "[run]\ndevice = \"cuda:1\"\n";
        let msg = config_difference(root, missing, 3).unwrap();
        assert!(msg.contains("`optim.lr`: (not set) on rank 3"), "{msg}");
    }
}
