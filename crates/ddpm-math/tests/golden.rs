//! Golden tests: ddpm-math against the independent numpy float64 implementation in `tests/golden/gen_golden.py`
//! (regenerate the JSON files with the command in that script's header).

use std::path::Path;

use ddpm_math::losses::{
    approx_standard_normal_cdf, discretized_gaussian_log_likelihood, normal_kl,
};
use ddpm_math::{
    space_timesteps, BetaSchedule, GaussianDiffusion, LossType, ModelMeanType, ModelVarType,
    SpacedDiffusion,
};
use ndarray::{Array1, Array3};
use serde_json::Value;

/// Relative tolerance on every golden value.
const RTOL: f64 = 1e-12;

fn load(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e} (run gen_golden.py)", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad JSON in {}: {e}", path.display()))
}

/// A number, or one of the strings "inf", "-inf", "nan" that the script writes for non-finite values.
fn num(v: &Value) -> f64 {
    match v {
        Value::Number(n) => n.as_f64().unwrap(),
        Value::String(s) if s == "inf" => f64::INFINITY,
        Value::String(s) if s == "-inf" => f64::NEG_INFINITY,
        Value::String(s) if s == "nan" => f64::NAN,
        other => panic!("not a number: {other}"),
    }
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().expect("an array").iter().map(num).collect()
}

fn indices(v: &Value) -> Vec<usize> {
    v.as_array()
        .expect("an array")
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

fn array3(v: &Value) -> Array3<f64> {
    let rows = v.as_array().unwrap();
    let (n, c, p) = (
        rows.len(),
        rows[0].as_array().unwrap().len(),
        rows[0][0].as_array().unwrap().len(),
    );
    Array3::from_shape_fn((n, c, p), |(i, j, k)| num(&v[i][j][k]))
}

/// `|a − b| ≤ RTOL·max(|a|, |b|)` elementwise, or both equal (infinities, exact zeros) or both NaN.
fn assert_close(what: &str, got: &[f64], expected: &[f64]) {
    assert_eq!(got.len(), expected.len(), "{what}: length");
    for (i, (&a, &b)) in got.iter().zip(expected).enumerate() {
        let ok =
            a == b || (a.is_nan() && b.is_nan()) || (a - b).abs() <= RTOL * a.abs().max(b.abs());
        assert!(
            ok,
            "{what}[{i}]: got {a:e}, golden {b:e}, rel {:e}",
            ((a - b) / b).abs()
        );
    }
}

fn table<'a>(d: &'a GaussianDiffusion, name: &str) -> &'a Array1<f64> {
    match name {
        "betas" => d.betas(),
        "log_betas" => d.log_betas(),
        "alphas" => d.alphas(),
        "alphas_cumprod" => d.alphas_cumprod(),
        "alphas_cumprod_prev" => d.alphas_cumprod_prev(),
        "alphas_cumprod_next" => d.alphas_cumprod_next(),
        "sqrt_alphas_cumprod" => d.sqrt_alphas_cumprod(),
        "sqrt_alphas_cumprod_prev" => d.sqrt_alphas_cumprod_prev(),
        "sqrt_alphas_cumprod_next" => d.sqrt_alphas_cumprod_next(),
        "sqrt_one_minus_alphas_cumprod" => d.sqrt_one_minus_alphas_cumprod(),
        "log_one_minus_alphas_cumprod" => d.log_one_minus_alphas_cumprod(),
        "sqrt_recip_alphas_cumprod" => d.sqrt_recip_alphas_cumprod(),
        "sqrt_recipm1_alphas_cumprod" => d.sqrt_recipm1_alphas_cumprod(),
        "posterior_variance" => d.posterior_variance(),
        "posterior_log_variance_clipped" => d.posterior_log_variance_clipped(),
        "posterior_mean_coef1" => d.posterior_mean_coef1(),
        "posterior_mean_coef2" => d.posterior_mean_coef2(),
        "fixed_large_variance" => d.fixed_large_variance(),
        "fixed_large_log_variance" => d.fixed_large_log_variance(),
        other => panic!("the golden file has a table `{other}` that the test does not know"),
    }
}

fn diffusion(schedule: &str, num_timesteps: usize) -> GaussianDiffusion {
    GaussianDiffusion::new(
        schedule
            .parse::<BetaSchedule>()
            .unwrap()
            .betas(num_timesteps)
            .unwrap(),
        ModelMeanType::Epsilon,
        ModelVarType::FixedLarge,
        LossType::Simple,
    )
    .unwrap()
}

fn check_tables(what: &str, d: &GaussianDiffusion, golden: &Value, min_tables: usize) {
    let golden = golden.as_object().unwrap();
    let mut checked = 0;
    for (name, values) in golden {
        if name == "timesteps" {
            continue;
        }
        assert_close(
            &format!("{what}/{name}"),
            table(d, name).as_slice().unwrap(),
            &floats(values),
        );
        checked += 1;
    }
    assert!(
        checked >= min_tables,
        "{what}: only {checked} tables in the golden file"
    );
}

#[test]
fn tables_at_1000_steps_match() {
    let golden = load("tables_1000.json");
    for schedule in ["linear", "cosine"] {
        check_tables(schedule, &diffusion(schedule, 1000), &golden[schedule], 6);
    }
}

#[test]
fn every_table_of_every_schedule_matches() {
    let golden = load("tables_all_40.json");
    for schedule in BetaSchedule::ALL {
        let name = schedule.name();
        check_tables(name, &diffusion(name, 40), &golden[name], 19);
    }
}

#[test]
fn space_timesteps_matches() {
    let golden = load("respaced.json");
    let cases = golden["space_timesteps"].as_array().unwrap();
    assert!(cases.len() >= 8);
    for case in cases {
        let t = case["num_timesteps"].as_u64().unwrap() as usize;
        let spec = case["spec"].as_str().unwrap();
        assert_eq!(
            space_timesteps(t, spec).unwrap(),
            indices(&case["timesteps"]),
            "space_timesteps({t}, {spec:?})"
        );
    }
}

#[test]
fn respaced_tables_match() {
    let golden = load("respaced.json");
    let diffusions = golden["diffusions"].as_object().unwrap();
    assert_eq!(diffusions.len(), 4);
    for (key, expected) in diffusions {
        let (schedule, spec) = key.split_once('/').unwrap();
        let spaced = SpacedDiffusion::from_spec(&diffusion(schedule, 1000), spec).unwrap();
        assert_eq!(
            spaced.timestep_map(),
            indices(&expected["timesteps"]),
            "{key}"
        );
        check_tables(key, spaced.diffusion(), expected, 8);
    }
}

#[test]
fn likelihood_helpers_match() {
    let golden = load("likelihood.json");
    for case in golden["normal_kl"].as_array().unwrap() {
        let a = floats(&case["args"]);
        assert_close(
            "normal_kl",
            &[normal_kl(a[0], a[1], a[2], a[3])],
            &[num(&case["value"])],
        );
    }
    for case in golden["approx_standard_normal_cdf"].as_array().unwrap() {
        let x = num(&case["x"]);
        assert_close(
            "cdf",
            &[approx_standard_normal_cdf(x)],
            &[num(&case["value"])],
        );
    }
    for case in golden["discretized_gaussian_log_likelihood"]
        .as_array()
        .unwrap()
    {
        let a = floats(&case["args"]);
        assert_close(
            &format!("decoder{a:?}"),
            &[discretized_gaussian_log_likelihood(a[0], a[1], a[2])],
            &[num(&case["value"])],
        );
    }
}

#[test]
fn reverse_process_matches_for_every_mean_and_variance_type() {
    let golden = load("reverse_cosine_1000.json");
    let betas = BetaSchedule::Cosine.betas(1000).unwrap();
    let t = indices(&golden["t"]);
    let x_start = array3(&golden["x_start"]);
    let x_t = array3(&golden["x_t"]);
    let out_fixed = array3(&golden["model_output_fixed"]);
    let out_learned = array3(&golden["model_output_learned"]);
    let cases = golden["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 24);
    for case in cases {
        let mean_type = match case["mean_type"].as_str().unwrap() {
            "epsilon" => ModelMeanType::Epsilon,
            "start_x" => ModelMeanType::StartX,
            "v" => ModelMeanType::V,
            other => panic!("{other}"),
        };
        let var_type = match case["var_type"].as_str().unwrap() {
            "fixed_small" => ModelVarType::FixedSmall,
            "fixed_large" => ModelVarType::FixedLarge,
            "learned" => ModelVarType::Learned,
            "learned_range" => ModelVarType::LearnedRange,
            other => panic!("{other}"),
        };
        let clip = case["clip"].as_bool().unwrap();
        let what = format!("{mean_type:?}/{var_type:?}/clip={clip}");
        let d = GaussianDiffusion::new(betas.clone(), mean_type, var_type, LossType::Vlb).unwrap();
        let out = if var_type.is_learned() {
            &out_learned
        } else {
            &out_fixed
        };
        let p = d.p_mean_variance(out, &x_t, &t, clip).unwrap();
        for (name, got) in [
            ("mean", &p.mean),
            ("log_variance", &p.log_variance),
            ("pred_xstart", &p.pred_xstart),
        ] {
            let expected = array3(&case[name]);
            assert_close(
                &format!("{what}/{name}"),
                got.as_slice().unwrap(),
                expected.as_slice().unwrap(),
            );
        }
        let vb = d.vb_terms_bpd(out, &x_start, &x_t, &t, clip).unwrap();
        assert_close(
            &format!("{what}/vb_bpd"),
            vb.output.as_slice().unwrap(),
            &floats(&case["vb_bpd"]),
        );
    }
}

/// DPM-Solver++(2M): timesteps, α/σ/λ at every point, each step's order and coefficients, and a
/// whole chain with a toy data prediction `m_i = tanh(0.7 x_i + 0.1 i)`, against `dpm_solver()` in
/// gen_golden.py.
#[test]
fn dpm_solver_matches_numpy() {
    use ddpm_math::{dpm_solver_timesteps, DpmSolverOptions, DpmSolverPlusPlus, FinalSigma};
    let golden = load("dpm_solver.json");
    let cases = golden["cases"].as_array().unwrap();
    assert!(cases.len() >= 8);
    for c in cases {
        let (schedule, t_len, n) = (
            c["schedule"].as_str().unwrap(),
            c["num_timesteps"].as_u64().unwrap() as usize,
            c["steps"].as_u64().unwrap() as usize,
        );
        let what = format!("{schedule} T={t_len} n={n} {}", c["final"]);
        let d = GaussianDiffusion::new(
            schedule
                .parse::<BetaSchedule>()
                .unwrap()
                .betas(t_len)
                .unwrap(),
            ModelMeanType::Epsilon,
            ModelVarType::FixedSmall,
            LossType::Simple,
        )
        .unwrap();
        let timesteps = dpm_solver_timesteps(t_len, n).unwrap();
        assert_eq!(timesteps, indices(&c["timesteps"]), "{what}: timesteps");
        let options = DpmSolverOptions {
            final_sigma: match c["final"].as_str().unwrap() {
                "zero" => FinalSigma::Zero,
                _ => FinalSigma::SigmaMin,
            },
            lower_order_final: c["lower_order_final"].as_bool().unwrap(),
            euler_at_final: c["euler_at_final"].as_bool().unwrap(),
        };
        let s = DpmSolverPlusPlus::new(&d, &timesteps, options).unwrap();
        assert_close(&format!("{what} alpha"), s.alphas(), &floats(&c["alpha"]));
        assert_close(&format!("{what} sigma"), s.sigmas(), &floats(&c["sigma"]));
        assert_close(
            &format!("{what} lambda"),
            s.lambdas(),
            &floats(&c["lambda"]),
        );
        let steps = s.steps();
        let orders: Vec<usize> = steps.iter().map(|st| st.order).collect();
        assert_eq!(orders, indices(&c["order"]), "{what}: orders");
        for (name, get) in [
            (
                "x_coef",
                (|st: &ddpm_math::DpmSolverStep| st.x) as fn(&_) -> f64,
            ),
            ("d0_coef", |st| st.d0),
            ("d1_coef", |st| st.d1),
        ] {
            let got: Vec<f64> = steps.iter().map(get).collect();
            assert_close(&format!("{what} {name}"), &got, &floats(&c[name]));
        }
        let chain = &c["dpm_solver_chain"];
        let mut x = Array1::from(floats(&chain["x_start"]));
        let mut prev: Option<Array1<f64>> = None;
        for i in 0..n {
            let m = x.mapv(|v| (0.7 * v + 0.1 * i as f64).tanh());
            assert_close(
                &format!("{what} m[{i}]"),
                m.as_slice().unwrap(),
                &floats(&chain["m"][i]),
            );
            x = s.step(i, &x, &m, prev.as_ref()).unwrap();
            assert_close(
                &format!("{what} x[{}]", i + 1),
                x.as_slice().unwrap(),
                &floats(&chain["x"][i + 1]),
            );
            prev = Some(m);
        }
    }
}

/// min-SNR-γ weights for every mean type, against `min_snr_weights()` in gen_golden.py (which
/// evaluates `min(SNR, γ)/SNR`, `min(SNR, γ)` and `min(SNR, γ)/(SNR + 1)` as written).
#[test]
fn min_snr_weights_match_numpy() {
    let golden = load("min_snr.json");
    let cases = golden["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 33, "cases in min_snr.json");
    for c in cases {
        let (schedule, t_len, gamma) = (
            c["schedule"].as_str().unwrap(),
            c["num_timesteps"].as_u64().unwrap() as usize,
            num(&c["gamma"]),
        );
        let mean_type = match c["mean_type"].as_str().unwrap() {
            "epsilon" => ModelMeanType::Epsilon,
            "start_x" => ModelMeanType::StartX,
            "v" => ModelMeanType::V,
            other => panic!("unknown mean type {other}"),
        };
        let what = format!("{schedule} T={t_len} {mean_type:?} γ={gamma}");
        let d = diffusion(schedule, t_len);
        let ac = d.alphas_cumprod().as_slice().unwrap();
        let w = ddpm_math::losses::min_snr_weights(ac, mean_type, gamma).unwrap();
        assert_close(&what, w.as_slice().unwrap(), &floats(&c["weights"]));
    }
}
