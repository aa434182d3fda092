//! `ddpm-cli eval` end to end on a tiny PNG folder with the pool3 Inception on the CPU.
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// `<workspace>/datasets/weights/fid-inception-pool3.pt`, else `<workspace>/../shared/weights/…`;
/// fails loudly when neither exists.
fn pool3_weights() -> PathBuf {
    let ws = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let candidates = [
        ws.join("datasets/weights/fid-inception-pool3.pt"),
        ws.join("../shared/weights/fid-inception-pool3.pt"),
    ];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "fid-inception-pool3.pt not found at {} or {}: run `cargo xtask fetch-weights`",
                candidates[0].display(),
                candidates[1].display()
            )
        })
}

/// Ten 28×28 grey PNGs with distinct patterns.
fn write_pngs(dir: &Path) {
    for n in 0..10u32 {
        let img = image::GrayImage::from_fn(28, 28, |x, y| {
            image::Luma([((n * 29 + x * 7 + y * 3 + (x * y) % 5) % 256) as u8])
        });
        img.save(dir.join(format!("{n:03}.png"))).unwrap();
    }
}

fn eval(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ddpm-cli"))
        .arg("eval")
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run ddpm-cli")
}

#[test]
fn fid_of_a_folder_with_itself_is_zero_as_json() {
    let dir = tempfile::tempdir().unwrap();
    write_pngs(dir.path());
    let weights = pool3_weights();
    let src = dir.path().to_str().unwrap();
    let out = eval(&[
        "--real",
        src,
        "--fake",
        src,
        "--fid",
        "--json",
        "--limit",
        "8",
        "--device",
        "cpu",
        "--batch-size",
        "4",
        "--inception",
        weights.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "eval failed\nstdout: {stdout}\nstderr: {stderr}"
    );
    let v: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let obj = v.as_object().unwrap();
    let mut keys: Vec<_> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["fid", "n_fake", "n_real"]);
    assert_eq!(v["n_real"], 8);
    assert_eq!(v["n_fake"], 8);
    let fid = v["fid"].as_f64().unwrap();
    assert!(fid.abs() < 1e-6, "FID of a set with itself: {fid}");
}

#[test]
fn classifier_metrics_and_pool3_inception_score_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    write_pngs(dir.path());
    let src = dir.path().to_str().unwrap();
    let out = eval(&["--real", src, "--fake", src, "--fid-cls", "--json"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not yet available"), "{stderr}");

    let weights = pool3_weights();
    let out = eval(&[
        "--fake",
        src,
        "--is",
        "--device",
        "cpu",
        "--inception",
        weights.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("inception-2015-12-05.pt"), "{stderr}");
}
