//! Mean and covariance of feature matrices in f64 (ddof 1), whole or accumulated batch by batch.
//!
//! Batches are merged with Chan, Golub & LeVeque's pairwise update: each batch's mean and
//! centred scatter matrix `M2 = Σ (x − x̄)(x − x̄)ᵀ` are computed on their own, then combined as
//! `M2 = M2_a + M2_b + δδᵀ · n_a n_b / n` with `δ = x̄_b − x̄_a`. No raw second moments are summed,
//! so large feature means do not cancel catastrophically.
use ndarray::{Array1, Array2, ArrayView2, Axis};

use crate::error::{MetricsError, Result};

/// Mean, covariance (ddof 1) and sample count of a set of feature vectors.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureStats {
    /// Mean μ, shape `[D]`.
    pub mean: Array1<f64>,
    /// Covariance Σ with ddof 1, shape `[D, D]`.
    pub cov: Array2<f64>,
    /// Number of feature vectors they were computed from.
    pub n: usize,
}

impl FeatureStats {
    /// Statistics of the rows of `features` (`[N, D]`, N ≥ 2), in f64.
    pub fn from_features<T: Copy + Into<f64>>(features: ArrayView2<'_, T>) -> Result<Self> {
        let mut acc = RunningStats::new(features.ncols());
        acc.update(features)?;
        acc.finish()
    }

    /// Feature dimension D.
    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    /// Checks shapes and finiteness (used after loading from a file).
    pub fn validate(&self) -> Result<()> {
        let d = self.mean.len();
        if self.cov.dim() != (d, d) {
            return Err(MetricsError::Shape(format!(
                "covariance is {:?} but the mean has {d} entries",
                self.cov.dim()
            )));
        }
        if self.n < 2 {
            return Err(MetricsError::Shape(format!(
                "statistics from {} sample(s); a covariance needs at least 2",
                self.n
            )));
        }
        if !self
            .mean
            .iter()
            .chain(self.cov.iter())
            .all(|v| v.is_finite())
        {
            return Err(MetricsError::InvalidValue(
                "statistics contain NaN or infinity".into(),
            ));
        }
        Ok(())
    }
}

/// Streaming accumulator of mean and scatter matrix; feed batches, then [`RunningStats::finish`].
#[derive(Debug, Clone)]
pub struct RunningStats {
    n: usize,
    mean: Array1<f64>,
    m2: Array2<f64>,
}

impl RunningStats {
    /// An empty accumulator for `dim`-dimensional features.
    pub fn new(dim: usize) -> Self {
        Self {
            n: 0,
            mean: Array1::zeros(dim),
            m2: Array2::zeros((dim, dim)),
        }
    }

    /// Number of rows seen so far.
    pub fn count(&self) -> usize {
        self.n
    }

    /// Feature dimension.
    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    /// Adds the rows of `batch` (`[B, D]`); values are widened to f64 first.
    pub fn update<T: Copy + Into<f64>>(&mut self, batch: ArrayView2<'_, T>) -> Result<()> {
        let (b, d) = batch.dim();
        if d != self.dim() {
            return Err(MetricsError::Shape(format!(
                "feature batch has {d} columns, the accumulator {}",
                self.dim()
            )));
        }
        if b == 0 {
            return Ok(());
        }
        let x = batch.mapv(Into::into);
        if !x.iter().all(|v| v.is_finite()) {
            return Err(MetricsError::InvalidValue(
                "features contain NaN or infinity".into(),
            ));
        }
        let mean_b = x.mean_axis(Axis(0)).expect("batch has rows");
        let centred = &x - &mean_b;
        let m2_b = centred.t().dot(&centred);
        if self.n == 0 {
            self.n = b;
            self.mean = mean_b;
            self.m2 = m2_b;
            return Ok(());
        }
        let (na, nb) = (self.n as f64, b as f64);
        let n = na + nb;
        let delta = &mean_b - &self.mean;
        let w = na * nb / n;
        let outer = delta
            .view()
            .insert_axis(Axis(1))
            .dot(&delta.view().insert_axis(Axis(0)));
        self.m2 = &self.m2 + &m2_b + &(outer * w);
        self.mean = &self.mean + &(delta * (nb / n));
        self.n += b;
        Ok(())
    }

    /// Mean and covariance (ddof 1) of everything seen; needs at least two rows.
    pub fn finish(self) -> Result<FeatureStats> {
        if self.n < 2 {
            return Err(MetricsError::Shape(format!(
                "{} feature vector(s); a covariance needs at least 2",
                self.n
            )));
        }
        let cov = self.m2 / (self.n as f64 - 1.0);
        Ok(FeatureStats {
            mean: self.mean,
            cov,
            n: self.n,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_relative_eq;
    use ndarray::array;

    #[test]
    fn covariance_has_ddof_one() {
        let x = array![[1.0, 2.0], [3.0, 6.0], [5.0, 7.0]];
        let s = FeatureStats::from_features(x.view()).unwrap();
        assert_relative_eq!(s.mean[0], 3.0);
        assert_relative_eq!(s.mean[1], 5.0);
        // var(x0) = (4 + 0 + 4) / 2, var(x1) = (9 + 1 + 4) / 2, cov = (6 + 0 + 4) / 2.
        assert_relative_eq!(s.cov[[0, 0]], 4.0);
        assert_relative_eq!(s.cov[[1, 1]], 7.0);
        assert_relative_eq!(s.cov[[0, 1]], 5.0);
        assert_relative_eq!(s.cov[[1, 0]], 5.0);
        assert_eq!(s.n, 3);
    }

    #[test]
    fn batched_accumulation_equals_one_pass_even_with_a_large_offset() {
        // Rows with a mean of 1e6 and unit-scale spread: naive Σx² − n x̄² would lose ~12 digits.
        let x = Array2::from_shape_fn((37, 5), |(i, j)| {
            1e6 + ((i * 7 + j * 3) % 11) as f64 * 0.37 - (j as f64) * ((i % 4) as f64)
        });
        let whole = FeatureStats::from_features(x.view()).unwrap();
        let mut acc = RunningStats::new(5);
        for chunk in [0..1, 1..9, 9..10, 10..30, 30..37] {
            acc.update(x.slice(ndarray::s![chunk, ..])).unwrap();
        }
        let batched = acc.finish().unwrap();
        assert_eq!(batched.n, 37);
        for (a, b) in whole.mean.iter().zip(batched.mean.iter()) {
            assert_relative_eq!(a, b, max_relative = 1e-14);
        }
        // Reference computed from centred data directly.
        let centred = &x - &x.mean_axis(Axis(0)).unwrap();
        let reference = centred.t().dot(&centred) / 36.0;
        for ((a, b), r) in whole
            .cov
            .iter()
            .zip(batched.cov.iter())
            .zip(reference.iter())
        {
            assert_relative_eq!(a, r, epsilon = 1e-9, max_relative = 1e-9);
            assert_relative_eq!(b, r, epsilon = 1e-9, max_relative = 1e-9);
        }
    }

    #[test]
    fn accepts_f32_features_and_rejects_bad_input() {
        let x = array![[1.0f32, 2.0], [3.0, 4.0]];
        let s = FeatureStats::from_features(x.view()).unwrap();
        assert_relative_eq!(s.cov[[0, 1]], 2.0);
        let one = array![[1.0f32, 2.0]];
        assert!(FeatureStats::from_features(one.view())
            .unwrap_err()
            .to_string()
            .contains("at least 2"));
        let nan = array![[1.0f32, f32::NAN], [3.0, 4.0]];
        assert!(FeatureStats::from_features(nan.view()).is_err());
        let mut acc = RunningStats::new(3);
        assert!(acc
            .update(x.view())
            .unwrap_err()
            .to_string()
            .contains("2 columns"));
    }
}
