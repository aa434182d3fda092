//! Running a comparison: the reference side once (classifier, reference images, optional
//! Inception statistics, bits/dim images), then for each model: train it when its run is missing,
//! load it, measure its bits/dim, draw and score its samples.
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use ddpm_metrics::refstats::{reference_stats, source_description};
use ddpm_metrics::{
    images_to_nchw_tensor, EvalOptions, ImageSource, InceptionReference, NllOptions, NllReport,
    SampleEvaluator,
};
use ddpm_nets::device::DeviceSpec;
use ddpm_train::config::{ModelKind, TrainConfig};
use ddpm_train::engine::TrainOptions;
use ddpm_train::model_io::{write_samples, Weights};
use ddpm_train::viz;
use ndarray::{s, ArrayView4};
use tch::{nn, Device, Tensor};

use super::config::{CompareConfig, ModelEntry};
use super::report::{write_report, CompareReport, Row};
use super::sample::{crop_to, sample_ddpm};
use crate::{bits_per_dim, models, weights};

/// The reference side, computed once for all rows.
struct Reference {
    evaluator: SampleEvaluator,
    /// Reference images behind FID / FID_cls.
    n_fid: usize,
    /// `(H, W)` of the reference images (samples are cropped to it).
    hw: (i64, i64),
    /// The bits/dim images, uint8 `[N, C, H, W]` (N may be 0: no bits/dim).
    nll_images: Tensor,
}

/// What the rows accumulate.
#[derive(Default)]
struct Collected {
    rows: Vec<Row>,
    grids: Vec<image::RgbImage>,
    nll: Vec<(String, NllReport)>,
}

/// A model's numbers that do not depend on the sampler.
struct ModelFacts<'a> {
    name: &'a str,
    parameters: usize,
    train_steps: usize,
    train_secs: f64,
    bpd: Option<f64>,
}

/// Runs the comparison described by `cfg` and writes the report files into `cfg.out_dir`.
pub fn run_compare(cfg: &CompareConfig) -> Result<CompareReport> {
    let created = !cfg.out_dir.exists();
    let result = compare_into(cfg);
    if result.is_err() && created {
        // A failed comparison leaves no report folder behind (the runs it trained stay).
        let _ = std::fs::remove_dir_all(&cfg.out_dir);
    }
    result
}

/// [`run_compare`] without the clean-up of a failure.
fn compare_into(cfg: &CompareConfig) -> Result<CompareReport> {
    if cfg.cpu_threads > 0 {
        tch::set_num_threads(cfg.cpu_threads as i32);
    }
    let device = cfg
        .device
        .parse::<DeviceSpec>()
        .and_then(|d| d.resolve())
        .with_context(|| format!("device = \"{}\"", cfg.device))?;
    std::fs::create_dir_all(&cfg.out_dir)
        .with_context(|| format!("cannot create {}", cfg.out_dir.display()))?;
    let reference = prepare_reference(cfg, device)?;
    let mut out = Collected::default();
    if cfg.ddpm.include {
        ddpm_rows(cfg, &reference, device, &mut out)?;
    }
    for (entry, kind, name, label) in [
        (&cfg.gan, ModelKind::Gan, "GAN", "generator"),
        (&cfg.vae, ModelKind::Vae, "VAE", "decoder mean"),
    ] {
        if entry.include {
            baseline_row(
                cfg,
                entry,
                kind,
                (name, label),
                &reference,
                device,
                &mut out,
            )?;
        }
    }
    let report = CompareReport {
        rows: out.rows,
        nll: out.nll,
        reference_images: reference.n_fid,
        classifier: reference.evaluator.classifier().describe(),
        inception: reference.evaluator.inception().map(|n| n.describe()),
        config: cfg.clone(),
    };
    write_report(&cfg.out_dir, &report, &out.grids)?;
    Ok(report)
}

/// The classifier (first: a missing one fails before any training or sampling), the reference
/// images and, with `fid_inception`, their Inception statistics.
fn prepare_reference(cfg: &CompareConfig, device: Device) -> Result<Reference> {
    let classifier = weights::load_classifier(
        &cfg.classifier,
        device,
        "classifier = \"DIR\" in the config",
    )?;
    let src = ImageSource::parse(&cfg.reference).context("reference")?;
    let images = src
        .load(Some(cfg.reference_images.max(cfg.nll_images)))
        .with_context(|| format!("reference {src}"))?;
    let n_fid = cfg.reference_images.min(images.dim().0);
    let fid_images = images.slice(s![..n_fid, .., .., ..]);
    let inception = if cfg.fid_inception {
        Some(inception_reference(cfg, &src, fid_images, device)?)
    } else {
        None
    };
    let evaluator = SampleEvaluator::new(
        classifier,
        fid_images,
        inception,
        cfg.batch_size,
        cfg.splits,
    )?;
    let n_nll = cfg.nll_images.min(images.dim().0);
    Ok(Reference {
        evaluator,
        n_fid,
        hw: (images.dim().1 as i64, images.dim().2 as i64),
        nll_images: images_to_nchw_tensor(images.slice(s![..n_nll, .., .., ..])),
    })
}

/// The Inception network and the reference statistics, through the cache file.
fn inception_reference(
    cfg: &CompareConfig,
    src: &ImageSource,
    images: ArrayView4<'_, u8>,
    device: Device,
) -> Result<InceptionReference> {
    let net =
        weights::load_inception(&cfg.inception, device, "inception = \"FILE\" in the config")?;
    let cache = cfg
        .reference_inception_stats
        .clone()
        .unwrap_or_else(|| cfg.out_dir.join("reference-inception-stats.h5"));
    let source = source_description(src, images.dim().0);
    let stats = reference_stats(&net, images, &source, Some(&cache), &EvalOptions::default())?;
    Ok(InceptionReference { net, stats })
}

/// Makes sure `entry.run` holds a `kind` run with a checkpoint: trains it (or finishes it) when
/// `train.missing` allows, fails naming the folder otherwise.
fn ensure_run(cfg: &CompareConfig, entry: &ModelEntry, kind: ModelKind) -> Result<()> {
    let dir = &entry.run;
    if models::has_checkpoint(dir) {
        return Ok(());
    }
    if !cfg.train.missing {
        bail!(
            "{}: no {} run with a checkpoint here, and train.missing = false",
            dir.display(),
            kind.name()
        );
    }
    let resume = dir.join("config.toml").is_file();
    let tc = if resume {
        models::run_config(dir)?
    } else {
        let mut set = cfg.train.set.clone();
        set.extend(entry.set.iter().cloned());
        // The runs train on the reference's dataset file (its train split) unless `set` says otherwise.
        let mut tc = TrainConfig::preset_for_model(&cfg.train.preset, kind)?;
        if let Ok(ImageSource::Split { path, .. }) = ImageSource::parse(&cfg.reference) {
            tc.data.path = path;
        }
        tc.with_overrides(&set)?
    };
    if tc.model.kind() != kind {
        bail!(
            "{}: holds a {} run, expected a {} run",
            dir.display(),
            tc.model.kind().name(),
            kind.name()
        );
    }
    tracing::info!(dir = %dir.display(), ?kind, steps = tc.run.steps, resume, "training a missing run");
    let stop = crate::signals::stop_on_signals("stopping after this step with a checkpoint")?;
    let opts = TrainOptions {
        stop: stop.flag.clone(),
        ..TrainOptions::default()
    };
    if models::train(dir, &tc, resume, &opts)?.interrupted {
        eprintln!(
            "stopped training {}; run the same compare again to continue it",
            dir.display()
        );
        return Err(stop.interrupted());
    }
    Ok(())
}

fn nll_options(cfg: &CompareConfig) -> NllOptions {
    NllOptions {
        seed: cfg.seed,
        ..NllOptions::default()
    }
}

/// Parameter count of a variable store.
fn parameters(vs: &nn::VarStore) -> usize {
    vs.variables().values().map(|t| t.numel()).sum()
}

/// The DDPM's rows: one bound, then one row per sampler setting.
fn ddpm_rows(
    cfg: &CompareConfig,
    r: &Reference,
    device: Device,
    out: &mut Collected,
) -> Result<()> {
    let dir = &cfg.ddpm.run;
    ensure_run(cfg, &cfg.ddpm, ModelKind::Ddpm)?;
    let m = models::load_ddpm(dir, Weights::Ema, device)?;
    // Every row's sampler is checked before the first one samples (rows can take hours).
    for row in &cfg.ddpm_rows {
        ddpm_train::sampler::SamplerSpec::parse(&row.spec, m.diffusion.num_timesteps())
            .with_context(|| format!("ddpm_rows: spec `{}`", row.spec))?;
    }
    let state = models::latest_state(dir)?;
    let bpd = if r.nll_images.size()[0] > 0 {
        let rep = bits_per_dim::of_ddpm(&m, dir, &r.nll_images, device, &nll_options(cfg))?;
        let total = rep.total;
        out.nll.push(("DDPM".to_string(), rep));
        Some(total)
    } else {
        None
    };
    let facts = ModelFacts {
        name: "DDPM",
        parameters: parameters(&m.vs),
        train_steps: state.step,
        train_secs: state.elapsed_secs,
        bpd,
    };
    for row in &cfg.ddpm_rows {
        let n = row.samples.unwrap_or(cfg.samples);
        let drawn = sample_ddpm(&m, &row.spec, n, cfg.batch_size, cfg.seed, device)?;
        let images = crop_to(drawn.images, r.hw);
        finish_row(cfg, r, &facts, &drawn.label, &images, drawn.secs, out)?;
    }
    Ok(())
}

/// The GAN's or the VAE's row (`name`, `label`): its bits/dim (VAE only) and its samples.
fn baseline_row(
    cfg: &CompareConfig,
    entry: &ModelEntry,
    kind: ModelKind,
    (name, label): (&str, &str),
    r: &Reference,
    device: Device,
    out: &mut Collected,
) -> Result<()> {
    ensure_run(cfg, entry, kind)?;
    let dir = &entry.run;
    let m = models::load_baseline(dir, device)?;
    if m.kind != kind {
        bail!(
            "{}: holds a {} run, expected a {} run",
            dir.display(),
            m.kind.name(),
            kind.name()
        );
    }
    let state = models::latest_state(dir)?;
    let bpd = match (models::vae_of(&m), r.nll_images.size()[0] > 0) {
        (Some(vae), true) => {
            let rep = bits_per_dim::of_vae(vae, dir, &r.nll_images, device, &nll_options(cfg))?;
            let total = rep.total;
            out.nll.push((name.to_string(), rep));
            Some(total)
        }
        _ => None,
    };
    tracing::info!(model = name, n = cfg.samples, "sampling");
    let start = Instant::now();
    let images = models::sample_baseline(&m, cfg.samples, cfg.batch_size, cfg.seed, device);
    let secs = start.elapsed().as_secs_f64();
    let facts = ModelFacts {
        name,
        parameters: parameters(&m.vs),
        train_steps: state.step,
        train_secs: state.elapsed_secs,
        bpd,
    };
    finish_row(cfg, r, &facts, label, &crop_to(images, r.hw), secs, out)
}

/// Scores one row's samples (uint8 `[N, H, W, C]`), adds its grid, writes its samples file
/// (`samples/<model>-<sampler>.h5`) and adds the row.
fn finish_row(
    cfg: &CompareConfig,
    r: &Reference,
    facts: &ModelFacts<'_>,
    sampler: &str,
    images: &Tensor,
    sample_secs: f64,
    out: &mut Collected,
) -> Result<()> {
    let n = images.size()[0] as usize;
    let scores = r.evaluator.evaluate_tensor(images)?;
    let k = cfg.grid_images.clamp(1, n) as i64;
    out.grids.push(viz::grid_nhwc(
        &images.narrow(0, 0, k),
        (k as f64).sqrt().ceil() as usize,
    ));
    let model = facts.name;
    write_samples(
        &samples_file(&cfg.out_dir, model, sampler),
        images,
        &[
            ("model", model.to_string()),
            ("sampler", sampler.to_string()),
        ],
    )?;
    let row = Row {
        model: model.into(),
        sampler: sampler.into(),
        n,
        fid_inception: scores.fid_inception,
        fid_cls: scores.fid_cls,
        is_cls_mean: scores.is_cls.mean,
        is_cls_std: scores.is_cls.std,
        bpd: facts.bpd,
        parameters: facts.parameters,
        train_steps: facts.train_steps,
        train_secs: facts.train_secs,
        sample_secs_per_image: sample_secs / n as f64,
    };
    tracing::info!(?row, "compare row");
    out.rows.push(row);
    Ok(())
}

/// `OUT/samples/<model>-<sampler>.h5`, lower case without spaces (e.g. `gan-generator.h5`).
fn samples_file(out_dir: &Path, model: &str, sampler: &str) -> std::path::PathBuf {
    out_dir.join("samples").join(format!(
        "{}-{}.h5",
        model.to_lowercase(),
        sampler.to_lowercase().replace(' ', "")
    ))
}
