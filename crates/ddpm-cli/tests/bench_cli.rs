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
