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

use crate::weights;

/// Arguments of `ddpm-cli train-classifier`.
#[derive(clap::Args)]
pub struct TrainClassifierArgs {
    /// mnist or fashion-mnist.
    #[arg(long)]
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
    /// Images per step.
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Peak Adam learning rate (half-cosine decay to 0).
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Seed of the initialisation, data order and dropout.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Device: auto, cpu, cuda, cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
}

pub fn run(args: TrainClassifierArgs) -> Result<()> {
    let default_epochs = match args.dataset.as_str() {
        "mnist" => 5,
        "fashion-mnist" => 15,
        other => bail!("--dataset {other}: expected mnist or fashion-mnist"),
    };
    let data = args
        .data
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("datasets/{}.h5", args.dataset)));
    let (out, resume) = match (&args.out, &args.resume) {
        (_, Some(r)) => (r.clone(), true),
        (Some(o), None) => (o.clone(), false),
        (None, None) => (weights::default_classifier_dir(&args.dataset), false),
    };
    let run_cfg = if resume {
        ClassifierRunConfig::from_run_dir(&out)?
    } else {
        ClassifierRunConfig {
            dataset: args.dataset.clone(),
            net: ClassifierConfig::default(),
            train: ClassifierTrainConfig {
                epochs: args.epochs.unwrap_or(default_epochs),
                steps: args.steps,
                batch_size: args.batch_size,
                lr: args.lr,
                seed: args.seed,
                ..ClassifierTrainConfig::default()
            },
        }
    };
    let device = args.device.parse::<DeviceSpec>()?.resolve()?;
    let train = loader::load_images(&data, "train").with_context(|| {
        format!(
            "cannot read the training split of {} (run `cargo xtask fetch-data`)",
            data.display()
        )
    })?;
    let test = loader::load_images(&data, "test")
        .with_context(|| format!("cannot read the test split of {}", data.display()))?;
    let opts = TrainOptions {
        progress: !args.no_progress,
        stop: crate::train::stop_on_interrupt()?,
    };
    let trained = train_classifier(&out, resume, &run_cfg, &train, &test, device, &opts)?;
    let report = &trained.report;
    if trained.summary.interrupted {
        println!(
            "stopped at step {}; continue with: ddpm-cli train-classifier --dataset {} --resume {}",
            report.steps,
            args.dataset,
            out.display()
        );
        return Ok(());
    }
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
