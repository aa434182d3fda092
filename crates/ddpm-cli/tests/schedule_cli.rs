//! `ddpm-cli schedule`: runs the binary and checks its JSON against ddpm-math.

use std::process::{Command, Output};

use ddpm_math::{
    BetaSchedule, GaussianDiffusion, LossType, ModelMeanType, ModelVarType, SpacedDiffusion,
};
use serde_json::Value;

const KEYS: [&str; 8] = [
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "timesteps",
];

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ddpm-cli"))
        .arg("schedule")
        .args(args)
        .output()
        .expect("ddpm-cli runs")
}

fn json(args: &[&str]) -> (String, Value) {
    let out = run(args);
    assert!(
        out.status.success(),
        "ddpm-cli schedule {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let value = serde_json::from_str(&text).expect("stdout is one JSON object");
    (text, value)
}

/// The numbers of one top-level array, parsed from the raw text with Rust's correctly rounded `f64` parser, so
/// that the comparison below checks the printed digits round-trip exactly.
fn raw_floats(text: &str, key: &str) -> Vec<f64> {
    let start = text.find(&format!("\"{key}\":[")).expect("key present") + key.len() + 4;
    let end = start + text[start..].find(']').unwrap();
    text[start..end]
        .split(',')
        .map(|s| s.parse::<f64>().unwrap())
        .collect()
}

fn base(schedule: BetaSchedule, t: usize) -> GaussianDiffusion {
    GaussianDiffusion::new(
        schedule.betas(t).unwrap(),
        ModelMeanType::Epsilon,
        ModelVarType::FixedLarge,
        LossType::Simple,
    )
    .unwrap()
}

#[test]
fn json_has_the_tables_of_ddpm_math() {
    let (text, value) = json(&["--schedule", "cosine", "--timesteps", "1000", "--json"]);
    let object = value.as_object().unwrap();
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut expected = KEYS.to_vec();
    expected.sort_unstable();
    assert_eq!(keys, expected);
    for key in KEYS {
        assert_eq!(object[key].as_array().unwrap().len(), 1000, "{key}");
    }
    let timesteps: Vec<u64> = object["timesteps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(timesteps, (0..1000).collect::<Vec<u64>>());

    let d = base(BetaSchedule::Cosine, 1000);
    assert_eq!(raw_floats(&text, "betas"), d.betas().to_vec());
    assert_eq!(
        raw_floats(&text, "alphas_cumprod"),
        d.alphas_cumprod().to_vec()
    );
    assert_eq!(
        raw_floats(&text, "posterior_log_variance_clipped"),
        d.posterior_log_variance_clipped().to_vec()
    );
    assert_eq!(
        raw_floats(&text, "posterior_mean_coef2"),
        d.posterior_mean_coef2().to_vec()
    );
    assert_eq!(object["betas"][999].as_f64().unwrap(), 0.999);
    assert_eq!(object["posterior_variance"][0].as_f64().unwrap(), 0.0);
}

#[test]
fn respace_ddim50_keeps_50_timesteps() {
    let (text, value) = json(&[
        "--schedule",
        "linear",
        "--timesteps",
        "1000",
        "--respace",
        "ddim50",
        "--json",
    ]);
    let timesteps: Vec<usize> = value["timesteps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(timesteps, (0..1000).step_by(20).collect::<Vec<_>>());
    for key in KEYS {
        assert_eq!(value[key].as_array().unwrap().len(), 50, "{key}");
    }
    let spaced = SpacedDiffusion::from_spec(&base(BetaSchedule::Linear, 1000), "ddim50").unwrap();
    assert_eq!(
        raw_floats(&text, "betas"),
        spaced.diffusion().betas().to_vec()
    );
    assert_eq!(
        raw_floats(&text, "posterior_variance"),
        spaced.diffusion().posterior_variance().to_vec()
    );
}

#[test]
fn summary_and_plot_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("schedule.png");
    let out = run(&[
        "--schedule",
        "jsd",
        "--timesteps",
        "200",
        "--plot",
        png.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("jsd schedule, T = 200"), "{text}");
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[1..4], b"PNG");
    // A titled plot of three panels (β_t, ᾱ_t, log SNR).
    use ddpm_train::viz::{PANEL_HEIGHT, PLOT_WIDTH, TITLE_HEIGHT};
    let img = image::load_from_memory(&bytes).unwrap();
    assert_eq!(
        (img.width(), img.height()),
        (PLOT_WIDTH, TITLE_HEIGHT + 3 * PANEL_HEIGHT)
    );
}

#[test]
fn unknown_schedule_fails_and_names_it() {
    let out = run(&["--schedule", "warp", "--json"]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("warp"), "stderr: {stderr}");
}

#[test]
fn impossible_respacing_fails() {
    let out = run(&["--respace", "ddim3000", "--json"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ddim3000"), "stderr: {stderr}");
}
