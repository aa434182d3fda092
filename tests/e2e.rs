//! End to end through the `ddpm-cli` binary on real MNIST: train a tiny DDPM for a few steps,
//! checkpoint, sample with DDIM and with respaced ancestral sampling, check every file; stop a
//! run with SIGINT and resume it.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use ddpm_train::TrainConfig;

fn cli() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ddpm-cli"))
}

fn ok(out: Output, what: &str) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{text}",
        out.status
    );
    text
}

fn mnist() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../datasets/mnist.h5");
    assert!(
        p.exists(),
        "{} is missing: run `cargo xtask fetch-data` first",
        p.display()
    );
    p
}

/// A DDPM small enough for a CPU test, as a TOML file.
fn tiny_config(dir: &Path, steps: usize) -> PathBuf {
    tiny_config_with(dir, steps, &[])
}

fn tiny_config_with(dir: &Path, steps: usize, extra: &[&str]) -> PathBuf {
    let mut overrides: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    let cfg = TrainConfig::preset("mnist-cpu")
        .unwrap()
        .with_overrides(&[
            "model.unet.block_out_channels=[8, 16]".into(),
            "model.unet.down_block_types=[\"DownBlock2D\", \"AttnDownBlock2D\"]".into(),
            "model.unet.up_block_types=[\"AttnUpBlock2D\", \"UpBlock2D\"]".into(),
            "model.unet.norm_num_groups=4".into(),
            "model.unet.layers_per_block=1".into(),
            "diffusion.timesteps=100".into(),
            format!("data.path=\"{}\"", mnist().display()),
            "data.batch_size=8".into(),
            format!("run.steps={steps}"),
            "run.log_every=2".into(),
            "run.checkpoint_every=2".into(),
            "run.sample_every=0".into(),
            "run.sample_num=4".into(),
            "run.sample_steps=\"ddim5\"".into(),
        ])
        .and_then(|c| c.with_overrides(&std::mem::take(&mut overrides)))
        .unwrap();
    let path = dir.join("tiny.toml");
    std::fs::write(&path, cfg.to_toml()).unwrap();
    path
}

/// `train --no-progress --config CONFIG --out RUN`, which must succeed; returns its output text.
fn train_config(config: &Path, run: &Path, what: &str) -> String {
    ok(
        cli()
            .args(["train", "--no-progress", "--config"])
            .arg(config)
            .arg("--out")
            .arg(run)
            .output()
            .unwrap(),
        what,
    )
}

fn read_images(path: &Path) -> (Vec<usize>, Vec<u8>) {
    let f = hdf5::File::open(path).unwrap();
    let ds = f.dataset("images").unwrap();
    assert!(ds.dtype().unwrap().is::<u8>(), "images must be uint8");
    (ds.shape(), ds.read_raw::<u8>().unwrap())
}

#[test]
fn train_checkpoint_sample_and_inspect() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let config = tiny_config(dir.path(), 6);
    let text = train_config(&config, &run, "train");
    assert!(
        text.contains("finished") && text.contains("at step 6"),
        "{text}"
    );
    for f in [
        "config.toml",
        "metrics.jsonl",
        "train.log",
        "loss.png",
        "samples/step_6.png",
    ] {
        assert!(run.join(f).is_file(), "{f} missing");
    }
    let ckpt = run.join("checkpoints/step_0000006");
    for f in [
        "model.safetensors",
        "ema.safetensors",
        "optim.safetensors",
        "state.json",
        "config.toml",
    ] {
        assert!(ckpt.join(f).is_file(), "checkpoint file {f} missing");
    }
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
    for key in ["loss", "loss_q", "grad_norm", "lr", "img_per_s"] {
        assert!(!last[key].is_null(), "metrics.jsonl lacks {key}: {last}");
    }
    assert_eq!(last["loss_q"].as_array().unwrap().len(), 4);
    assert!(std::fs::read_to_string(run.join("train.log"))
        .unwrap()
        .contains("checkpoint"));

    // DDIM with a grid and a trajectory strip.
    let out = dir.path().join("ddim.h5");
    let (grid, strip) = (dir.path().join("grid.png"), dir.path().join("strip.png"));
    let text = ok(
        cli()
            .args([
                "sample",
                "--device",
                "cpu",
                "--num",
                "5",
                "--batch-size",
                "3",
                "--sampler",
                "ddim",
                "--steps",
                "10",
            ])
            .arg("--model")
            .arg(&run)
            .arg("--out")
            .arg(&out)
            .arg("--grid")
            .arg(&grid)
            .arg("--trajectory")
            .arg(&strip)
            .output()
            .unwrap(),
        "sample ddim",
    );
    assert!(text.contains("ddim10"), "{text}");
    let (shape, pixels) = read_images(&out);
    assert_eq!(shape, vec![5, 28, 28, 1]);
    assert!(
        pixels.iter().any(|&p| p != pixels[0]),
        "samples are constant"
    );
    for png in [&grid, &strip] {
        let img = image::open(png).unwrap();
        // 28×28 samples are enlarged to cells of at least MIN_CELL pixels.
        let min = ddpm_train::viz::MIN_CELL as u32;
        assert!(img.width() > min && img.height() > min, "{}", png.display());
    }
    // Respaced ancestral sampling with the same seed is reproducible.
    let sample = |name: &str, extra: &[&str]| {
        let out = dir.path().join(name);
        ok(
            cli()
                .args([
                    "sample",
                    "--device",
                    "cpu",
                    "--num",
                    "2",
                    "--sampler",
                    "ddpm",
                    "--steps",
                    "20",
                    "--seed",
                    "3",
                ])
                .args(extra)
                .arg("--model")
                .arg(&run)
                .arg("--out")
                .arg(&out)
                .output()
                .unwrap(),
            "sample ddpm",
        );
        read_images(&out)
    };
    let f32_images = sample("a.h5", &[]);
    assert_eq!(f32_images, sample("b.h5", &[]));
    // bf16 autocast of the network on the CPU: other arithmetic, the same chains to within a few grey levels.
    let bf16_images = sample("c.h5", &["--dtype", "bf16"]);
    assert_eq!(bf16_images.0, f32_images.0);
    let diffs: Vec<f64> = (f32_images.1.iter().zip(&bf16_images.1))
        .map(|(&a, &b)| (a as f64 - b as f64).abs())
        .collect();
    let mean_diff = diffs.iter().sum::<f64>() / diffs.len() as f64;
    assert!(
        diffs.iter().any(|&d| d > 0.0),
        "--dtype bf16 changed nothing"
    );
    assert!(
        mean_diff < 8.0,
        "bf16 samples differ from f32 by {mean_diff} grey levels on average"
    );

    // The forward process picture.
    let fwd = dir.path().join("forward.png");
    ok(
        cli()
            .args(["visualize", "forward", "--num", "3", "--data"])
            .arg(mnist())
            .arg("--out")
            .arg(&fwd)
            .output()
            .unwrap(),
        "visualize forward",
    );
    assert!(image::open(&fwd).unwrap().width() > 9 * 28);
}

#[test]
fn sigint_saves_a_checkpoint_and_resume_finishes_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let config = tiny_config(dir.path(), 100_000);
    // As a user starts it: no wait policy in the environment, so ddpm-cli restarts itself with
    // one (same PID; see ddpm_nets::cpu_threads), and the signal below reaches the restarted process.
    let child = cli()
        .env_remove("OMP_WAIT_POLICY")
        .env_remove("GOMP_SPINCOUNT")
        .args(["train", "--no-progress", "--config"])
        .arg(&config)
        .arg("--out")
        .arg(&run)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the first checkpoint, then interrupt.
    let start = Instant::now();
    while !run.join("checkpoints/step_0000002").exists() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no checkpoint after 120 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let environ = std::fs::read(format!("/proc/{}/environ", child.id())).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(
        environ.split('\0').any(|v| v == "OMP_WAIT_POLICY=PASSIVE")
            && environ
                .split('\0')
                .any(|v| v == "DDPM_CPU_POLICY_RESTARTED=1"),
        "the training process was not restarted with the CPU policy: {environ:?}"
    );
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    // Status 130 (interrupted), so that `train && sample` stops there.
    assert_eq!(out.status.code(), Some(130), "{out:?}");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("stopped") && text.contains("--resume"),
        "{text}"
    );
    let step: usize = text
        .split("at step ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(run
        .join(format!("checkpoints/step_{step:07}/state.json"))
        .is_file());
    // Resume with a nearer end.
    let text = ok(
        cli()
            .args(["train", "--no-progress", "--steps"])
            .arg((step + 2).to_string())
            .arg("--resume")
            .arg(&run)
            .output()
            .unwrap(),
        "resume",
    );
    assert!(text.contains(&format!("at step {}", step + 2)), "{text}");
}

#[test]
fn bad_invocations_fail_with_clear_messages() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[optim]\nlearning_rate = 0.1\n").unwrap();
    let out = cli()
        .args(["train", "--config"])
        .arg(&bad)
        .arg("--out")
        .arg(dir.path().join("r"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("learning_rate"));
    let out = cli()
        .args(["sample", "--num", "1", "--out", "x.h5", "--model"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("neither a run directory"));
}

#[test]
fn class_conditional_training_and_guided_sampling() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("cond");
    let config = tiny_config_with(
        dir.path(),
        4,
        &["data.conditional=true", "model.unet.num_class_embeds=11"],
    );
    train_config(&config, &run, "conditional train");
    let out = dir.path().join("sevens.h5");
    let text = ok(
        cli()
            .args([
                "sample",
                "--device",
                "cpu",
                "--num",
                "3",
                "--steps",
                "5",
                "--class",
                "7",
                "--guidance",
                "3",
            ])
            .arg("--model")
            .arg(&run)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap(),
        "guided sample",
    );
    assert!(text.contains("3 images"), "{text}");
    assert_eq!(read_images(&out).0, vec![3, 28, 28, 1]);
    let f = hdf5::File::open(&out).unwrap();
    let class = f
        .attr("class")
        .unwrap()
        .read_scalar::<hdf5::types::VarLenUnicode>()
        .unwrap();
    assert_eq!(class.as_str(), "7");
    // A conditional model needs a class, and the class must exist.
    for args in [vec![], vec!["--class", "10"]] {
        let o = cli()
            .args(["sample", "--device", "cpu", "--num", "1", "--steps", "2"])
            .args(&args)
            .arg("--model")
            .arg(&run)
            .arg("--out")
            .arg(dir.path().join("x.h5"))
            .output()
            .unwrap();
        assert!(!o.status.success(), "{args:?} should fail");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("class"),
            "{args:?}"
        );
    }
}

#[test]
fn zero_terminal_snr_schedules_train_and_sample_visible_images() {
    // The bug report's inputs: `jsd` (β_{T−1} = 1) and `linear` at T = 20 (β_end = 1) with
    // ε-prediction sampled to all-black images (NaN written as 0) with exit status 0.
    for (schedule, t) in [("jsd", "100"), ("linear", "20")] {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let config = tiny_config_with(
            dir.path(),
            2,
            &[
                &format!("diffusion.schedule=\"{schedule}\""),
                &format!("diffusion.timesteps={t}"),
                "run.sample_steps=\"ddim2\"",
            ],
        );
        train_config(&config, &run, "train");
        for (sampler, steps) in [("ddim", "10"), ("ddpm", t)] {
            let out = dir.path().join(format!("{sampler}.h5"));
            ok(
                cli()
                    .args([
                        "sample",
                        "--device",
                        "cpu",
                        "--num",
                        "4",
                        "--sampler",
                        sampler,
                    ])
                    .args(["--steps", steps, "--model"])
                    .arg(&run)
                    .arg("--out")
                    .arg(&out)
                    .output()
                    .unwrap(),
                &format!("{schedule}: sample {sampler}"),
            );
            let (_, px) = read_images(&out);
            let (lo, hi) = (px.iter().min().unwrap(), px.iter().max().unwrap());
            assert!(hi > lo, "{schedule} {sampler}: one grey level only ({lo})");
        }
        // Training an ε-model there without clipping is refused before anything is created.
        let refused = dir.path().join("refused");
        let res = cli()
            .args(["train", "--no-progress", "--config"])
            .arg(&config)
            .args(["--set", "diffusion.clip_sample=false", "--out"])
            .arg(&refused)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&res.stderr);
        assert!(
            !res.status.success() && err.contains("diffusion.clip_sample"),
            "{err}"
        );
        assert!(
            !refused.exists(),
            "a refused run left {}",
            refused.display()
        );
        // Without clipping an ε-model has no finite first step there: refused, nothing written.
        let out = dir.path().join("noclip.h5");
        let res = cli()
            .args([
                "sample",
                "--device",
                "cpu",
                "--num",
                "1",
                "--sampler",
                "ddpm",
            ])
            .args(["--steps", t, "--no-clip-sample", "--model"])
            .arg(&run)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&res.stderr);
        assert!(!res.status.success() && err.contains("clip"), "{err}");
        assert!(!out.exists());
    }
}

/// Trains the tiny DDPM for `steps` steps into `dir/run` and returns the run directory.
fn tiny_run(dir: &Path, steps: usize, extra: &[&str]) -> PathBuf {
    let run = dir.join("run");
    let config = tiny_config_with(dir, steps, extra);
    train_config(&config, &run, "train");
    run
}

/// `sample --model run --out out` with `args`.
fn sample_to(run: &Path, out: &Path, args: &[&str]) -> Output {
    cli()
        .args(["sample", "--model"])
        .arg(run)
        .arg("--out")
        .arg(out)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn noise_files_replay_chains_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let run = tiny_run(dir.path(), 2, &[]);
    let d = dir.path();
    let noise = d.join("noise.safetensors");
    let ancestral = ["--sampler", "ddpm", "--steps", "10", "--device", "cpu"];
    let first = d.join("a.h5");
    let mut args = ancestral.to_vec();
    args.extend([
        "--num",
        "5",
        "--batch-size",
        "2",
        "--seed",
        "1",
        "--save-noise",
    ]);
    args.push(noise.to_str().unwrap());
    let text = ok(sample_to(&run, &first, &args), "sample --save-noise");
    assert!(text.contains("9 noise steps"), "{text}");
    // Another seed and batch size, the noise from the file: the same images.
    let replay = d.join("b.h5");
    let mut args = ancestral.to_vec();
    args.extend([
        "--batch-size",
        "3",
        "--seed",
        "7",
        "--noise",
        noise.to_str().unwrap(),
    ]);
    ok(sample_to(&run, &replay, &args), "sample --noise");
    assert_eq!(read_images(&first), read_images(&replay));
    // The seed alone gives other images (so the file is what made them equal).
    let other = d.join("c.h5");
    let mut args = ancestral.to_vec();
    args.extend(["--num", "5", "--seed", "7"]);
    ok(sample_to(&run, &other, &args), "sample --seed 7");
    assert_ne!(read_images(&first).1, read_images(&other).1);

    // x_T alone as .npy for a deterministic sampler, saved and replayed.
    let npy = d.join("x_T.npy");
    let dpm = [
        "--sampler",
        "dpm++",
        "--steps",
        "8",
        "--device",
        "cpu",
        "--num",
        "3",
    ];
    let mut args = dpm.to_vec();
    args.extend(["--save-noise", npy.to_str().unwrap()]);
    ok(
        sample_to(&run, &d.join("d.h5"), &args),
        "dpm++ --save-noise .npy",
    );
    ok(
        sample_to(
            &run,
            &d.join("e.h5"),
            &[
                "--sampler",
                "dpm++",
                "--steps",
                "8",
                "--device",
                "cpu",
                "--seed",
                "3",
                "--noise",
                npy.to_str().unwrap(),
            ],
        ),
        "dpm++ --noise .npy",
    );
    assert_eq!(read_images(&d.join("d.h5")), read_images(&d.join("e.h5")));

    // Bad uses fail before sampling, naming the file, and write nothing.
    let bad = d.join("bad.h5");
    let z_npy = d.join("z.npy");
    let cases: [(Vec<&str>, &str); 3] = [
        (
            vec![
                "--sampler",
                "ddpm",
                "--steps",
                "20",
                "--noise",
                noise.to_str().unwrap(),
            ],
            "noise.safetensors",
        ),
        (
            vec!["--num", "4", "--noise", noise.to_str().unwrap()],
            "--num 4",
        ),
        (
            vec![
                "--sampler",
                "ddpm",
                "--steps",
                "10",
                "--save-noise",
                z_npy.to_str().unwrap(),
            ],
            "z.npy",
        ),
    ];
    for (args, needle) in cases {
        let out = sample_to(&run, &bad, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(needle),
            "{args:?}: {err}"
        );
        assert!(
            !bad.exists() && !d.join("z.npy").exists(),
            "{args:?} wrote a file"
        );
    }
}

#[test]
fn export_round_trips_bit_for_bit_and_loads_in_diffusers() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = tiny_run(d, 2, &[]);
    let exported = d.join("pipeline");
    let export = |out: &Path| {
        cli()
            .args(["export", "--model"])
            .arg(&run)
            .arg("--out")
            .arg(out)
            .output()
            .unwrap()
    };
    let text = ok(export(&exported), "export");
    assert!(text.contains("step 2"), "{text}");
    for f in ddpm_train::model_io::PIPELINE_FILES {
        assert!(exported.join(f).is_file(), "{f} missing");
    }
    let again = export(&exported);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

    // The run and its export sample the same images from the same noise, for every sampler.
    for (i, sampler) in [["ddpm", "10"], ["ddim", "10"], ["dpm++", "8"]]
        .iter()
        .enumerate()
    {
        let noise = d.join(format!("noise{i}.safetensors"));
        let (a, b) = (d.join(format!("run{i}.h5")), d.join(format!("exp{i}.h5")));
        let mut args = vec![
            "--sampler",
            sampler[0],
            "--steps",
            sampler[1],
            "--device",
            "cpu",
        ];
        args.extend(["--num", "4", "--save-noise", noise.to_str().unwrap()]);
        ok(sample_to(&run, &a, &args), "sample the run");
        let args = [
            "--sampler",
            sampler[0],
            "--steps",
            sampler[1],
            "--device",
            "cpu",
            "--noise",
            noise.to_str().unwrap(),
        ];
        ok(sample_to(&exported, &b, &args), "sample the export");
        assert_eq!(read_images(&a), read_images(&b), "{sampler:?}");
    }

    // diffusers loads the folder; its UNet matches ours on fixed inputs.
    let model = ddpm_train::model_io::load_ddpm(
        &exported,
        ddpm_train::model_io::Weights::Ema,
        tch::Device::Cpu,
    )
    .unwrap();
    let n = 3;
    let sample = (tch::Tensor::arange(n * 28 * 28, (tch::Kind::Float, tch::Device::Cpu)) * 0.37)
        .sin()
        .view([n, 1, 28, 28]);
    let timestep = tch::Tensor::from_slice(&[0i64, 37, 99]);
    let output = tch::no_grad(|| model.unet.forward_t(&sample, &timestep, None, false));
    let betas = tch::Tensor::from_slice(model.diffusion.betas().as_slice().unwrap());
    let io = d.join("io.safetensors");
    ddpm_nets::checkpoint::write_tensors(
        &io,
        &[
            ("sample".into(), sample),
            ("timestep".into(), timestep),
            ("output".into(), output),
            ("betas".into(), betas),
        ],
    )
    .unwrap();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let python = root.join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `cargo xtask setup`",
        python.display()
    );
    let text = ok(
        Command::new(python)
            .arg(root.join("scripts/check_diffusers_export.py"))
            .arg(&exported)
            .arg(&io)
            .output()
            .unwrap(),
        "scripts/check_diffusers_export.py",
    );
    assert!(text.contains("\"failures\": []"), "{text}");
    println!("{text}");
}

#[test]
fn fid_cls_during_training_keeps_the_best_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let classifier = d.join("classifier");
    ok(
        cli()
            .args([
                "train-classifier",
                "--dataset",
                "mnist",
                "--no-progress",
                "--steps",
                "30",
                "--data",
            ])
            .arg(mnist())
            .arg("--out")
            .arg(&classifier)
            .output()
            .unwrap(),
        "train-classifier",
    );
    // A missing classifier is refused before the run directory exists.
    let missing = d.join("missing");
    let eval = |network: &Path| {
        vec![
            "run.eval_every=2".to_string(),
            "run.eval_samples=20".into(),
            "run.eval_sampler=\"dpm++5\"".into(),
            "run.eval_reference_images=200".into(),
            format!("run.eval_network=\"{}\"", network.display()),
        ]
    };
    let sets: Vec<String> = eval(&d.join("nowhere"))
        .into_iter()
        .flat_map(|s| ["--set".into(), s])
        .collect();
    let out = cli()
        .args(["train", "--no-progress", "--config"])
        .arg(tiny_config(d, 4))
        .args(&sets)
        .arg("--out")
        .arg(&missing)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("train-classifier"),
        "{err}"
    );
    assert!(!missing.exists(), "a refused run left its directory");

    let extra = eval(&classifier);
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let run = tiny_run(d, 4, &extra);
    let records: Vec<serde_json::Value> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let scores: Vec<(u64, f64)> = records
        .iter()
        .filter_map(|r| Some((r["step"].as_u64()?, r["fid_cls"].as_f64()?)))
        .collect();
    assert_eq!(
        scores.iter().map(|s| s.0).collect::<Vec<_>>(),
        vec![2, 4],
        "{records:?}"
    );
    assert!(
        scores.iter().all(|s| s.1.is_finite() && s.1 > 0.0),
        "{scores:?}"
    );
    let best_step = if scores[1].1 < scores[0].1 { 4 } else { 2 };
    let best: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.join("checkpoints/best/best.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(best["step"], best_step);
    assert!(run.join("eval.png").is_file());
    // The best checkpoint samples and exports like a run.
    let out = d.join("best.h5");
    ok(
        sample_to(
            &run.join("checkpoints/best"),
            &out,
            &["--num", "2", "--steps", "5", "--device", "cpu"],
        ),
        "sample --model RUN/checkpoints/best",
    );
    assert_eq!(read_images(&out).0, vec![2, 28, 28, 1]);
}

#[test]
fn inception_fid_during_training_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let inception = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../datasets/weights/fid-inception-pool3.pt");
    assert!(
        inception.is_file(),
        "{} is missing: run `cargo xtask fetch-weights`",
        inception.display()
    );
    let network = format!("run.eval_network=\"{}\"", inception.display());
    let run = tiny_run(
        dir.path(),
        2,
        &[
            "run.eval_every=2",
            "run.eval_samples=8",
            "run.eval_reference_images=16",
            "run.eval_metric=\"fid\"",
            "run.eval_sampler=\"dpm++5\"",
            &network,
        ],
    );
    let best: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.join("checkpoints/best/best.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(best["metric"], "fid");
    assert_eq!(best["step"], 2);
    let fid = best["value"].as_f64().unwrap();
    assert!(fid.is_finite() && fid > 0.0, "{best}");
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert!(metrics.contains("\"fid\":"), "{metrics}");
}
