//! The results of a reproduction: `results.json` (one object per row), `results.md` (the table,
//! the protocol, the DDPM's curve), `results.png` (6×6 samples of every row beside the real
//! digits, titled with their scores) and `curve.png` (the DDPM's FID_cls against training minutes).
use std::path::Path;

use anyhow::Result;
use ddpm_metrics::ImageSource;
use ddpm_train::viz;
use serde::Serialize;
use serde_json::Value;

use super::phases::{Bpd, Outcome};
use super::plan::{write_text, Plan};
use super::rows::{RowSpec, Source};
use super::score::Scores;
use crate::models;

/// Images per grid of `results.png` (6 × 6).
const GRID: usize = 36;

/// The real-vs-real floor of a row.
#[derive(Debug, Clone, Serialize)]
pub struct Floor {
    /// FID of `fid_n` training digits against as many test digits.
    pub fid: f64,
    /// FID_cls of `cls_n` training digits against as many test digits.
    pub fid_cls: f64,
    /// IS_cls of the `cls_n` training digits.
    pub is_cls: f64,
}

/// One row of `results.json`: its scores (`fid`, `fid_n`, `fid_cls`, `is_cls`, `is_cls_std`,
/// `cls_n`, flattened into the row) and the rest.
#[derive(Debug, Clone, Serialize)]
pub struct ResultRow {
    /// `DDPM`, `GAN`, `VAE`.
    pub model: String,
    /// `DPM-Solver++ 20`, `DDIM 50`, `ancestral 1000`, `generator`, `decoder mean`.
    pub sampler: String,
    /// The protocol's scores.
    #[serde(flatten)]
    pub scores: Scores,
    /// Bits/dim on the test images (the DDPM's variational bound, the VAE's negative ELBO).
    pub bpd: Option<f64>,
    /// Training wall-clock minutes (the run's last checkpoint).
    pub train_minutes: f64,
    /// Training steps.
    pub train_steps: usize,
    /// Training images per second.
    pub train_images_per_s: f64,
    /// Sampling seconds per image.
    pub sample_s_per_image: f64,
    /// The real-vs-real floor at the same n.
    pub floor: Floor,
}

/// One point of the DDPM's curve.
#[derive(Debug, Clone, Serialize)]
pub struct CurvePoint {
    /// Training step.
    pub step: usize,
    /// Training minutes at that step.
    pub minutes: f64,
    /// FID_cls of the evaluation (`eval_samples` DPM-Solver++ 20 samples against training digits).
    pub fid_cls: f64,
}

/// `results.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    /// `mnist`.
    pub experiment: String,
    /// UTC date and time the results were written.
    pub date: String,
    /// The machine (CPU model and cores, or GPU).
    pub machine: String,
    /// The command line of the session that wrote the results.
    pub command: String,
    /// The rows, in table order.
    pub rows: Vec<ResultRow>,
    /// Test images of bits/dim.
    pub bpd_images: usize,
    /// The DDPM's FID_cls during training.
    pub ddpm_curve: Vec<CurvePoint>,
    /// The classifier and the Inception.
    pub networks: [String; 2],
    /// The plan.
    pub plan: Plan,
}

/// Builds the results of `out` and writes the three files (and `curve.png`) into `dir`.
pub fn write_all(plan: &Plan, dir: &Path, out: &Outcome, machine: String) -> Result<Results> {
    let mut rows = Vec::new();
    for ((spec, r), floor) in out.rows.iter().zip(&out.floors) {
        rows.push(result_row(
            dir,
            spec,
            &r.scores,
            r.sample_s_per_image,
            floor,
            &out.bpd,
        )?);
    }
    let results = Results {
        experiment: plan.experiment.clone(),
        date: now_utc(),
        machine,
        command: command_line(),
        rows,
        bpd_images: out.bpd.0.n,
        ddpm_curve: curve(&dir.join("ddpm"))?,
        networks: [out.networks.0.clone(), out.networks.1.clone()],
        plan: plan.clone(),
    };
    super::rows::write_json(&dir.join("results.json"), &results)?;
    write_text(&dir.join("results.md"), &markdown(&results))?;
    viz::save_png(&picture(plan, dir, &results)?, &dir.join("results.png"))?;
    viz::save_png(&curve_plot(&results.ddpm_curve), &dir.join("curve.png"))?;
    Ok(results)
}

fn result_row(
    dir: &Path,
    spec: &RowSpec,
    s: &Scores,
    sample_s_per_image: f64,
    floor: &Scores,
    bpd: &(Bpd, Bpd),
) -> Result<ResultRow> {
    let (run, bpd) = match spec.source {
        Source::Ddpm(_) | Source::Ancestral => ("ddpm", Some(bpd.0.total)),
        Source::Gan => ("gan", None),
        Source::Vae => ("vae", Some(bpd.1.total)),
    };
    let run = dir.join(run);
    let state = models::latest_state(&run)?;
    let batch = models::run_config(&run)?.data.batch_size;
    let sampler = match spec.source {
        Source::Ancestral => format!(
            "ancestral {}",
            models::run_config(&run)?.diffusion.timesteps
        ),
        _ => spec.sampler.to_string(),
    };
    Ok(ResultRow {
        model: spec.model.into(),
        sampler,
        scores: s.clone(),
        bpd,
        train_minutes: state.elapsed_secs / 60.0,
        train_steps: state.step,
        train_images_per_s: (state.step * batch) as f64 / state.elapsed_secs.max(1e-9),
        sample_s_per_image,
        floor: Floor {
            fid: floor.fid,
            fid_cls: floor.fid_cls,
            is_cls: floor.is_cls,
        },
    })
}

/// The DDPM's evaluations from its `metrics.jsonl`, each with the training minutes of the last
/// log record at or before its step.
fn curve(run: &Path) -> Result<Vec<CurvePoint>> {
    let records: Vec<Value> = ddpm_train::run_dir::RunDir::open(run)?.read_metrics()?;
    let mut clock: Vec<(usize, f64)> = records
        .iter()
        .filter_map(|r| Some((r["step"].as_u64()? as usize, r["elapsed_s"].as_f64()?)))
        .collect();
    clock.sort_by_key(|c| c.0);
    let at = |step: usize| {
        clock
            .iter()
            .take_while(|c| c.0 <= step)
            .last()
            .map_or(0.0, |c| c.1)
    };
    let mut points: Vec<CurvePoint> = records
        .iter()
        .filter_map(|r| {
            let step = r["step"].as_u64()? as usize;
            Some(CurvePoint {
                step,
                minutes: at(step) / 60.0,
                fid_cls: r["fid_cls"].as_f64()?,
            })
        })
        .collect();
    // A resumed run may have evaluated a step twice (a killed session's record): keep the last.
    points.reverse();
    points.dedup_by_key(|p| p.step);
    points.reverse();
    points.sort_by_key(|p| p.step);
    Ok(points)
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "—".into(), |x| format!("{x:.3}"))
}

/// `results.md`.
pub fn markdown(r: &Results) -> String {
    let mut s = format!(
        "# DDPM vs GAN vs VAE on MNIST\n\n{} · {} · `{}`\n\n",
        r.date, r.machine, r.command
    );
    s.push_str("| model | sampler | FID (n) | floor | FID_cls (n) | floor | IS_cls | floor | bits/dim | training | img/s | s/sample |\n");
    s.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for row in &r.rows {
        s.push_str(&format!(
            "| {} | {} | {:.2} ({}) | {:.2} | {:.3} ({}) | {:.3} | {:.2} ± {:.2} | {:.2} | {} | {:.1} min, {} steps | {:.0} | {:.4} |\n",
            row.model, row.sampler, row.scores.fid, row.scores.fid_n, row.floor.fid,
            row.scores.fid_cls, row.scores.cls_n, row.floor.fid_cls, row.scores.is_cls,
            row.scores.is_cls_std, row.floor.is_cls, opt(row.bpd),
            row.train_minutes, row.train_steps, row.train_images_per_s, row.sample_s_per_image,
        ));
    }
    s.push_str(&protocol_text(r));
    let run = &r.plan.models.ddpm.run;
    s.push_str(&format!("\n## The DDPM during training\n\nFID_cls of {} DPM-Solver++ 20 samples from the EMA weights against the first {} training digits, every {} steps (`run.eval_every`; see `curve.png`; not comparable with the table's FID_cls, which has another n and test digits):\n\n| step | minutes | FID_cls |\n|---:|---:|---:|\n", run.eval_samples, run.eval_reference_images, run.eval_every));
    for c in &r.ddpm_curve {
        s.push_str(&format!(
            "| {} | {:.1} | {:.3} |\n",
            c.step, c.minutes, c.fid_cls
        ));
    }
    s
}

fn protocol_text(r: &Results) -> String {
    let p = &r.plan.protocol;
    let preset = if r.plan.device.starts_with("cuda") {
        "mnist"
    } else {
        "mnist-cpu"
    };
    let budget = if r.plan.minutes_per_model > 0.0 {
        format!(
            "each model trained for {} minutes of training wall clock (`run.time_limit_minutes`; \
             grids and evaluations not counted), recipes of the preset `{preset}`",
            r.plan.minutes_per_model
        )
    } else {
        format!("each model trained for the step count of the preset `{preset}`")
    };
    let t = r.plan.models.ddpm.diffusion.timesteps;
    format!(
        "\n## Protocol\n\n\
- Training: {budget} on the MNIST training split; the DDPM samples from its EMA weights.\n\
- FID: the FID Inception ({}; pytorch-fid's convention: pool3 features, images resized to 299×299) on the first {} samples against the first {} MNIST test images.\n\
- FID_cls and IS_cls: {}; FID_cls is the Fréchet distance of its penultimate features on the first {} samples against the first {} test images, IS_cls the Inception Score of its softmax (10 splits).\n\
- floor: the same score of the first n training digits against the same test digits (real vs real at the same n): where a perfect generator would land at that n, up to sampling noise.\n\
- DDPM rows: DPM-Solver++(2M) 20 steps, DDIM 50 steps (η = 0), ancestral sampling on all T steps{}.\n\
- Bits/dim: the DDPM's full variational bound (L_T + Σ L_t + L_0, all T steps) and the VAE's negative ELBO, on the first {} test images (256 bins on x = p/127.5 − 1).\n\
- img/s: training images per second over the training minutes; s/sample: wall clock of drawing a row's samples (batch {}) / n.\n\
- Seeds: samples from seed {} (one stream per row and chunk of {}).\n",
        r.networks[1],
        p.fid_samples,
        p.fid_samples,
        r.networks[0],
        p.cls_samples,
        p.cls_samples,
        if p.ancestral_samples < p.cls_samples.max(p.fid_samples) {
            format!(
                " on {} samples only ({t} network calls per image; its n and its floor say so)",
                p.ancestral_samples
            )
        } else {
            String::new()
        },
        r.bpd_images,
        p.batch_size,
        p.seed,
        p.chunk,
    )
}

/// `results.png`: the real digits, then every row's first 36 samples, each titled, in two rows.
fn picture(plan: &Plan, dir: &Path, r: &Results) -> Result<image::RgbImage> {
    let test = ImageSource::Split {
        path: plan.data.clone(),
        split: "test".into(),
    }
    .load(Some(GRID))?;
    let f = &r.rows[0].floor;
    let mut tiles = vec![viz::captioned(
        &viz::grid(test.view(), 6),
        &[
            "MNIST test digits".into(),
            format!("floor: FID {:.2}", f.fid),
            format!("FID_cls {:.3}, IS_cls {:.2}", f.fid_cls, f.is_cls),
        ],
    )];
    for (row, spec) in r.rows.iter().zip(super::rows::ROWS.iter()) {
        let first = dir.join("samples").join(spec.id).join("chunk-000.h5");
        let images = ImageSource::Samples { path: first }.load(Some(GRID))?;
        tiles.push(viz::captioned(
            &viz::grid(images.view(), 6),
            &[
                format!("{}, {}", row.model, row.sampler),
                format!("FID {:.2} (n {})", row.scores.fid, row.scores.fid_n),
                format!(
                    "FID_cls {:.3}, IS_cls {:.2}",
                    row.scores.fid_cls, row.scores.is_cls
                ),
            ],
        ));
    }
    // Two rows of three: the real digits and the DDPM's rows, then the DDPM's last row and the
    // baselines.
    let (top, bottom) = tiles.split_at(tiles.len().div_ceil(2));
    Ok(viz::vstack(
        &[viz::hstack(top, 16), viz::hstack(bottom, 16)],
        16,
    ))
}

fn curve_plot(points: &[CurvePoint]) -> image::RgbImage {
    let panel = viz::PlotPanel::new(
        "FID_cls (DPM-Solver++ 20)",
        points.iter().map(|p| p.minutes).collect(),
        points.iter().map(|p| p.fid_cls).collect(),
    )
    .y_label("FID_cls (lower is better)")
    .log_y(true)
    .color([214, 39, 40]);
    viz::plot("The DDPM during training", "training minutes", &[panel])
}

/// This process's command line, the program as `ddpm-cli`.
fn command_line() -> String {
    let mut args = std::env::args();
    let _program = args.next();
    std::iter::once("ddpm-cli".to_string())
        .chain(args.map(|a| crate::outputs::shell_quote(Path::new(&a))))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The current UTC time as `YYYY-MM-DD HH:MM UTC`.
fn now_utc() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02} UTC",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute()
    )
}

/// The machine: the GPU's name on CUDA, else the CPU model and the CPUs this process may use.
pub fn machine(device: tch::Device) -> String {
    let report = ddpm_nets::device::DeviceReport::collect();
    if device.is_cuda() {
        if let Some(d) = report.cuda_devices.first() {
            return format!("{} ({:.0} GiB)", d.name, d.total_memory_mib / 1024.0);
        }
    }
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "CPU".into());
    format!("{model}, {} CPU cores", report.cpu_available)
}
