//! The phases of a reproduction, in order, each skipped when its output exists: train the three
//! models (each for its budget, resuming), the reference side, the real-vs-real floors, the rows,
//! bits/dim, then the results files. A progress line before each phase says which it is, how long
//! the command has run and about how long is left.
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Result;
use ddpm_metrics::{images_to_nchw_tensor, ImageSource, NllOptions};
use ddpm_train::config::TrainConfig;
use ddpm_train::engine::TrainOptions;
use ddpm_train::model_io::Weights;
use ndarray::{s, Array4};
use serde::{Deserialize, Serialize};
use tch::Device;

use super::plan::Plan;
use super::rows::{draw_row, read_json_if_present, write_json, RowSpec, Source, ROWS};
use super::score::{Scorer, Scores};
use crate::signals::StopRequest;
use crate::{bits_per_dim, models};

/// One scored row, as `DIR/rows/<id>.json` keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RowResult {
    /// The row's id.
    pub id: String,
    /// Its scores.
    pub scores: Scores,
    /// Samples drawn.
    pub samples: usize,
    /// Sampling seconds per image.
    pub sample_s_per_image: f64,
}

/// Bits/dim of one model, as `DIR/bpd-<model>.json` keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Bpd {
    /// The bound in bits/dim.
    pub total: f64,
    /// Prior term (DDPM: L_T; VAE: KL).
    pub prior: f64,
    /// DDPM: Σ L_t (t ≥ 1).
    pub vb_sum: Option<f64>,
    /// Decoder term (DDPM: L_0; VAE: reconstruction).
    pub decoder: f64,
    /// Test images.
    pub n: usize,
}

/// What the phases leave for the results.
pub struct Outcome {
    /// The rows in table order, with their spec.
    pub rows: Vec<(RowSpec, RowResult)>,
    /// The real-vs-real floor of each row (by the row's n).
    pub floors: Vec<Scores>,
    /// DDPM and VAE bits/dim.
    pub bpd: (Bpd, Bpd),
    /// The classifier's and the Inception's descriptions.
    pub networks: (String, String),
}

/// The command's clock and its estimate of what is left.
pub struct Progress {
    start: Instant,
    phase: usize,
    phases: usize,
    /// Seconds per network call per image of the DDPM (measured from the chunks drawn).
    pub ddpm_call_secs: f64,
    /// Seconds per image of the Inception (measured when it runs).
    pub inception_secs: f64,
}

impl Progress {
    fn new(phases: usize) -> Self {
        Self {
            start: Instant::now(),
            phase: 0,
            phases,
            // Measured on 2 CPU cores (mnist-cpu UNet at batch 250: 1.6-1.7 ms per image and
            // network call; the Inception: 2000 images in about 2 minutes); replaced by this
            // machine's measurements as they come.
            ddpm_call_secs: 1.7e-3,
            inception_secs: 0.06,
        }
    }

    /// Prints `reproduce [k/N] WHAT — X elapsed, about Y left`.
    fn phase(&mut self, what: &str, left_secs: f64) {
        self.phase += 1;
        eprintln!(
            "\nreproduce [{}/{}] {what} — {} elapsed, about {} left",
            self.phase,
            self.phases,
            minutes(self.start.elapsed().as_secs_f64()),
            minutes(left_secs)
        );
    }
}

fn minutes(secs: f64) -> String {
    if secs < 90.0 {
        format!("{secs:.0} s")
    } else {
        format!("{:.0} min", secs / 60.0)
    }
}

/// Runs every phase of `plan` in `dir`.
pub fn run_all(plan: &Plan, dir: &Path, device: Device, stop: &StopRequest) -> Result<Outcome> {
    let mut progress = Progress::new(3 + 2 + ROWS.len() + 2);
    for (name, kind, cfg) in plan.models.iter() {
        let left = left_secs(plan, dir, &progress, Some(name));
        progress.phase(
            &format!("training the {}", kind.name().to_uppercase()),
            left,
        );
        train_model(&dir.join(name), cfg, device, stop)?;
    }
    let left = left_secs(plan, dir, &progress, None);
    progress.phase(
        "the reference side (classifier and Inception of the test digits)",
        left,
    );
    let scorer = Scorer::new(plan, dir, device)?;
    if let Some(s) = scorer.inception_secs_per_image.get() {
        progress.inception_secs = s;
    }
    let left = left_secs(plan, dir, &progress, None);
    progress.phase(
        "the real-vs-real floors (training digits scored like samples)",
        left,
    );
    let mut floors = Vec::new();
    for row in &ROWS {
        floors.push(floor(plan, dir, &scorer, row.samples(&plan.protocol))?);
    }
    let mut rows = Vec::new();
    for row in &ROWS {
        let left = left_secs(plan, dir, &progress, None);
        progress.phase(
            &format!("{} {}: samples and scores", row.model, row.sampler),
            left,
        );
        rows.push((
            *row,
            score_row(plan, dir, row, &scorer, device, stop, &mut progress)?,
        ));
    }
    let left = left_secs(plan, dir, &progress, None);
    progress.phase(
        "bits/dim of the DDPM (its variational bound) and the VAE",
        left,
    );
    let bpd = (
        model_bpd(plan, dir, "ddpm", device)?,
        model_bpd(plan, dir, "vae", device)?,
    );
    progress.phase("results.json, results.md, results.png", 0.0);
    Ok(Outcome {
        rows,
        floors,
        bpd,
        networks: (scorer.classifier(), scorer.inception()),
    })
}

/// Seconds of training left of the run `run` under its config's `run.time_limit_minutes`; `None`
/// without a limit.
fn budget_left(cfg: &TrainConfig, run: &Path) -> Option<f64> {
    let limit = cfg.run.time_limit_minutes;
    if limit <= 0.0 {
        return None;
    }
    let used = models::latest_state(run).map_or(0.0, |s| s.elapsed_secs);
    Some((limit * 60.0 - used).max(0.0))
}

/// The estimate of what is left from phase `from` (a model name: its training and what follows;
/// `None`: evaluation only), from the budgets and the measured speeds.
fn left_secs(plan: &Plan, dir: &Path, pr: &Progress, from: Option<&str>) -> f64 {
    let mut secs = 0.0;
    if let Some(first) = from {
        let models = plan.models.iter();
        let k = models.iter().position(|m| m.0 == first).unwrap_or(0);
        for (name, _, cfg) in &models[k..] {
            secs += budget_left(cfg, &dir.join(name)).unwrap_or(0.0);
        }
    }
    let p = &plan.protocol;
    let t = plan.models.ddpm.diffusion.timesteps;
    for row in &ROWS {
        if dir.join("rows").join(format!("{}.json", row.id)).exists() {
            continue;
        }
        let n = row.samples(p);
        if matches!(row.source, Source::Ddpm(_) | Source::Ancestral) {
            secs += (n * row.calls_per_sample(t)) as f64 * pr.ddpm_call_secs;
        }
        secs += n.min(p.fid_samples) as f64 * pr.inception_secs;
    }
    if !dir.join("bpd-ddpm.json").exists() {
        secs += (p.nll_images * t) as f64 * pr.ddpm_call_secs;
    }
    secs
}

/// Trains (or continues) one model until its `run.time_limit_minutes` (or, without one, its
/// `run.steps`). A signal stops it with a checkpoint and ends the command.
fn train_model(run: &Path, cfg: &TrainConfig, device: Device, stop: &StopRequest) -> Result<()> {
    let resume = run.join("config.toml").is_file();
    let finished = match budget_left(cfg, run) {
        Some(secs) => secs <= 0.0,
        None => models::latest_state(run).is_ok_and(|s| s.step >= cfg.run.steps),
    };
    if finished {
        eprintln!("  {}: trained", run.display());
        return Ok(());
    }
    let opts = TrainOptions {
        progress: true,
        stop: stop.flag.clone(),
        evaluator: crate::train_eval::evaluator(cfg, device)?,
        parallel: None,
    };
    if models::train(run, cfg, resume, &opts)?.interrupted {
        eprintln!(
            "stopped training {}; run the same command again to continue",
            run.display()
        );
        return Err(stop.interrupted());
    }
    Ok(())
}

/// The real-vs-real floor at a row's n: the first n training digits scored like samples.
fn floor(plan: &Plan, dir: &Path, scorer: &Scorer, n: usize) -> Result<Scores> {
    let p = &plan.protocol;
    let path = dir.join(format!(
        "eval/floor-{}-{}.json",
        n.min(p.fid_samples),
        n.min(p.cls_samples)
    ));
    if let Some(s) = read_json_if_present(&path)? {
        return Ok(s);
    }
    let train = ImageSource::Split {
        path: plan.data.clone(),
        split: "train".into(),
    };
    let images = train.load(Some(n))?;
    let scores = scorer.score(images.view())?;
    write_json(&path, &scores)?;
    Ok(scores)
}

/// Draws (or reads back) a row's samples, scores them and keeps the result.
fn score_row(
    plan: &Plan,
    dir: &Path,
    row: &RowSpec,
    scorer: &Scorer,
    device: Device,
    stop: &StopRequest,
    progress: &mut Progress,
) -> Result<RowResult> {
    let path = dir.join("rows").join(format!("{}.json", row.id));
    if let Some(r) = read_json_if_present(&path)? {
        return Ok(r);
    }
    let p = &plan.protocol;
    let (images, secs_per_image) = draw_images(plan, dir, row, device, stop)?;
    if matches!(row.source, Source::Ddpm(_) | Source::Ancestral) {
        let calls = row.calls_per_sample(plan.models.ddpm.diffusion.timesteps);
        progress.ddpm_call_secs = secs_per_image / calls as f64;
    }
    let scores = scorer.score(images.view())?;
    if let Some(s) = scorer.inception_secs_per_image.get() {
        progress.inception_secs = s;
    }
    let r = RowResult {
        id: row.id.into(),
        scores,
        samples: row.samples(p),
        sample_s_per_image: secs_per_image,
    };
    write_json(&path, &r)?;
    Ok(r)
}

/// The samples of a row (uint8 `[N, 28, 28, 1]`) and seconds per image.
fn draw_images(
    plan: &Plan,
    dir: &Path,
    row: &RowSpec,
    device: Device,
    stop: &StopRequest,
) -> Result<(Array4<u8>, f64)> {
    let p = &plan.protocol;
    let stopped = || stop.interrupted();
    let report = |k: usize, n: usize| eprintln!("  {}: chunk {k}/{n}", row.id);
    let hw = (28, 28);
    match row.source {
        Source::Ddpm(_) | Source::Ancestral => {
            let m = models::load_ddpm(&dir.join("ddpm"), Weights::Ema, device)?;
            let spec = match row.source {
                Source::Ddpm(spec) => spec.to_string(),
                _ => m.diffusion.num_timesteps().to_string(),
            };
            let mut draw = |n: usize, seed: u64| {
                let d =
                    crate::compare::sample::sample_ddpm(&m, &spec, n, p.batch_size, seed, device)?;
                Ok(crate::compare::sample::crop_to(d.images, hw))
            };
            draw_row(dir, row, p, &mut draw, &stop.flag, &stopped, report)
        }
        Source::Gan | Source::Vae => {
            let name = if row.source == Source::Gan {
                "gan"
            } else {
                "vae"
            };
            let m = models::load_baseline(&dir.join(name), device)?;
            let mut draw = |n: usize, seed: u64| {
                let t = models::sample_baseline(&m, n, p.batch_size, seed, device);
                Ok(crate::compare::sample::crop_to(t, hw))
            };
            draw_row(dir, row, p, &mut draw, &stop.flag, &stopped, report)
        }
    }
}

/// Bits/dim of the DDPM (`ddpm`) or the VAE (`vae`) on the first `nll_images` test images.
fn model_bpd(plan: &Plan, dir: &Path, name: &str, device: Device) -> Result<Bpd> {
    let path = dir.join(format!("bpd-{name}.json"));
    if let Some(b) = read_json_if_present(&path)? {
        return Ok(b);
    }
    let test = ImageSource::Split {
        path: plan.data.clone(),
        split: "test".into(),
    };
    let images = test.load(Some(plan.protocol.nll_images))?;
    let x = images_to_nchw_tensor(images.slice(s![.., .., .., ..]));
    let opts = NllOptions {
        seed: plan.protocol.seed,
        progress: true,
        ..NllOptions::default()
    };
    let run: PathBuf = dir.join(name);
    let rep = bits_per_dim::of_run(&run, &x, device, &opts)?;
    let b = Bpd {
        total: rep.total,
        prior: rep.prior,
        vb_sum: rep.vb_sum,
        decoder: rep.decoder,
        n: rep.n,
    };
    write_json(&path, &b)?;
    Ok(b)
}
