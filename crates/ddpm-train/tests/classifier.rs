//! The domain classifier: brief training on a subset of real MNIST is well above chance, and a
//! saved folder loads back to identical logits and features.
use std::path::PathBuf;

use ddpm_nets::classifier::ClassifierConfig;
use ddpm_train::classifier::{
    accuracy, load_classifier, read_report, save_classifier, train_classifier,
    ClassifierTrainConfig, ACCURACY_FILE,
};
use ddpm_train::loader::{load_images, to_model_input};
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

#[test]
fn brief_training_beats_chance_and_the_folder_round_trips() {
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
    let (vs, clf, report) =
        train_classifier("mnist", &train, &test, &net, &cfg, Device::Cpu, false).unwrap();
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

    let dir = tempfile::tempdir().unwrap();
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
