//! `scripts/gpu_check.sh --dry-run` and the `scripts/ddpm` launcher, as the bundle of `cargo xtask
//! bundle` runs them on a GPU box: every step of the GPU check with tiny sizes on the CPU, through the
//! launcher (libtorch found from the project's Python), and the launcher's and the script's refusals.
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// MNIST's four .gz files as `cargo xtask fetch-data` leaves them.
fn mnist_raw() -> PathBuf {
    let dir = root().join("datasets/raw/mnist");
    assert!(
        dir.join("train-images-idx3-ubyte.gz").is_file(),
        "{} has no MNIST .gz files: run `cargo xtask fetch-data`",
        dir.display()
    );
    dir
}

/// A script of `scripts/` run as a user would: this build's ddpm-cli, the project's Python, and no
/// wait policy in the environment (so ddpm-cli applies its own).
fn script(name: &str, dir: &Path) -> Command {
    let mut c = Command::new(root().join("scripts").join(name));
    c.current_dir(dir)
        .env("DDPM_CLI", env!("CARGO_BIN_EXE_ddpm-cli"))
        .env("DDPM_PYTHON", root().join(".venv/bin/python"))
        .env_remove("LD_LIBRARY_PATH")
        .env_remove("DDPM_TORCH_LIB")
        .env_remove("OMP_WAIT_POLICY")
        .env_remove("GOMP_SPINCOUNT")
        .env_remove("DDPM_CPU_POLICY_RESTARTED")
        .env("RUST_BACKTRACE", "0");
    c
}

fn fails_with(out: Output, code: i32, needle: &str) {
    let text = common::text(&out);
    assert_eq!(out.status.code(), Some(code), "{text}");
    assert!(text.contains(needle), "expected `{needle}` in: {text}");
}

#[test]
fn the_dry_run_exercises_every_step_and_writes_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("check");
    let out = script("gpu_check.sh", dir.path())
        .args(["--dry-run", "--out"])
        .arg(&out_dir)
        .arg("--mnist")
        .arg(mnist_raw())
        .output()
        .unwrap();
    let text = common::text(&out);
    assert!(out.status.success(), "{text}");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("gpu_check.json")).unwrap())
            .unwrap();
    assert_eq!(report["dry_run"], true);
    assert_eq!(report["device"], "cpu");
    let steps = report["steps"].as_object().unwrap();
    for name in [
        "info",
        "bench_cifar10_bf16",
        "bench_cifar10_f32",
        "bench_mnist_bf16",
        "bench_mnist_f32",
        "import",
        "train",
        "sample",
        "classifier",
        "fid_cls",
        "cifar",
        "dp_plain",
        "dp_group",
    ] {
        assert_eq!(steps[name]["status"], 0, "{name}: {report:#}");
    }
    assert_eq!(
        report["info"]["cpu_wait_policy"]["set_by"], "ddpm-cli",
        "{report:#}"
    );
    for (key, bench) in report["bench"].as_object().unwrap() {
        assert!(bench["train_images_per_s"].as_f64().unwrap() > 0.0, "{key}");
        assert!(bench["sample_evals_per_s"].as_f64().unwrap() > 0.0, "{key}");
    }
    assert_eq!(report["bench"]["cifar10_bf16"]["dtype"], "bf16-autocast");
    assert_eq!(report["bench"]["cifar10_f32"]["dtype"], "f32");
    assert_eq!(report["train_mnist"]["step"], 4, "{report:#}");
    assert!(report["train_mnist"]["last_loss"]
        .as_f64()
        .unwrap()
        .is_finite());
    assert!(
        report["fid_cls"]["fid_cls"].as_f64().unwrap().is_finite(),
        "{report:#}"
    );
    assert!(
        report["cifar_sampling"]["extrapolated_50000_secs"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    assert_eq!(report["cifar_sampling"]["num"], 4);
    let dp = &report["data_parallel_cifar10_unet"];
    for run in ["plain", "process_group"] {
        assert!(
            dp[run]["images_per_s_median"].as_f64().unwrap() > 0.0,
            "{report:#}"
        );
    }
    assert_eq!(dp["process_group"]["world_size"], 1, "{report:#}");
    assert!(
        dp["process_group"]["allreduce_s_per_step_median"]
            .as_f64()
            .unwrap()
            >= 0.0
    );
    assert!(dp["plain"]["allreduce_s_per_step_median"].is_null());
    assert!(image::open(out_dir.join("mnist-grid.png")).is_ok());
    assert!(text.contains("50,000 extrapolated"), "{text}");
}

#[test]
fn the_launcher_and_the_check_refuse_what_cannot_work() {
    let dir = tempfile::tempdir().unwrap();
    // No libtorch where DDPM_TORCH_LIB points.
    let out = script("ddpm", dir.path())
        .env("DDPM_TORCH_LIB", dir.path())
        .arg("info")
        .output()
        .unwrap();
    fails_with(out, 1, "holds no libtorch_cpu.so");
    // A Python without torch.
    let out = script("ddpm", dir.path())
        .env("DDPM_PYTHON", "/usr/bin/false")
        .arg("info")
        .output()
        .unwrap();
    fails_with(out, 1, "cannot import torch");
    // No binary.
    let out = script("ddpm", dir.path())
        .env("DDPM_CLI", dir.path().join("missing"))
        .arg("info")
        .output()
        .unwrap();
    fails_with(out, 127, "no executable ddpm-cli");
    // Through the launcher, ddpm-cli's own status comes back.
    let out = script("ddpm", dir.path())
        .args(["sample", "--sampler", "ddimm"])
        .output()
        .unwrap();
    fails_with(out, 2, "a similar value exists");
    // The check: MNIST missing, an output folder in use, an unknown option.
    let out = script("gpu_check.sh", dir.path())
        .args(["--dry-run", "--mnist"])
        .arg(dir.path())
        .output()
        .unwrap();
    fails_with(out, 2, "train-images-idx3-ubyte.gz is missing");
    std::fs::write(dir.path().join("busy.txt"), "x").unwrap();
    let out = script("gpu_check.sh", dir.path())
        .args(["--dry-run", "--out"])
        .arg(dir.path())
        .arg("--mnist")
        .arg(mnist_raw())
        .output()
        .unwrap();
    fails_with(out, 2, "is not empty");
    let out = script("gpu_check.sh", dir.path())
        .arg("--fast")
        .output()
        .unwrap();
    fails_with(out, 2, "unknown argument --fast");
    let out = script("gpu_check.sh", dir.path())
        .args(["--dry-run", "--out"])
        .output()
        .unwrap();
    fails_with(out, 2, "--out needs a value");
    let out = script("gpu_check.sh", dir.path())
        .args(["--dry-run", "--out"])
        .arg(dir.path().join("busy.txt"))
        .arg("--mnist")
        .arg(mnist_raw())
        .output()
        .unwrap();
    fails_with(out, 2, "is a file, not a folder");
    // A bundle-like folder (the launcher beside ddpm-cli) run through a symlink elsewhere: the
    // launcher still finds its binary, which refuses a non-UTF-8 argument as a usage error.
    let bundle = dir.path().join("bundle");
    let link_dir = dir.path().join("bin");
    std::fs::create_dir(&bundle).unwrap();
    std::fs::create_dir(&link_dir).unwrap();
    std::fs::copy(root().join("scripts/ddpm"), bundle.join("ddpm")).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_ddpm-cli"), bundle.join("ddpm-cli")).unwrap();
    std::os::unix::fs::symlink(bundle.join("ddpm"), link_dir.join("ddpm")).unwrap();
    let out = script("ddpm", dir.path())
        .env_remove("DDPM_CLI")
        .arg("--version")
        .output()
        .unwrap();
    fails_with(out, 127, "no executable ddpm-cli at");
    let launch = || {
        let mut c = Command::new(link_dir.join("ddpm"));
        c.env_remove("DDPM_CLI")
            .env("DDPM_PYTHON", root().join(".venv/bin/python"));
        c
    };
    let out = launch().arg("--version").output().unwrap();
    assert!(out.status.success(), "{}", common::text(&out));
    use std::os::unix::ffi::OsStrExt;
    let out = launch()
        .args(["sample", "--out"])
        .arg(std::ffi::OsStr::from_bytes(b"x\xff.h5"))
        .output()
        .unwrap();
    fails_with(out, 2, "is not valid UTF-8");
}

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .collect()
}

#[test]
fn sigterm_stops_the_running_step_and_the_check_with_a_report() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("stopped check");
    let mut child = script("gpu_check.sh", dir.path())
        .args(["--dry-run", "--out"])
        .arg(&out_dir)
        .arg("--mnist")
        .arg(mnist_raw())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Stop it while its first benchmark runs.
    let start = std::time::Instant::now();
    while !out_dir.join("bench_cifar10_bf16.log").exists() {
        assert!(
            start.elapsed().as_secs() < 120,
            "the check never reached its benchmark"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(143));
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("gpu_check.json")).unwrap())
            .unwrap();
    assert_eq!(report["steps"]["info"]["status"], 0, "{report:#}");
    assert_ne!(
        report["steps"]["bench_cifar10_bf16"]["status"], 0,
        "{report:#}"
    );
    assert!(report["steps"].get("train").is_none(), "{report:#}");
    let needle = out_dir.to_string_lossy().into_owned();
    // The step's processes got their signal; give them a moment to end.
    let start = std::time::Instant::now();
    while !processes_mentioning(&needle).is_empty() && start.elapsed().as_secs() < 10 {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let left: Vec<String> = processes_mentioning(&needle)
        .iter()
        .map(|p| {
            let c = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            format!("{p}: {}", String::from_utf8_lossy(&c).replace('\0', " "))
        })
        .collect();
    assert!(left.is_empty(), "steps outlived the check: {left:?}");
}
