//! Gaussian KL divergences and the discretised Gaussian decoder likelihood used by the variational bound,
//! and the per-timestep min-SNR-γ weights of the MSE term of `L_simple`.
//!
//! Each likelihood function comes as a scalar (`f64 → f64`) and as an elementwise array version (`*_array`)
//! whose arguments must all have the same shape. All likelihood values are in nats.

use ndarray::{Array, Array1, ArrayBase, Data, Dimension, Zip};

use crate::diffusion::ModelMeanType;
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

/// The default `γ` of min-SNR-γ weighting, the value Hang et al. (2023) recommend across schedules and targets.
pub const MIN_SNR_DEFAULT_GAMMA: f64 = 5.0;

/// The per-timestep weights `w_t` of the MSE term of `L_simple` under min-SNR-γ weighting
/// (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting Strategy", arXiv:2303.09556, §3.4).
///
/// With `SNR_t = ᾱ_t/(1 − ᾱ_t)`, the paper weights the `x_0`-space error by `min(SNR_t, γ)`. Since
/// `‖ε − ε̂‖² = SNR_t·‖x_0 − x̂_0‖²` and `‖v − v̂‖² = (SNR_t + 1)·‖x_0 − x̂_0‖²` at the same `x_t`, the same
/// loss on the network's own target is
///
/// - ε-prediction: `w_t = min(SNR_t, γ)/SNR_t = min(1, γ/SNR_t)` ∈ `(0, 1]`, exactly `1` where `SNR_t ≤ γ`;
/// - `x_0`-prediction: `w_t = min(SNR_t, γ)`;
/// - v-prediction: `w_t = min(SNR_t, γ)/(SNR_t + 1) = min(ᾱ_t, γ(1 − ᾱ_t))`.
///
/// They are evaluated by the case `SNR_t ≤ γ` (ε: `1`; `x_0`: `SNR_t`; v: `ᾱ_t`) or `SNR_t > γ` (ε: `γ/SNR_t`;
/// `x_0`: `γ`; v: `γ(1 − ᾱ_t)`), which is exact at the ends `ᾱ_t = 0` (zero terminal SNR: ε weight `1`, `x_0`
/// and v weights `0`) and `ᾱ_t = 1` (ε and v weights `0`, `x_0` weight `γ`). As `γ → ∞` the ε weights tend to
/// `1`, i.e. plain `L_simple`.
///
/// # Shapes
/// `alphas_cumprod: [T]` (the `ᾱ` table of a diffusion, respaced or not) → `[T]`, indexed like it.
///
/// # Errors
/// [`Error::InvalidArgument`] if `gamma` is not a finite number `> 0`, or if some `ᾱ_t` is not in `[0, 1]`.
///
/// # Example
/// ```
/// use ddpm_math::losses::min_snr_weights;
/// use ddpm_math::ModelMeanType;
/// // SNR = [9, 1, 1/9]: only the first timestep is above γ = 5.
/// let w = min_snr_weights(&[0.9, 0.5, 0.1], ModelMeanType::Epsilon, 5.0)?;
/// assert!((w[0] - 5.0 / 9.0).abs() < 1e-15);
/// assert_eq!((w[1], w[2]), (1.0, 1.0));
/// # Ok::<(), ddpm_math::Error>(())
/// ```
pub fn min_snr_weights(
    alphas_cumprod: &[f64],
    mean_type: ModelMeanType,
    gamma: f64,
) -> Result<Array1<f64>> {
    if !(gamma.is_finite() && gamma > 0.0) {
        return Err(Error::InvalidArgument {
            name: "gamma",
            value: gamma,
            reason: "min-SNR-γ needs a finite γ > 0",
        });
    }
    if let Some(&bad) = alphas_cumprod.iter().find(|a| !(0.0..=1.0).contains(*a)) {
        return Err(Error::InvalidArgument {
            name: "alphas_cumprod",
            value: bad,
            reason: "every ᾱ_t must lie in [0, 1]",
        });
    }
    let weight = |a: f64| {
        // `SNR_t` is `+∞` at `ᾱ_t = 1` and `0` at `ᾱ_t = 0`; the branches are exact at both.
        let snr = a / (1.0 - a);
        match (mean_type, snr <= gamma) {
            (ModelMeanType::Epsilon, true) => 1.0,
            (ModelMeanType::Epsilon, false) => gamma / snr,
            (ModelMeanType::StartX, true) => snr,
            (ModelMeanType::StartX, false) => gamma,
            (ModelMeanType::V, true) => a,
            (ModelMeanType::V, false) => gamma * (1.0 - a),
        }
    };
    Ok(alphas_cumprod.iter().map(|&a| weight(a)).collect())
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
    fn min_snr_weights_at_the_ends_and_errors() {
        let ends = [1.0, 0.0];
        let eps = min_snr_weights(&ends, ModelMeanType::Epsilon, 5.0).unwrap();
        assert_eq!(eps, array![0.0, 1.0]);
        let x0 = min_snr_weights(&ends, ModelMeanType::StartX, 5.0).unwrap();
        assert_eq!(x0, array![5.0, 0.0]);
        let v = min_snr_weights(&ends, ModelMeanType::V, 5.0).unwrap();
        assert_eq!(v, array![0.0, 0.0]);
        // SNR = 1 ≤ γ: ε weight 1, x_0 weight SNR, v weight SNR/(SNR + 1) = ᾱ.
        let mid = [0.5];
        assert_eq!(
            min_snr_weights(&mid, ModelMeanType::StartX, 5.0).unwrap()[0],
            1.0
        );
        assert_eq!(
            min_snr_weights(&mid, ModelMeanType::V, 5.0).unwrap()[0],
            0.5
        );
        for gamma in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(matches!(
                min_snr_weights(&mid, ModelMeanType::Epsilon, gamma),
                Err(Error::InvalidArgument { name: "gamma", .. })
            ));
        }
        for bad in [1.5, -0.1, f64::NAN] {
            assert!(matches!(
                min_snr_weights(&[0.5, bad], ModelMeanType::Epsilon, 5.0),
                Err(Error::InvalidArgument {
                    name: "alphas_cumprod",
                    ..
                })
            ));
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
