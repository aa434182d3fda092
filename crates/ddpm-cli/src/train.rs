//! `ddpm-cli train`: train a DDPM (or the GAN / VAE baselines) into a run directory, or resume one.
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use ddpm_dist::DistEnv;
use ddpm_train::config::{ModelKind, TrainConfig};
use ddpm_train::engine::TrainOptions;
use ddpm_train::fit::DataShape;

use crate::{dist_job, models};

/// Arguments of `ddpm-cli train`.
#[derive(clap::Args)]
pub struct TrainArgs {
    /// A built-in preset: mnist-cpu, mnist, fashion-mnist, cifar10, or auto (a DDPM UNet sized
    /// for the resolution and channels of --data, as improved-diffusion sizes one).
    #[arg(long, conflicts_with = "config", value_parser = crate::choices::train_preset())]
    preset: Option<String>,
    /// The dataset file to train on (sets data.path; default for a preset:
    /// datasets/<dataset>.h5). The UNet's channels and sample_size are checked against it (and set
    /// where the config leaves them out).
    #[arg(long)]
    data: Option<PathBuf>,
    /// A TOML config file (sections model, diffusion, optim, data, run).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override a config value, e.g. `--set run.steps=2000 --set optim.lr=1e-4`; repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// What to train: ddpm, gan or vae (sets model.kind; with a preset, gan and vae get the preset's
    /// baseline recipe).
    #[arg(long, value_parser = crate::choices::model_kind())]
    model: Option<String>,
    /// Device: auto, cpu, cuda, cuda:N (sets run.device).
    #[arg(long, value_parser = crate::choices::device)]
    device: Option<ddpm_nets::device::DeviceSpec>,
    /// Total optimisation steps (sets run.steps).
    #[arg(long)]
    steps: Option<usize>,
    /// The run directory to create.
    #[arg(long, conflicts_with = "resume")]
    out: Option<PathBuf>,
    /// Continue the run in this directory from its newest checkpoint, as its config.toml says
    /// (--steps, --device, --threads and --set may change it; --preset, --config and --model
    /// cannot).
    #[arg(long, conflicts_with_all = ["preset", "config", "model"])]
    resume: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
    /// Print the summary as one JSON object on stdout (run, status, step, elapsed_secs,
    /// last_loss, checkpoint).
    #[arg(long)]
    json: bool,
    /// Data-parallel on this machine: start N training processes (ranks 0..N-1, Gloo on the
    /// CPU; one GPU each on CUDA) as `torchrun --standalone --nproc-per-node N` would.
    /// data.batch_size stays the global batch. Under torchrun, leave this out: the job's
    /// WORLD_SIZE, RANK, … make the run data-parallel.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub nproc_per_node: Option<u16>,
    /// Seconds a data-parallel rank waits for the others (rendezvous, every collective, rank 0's
    /// checkpoints and sample grids) before it fails naming the operation.
    #[arg(long, value_name = "SECS", default_value_t = dist_job::DEFAULT_TIMEOUT_SECS, value_parser = clap::value_parser!(u64).range(1..=dist_job::MAX_TIMEOUT_SECS))]
    dist_timeout: u64,
}

impl TrainArgs {
    /// The run directory this invocation writes to.
    pub fn run_dir(&self) -> Result<PathBuf> {
        match (&self.out, &self.resume) {
            (Some(o), None) => Ok(o.clone()),
            (None, Some(r)) => Ok(r.clone()),
            _ => bail!(crate::usage!(
                "give --out RUN_DIR for a new run or --resume RUN_DIR to continue one"
            )),
        }
    }
}

fn resolve_config(args: &TrainArgs, threads: Option<usize>) -> Result<TrainConfig> {
    let kind = match args.model.as_deref() {
        None => None,
        Some("ddpm") => Some(ModelKind::Ddpm),
        Some("gan") => Some(ModelKind::Gan),
        Some("vae") => Some(ModelKind::Vae),
        Some(other) => unreachable!("the parser accepts ddpm, gan and vae, not {other}"),
    };
    let (base, source) = if let Some(dir) = &args.resume {
        let cfg = models::run_config(dir)?;
        (cfg, format!("the run {}", dir.display()))
    } else if let Some(path) = &args.config {
        (TrainConfig::from_file(path)?, path.display().to_string())
    } else if args.preset.as_deref() == Some("auto") {
        let data = args
            .data
            .as_ref()
            .context("--preset auto sizes the UNet for a dataset: give --data FILE.h5")?;
        if kind.is_some_and(|k| k != ModelKind::Ddpm) {
            bail!(crate::usage!(
                "--preset auto is a DDPM preset; use another preset with --model gan or vae"
            ));
        }
        let mut cfg = TrainConfig::auto(&DataShape::read(data, "train")?)?;
        cfg.data.path = data.clone();
        (cfg, "preset auto".to_string())
    } else {
        // A baseline starts from its own recipe of the preset (DCGAN's Adam β₁ = 0.5, epochs, …).
        let preset = args.preset.as_deref().unwrap_or("mnist-cpu");
        let mut cfg = TrainConfig::preset_for_model(preset, kind.unwrap_or_default())?;
        cfg.data.path = preset_data_path(preset);
        (cfg, format!("preset {preset}"))
    };
    if let Some(kind) = kind.filter(|&k| k != base.model.kind()) {
        bail!(
            "--model {}: {source} is a {} config; its [model] table belongs to that kind \
             (write a config with [model] kind = \"{}\", or use --preset with --model)",
            kind.name(),
            base.model.kind().name(),
            kind.name()
        );
    }
    let mut overrides = args.overrides.clone();
    if let Some(d) = &args.device {
        overrides.push(format!("run.device=\"{d}\""));
    }
    if let Some(s) = args.steps {
        overrides.push(format!("run.steps={s}"));
    }
    if let Some(n) = threads {
        overrides.push(format!("run.cpu_threads={n}"));
    }
    let mut cfg = base.with_overrides(&overrides)?;
    if args.resume.is_some() {
        // The network and the process a checkpoint belongs to are not a setting of the session.
        let kept = [
            ("model", cfg.model == base.model),
            ("diffusion", cfg.diffusion == base.diffusion),
            ("data.path", cfg.data.path == base.data.path),
        ];
        if let Some((section, _)) = kept.iter().find(|(_, same)| !same) {
            bail!(crate::usage!(
                "--set {section}…: a resumed run keeps the {section} it was trained with \
                 ({source}); train a new run (--out) to change it"
            ));
        }
    }
    if let Some(data) = &args.data {
        // The run records its data as an absolute path.
        let same = std::path::absolute(data).is_ok_and(|d| d == cfg.data.path);
        if args.resume.is_some() && !same {
            bail!(
                "--data {}: the run trains on {}; a resumed run keeps its data",
                data.display(),
                cfg.data.path.display()
            );
        }
        cfg.data.path = data.clone();
    }
    if args.resume.is_none() && !cfg.data.path.as_os_str().is_empty() {
        // The run records where its data is from any working folder.
        cfg.data.path = std::path::absolute(&cfg.data.path)
            .with_context(|| format!("data.path {}", cfg.data.path.display()))?;
    }
    if cfg.model.kind() == ModelKind::Ddpm && !cfg.data.path.as_os_str().is_empty() {
        // Before validation: fitting completes what the data decides (sample_size, the class
        // embeddings of a conditional run).
        let shape = DataShape::read(&cfg.data.path, &cfg.data.split)?;
        cfg.fit_to_data(&shape)?;
    }
    cfg.validate()?;
    Ok(cfg)
}

/// The dataset file a preset trains on: `datasets/<dataset>.h5`, as `cargo xtask fetch-data`
/// writes it (`mnist-cpu` trains on MNIST).
pub fn preset_data_path(preset: &str) -> PathBuf {
    let dataset = match preset {
        "mnist-cpu" => "mnist",
        other => other,
    };
    PathBuf::from(format!("datasets/{dataset}.h5"))
}

/// Trains; `threads` is the global `--threads` (it sets run.cpu_threads).
pub fn run(mut args: TrainArgs, threads: Option<usize>) -> Result<()> {
    if let Some(n) = args.nproc_per_node {
        return crate::launch::run(usize::from(n));
    }
    let dist = DistEnv::from_env()?;
    if let Some(env) = &dist {
        resume_after_restart(&mut args, env);
    }
    let dir = args.run_dir()?;
    let root = dist_job::is_root(dist.as_ref());
    if args.out.is_some() && root {
        crate::outputs::check_folder(&dir, "--out")?;
    }
    let mut cfg = resolve_config(&args, threads)?;
    let mut device = cfg.run.device.resolve()?;
    let own_threads = threads.is_some() || cfg.run.cpu_threads > 0;
    let parallel = match &dist {
        Some(env) => {
            let p = dist_job::join(env, &mut device, own_threads, args.dist_timeout)?;
            if device.is_cuda() {
                cfg.run.device = ddpm_nets::device::DeviceSpec::Cuda(env.local_rank);
            }
            Some(p)
        }
        None => None,
    };
    tracing::info!(
        device = ?device,
        cpu_threads = tch::get_num_threads(),
        libtorch = ddpm_nets::device::DeviceReport::collect()
            .libtorch_version
            .unwrap_or_default(),
        "device"
    );
    let stop = crate::signals::stop_on_signals(dist_job::stop_message(dist.is_some()))?;
    let opts = TrainOptions {
        progress: !args.no_progress && root,
        stop: stop.flag.clone(),
        // Rank 0 alone evaluates (the others wait at the next collective).
        evaluator: if root {
            crate::train_eval::evaluator(&cfg, device)?
        } else {
            None
        },
        parallel,
    };
    let resume = args.resume.is_some();
    // A resumed run that has reached run.steps trains no step.
    let done_before = resume
        && models::latest_state(&dir)
            .ok()
            .is_some_and(|s| s.step == cfg.run.steps);
    let limit_spent_before = resume
        && cfg.run.time_limit_minutes > 0.0
        && models::latest_state(&dir)
            .ok()
            .is_some_and(|s| s.elapsed_secs >= cfg.run.time_limit_minutes * 60.0);
    let summary = models::train(&dir, &cfg, resume, &opts)?;
    if !root {
        // Rank 0 reports the run.
        return match summary.interrupted {
            true => Err(stop.interrupted()),
            false => Ok(()),
        };
    }
    let status = if summary.interrupted {
        "stopped"
    } else if done_before || limit_spent_before {
        "already finished"
    } else if summary.time_up {
        "finished at its time limit"
    } else {
        "finished"
    };
    if args.json {
        let doc = serde_json::json!({
            "run": dir,
            "status": status,
            "step": summary.step,
            "elapsed_secs": summary.elapsed_secs,
            "last_loss": summary.last_loss,
            "checkpoint": summary.checkpoint,
            "resume_command": format!("ddpm-cli train --resume {}", crate::outputs::shell_quote(&dir)),
        });
        println!("{doc}");
    } else {
        print_summary(&dir, &cfg, &summary, status)?;
    }
    if summary.interrupted {
        // Status 130, so that `train && sample` does not carry on with an unfinished run.
        return Err(stop.interrupted());
    }
    Ok(())
}

/// torchrun restarts a failed job (`--max-restarts`) with the same command line: a run that an
/// earlier attempt created with `--out` is then continued, as `--resume` would.
fn resume_after_restart(args: &mut TrainArgs, env: &DistEnv) {
    let Some(out) = args.out.clone().filter(|_| env.restart_count > 0) else {
        return;
    };
    if !out.join("config.toml").is_file() {
        return;
    }
    tracing::warn!(
        restart = env.restart_count,
        run = %out.display(),
        "torchrun restarted the job: continuing the run its first attempt created"
    );
    args.resume = Some(out);
    args.out = None;
    // The run's config.toml is what these resolved to.
    args.preset = None;
    args.config = None;
    args.model = None;
}

/// The summary lines of a finished or stopped run.
fn print_summary(
    dir: &std::path::Path,
    cfg: &TrainConfig,
    summary: &ddpm_train::engine::TrainSummary,
    status: &str,
) -> Result<()> {
    if status == "already finished" && summary.time_up {
        println!(
            "{} has trained {:.0} s, its run.time_limit_minutes = {}: nothing to train (raise it \
             with --set run.time_limit_minutes=M to train further)",
            dir.display(),
            summary.elapsed_secs,
            cfg.run.time_limit_minutes
        );
    } else if summary.time_up {
        println!(
            "finished {} at its time limit ({} min of training) at step {}, last loss {:.5}",
            dir.display(),
            cfg.run.time_limit_minutes,
            summary.step,
            summary.last_loss
        );
    } else if status == "already finished" {
        println!(
            "{} is already at step {} = run.steps: nothing to train (give --steps N > {} to train \
             further)",
            dir.display(),
            summary.step,
            summary.step
        );
    } else {
        println!(
            "{status} {} at step {} ({:.0} s of training), last loss {:.5}",
            dir.display(),
            summary.step,
            summary.elapsed_secs,
            summary.last_loss
        );
    }
    if cfg.model.kind() != ModelKind::Ddpm {
        if let Some(last) = models::last_metrics(dir)? {
            println!("last log interval: {last}");
        }
    }
    println!("checkpoint: {}", summary.checkpoint.display());
    if summary.interrupted {
        println!(
            "continue with: ddpm-cli train --resume {}",
            crate::outputs::shell_quote(dir)
        );
    }
    Ok(())
}
