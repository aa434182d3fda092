//! Our samplers against diffusers' `DDPMScheduler` / `DDIMScheduler` (0.42.1): for every case of
//! `fixtures/schedulers` (written by `scripts/make_scheduler_fixtures.py`), the same tiny random
//! UNet, the same x_T and the same per-step noise must give the same chain, with the scheduler
//! config read from a diffusers pipeline folder exactly as `sample --model DIR` reads it.
use std::path::{Path, PathBuf};

use ddpm_train::model_io::{load_ddpm, Weights};
use ddpm_train::sampler::{Sampler, SamplerSpec};
use serde_json::Value;
use tch::{Device, Tensor};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/schedulers")
}

/// A diffusers pipeline folder: `unet/` (copied) and `scheduler/scheduler_config.json`.
fn pipeline(dir: &Path, unet: &str, scheduler_json: &str) -> PathBuf {
    let unet_src = fixtures().join(unet);
    std::fs::create_dir_all(dir.join("unet")).unwrap();
    std::fs::create_dir_all(dir.join("scheduler")).unwrap();
    for f in ["config.json", "diffusion_pytorch_model.safetensors"] {
        std::fs::copy(unet_src.join(f), dir.join("unet").join(f)).unwrap();
    }
    std::fs::write(dir.join("scheduler/scheduler_config.json"), scheduler_json).unwrap();
    dir.to_path_buf()
}

fn tensors(case: &str) -> std::collections::HashMap<String, Tensor> {
    Tensor::read_safetensors(fixtures().join(format!("{case}.safetensors")))
        .unwrap()
        .into_iter()
        .collect()
}

/// Relative tolerance, against `1 + max |diffusers' value|`. The UNets agree to ~1e-6; the chains
/// then agree to ≤ 3e-5 of their scale in every case but `ddpm_learned_range`, whose random
/// variance channel reaches log σ² ≈ 15 (σ ≈ 2000) at t = 1, where f32 rounding of the
/// log-variance gives 3.3e-4. A formula that differs is off by O(0.1–1).
const TOL: f64 = 1e-3;

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// Runs one case; returns our final chain state.
fn run_case(case: &Value) -> Option<Tensor> {
    let name = case["name"].as_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let config =
        std::fs::read_to_string(fixtures().join(case["config"].as_str().unwrap())).unwrap();
    let dir = pipeline(tmp.path(), case["unet"].as_str().unwrap(), &config);
    let model = match load_ddpm(&dir, Weights::Ema, Device::Cpu) {
        Ok(m) => m,
        Err(e) => {
            assert!(
                !case["finite"].as_bool().unwrap(),
                "{name}: diffusers samples it, we refused: {e}"
            );
            return None;
        }
    };
    assert!(
        case["finite"].as_bool().unwrap(),
        "{name}: diffusers samples NaN, we accepted the config"
    );
    let t = tensors(name);
    let n = case["num_inference_steps"].as_u64().unwrap();
    let spec = SamplerSpec::from_cli(
        case["sampler"].as_str().unwrap(),
        &n.to_string(),
        case["eta"].as_f64().unwrap_or(0.0),
        model.diffusion.num_timesteps(),
        &model.sampling,
    )
    .unwrap();
    let want_ts: Vec<i64> = Vec::try_from(&t["timesteps"]).unwrap();
    let ours: Vec<i64> = spec.timesteps.iter().rev().map(|&v| v as i64).collect();
    assert_eq!(ours, want_ts, "{name}: timesteps");
    let sampler = Sampler::new(&model.diffusion, &spec, Device::Cpu).unwrap();
    let used: Vec<i64> = Vec::try_from(&t["noise_used"]).unwrap();
    let mut drawn = vec![0i64; used.len()];
    let steps = used.len();
    let out = sampler
        .sample_with_noise(
            |x, ts, y| model.unet.forward_t(x, ts, y, false),
            t["x_T"].shallow_clone(),
            None,
            steps,
            |_| {},
            |done, _| {
                drawn[done] = 1;
                t["noise"].get(done as i64)
            },
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    // Steps where diffusers adds σ·z with σ = 0 (DDIM's last step towards ᾱ = 1) may draw or not.
    for (k, (&u, &d)) in used.iter().zip(&drawn).enumerate() {
        assert!(
            u == d || (d == 0 && k + 1 == steps),
            "{name}: step {k}: diffusers drew noise {u}, we {d}"
        );
    }
    // The first chain's states, step by step, to name the first step that differs.
    let chain = &t["chain"];
    for (k, ours) in out.trajectory.iter().skip(1).enumerate() {
        let want = chain.get(k as i64).narrow(0, 0, 1);
        let scale = 1.0 + want.abs().max().double_value(&[]);
        assert!(
            max_abs(ours, &want) < TOL * scale,
            "{name}: step {k} (t = {}) differs by {:.3e}",
            want_ts[k],
            max_abs(ours, &want)
        );
    }
    let want = &t["sample"];
    let scale = 1.0 + want.abs().max().double_value(&[]);
    let diff = max_abs(&out.raw, want);
    assert!(
        diff < TOL * scale,
        "{name}: final sample differs by {diff:.3e}"
    );
    Some(out.raw)
}

#[test]
fn every_fixture_chain_matches_diffusers() {
    tch::set_num_threads(1);
    let cases: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("cases.json")).unwrap())
            .unwrap();
    assert!(cases.len() >= 30, "the fixture list is incomplete");
    let mut results = std::collections::HashMap::new();
    for case in &cases {
        if let Some(s) = run_case(case) {
            results.insert(case["name"].as_str().unwrap().to_string(), s);
        }
    }
    // The bug report's inputs: `clip_sample: false` and `trained_betas` change the images.
    let levels = |a: &str, b: &str| {
        let q = |x: &Tensor| ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round();
        (q(&results[a]) - q(&results[b]))
            .abs()
            .max()
            .double_value(&[])
    };
    assert!(levels("ddpm_base", "ddpm_no_clip") > 10.0);
    assert!(levels("ddim_base", "ddim_no_clip") > 10.0);
    assert!(levels("ddpm_base", "ddpm_trained_betas") > 10.0);
    // ᾱ = 0 with ε-prediction: finite images, as diffusers gives.
    for name in [
        "ddpm_beta_one_eps",
        "ddim_beta_one_eps_trailing",
        "ddpm_zsnr_eps",
    ] {
        assert!(
            results[name].isfinite().all().int64_value(&[]) == 1,
            "{name}"
        );
    }
}

fn base_config() -> serde_json::Map<String, Value> {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("ddpm_base.json")).unwrap())
        .unwrap()
}

fn load_with(key: &str, value: Value) -> Result<ddpm_train::model_io::LoadedDdpm, String> {
    let mut c = base_config();
    c.insert(key.into(), value);
    let tmp = tempfile::tempdir().unwrap();
    let dir = pipeline(tmp.path(), "unet_eps", &serde_json::to_string(&c).unwrap());
    load_ddpm(&dir, Weights::Ema, Device::Cpu).map_err(|e| e.to_string())
}

#[test]
fn every_key_is_honoured_or_refused_by_name() {
    let refused = [
        ("not_a_key", Value::from(1)),
        ("variance_type", Value::from("learned")),
        ("variance_type", Value::from("fixed_large_log")),
        ("variance_type", Value::from("learned_range")),
        ("beta_schedule", Value::from("exp")),
        ("prediction_type", Value::from("flow_prediction")),
        ("timestep_spacing", Value::from("even")),
        ("solver_order", Value::from(3)),
        ("use_karras_sigmas", Value::from(true)),
        ("clip_sample", Value::from("yes")),
        ("clip_sample_range", Value::from(0.0)),
        ("dynamic_thresholding_ratio", Value::from(1.5)),
        ("steps_offset", Value::from(-1)),
        ("_class_name", Value::from("PNDMScheduler")),
        ("trained_betas", serde_json::json!([0.1, 0.2])),
        // diffusers raises for a null where it needs a value.
        ("prediction_type", Value::Null),
        ("num_train_timesteps", Value::Null),
        ("beta_end", Value::Null),
        ("num_train_timesteps", Value::from(10_000_000)),
        ("solver_order", Value::Null),
    ];
    for (key, value) in refused {
        let shown = value.to_string();
        let err = match load_with(key, value) {
            Ok(_) => panic!("{key} = {shown} was accepted"),
            Err(e) => e,
        };
        assert!(
            err.contains(key),
            "{key} = {shown}: the error does not name it: {err}"
        );
        assert!(err.contains("scheduler_config.json"), "{err}");
    }
    // A null flag is Python's None: false, as diffusers' `if config.clip_sample:` reads it.
    let m = load_with("clip_sample", Value::Null).unwrap();
    assert_eq!(m.sampling.x0, ddpm_train::sampler::X0Processing::None);
    // Whole numbers written as floats are whole numbers.
    let m = load_with("num_train_timesteps", Value::from(20.0)).unwrap();
    assert_eq!(m.diffusion.num_timesteps(), 20);
    // DPM-Solver's own keys at their defaults (as diffusers writes them, -Infinity included).
    let mut c = base_config();
    c.insert(
        "_class_name".into(),
        Value::from("DPMSolverMultistepScheduler"),
    );
    c.insert("solver_order".into(), Value::from(2));
    c.insert("algorithm_type".into(), Value::from("dpmsolver++"));
    let text = serde_json::to_string(&c)
        .unwrap()
        .replace('}', ", \"lambda_min_clipped\": -Infinity}");
    let tmp = tempfile::tempdir().unwrap();
    let dir = pipeline(tmp.path(), "unet_eps", &text);
    load_ddpm(&dir, Weights::Ema, Device::Cpu).unwrap();
}

#[test]
fn an_epsilon_model_at_zero_terminal_snr_needs_clipping() {
    let mut c = base_config();
    c.insert("rescale_betas_zero_snr".into(), Value::from(true));
    c.insert("clip_sample".into(), Value::from(false));
    let tmp = tempfile::tempdir().unwrap();
    let dir = pipeline(tmp.path(), "unet_eps", &serde_json::to_string(&c).unwrap());
    let model = load_ddpm(&dir, Weights::Ema, Device::Cpu).unwrap();
    let spec = SamplerSpec::from_cli("ddpm", "20", 0.0, 20, &model.sampling).unwrap();
    let err = Sampler::new(&model.diffusion, &spec, Device::Cpu)
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("clip"), "{err}");
}

#[test]
fn a_folder_without_a_scheduler_config_takes_ddpm_schedulers_defaults() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = pipeline(tmp.path(), "unet_eps", "{}");
    std::fs::remove_file(dir.join("scheduler/scheduler_config.json")).unwrap();
    let m = load_ddpm(&dir, Weights::Ema, Device::Cpu).unwrap();
    let want = load_ddpm(
        &pipeline(&tmp.path().join("b"), "unet_eps", "{}"),
        Weights::Ema,
        Device::Cpu,
    )
    .unwrap();
    assert_eq!(m.diffusion, want.diffusion);
    assert_eq!(m.sampling, want.sampling);
    assert_eq!(m.diffusion.num_timesteps(), 1000);
    assert_eq!(m.diffusion.var_type(), ddpm_math::ModelVarType::FixedSmall);
    // A folder or a dangling link where the file should be is an error, not a silent default.
    let file = dir.join("scheduler/scheduler_config.json");
    std::os::unix::fs::symlink(tmp.path().join("nowhere.json"), &file).unwrap();
    let err = load_ddpm(&dir, Weights::Ema, Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("not a readable file"), "{err}");
    std::fs::remove_file(&file).unwrap();
    std::fs::create_dir(&file).unwrap();
    let err = load_ddpm(&dir, Weights::Ema, Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("not a readable file"), "{err}");
}

#[test]
fn dpm_solver_ignores_a_configs_clipping_but_not_the_users() {
    // DPMSolverMultistepScheduler has no clip_sample: a config's clipping is not applied…
    let config = std::fs::read_to_string(fixtures().join("dpm_7.json")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let m = load_ddpm(
        &pipeline(tmp.path(), "unet_eps", &config),
        Weights::Ema,
        Device::Cpu,
    )
    .unwrap();
    let x0 = |explicit: bool, x0| {
        let settings = ddpm_train::sampler::SamplingSettings {
            x0,
            x0_explicit: explicit,
            ..m.sampling
        };
        SamplerSpec::from_cli("dpm++", "7", 0.0, 20, &settings)
            .unwrap()
            .x0
    };
    use ddpm_train::sampler::X0Processing;
    let clip = X0Processing::Clip { range: 1.0 };
    assert_eq!(x0(false, clip), X0Processing::None);
    // …but one asked for on the command line is.
    assert_eq!(x0(true, clip), clip);
}
