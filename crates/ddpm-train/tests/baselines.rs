//! The GAN and VAE baselines on real MNIST with tiny networks: checkpoints and run files, sampling,
//! exact resume, stop on request and NaN detection.
mod common;

use common::{assert_same, tensors};
use common::{mnist_h5, torch_rng_lock as serial};

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use ddpm_train::baselines::{load_baseline_for_sampling, sample_baseline, NETWORKS_FILE};
use ddpm_train::config::{ModelConfig, ModelKind};
use ddpm_train::engine::{TrainOptions, TrainSummary};
use ddpm_train::run_dir::RunDir;
use ddpm_train::tasks::{train_gan, train_vae};
use ddpm_train::{Result, TrainConfig, TrainError};
use tch::{Device, Kind};

type Train = fn(&Path, &TrainConfig, bool, &TrainOptions) -> Result<TrainSummary>;

/// A baseline small enough to take a step in milliseconds on one CPU thread.
fn tiny(kind: ModelKind, steps: usize) -> TrainConfig {
    let mut c = TrainConfig::preset_for_model("mnist-cpu", kind).unwrap();
    match &mut c.model {
        ModelConfig::Gan(g) => (g.latent_dim, g.base_channels, g.disc_channels) = (8, 8, 8),
        ModelConfig::Vae(v) => (v.latent_dim, v.base_channels) = (8, 8),
        ModelConfig::Ddpm(_) => unreachable!("tiny() is for the baselines"),
    }
    c.data.path = mnist_h5();
    c.data.batch_size = 8;
    c.run.steps = steps;
    c.run.cpu_threads = 1;
    c.run.log_every = 2;
    c.run.checkpoint_every = 2;
    c.run.sample_every = 0;
    c.run.sample_num = 4;
    c
}

/// Trains 6 steps in one go and 3 + 3 with a resume; checks the run files, the checkpoint groups,
/// sampling, and that both runs end bit-identical.
fn check_train_and_resume(kind: ModelKind, train: Train, groups: &[&str], metrics: &[&str]) {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let (full, split) = (dir.path().join("full"), dir.path().join("split"));
    let opts = TrainOptions::default();
    let s = train(&full, &tiny(kind, 6), false, &opts).unwrap();
    assert_eq!((s.step, s.interrupted), (6, false));
    assert!(s.last_loss.is_finite());
    assert!(s.checkpoint.ends_with("step_0000006"));
    for g in groups {
        let t = tensors(&s.checkpoint.join(format!("{g}.safetensors")));
        assert!(!t.is_empty(), "{g}");
        assert!(
            t.values().all(|x| x.isfinite().all().int64_value(&[]) == 1),
            "{g} is not finite"
        );
    }
    assert!(full.join(NETWORKS_FILE).is_file() && full.join("config.toml").is_file());
    assert!(full.join("loss.png").is_file() && full.join("samples/step_6.png").is_file());
    let records = RunDir::open(&full).unwrap().read_metrics().unwrap();
    assert_eq!(
        records
            .iter()
            .map(|r| r["step"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![2, 4, 6]
    );
    for m in metrics {
        assert!(
            records
                .iter()
                .all(|r| r[*m].as_f64().is_some_and(f64::is_finite)),
            "{m}: {records:?}"
        );
    }

    // Sampling: uint8 [N, 28, 28, 1], a function of the seed.
    let a = sample_baseline(&full, 5, 7, Device::Cpu).unwrap();
    assert_eq!((a.size(), a.kind()), (vec![5, 28, 28, 1], Kind::Uint8));
    assert!(a.equal(&sample_baseline(&full, 5, 7, Device::Cpu).unwrap()));
    assert!(!a.equal(&sample_baseline(&full, 5, 8, Device::Cpu).unwrap()));
    let loaded = load_baseline_for_sampling(&full, Device::Cpu).unwrap();
    assert_eq!((loaded.kind, loaded.step), (kind, 6));

    // First half, then a resume that extends run.steps to 6.
    train(&split, &tiny(kind, 3), false, &opts).unwrap();
    let s = train(&split, &tiny(kind, 6), true, &opts).unwrap();
    assert_eq!(s.step, 6);
    for g in groups {
        let f = format!("checkpoints/step_0000006/{g}.safetensors");
        assert_same(&full.join(&f), &split.join(&f));
    }
    let steps: Vec<u64> = RunDir::open(&split)
        .unwrap()
        .read_metrics()
        .unwrap()
        .iter()
        .map(|r| r["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, vec![2, 3, 4, 6]);
}

#[test]
fn gan_trains_samples_and_resumes_exactly() {
    check_train_and_resume(
        ModelKind::Gan,
        train_gan,
        &["generator", "discriminator", "optim_g", "optim_d"],
        &["d_loss", "g_loss", "d_real", "d_fake"],
    );
}

#[test]
fn vae_trains_samples_and_resumes_exactly() {
    check_train_and_resume(
        ModelKind::Vae,
        train_vae,
        &["model", "optim"],
        &["loss", "elbo_bpd", "recon_bpd", "kl_bpd"],
    );
}

#[test]
fn stop_request_saves_and_resume_continues_identically() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let (full, stopped) = (dir.path().join("full"), dir.path().join("stopped"));
    let mut cfg = tiny(ModelKind::Gan, 4);
    cfg.run.checkpoint_every = 100;
    train_gan(&full, &cfg, false, &TrainOptions::default()).unwrap();
    let opts = TrainOptions {
        progress: false,
        stop: Arc::new(AtomicBool::new(true)),
        evaluator: None,
        parallel: None,
    };
    let s = train_gan(&stopped, &cfg, false, &opts).unwrap();
    assert_eq!((s.step, s.interrupted), (1, true));
    let s = train_gan(&stopped, &cfg, true, &TrainOptions::default()).unwrap();
    assert_eq!((s.step, s.interrupted), (4, false));
    let f = "checkpoints/step_0000004/generator.safetensors";
    assert_same(&full.join(f), &stopped.join(f));
}

#[test]
fn non_finite_loss_names_the_step() {
    let _serial = serial();
    for (kind, train) in [
        (ModelKind::Gan, train_gan as Train),
        (ModelKind::Vae, train_vae as Train),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("nan");
        let mut cfg = tiny(kind, 30);
        cfg.optim.lr = 1e30;
        cfg.optim.grad_clip = 0.0;
        match train(&run, &cfg, false, &TrainOptions::default()) {
            Err(e @ TrainError::NonFinite { step, .. }) => {
                assert!((1..=30).contains(&step), "{kind:?}: {step}");
                assert!(e.to_string().contains(&format!("step {step}")), "{e}");
                // Every checkpoint on disk precedes the bad step.
                for (s, _) in RunDir::open(&run).unwrap().checkpoints().unwrap() {
                    assert!(
                        s < step,
                        "{kind:?}: checkpoint {s} written at or after the bad step {step}"
                    );
                }
            }
            other => panic!(
                "{kind:?}: expected a non-finite error, got {:?}",
                other.map(|s| s.step)
            ),
        }
    }
}

#[test]
fn wrong_kind_and_ddpm_runs_are_refused() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let err = train_gan(
        &dir.path().join("a"),
        &tiny(ModelKind::Vae, 2),
        false,
        &TrainOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("model.kind"), "{err}");
    // A DDPM run directory is not a baseline.
    let ddpm = dir.path().join("ddpm");
    RunDir::create(&ddpm, &TrainConfig::preset("mnist-cpu").unwrap()).unwrap();
    assert!(load_baseline_for_sampling(&ddpm, Device::Cpu).is_err());
}
