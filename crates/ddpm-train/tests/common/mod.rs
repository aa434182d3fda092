//! Shared helpers of ddpm-train's integration tests: a tiny DDPM config on the real MNIST file.
#![allow(dead_code)]
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ddpm_nets::unet::{DownBlockType, SampleSize, UpBlockType};
use ddpm_train::TrainConfig;

/// `datasets/mnist.h5` of the workspace; fails loudly when `cargo xtask fetch-data` has not run.
pub fn mnist_h5() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../datasets/mnist.h5");
    assert!(
        p.exists(),
        "{} is missing: run `cargo xtask fetch-data` first",
        p.display()
    );
    p
}

/// A DDPM small enough to take a training step in well under a second on a CPU.
pub fn tiny_config(steps: usize) -> TrainConfig {
    let mut c = TrainConfig::preset("mnist-cpu").unwrap();
    c.model.unet_mut().unwrap().block_out_channels = vec![8, 16];
    c.model.unet_mut().unwrap().down_block_types =
        vec![DownBlockType::Down, DownBlockType::AttnDown];
    c.model.unet_mut().unwrap().up_block_types = vec![UpBlockType::AttnUp, UpBlockType::Up];
    c.model.unet_mut().unwrap().norm_num_groups = 4;
    c.model.unet_mut().unwrap().layers_per_block = 1;
    c.model.unet_mut().unwrap().dropout = 0.1;
    c.model.unet_mut().unwrap().sample_size = Some(SampleSize::Square(28));
    c.diffusion.timesteps = 50;
    c.data.path = mnist_h5();
    c.data.batch_size = 4;
    c.optim.warmup_steps = 3;
    c.optim.ema_decay = 0.9;
    // Plain L_simple and a fixed EMA decay, as the tests were written for (mnist-cpu turns on
    // min-SNR and the EMA warm-up; tests that want them say so).
    c.diffusion.loss_weighting = ddpm_train::config::LossWeighting::None;
    c.optim.ema_warmup = false;
    c.run.steps = steps;
    c.run.cpu_threads = 1;
    c.run.log_every = 2;
    c.run.checkpoint_every = 2;
    c.run.sample_every = 0;
    c.run.sample_num = 4;
    c.run.sample_steps = "ddim5".parse().unwrap();
    c
}

/// libtorch's default generator is global to the process: tests that train (and so reseed it per
/// step) hold this lock so that parallel tests do not interleave their draws.
pub fn torch_rng_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The tensors of a safetensors file by name.
pub fn tensors(path: &Path) -> BTreeMap<String, tch::Tensor> {
    tch::Tensor::read_safetensors(path)
        .unwrap()
        .into_iter()
        .collect()
}

/// Asserts two safetensors files hold the same names and bit-identical tensors.
pub fn assert_same(a: &Path, b: &Path) {
    let (ta, tb) = (tensors(a), tensors(b));
    assert_eq!(ta.keys().collect::<Vec<_>>(), tb.keys().collect::<Vec<_>>());
    for (k, x) in &ta {
        assert!(
            x.equal(&tb[k]),
            "{k} differs between {} and {}",
            a.display(),
            b.display()
        );
    }
}

/// Asserts that two DDPM runs hold bit-identical model, EMA and optimiser files at checkpoint `step`.
pub fn assert_same_checkpoint(a_run: &Path, b_run: &Path, step: usize) {
    let dir = format!("checkpoints/step_{step:07}");
    for f in ["model.safetensors", "ema.safetensors", "optim.safetensors"] {
        assert_same(&a_run.join(&dir).join(f), &b_run.join(&dir).join(f));
    }
}
