//! The real FID Inception file (`fid-inception-pool3.pt`) through tch on the CPU: variant
//! detection, preprocessing + forward against PyTorch (`golden/gen_inception_features.py`), and
//! the Inception Score's error for this file.
use std::path::PathBuf;
use std::time::Instant;

use ddpm_metrics::inception::{
    EvalOptions, Inception, InceptionVariant, FEATURE_DIM, POOL3_SHA256,
};
use ddpm_metrics::{FeatureStats, MetricsError};
use ndarray::Array4;
use serde_json::Value;
use tch::Device;

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

/// The images of `gen_inception_features.py`: 4 × 28 × 28 grey.
fn golden_images() -> Array4<u8> {
    Array4::from_shape_fn((4, 28, 28, 1), |(n, y, x, _)| {
        ((37 * n + 11 * y + 5 * x + (x * y) % 7) % 256) as u8
    })
}

#[test]
fn pool3_file_is_detected_and_matches_pytorch() {
    let path = pool3_weights();
    let t0 = Instant::now();
    let net = Inception::load(&path, Device::Cpu).unwrap();
    let loaded = t0.elapsed();
    assert_eq!(net.variant(), InceptionVariant::Pool3Only);
    assert_eq!(net.sha256(), POOL3_SHA256);
    assert!(!net.variant().resizes_itself());

    let imgs = golden_images();
    let t1 = Instant::now();
    let feats = net.features(imgs.view()).unwrap();
    let ran = t1.elapsed();
    eprintln!("load {loaded:.2?}, 4 images {ran:.2?}");
    assert_eq!(feats.dim(), (4, FEATURE_DIM));
    assert!(feats.iter().all(|v| v.is_finite()));
    assert!(feats.iter().all(|&v| v >= 0.0), "pool3 follows a ReLU");

    let golden_path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/golden/inception_pool3.json"
    );
    let g: Value = serde_json::from_str(&std::fs::read_to_string(golden_path).unwrap()).unwrap();
    for n in 0..4 {
        let row = feats.row(n);
        let sum: f64 = row.iter().map(|&v| f64::from(v)).sum();
        let sum_sq: f64 = row.iter().map(|&v| f64::from(v).powi(2)).sum();
        let want_sum = g["sum"][n].as_f64().unwrap();
        let want_sq = g["sum_sq"][n].as_f64().unwrap();
        eprintln!(
            "image {n}: sum {sum:.6} (torch {want_sum:.6}), sum² {sum_sq:.6} (torch {want_sq:.6})"
        );
        assert!(
            (sum - want_sum).abs() <= 1e-4 * want_sum.abs(),
            "image {n}: sum {sum} vs {want_sum}"
        );
        assert!(
            (sum_sq - want_sq).abs() <= 1e-4 * want_sq.abs(),
            "image {n}: {sum_sq} vs {want_sq}"
        );
        for (j, want) in g["first16"][n].as_array().unwrap().iter().enumerate() {
            let want = want.as_f64().unwrap();
            let got = f64::from(row[j]);
            assert!(
                (got - want).abs() <= 1e-4 * want.abs().max(1e-2),
                "image {n} feature {j}: {got} vs {want}"
            );
        }
    }
    // Different images give different features.
    assert!((&feats.row(0) - &feats.row(1))
        .iter()
        .any(|d| d.abs() > 1e-3));

    // Batched evaluation (batches of 3 + a remainder of 1) gives the statistics of the features.
    let out = net
        .evaluate(
            imgs.view(),
            &EvalOptions {
                batch_size: 3,
                features: true,
                probabilities: false,
                progress: false,
            },
        )
        .unwrap();
    assert!(out.probabilities.is_none());
    let batched = out.stats.expect("features were asked for");
    let whole = FeatureStats::from_features(feats.view()).unwrap();
    assert_eq!(batched.n, 4);
    for (a, b) in batched
        .mean
        .iter()
        .chain(batched.cov.iter())
        .zip(whole.mean.iter().chain(whole.cov.iter()))
    {
        assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
    }

    // The Inception Score needs the other file, and says which.
    for err in [
        net.probabilities(imgs.view()).unwrap_err(),
        net.evaluate(
            imgs.view(),
            &EvalOptions {
                batch_size: 2,
                features: false,
                probabilities: true,
                progress: false,
            },
        )
        .unwrap_err(),
    ] {
        assert!(
            matches!(err, MetricsError::IsNeedsFullInception { .. }),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains("inception-2015-12-05.pt"), "{msg}");
        assert!(msg.contains(&path.display().to_string()), "{msg}");
    }
}

/// The library names the missing file in its own error variant; how to fetch the weights is the
/// command line's to add (`crates/ddpm-cli/tests/eval_cli.rs` checks that message).
#[test]
fn missing_weights_are_their_own_error_naming_the_file() {
    let err = Inception::load("/nonexistent/fid-inception-pool3.pt", Device::Cpu).unwrap_err();
    assert!(
        matches!(&err, MetricsError::MissingInception { path }
            if path == std::path::Path::new("/nonexistent/fid-inception-pool3.pt")),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("/nonexistent/fid-inception-pool3.pt"),
        "{err}"
    );
}
