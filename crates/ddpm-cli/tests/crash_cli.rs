//! Nothing lost, nothing corrupt: a training killed with SIGKILL at random moments (also while
//! it writes a checkpoint) and resumed each time ends bit-equal to an uninterrupted one, and no
//! kill leaves a checkpoint that `--resume` would load while damaged; damaged checkpoints are
//! named and passed over; a live run is locked; SIGTERM saves; a full disk fails cleanly.
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{cli, text, tiny_config_with};

/// The tiny DDPM with a checkpoint at every step, keeping 2 (so removals happen too).
fn crash_config(dir: &Path, steps: usize) -> PathBuf {
    tiny_config_with(dir, steps, &["run.keep_checkpoints=2"])
}

fn train(dir: &Path, config: &Path, run: &Path) -> Command {
    let mut c = cli(dir);
    c.args(["train", "--no-progress"]);
    if run.join("config.toml").is_file() {
        c.arg("--resume").arg(run);
    } else {
        c.arg("--config").arg(config).arg("--out").arg(run);
    }
    c
}

fn ok(out: Output, what: &str) -> String {
    let t = text(&out);
    assert!(out.status.success(), "{what} failed ({}):\n{t}", out.status);
    t
}

/// The sha256 of every tensor file of the newest checkpoint, from its manifest.
fn final_digests(run: &Path) -> Vec<(String, String)> {
    let ckpt = ddpm_train::run_dir::RunDir::open(run)
        .unwrap()
        .latest_checkpoint()
        .unwrap()
        .expect("a checkpoint");
    let m = ddpm_train::manifest::verify(&ckpt).unwrap();
    m.files
        .into_iter()
        .filter(|(name, _)| name.ends_with(".safetensors"))
        .map(|(name, d)| (name, d.sha256))
        .collect()
}

/// Waits for `path` to exist (at most 120 s).
fn wait_for(path: &Path) {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

#[test]
fn sigkill_at_random_moments_never_damages_a_checkpoint_and_resume_is_bit_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let steps = 120;
    let config = crash_config(d, steps);
    let reference = d.join("reference");
    ok(
        train(d, &config, &reference).output().unwrap(),
        "uninterrupted run",
    );
    let run = d.join("crashed");
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    let (mut kills, mut inside_checkpoint) = (0, 0);
    while kills < 24 {
        let mut child = train(d, &config, &run)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        // A quarter of the kills at a random moment of start-up; the others after 1–3 new
        // checkpoints plus a random part of a step (so some land inside a checkpoint write).
        // Each session adds at most a few steps, on a fast machine as on a slow one.
        let first = newest_step(&run);
        match rng % 4 {
            0 => std::thread::sleep(Duration::from_millis(50 + (rng >> 8) % 800)),
            k => {
                let start = Instant::now();
                while newest_step(&run) < first + k as usize
                    && child.try_wait().unwrap().is_none()
                    && start.elapsed() < Duration::from_secs(120)
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                std::thread::sleep(Duration::from_millis((rng >> 16) % 120));
            }
        }
        if child.try_wait().unwrap().is_some() {
            break; // finished before the kill
        }
        signal(&child, "-KILL");
        child.wait().unwrap();
        kills += 1;
        let leftovers = std::fs::read_dir(run.join("checkpoints"))
            .map(|it| {
                it.filter(|e| {
                    e.as_ref()
                        .is_ok_and(|e| e.file_name().to_string_lossy().starts_with(".tmp_"))
                })
                .count()
            })
            .unwrap_or(0);
        inside_checkpoint += usize::from(leftovers > 0);
        if run.join("config.toml").is_file() {
            // Every checkpoint folder the kill left verifies: none is half-written.
            let out = cli(d).arg("check").arg(&run).output().unwrap();
            assert!(out.status.success(), "after kill {kills}: {}", text(&out));
        }
    }
    eprintln!("{kills} kills, {inside_checkpoint} of them while a checkpoint was being written");
    assert!(kills >= 20, "the run finished after {kills} kills");
    assert!(
        inside_checkpoint >= 1,
        "no kill landed inside a checkpoint write"
    );
    ok(
        train(d, &config, &run).output().unwrap(),
        "the final resume",
    );
    assert_eq!(final_digests(&run), final_digests(&reference));
}

/// The step of the newest `step_N` folder of the run (0 when none).
fn newest_step(run: &Path) -> usize {
    std::fs::read_dir(run.join("checkpoints"))
        .map(|it| {
            it.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.strip_prefix("step_").and_then(|n| n.parse().ok())
                })
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

/// Copies the run directory `from` to `to` (files and folders).
fn copy_run(from: &Path, to: &Path) {
    for e in walk(from) {
        let rel = e.strip_prefix(from).unwrap();
        if e.is_dir() {
            std::fs::create_dir_all(to.join(rel)).unwrap();
        } else {
            std::fs::create_dir_all(to.join(rel).parent().unwrap()).unwrap();
            std::fs::copy(&e, to.join(rel)).unwrap();
        }
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn damaged_checkpoints_are_named_and_the_newest_valid_one_is_used() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let config = crash_config(d, 3);
    let base = d.join("base");
    ok(train(d, &config, &base).output().unwrap(), "train");
    let newest = "checkpoints/step_0000003";
    type Damage = fn(&Path);
    let damages: [(&str, Damage, &str); 4] = [
        (
            "truncated tensor file",
            |c| {
                let f = c.join("model.safetensors");
                let len = std::fs::metadata(&f).unwrap().len();
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&f)
                    .unwrap()
                    .set_len(len / 2)
                    .unwrap();
            },
            "model.safetensors",
        ),
        (
            "flipped byte",
            |c| {
                let f = c.join("ema.safetensors");
                let mut b = std::fs::read(&f).unwrap();
                let i = b.len() - 7;
                b[i] ^= 0x10;
                std::fs::write(&f, b).unwrap();
            },
            "ema.safetensors",
        ),
        (
            "missing state.json",
            |c| std::fs::remove_file(c.join("state.json")).unwrap(),
            "state.json",
        ),
        (
            "no manifest",
            |c| std::fs::remove_file(c.join("manifest.json")).unwrap(),
            "no manifest.json",
        ),
    ];
    for (i, (what, damage, named)) in damages.into_iter().enumerate() {
        let run = d.join(format!("run{i}"));
        copy_run(&base, &run);
        damage(&run.join(newest));
        let out = cli(d).arg("check").arg(&run).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{what}: {}", text(&out));
        assert!(text(&out).contains(named), "{what}: {}", text(&out));
        assert!(
            text(&out).contains("continues from") && text(&out).contains("step_0000002"),
            "{what}: {}",
            text(&out)
        );
        // --resume says so and continues from step 2, not from scratch.
        let out = cli(d)
            .args(["train", "--no-progress", "--steps", "4", "--resume"])
            .arg(&run)
            .output()
            .unwrap();
        let t = ok(out, what);
        assert!(
            t.contains(named) && t.contains("passed over"),
            "{what}: {t}"
        );
        assert!(t.contains("resumed step=2"), "{what}: {t}");
        assert!(t.contains("at step 4"), "{what}: {t}");
    }
}

#[test]
fn a_live_run_is_locked_and_a_dead_ones_lock_is_taken_over() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let config = crash_config(d, 1_000_000);
    let run = d.join("run");
    let mut child = train(d, &config, &run)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&run.join("checkpoints/step_0000001"));
    let log_before = std::fs::read_to_string(run.join("train.log"))
        .unwrap()
        .len();
    for args in [
        vec!["--resume"],
        vec!["--config", config.to_str().unwrap(), "--out"],
    ] {
        let out = cli(d)
            .args(["train", "--no-progress"])
            .args(&args)
            .arg(&run)
            .output()
            .unwrap();
        let t = text(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {t}");
        assert!(
            t.contains(&format!("PID {}", child.id())) && t.contains("on host"),
            "{args:?}: {t}"
        );
    }
    signal(&child, "-KILL");
    child.wait().unwrap();
    // The refused commands wrote nothing into the live run's log.
    let log = std::fs::read_to_string(run.join("train.log")).unwrap();
    assert!(!log[log_before..].contains("=== ddpm-cli"), "{log}");
    let ckpt = ddpm_train::run_dir::RunDir::open(&run)
        .unwrap()
        .latest_checkpoint()
        .unwrap()
        .unwrap();
    let step = ddpm_train::run_dir::RunDir::read_state(&ckpt).unwrap().step;
    let out = cli(d)
        .args([
            "train",
            "--no-progress",
            "--steps",
            &(step + 1).to_string(),
            "--resume",
        ])
        .arg(&run)
        .output()
        .unwrap();
    let t = ok(out, "resume after the holder died");
    assert!(t.contains("took over the lock"), "{t}");
}

#[test]
fn sigterm_saves_a_checkpoint_and_exits_143() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let config = crash_config(d, 1_000_000);
    let run = d.join("run");
    let child = train(d, &config, &run)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&run.join("checkpoints/step_0000002"));
    signal(&child, "-TERM");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(143), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("SIGTERM") && t.contains("continue with: ddpm-cli train --resume"),
        "{t}"
    );
    let out = cli(d).arg("check").arg(&run).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

/// `cmd` with its file-size limit set to `bytes` (RLIMIT_FSIZE) and SIGXFSZ ignored, so that a
/// write beyond it fails with EFBIG as on a full disk.
fn with_file_size_limit(cmd: &mut Command, bytes: u64) -> &mut Command {
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: bytes,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        })
    }
}

#[test]
fn a_full_disk_during_a_checkpoint_or_a_sample_file_leaves_the_old_files_intact() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // Wide enough that a tensor file is far above the limit, and the logs far below it.
    let config = tiny_config_with(
        d,
        2,
        &[
            "model.unet.block_out_channels=[32, 64]",
            "model.unet.norm_num_groups=8",
        ],
    );
    let run = d.join("run");
    ok(train(d, &config, &run).output().unwrap(), "train");
    let before = final_digests(&run);
    let limit = 256 * 1024;
    let size = std::fs::metadata(run.join("checkpoints/step_0000002/model.safetensors"))
        .unwrap()
        .len();
    assert!(
        size > 2 * limit,
        "the model file ({size} bytes) must exceed the limit"
    );
    let mut cmd = cli(d);
    cmd.args(["train", "--no-progress", "--steps", "3", "--resume"])
        .arg(&run);
    let out = with_file_size_limit(&mut cmd, limit).output().unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("File too large") && t.contains(".safetensors"),
        "{t}"
    );
    let check = cli(d).arg("check").arg(&run).output().unwrap();
    let c = text(&check);
    assert!(check.status.success(), "{c}");
    assert!(!c.contains("leftover"), "{c}");
    assert_eq!(final_digests(&run), before);
    // A sample file: refused whole, nothing left.
    let mut cmd = cli(d);
    cmd.args([
        "sample", "--num", "64", "--steps", "2", "--out", "s.h5", "--model",
    ])
    .arg(&run);
    let out = with_file_size_limit(&mut cmd, 16 * 1024).output().unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("s.h5"), "{t}");
    let left: Vec<_> = std::fs::read_dir(d)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("s.h5"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
