//! The domain classifier: brief training on a subset of real MNIST is well above chance, and a
//! saved folder loads back to identical logits and features.
use std::path::PathBuf;

use ddpm_nets::classifier::ClassifierConfig;
use ddpm_train::classifier::{
    accuracy, load_classifier, read_report, save_classifier, ACCURACY_FILE,
};
use ddpm_train::engine::TrainOptions;
use ddpm_train::loader::{load_images, to_model_input};
use ddpm_train::tasks::classifier::{train_classifier, ClassifierRunConfig, ClassifierTrainConfig};
use tch::Device;

fn mnist_h5() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../datasets/mnist.h5");
    assert!(
        p.exists(),
        "{} is missing: run `cargo xtask fetch-data` first",
        p.display()
    );
    p
}

/// libtorch's generator is global to the process: the two trainings here must not interleave.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn brief_training_beats_chance_and_the_folder_round_trips() {
    let _serial = serial();
    tch::set_num_threads(2);
    let path = mnist_h5();
    let train = load_images(&path, "train").unwrap();
    let test = load_images(&path, "test").unwrap();
    let net = ClassifierConfig {
        base_channels: 8,
        feature_dim: 64,
        ..ClassifierConfig::default()
    };
    let cfg = ClassifierTrainConfig {
        steps: Some(200),
        batch_size: 32,
        lr: 2e-3,
        train_limit: Some(5000),
        test_limit: Some(1000),
        log_every: 50,
        ..ClassifierTrainConfig::default()
    };
    let run = ClassifierRunConfig {
        dataset: "mnist".into(),
        data: path.clone(),
        net,
        train: cfg,
    };
    let dir = tempfile::tempdir().unwrap();
    let trained = train_classifier(
        &dir.path().join("run"),
        false,
        &run,
        &train,
        &test,
        Device::Cpu,
        &TrainOptions::default(),
    )
    .unwrap();
    let (vs, clf, report) = (trained.vs, trained.net, trained.report.unwrap());
    assert_eq!(
        (report.steps, report.test_images, report.train_images),
        (200, 1000, 5000)
    );
    assert!(
        report.test_accuracy > 0.8,
        "accuracy {} after 200 steps",
        report.test_accuracy
    );
    assert!(
        report.final_train_loss.is_finite() && report.final_train_loss < 1.0,
        "{}",
        report.final_train_loss
    );
    assert_eq!(
        accuracy(&clf, &test, 1000, Device::Cpu).unwrap(),
        report.test_accuracy
    );

    let out = dir.path().join("classifier-mnist");
    save_classifier(&out, &vs, &clf, &report).unwrap();
    for f in ["config.json", "model.safetensors", ACCURACY_FILE] {
        assert!(out.join(f).is_file(), "{f}");
    }
    assert_eq!(read_report(&out).unwrap(), report);
    let (_vs2, clf2) = load_classifier(&out, Device::Cpu).unwrap();
    assert_eq!(clf2.config(), clf.config());
    let (x_u8, _) = test.gather(&(0..16).collect::<Vec<_>>());
    let x = to_model_input(&x_u8, false, Device::Cpu);
    assert!(clf.forward_t(&x, false).equal(&clf2.forward_t(&x, false)));
    assert!(clf.features(&x).equal(&clf2.features(&x)));
    assert!(load_classifier(&dir.path().join("missing"), Device::Cpu).is_err());
}

/// A classifier run stopped on request after its first step and resumed ends with the weights and
/// optimiser state of an uninterrupted 6-step run, bit for bit (the cosine learning rate depends on
/// the total, so both sessions run with steps = 6).
#[test]
fn resumed_classifier_run_matches_an_uninterrupted_one() {
    let _serial = serial();
    tch::set_num_threads(1);
    let path = mnist_h5();
    let train = load_images(&path, "train").unwrap();
    let test = load_images(&path, "test").unwrap();
    let run = ClassifierRunConfig {
        dataset: "mnist".into(),
        data: path.clone(),
        net: ClassifierConfig {
            base_channels: 4,
            feature_dim: 16,
            ..ClassifierConfig::default()
        },
        train: ClassifierTrainConfig {
            steps: Some(6),
            batch_size: 8,
            train_limit: Some(200),
            test_limit: Some(50),
            log_every: 2,
            ..ClassifierTrainConfig::default()
        },
    };
    let dir = tempfile::tempdir().unwrap();
    let (full, split) = (dir.path().join("full"), dir.path().join("split"));
    let train_run = |dir: &std::path::Path, resume: bool, stop: bool| {
        let opts = TrainOptions {
            progress: false,
            stop: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(stop)),
            evaluator: None,
            parallel: None,
        };
        train_classifier(dir, resume, &run, &train, &test, Device::Cpu, &opts).unwrap()
    };
    let a = train_run(&full, false, false);
    let stopped = train_run(&split, false, true);
    assert_eq!(
        (stopped.summary.step, stopped.summary.interrupted),
        (1, true)
    );
    let b = train_run(&split, true, false);
    assert_eq!((a.summary.step, b.summary.step), (6, 6));
    assert!(!b.summary.interrupted);
    let (ra, rb) = (a.report.unwrap(), b.report.unwrap());
    assert_eq!(ra.test_accuracy, rb.test_accuracy);
    // Resuming the finished run trains nothing and reports the last logged loss, not NaN.
    let again = train_run(&full, true, false);
    assert_eq!(again.summary.step, 6);
    assert_eq!(again.report.unwrap().final_train_loss, ra.final_train_loss);
    for f in ["model.safetensors", "optim.safetensors"] {
        let read = |run: &std::path::Path| {
            tch::Tensor::read_safetensors(run.join("checkpoints/step_0000006").join(f))
                .unwrap()
                .into_iter()
                .collect::<std::collections::BTreeMap<_, _>>()
        };
        let (tx, ty) = (read(&full), read(&split));
        assert_eq!(tx.len(), ty.len());
        for ((nx, vx), (ny, vy)) in tx.iter().zip(&ty) {
            assert_eq!(nx, ny);
            assert!(vx.equal(vy), "{f}: {nx} differs after resume");
        }
    }
    // A second run into the same folder is refused (the run is kept).
    let err = train_classifier(
        &full,
        false,
        &run,
        &train,
        &test,
        Device::Cpu,
        &TrainOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("--resume"), "{err}");
}
