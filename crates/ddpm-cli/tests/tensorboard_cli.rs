//! TensorBoard logs (issue 27), read back with the tensorboard package's own readers
//! (`tensorboard_read.py` beside this file, run by the project's `.venv` python):
//!
//! * a training run's event files hold every field of every `metrics.jsonl` record as a scalar at
//!   its step, each sample grid as a PNG image at its step and the resolved config as text;
//!   `run.tensorboard = false` writes none;
//! * after a SIGKILL that left records past the last checkpoint and a `--resume`, TensorBoard shows
//!   each step once (the new file's `SessionLog` START purges the orphaned steps), the raw files
//!   hold them twice;
//! * tensorboard's record reader refuses a record with a flipped byte (its CRC-32C check), and so
//!   does ddpm-train's.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ddpm_train::run_dir::RunDir;
use ddpm_train::tensorboard::{event_files, read_events};
use serde_json::Value;

mod common;
use common::{cli, text, tiny_config_with};

/// The project's python with tensorboard: `VIRTUAL_ENV`'s (cargo xtask sets it), else `.venv`.
fn python() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let p = std::env::var_os("VIRTUAL_ENV")
        .map(|v| PathBuf::from(v).join("bin/python"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| root.join(".venv/bin/python"));
    assert!(
        p.exists(),
        "{} is missing: run `cargo xtask setup` (the venv with tensorboard)",
        p.display()
    );
    p
}

/// `tensorboard_read.py MODE PATH`, parsed; fails naming the fix when tensorboard is missing.
fn read_with_tensorboard(mode: &str, path: &Path) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tensorboard_read.py");
    let out = Command::new(python())
        .arg(script)
        .arg(mode)
        .arg(path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("No module named 'tensorboard'"),
        "the venv's python has no tensorboard: run `cargo xtask setup`\n{err}"
    );
    assert!(
        out.status.success(),
        "tensorboard_read.py {mode} failed:\n{err}"
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn train(dir: &Path, config: &Path, run: &Path) -> Command {
    let mut c = cli(dir);
    c.args(["train", "--no-progress", "--config"])
        .arg(config)
        .arg("--out")
        .arg(run);
    c
}

fn ok(c: &mut Command, what: &str) {
    let out = c.output().unwrap();
    assert!(out.status.success(), "{what} failed:\n{}", text(&out));
}

/// The steps of `tag` in one view (`purged` or `raw`) of [`read_with_tensorboard`]'s `events`.
fn steps(view: &Value, kind: &str, tag: &str) -> Vec<u64> {
    view[kind][tag]
        .as_array()
        .unwrap_or_else(|| panic!("no {kind} {tag} in {view}"))
        .iter()
        .map(|e| e[0].as_u64().unwrap())
        .collect()
}

fn records(run: &Path) -> Vec<Value> {
    RunDir::open(run).unwrap().read_metrics().unwrap()
}

#[test]
fn a_run_shows_its_records_grids_and_config_in_tensorboard() {
    let dir = tempfile::tempdir().unwrap();
    let extra = [
        "run.log_every=2",
        "run.checkpoint_every=4",
        "run.sample_every=4",
        "run.sample_num=4",
        "run.sample_steps=\"ddim4\"",
    ];
    let config = tiny_config_with(dir.path(), 8, &extra);
    let run = dir.path().join("run");
    ok(&mut train(dir.path(), &config, &run), "training");
    let shown = &read_with_tensorboard("events", &run.join("tensorboard"))["purged"];
    // Every field of every record, at its step, with its value (stored as f32).
    // (A `null` is a non-finite value: NaN in the event file, `null` again in the reader's JSON.)
    // A list (`loss_q`) is one scalar per element, `loss_q/0` … `loss_q/3`.
    let mut expected: BTreeMap<String, Vec<(u64, Option<f64>)>> = BTreeMap::new();
    for r in records(&run) {
        let step = r["step"].as_u64().unwrap();
        for (k, v) in r.as_object().unwrap().iter().filter(|(k, _)| *k != "step") {
            let items = match v {
                Value::Array(items) => items
                    .iter()
                    .enumerate()
                    .map(|(i, x)| (format!("{k}/{i}"), x.as_f64()))
                    .collect(),
                v => vec![(k.clone(), v.as_f64())],
            };
            for (tag, x) in items {
                expected.entry(tag).or_default().push((step, x));
            }
        }
    }
    for tag in [
        "loss",
        "loss_q/3",
        "grad_norm",
        "lr",
        "img_per_s",
        "elapsed_s",
    ] {
        assert!(expected.contains_key(tag), "{tag}: {expected:?}");
    }
    for (tag, want) in &expected {
        let got = shown["scalars"][tag]
            .as_array()
            .unwrap_or_else(|| panic!("{tag}: {shown}"));
        assert_eq!(got.len(), want.len(), "{tag}: {got:?} vs {want:?}");
        for (g, (step, v)) in got.iter().zip(want) {
            assert_eq!(g[0].as_u64(), Some(*step), "{tag}");
            let close = match (g[1].as_f64(), v) {
                (Some(g), Some(v)) => (g - v).abs() <= 1e-6 * v.abs().max(1e-3),
                (g, v) => g.is_none() && v.is_none(),
            };
            assert!(close, "{tag} at {step}: {} vs {v:?}", g[1]);
        }
    }
    assert_eq!(steps(shown, "scalars", "loss"), [2, 4, 6, 8]);
    // The grids at steps 4 and 8, as the PNGs written to samples/.
    assert_eq!(steps(shown, "images", "samples"), [4, 8]);
    let png = image::open(run.join("samples/step_8.png")).unwrap();
    for img in shown["images"]["samples"].as_array().unwrap() {
        let size = [png.width() as u64, png.height() as u64];
        assert_eq!(img[3], serde_json::json!(size), "{img}");
    }
    // The resolved config, for the text plugin.
    let config_text = &shown["tensors"]["config"];
    assert_eq!(steps(shown, "tensors", "config"), [0]);
    assert_eq!(config_text[0][1], "text");
    let t = config_text[0][2][0].as_str().unwrap();
    let resolved = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(
        t.contains(resolved.trim_end()) && t.contains("tensorboard = true"),
        "{t}"
    );

    // Off: no event files.
    let off = tiny_config_with(dir.path(), 2, &["run.tensorboard=false"]);
    let quiet = dir.path().join("quiet");
    ok(
        &mut train(dir.path(), &off, &quiet),
        "training without TensorBoard",
    );
    assert!(!quiet.join("tensorboard").exists());
}

/// Sends `sig` to `pid`.
fn signal(pid: u32, sig: i32) {
    // SAFETY: kill has no memory effects.
    assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0);
}

/// The newest logged step and the newest complete checkpoint's step of `run` (0: none, also
/// before the run exists).
fn logged_and_saved(run: &Path) -> (u64, u64) {
    let Ok(r) = RunDir::open(run) else {
        return (0, 0);
    };
    let logged = r
        .read_metrics()
        .unwrap()
        .iter()
        .filter_map(|r| r["step"].as_u64())
        .max();
    let saved = r
        .latest_checkpoint()
        .unwrap()
        .map(|c| RunDir::read_state(&c).unwrap().step as u64);
    (logged.unwrap_or(0), saved.unwrap_or(0))
}

/// Starts a training of `config` into `run` and SIGKILLs it once it has logged at least two steps
/// past its newest checkpoint (checked while it is stopped with SIGSTOP). Returns that
/// checkpoint's step.
fn kill_past_a_checkpoint(dir: &Path, config: &Path, run: &Path) -> u64 {
    let mut child = train(dir, config, run)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no moment to kill found"
        );
        std::thread::sleep(Duration::from_millis(30));
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before the kill"
        );
        signal(child.id(), libc::SIGSTOP);
        let (logged, saved) = logged_and_saved(run);
        if saved > 0 && logged >= saved + 2 {
            signal(child.id(), libc::SIGKILL);
            child.wait().unwrap();
            return saved;
        }
        signal(child.id(), libc::SIGCONT);
    }
}

#[test]
fn after_a_kill_and_a_resume_tensorboard_shows_each_step_once() {
    let dir = tempfile::tempdir().unwrap();
    let steps_total = 60;
    let extra = ["run.checkpoint_every=5", "run.keep_checkpoints=2"];
    let config = tiny_config_with(dir.path(), steps_total, &extra);
    let run = dir.path().join("run");
    let saved = kill_past_a_checkpoint(dir.path(), &config, &run);
    // The killed session's file holds steps past its checkpoint.
    let first = event_files(&run.join("tensorboard")).unwrap();
    assert_eq!(first.len(), 1);
    let orphaned = read_events(&first[0])
        .unwrap()
        .iter()
        .filter(|e| e.step as u64 > saved)
        .count();
    assert!(orphaned > 0, "no event past the checkpoint at step {saved}");

    let mut resume = cli(dir.path());
    resume
        .args(["train", "--no-progress", "--resume"])
        .arg(&run);
    ok(&mut resume, "the resume");
    assert_eq!(event_files(&run.join("tensorboard")).unwrap().len(), 2);
    let read = read_with_tensorboard("events", &run.join("tensorboard"));
    let (shown, raw) = (&read["purged"], &read["raw"]);
    let every_step: Vec<u64> = (1..=steps_total as u64).collect();
    assert_eq!(
        steps(shown, "scalars", "loss"),
        every_step,
        "saved at {saved}"
    );
    let logged: Vec<f64> = records(&run)
        .iter()
        .map(|r| r["loss"].as_f64().unwrap())
        .collect();
    let shown_loss: Vec<f64> = shown["scalars"]["loss"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e[1].as_f64().unwrap())
        .collect();
    assert_eq!(logged.len(), shown_loss.len());
    for (a, b) in logged.iter().zip(&shown_loss) {
        assert!(
            (a - b).abs() <= 1e-6 * a.abs(),
            "{logged:?} vs {shown_loss:?}"
        );
    }
    // Without the purge the orphaned steps would show twice.
    assert!(steps(raw, "scalars", "loss").len() > steps_total, "{raw}");
    // Each session's config, at its first step.
    assert_eq!(steps(shown, "tensors", "config"), [0, saved + 1]);
}

#[test]
fn a_flipped_byte_is_refused_by_tensorboards_reader_and_by_ours() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config_with(dir.path(), 3, &[]);
    let run = dir.path().join("run");
    ok(&mut train(dir.path(), &config, &run), "training");
    let file = event_files(&run.join("tensorboard")).unwrap().remove(0);
    let n = read_events(&file).unwrap().len() as u64;
    let whole = read_with_tensorboard("records", &file);
    assert_eq!(
        (whole["read"].as_u64(), &whole["refused"]),
        (Some(n), &Value::Null)
    );
    // One byte inside the last record's data (its last 4 bytes are the CRC).
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes.len() - 10;
    bytes[at] ^= 0x01;
    let bad = dir.path().join("events.out.tfevents.bad");
    std::fs::write(&bad, &bytes).unwrap();
    let refused = read_with_tensorboard("records", &bad);
    assert_eq!(refused["read"].as_u64(), Some(n - 1), "{refused}");
    let why = refused["refused"].as_str().unwrap_or_default();
    assert!(why.contains("crc32"), "{refused}");
    let ours = read_events(&bad).unwrap_err().to_string();
    assert!(ours.contains("fails its CRC-32C check"), "{ours}");
}
