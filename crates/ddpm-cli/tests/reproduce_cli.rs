//! `ddpm-cli reproduce mnist` with a budget of seconds per model, tiny networks and a few samples
//! per row: it runs end to end, continues after SIGTERM (during training) and kill -9 (during
//! sampling) without redoing finished parts, and refuses a changed plan unless --force.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

mod common;

fn inception() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../datasets/weights/fid-inception-pool3.pt");
    assert!(
        p.exists(),
        "{} is missing: run `cargo xtask fetch-weights`",
        p.display()
    );
    p
}

/// Budget per model, minutes (6 s).
const MINUTES: &str = "0.1";

/// The command line of the tiny reproduction in `d` (`extra` after it).
fn reproduce(d: &Path, minutes: &str, extra: &[&str]) -> Command {
    reproduce_with(d, "out", minutes, "4", extra)
}

/// [`reproduce`] into the folder `out` of `d`, with `ancestral` samples in the ancestral row.
fn reproduce_with(d: &Path, out: &str, minutes: &str, ancestral: &str, extra: &[&str]) -> Command {
    let mut c = common::cli(d);
    c.args(["reproduce", "mnist", "--device", "cpu", "--out", out])
        .args(["--minutes-per-model", minutes])
        .arg("--data")
        .arg(common::mnist())
        .arg("--classifier")
        .arg(d.join("clf"))
        .arg("--inception")
        .arg(inception())
        .args(["--fid-samples", "6", "--cls-samples", "12"])
        .args([
            "--ancestral-samples",
            ancestral,
            "--nll-images",
            "2",
            "--chunk",
            "5",
        ]);
    for set in [
        "run.cpu_threads=1",
        "run.log_every=5",
        "run.checkpoint_every=10",
        "run.sample_every=0",
        "run.sample_num=4",
        "data.batch_size=8",
        "ddpm:model.unet.block_out_channels=[8, 16]",
        "ddpm:model.unet.down_block_types=[\"DownBlock2D\", \"DownBlock2D\"]",
        "ddpm:model.unet.up_block_types=[\"UpBlock2D\", \"UpBlock2D\"]",
        "ddpm:model.unet.norm_num_groups=4",
        "ddpm:diffusion.timesteps=50",
        "ddpm:run.sample_steps=\"ddim5\"",
        "ddpm:run.eval_samples=6",
        "ddpm:run.eval_reference_images=50",
        "ddpm:run.eval_every=10",
        "gan:model.base_channels=8",
        "gan:model.disc_channels=8",
        "vae:model.base_channels=8",
    ] {
        c.args(["--set", set]);
    }
    c.args(extra).env("RUST_LOG", "warn");
    c
}

fn run(mut c: Command) -> Output {
    c.output().expect("ddpm-cli runs")
}

/// Starts the command and waits until `ready(out)` holds, then returns the child (still running).
fn start_until(mut c: Command, d: &Path, what: &str, ready: impl Fn(&Path) -> bool) -> Child {
    let mut child = c
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !ready(&d.join("out")) {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("ended ({status}) before {what}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "never reached {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

fn has_checkpoint(run: &Path) -> bool {
    std::fs::read_dir(run.join("checkpoints"))
        .map(|mut r| r.any(|e| e.unwrap().path().join("state.json").exists()))
        .unwrap_or(false)
}

fn mtime(p: &Path) -> SystemTime {
    std::fs::metadata(p).unwrap().modified().unwrap()
}

fn check_results(out: &Path) -> Value {
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let rows = r["rows"].as_array().unwrap();
    let models: Vec<&str> = rows.iter().map(|r| r["model"].as_str().unwrap()).collect();
    assert_eq!(models, ["DDPM", "DDPM", "DDPM", "GAN", "VAE"]);
    let samplers: Vec<&str> = rows
        .iter()
        .map(|r| r["sampler"].as_str().unwrap())
        .collect();
    assert_eq!(
        samplers,
        [
            "DPM-Solver++ 20",
            "DDIM 50",
            "ancestral 50",
            "generator",
            "decoder mean"
        ]
    );
    for (i, row) in rows.iter().enumerate() {
        let ancestral = i == 2;
        assert_eq!(row["fid_n"], if ancestral { 4 } else { 6 }, "{row}");
        assert_eq!(row["cls_n"], if ancestral { 4 } else { 12 }, "{row}");
        for key in [
            "fid",
            "fid_cls",
            "is_cls",
            "sample_s_per_image",
            "train_minutes",
        ] {
            let v = row[key]
                .as_f64()
                .unwrap_or_else(|| panic!("{key} in {row}"));
            assert!(v.is_finite() && v > 0.0, "{key} = {v} in {row}");
        }
        for key in ["fid", "fid_cls", "is_cls"] {
            assert!(row["floor"][key].as_f64().unwrap().is_finite(), "{row}");
        }
        // Training stops at the budget (plus the step, checkpoint and evaluation in flight).
        let minutes = row["train_minutes"].as_f64().unwrap();
        assert!(
            minutes < 0.1 + 0.25,
            "trained {minutes} min on a 0.1 min budget"
        );
        assert_eq!(row["bpd"].is_f64(), row["model"] != "GAN", "{row}");
    }
    // The floor at n = 6 / 12 is the same for every full row.
    assert_eq!(rows[0]["floor"], rows[3]["floor"]);
    assert!(
        !r["ddpm_curve"].as_array().unwrap().is_empty(),
        "the DDPM's FID_cls during training: {}",
        r["ddpm_curve"]
    );
    assert_eq!(r["bpd_images"], 2);
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert!(md.contains("| DDPM | DPM-Solver++ 20 |"), "{md}");
    assert!(
        md.contains("## Protocol") && md.contains("on 4 samples only"),
        "{md}"
    );
    for png in ["results.png", "curve.png"] {
        let img = image::open(out.join(png)).unwrap();
        assert!(img.width() > 200 && img.height() > 100, "{png}");
    }
    r
}

#[test]
fn reproduce_runs_end_to_end_continues_after_sigterm_and_kill_and_guards_its_plan() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    common::random_classifier(&d.join("clf"));
    // SIGTERM while the DDPM trains: it stops with a checkpoint (status 143).
    let child = start_until(reproduce(d, MINUTES, &[]), d, "a DDPM checkpoint", |o| {
        has_checkpoint(&o.join("ddpm"))
    });
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait_with_output().unwrap().status;
    assert_eq!(status.code(), Some(143), "SIGTERM while training");
    assert!(!d.join("out/results.json").exists());
    // kill -9 while the first row samples.
    let mut child = start_until(reproduce(d, MINUTES, &[]), d, "a chunk of samples", |o| {
        o.join("samples/ddpm-dpmpp20/chunk-000.json").exists()
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let chunk = d.join("out/samples/ddpm-dpmpp20/chunk-000.h5");
    let chunk_time = mtime(&chunk);
    let ddpm_steps = |d: &Path| {
        let text = std::fs::read_to_string(d.join("out/ddpm/metrics.jsonl")).unwrap();
        text.lines().count()
    };
    let lines_before = ddpm_steps(d);
    // The third run finishes without drawing the first chunk again or training on.
    let out = run(reproduce(d, MINUTES, &[]));
    assert!(out.status.success(), "{}", common::text(&out));
    assert_eq!(
        mtime(&chunk),
        chunk_time,
        "a finished chunk was drawn again"
    );
    assert_eq!(
        ddpm_steps(d),
        lines_before,
        "the DDPM trained past its budget"
    );
    let first = check_results(&d.join("out"));
    assert!(String::from_utf8_lossy(&out.stdout).contains("# DDPM vs GAN vs VAE on MNIST"));
    // Again: nothing is redone.
    let rows_time = mtime(&d.join("out/rows/gan.json"));
    let out = run(reproduce(d, MINUTES, &[]));
    assert!(out.status.success(), "{}", common::text(&out));
    assert_eq!(mtime(&d.join("out/rows/gan.json")), rows_time);
    let again = check_results(&d.join("out"));
    assert_eq!(first["rows"], again["rows"]);
    // A changed budget is refused, naming it; nothing is touched.
    let out = run(reproduce(d, "0.2", &[]));
    assert_eq!(out.status.code(), Some(2), "{}", common::text(&out));
    let text = common::text(&out);
    assert!(text.contains("minutes_per_model: 0.1 → 0.2"), "{text}");
    assert!(text.contains("--force"), "{text}");
    assert_eq!(mtime(&d.join("out/rows/gan.json")), rows_time);
    // --force with another protocol: the runs stay, the evaluations are redone.
    let gan_state = std::fs::read_to_string(d.join("out/gan/metrics.jsonl")).unwrap();
    let out = run(reproduce_with(d, "out", MINUTES, "3", &["--force"]));
    assert!(out.status.success(), "{}", common::text(&out));
    assert_eq!(
        std::fs::read_to_string(d.join("out/gan/metrics.jsonl")).unwrap(),
        gan_state,
        "--force retrained a run whose config did not change"
    );
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("out/results.json")).unwrap())
            .unwrap();
    assert_eq!(
        r["rows"][2]["fid_n"], 3,
        "the ancestral row has the new sample count"
    );
    assert_eq!(r["rows"][3]["fid_n"], 6);
    // A folder that is not a reproduction is refused.
    std::fs::create_dir_all(d.join("other")).unwrap();
    std::fs::write(d.join("other/x"), "x").unwrap();
    let out = run(reproduce_with(d, "other", MINUTES, "4", &[]));
    assert_eq!(out.status.code(), Some(2), "{}", common::text(&out));
    assert!(
        common::text(&out).contains("no plan.toml"),
        "{}",
        common::text(&out)
    );
}
