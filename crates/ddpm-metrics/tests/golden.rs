//! FID and IS against an independent numpy/scipy computation on fixed matrices
//! (`golden/gen_fid_is.py` wrote `golden/fid_is.json`).
use approx::assert_relative_eq;
use ddpm_metrics::{frechet_distance_from_features, frechet_terms, inception_score, FeatureStats};
use ndarray::Array2;
use serde_json::Value;

const REL: f64 = 1e-6;

fn golden() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/fid_is.json");
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{path}: {e} (regenerate with tests/golden/gen_fid_is.py)"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn matrix(v: &Value, key: &str) -> Array2<f64> {
    let rows = v[key]
        .as_array()
        .unwrap_or_else(|| panic!("golden `{key}` is not an array"));
    let cols = rows[0].as_array().unwrap().len();
    let flat: Vec<f64> = rows
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()))
        .collect();
    Array2::from_shape_vec((rows.len(), cols), flat).unwrap()
}

fn number(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("golden `{key}` is not a number"))
}

#[test]
fn fid_matches_scipy_sqrtm() {
    let g = golden();
    let (a, b) = (matrix(&g, "features_a"), matrix(&g, "features_b"));
    assert_eq!(a.dim(), (200, 64));
    let terms = frechet_terms(
        &FeatureStats::from_features(a.view()).unwrap(),
        &FeatureStats::from_features(b.view()).unwrap(),
    )
    .unwrap();
    let (want, want_trace) = (number(&g, "fid"), number(&g, "fid_trace_sqrt"));
    eprintln!(
        "FID ours {:.15} scipy {want:.15} rel {:.2e}; Tr sqrt ours {:.15} scipy {want_trace:.15}",
        terms.distance,
        (terms.distance - want).abs() / want,
        terms.trace_sqrt
    );
    assert_relative_eq!(terms.distance, want, max_relative = REL);
    assert_relative_eq!(terms.trace_sqrt, want_trace, max_relative = REL);
    // Arguments swapped: the distance is symmetric.
    let swapped = frechet_distance_from_features(b.view(), a.view()).unwrap();
    assert_relative_eq!(swapped, want, max_relative = REL);
}

#[test]
fn fid_of_a_set_with_itself_is_zero() {
    let g = golden();
    let a = matrix(&g, "features_a");
    let d = frechet_distance_from_features(a.view(), a.view()).unwrap();
    let scale = FeatureStats::from_features(a.view())
        .unwrap()
        .cov
        .diag()
        .sum();
    eprintln!(
        "self-FID {d:e} (trace of Σ {scale:.3}; scipy gave {:e})",
        number(&g, "fid_self_scipy")
    );
    assert!(d.abs() < 1e-9 * scale, "self-FID {d}");
}

#[test]
fn inception_score_matches_numpy() {
    let g = golden();
    let p = matrix(&g, "probs");
    let splits = g["is_splits"].as_u64().unwrap() as usize;
    let s = inception_score(p.view(), splits).unwrap();
    let (want_mean, want_std) = (number(&g, "is_mean"), number(&g, "is_std"));
    eprintln!(
        "IS ours {:.15} ± {:.15}; numpy {want_mean:.15} ± {want_std:.15}",
        s.mean, s.std
    );
    assert_relative_eq!(s.mean, want_mean, max_relative = REL);
    assert_relative_eq!(s.std, want_std, max_relative = REL);
    let want_splits = g["is_split_scores"].as_array().unwrap();
    assert_eq!(s.split_scores.len(), want_splits.len());
    for (ours, theirs) in s.split_scores.iter().zip(want_splits) {
        assert_relative_eq!(*ours, theirs.as_f64().unwrap(), max_relative = REL);
    }
}
