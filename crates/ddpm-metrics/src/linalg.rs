//! Dense symmetric linear algebra in f64 for FID: eigendecomposition and the trace of a matrix
//! square root.
//!
//! The eigensolver is LAPACK's (`syevd`, through libtorch's `linalg_eigh` / `linalg_eigvalsh`),
//! run on the CPU in f64. nalgebra's pure-Rust `SymmetricEigen` was tried first and returned
//! `inf`/`NaN` eigenvalues for a rank-7 2048×2048 matrix built from Inception features of eight
//! images (finite input), so it is not used.
//!
//! # The FID trace term
//! For symmetric positive semi-definite Σ₁, Σ₂ we need `Tr((Σ₁Σ₂)^{1/2})`. Σ₁Σ₂ is not symmetric,
//! and a general-purpose `sqrtm` of it (what pytorch-fid does) can pick up imaginary round-off.
//! Write A = Σ₁^{1/2} (symmetric PSD) and B = Σ₁^{1/2}Σ₂. Then AB = Σ₁Σ₂ and
//! BA = Σ₁^{1/2}Σ₂Σ₁^{1/2} =: S, and AB and BA have the same non-zero eigenvalues with the same
//! multiplicities. S is symmetric PSD, so those eigenvalues λᵢ are real and ≥ 0, and the principal
//! square root of Σ₁Σ₂ has eigenvalues √λᵢ:
//!
//! `Tr((Σ₁Σ₂)^{1/2}) = Σᵢ √λᵢ(S)`.
//!
//! With Σ₁ = V D Vᵀ, S = V (D^{1/2} Vᵀ Σ₂ V D^{1/2}) Vᵀ, so λ(S) = λ(D^{1/2} (VᵀΣ₂V) D^{1/2}): one
//! eigendecomposition with vectors (of Σ₁) and one without (of that symmetric matrix).
//!
//! Rank threshold: eigenvalues of Σ₁ and of S below `D·ε·λ_max` (numpy's `matrix_rank` rule)
//! are round-off, not signal, and are set to 0 before the square root. Without this, a singular
//! S (fewer samples than dimensions, e.g. a set compared with itself) leaves ~2000 round-off
//! eigenvalues of size ~1e-14 whose square roots (~1e-7 each) add up to a visible error.
use ndarray::{Array1, Array2};
use tch::{Device, Kind, Tensor};

use crate::error::{MetricsError, Result};

fn check_square(a: &Array2<f64>, what: &str) -> Result<usize> {
    let (r, c) = a.dim();
    if r != c {
        return Err(MetricsError::Shape(format!(
            "{what} is {r}×{c}, not square"
        )));
    }
    if !a.iter().all(|v| v.is_finite()) {
        return Err(MetricsError::InvalidValue(format!(
            "{what} contains NaN or infinity"
        )));
    }
    Ok(r)
}

/// The symmetric part (A + Aᵀ)/2 as a CPU f64 tensor.
fn to_symmetric_tensor(a: &Array2<f64>) -> Tensor {
    let n = a.nrows() as i64;
    let contiguous = a.as_standard_layout();
    let t = Tensor::from_slice(contiguous.as_slice().expect("standard layout"))
        .to_device(Device::Cpu)
        .view([n, n]);
    (&t + t.tr()) * 0.5
}

fn to_vec(t: &Tensor, what: &str) -> Result<Vec<f64>> {
    let flat = t.to_kind(Kind::Double).contiguous().view([-1]);
    let v = Vec::<f64>::try_from(&flat).map_err(|e| MetricsError::torch(what.to_string(), e))?;
    if !v.iter().all(|x| x.is_finite()) {
        return Err(MetricsError::InvalidValue(format!(
            "{what}: non-finite result"
        )));
    }
    Ok(v)
}

/// Eigen-decomposition of the symmetric matrix `a` (`[N, N]`; its symmetric part is used):
/// eigenvalues in ascending order and the orthonormal eigenvectors as the columns of the second
/// matrix.
pub fn symmetric_eigen(a: &Array2<f64>) -> Result<(Array1<f64>, Array2<f64>)> {
    let n = check_square(a, "matrix")?;
    let (values, vectors) = tch::no_grad(|| to_symmetric_tensor(a).f_linalg_eigh("L"))
        .map_err(|e| MetricsError::torch(format!("eigendecomposition of a {n}×{n} matrix"), e))?;
    let what = format!("eigendecomposition of a {n}×{n} matrix");
    let values = Array1::from(to_vec(&values, &what)?);
    let vectors = Array2::from_shape_vec((n, n), to_vec(&vectors, &what)?).expect("n×n buffer");
    Ok((values, vectors))
}

/// Eigenvalues (ascending) of the symmetric matrix `a`, without eigenvectors.
pub fn symmetric_eigenvalues(a: &Array2<f64>) -> Result<Array1<f64>> {
    let n = check_square(a, "matrix")?;
    let what = format!("eigenvalues of a {n}×{n} matrix");
    let values = tch::no_grad(|| to_symmetric_tensor(a).f_linalg_eigvalsh("L"))
        .map_err(|e| MetricsError::torch(what.clone(), e))?;
    Ok(Array1::from(to_vec(&values, &what)?))
}

/// Sets eigenvalues below `len·ε·max(λ)` (and all negative ones) to 0.
fn clamp_round_off(values: &Array1<f64>) -> Array1<f64> {
    let largest = values.iter().copied().fold(0.0f64, f64::max);
    let threshold = values.len() as f64 * f64::EPSILON * largest;
    values.mapv(|x| if x > threshold { x } else { 0.0 })
}

/// Principal square root of a symmetric PSD matrix, V diag(√d) Vᵀ with round-off eigenvalues
/// (see the module docs) set to 0.
pub fn sqrtm_psd(a: &Array2<f64>) -> Result<Array2<f64>> {
    let (d, v) = symmetric_eigen(a)?;
    let scaled = &v * &clamp_round_off(&d).mapv(f64::sqrt);
    Ok(scaled.dot(&v.t()))
}

/// `Tr((Σ₁Σ₂)^{1/2})` for symmetric PSD `sigma1`, `sigma2` (`[D, D]`), through the symmetric
/// matrix D^{1/2}VᵀΣ₂VD^{1/2} (see the module docs for the identity and the rank threshold).
pub fn trace_sqrt_product(sigma1: &Array2<f64>, sigma2: &Array2<f64>) -> Result<f64> {
    let n = check_square(sigma1, "Σ₁")?;
    let m = check_square(sigma2, "Σ₂")?;
    if n != m {
        return Err(MetricsError::Shape(format!(
            "Σ₁ is {n}×{n} but Σ₂ is {m}×{m}"
        )));
    }
    let (d, v) = symmetric_eigen(sigma1)?;
    let root_d = clamp_round_off(&d).mapv(f64::sqrt);
    let mut inner = v.t().dot(sigma2).dot(&v);
    for ((i, j), x) in inner.indexed_iter_mut() {
        *x *= root_d[i] * root_d[j];
    }
    let lambdas = symmetric_eigenvalues(&inner)?;
    let most_negative = lambdas.iter().copied().fold(0.0f64, f64::min);
    let largest = lambdas.iter().copied().fold(0.0f64, f64::max);
    if most_negative < -1e-6 * largest {
        tracing::warn!(
            most_negative,
            largest,
            "Σ₁^½Σ₂Σ₁^½ has a clearly negative eigenvalue; are both covariances PSD?"
        );
    }
    Ok(clamp_round_off(&lambdas).iter().map(|&l| l.sqrt()).sum())
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_relative_eq;
    use ndarray::array;

    /// A deterministic symmetric PSD matrix X Xᵀ / k from a fixed pseudo-random X (`n × k`).
    fn psd(n: usize, k: usize, salt: u64) -> Array2<f64> {
        let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ salt;
        let x = Array2::from_shape_fn((n, k), |_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 11) as f64 / (1u64 << 53) as f64) - 0.5
        });
        x.dot(&x.t()) / k as f64
    }

    #[test]
    fn eigen_reconstructs_the_matrix() {
        let a = psd(12, 20, 1);
        let (d, v) = symmetric_eigen(&a).unwrap();
        let back = (&v * &d).dot(&v.t());
        for (x, y) in a.iter().zip(back.iter()) {
            assert_relative_eq!(x, y, epsilon = 1e-13);
        }
        let vtv = v.t().dot(&v);
        for ((i, j), x) in vtv.indexed_iter() {
            assert_relative_eq!(*x, if i == j { 1.0 } else { 0.0 }, epsilon = 1e-13);
        }
        let mut only = symmetric_eigenvalues(&a).unwrap().to_vec();
        let mut with = d.to_vec();
        only.sort_by(f64::total_cmp);
        with.sort_by(f64::total_cmp);
        for (x, y) in only.iter().zip(with.iter()) {
            assert_relative_eq!(x, y, epsilon = 1e-13);
        }
    }

    #[test]
    fn sqrtm_squares_back() {
        let a = psd(9, 4, 2); // rank 4: singular
        let r = sqrtm_psd(&a).unwrap();
        let back = r.dot(&r);
        for (x, y) in a.iter().zip(back.iter()) {
            assert_relative_eq!(x, y, epsilon = 1e-12);
        }
    }

    #[test]
    fn trace_sqrt_of_commuting_diagonals_is_sum_of_root_products() {
        let s1 = Array2::from_diag(&array![4.0, 9.0, 0.25, 0.0]);
        let s2 = Array2::from_diag(&array![1.0, 4.0, 4.0, 7.0]);
        // √(4·1) + √(9·4) + √(0.25·4) + 0 = 2 + 6 + 1.
        assert_relative_eq!(trace_sqrt_product(&s1, &s2).unwrap(), 9.0, epsilon = 1e-12);
    }

    #[test]
    fn trace_sqrt_matches_a_direct_two_by_two() {
        // For 2×2 M with real non-negative eigenvalues, Tr √M = √(λ₁) + √(λ₂) = √(tr M + 2√det M).
        let s1: Array2<f64> = array![[2.0, 0.5], [0.5, 1.0]];
        let s2 = array![[1.0, -0.3], [-0.3, 3.0]];
        let m = s1.dot(&s2);
        let det = m[[0, 0]] * m[[1, 1]] - m[[0, 1]] * m[[1, 0]];
        let expected = (m[[0, 0]] + m[[1, 1]] + 2.0 * det.sqrt()).sqrt();
        assert_relative_eq!(
            trace_sqrt_product(&s1, &s2).unwrap(),
            expected,
            max_relative = 1e-13
        );
        // Symmetric in its arguments (AB and BA share eigenvalues).
        assert_relative_eq!(
            trace_sqrt_product(&s2, &s1).unwrap(),
            expected,
            max_relative = 1e-13
        );
    }

    #[test]
    fn trace_sqrt_of_a_singular_matrix_with_itself_is_its_trace() {
        let s = psd(30, 5, 3); // rank 5 of 30
        let tr: f64 = s.diag().sum();
        assert_relative_eq!(
            trace_sqrt_product(&s, &s).unwrap(),
            tr,
            max_relative = 1e-10
        );
    }

    #[test]
    fn few_relu_like_samples_in_many_dimensions_give_a_finite_exact_self_trace() {
        // Like Inception pool3 features of 8 images: non-negative, half the columns exactly 0,
        // covariance of rank 7 in 512 dimensions.
        let mut state = 7u64;
        let x = Array2::from_shape_fn((8, 512), |(_, j)| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = (state >> 11) as f64 / (1u64 << 53) as f64;
            if j % 2 == 0 {
                0.0
            } else {
                (u - 0.3).max(0.0) * 3.0
            }
        });
        let centred = &x - &x.mean_axis(ndarray::Axis(0)).unwrap();
        let cov = centred.t().dot(&centred) / 7.0;
        let tr: f64 = cov.diag().sum();
        let ts = trace_sqrt_product(&cov, &cov).unwrap();
        assert!(ts.is_finite());
        assert_relative_eq!(ts, tr, max_relative = 1e-10);
    }

    #[test]
    fn rejects_mismatched_or_non_finite_input() {
        let a = Array2::<f64>::eye(3);
        let b = Array2::<f64>::eye(4);
        assert!(trace_sqrt_product(&a, &b)
            .unwrap_err()
            .to_string()
            .contains("3×3"));
        let mut c = Array2::<f64>::eye(3);
        c[[0, 1]] = f64::NAN;
        assert!(symmetric_eigen(&c).is_err());
        assert!(symmetric_eigen(&Array2::zeros((2, 3))).is_err());
    }
}
