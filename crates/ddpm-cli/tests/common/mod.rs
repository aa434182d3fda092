//! Helpers of the command-line tests: the binary, a tiny training config, folder listings.
#![allow(dead_code)]
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ddpm_train::TrainConfig;

pub fn cli(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ddpm-cli"));
    c.current_dir(dir).env("RUST_BACKTRACE", "0");
    c
}

pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Every path under `dir`, relative to it.
pub fn listing(dir: &Path) -> BTreeSet<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            out.insert(p.strip_prefix(root).unwrap().to_path_buf());
            if p.is_dir() && !p.is_symlink() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(dir, dir, &mut out);
    out
}

pub fn mnist() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../datasets/mnist.h5");
    assert!(
        p.exists(),
        "{} is missing: run `cargo xtask fetch-data`",
        p.display()
    );
    std::fs::canonicalize(p).unwrap()
}

/// A DDPM small enough to train in seconds, as a TOML file in `dir`.
pub fn tiny_config(dir: &Path, steps: usize) -> PathBuf {
    tiny_config_with(dir, steps, &[])
}

/// [`tiny_config`] with further `--set` style overrides (written as `tiny-STEPS-K.toml`, K the
/// number of overrides).
pub fn tiny_config_with(dir: &Path, steps: usize, extra: &[&str]) -> PathBuf {
    let cfg = TrainConfig::preset("mnist-cpu")
        .unwrap()
        .with_overrides(&[
            "model.unet.block_out_channels=[8, 16]".into(),
            "model.unet.down_block_types=[\"DownBlock2D\", \"DownBlock2D\"]".into(),
            "model.unet.up_block_types=[\"UpBlock2D\", \"UpBlock2D\"]".into(),
            "model.unet.norm_num_groups=4".into(),
            "model.unet.layers_per_block=1".into(),
            "diffusion.timesteps=50".into(),
            // Plain L_simple and a fixed EMA decay (mnist-cpu's recipe turns both on).
            "diffusion.loss_weighting=\"none\"".into(),
            "optim.ema_warmup=false".into(),
            format!("data.path=\"{}\"", mnist().display()),
            "data.batch_size=4".into(),
            format!("run.steps={steps}"),
            "run.log_every=1".into(),
            "run.checkpoint_every=1".into(),
            "run.sample_every=0".into(),
            "run.sample_num=0".into(),
            "run.cpu_threads=1".into(),
        ])
        .and_then(|c| c.with_overrides(&extra.iter().map(|s| s.to_string()).collect::<Vec<_>>()))
        .unwrap();
    let path = dir.join(format!("tiny-{steps}-{}.toml", extra.len()));
    std::fs::write(&path, cfg.to_toml()).unwrap();
    path
}

/// A digit classifier with random weights (seed 3) saved in `dir`: scores move with the images,
/// which is all a test of the plumbing needs.
pub fn random_classifier(dir: &Path) {
    use ddpm_nets::classifier::{Classifier, ClassifierConfig};
    tch::manual_seed(3);
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let net = Classifier::new(vs.root(), &ClassifierConfig::default()).unwrap();
    ddpm_nets::checkpoint::save_model(dir, net.config(), &vs).unwrap();
}
