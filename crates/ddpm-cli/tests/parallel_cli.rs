//! Data-parallel training (issue 12) on the CPU with Gloo: 2 processes on 127.0.0.1, 1 thread
//! each, started as torchrun starts them (its variables) or by `train --nproc-per-node 2`.
//!
//! * A 2-rank run of 20 steps equals the 1-rank run with the same global batch (model, EMA and
//!   Adam moments within 1e-5; the logged losses too), and rank 1 wrote nothing (the run holds
//!   one TensorBoard event stream, rank 0's).
//! * A killed rank makes the other exit non-zero with an error naming the rank and the step;
//!   every checkpoint on disk stays valid.
//! * A 2-rank run resumed with 1 rank or with 2 ranks ends where the uninterrupted run ends.
//! * Ctrl-C to the launcher stops every rank at the same step, with a checkpoint, status 130.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ddpm_nets::checkpoint::read_tensors;
use ddpm_train::run_dir::RunDir;
use ddpm_train::tensorboard::proto::{Event, What};
use ddpm_train::tensorboard::{event_files, read_events};

mod common;
use common::{cli, listing, text, tiny_config_with};

/// The 8-image global batch of these runs, logged every 5 steps, a checkpoint every 10.
fn config(dir: &Path, steps: usize) -> PathBuf {
    tiny_config_with(
        dir,
        steps,
        &[
            "data.batch_size=8",
            "run.log_every=5",
            "run.checkpoint_every=10",
        ],
    )
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Rank `rank` of a `world`-process job on 127.0.0.1:`port`, with torchrun's variables, in `cwd`.
fn rank_command(cwd: &Path, rank: usize, world: usize, port: u16) -> Command {
    let mut c = cli(cwd);
    c.env("WORLD_SIZE", world.to_string())
        .env("RANK", rank.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("LOCAL_WORLD_SIZE", world.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Waits for `child` at most `limit`; kills it and fails the test past that.
fn wait_output(child: Child, limit: Duration, what: &str) -> Output {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            // SAFETY: kill has no memory effects.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("{what} did not end within {limit:?}");
        }
    }
}

fn ok(out: &Output, what: &str) -> String {
    let t = text(out);
    assert!(out.status.success(), "{what} failed ({}):\n{t}", out.status);
    t
}

/// Runs `args` as a 2-rank job, rank 0 in `cwd0` and rank 1 in `cwd1`, with the variables `envs`;
/// returns both outputs.
fn two_ranks(cwd0: &Path, cwd1: &Path, args: &[&str], envs: &[(&str, &str)]) -> (Output, Output) {
    let port = free_port();
    let spawn = |cwd: &Path, rank: usize| {
        rank_command(cwd, rank, 2, port)
            .args(args)
            .envs(envs.iter().copied())
            .spawn()
            .unwrap()
    };
    let (r0, r1) = (spawn(cwd0, 0), spawn(cwd1, 1));
    let limit = Duration::from_secs(300);
    (
        wait_output(r0, limit, "rank 0"),
        wait_output(r1, limit, "rank 1"),
    )
}

/// The newest checkpoint's tensors of `group` (model, ema, optim), by name.
fn group(run: &Path, group: &str) -> Vec<(String, tch::Tensor)> {
    let ckpt = RunDir::open(run)
        .unwrap()
        .latest_checkpoint()
        .unwrap()
        .unwrap();
    let mut t = read_tensors(&ckpt.join(format!("{group}.safetensors"))).unwrap();
    t.sort_by(|a, b| a.0.cmp(&b.0));
    t
}

/// The largest absolute difference between the newest checkpoints of two runs (at the same
/// step), over the model, the EMA and the optimiser state.
///
/// Left out: attention key biases (`to_k.bias`). Their gradient is zero in exact arithmetic (a
/// bias added to every key shifts all of a query's logits alike, which softmax ignores), so what
/// backward computes for them is rounding noise, and Adam, which divides by the gradient's own
/// scale, turns that noise into steps of about the learning rate whichever way it falls. A
/// different summation order moves them by up to `lr` per step; they are checked against that
/// bound instead.
fn max_difference(a: &Path, b: &Path, lr: f64) -> f64 {
    let step = |r: &Path| {
        let c = RunDir::open(r)
            .unwrap()
            .latest_checkpoint()
            .unwrap()
            .unwrap();
        RunDir::read_state(&c).unwrap().step
    };
    let steps = step(a);
    assert_eq!(steps, step(b), "{} and {}", a.display(), b.display());
    let mut worst = 0.0f64;
    for g in ["model", "ema", "optim"] {
        let (x, y) = (group(a, g), group(b, g));
        assert_eq!(x.len(), y.len(), "{g}");
        for ((nx, tx), (ny, ty)) in x.iter().zip(&y) {
            assert_eq!(nx, ny);
            let d = (tx.to_kind(tch::Kind::Double) - ty.to_kind(tch::Kind::Double))
                .abs()
                .max()
                .double_value(&[]);
            assert!(d.is_finite(), "{g}/{nx}: {d}");
            if nx.ends_with("to_k.bias") {
                assert!(d <= steps as f64 * lr, "{g}/{nx}: {d}");
            } else {
                worst = worst.max(d);
            }
        }
    }
    worst
}

/// The configured peak learning rate of a config file.
fn peak_lr(config: &Path) -> f64 {
    ddpm_train::TrainConfig::from_file(config).unwrap().optim.lr
}

/// The `loss` of every training record of a run's metrics.jsonl.
fn losses(run: &Path) -> Vec<f64> {
    RunDir::open(run)
        .unwrap()
        .read_metrics()
        .unwrap()
        .iter()
        .filter_map(|r| r["loss"].as_f64())
        .collect()
}

/// Whether `e` is a summary with a value tagged `tag`.
fn has_tag(e: &Event, tag: &str) -> bool {
    matches!(&e.what, Some(What::Summary(s)) if s.value.iter().any(|v| v.tag == tag))
}

/// `train --nproc-per-node 2 --config CONFIG --out RUN` in `dir`.
fn launcher(dir: &Path, config: &Path, run: &Path) -> Command {
    let mut c = cli(dir);
    c.args([
        "train",
        "--no-progress",
        "--nproc-per-node",
        "2",
        "--config",
    ])
    .arg(config)
    .arg("--out")
    .arg(run);
    c
}

fn one_rank(dir: &Path, config: &Path, run: &Path) -> String {
    let out = cli(dir)
        .args(["train", "--no-progress", "--config"])
        .arg(config)
        .arg("--out")
        .arg(run)
        .output()
        .unwrap();
    ok(&out, "the 1-rank run")
}

#[test]
fn two_ranks_train_like_one_rank_and_only_rank_0_writes() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), 20);
    let one = dir.path().join("one");
    one_rank(dir.path(), &config, &one);
    let (cwd0, cwd1) = (dir.path().join("rank0"), dir.path().join("rank1"));
    std::fs::create_dir_all(&cwd0).unwrap();
    std::fs::create_dir_all(&cwd1).unwrap();
    let cfg = config.to_str().unwrap();
    let args = ["train", "--no-progress", "--config", cfg, "--out", "run"];
    let (r0, r1) = two_ranks(&cwd0, &cwd1, &args, &[]);
    let t0 = ok(&r0, "rank 0");
    ok(&r1, "rank 1");
    assert!(t0.contains("finished"), "{t0}");
    assert!(
        r1.stdout.is_empty(),
        "rank 1 printed: {}",
        String::from_utf8_lossy(&r1.stdout)
    );
    let two = cwd0.join("run");
    let d = max_difference(&one, &two, peak_lr(&config));
    eprintln!("2 ranks vs 1 rank: largest difference {d:e}");
    assert!(d < 1e-5, "2 ranks differ from 1 rank by {d}");
    let (l1, l2) = (losses(&one), losses(&two));
    assert_eq!(l1.len(), 4);
    for (a, b) in l1.iter().zip(&l2) {
        assert!((a - b).abs() < 1e-5, "{l1:?} vs {l2:?}");
    }
    // Rank 1 wrote nothing: its working folder (where its relative --out points) stays empty,
    // and the run holds the files of a 1-rank run, no more.
    assert!(listing(&cwd1).is_empty(), "{:?}", listing(&cwd1));
    assert_eq!(listing(&one), listing(&two));
    // One event stream, rank 0's: one file, each logged step once.
    let events = event_files(&two.join("tensorboard")).unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    let logged: Vec<i64> = read_events(&events[0])
        .unwrap()
        .iter()
        .filter(|e| has_tag(e, "loss"))
        .map(|e| e.step)
        .collect();
    assert_eq!(logged, [5, 10, 15, 20]);
    let log = std::fs::read_to_string(two.join("train.log")).unwrap();
    assert!(log.contains("world_size=2"), "{log}");
    assert!(!log.contains("rank=1"), "{log}");
    let records = RunDir::open(&two).unwrap().read_metrics().unwrap();
    assert!(records.iter().all(|r| r["world_size"] == 2), "{records:?}");
    // The same with the gradients all-reduced in 1 KiB buckets (this tiny UNet's buffer is one
    // bucket at the default 25 MB): the buckets in flight together sum to the same result.
    let (b0, b1) = (dir.path().join("buckets0"), dir.path().join("buckets1"));
    std::fs::create_dir_all(&b0).unwrap();
    std::fs::create_dir_all(&b1).unwrap();
    let (r0, r1) = two_ranks(&b0, &b1, &args, &[("DDPM_DIST_BUCKET_KB", "1")]);
    ok(&r0, "rank 0 with 1 KiB buckets");
    ok(&r1, "rank 1 with 1 KiB buckets");
    let d = max_difference(&one, &b0.join("run"), peak_lr(&config));
    eprintln!("2 ranks with 1 KiB buckets vs 1 rank: largest difference {d:e}");
    assert!(d < 1e-5, "{d}");
}

#[test]
fn the_importance_sampler_of_l_vlb_learns_from_every_rank() {
    // 4 timesteps: the sampler's history (10 losses per t) fills within 5 steps of 8 images, and
    // from then on the t it draws depend on the losses of the whole global batch. A sampler fed
    // by one rank's half of them would draw other t, and the runs would part.
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config_with(
        dir.path(),
        16,
        &[
            "data.batch_size=8",
            "run.log_every=4",
            "run.checkpoint_every=16",
            "diffusion.timesteps=4",
            "diffusion.schedule=\"cosine\"",
            "run.sample_steps=\"ddim2\"",
            "run.eval_sampler=\"ddim2\"",
            "model.unet.out_channels=2",
            "diffusion.var_type=\"learned_range\"",
            "diffusion.loss_type=\"vlb\"",
            "diffusion.importance_sampling=true",
        ],
    );
    let one = dir.path().join("one");
    one_rank(dir.path(), &config, &one);
    let two = dir.path().join("two");
    ok(
        &launcher(dir.path(), &config, &two).output().unwrap(),
        "2 ranks",
    );
    let d = max_difference(&one, &two, peak_lr(&config));
    eprintln!("L_vlb with importance sampling, 2 ranks vs 1: largest difference {d:e}");
    assert!(d < 1e-5, "{d}");
    let history = |run: &Path| {
        let c = RunDir::open(run)
            .unwrap()
            .latest_checkpoint()
            .unwrap()
            .unwrap();
        RunDir::read_state(&c).unwrap().sampler_history.unwrap()
    };
    let (h1, h2) = (history(&one), history(&two));
    assert!(h1.iter().all(|h| h.len() == 10), "{h1:?}");
    for (a, b) in h1.iter().flatten().zip(h2.iter().flatten()) {
        assert!((a - b).abs() <= 1e-4 * a.abs().max(1.0), "{h1:?} vs {h2:?}");
    }
}

/// Starts a long 2-rank run (a checkpoint every 2 steps), waits for its first checkpoint, kills
/// rank `victim` with SIGKILL and returns the survivor's output and the run.
fn kill_one_rank(dir: &Path, victim: usize) -> (Output, PathBuf) {
    let config = tiny_config_with(
        dir,
        100_000,
        &[
            "data.batch_size=8",
            "run.log_every=2",
            "run.checkpoint_every=2",
        ],
    );
    let port = free_port();
    let args = [
        "train",
        "--no-progress",
        "--config",
        config.to_str().unwrap(),
        "--out",
        "run",
    ];
    let mut children: Vec<Child> = (0..2)
        .map(|r| rank_command(dir, r, 2, port).args(args).spawn().unwrap())
        .collect();
    let run = dir.join("run");
    let start = Instant::now();
    while !run.join("checkpoints/step_0000004").exists() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no checkpoint appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut victim_child = children.remove(victim);
    victim_child.kill().unwrap();
    victim_child.wait().unwrap();
    let survivor = children.pop().unwrap();
    (
        wait_output(survivor, Duration::from_secs(60), "the surviving rank"),
        run,
    )
}

#[test]
fn a_killed_rank_stops_the_other_with_a_named_error() {
    for victim in [1, 0] {
        let dir = tempfile::tempdir().unwrap();
        let (out, run) = kill_one_rank(dir.path(), victim);
        let t = text(&out);
        let survivor = 1 - victim;
        assert!(!out.status.success(), "rank {survivor} succeeded:\n{t}");
        assert_eq!(out.status.code(), Some(1), "{t}");
        assert!(t.contains(&format!("rank {survivor} of 2")), "{t}");
        assert!(t.contains("training step"), "{t}");
        // Every checkpoint on disk is complete and verifies (`check` also reads the newest as
        // --resume would). A SIGKILL of rank 0 may have cut a write short: what it left is a
        // temporary file that `check` and `--resume` never take for a checkpoint.
        let ckpts = RunDir::open(&run).unwrap().checkpoints().unwrap();
        assert!(!ckpts.is_empty());
        for (_, c) in &ckpts {
            ddpm_train::manifest::verify(c).unwrap_or_else(|e| panic!("{}: {e}", c.display()));
        }
        let check = cli(dir.path()).arg("check").arg(&run).output().unwrap();
        ok(&check, "check");
        if victim == 1 {
            // Rank 0 stopped by itself: it left nothing half-written.
            let tmp: Vec<_> = listing(&run)
                .into_iter()
                .filter(|p| p.to_string_lossy().contains("tmp"))
                .collect();
            assert!(tmp.is_empty(), "leftovers: {tmp:?}");
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

#[test]
fn a_two_rank_run_resumes_with_one_or_two_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), 20);
    let full = dir.path().join("full");
    one_rank(dir.path(), &config, &full);
    // 2 ranks for 10 of the 20 steps.
    let half = dir.path().join("half");
    let out = cli(dir.path())
        .args([
            "train",
            "--no-progress",
            "--nproc-per-node",
            "2",
            "--steps",
            "10",
            "--config",
        ])
        .arg(&config)
        .arg("--out")
        .arg(&half)
        .output()
        .unwrap();
    ok(&out, "the first half on 2 ranks");
    for (name, nproc) in [("resumed-1", None), ("resumed-2", Some("2"))] {
        let run = dir.path().join(name);
        copy_dir(&half, &run);
        let mut c = cli(dir.path());
        c.args(["train", "--no-progress", "--steps", "20", "--resume"])
            .arg(&run);
        if let Some(n) = nproc {
            c.args(["--nproc-per-node", n]);
        }
        let t = ok(&c.output().unwrap(), name);
        assert!(t.contains("finished"), "{t}");
        let d = max_difference(&full, &run, peak_lr(&config));
        eprintln!("{name} vs uninterrupted: largest difference {d:e}");
        assert!(d < 1e-5, "{name} differs from the uninterrupted run by {d}");
    }
}

/// Starts `train --nproc-per-node 2` of a long run logging every 3 steps, waits for its first log
/// record, sends `signal` to the launcher (`to_rank: None`) or to one rank, and returns the
/// launcher's output; checks that every rank stopped at the end of a log window, where rank 0
/// saved a checkpoint that verifies.
fn stop_a_launched_run(signal: i32, to_rank: Option<usize>) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config_with(
        dir.path(),
        100_000,
        &[
            "data.batch_size=8",
            "run.log_every=3",
            "run.checkpoint_every=1000",
        ],
    );
    let run = dir.path().join("run");
    let launcher = launcher(dir.path(), &config, &run)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let metrics = run.join("metrics.jsonl");
    let start = Instant::now();
    while std::fs::read_to_string(&metrics).map_or(true, |m| m.is_empty()) {
        assert!(start.elapsed() < Duration::from_secs(120), "no log record");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = match to_rank {
        None => launcher.id() as i32,
        Some(r) => rank_pid(&run, r),
    };
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(pid, signal) };
    let out = wait_output(launcher, Duration::from_secs(120), "the launcher");
    let t = text(&out);
    assert!(t.contains("continue with: ddpm-cli train --resume"), "{t}");
    let ckpt = RunDir::open(&run)
        .unwrap()
        .latest_checkpoint()
        .unwrap()
        .unwrap();
    let step = RunDir::read_state(&ckpt).unwrap().step;
    assert!(step > 0 && step % 3 == 0, "stopped at step {step}");
    ddpm_train::manifest::verify(&ckpt).unwrap();
    out
}

#[test]
fn sigterm_to_one_rank_stops_every_rank_with_a_checkpoint() {
    let out = stop_a_launched_run(libc::SIGTERM, Some(1));
    assert_eq!(out.status.code(), Some(143), "{}", text(&out));
}

#[test]
fn ctrl_c_to_the_launcher_stops_every_rank_with_a_checkpoint() {
    let out = stop_a_launched_run(libc::SIGINT, None);
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
}

#[test]
fn a_non_finite_loss_stops_every_rank_naming_the_rank_and_step() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config_with(
        dir.path(),
        40,
        &[
            "data.batch_size=8",
            "run.log_every=5",
            "run.checkpoint_every=5",
            "optim.lr=1e30",
            "optim.warmup_steps=0",
            "optim.grad_clip=0.0",
        ],
    );
    let (cwd0, cwd1) = (dir.path().join("rank0"), dir.path().join("rank1"));
    std::fs::create_dir_all(&cwd0).unwrap();
    std::fs::create_dir_all(&cwd1).unwrap();
    let cfg = config.to_str().unwrap();
    let (r0, r1) = two_ranks(
        &cwd0,
        &cwd1,
        &["train", "--no-progress", "--config", cfg, "--out", "run"],
        &[],
    );
    let (t0, t1) = (text(&r0), text(&r1));
    for (t, out) in [(&t0, &r0), (&t1, &r1)] {
        assert_eq!(out.status.code(), Some(1), "{t}");
        assert!(t.contains("non-finite"), "{t}");
    }
    // Both ranks name the same rank and step.
    let what = |t: &str| {
        let line = t.lines().find(|l| l.contains("non-finite")).unwrap();
        let at = line.find("at step").unwrap();
        line[at..].split(';').next().unwrap().to_string()
    };
    assert_eq!(what(&t0), what(&t1));
    assert!(what(&t0).contains(" on rank "), "{t0}");
}

/// The process of rank `rank` of the job training `run` (found by its command line and its
/// environment in /proc).
fn rank_pid(run: &Path, rank: usize) -> i32 {
    let wanted = format!("RANK={rank}");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .find(|pid| {
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let has = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
            has(&cmdline, run.to_str().unwrap().as_bytes())
                && has(&cmdline, b"ddpm-cli")
                && environ.split(|&b| b == 0).any(|v| v == wanted.as_bytes())
        })
        .unwrap_or_else(|| panic!("no process of rank {rank}"))
}

/// torchrun of the project's virtual environment (`cargo xtask` sets `VIRTUAL_ENV` and puts its
/// `bin` first on PATH).
fn torchrun() -> PathBuf {
    let venv = std::env::var_os("VIRTUAL_ENV").map(|v| PathBuf::from(v).join("bin/torchrun"));
    venv.filter(|p| p.is_file())
        .or_else(|| {
            std::env::split_paths(&std::env::var_os("PATH")?)
                .map(|p| p.join("torchrun"))
                .find(|p| p.is_file())
        })
        .expect("torchrun not found (VIRTUAL_ENV/bin, PATH): run the tests through `cargo xtask`, whose environment has the project's .venv with torch")
}

#[test]
fn torchrun_standalone_and_its_c10d_rendezvous_start_the_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), 10);
    let one = dir.path().join("one");
    one_rank(dir.path(), &config, &one);
    let cli_bin = env!("CARGO_BIN_EXE_ddpm-cli");
    let train = |run: &str| -> Vec<String> {
        ["--no-python", cli_bin, "train", "--no-progress", "--config"]
            .iter()
            .map(|s| s.to_string())
            .chain([config.display().to_string(), "--out".into(), run.into()])
            .collect()
    };
    // One agent, two ranks.
    let standalone = Command::new(torchrun())
        .current_dir(dir.path())
        .args(["--standalone", "--nproc-per-node", "2"])
        .args(train("standalone"))
        .output()
        .unwrap();
    ok(&standalone, "torchrun --standalone");
    // Two agents ("machines") of one rank each, meeting at a c10d rendezvous endpoint.
    let endpoint = format!("127.0.0.1:{}", free_port());
    let nodes: Vec<Child> = (0..2)
        .map(|n| {
            let cwd = dir.path().join(format!("node{n}"));
            std::fs::create_dir_all(&cwd).unwrap();
            Command::new(torchrun())
                .current_dir(&cwd)
                .args([
                    "--nnodes",
                    "2",
                    "--nproc-per-node",
                    "1",
                    "--rdzv-backend",
                    "c10d",
                ])
                .args(["--rdzv-id", "parallel_cli", "--rdzv-endpoint", &endpoint])
                .args(train("run"))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut wrote = Vec::new();
    for (n, node) in nodes.into_iter().enumerate() {
        let out = wait_output(node, Duration::from_secs(300), "a torchrun agent");
        ok(&out, &format!("torchrun agent {n}"));
        let run = dir.path().join(format!("node{n}/run"));
        if run.exists() {
            wrote.push(run);
        }
    }
    // The agents number their ranks in the order they join: exactly one machine holds the run.
    assert_eq!(wrote.len(), 1, "{wrote:?}");
    for run in [dir.path().join("standalone"), wrote.remove(0)] {
        let d = max_difference(&one, &run, peak_lr(&config));
        assert!(d < 1e-5, "{} differs from 1 rank by {d}", run.display());
    }
}

#[test]
fn the_baselines_and_the_classifier_train_on_two_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::mnist();
    for model in ["gan", "vae"] {
        let run = dir.path().join(model);
        let out = cli(dir.path())
            .args([
                "train",
                "--no-progress",
                "--nproc-per-node",
                "2",
                "--preset",
                "mnist-cpu",
            ])
            .args(["--model", model, "--steps", "4", "--data"])
            .arg(&data)
            .args([
                "--set",
                "data.batch_size=16",
                "--set",
                "run.log_every=2",
                "--out",
            ])
            .arg(&run)
            .output()
            .unwrap();
        let t = ok(&out, model);
        assert!(t.contains("finished"), "{t}");
        let records = RunDir::open(&run).unwrap().read_metrics().unwrap();
        assert_eq!(records.len(), 2, "{records:?}");
        assert!(records.iter().all(|r| r["world_size"] == 2), "{records:?}");
    }
    let clf = dir.path().join("classifier");
    let out = cli(dir.path())
        .args(["train-classifier", "--no-progress", "--nproc-per-node", "2"])
        .args([
            "--dataset",
            "mnist",
            "--steps",
            "6",
            "--batch-size",
            "32",
            "--data",
        ])
        .arg(&data)
        .arg("--out")
        .arg(&clf)
        .output()
        .unwrap();
    let t = ok(&out, "train-classifier");
    assert!(t.contains("test accuracy"), "{t}");
    assert!(clf.join("model.safetensors").is_file());
}

#[test]
fn an_evaluation_split_among_ranks_scores_as_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let classifier = dir.path().join("classifier");
    let out = cli(dir.path())
        .args([
            "train-classifier",
            "--no-progress",
            "--dataset",
            "mnist",
            "--steps",
            "30",
        ])
        .arg("--data")
        .arg(common::mnist())
        .arg("--out")
        .arg(&classifier)
        .output()
        .unwrap();
    ok(&out, "train-classifier");
    // lr = 1e-300 (0 in f32) keeps the weights at their (seeded) start on any number of ranks, so the two
    // evaluations score the same network: 300 images are 3 sampling batches, 2 of them on rank 0.
    let network = format!("run.eval_network=\"{}\"", classifier.display());
    let config = tiny_config_with(
        dir.path(),
        2,
        &[
            "optim.lr=1e-300",
            "optim.warmup_steps=0",
            "run.eval_every=2",
            "run.eval_samples=300",
            "run.eval_sampler=\"ddim3\"",
            "run.eval_reference_images=200",
            &network,
        ],
    );
    let score = |run: &Path| {
        let records = RunDir::open(run).unwrap().read_metrics().unwrap();
        let s: Vec<f64> = records
            .iter()
            .filter_map(|r| r["fid_cls"].as_f64())
            .collect();
        assert_eq!(s.len(), 1, "{records:?}");
        s[0]
    };
    let one = dir.path().join("one");
    one_rank(dir.path(), &config, &one);
    let two = dir.path().join("two");
    let out = launcher(dir.path(), &config, &two).output().unwrap();
    ok(&out, "the 2-rank run");
    assert!(score(&one).is_finite());
    assert_eq!(score(&one), score(&two));
}

#[test]
fn ranks_started_with_other_settings_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), 4);
    let fashion = common::mnist().with_file_name("fashion-mnist.h5");
    let other_data = format!("data.path=\"{}\"", fashion.display());
    let cases = [
        (
            vec!["--set", "optim.lr=0.1"],
            "rank 1 failed: its config differs from rank 0's at `optim.lr`: 0.1 on rank 1",
        ),
        // data.path may differ between machines; the images may not.
        (
            vec!["--set", other_data.as_str()],
            "rank 1 failed: its training images differ from rank 0's",
        ),
    ];
    for (i, (extra, expected)) in cases.iter().enumerate() {
        let (cwd0, cwd1) = (
            dir.path().join(format!("r0-{i}")),
            dir.path().join(format!("r1-{i}")),
        );
        std::fs::create_dir_all(&cwd0).unwrap();
        std::fs::create_dir_all(&cwd1).unwrap();
        let port = free_port();
        let cfg = config.to_str().unwrap();
        let args = ["train", "--no-progress", "--config", cfg, "--out", "run"];
        let r0 = rank_command(&cwd0, 0, 2, port).args(args).spawn().unwrap();
        let r1 = rank_command(&cwd1, 1, 2, port)
            .args(args)
            .args(extra)
            .spawn()
            .unwrap();
        let limit = Duration::from_secs(120);
        for out in [
            wait_output(r0, limit, "rank 0"),
            wait_output(r1, limit, "rank 1"),
        ] {
            let t = text(&out);
            assert_eq!(out.status.code(), Some(1), "{t}");
            assert!(t.contains(expected), "{t}");
        }
        assert!(listing(&cwd0).is_empty(), "{:?}", listing(&cwd0));
    }
}

#[test]
fn a_rank_that_fails_first_stops_the_launcher_at_once_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), 4);
    let file = dir.path().join("a-file");
    std::fs::write(&file, "not a folder").unwrap();
    let start = Instant::now();
    let out = wait_output(
        launcher(dir.path(), &config, &file)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
        Duration::from_secs(120),
        "the launcher",
    );
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("is a file, not a folder"), "{t}");
    assert!(t.contains("rank 0 (exit status 1)"), "{t}");
    // Rank 1, waiting for rank 0's store, was ended at once rather than after its timeout.
    assert!(
        start.elapsed() < Duration::from_secs(60),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn torchrun_restarts_continue_the_run_the_first_attempt_created() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config_with(
        dir.path(),
        60,
        &[
            "data.batch_size=8",
            "run.log_every=2",
            "run.checkpoint_every=4",
        ],
    );
    let cli_bin = env!("CARGO_BIN_EXE_ddpm-cli");
    let run = dir.path().join("run");
    let agent = Command::new(torchrun())
        .current_dir(dir.path())
        .args([
            "--standalone",
            "--nproc-per-node",
            "2",
            "--max-restarts",
            "1",
        ])
        .args(["--no-python", cli_bin, "train", "--no-progress", "--config"])
        .arg(&config)
        .arg("--out")
        .arg(&run)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !run.join("checkpoints/step_0000008").exists() {
        assert!(start.elapsed() < Duration::from_secs(120), "no checkpoint");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SIGKILL rank 1: torchrun restarts both ranks once.
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(rank_pid(&run, 1), libc::SIGKILL) };
    let out = wait_output(agent, Duration::from_secs(300), "torchrun");
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("torchrun restarted the job: continuing the run"),
        "{t}"
    );
    assert!(t.contains("finished"), "{t}");
    let steps: Vec<u64> = RunDir::open(&run)
        .unwrap()
        .read_metrics()
        .unwrap()
        .iter()
        .filter_map(|r| r["step"].as_u64())
        .collect();
    assert_eq!(steps, (1..=30).map(|i| 2 * i).collect::<Vec<_>>(), "{t}");
}
