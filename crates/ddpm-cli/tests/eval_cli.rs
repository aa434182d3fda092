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
    assert_eq!(keys, ["fid", "n_fake", "n_real", "network", "warnings"]);
    // The network is named with its digest; 8 images are fewer than the 2048 features.
    assert_eq!(v["network"]["sha256"].as_str().unwrap().len(), 64, "{v}");
    assert!(
        v["warnings"][0]
            .as_str()
            .unwrap()
            .contains("fewer than its 2048 features"),
        "{v}"
    );
    assert_eq!(v["n_real"], 8);
    assert_eq!(v["n_fake"], 8);
    let fid = v["fid"].as_f64().unwrap();
    assert!(fid.abs() < 1e-6, "FID of a set with itself: {fid}");
}

#[test]
fn missing_classifier_and_pool3_inception_score_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    write_pngs(dir.path());
    let src = dir.path().to_str().unwrap();
    let missing = dir.path().join("no-classifier");
    let out = eval(&[
        "--real",
        src,
        "--fake",
        src,
        "--fid-cls",
        "--json",
        "--device",
        "cpu",
        "--classifier",
        missing.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ddpm-cli train-classifier --dataset mnist"),
        "{stderr}"
    );

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

/// A classifier with fresh (seeded) weights saved as `train-classifier` would.
fn random_classifier(dir: &Path) {
    use ddpm_nets::classifier::{Classifier, ClassifierConfig};
    tch::manual_seed(3);
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let net = Classifier::new(vs.root(), &ClassifierConfig::default()).unwrap();
    ddpm_nets::checkpoint::save_model(dir, net.config(), &vs).unwrap();
}

#[test]
fn classifier_metrics_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let (pngs, clf) = (dir.path().join("pngs"), dir.path().join("clf"));
    std::fs::create_dir_all(&pngs).unwrap();
    write_pngs(&pngs);
    random_classifier(&clf);
    let src = pngs.to_str().unwrap();
    let out = eval(&[
        "--real",
        src,
        "--fake",
        src,
        "--fid-cls",
        "--is-cls",
        "--splits",
        "2",
        "--json",
        "--device",
        "cpu",
        "--classifier",
        clf.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "eval failed\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let mut keys: Vec<_> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "classifier",
            "fid_cls",
            "is_cls_mean",
            "is_cls_std",
            "n_fake",
            "n_real",
            "warnings"
        ]
    );
    assert_eq!(
        v["classifier"]["model_sha256"].as_str().unwrap().len(),
        64,
        "{v}"
    );
    let fid = v["fid_cls"].as_f64().unwrap();
    assert!(fid.abs() < 1e-6, "FID_cls of a set with itself: {fid}");
    let is = v["is_cls_mean"].as_f64().unwrap();
    assert!((1.0..=10.0).contains(&is), "IS_cls {is}");
}

/// `<workspace>/datasets/mnist.h5`; fails loudly when `cargo xtask fetch-data` has not run.
fn mnist_h5() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../datasets/mnist.h5");
    assert!(
        p.exists(),
        "{} is missing: run `cargo xtask fetch-data` first",
        p.display()
    );
    p
}

/// A DDPM small enough to train 2 steps in a second (T = 50; with T = 20 the scaled linear schedule reaches β = 1).
fn tiny_ddpm_config() -> ddpm_train::TrainConfig {
    use ddpm_nets::unet::{DownBlockType, UpBlockType};
    let mut c = ddpm_train::TrainConfig::preset("mnist-cpu").unwrap();
    c.model.unet_mut().unwrap().block_out_channels = vec![8, 16];
    c.model.unet_mut().unwrap().down_block_types =
        vec![DownBlockType::Down, DownBlockType::AttnDown];
    c.model.unet_mut().unwrap().up_block_types = vec![UpBlockType::AttnUp, UpBlockType::Up];
    c.model.unet_mut().unwrap().norm_num_groups = 4;
    c.model.unet_mut().unwrap().layers_per_block = 1;
    c.diffusion.timesteps = 50;
    c.data.path = mnist_h5();
    c.data.batch_size = 4;
    c.run.steps = 2;
    c.run.cpu_threads = 1;
    c.run.log_every = 1;
    c.run.checkpoint_every = 2;
    c.run.sample_every = 0;
    c.run.sample_num = 4;
    c.run.sample_steps = "ddim5".parse().unwrap();
    c
}

fn nll_json(run: &Path) -> Value {
    let data = format!("{}:test", mnist_h5().display());
    let out = eval(&[
        "--nll",
        "--model",
        run.to_str().unwrap(),
        "--data",
        &data,
        "--limit",
        "3",
        "--json",
        "--device",
        "cpu",
        "--threads",
        "1",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "eval --nll failed\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[test]
fn nll_of_tiny_ddpm_and_vae_runs_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let ddpm = dir.path().join("ddpm");
    let opts = ddpm_train::engine::TrainOptions::default();
    ddpm_train::tasks::train_ddpm(&ddpm, &tiny_ddpm_config(), false, &opts).unwrap();
    let v = nll_json(&ddpm);
    assert_eq!(v["n"], 3);
    assert_eq!(v["nll_model"], "ddpm");
    let get = |k: &str| v[k].as_f64().unwrap_or_else(|| panic!("{k} missing: {v}"));
    let (bpd, prior, vb, dec) = (
        get("bpd"),
        get("bpd_prior"),
        get("bpd_vb"),
        get("bpd_decoder"),
    );
    assert!(bpd.is_finite() && bpd > 0.0, "{v}");
    assert!(
        (bpd - (prior + vb + dec)).abs() < 1e-9 * bpd.max(1.0),
        "{v}"
    );
    assert!(prior >= 0.0 && vb >= 0.0 && dec >= 0.0, "{v}");

    let vae = dir.path().join("vae");
    let mut c =
        ddpm_train::TrainConfig::preset_for_model("mnist-cpu", ddpm_train::config::ModelKind::Vae)
            .unwrap();
    c.data.path = mnist_h5();
    c.data.batch_size = 8;
    c.run.steps = 2;
    c.run.cpu_threads = 1;
    c.run.log_every = 1;
    c.run.checkpoint_every = 2;
    c.run.sample_every = 0;
    c.run.sample_num = 4;
    ddpm_train::tasks::train_vae(&vae, &c, false, &opts).unwrap();
    let v = nll_json(&vae);
    assert_eq!(v["nll_model"], "vae");
    assert!(v["bpd_vb"].is_null(), "{v}");
    let bpd = v["bpd"].as_f64().unwrap();
    let parts = v["bpd_prior"].as_f64().unwrap() + v["bpd_decoder"].as_f64().unwrap();
    assert!(
        bpd.is_finite() && (bpd - parts).abs() < 1e-9 * bpd.max(1.0),
        "{v}"
    );
}

#[test]
fn missing_inception_file_names_the_fetch_command() {
    let dir = tempfile::tempdir().unwrap();
    write_pngs(dir.path());
    let src = dir.path().to_str().unwrap();
    let missing = dir.path().join("absent/fid-inception-pool3.pt");
    let out = eval(&[
        "--real",
        src,
        "--fake",
        src,
        "--fid",
        "--device",
        "cpu",
        "--inception",
        missing.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(missing.to_str().unwrap()) && stderr.contains("cargo xtask fetch-weights"),
        "{stderr}"
    );
}

/// Ten 28×28 grey PNGs named `000.png` … `009.png`, a pattern per `seed`.
fn write_pattern_pngs(dir: &Path, seed: u32) {
    std::fs::create_dir_all(dir).unwrap();
    for n in 0..10u32 {
        let img = image::GrayImage::from_fn(28, 28, |x, y| {
            image::Luma([((n * 31 + seed * 97 + x * (seed + 3) + y * 5) % 256) as u8])
        });
        img.save(dir.join(format!("{n:03}.png"))).unwrap();
    }
}

#[test]
fn the_reference_statistics_cache_is_keyed_on_the_pixels_not_the_names() {
    let dir = tempfile::tempdir().unwrap();
    let (real, fake) = (dir.path().join("real"), dir.path().join("fake"));
    write_pattern_pngs(&real, 1);
    write_pattern_pngs(&fake, 2);
    let cache = dir.path().join("cache.h5");
    let weights = pool3_weights();
    let run = || {
        let out = eval(&[
            "--real",
            real.to_str().unwrap(),
            "--fake",
            fake.to_str().unwrap(),
            "--fid",
            "--json",
            "--device",
            "cpu",
            "--batch-size",
            "5",
            "--inception",
            weights.to_str().unwrap(),
            "--real-stats",
            cache.to_str().unwrap(),
        ]);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stdout}\n{stderr}");
        let v: Value = serde_json::from_str(stdout.trim()).unwrap();
        (v["fid"].as_f64().unwrap(), stderr)
    };
    let (first, _) = run();
    assert!(cache.is_file());
    let (again, stderr) = run();
    assert_eq!(again, first, "the cache gives the same statistics");
    assert!(!stderr.contains("recomputing"), "{stderr}");
    // Same names, same count, other pixels: the cache must not be used.
    write_pattern_pngs(&real, 3);
    let (replaced, stderr) = run();
    assert!(
        stderr.contains("other images") && stderr.contains("recomputing"),
        "{stderr}"
    );
    std::fs::remove_file(&cache).unwrap();
    let (fresh, _) = run();
    assert_eq!(replaced, fresh, "equal to a computation without any cache");
    assert!((replaced - first).abs() > 1e-6, "{replaced} vs {first}");
}
