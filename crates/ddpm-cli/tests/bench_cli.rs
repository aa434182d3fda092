//! `ddpm-cli bench`: a smoke test that the benchmark runs and reports valid JSON with the expected
//! keys, and that `--weights-out` writes a diffusers folder. It asserts no speed.

use std::process::Command;

use serde_json::Value;

#[test]
fn bench_runs_and_prints_json_with_the_expected_keys() {
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("weights");
    let out = Command::new(env!("CARGO_BIN_EXE_ddpm-cli"))
        .args([
            "bench",
            "--preset",
            "mnist-cpu",
            "--steps",
            "1",
            "--sample-steps",
            "1",
            "--batch",
            "2",
        ])
        .args([
            "--warmup",
            "0",
            "--chain",
            "ddim2",
            "--threads",
            "1",
            "--json",
            "--weights-out",
        ])
        .arg(&weights)
        .output()
        .expect("ddpm-cli runs");
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON document");
    for key in [
        "impl", "preset", "device", "dtype", "threads", "batch", "params", "train", "sample",
        "chain", "memory",
    ] {
        assert!(!report[key].is_null(), "missing `{key}` in {report}");
    }
    assert_eq!(report["preset"], "mnist-cpu");
    assert_eq!(report["batch"], 2);
    assert_eq!(report["threads"], 1);
    for (section, key) in [
        ("train", "step_s"),
        ("train", "images_per_s"),
        ("train", "final_loss"),
        ("sample", "eval_s"),
        ("sample", "evals_per_s"),
        ("sample", "image_evals_per_s"),
        ("chain", "images_per_s"),
    ] {
        let v = report[section][key]
            .as_f64()
            .unwrap_or_else(|| panic!("{section}.{key} is not a number in {report}"));
        assert!(v.is_finite() && v > 0.0, "{section}.{key} = {v}");
    }
    assert_eq!(report["chain"]["evals"], 2);
    assert_eq!(report["chain"]["finite"], true);
    assert!(report["memory"]["train_peak_rss_mib"].as_f64().is_some());
    assert!(
        weights.join("config.json").exists()
            && weights.join("diffusion_pytorch_model.safetensors").exists()
    );
}

#[test]
fn bench_rejects_an_unknown_preset_and_dtype() {
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_ddpm-cli"))
            .arg("bench")
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["--preset", "imagenet", "--json"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("imagenet"));
    let out = run(&["--dtype", "f16"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("f16"));
}

/// The busy-loop processes whose parent is `pid` (from /proc).
fn busy_children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // Field 4 (after the parenthesised command name) is the parent's PID.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        let cmdline = std::fs::read(format!("/proc/{child}/cmdline")).unwrap_or_default();
        if ppid == Some(pid) && String::from_utf8_lossy(&cmdline).contains("while :; do :; done") {
            out.push(child);
        }
    }
    out
}

/// Starts a small `bench` with `load` busy loops and waits until they all run; returns the
/// benchmark and the loops' PIDs.
fn bench_with_load(steps: &str, load: usize) -> (std::process::Child, Vec<u32>) {
    let child = Command::new(env!("CARGO_BIN_EXE_ddpm-cli"))
        .args([
            "bench",
            "--preset",
            "mnist-cpu",
            "--steps",
            steps,
            "--sample-steps",
            "1",
        ])
        .args(["--batch", "2", "--warmup", "0", "--chain", "none", "--json"])
        .args(["--background-load", &load.to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The loops start before anything is timed and live while the benchmark runs.
    let start = std::time::Instant::now();
    let mut seen = Vec::new();
    while seen.len() < load && start.elapsed().as_secs() < 60 {
        seen = busy_children(child.id());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(seen.len(), load, "busy loops of the benchmark: {seen:?}");
    (child, seen)
}

#[test]
fn a_background_load_runs_beside_the_benchmark_and_ends_with_it() {
    let (child, seen) = bench_with_load("2", 2);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["background_load"], 2);
    assert!(report["thread_policy"]["cpu_available"].as_u64().unwrap() >= 1);
    for loop_pid in seen {
        assert!(
            !std::path::Path::new(&format!("/proc/{loop_pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{loop_pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z ")),
            "busy loop {loop_pid} outlived the benchmark"
        );
    }
}

#[test]
fn a_killed_benchmark_takes_its_background_load_with_it() {
    let (mut child, seen) = bench_with_load("1000", 1);
    child.kill().unwrap();
    child.wait().unwrap();
    // PR_SET_PDEATHSIG: the kernel kills the loop when its parent dies (reaped by init).
    let gone = |p: u32| {
        std::fs::read_to_string(format!("/proc/{p}/stat")).map_or(true, |s| s.contains(") Z "))
    };
    let start = std::time::Instant::now();
    while !gone(seen[0]) && start.elapsed().as_secs() < 10 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        gone(seen[0]),
        "busy loop {} outlived a SIGKILL of the benchmark",
        seen[0]
    );
}
