//! The cost of TensorBoard logging: training img/s with `run.tensorboard = true` over img/s with
//! it off, for the same config, in alternating rounds (so that drift of a shared machine falls on
//! both sides). A measurement, not a test.
//!
//! ```text
//! cargo run -p ddpm-train --example tensorboard_overhead -- DATA.h5 [ROUNDS] [KEY=VALUE…]
//! ```
//! `KEY=VALUE` are `--set` style overrides of the `mnist-cpu` preset (e.g. `run.steps=200`,
//! `run.log_every=1`). Prints one JSON line per round and the median ratio.
use std::path::PathBuf;
use std::time::Instant;

use ddpm_train::engine::TrainOptions;
use ddpm_train::run_dir::RunDir;
use ddpm_train::TrainConfig;

/// One training of `cfg` into a fresh folder: img/s over the whole call (start-up, logging and
/// checkpoints included) and the mean `img_per_s` of its records (the training windows).
fn measure(cfg: &TrainConfig, tensorboard: bool) -> (f64, f64) {
    let mut cfg = cfg.clone();
    cfg.run.tensorboard = tensorboard;
    let dir = tempfile::tempdir().expect("a temporary folder");
    let run = dir.path().join("run");
    let opts = TrainOptions {
        progress: false,
        ..TrainOptions::default()
    };
    let start = Instant::now();
    let summary = ddpm_train::train(&run, &cfg, false, &opts).expect("training");
    let wall = start.elapsed().as_secs_f64();
    let images = (summary.step * cfg.data.batch_size) as f64;
    let windows: Vec<f64> = RunDir::open(&run)
        .and_then(|r| r.read_metrics())
        .expect("metrics")
        .iter()
        .filter_map(|r| r["img_per_s"].as_f64())
        .collect();
    let mean = windows.iter().sum::<f64>() / windows.len().max(1) as f64;
    (images / wall, mean)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let data = PathBuf::from(
        args.next()
            .expect("usage: tensorboard_overhead DATA.h5 [ROUNDS] [KEY=VALUE…]"),
    );
    let rounds: usize = args
        .next()
        .map_or(3, |r| r.parse().expect("ROUNDS is a count"));
    let mut overrides = vec![format!("data.path={:?}", data.display().to_string())];
    overrides.extend(args);
    let cfg = TrainConfig::preset("mnist-cpu")
        .and_then(|c| c.with_overrides(&overrides))
        .expect("a valid config");
    let (mut wall_ratios, mut window_ratios) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let off = measure(&cfg, false);
        let on = measure(&cfg, true);
        wall_ratios.push(on.0 / off.0);
        window_ratios.push(on.1 / off.1);
        println!(
            "{}",
            serde_json::json!({
                "round": round,
                "img_per_s_off": off.0, "img_per_s_on": on.0,
                "window_img_per_s_off": off.1, "window_img_per_s_on": on.1,
            })
        );
    }
    println!(
        "{}",
        serde_json::json!({
            "overrides": overrides,
            "median_ratio_on_over_off": median(wall_ratios),
            "median_window_ratio_on_over_off": median(window_ratios),
        })
    );
}
