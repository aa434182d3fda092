//! The DDPM training loop on real MNIST with a tiny UNet: exact resume, clean stop, NaN detection,
//! mismatched checkpoints and unwritable run directories.
mod common;

use common::{assert_same, tensors};

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use ddpm_math::{LossType, ModelVarType};
use ddpm_train::config::LossWeighting;
use ddpm_train::engine::TrainOptions;
use ddpm_train::run_dir::RunDir;
use ddpm_train::tasks::train_ddpm;
use ddpm_train::TrainError;

#[test]
fn resumed_run_matches_an_uninterrupted_one_exactly() {
    let _rng = common::torch_rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let (full, split) = (dir.path().join("full"), dir.path().join("split"));
    let opts = TrainOptions::default();
    let s = train_ddpm(&full, &common::tiny_config(8), false, &opts).unwrap();
    assert_eq!((s.step, s.interrupted), (8, false));
    assert!(s.last_loss.is_finite());

    // First half, then a resume that extends run.steps to 8.
    train_ddpm(&split, &common::tiny_config(4), false, &opts).unwrap();
    let s = train_ddpm(&split, &common::tiny_config(8), true, &opts).unwrap();
    assert_eq!(s.step, 8);
    common::assert_same_checkpoint(&full, &split, 8);
    // Each step is logged once, checkpoints are pruned to keep_checkpoints (3).
    let steps: Vec<u64> = RunDir::open(&split)
        .unwrap()
        .read_metrics()
        .unwrap()
        .iter()
        .map(|r| r["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, vec![2, 4, 6, 8]);
    let kept: Vec<usize> = RunDir::open(&split)
        .unwrap()
        .checkpoints()
        .unwrap()
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(kept, vec![4, 6, 8]);
    assert!(split.join("loss.png").exists() && split.join("samples/step_8.png").exists());
}

#[test]
fn stop_request_saves_and_resume_continues_identically() {
    let _rng = common::torch_rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let (full, stopped) = (dir.path().join("full"), dir.path().join("stopped"));
    let mut cfg = common::tiny_config(6);
    cfg.run.checkpoint_every = 100; // only the stop and the end write checkpoints
    train_ddpm(&full, &cfg, false, &TrainOptions::default()).unwrap();
    // A stop requested before the first step: one step is taken, checkpointed, and the run ends.
    let opts = TrainOptions {
        progress: false,
        stop: Arc::new(AtomicBool::new(true)),
        evaluator: None,
        parallel: None,
    };
    let s = train_ddpm(&stopped, &cfg, false, &opts).unwrap();
    assert_eq!((s.step, s.interrupted), (1, true));
    assert!(s.checkpoint.ends_with("step_0000001"));
    let s = train_ddpm(&stopped, &cfg, true, &TrainOptions::default()).unwrap();
    assert_eq!((s.step, s.interrupted), (6, false));
    assert_same(
        &full.join("checkpoints/step_0000006/model.safetensors"),
        &stopped.join("checkpoints/step_0000006/model.safetensors"),
    );
}

#[test]
fn non_finite_loss_names_the_step_and_keeps_the_last_good_checkpoint() {
    let _rng = common::torch_rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("nan");
    let mut cfg = common::tiny_config(40);
    cfg.optim.lr = 1e30;
    cfg.optim.warmup_steps = 0;
    cfg.optim.grad_clip = 0.0;
    match train_ddpm(&run, &cfg, false, &TrainOptions::default()) {
        Err(TrainError::NonFinite {
            what,
            step,
            value,
            last_checkpoint,
            ..
        }) => {
            assert!(!value.is_finite() && ["loss", "weights"].contains(&what));
            assert!((1..=40).contains(&step), "{step}");
            let kept = RunDir::open(&run).unwrap().checkpoints().unwrap();
            // Every checkpoint on disk precedes the bad step and holds finite weights.
            for (s, p) in &kept {
                assert!(
                    *s < step,
                    "checkpoint {s} was written at or after the bad step {step}"
                );
                for (name, t) in tensors(&p.join("model.safetensors")) {
                    assert!(
                        t.isfinite().all().int64_value(&[]) == 1,
                        "{name} in {} is not finite",
                        p.display()
                    );
                }
            }
            assert_eq!(last_checkpoint, kept.last().map(|(_, p)| p.clone()));
            let msg = TrainError::NonFinite {
                what,
                step,
                value,
                last_checkpoint: None,
                rank: None,
            }
            .to_string();
            assert!(msg.contains(&format!("step {step}")), "{msg}");
        }
        other => panic!(
            "expected a non-finite loss error, got {:?}",
            other.map(|s| s.step)
        ),
    }
}

#[test]
fn resuming_with_a_mismatched_checkpoint_names_the_tensor() {
    let _rng = common::torch_rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    train_ddpm(
        &run,
        &common::tiny_config(2),
        false,
        &TrainOptions::default(),
    )
    .unwrap();
    // Change the architecture of the run, then resume: the checkpoint no longer fits.
    let mut cfg = common::tiny_config(4);
    cfg.model.unet_mut().unwrap().block_out_channels = vec![8, 24];
    let err = train_ddpm(&run, &cfg, true, &TrainOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model.safetensors") && err.contains("down_blocks.1"),
        "{err}"
    );
}

#[test]
fn unwritable_run_directory_fails_before_training() {
    let _rng = common::torch_rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let err = train_ddpm(
        &file.join("run"),
        &common::tiny_config(2),
        false,
        &TrainOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("a-file"), "{err}");
    // A second run into an existing run directory is refused rather than mixed in.
    let run = dir.path().join("run");
    train_ddpm(
        &run,
        &common::tiny_config(2),
        false,
        &TrainOptions::default(),
    )
    .unwrap();
    let err = train_ddpm(
        &run,
        &common::tiny_config(2),
        false,
        &TrainOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("already holds a run"), "{err}");
}

#[test]
fn resume_of_a_missing_run_is_an_error() {
    let _rng = common::torch_rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let err = train_ddpm(
        &dir.path().join("none"),
        &common::tiny_config(2),
        true,
        &TrainOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("no such run directory"), "{err}");
}

#[test]
fn hybrid_and_vlb_objectives_train_and_resume_exactly() {
    let _rng = common::torch_rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let learned = |steps: usize, loss: LossType, importance: bool| {
        let mut c = common::tiny_config(steps);
        c.model.unet_mut().unwrap().out_channels = 2;
        c.diffusion.var_type = ModelVarType::LearnedRange;
        c.diffusion.loss_type = loss;
        c.diffusion.importance_sampling = importance;
        c
    };
    let opts = TrainOptions::default();
    let s = train_ddpm(
        &dir.path().join("hybrid"),
        &learned(4, LossType::Hybrid, false),
        false,
        &opts,
    )
    .unwrap();
    assert!(s.last_loss.is_finite() && s.last_loss > 0.0);
    // L_vlb with the importance sampler: its loss history is checkpointed, so resuming is exact.
    let (full, split) = (dir.path().join("vlb-full"), dir.path().join("vlb-split"));
    train_ddpm(&full, &learned(6, LossType::Vlb, true), false, &opts).unwrap();
    train_ddpm(&split, &learned(4, LossType::Vlb, true), false, &opts).unwrap();
    let state = RunDir::read_state(&split.join("checkpoints/step_0000004")).unwrap();
    let history = state
        .sampler_history
        .expect("the importance sampler's history is saved");
    assert_eq!(history.len(), 50);
    assert_eq!(
        history.iter().map(Vec::len).sum::<usize>(),
        16,
        "4 steps × batch 4 losses recorded"
    );
    train_ddpm(&split, &learned(6, LossType::Vlb, true), true, &opts).unwrap();
    assert_same(
        &full.join("checkpoints/step_0000006/model.safetensors"),
        &split.join("checkpoints/step_0000006/model.safetensors"),
    );
}

/// min-SNR-γ weighting and the EMA warm-up change what is trained (the loss, the EMA) and still
/// resume exactly: the warm-up's decay follows the global step that the checkpoint restores.
#[test]
fn min_snr_weighting_and_ema_warmup_train_and_resume_exactly() {
    let _rng = common::torch_rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let cfg = |steps: usize| {
        let mut c = common::tiny_config(steps);
        c.diffusion.loss_weighting = LossWeighting::MinSnr;
        c.optim.ema_warmup = true;
        c
    };
    let opts = TrainOptions::default();
    let run = |name: &str| dir.path().join(name);
    // The first warm-up decay is 0: after one step the EMA is the weights.
    train_ddpm(&run("one"), &cfg(1), false, &opts).unwrap();
    let one = run("one").join("checkpoints/step_0000001");
    assert_same(&one.join("model.safetensors"), &one.join("ema.safetensors"));
    train_ddpm(&run("plain"), &common::tiny_config(6), false, &opts).unwrap();
    let s = train_ddpm(&run("full"), &cfg(6), false, &opts).unwrap();
    assert!(s.last_loss.is_finite() && s.last_loss > 0.0);
    let losses = |name: &str| -> Vec<f64> {
        let records = RunDir::open(&run(name)).unwrap().read_metrics().unwrap();
        records
            .iter()
            .map(|r| r["loss"].as_f64().unwrap())
            .collect()
    };
    let (plain, weighted) = (losses("plain"), losses("full"));
    assert_eq!(plain.len(), weighted.len());
    assert!(
        plain.iter().zip(&weighted).all(|(a, b)| a != b),
        "the weighting changes every logged loss: {weighted:?} vs {plain:?}"
    );
    train_ddpm(&run("split"), &cfg(4), false, &opts).unwrap();
    train_ddpm(&run("split"), &cfg(6), true, &opts).unwrap();
    common::assert_same_checkpoint(&run("full"), &run("split"), 6);
}

#[test]
fn cpu_bf16_autocast_changes_the_arithmetic_and_still_resumes_exactly() {
    let _rng = common::torch_rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let (f32_dir, bf16_dir, split) = (
        dir.path().join("f32"),
        dir.path().join("bf16"),
        dir.path().join("split"),
    );
    let opts = TrainOptions::default();
    let bf16 = |steps| {
        let mut c = common::tiny_config(steps);
        c.run.cpu_bf16 = true;
        c
    };
    let a = train_ddpm(&f32_dir, &common::tiny_config(4), false, &opts).unwrap();
    let b = train_ddpm(&bf16_dir, &bf16(4), false, &opts).unwrap();
    assert!(a.last_loss.is_finite() && b.last_loss.is_finite());
    let last = |d: &Path| d.join("checkpoints/step_0000004/model.safetensors");
    let (wa, wb) = (tensors(&last(&f32_dir)), tensors(&last(&bf16_dir)));
    let mut max_diff = 0.0f64;
    for (name, ta) in &wa {
        let d = (ta - &wb[name]).abs().max().double_value(&[]);
        max_diff = max_diff.max(d);
    }
    // Autocast really ran (the weights moved differently) but the run is the same run to bf16 accuracy:
    // four Adam steps of lr 1e-3 move a weight by at most ~4e-3.
    assert!(
        max_diff > 0.0,
        "bf16 autocast left the arithmetic unchanged"
    );
    assert!(
        max_diff < 4e-3,
        "f32 and bf16 runs drifted apart: {max_diff}"
    );
    train_ddpm(&split, &bf16(2), false, &opts).unwrap();
    train_ddpm(&split, &bf16(4), true, &opts).unwrap();
    common::assert_same_checkpoint(&bf16_dir, &split, 4);
}

/// Gradient accumulation: 4 micro-batches of 2 images give the update of one step on the batch of
/// 8 (same draws of t and ε: they are made for the whole batch), up to summation order.
#[test]
fn gradient_accumulation_equals_one_full_batch_step() {
    let _rng = common::torch_rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str, k: usize| {
        let mut cfg = common::tiny_config(2);
        cfg.model.unet_mut().unwrap().dropout = 0.0; // dropout masks are drawn per micro-batch
                                                     // Adam's first update is lr·g/(|g| + ε): with the default ε = 1e-8 it turns rounding noise
                                                     // on parameters whose true gradient is 0 (attention key biases: softmax ignores them) into
                                                     // ±lr. A larger ε makes the update Lipschitz in g, so the comparison sees the gradients.
        cfg.optim.eps = 1e-3;
        cfg.data.batch_size = 8;
        cfg.optim.grad_accum = k;
        let path = dir.path().join(name);
        train_ddpm(&path, &cfg, false, &TrainOptions::default()).unwrap();
        path
    };
    let (full, accum) = (run("full", 1), run("accum", 4));
    let ckpt = "checkpoints/step_0000002";
    let eight = tensors(&full.join(ckpt).join("model.safetensors"));
    for f in ["model.safetensors", "ema.safetensors"] {
        let (a, b) = (
            tensors(&full.join(ckpt).join(f)),
            tensors(&accum.join(ckpt).join(f)),
        );
        assert_eq!(a.len(), b.len());
        for (name, x) in &a {
            let diff = (x - &b[name]).abs().max().double_value(&[]);
            assert!(diff <= 1e-6, "{f}: {name} differs by {diff}");
        }
    }
    // The runs did train (a different batch size would not give the same weights).
    let mut other = common::tiny_config(2);
    other.model.unet_mut().unwrap().dropout = 0.0;
    other.data.batch_size = 2;
    let p = dir.path().join("small");
    train_ddpm(&p, &other, false, &TrainOptions::default()).unwrap();
    let small = tensors(&p.join(ckpt).join("model.safetensors"));
    let moved: f64 = eight
        .iter()
        .map(|(n, x)| (x - &small[n]).abs().max().double_value(&[]))
        .fold(0.0, f64::max);
    assert!(moved > 1e-5, "batch 2 and batch 8 runs agree to {moved}");
    // The logged loss is the full batch's mean either way.
    let loss = |p: &Path| {
        RunDir::open(p).unwrap().read_metrics().unwrap()[0]["loss"]
            .as_f64()
            .unwrap()
    };
    assert!(
        (loss(&full) - loss(&accum)).abs() < 1e-5,
        "{} vs {}",
        loss(&full),
        loss(&accum)
    );
    // A batch that grad_accum does not divide is refused by name.
    let mut bad = common::tiny_config(2);
    bad.optim.grad_accum = 3;
    let err = train_ddpm(
        &dir.path().join("bad"),
        &bad,
        false,
        &TrainOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("optim.grad_accum"), "{err}");
    assert!(
        !dir.path().join("bad").exists(),
        "a refused run left its directory"
    );
}

/// An evaluator that returns scripted scores in turn and records the shapes it was given.
struct Scripted {
    scores: Vec<f64>,
    calls: std::cell::RefCell<Vec<Vec<i64>>>,
}

impl ddpm_train::engine::Evaluator for Scripted {
    fn name(&self) -> &str {
        "fid_test"
    }

    fn score(&self, images: &tch::Tensor) -> Result<f64, String> {
        let mut calls = self.calls.borrow_mut();
        calls.push(images.size());
        assert_eq!(images.kind(), tch::Kind::Uint8);
        Ok(self.scores[calls.len() - 1])
    }
}

fn scripted(scores: &[f64]) -> TrainOptions {
    TrainOptions {
        evaluator: Some(Box::new(Scripted {
            scores: scores.to_vec(),
            calls: Default::default(),
        })),
        ..TrainOptions::default()
    }
}

fn eval_records(run: &Path) -> Vec<(u64, f64)> {
    RunDir::open(run)
        .unwrap()
        .read_metrics()
        .unwrap()
        .iter()
        .filter_map(|r| Some((r["step"].as_u64()?, r["fid_test"].as_f64()?)))
        .collect()
}

/// The `(step, value)` of the scalar `tag` in the run's event files.
fn event_scalars(run: &Path, tag: &str) -> Vec<(i64, f32)> {
    use ddpm_train::tensorboard::proto::{Kind, What};
    let mut out = Vec::new();
    for file in ddpm_train::tensorboard::event_files(&run.join("tensorboard")).unwrap() {
        for e in ddpm_train::tensorboard::read_events(&file).unwrap() {
            if let Some(What::Summary(s)) = &e.what {
                for v in s.value.iter().filter(|v| v.tag == tag) {
                    if let Some(Kind::SimpleValue(x)) = v.kind {
                        out.push((e.step, x));
                    }
                }
            }
        }
    }
    out
}

#[test]
fn evaluation_records_scores_keeps_the_best_checkpoint_and_leaves_training_unchanged() {
    let _rng = common::torch_rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let (plain, evaluated, resumed) = (
        dir.path().join("plain"),
        dir.path().join("evaluated"),
        dir.path().join("resumed"),
    );
    let mut cfg = common::tiny_config(8);
    cfg.run.eval_every = 2;
    cfg.run.eval_samples = 5;
    cfg.run.eval_sampler = ddpm_train::config::SampleSteps::new("dpm++4").unwrap();
    train_ddpm(&plain, &cfg, false, &TrainOptions::default()).unwrap();
    let opts = scripted(&[5.0, 3.0, 4.0, 3.5]);
    let s = train_ddpm(&evaluated, &cfg, false, &opts).unwrap();
    assert_eq!(s.step, 8);
    assert!(
        s.last_loss.is_finite(),
        "the last loss is read past the evaluation records"
    );
    assert_eq!(
        eval_records(&evaluated),
        vec![(2, 5.0), (4, 3.0), (6, 4.0), (8, 3.5)]
    );
    // Each evaluation is a scalar of the event file too, at its step.
    assert_eq!(
        event_scalars(&evaluated, "fid_test"),
        vec![(2, 5.0), (4, 3.0), (6, 4.0), (8, 3.5)]
    );
    // Evaluation draws from the torch generator but never changes the training.
    common::assert_same_checkpoint(&plain, &evaluated, 8);
    let run = RunDir::open(&evaluated).unwrap();
    assert_eq!(
        run.best().unwrap().map(|b| (b.0, b.1, b.2)),
        Some(("fid_test".into(), 3.0, 4))
    );
    let best = evaluated.join("checkpoints/best");
    assert_eq!(RunDir::read_state(&best).unwrap().step, 4);
    assert_same(
        &best.join("ema.safetensors"),
        &evaluated.join("checkpoints/step_0000004/ema.safetensors"),
    );
    // keep-N and resume see only step_N folders.
    let kept: Vec<usize> = run
        .checkpoints()
        .unwrap()
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(kept, vec![4, 6, 8]);
    assert!(evaluated.join("eval.png").is_file() && evaluated.join("loss.png").is_file());

    // A resumed run continues from the best score on record: step 6's 2.0 wins, step 8's does not.
    let mut half = cfg.clone();
    half.run.steps = 4;
    train_ddpm(&resumed, &half, false, &scripted(&[5.0, 3.0])).unwrap();
    train_ddpm(&resumed, &cfg, true, &scripted(&[2.0, 2.5])).unwrap();
    assert_eq!(
        eval_records(&resumed),
        vec![(2, 5.0), (4, 3.0), (6, 2.0), (8, 2.5)]
    );
    let best = RunDir::open(&resumed).unwrap().best().unwrap().unwrap();
    assert_eq!((best.0.as_str(), best.1, best.2), ("fid_test", 2.0, 6));
    // Scores made with another sample count do not compare: the first new one replaces the best.
    let mut more = cfg.clone();
    more.run.steps = 10;
    more.run.eval_samples = 6;
    train_ddpm(&resumed, &more, true, &scripted(&[9.0])).unwrap();
    let best = RunDir::open(&resumed).unwrap().best().unwrap().unwrap();
    assert_eq!((best.1, best.2), (9.0, 10));
}

#[test]
fn evaluation_scores_images_of_the_runs_shape() {
    let _rng = common::torch_rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::tiny_config(2);
    cfg.run.eval_every = 2;
    cfg.run.eval_samples = 3;
    let ev = Scripted {
        scores: vec![1.0],
        calls: Default::default(),
    };
    let calls = std::rc::Rc::new(ev);
    struct Shared(std::rc::Rc<Scripted>);
    impl ddpm_train::engine::Evaluator for Shared {
        fn name(&self) -> &str {
            self.0.name()
        }
        fn score(&self, images: &tch::Tensor) -> Result<f64, String> {
            self.0.score(images)
        }
    }
    let opts = TrainOptions {
        evaluator: Some(Box::new(Shared(calls.clone()))),
        ..TrainOptions::default()
    };
    train_ddpm(&dir.path().join("run"), &cfg, false, &opts).unwrap();
    assert_eq!(*calls.calls.borrow(), vec![vec![3, 28, 28, 1]]);
}

#[test]
fn a_time_limit_ends_the_run_with_a_checkpoint_and_a_resume_trains_no_further() {
    let _rng = common::torch_rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mut cfg = common::tiny_config(1_000_000);
    cfg.run.checkpoint_every = 0;
    cfg.run.time_limit_minutes = 0.02; // 1.2 s of training
    let opts = TrainOptions::default();
    let s = train_ddpm(&run, &cfg, false, &opts).unwrap();
    assert!(s.time_up && !s.interrupted, "{s:?}");
    assert!(s.step > 1 && s.step < 1_000_000, "{}", s.step);
    assert!(
        s.elapsed_secs >= 1.2 && s.elapsed_secs < 60.0,
        "{}",
        s.elapsed_secs
    );
    assert!(
        s.checkpoint.ends_with(format!("step_{:07}", s.step)),
        "{s:?}"
    );
    let state = RunDir::read_state(&s.checkpoint).unwrap();
    assert_eq!(state.step, s.step);
    // It ends as a run at run.steps does: with the final grid.
    assert!(run.join(format!("samples/step_{}.png", s.step)).exists());
    let records = || RunDir::open(&run).unwrap().read_metrics().unwrap().len();
    let before = records();
    // The budget is spent: a resume takes no step and writes nothing.
    let again = train_ddpm(&run, &cfg, true, &opts).unwrap();
    assert!(again.time_up && !again.interrupted);
    assert_eq!((again.step, records()), (s.step, before));
    // A larger limit trains on from there.
    cfg.run.time_limit_minutes = 0.03;
    let more = train_ddpm(&run, &cfg, true, &opts).unwrap();
    assert!(more.time_up && more.step > s.step, "{more:?} after {s:?}");
    assert!(more.elapsed_secs >= 1.8);
    // A bad limit is refused by key.
    cfg.run.time_limit_minutes = f64::NAN;
    let err = train_ddpm(&dir.path().join("bad"), &cfg, false, &opts).unwrap_err();
    assert!(err.to_string().contains("run.time_limit_minutes"), "{err}");
}
