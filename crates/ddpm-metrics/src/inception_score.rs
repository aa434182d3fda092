//! Inception Score from a matrix of class probabilities (Salimans et al. 2016): IS with the
//! Inception network's 1008-way softmax, IS_cls with a digit classifier's.
//!
//! The N rows are cut into `splits` consecutive parts (part k = rows ⌊kN/s⌋ .. ⌊(k+1)N/s⌋, as in
//! the reference implementation). Per part, with p(y) the part's mean row,
//! `IS_k = exp( mean_x KL(p(y|x) ‖ p(y)) )`; the score is the mean and the population standard
//! deviation (ddof 0, numpy's default) of the IS_k. Terms with p(y|x) = 0 contribute 0 (the limit
//! of p log p), where a literal numpy transcription would give NaN.
use ndarray::{ArrayView2, Axis};
use serde::Serialize;

use crate::error::{MetricsError, Result};

/// The usual number of splits.
pub const DEFAULT_SPLITS: usize = 10;

/// Largest accepted |Σ_y p(y|x) − 1| per row (probabilities from an f32 softmax).
const ROW_SUM_TOLERANCE: f64 = 1e-3;

/// Inception Score: mean and standard deviation over the splits, and each split's score.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InceptionScore {
    /// Mean of the per-split scores.
    pub mean: f64,
    /// Population standard deviation of the per-split scores.
    pub std: f64,
    /// Score of each split, in order.
    pub split_scores: Vec<f64>,
}

/// Inception Score of `probs` (`[N, K]`, rows are probability vectors, f32 or f64) with `splits`
/// consecutive splits (N ≥ splits ≥ 1).
pub fn inception_score<T: Copy + Into<f64>>(
    probs: ArrayView2<'_, T>,
    splits: usize,
) -> Result<InceptionScore> {
    let (n, k) = probs.dim();
    if splits == 0 || n < splits {
        return Err(MetricsError::Shape(format!(
            "the Inception Score in {splits} splits needs at least {splits} images, got {n} (use fewer --splits or more images)"
        )));
    }
    if k < 2 {
        return Err(MetricsError::Shape(format!("{k} classes: need at least 2")));
    }
    let p = probs.mapv(Into::into);
    for (i, row) in p.axis_iter(Axis(0)).enumerate() {
        if !row.iter().all(|&v| v.is_finite() && v >= 0.0) {
            return Err(MetricsError::InvalidValue(format!(
                "row {i} of the probability matrix has a negative or non-finite entry"
            )));
        }
        let s = row.sum();
        if (s - 1.0).abs() > ROW_SUM_TOLERANCE {
            return Err(MetricsError::InvalidValue(format!(
                "row {i} of the probability matrix sums to {s}, not 1 (pass softmax outputs, not logits)"
            )));
        }
    }
    let mut split_scores = Vec::with_capacity(splits);
    for s in 0..splits {
        let part = p.slice(ndarray::s![s * n / splits..(s + 1) * n / splits, ..]);
        let py = part.mean_axis(Axis(0)).expect("non-empty split");
        let mut kl_sum = 0.0;
        for row in part.axis_iter(Axis(0)) {
            kl_sum += row
                .iter()
                .zip(py.iter())
                .filter(|(&q, _)| q > 0.0)
                .map(|(&q, &m)| q * (q.ln() - m.ln()))
                .sum::<f64>();
        }
        split_scores.push((kl_sum / part.nrows() as f64).exp());
    }
    let mean = split_scores.iter().sum::<f64>() / splits as f64;
    let var = split_scores.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / splits as f64;
    Ok(InceptionScore {
        mean,
        std: var.sqrt(),
        split_scores,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_relative_eq;
    use ndarray::Array2;

    #[test]
    fn confident_and_uniform_extremes() {
        // One-hot rows cycling through K classes: KL = log K per row, IS = K in every split.
        let k = 4;
        let one_hot = Array2::from_shape_fn((40, k), |(i, j)| f64::from(u8::from(i % k == j)));
        let s = inception_score(one_hot.view(), 10).unwrap();
        assert_relative_eq!(s.mean, k as f64, max_relative = 1e-12);
        assert!(s.std < 1e-12);
        // Uniform rows: p(y|x) = p(y), KL = 0, IS = 1.
        let uniform = Array2::from_elem((30, 5), 0.2f32);
        let s = inception_score(uniform.view(), 3).unwrap();
        assert_relative_eq!(s.mean, 1.0, max_relative = 1e-6);
        assert_eq!(s.split_scores.len(), 3);
    }

    #[test]
    fn uneven_splits_cover_every_row() {
        // 7 rows into 3 splits: 0..2, 2..4, 4..7.
        let p = Array2::from_shape_fn((7, 2), |(i, j)| if (i + j) % 2 == 0 { 0.9 } else { 0.1 });
        let s = inception_score(p.view(), 3).unwrap();
        assert_eq!(s.split_scores.len(), 3);
        assert!(s.split_scores.iter().all(|v| v.is_finite() && *v >= 1.0));
    }

    #[test]
    fn rejects_logits_and_too_few_rows() {
        let logits = Array2::from_elem((20, 3), 2.0);
        let err = inception_score(logits.view(), 10).unwrap_err().to_string();
        assert!(err.contains("not 1"), "{err}");
        let few = Array2::from_elem((5, 2), 0.5);
        assert!(inception_score(few.view(), 10).is_err());
    }
}
