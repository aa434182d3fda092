//! `ddpm-cli reproduce mnist`: the lecture's experiment end to end — train the DDPM, the GAN and
//! the VAE for the same wall-clock budget each (CPU; the GPU presets' step counts on CUDA), score
//! every row with one protocol (FID on 2000, FID_cls / IS_cls on 10,000, bits/dim, each beside its
//! real-vs-real floor) and write `results.json`, `results.md`, `results.png` and `curve.png`.
//!
//! Everything lives in one folder (`--out`, default `runs/reproduce-mnist`): `plan.toml` (what
//! was asked), the run directories `ddpm/`, `gan/`, `vae/`, `samples/<row>/chunk-NNN.h5`,
//! `rows/<row>.json`, `eval/` (reference statistics, floors), `bpd-*.json` and the results. Each
//! phase is skipped when its output exists, so running the command again after Ctrl-C, SIGTERM or
//! kill -9 continues where it stopped; a changed budget or config is refused naming the keys,
//! unless `--force` (which keeps what the change does not touch).
//!
//! Pieces: [`plan`] (the plan and its differences), [`rows`] (the rows and their chunked
//! samples), [`score`] (the protocol), [`phases`] (training and evaluation in order),
//! [`results`] (the files).
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ddpm_nets::device::DeviceSpec;

pub mod phases;
pub mod plan;
pub mod results;
pub mod rows;
pub mod score;

use plan::{Plan, PlanInputs, ProtocolOverrides};

/// Arguments of `ddpm-cli reproduce`.
#[derive(clap::Args, Debug)]
pub struct ReproduceArgs {
    /// The experiment: `mnist` (DDPM vs GAN vs VAE on MNIST).
    #[arg(value_parser = ["mnist"])]
    pub experiment: String,
    /// Training wall-clock minutes per model (default: 30 on a CPU, which makes the whole command
    /// about 150 minutes on 2 cores; on CUDA the GPU presets' step counts).
    #[arg(long, value_name = "M")]
    pub minutes_per_model: Option<f64>,
    /// The folder of the experiment (created; an existing one is continued).
    #[arg(long, default_value = "runs/reproduce-mnist")]
    pub out: PathBuf,
    /// Go on although the plan changed: runs whose model config changed start again (a new
    /// budget alone keeps them), every evaluation is redone.
    #[arg(long)]
    pub force: bool,
    /// Device: auto, cpu, cuda, cuda:N.
    #[arg(long, default_value = "auto", value_parser = crate::choices::device)]
    pub device: DeviceSpec,
    /// The MNIST dataset file (from `cargo xtask fetch-data`).
    #[arg(long, default_value = "datasets/mnist.h5")]
    pub data: PathBuf,
    /// The digit classifier folder of FID_cls / IS_cls.
    #[arg(long, default_value = crate::weights::DEFAULT_MNIST_CLASSIFIER)]
    pub classifier: PathBuf,
    /// The FID Inception (TorchScript).
    #[arg(long, default_value = crate::weights::POOL3_INCEPTION)]
    pub inception: PathBuf,
    /// Samples (and test images) of FID [default: 2000].
    #[arg(long, value_name = "N")]
    pub fid_samples: Option<usize>,
    /// Samples (and test images) of FID_cls and IS_cls [default: 10000].
    #[arg(long, value_name = "N")]
    pub cls_samples: Option<usize>,
    /// Samples of the ancestral row [default: 500 on a CPU, 10000 on CUDA].
    #[arg(long, value_name = "N")]
    pub ancestral_samples: Option<usize>,
    /// Test images of bits/dim [default: 100 on a CPU, 1000 on CUDA].
    #[arg(long, value_name = "N")]
    pub nll_images: Option<usize>,
    /// Samples per chunk file [default: 1000].
    #[arg(long, value_name = "N")]
    pub chunk: Option<usize>,
    /// Override a training config value: `KEY=VALUE` for all three models, `MODEL:KEY=VALUE`
    /// (ddpm, gan, vae) for one; repeatable.
    #[arg(long = "set", value_name = "[MODEL:]KEY=VALUE")]
    pub set: Vec<String>,
}

/// Runs `ddpm-cli reproduce`.
pub fn run(args: ReproduceArgs) -> Result<()> {
    let device = args.device.resolve()?;
    let absolute = |p: &Path| std::path::absolute(p).with_context(|| p.display().to_string());
    let data = absolute(&args.data)?;
    let shape = ddpm_train::fit::DataShape::read(&data, "train")
        .with_context(|| format!("--data {}", args.data.display()))?;
    let wanted = Plan::resolve(&PlanInputs {
        cuda: device.is_cuda(),
        device: args.device.to_string(),
        minutes: args.minutes_per_model,
        data,
        classifier: absolute(&args.classifier)?,
        inception: absolute(&args.inception)?,
        set: &args.set,
        protocol: ProtocolOverrides {
            fid_samples: args.fid_samples,
            cls_samples: args.cls_samples,
            ancestral_samples: args.ancestral_samples,
            nll_images: args.nll_images,
            chunk: args.chunk,
        },
        shape: &shape,
    })?;
    let dir = &args.out;
    if dir.exists() && !dir.is_dir() {
        anyhow::bail!(crate::usage!(
            "--out {}: a file, not a folder",
            dir.display()
        ));
    }
    check_inputs(&wanted, device)?;
    open_plan(dir, &wanted, args.force)?;
    let stop = crate::signals::stop_on_signals(
        "stopping at the next training step (with a checkpoint) or the end of this chunk or evaluation",
    )?;
    let start = std::time::Instant::now();
    let outcome = phases::run_all(&wanted, dir, device, &stop)?;
    let results = results::write_all(&wanted, dir, &outcome, results::machine(device))?;
    print!("{}", results::markdown(&results));
    eprintln!(
        "\nreproduce: done in {:.0} min (this session); wrote {}/results.json, results.md, results.png, curve.png",
        start.elapsed().as_secs_f64() / 60.0,
        dir.display()
    );
    Ok(())
}

/// What would otherwise fail only after hours of training: the classifier and the Inception load,
/// and the test split holds the protocol's images.
fn check_inputs(plan: &Plan, device: tch::Device) -> Result<()> {
    crate::weights::load_classifier(&plan.classifier, device, "--classifier DIR")?;
    crate::weights::load_inception(&plan.inception, device, "--inception FILE")?;
    let p = &plan.protocol;
    let need = p.cls_samples.max(p.fid_samples).max(p.nll_images);
    let test = ddpm_metrics::ImageSource::Split {
        path: plan.data.clone(),
        split: "test".into(),
    };
    let have = test.load(Some(need))?.dim().0;
    if have < need {
        anyhow::bail!(crate::usage!(
            "{test}: {have} test images; --cls-samples, --fid-samples and --nll-images need {need}"
        ));
    }
    Ok(())
}

/// Creates `dir` with the plan, or checks the stored one: a different plan is a usage error
/// naming the changed keys, unless `force`, which removes what the change invalidates (runs whose
/// config changed, all evaluations) and stores the new plan.
fn open_plan(dir: &Path, wanted: &Plan, force: bool) -> Result<()> {
    let stored = Plan::read(dir)?;
    match stored {
        None if dir.exists()
            && std::fs::read_dir(dir)
                .with_context(|| format!("--out {}", dir.display()))?
                .next()
                .is_some() =>
        {
            anyhow::bail!(crate::usage!(
                "--out {}: a folder that is not a reproduction (no plan.toml); pass an empty or new folder",
                dir.display()
            ));
        }
        None => {}
        Some(old) => {
            let diff = old.differences(wanted);
            if diff.is_empty() {
                return Ok(());
            }
            if !force {
                anyhow::bail!(crate::usage!(
                    "{}/plan.toml was made with other settings; --force to go on with the new ones (runs whose config changed train again, every evaluation is redone), or pass another --out. Changed:\n  {}",
                    dir.display(),
                    diff.join("\n  ")
                ));
            }
            eprintln!("--force: the plan changed:\n  {}", diff.join("\n  "));
            forget_changed(dir, &old, wanted)?;
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    wanted.write(dir)
}

/// Removes the results and evaluations, then the runs whose model config changed between `old`
/// and `new` (in that order: a kill between the two leaves no evaluation of a removed run). A run
/// whose only change is its budget (`run.time_limit_minutes`, and the DDPM's curve spacing
/// `run.eval_every` that follows it) is kept: it trains on, or is already past the new budget.
fn forget_changed(dir: &Path, old: &Plan, new: &Plan) -> Result<()> {
    let remove = |p: PathBuf| -> Result<()> {
        if p.is_dir() {
            std::fs::remove_dir_all(&p)
                .with_context(|| format!("cannot remove {}", p.display()))?;
        } else if p.exists() {
            std::fs::remove_file(&p).with_context(|| format!("cannot remove {}", p.display()))?;
        }
        Ok(())
    };
    for p in [
        "results.json",
        "results.md",
        "results.png",
        "curve.png",
        "rows",
        "samples",
        "eval",
        "bpd-ddpm.json",
        "bpd-vae.json",
    ] {
        remove(dir.join(p))?;
    }
    let old_cfgs = plan::by_name(&old.models);
    for (name, _, cfg) in new.models.iter() {
        if old_cfgs
            .get(name)
            .is_none_or(|c| !plan::same_but_budget(c, cfg))
        {
            remove(dir.join(name))?;
        }
    }
    Ok(())
}
