//! Fréchet distance between two Gaussians fitted to feature sets: FID with Inception pool3
//! features, FID_cls with a digit classifier's features (Heusel et al. 2017, eq. 6).
//!
//! `d² = ‖μ₁ − μ₂‖² + Tr(Σ₁) + Tr(Σ₂) − 2 Tr((Σ₁Σ₂)^{1/2})`, everything in f64 with ddof-1
//! covariances; the trace of the square root comes from [`crate::linalg::trace_sqrt_product`].
use ndarray::ArrayView2;
use serde::Serialize;

use crate::error::{MetricsError, Result};
use crate::linalg::trace_sqrt_product;
use crate::stats::FeatureStats;

/// The Fréchet distance and its parts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FrechetTerms {
    /// `‖μ₁ − μ₂‖²`.
    pub mean_sq: f64,
    /// `Tr(Σ₁)`.
    pub trace1: f64,
    /// `Tr(Σ₂)`.
    pub trace2: f64,
    /// `Tr((Σ₁Σ₂)^{1/2})`.
    pub trace_sqrt: f64,
    /// `mean_sq + trace1 + trace2 − 2 trace_sqrt`.
    pub distance: f64,
}

/// Fréchet distance between N(μ₁, Σ₁) and N(μ₂, Σ₂), with its parts.
pub fn frechet_terms(a: &FeatureStats, b: &FeatureStats) -> Result<FrechetTerms> {
    a.validate()?;
    b.validate()?;
    if a.dim() != b.dim() {
        return Err(MetricsError::Shape(format!(
            "feature dimensions differ: {} vs {}",
            a.dim(),
            b.dim()
        )));
    }
    let diff = &a.mean - &b.mean;
    let mean_sq = diff.dot(&diff);
    let trace1 = a.cov.diag().sum();
    let trace2 = b.cov.diag().sum();
    let trace_sqrt = trace_sqrt_product(&a.cov, &b.cov)?;
    let distance = mean_sq + trace1 + trace2 - 2.0 * trace_sqrt;
    tracing::debug!(
        mean_sq,
        trace1,
        trace2,
        trace_sqrt,
        distance,
        "Fréchet distance"
    );
    Ok(FrechetTerms {
        mean_sq,
        trace1,
        trace2,
        trace_sqrt,
        distance,
    })
}

/// Fréchet distance between two sets of statistics (FID when they are Inception pool3 features).
pub fn frechet_distance(a: &FeatureStats, b: &FeatureStats) -> Result<f64> {
    frechet_terms(a, b).map(|t| t.distance)
}

/// Fréchet distance between the rows of two feature matrices (`[N₁, D]`, `[N₂, D]`, f32 or f64).
pub fn frechet_distance_from_features<T: Copy + Into<f64>>(
    a: ArrayView2<'_, T>,
    b: ArrayView2<'_, T>,
) -> Result<f64> {
    frechet_distance(
        &FeatureStats::from_features(a)?,
        &FeatureStats::from_features(b)?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_relative_eq;
    use ndarray::{array, Array2};

    #[test]
    fn shifted_copy_differs_by_the_squared_shift() {
        let a = Array2::from_shape_fn((50, 3), |(i, j)| ((i * 13 + j * 7) % 17) as f64 * 0.1);
        let b = &a + &array![1.0, -2.0, 0.5];
        let d = frechet_distance_from_features(a.view(), b.view()).unwrap();
        assert_relative_eq!(d, 1.0 + 4.0 + 0.25, max_relative = 1e-10);
        let self_d = frechet_distance_from_features(a.view(), a.view()).unwrap();
        assert!(self_d.abs() < 1e-12, "{self_d}");
    }

    #[test]
    fn gaussians_with_scaled_covariance() {
        // Σ₁ = I, Σ₂ = 4I in D = 5, equal means: 5 + 20 − 2·Σ√4 = 25 − 20 = 5.
        let s1 = FeatureStats {
            mean: ndarray::Array1::zeros(5),
            cov: Array2::eye(5),
            n: 10,
        };
        let s2 = FeatureStats {
            mean: ndarray::Array1::zeros(5),
            cov: Array2::eye(5) * 4.0,
            n: 10,
        };
        let t = frechet_terms(&s1, &s2).unwrap();
        assert_relative_eq!(t.trace_sqrt, 10.0, max_relative = 1e-12);
        assert_relative_eq!(t.distance, 5.0, max_relative = 1e-12);
    }

    #[test]
    fn rejects_mismatched_dimensions() {
        let a = Array2::<f64>::from_shape_fn((4, 2), |(i, j)| (i + j * i) as f64);
        let b = Array2::<f64>::from_shape_fn((4, 3), |(i, j)| (i * j + i) as f64);
        let err = frechet_distance_from_features(a.view(), b.view())
            .unwrap_err()
            .to_string();
        assert!(err.contains("2 vs 3"), "{err}");
    }
}
