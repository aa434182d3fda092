//! The CPU thread policy as a user meets it (see `ddpm_nets::cpu_threads`): without a wait policy
//! in the environment, a computing command restarts itself with OpenMP threads that sleep instead of
//! spinning; the user's setting wins; the default thread count follows the CPUs the process may use.
//! (Also the rest of what `info` reports about the machine's compute: the distributed backends.)
mod common;

use std::os::unix::process::CommandExt;
use std::process::Command;

use serde_json::Value;

/// `ddpm-cli info --json`'s device report, started with `setup` applied to the command.
fn info(setup: impl FnOnce(&mut Command)) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = common::cli(dir.path());
    cmd.env_remove("OMP_WAIT_POLICY")
        .env_remove("GOMP_SPINCOUNT")
        .env_remove("DDPM_CPU_POLICY_RESTARTED")
        .env_remove("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE")
        .args(["info", "--json"]);
    setup(&mut cmd);
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", common::text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["device"].clone()
}

#[test]
fn without_a_policy_the_command_restarts_with_passive_waiting_and_tf32() {
    let d = info(|_| {});
    assert_eq!(d["cpu_wait_policy"]["omp_wait_policy"], "PASSIVE", "{d}");
    assert_eq!(d["cpu_wait_policy"]["set_by"], "ddpm-cli", "{d}");
    assert_eq!(d["tf32_cublas_override"], "1", "{d}");
    assert_eq!(d["cpu_threads"], d["cpu_available"], "{d}");
}

#[test]
fn the_users_wait_policy_and_tf32_choice_win() {
    let d = info(|c| {
        c.env("OMP_WAIT_POLICY", "ACTIVE")
            .env("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE", "0");
    });
    assert_eq!(d["cpu_wait_policy"]["omp_wait_policy"], "ACTIVE", "{d}");
    assert_eq!(d["cpu_wait_policy"]["set_by"], "environment", "{d}");
    assert_eq!(d["tf32_cublas_override"], "0", "{d}");
    let d = info(|c| {
        c.env("GOMP_SPINCOUNT", "1000");
    });
    assert_eq!(d["cpu_wait_policy"]["set_by"], "environment", "{d}");
    assert!(d["cpu_wait_policy"]["omp_wait_policy"].is_null(), "{d}");
}

#[test]
fn default_threads_follow_the_affinity_mask_and_threads_overrides() {
    // Pinned to CPU 0 (as `taskset -c 0` would): one CPU available, one thread, through the restart.
    let d = info(|c| {
        // SAFETY: sched_setaffinity is async-signal-safe; the set lives on this stack frame.
        unsafe {
            c.pre_exec(|| {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(0, &mut set);
                if libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });
    assert_eq!(d["cpu_available"], 1, "{d}");
    assert_eq!(d["cpu_threads"], 1, "{d}");
    let d = info(|c| {
        c.args(["--threads", "3"]);
    });
    assert_eq!(d["cpu_threads"], 3, "{d}");
}

#[test]
fn info_lists_the_distributed_backends() {
    let dir = tempfile::tempdir().unwrap();
    let out = common::cli(dir.path())
        .args(["info", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    // NCCL is built where the libtorch has CUDA and the build found its headers.
    let nccl = ddpm_dist::Backend::Nccl.is_built();
    if std::env::var_os("CI").is_some() {
        // CI's torch is the PyPI (CUDA) wheel and `cargo xtask setup` installs NCCL's headers.
        assert!(nccl, "CI builds ddpm-dist with NCCL");
    }
    assert_eq!(
        v["distributed_backends"],
        serde_json::json!({"gloo": true, "nccl": nccl}),
        "{v}"
    );
    let out = common::cli(dir.path()).arg("info").output().unwrap();
    assert!(out.status.success(), "{}", common::text(&out));
    let text = common::text(&out);
    let line = if nccl {
        "\ndistributed backends: gloo yes, nccl yes\n"
    } else {
        "\ndistributed backends: gloo yes, nccl not built\n"
    };
    assert!(text.contains(line), "{text}");
}
