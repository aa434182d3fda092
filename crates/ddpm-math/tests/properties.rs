//! Property tests (proptest) of the closed-form invariants: schedules, tables, KL, the decoder, respacing, DDIM,
//! min-SNR-γ weights.

use ddpm_math::losses::{discretized_gaussian_log_likelihood, min_snr_weights, normal_kl};
use ddpm_math::{
    space_timesteps, BetaSchedule, GaussianDiffusion, LossType, ModelMeanType, ModelVarType,
    SpacedDiffusion,
};
use ndarray::{Array1, Array2};
use proptest::prelude::*;

fn diffusion(betas: Array1<f64>) -> GaussianDiffusion {
    GaussianDiffusion::new(
        betas,
        ModelMeanType::Epsilon,
        ModelVarType::FixedSmall,
        LossType::Simple,
    )
    .unwrap()
}

fn named_schedule() -> impl Strategy<Value = BetaSchedule> {
    proptest::sample::select(BetaSchedule::ALL.to_vec())
}

/// User-given betas that keep `ᾱ` well away from underflow (`0.5^200 ≈ 6e-61`).
fn user_betas() -> impl Strategy<Value = Vec<f64>> {
    proptest::collection::vec(1e-5f64..=0.5, 2..200)
}

/// Strict decrease of `ᾱ` in `(0, 1)`, for every `t` or every `t` but the last when `β_{T−1} = 1` (jsd).
fn check_alphas_cumprod(d: &GaussianDiffusion) -> Result<(), TestCaseError> {
    let ac = d.alphas_cumprod();
    let t_len = ac.len();
    let last_is_zero = d.betas()[t_len - 1] == 1.0;
    for t in 0..t_len {
        if last_is_zero && t == t_len - 1 {
            prop_assert_eq!(ac[t], 0.0);
        } else {
            prop_assert!(ac[t] > 0.0 && ac[t] < 1.0, "ᾱ[{}] = {}", t, ac[t]);
        }
        if t > 0 {
            prop_assert!(ac[t] < ac[t - 1], "ᾱ[{}] = {} ≥ ᾱ[{}]", t, ac[t], t - 1);
        }
    }
    Ok(())
}

/// `0 ≤ β̃_t ≤ β_t`, `β̃_0 = 0`: `β̃_t = β_t (1 − ᾱ_{t−1})/(1 − ᾱ_t)` and `ᾱ_{t−1} ≥ ᾱ_t`. The computed ratio may
/// round one or two ulps above 1 when `ᾱ` is tiny, hence the `4ε` slack.
fn check_posterior_variance(d: &GaussianDiffusion) -> Result<(), TestCaseError> {
    prop_assert_eq!(d.posterior_variance()[0], 0.0);
    for (t, (&pv, &b)) in d.posterior_variance().iter().zip(d.betas()).enumerate() {
        prop_assert!(
            pv >= 0.0 && pv <= b * (1.0 + 4.0 * f64::EPSILON),
            "β̃[{}] = {} > β = {}",
            t,
            pv,
            b
        );
        prop_assert!(d.posterior_log_variance_clipped()[t].is_finite());
    }
    Ok(())
}

proptest! {
    #[test]
    fn named_betas_lie_in_zero_to_max_beta(schedule in named_schedule(), t_len in 40usize..2000) {
        let betas = schedule.betas(t_len).unwrap();
        prop_assert_eq!(betas.len(), t_len);
        let max_beta = schedule.max_beta(t_len);
        for (i, &b) in betas.iter().enumerate() {
            prop_assert!(b > 0.0 && b <= max_beta, "{}: β[{}] = {} outside (0, {}]", schedule, i, b, max_beta);
        }
    }

    #[test]
    fn cosine_betas_are_positive_for_any_length(t_len in 1usize..3000) {
        // Integer division i/T would give f(0)/f(0) = 1, i.e. β = 0, for every i < T.
        let betas = BetaSchedule::Cosine.betas(t_len).unwrap();
        prop_assert!(betas.iter().all(|&b| b > 0.0 && b <= 0.999));
        prop_assert_eq!(betas[t_len - 1], 0.999);
    }

    #[test]
    fn named_alphas_cumprod_decrease_in_unit_interval(schedule in named_schedule(), t_len in 40usize..2000) {
        let d = diffusion(schedule.betas(t_len).unwrap());
        check_alphas_cumprod(&d)?;
        check_posterior_variance(&d)?;
    }

    #[test]
    fn user_alphas_cumprod_decrease_and_posterior_variance_is_below_beta(betas in user_betas()) {
        let d = diffusion(Array1::from(betas));
        check_alphas_cumprod(&d)?;
        check_posterior_variance(&d)?;
        // ᾱ_prev and ᾱ_next are ᾱ shifted by one.
        let t_len = d.num_timesteps();
        prop_assert_eq!(d.alphas_cumprod_prev()[0], 1.0);
        prop_assert_eq!(d.alphas_cumprod_next()[t_len - 1], 0.0);
        for t in 1..t_len {
            prop_assert_eq!(d.alphas_cumprod_prev()[t], d.alphas_cumprod()[t - 1]);
            prop_assert_eq!(d.alphas_cumprod_next()[t - 1], d.alphas_cumprod()[t]);
        }
    }

    #[test]
    fn kl_is_nonnegative_and_zero_for_equal_gaussians(
        m1 in -10.0f64..10.0, lv1 in -12.0f64..5.0, m2 in -10.0f64..10.0, lv2 in -12.0f64..5.0,
    ) {
        prop_assert_eq!(normal_kl(m1, lv1, m1, lv1), 0.0);
        // Analytically ≥ 0; allow a few ulps of the terms of ½(δ + expm1(−δ)).
        let scale = 1.0 + (lv2 - lv1).abs() + (lv1 - lv2).exp();
        prop_assert!(normal_kl(m1, lv1, m2, lv2) >= -8.0 * f64::EPSILON * scale);
        prop_assert!(normal_kl(m1, lv1, m2, lv1) >= 0.0);
    }

    #[test]
    fn decoder_probabilities_over_256_bins_sum_to_one(mean in -1.5f64..1.5, log_scale in -7.0f64..1.0) {
        let total: f64 = (0..256)
            .map(|p| discretized_gaussian_log_likelihood(p as f64 / 127.5 - 1.0, mean, log_scale).exp())
            .sum();
        // The bins telescope to exactly 1; the 1e-12 probability floor can add at most 256e-12.
        prop_assert!((total - 1.0).abs() < 1e-9, "Σ p = {}", total);
    }

    #[test]
    fn respacing_that_keeps_every_step_reproduces_the_betas(schedule in named_schedule(), t_len in 40usize..1500) {
        let base = diffusion(schedule.betas(t_len).unwrap());
        let all: Vec<usize> = (0..t_len).collect();
        prop_assert_eq!(&space_timesteps(t_len, &t_len.to_string()).unwrap(), &all);
        prop_assert_eq!(&space_timesteps(t_len, &format!("ddim{t_len}")).unwrap(), &all);
        let spaced = SpacedDiffusion::new(&base, &all).unwrap();
        prop_assert_eq!(spaced.timestep_map(), &all[..]);
        // β′_t = 1 − ᾱ_t/ᾱ_{t−1} with ᾱ_t = fl(ᾱ_{t−1}(1 − β_t)): exact up to a few ulps of 1.
        for (t, (&b1, &b0)) in spaced.diffusion().betas().iter().zip(base.betas()).enumerate() {
            prop_assert!((b1 - b0).abs() <= 1e-14, "β′[{}] = {} vs β = {}", t, b1, b0);
        }
    }

    #[test]
    fn ddim_with_eta_one_is_the_respaced_posterior_std(
        schedule in named_schedule(), t_len in 100usize..1200,
        counts in proptest::collection::vec(2usize..=25, 1..=4),
    ) {
        let base = diffusion(schedule.betas(t_len).unwrap());
        let spec = counts.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(",");
        let spaced = SpacedDiffusion::from_spec(&base, &spec).unwrap();
        let d = spaced.diffusion();
        prop_assert_eq!(d.num_timesteps(), counts.iter().sum::<usize>());
        for t in 0..d.num_timesteps() {
            let sigma = d.ddim_coefficients(t, 1.0).unwrap().sigma;
            let expected = d.posterior_variance()[t].sqrt();
            // 1 − ᾱ_t/ᾱ_{t−1} vs the stored β′_t: an absolute rounding error of ~ε, i.e. relative ε/β′.
            prop_assert!(
                (sigma - expected).abs() <= 1e-10 * expected,
                "{} {}: σ_ddim[{}] = {} vs √β̃ = {}", schedule, spec, t, sigma, expected
            );
        }
    }

    #[test]
    fn eps_x0_and_v_conversions_invert_each_other(
        betas in user_betas(), seed_values in proptest::collection::vec(-3.0f64..3.0, 6), frac in 0.0f64..1.0,
    ) {
        let d = diffusion(Array1::from(betas));
        let t = ((d.num_timesteps() - 1) as f64 * frac) as usize;
        let x0 = Array2::from_shape_vec((1, 3), seed_values[..3].to_vec()).unwrap();
        let eps = Array2::from_shape_vec((1, 3), seed_values[3..].to_vec()).unwrap();
        let x_t = d.q_sample(&x0, &[t], &eps).unwrap();
        let v = d.predict_v(&x0, &[t], &eps).unwrap();
        let scale = 1.0 / d.sqrt_alphas_cumprod()[t];
        for (got, want, name) in [
            (d.predict_xstart_from_eps(&x_t, &[t], &eps).unwrap(), &x0, "x0 from ε"),
            (d.predict_xstart_from_v(&x_t, &[t], &v).unwrap(), &x0, "x0 from v"),
            (d.predict_eps_from_v(&x_t, &[t], &v).unwrap(), &eps, "ε from v"),
        ] {
            for (a, b) in got.iter().zip(want.iter()) {
                prop_assert!((a - b).abs() <= 1e-12 * scale * 10.0, "{}: {} vs {}", name, a, b);
            }
        }
    }
    #[test]
    fn min_snr_epsilon_weights_lie_in_zero_one_and_are_one_where_snr_is_at_most_gamma(
        schedule in named_schedule(), t_len in 40usize..2000, gamma in 0.01f64..100.0,
    ) {
        let d = diffusion(schedule.betas(t_len).unwrap());
        let w = d.min_snr_weights(gamma).unwrap();
        for (t, (&wt, &a)) in w.iter().zip(d.alphas_cumprod()).enumerate() {
            prop_assert!(wt > 0.0 && wt <= 1.0, "{} w[{}] = {}", schedule, t, wt);
            let snr = a / (1.0 - a);
            prop_assert_eq!(wt == 1.0, snr <= gamma, "{} t = {}: SNR {}, γ {}, w {}", schedule, t, snr, gamma, wt);
        }
    }

    #[test]
    fn min_snr_epsilon_weights_grow_with_t_and_become_l_simple_as_gamma_grows(
        betas in user_betas(), gamma in 0.01f64..100.0,
    ) {
        // ᾱ decreases in t, so SNR does, and min(1, γ/SNR) cannot decrease.
        let d = diffusion(Array1::from(betas));
        let w = d.min_snr_weights(gamma).unwrap();
        for t in 1..w.len() {
            prop_assert!(w[t] >= w[t - 1], "w[{}] = {} < w[{}] = {}", t, w[t], t - 1, w[t - 1]);
        }
        // γ above every SNR of the table: all ones, plain L_simple.
        let all_ones = d.min_snr_weights(1e300).unwrap();
        prop_assert!(all_ones.iter().all(|&x| x == 1.0), "{:?}", all_ones);
    }

    #[test]
    fn min_snr_weights_of_every_target_are_one_x0_space_loss(
        betas in user_betas(), frac in 0.0f64..1.0, gamma in 0.1f64..50.0,
        x0 in proptest::collection::vec(-1.0f64..1.0, 3),
        eps in proptest::collection::vec(-3.0f64..3.0, 3),
        err in proptest::collection::vec(0.1f64..2.0, 3),
    ) {
        // w_ε·‖ε − ε̂‖² = w_v·‖v − v̂‖² = min(SNR, γ)·‖x_0 − x̂_0‖² for the x̂_0 each output implies.
        let d = diffusion(Array1::from(betas));
        let t = ((d.num_timesteps() - 1) as f64 * frac) as usize;
        let row = |v: &[f64]| Array2::from_shape_vec((1, 3), v.to_vec()).unwrap();
        let (x0, eps, err) = (row(&x0), row(&eps), row(&err));
        let x_t = d.q_sample(&x0, &[t], &eps).unwrap();
        let ac = d.alphas_cumprod().as_slice().unwrap();
        let w = |m| min_snr_weights(ac, m, gamma).unwrap()[t];
        let sq = |a: &Array2<f64>, b: &Array2<f64>| (a - b).mapv(|x| x * x).sum();
        let snr = ac[t] / (1.0 - ac[t]);
        let eps_hat = &eps + &err;
        let x0_from_eps = d.predict_xstart_from_eps(&x_t, &[t], &eps_hat).unwrap();
        let v = d.predict_v(&x0, &[t], &eps).unwrap();
        let v_hat = &v + &err;
        let x0_from_v = d.predict_xstart_from_v(&x_t, &[t], &v_hat).unwrap();
        for (name, weighted, x0_hat) in [
            ("ε", w(ModelMeanType::Epsilon) * sq(&eps, &eps_hat), &x0_from_eps),
            ("v", w(ModelMeanType::V) * sq(&v, &v_hat), &x0_from_v),
        ] {
            let x0_space = snr.min(gamma) * sq(&x0, x0_hat);
            prop_assert!(
                (weighted - x0_space).abs() <= 1e-9 * x0_space.abs().max(weighted.abs()),
                "{} t = {}: {} vs x0-space {}", name, t, weighted, x0_space
            );
        }
        prop_assert_eq!(w(ModelMeanType::StartX), snr.min(gamma));
    }
}
