//! `ddpm-cli compare` on tiny runs that it trains itself (2 steps each), without FID-Inception.
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

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

fn random_classifier(dir: &Path) {
    use ddpm_nets::classifier::{Classifier, ClassifierConfig};
    tch::manual_seed(3);
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let net = Classifier::new(vs.root(), &ClassifierConfig::default()).unwrap();
    ddpm_nets::checkpoint::save_model(dir, net.config(), &vs).unwrap();
}

#[test]
fn compare_trains_missing_tiny_runs_and_writes_the_report() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    random_classifier(&d.join("clf"));
    let mnist = mnist_h5();
    let config = format!(
        r#"
out_dir = "{out}"
device = "cpu"
cpu_threads = 1
samples = 8
reference = "{mnist}:test"
reference_images = 40
nll_images = 2
fid_inception = false
classifier = "{clf}"
splits = 2
batch_size = 8
grid_images = 4
ddpm_rows = [{{ spec = "10" }}, {{ spec = "ddim5", samples = 6 }}]

[ddpm]
run = "{ddpm}"
set = [
    "model.unet.block_out_channels=[8, 16]",
    "model.unet.down_block_types=[\"DownBlock2D\", \"AttnDownBlock2D\"]",
    "model.unet.up_block_types=[\"AttnUpBlock2D\", \"UpBlock2D\"]",
    "model.unet.norm_num_groups=4",
    "diffusion.timesteps=50",
    "run.sample_steps=\"ddim5\"",
]

[gan]
run = "{gan}"

[vae]
run = "{vae}"

[train]
preset = "mnist-cpu"
set = ["data.path=\"{mnist}\"", "data.batch_size=8", "run.steps=2", "run.cpu_threads=1", "run.log_every=1", "run.checkpoint_every=2", "run.sample_num=4"]
"#,
        out = d.join("report").display(),
        mnist = mnist.display(),
        clf = d.join("clf").display(),
        ddpm = d.join("ddpm").display(),
        gan = d.join("gan").display(),
        vae = d.join("vae").display(),
    );
    let cfg_path = d.join("compare.toml");
    std::fs::write(&cfg_path, config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ddpm-cli"))
        .args(["compare", "--config", cfg_path.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .output()
        .expect("run ddpm-cli");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "compare failed\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = d.join("report");
    let md = std::fs::read_to_string(report.join("report.md")).unwrap();
    for needle in [
        "| DDPM | ancestral 10 | 8 |",
        "| DDPM | DDIM 5 | 6 |",
        "| GAN | generator | 8 |",
        "| VAE | decoder mean | 8 |",
    ] {
        assert!(md.contains(needle), "{needle} missing from\n{md}");
    }
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("report.json")).unwrap())
            .unwrap();
    let rows = json["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 4);
    for r in rows {
        assert!(r["fid_cls"].as_f64().unwrap().is_finite(), "{r}");
        assert!(r["is_cls_mean"].as_f64().unwrap() >= 1.0 - 1e-9, "{r}");
        assert!(r["fid_inception"].is_null(), "{r}");
        assert!(r["parameters"].as_u64().unwrap() > 0, "{r}");
        assert_eq!(r["train_steps"], 2, "{r}");
    }
    assert!(
        rows[0]["bpd"].as_f64().unwrap() > 0.0,
        "DDPM bits/dim: {}",
        rows[0]
    );
    assert_eq!(
        rows[0]["bpd"], rows[1]["bpd"],
        "one bound per DDPM, whatever the sampler"
    );
    assert!(rows[2]["bpd"].is_null(), "a GAN has no bits/dim");
    assert!(
        rows[3]["bpd"].as_f64().unwrap() > 0.0,
        "VAE ELBO: {}",
        rows[3]
    );
    let png = image::open(report.join("report.png")).unwrap();
    let cell = 4 * 28 + ddpm_train::viz::GRID_GAP; // 28×28 digits shown ×4, with a gap
    assert_eq!(
        png.width() as usize,
        4 * (2 * cell + ddpm_train::viz::GRID_GAP) + 3 * 12,
        "four 2×2 grids side by side"
    );
    assert!(report.join("samples/gan-generator.h5").is_file());
}

/// `<workspace>/datasets/weights/fid-inception-pool3.pt`; fails loudly when missing.
fn pool3_weights() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../datasets/weights/fid-inception-pool3.pt");
    assert!(
        p.is_file(),
        "{} is missing: run `cargo xtask fetch-weights`",
        p.display()
    );
    p
}

#[test]
fn compare_with_inception_fid_on_a_few_samples() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    random_classifier(&d.join("clf"));
    let mnist = mnist_h5();
    let config = format!(
        r#"
out_dir = "{out}"
device = "cpu"
cpu_threads = 1
samples = 4
reference = "{mnist}:test"
reference_images = 6
nll_images = 0
fid_inception = true
inception = "{inception}"
reference_inception_stats = "{cache}"
classifier = "{clf}"
splits = 2
batch_size = 4
grid_images = 4
ddpm_rows = [{{ spec = "ddim5" }}]

[ddpm]
run = "{ddpm}"
set = [
    "model.unet.block_out_channels=[8, 16]",
    "model.unet.down_block_types=[\"DownBlock2D\", \"AttnDownBlock2D\"]",
    "model.unet.up_block_types=[\"AttnUpBlock2D\", \"UpBlock2D\"]",
    "model.unet.norm_num_groups=4",
    "diffusion.timesteps=50",
    "run.sample_steps=\"ddim5\"",
]

[gan]
include = false

[vae]
include = false

[train]
set = ["data.path=\"{mnist}\"", "data.batch_size=4", "run.steps=1", "run.cpu_threads=1", "run.log_every=1", "run.sample_num=4"]
"#,
        out = d.join("report").display(),
        mnist = mnist.display(),
        inception = pool3_weights().display(),
        cache = d.join("ref-stats.h5").display(),
        clf = d.join("clf").display(),
        ddpm = d.join("ddpm").display(),
    );
    let cfg_path = d.join("compare.toml");
    std::fs::write(&cfg_path, config).unwrap();
    let run = || {
        let out = Command::new(env!("CARGO_BIN_EXE_ddpm-cli"))
            .args(["compare", "--config", cfg_path.to_str().unwrap()])
            .env("RUST_LOG", "warn")
            .output()
            .expect("run ddpm-cli");
        assert!(
            out.status.success(),
            "compare failed\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let json: Value =
            serde_json::from_str(&std::fs::read_to_string(d.join("report/report.json")).unwrap())
                .unwrap();
        json["rows"][0]["fid_inception"]
            .as_f64()
            .expect("FID-Inception computed")
    };
    let fid = run();
    assert!(fid.is_finite() && fid > 0.0, "{fid}");
    assert!(
        d.join("ref-stats.h5").is_file(),
        "reference statistics cached"
    );
    // The second run reuses the run directory and the cached reference statistics.
    assert_eq!(run(), fid);
}
