//! Monte Carlo checks of the derivations done by hand in the lecture: the closed-form marginal `q(x_t | x_0)`,
//! the posterior `q(x_{t−1} | x_t, x_0)` as a normalised Bayes product, the analytic Gaussian KL, and the
//! expectation of the min-SNR-γ weighted `L_simple`.
//!
//! Every test is seeded, and every tolerance is `Z = 5` standard errors derived from the sample size.

use ddpm_math::losses::normal_kl;
use ddpm_math::{
    BetaSchedule, GaussianDiffusion, LossSecondMomentSampler, LossType, ModelMeanType,
    ModelVarType, ScheduleSampler,
};
use ndarray::{array, Array1, Array2};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

/// Tolerance in standard errors.
const Z: f64 = 5.0;

fn linear_100() -> GaussianDiffusion {
    // β from 1e-3 to 0.2: ᾱ runs from ≈ 1 to ≈ 4e-5 within 100 steps.
    GaussianDiffusion::new(
        BetaSchedule::Linear.betas(100).unwrap(),
        ModelMeanType::Epsilon,
        ModelVarType::FixedLarge,
        LossType::Simple,
    )
    .unwrap()
}

fn normal(rng: &mut StdRng) -> f64 {
    StandardNormal.sample(rng)
}

/// Sample mean and unbiased sample variance.
fn mean_var(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0);
    (mean, var)
}

fn assert_within(what: &str, estimate: f64, truth: f64, standard_error: f64) {
    let z = (estimate - truth).abs() / standard_error;
    assert!(
        z <= Z,
        "{what}: estimate {estimate:.6e} vs closed form {truth:.6e} is {z:.1} standard errors ({standard_error:.2e}) away"
    );
}

/// Iterating `x_t = √(1 − β_t) x_{t−1} + √β_t ε` from a fixed `x_0` gives `N(√ᾱ_t x_0, 1 − ᾱ_t)`
/// (Ho et al. 2020, eq. 4).
#[test]
fn iterated_forward_chain_matches_closed_form_marginal() {
    let d = linear_100();
    let n = 20_000;
    let x0 = 0.8;
    let mut rng = StdRng::seed_from_u64(2020);
    let mut xs = vec![x0; n];
    let checkpoints = [0, 4, 19, 49, 99];
    let mut checked = 0;
    for t in 0..d.num_timesteps() {
        let (a, b) = (d.alphas()[t].sqrt(), d.betas()[t].sqrt());
        for x in xs.iter_mut() {
            *x = a * *x + b * normal(&mut rng);
        }
        if checkpoints.contains(&t) {
            let q = d.q_mean_variance(&array![[x0]], &[t]).unwrap();
            let (mean, var) = (q.mean[[0, 0]], q.variance[[0, 0]]);
            let (m_hat, v_hat) = mean_var(&xs);
            // SE of a mean: √(σ²/n); of a Gaussian sample variance: σ²√(2/(n − 1)).
            assert_within(
                &format!("mean at t = {t}"),
                m_hat,
                mean,
                (var / n as f64).sqrt(),
            );
            assert_within(
                &format!("variance at t = {t}"),
                v_hat,
                var,
                var * (2.0 / (n as f64 - 1.0)).sqrt(),
            );
            checked += 1;
        }
    }
    assert_eq!(checked, checkpoints.len());
}

/// Drawing `x_{t−1} ∼ q(x_{t−1} | x_0)` then `x_t ∼ q(x_t | x_{t−1})` samples the joint; the conditional of
/// `x_{t−1}` given `x_t` is the posterior, so the least-squares line of `x_{t−1}` on `x_t` has slope `c₂`,
/// intercept `c₁ x_0` and residual variance `β̃_t` (Ho et al. 2020, eq. 6–7).
#[test]
fn sampled_joint_regresses_to_the_posterior() {
    let d = linear_100();
    let n = 20_000;
    let x0 = -0.6;
    let mut rng = StdRng::seed_from_u64(7);
    for t in [1usize, 10, 60] {
        let (prev_mean, prev_sd) = (
            d.sqrt_alphas_cumprod_prev()[t] * x0,
            (1.0 - d.alphas_cumprod_prev()[t]).sqrt(),
        );
        let (a, b) = (d.alphas()[t].sqrt(), d.betas()[t].sqrt());
        let mut prev = Vec::with_capacity(n);
        let mut cur = Vec::with_capacity(n);
        for _ in 0..n {
            let y = prev_mean + prev_sd * normal(&mut rng);
            prev.push(y);
            cur.push(a * y + b * normal(&mut rng));
        }
        let (mx, vx) = mean_var(&cur);
        let (my, _) = mean_var(&prev);
        let nf = n as f64;
        let cov = cur
            .iter()
            .zip(&prev)
            .map(|(x, y)| (x - mx) * (y - my))
            .sum::<f64>()
            / (nf - 1.0);
        let slope = cov / vx;
        let intercept = my - slope * mx;
        let resid_var = cur
            .iter()
            .zip(&prev)
            .map(|(x, y)| (y - intercept - slope * x).powi(2))
            .sum::<f64>()
            / (nf - 2.0);
        let post_var = d.posterior_variance()[t];
        let (c1, c2) = (d.posterior_mean_coef1()[t], d.posterior_mean_coef2()[t]);
        // Ordinary least squares: SE(slope) = σ/√(n s²_x), SE(intercept) = σ √(1/n + x̄²/(n s²_x)),
        // SE(σ̂²) = σ² √(2/(n − 2)).
        let sigma = post_var.sqrt();
        assert_within(
            &format!("c₂ at t = {t}"),
            slope,
            c2,
            sigma / (nf * vx).sqrt(),
        );
        assert_within(
            &format!("c₁ x_0 at t = {t}"),
            intercept,
            c1 * x0,
            sigma * (1.0 / nf + mx * mx / (nf * vx)).sqrt(),
        );
        assert_within(
            &format!("β̃ at t = {t}"),
            resid_var,
            post_var,
            post_var * (2.0 / (nf - 2.0)).sqrt(),
        );
    }
}

/// The normalised product `q(x_t | x_{t−1}) q(x_{t−1} | x_0)`, integrated numerically on a fine grid (no sampling),
/// has the mean and variance of `q_posterior_mean_variance`.
#[test]
fn normalised_bayes_product_is_the_posterior() {
    let d = linear_100();
    let x0 = array![[0.3], [0.3], [0.3]];
    let x_t = array![[0.25], [-0.4], [1.7]];
    let t = [1usize, 30, 99];
    let post = d.q_posterior_mean_variance(&x0, &x_t, &t).unwrap();
    for (b, &tb) in t.iter().enumerate() {
        let (prior_mean, prior_var) = (
            d.sqrt_alphas_cumprod_prev()[tb] * x0[[b, 0]],
            1.0 - d.alphas_cumprod_prev()[tb],
        );
        let (a, beta, xt) = (d.alphas()[tb].sqrt(), d.betas()[tb], x_t[[b, 0]]);
        // log q(x_t | y) + log q(y | x_0) up to constants, on ±14 prior standard deviations.
        let log_density = |y: f64| {
            -(xt - a * y).powi(2) / (2.0 * beta) - (y - prior_mean).powi(2) / (2.0 * prior_var)
        };
        let half_width = 14.0 * prior_var.sqrt();
        let m = 200_000;
        let h = 2.0 * half_width / m as f64;
        let ys: Vec<f64> = (0..=m)
            .map(|i| prior_mean - half_width + i as f64 * h)
            .collect();
        let max = ys.iter().map(|&y| log_density(y)).fold(f64::MIN, f64::max);
        let w: Vec<f64> = ys.iter().map(|&y| (log_density(y) - max).exp()).collect();
        let z: f64 = w.iter().sum();
        let mean = w.iter().zip(&ys).map(|(w, y)| w * y).sum::<f64>() / z;
        let var = w
            .iter()
            .zip(&ys)
            .map(|(w, y)| w * (y - mean).powi(2))
            .sum::<f64>()
            / z;
        let (mu, v) = (post.mean[[b, 0]], post.variance[[b, 0]]);
        assert!(
            (mean - mu).abs() <= 1e-9 * (1.0 + mu.abs()),
            "t = {tb}: mean {mean} vs {mu}"
        );
        assert!(
            (var - v).abs() <= 1e-8 * v,
            "t = {tb}: variance {var} vs {v}"
        );
    }
}

/// `KL(q ‖ p) = E_q[log q(x) − log p(x)]`: the analytic `normal_kl` against its Monte Carlo estimate, for generic
/// Gaussians and for the posterior against the fixed-large reverse step.
#[test]
fn analytic_kl_matches_monte_carlo() {
    let d = linear_100();
    let t = 40;
    let posterior = (
        d.posterior_mean_coef1()[t] * 0.5 + d.posterior_mean_coef2()[t] * 0.1,
        d.posterior_log_variance_clipped()[t],
    );
    let model = (posterior.0 + 0.05, d.fixed_large_log_variance()[t]);
    let pairs = [
        ((0.0, 0.0), (1.0, 0.0)),
        ((0.3, -1.0), (-0.2, 0.5)),
        ((1.5, 0.7), (0.0, -0.4)),
        (posterior, model),
    ];
    let log_density = |x: f64, (m, lv): (f64, f64)| -0.5 * (lv + (x - m).powi(2) * (-lv).exp());
    let n = 20_000;
    let mut rng = StdRng::seed_from_u64(1);
    for (q, p) in pairs {
        let samples: Vec<f64> = (0..n)
            .map(|_| {
                let x = q.0 + (0.5 * q.1).exp() * normal(&mut rng);
                log_density(x, q) - log_density(x, p)
            })
            .collect();
        let (estimate, var) = mean_var(&samples);
        let analytic = normal_kl(q.0, q.1, p.0, p.1);
        assert!(analytic > 0.0);
        assert_within(
            &format!("KL({q:?} ‖ {p:?})"),
            estimate,
            analytic,
            (var / n as f64).sqrt(),
        );
    }
}

/// After warm-up the second-moment sampler draws `t` with frequencies `p_t` and weights `1/(T p_t)`.
#[test]
fn importance_sampler_draws_with_its_probabilities() {
    let t_len = 8;
    let mut sampler = LossSecondMomentSampler::new(t_len);
    let losses: Vec<f64> = (0..t_len).map(|t| 1.0 + t as f64).collect();
    let timesteps: Vec<usize> = (0..t_len).collect();
    for _ in 0..10 {
        sampler.update_with_losses(&timesteps, &losses).unwrap();
    }
    let w = sampler.weights();
    let p = &w / w.sum();
    let n = 40_000;
    let draw = sampler.sample(n, &mut StdRng::seed_from_u64(3)).unwrap();
    for t in 0..t_len {
        let count = draw.timesteps.iter().filter(|&&s| s == t).count() as f64;
        // A binomial proportion has SE √(p(1 − p)/n).
        assert_within(
            &format!("frequency of t = {t}"),
            count / n as f64,
            p[t],
            (p[t] * (1.0 - p[t]) / n as f64).sqrt(),
        );
    }
    for (&t, &weight) in draw.timesteps.iter().zip(&draw.weights) {
        assert!((weight * t_len as f64 * p[t] - 1.0).abs() < 1e-12);
    }
}

/// The batch mean of the per-sample losses `w_t·‖ε − ε̂‖²/d` estimates `(1/T) Σ_t w_t E‖ε − ε̂‖²/d`, with `t`
/// uniform or drawn by the importance sampler and reweighted by `1/(T p_t)`; with `ε̂ = ε + δ_t z` (a per-t
/// error of scale `δ_t`, `z ∼ N(0, I)`) that is `(1/T) Σ_t w_t δ_t²`. The min-SNR weights (γ = 5) move it well
/// below the `L_simple` expectation `(1/T) Σ_t δ_t²`.
#[test]
fn min_snr_weighted_l_simple_has_the_weighted_expectation() {
    let d = linear_100();
    let t_len = d.num_timesteps();
    let w = d.min_snr_weights(5.0).unwrap();
    let delta = |t: usize| 1.2 - t as f64 / t_len as f64;
    let expected_plain = (0..t_len).map(|t| delta(t).powi(2)).sum::<f64>() / t_len as f64;
    let expected_min_snr = (0..t_len).map(|t| w[t] * delta(t).powi(2)).sum::<f64>() / t_len as f64;
    let (n, dims) = (20_000, 4);
    let mut rng = StdRng::seed_from_u64(2023);
    let uniform: Vec<usize> = (0..n)
        .map(|_| rand::Rng::gen_range(&mut rng, 0..t_len))
        .collect();
    let mut sampler = LossSecondMomentSampler::new(t_len);
    let all: Vec<usize> = (0..t_len).collect();
    let warm_losses: Vec<f64> = all.iter().map(|&t| 1.0 + (t % 7) as f64).collect();
    for _ in 0..10 {
        sampler.update_with_losses(&all, &warm_losses).unwrap();
    }
    let importance = sampler.sample(n, &mut rng).unwrap();
    let cases = [
        ("uniform t", uniform, vec![1.0; n]),
        (
            "importance-sampled t",
            importance.timesteps,
            importance.weights,
        ),
    ];
    for (name, t, is_weights) in cases {
        let x0 = Array2::from_shape_fn((n, dims), |(i, j)| {
            ((i * 7 + j * 3) % 11) as f64 / 5.0 - 1.0
        });
        let noise = Array2::from_shape_fn((n, dims), |_| normal(&mut rng));
        let out = Array2::from_shape_fn((n, dims), |(i, j)| {
            noise[[i, j]] + delta(t[i]) * normal(&mut rng)
        });
        let mse = d.training_losses(&out, &x0, &t, &noise).unwrap().loss;
        for (what, weights, truth) in [
            ("L_simple", Array1::ones(t_len), expected_plain),
            ("min-SNR L_simple", w.clone(), expected_min_snr),
        ] {
            let per_sample: Vec<f64> = (0..n)
                .map(|i| is_weights[i] * weights[t[i]] * mse[i])
                .collect();
            let (mean, var) = mean_var(&per_sample);
            assert_within(
                &format!("{what}, {name}"),
                mean,
                truth,
                (var / n as f64).sqrt(),
            );
        }
    }
    // The weighting matters: the 13 first of the 100 steps have SNR > 5 (and the largest errors here).
    assert!(
        expected_min_snr < 0.85 * expected_plain,
        "{expected_min_snr} vs {expected_plain}"
    );
}
