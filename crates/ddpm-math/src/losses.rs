//! Gaussian KL divergences and the discretised Gaussian decoder likelihood used by the variational bound.
//!
//! Each function comes as a scalar (`f64 → f64`) and as an elementwise array version (`*_array`) whose
//! arguments must all have the same shape. All values are in nats.

use ndarray::{Array, ArrayBase, Data, Dimension, Zip};

use crate::error::{Error, Result};

/// Probabilities below this are clamped before the logarithm in the decoder likelihood.
pub const LOG_PROB_FLOOR: f64 = 1e-12;

/// Half-width of one of the 256 pixel bins on `[-1, 1]`: the bins have width `2/255`.
pub const HALF_BIN_WIDTH: f64 = 1.0 / 255.0;

/// `KL(N(μ₁, e^{lv₁}) ‖ N(μ₂, e^{lv₂}))` in nats, for scalars:
///
/// `½(−1 + lv₂ − lv₁ + e^{lv₁ − lv₂} + (μ₁ − μ₂)² e^{−lv₂})`.
///
/// Variances are passed as log-variances so that tiny variances keep their precision. It is evaluated as
/// `½(δ + expm1(−δ) + (μ₁ − μ₂)² e^{−lv₂})` with `δ = lv₂ − lv₁`, the same value without the cancellation of
/// `−1 + e^{−δ}` for small `δ`, and exactly 0 for equal Gaussians.
///
/// # Example
/// ```
/// use ddpm_math::losses::normal_kl;
/// assert_eq!(normal_kl(0.3, -1.0, 0.3, -1.0), 0.0);
/// // KL(N(1, 1) ‖ N(0, 1)) = ½.
/// assert!((normal_kl(1.0, 0.0, 0.0, 0.0) - 0.5).abs() < 1e-15);
/// ```
pub fn normal_kl(mean1: f64, logvar1: f64, mean2: f64, logvar2: f64) -> f64 {
    let d = mean1 - mean2;
    let delta = logvar2 - logvar1;
    0.5 * (delta + (-delta).exp_m1() + d * d * (-logvar2).exp())
}

/// Elementwise [`normal_kl`] over four arrays of the same shape.
///
/// # Errors
/// [`Error::ShapeMismatch`] if the shapes differ.
pub fn normal_kl_array<S1, S2, S3, S4, D>(
    mean1: &ArrayBase<S1, D>,
    logvar1: &ArrayBase<S2, D>,
    mean2: &ArrayBase<S3, D>,
    logvar2: &ArrayBase<S4, D>,
) -> Result<Array<f64, D>>
where
    S1: Data<Elem = f64>,
    S2: Data<Elem = f64>,
    S3: Data<Elem = f64>,
    S4: Data<Elem = f64>,
    D: Dimension,
{
    same_shape("logvar1", logvar1.shape(), mean1.shape())?;
    same_shape("mean2", mean2.shape(), mean1.shape())?;
    same_shape("logvar2", logvar2.shape(), mean1.shape())?;
    Ok(Zip::from(mean1)
        .and(logvar1)
        .and(mean2)
        .and(logvar2)
        .map_collect(|&m1, &lv1, &m2, &lv2| normal_kl(m1, lv1, m2, lv2)))
}

/// A fast approximation of the standard normal CDF (Page 1977, as used by Ho et al. 2020):
///
/// `Φ̃(x) = ½(1 + tanh(√(2/π)(x + 0.044715 x³)))`.
///
/// # Example
/// ```
/// use ddpm_math::losses::approx_standard_normal_cdf;
/// assert_eq!(approx_standard_normal_cdf(0.0), 0.5);
/// assert!((approx_standard_normal_cdf(1.0) - 0.8413).abs() < 1e-3);
/// ```
pub fn approx_standard_normal_cdf(x: f64) -> f64 {
    let sqrt_2_over_pi = (2.0 / std::f64::consts::PI).sqrt();
    0.5 * (1.0 + (sqrt_2_over_pi * (x + 0.044715 * x * x * x)).tanh())
}

/// `log p(x | μ, σ)` of a Gaussian discretised to the 256 pixel bins of width `2/255` on `[-1, 1]`, with
/// the edge bins extended to `±∞` (Ho et al. 2020, eq. 13), for scalars.
///
/// With `c = x − μ` and `inv = e^{−log σ}`: `cdf⁺ = Φ̃(inv·(c + 1/255))`, `cdf⁻ = Φ̃(inv·(c − 1/255))`, and
/// `log p = log max(cdf⁺, 10⁻¹²)` for `x < −0.999`, `log max(1 − cdf⁻, 10⁻¹²)` for `x > 0.999`, otherwise
/// `log max(cdf⁺ − cdf⁻, 10⁻¹²)`. `x` is meant to be a bin centre `p/127.5 − 1`, `p ∈ {0, …, 255}`.
///
/// # Example
/// ```
/// use ddpm_math::losses::discretized_gaussian_log_likelihood;
/// // The 256 bin probabilities of any Gaussian add up to one.
/// let total: f64 = (0..256)
///     .map(|p| discretized_gaussian_log_likelihood(p as f64 / 127.5 - 1.0, 0.1, -2.0).exp())
///     .sum();
/// assert!((total - 1.0).abs() < 1e-9);
/// ```
pub fn discretized_gaussian_log_likelihood(x: f64, mean: f64, log_scale: f64) -> f64 {
    let centered = x - mean;
    let inv_stdv = (-log_scale).exp();
    let cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + HALF_BIN_WIDTH));
    let cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - HALF_BIN_WIDTH));
    let prob = if x < -0.999 {
        cdf_plus
    } else if x > 0.999 {
        1.0 - cdf_min
    } else {
        cdf_plus - cdf_min
    };
    prob.max(LOG_PROB_FLOOR).ln()
}

pub(crate) fn same_shape(name: &'static str, got: &[usize], expected: &[usize]) -> Result<()> {
    if got == expected {
        Ok(())
    } else {
        Err(Error::ShapeMismatch {
            name,
            got: got.to_vec(),
            expected: expected.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn kl_of_known_pairs() {
        // KL(N(0, 1) ‖ N(0, 4)) = ½(−1 + ln 4 + ¼).
        let expected = 0.5 * (-1.0 + 4f64.ln() + 0.25);
        assert!((normal_kl(0.0, 0.0, 0.0, 4f64.ln()) - expected).abs() < 1e-15);
        assert_eq!(normal_kl(2.0, 1.5, 2.0, 1.5), 0.0);
    }

    #[test]
    fn kl_array_checks_shapes() {
        let a = array![0.0, 1.0];
        let b = array![0.0, 1.0, 2.0];
        assert!(matches!(
            normal_kl_array(&a, &a, &b, &a),
            Err(Error::ShapeMismatch { name: "mean2", .. })
        ));
        let kl = normal_kl_array(&a, &a, &a, &a).unwrap();
        assert_eq!(kl, array![0.0, 0.0]);
    }

    #[test]
    fn cdf_is_symmetric_and_monotone() {
        for i in 0..100 {
            let x = i as f64 * 0.07;
            let sum = approx_standard_normal_cdf(x) + approx_standard_normal_cdf(-x);
            assert!((sum - 1.0).abs() < 1e-15);
            assert!(approx_standard_normal_cdf(x + 0.07) >= approx_standard_normal_cdf(x));
        }
    }

    #[test]
    fn decoder_edges_and_floor() {
        // A very sharp decoder at the bin centre puts (almost) all the mass in that bin.
        let lp = discretized_gaussian_log_likelihood(0.2, 0.2, -10.0);
        assert!(lp > -1e-12 && lp <= 0.0, "{lp}");
        // Far away from the mean the probability is floored at 1e-12.
        let floor = discretized_gaussian_log_likelihood(0.2, -0.9, -10.0);
        assert_eq!(floor, LOG_PROB_FLOOR.ln());
        // The edge bin x = −1 collects everything below: a mean far below gives probability ≈ 1.
        let edge = discretized_gaussian_log_likelihood(-1.0, -5.0, -1.0);
        assert!(edge > -1e-6, "{edge}");
        let edge = discretized_gaussian_log_likelihood(1.0, 5.0, -1.0);
        assert!(edge > -1e-6, "{edge}");
    }
}
