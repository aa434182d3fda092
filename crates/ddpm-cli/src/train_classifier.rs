//! `ddpm-cli train-classifier`: train the digit / clothing classifier whose features and softmax give
//! the domain metrics (FID_cls, IS_cls), report its test accuracy and save it where `ddpm-cli eval`
//! and `ddpm-cli compare` look for it by default (`datasets/weights/classifier-<dataset>/`).
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use ddpm_nets::classifier::ClassifierConfig;
use ddpm_nets::device::DeviceSpec;
use ddpm_train::classifier::{self, ACCURACY_FILE};
use ddpm_train::engine::TrainOptions;
use ddpm_train::loader;
use ddpm_train::tasks::classifier::{train_classifier, ClassifierRunConfig, ClassifierTrainConfig};

use crate::{dist_job, weights};

/// Arguments of `ddpm-cli train-classifier`.
#[derive(clap::Args)]
pub struct TrainClassifierArgs {
    /// mnist or fashion-mnist.
    #[arg(long, value_parser = crate::choices::classifier_dataset())]
    dataset: String,
    /// The HDF5 file (default `datasets/<dataset>.h5`).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Output folder, also the training run directory (default
    /// `datasets/weights/classifier-<dataset>`); it must not hold a run yet.
    #[arg(long, conflicts_with = "resume")]
    out: Option<PathBuf>,
    /// Continue the interrupted classifier run in this folder from its newest checkpoint.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Passes over the training set (default 5 for mnist, 15 for fashion-mnist).
    #[arg(long)]
    epochs: Option<usize>,
    /// Exact number of optimisation steps (instead of epochs).
    #[arg(long)]
    steps: Option<usize>,
    /// Images per step [default: 128].
    #[arg(long)]
    batch_size: Option<usize>,
    /// Peak Adam learning rate, half-cosine decay to 0 [default: 1e-3].
    #[arg(long)]
    lr: Option<f64>,
    /// Seed of the initialisation, data order and dropout [default: 0].
    #[arg(long)]
    seed: Option<u64>,
    /// Device: auto, cpu, cuda, cuda:N.
    #[arg(long, default_value = "auto", value_parser = crate::choices::device)]
    device: DeviceSpec,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
    /// Write no TensorBoard event files (`train.tensorboard = false` in the run's config).
    #[arg(long)]
    no_tensorboard: bool,
    /// Data-parallel on this machine: N processes, as for `ddpm-cli train` (--batch-size is the
    /// global batch). Under torchrun, leave this out.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub nproc_per_node: Option<u16>,
    /// Seconds a data-parallel rank waits for the others.
    #[arg(long, value_name = "SECS", default_value_t = dist_job::DEFAULT_TIMEOUT_SECS, value_parser = clap::value_parser!(u64).range(1..=dist_job::MAX_TIMEOUT_SECS))]
    dist_timeout: u64,
}

/// The run folder, whether it is resumed, and its config: from the flags for a new run, from the
/// run's `config.toml` for `--resume` (which continues the run as configured: flags that would
/// change it are refused, and the dataset must be the run's).
fn run_config(args: &TrainClassifierArgs) -> Result<(PathBuf, bool, ClassifierRunConfig)> {
    let default_epochs = match args.dataset.as_str() {
        "mnist" => 5,
        "fashion-mnist" => 15,
        other => bail!("--dataset {other}: expected mnist or fashion-mnist"),
    };
    if let Some(dir) = &args.resume {
        let changes = [
            ("--epochs", args.epochs.is_some()),
            ("--steps", args.steps.is_some()),
            ("--batch-size", args.batch_size.is_some()),
            ("--lr", args.lr.is_some()),
            ("--seed", args.seed.is_some()),
        ];
        if let Some((flag, _)) = changes.iter().find(|(_, given)| *given) {
            bail!(crate::usage!("{flag} cannot change a run that is resumed: --resume continues {} as configured in its config.toml", dir.display()));
        }
        let cfg = ClassifierRunConfig::from_run_dir(dir)?;
        if cfg.dataset != args.dataset {
            bail!(
                "{} is a {} classifier run, not --dataset {}",
                dir.display(),
                cfg.dataset,
                args.dataset
            );
        }
        if let Some(data) = args.data.as_ref().filter(|d| **d != cfg.data) {
            bail!(
                "{} was trained on {}, not --data {}",
                dir.display(),
                cfg.data.display(),
                data.display()
            );
        }
        return Ok((dir.clone(), true, cfg));
    }
    let defaults = ClassifierTrainConfig::default();
    let cfg = ClassifierRunConfig {
        dataset: args.dataset.clone(),
        data: args
            .data
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("datasets/{}.h5", args.dataset))),
        net: ClassifierConfig::default(),
        train: ClassifierTrainConfig {
            epochs: args.epochs.unwrap_or(default_epochs),
            steps: args.steps,
            batch_size: args.batch_size.unwrap_or(defaults.batch_size),
            lr: args.lr.unwrap_or(defaults.lr),
            seed: args.seed.unwrap_or(defaults.seed),
            tensorboard: !args.no_tensorboard,
            ..defaults
        },
    };
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| weights::default_classifier_dir(&args.dataset));
    Ok((out, false, cfg))
}

pub fn run(args: TrainClassifierArgs) -> Result<()> {
    if let Some(n) = args.nproc_per_node {
        return crate::launch::run(usize::from(n));
    }
    let (out, resume, run_cfg) = run_config(&args)?;
    let dist = ddpm_dist::DistEnv::from_env()?;
    let root = dist_job::is_root(dist.as_ref());
    if !resume && root {
        crate::outputs::check_folder(&out, "--out")?;
    }
    let data = &run_cfg.data;
    let mut device = args.device.resolve()?;
    let parallel = match &dist {
        Some(env) => Some(dist_job::join(env, &mut device, false, args.dist_timeout)?),
        None => None,
    };
    let train = loader::load_images(data, "train").with_context(|| {
        format!(
            "cannot read the training split of {} (run `cargo xtask fetch-data`)",
            data.display()
        )
    })?;
    let test = loader::load_images(data, "test")
        .with_context(|| format!("cannot read the test split of {}", data.display()))?;
    let stop = crate::signals::stop_on_signals(dist_job::stop_message(dist.is_some()))?;
    let opts = TrainOptions {
        progress: !args.no_progress && root,
        stop: stop.flag.clone(),
        evaluator: None,
        parallel,
    };
    let trained = train_classifier(&out, resume, &run_cfg, &train, &test, device, &opts)?;
    if !root {
        // Rank 0 tests, saves and reports.
        return match trained.summary.interrupted {
            true => Err(stop.interrupted()),
            false => Ok(()),
        };
    }
    let Some(report) = &trained.report else {
        println!(
            "stopped at step {}; continue with: ddpm-cli train-classifier --dataset {} --resume {}",
            trained.summary.step,
            args.dataset,
            crate::outputs::shell_quote(&out)
        );
        return Err(stop.interrupted());
    };
    classifier::save_classifier(&out, &trained.vs, &trained.net, report)?;
    println!(
        "{}: test accuracy {:.4} ({} test images) after {} steps ({:.1} epochs) in {:.0} s, last train loss {:.4}",
        args.dataset,
        report.test_accuracy,
        report.test_images,
        report.steps,
        report.epochs,
        report.train_seconds,
        report.final_train_loss
    );
    println!(
        "saved: {} (config.json, model.safetensors, {ACCURACY_FILE})",
        out.display()
    );
    Ok(())
}
