//! `ddpm-cli schedule`: print or plot a noise schedule and its derived tables (computed by ddpm-math).
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ddpm_math::{
    BetaSchedule, GaussianDiffusion, LossType, ModelMeanType, ModelVarType, SpacedDiffusion,
};
use image::{Rgb, RgbImage};
use serde::Serialize;

/// Arguments of `ddpm-cli schedule`.
#[derive(clap::Args)]
pub struct ScheduleArgs {
    /// Schedule name: linear, cosine, quad, sigmoid, const or jsd.
    #[arg(long, default_value = "linear")]
    schedule: String,
    /// Number of diffusion steps T.
    #[arg(long, default_value_t = 1000)]
    timesteps: usize,
    /// Respace the process: section counts "a,b,c" or "ddimN"; the tables are then those of the respaced process.
    #[arg(long, value_name = "SPEC")]
    respace: Option<String>,
    /// Print one JSON object with the arrays betas, alphas_cumprod, alphas_cumprod_prev, posterior_variance,
    /// posterior_log_variance_clipped, posterior_mean_coef1, posterior_mean_coef2 and timesteps (the original
    /// indices kept).
    #[arg(long)]
    json: bool,
    /// Draw β_t (top), ᾱ_t (middle) and log SNR = log(ᾱ_t/(1 − ᾱ_t)) (bottom) against t into this PNG.
    #[arg(long, value_name = "FILE.png")]
    plot: Option<PathBuf>,
}

/// The JSON printed by `--json`. Every float is written by serde_json with the shortest representation that
/// round-trips to the same f64.
///
/// These seven tables are finite for every diffusion that ddpm-math accepts (0 < β ≤ 1, 1 − β_0 < 1, T ≥ 2):
/// `1 − ᾱ_t ≥ β_0 > 0` and `β̃_t > 0` for `t ≥ 1`. Non-finite values cannot be written as JSON, so `run` checks
/// this anyway and fails, naming the table, rather than print an invalid document.
#[derive(Serialize)]
struct ScheduleJson<'a> {
    betas: &'a [f64],
    alphas_cumprod: &'a [f64],
    alphas_cumprod_prev: &'a [f64],
    posterior_variance: &'a [f64],
    posterior_log_variance_clipped: &'a [f64],
    posterior_mean_coef1: &'a [f64],
    posterior_mean_coef2: &'a [f64],
    timesteps: &'a [usize],
}

pub fn run(args: ScheduleArgs) -> Result<()> {
    let schedule: BetaSchedule = args.schedule.parse().context("--schedule")?;
    let betas = schedule
        .betas(args.timesteps)
        .with_context(|| format!("{schedule} schedule with {} timesteps", args.timesteps))?;
    // The tables do not depend on the modelling choices; these are DDPM's.
    let base = GaussianDiffusion::new(
        betas,
        ModelMeanType::Epsilon,
        ModelVarType::FixedLarge,
        LossType::Simple,
    )
    .with_context(|| format!("{schedule} schedule with {} timesteps", args.timesteps))?;
    let spaced = match &args.respace {
        Some(spec) => Some(
            SpacedDiffusion::from_spec(&base, spec)
                .with_context(|| format!("--respace {spec:?}"))?,
        ),
        None => None,
    };
    let (diffusion, timesteps): (&GaussianDiffusion, Vec<usize>) = match &spaced {
        Some(s) => (s.diffusion(), s.timestep_map().to_vec()),
        None => (&base, (0..base.num_timesteps()).collect()),
    };

    if args.json {
        let doc = ScheduleJson {
            betas: slice(diffusion.betas()),
            alphas_cumprod: slice(diffusion.alphas_cumprod()),
            alphas_cumprod_prev: slice(diffusion.alphas_cumprod_prev()),
            posterior_variance: slice(diffusion.posterior_variance()),
            posterior_log_variance_clipped: slice(diffusion.posterior_log_variance_clipped()),
            posterior_mean_coef1: slice(diffusion.posterior_mean_coef1()),
            posterior_mean_coef2: slice(diffusion.posterior_mean_coef2()),
            timesteps: &timesteps,
        };
        for (name, values) in [
            ("betas", doc.betas),
            ("alphas_cumprod", doc.alphas_cumprod),
            ("alphas_cumprod_prev", doc.alphas_cumprod_prev),
            ("posterior_variance", doc.posterior_variance),
            (
                "posterior_log_variance_clipped",
                doc.posterior_log_variance_clipped,
            ),
            ("posterior_mean_coef1", doc.posterior_mean_coef1),
            ("posterior_mean_coef2", doc.posterior_mean_coef2),
        ] {
            if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                bail!(
                    "{name}[{i}] = {} is not finite and cannot be written as JSON",
                    values[i]
                );
            }
        }
        println!("{}", serde_json::to_string(&doc)?);
    } else {
        print_summary(
            schedule,
            args.timesteps,
            args.respace.as_deref(),
            diffusion,
            &timesteps,
        );
    }

    if let Some(path) = &args.plot {
        plot(path, diffusion, &timesteps)?;
        tracing::info!(path = %path.display(), "wrote the schedule plot");
    }
    Ok(())
}

fn slice(a: &ndarray::Array1<f64>) -> &[f64] {
    a.as_slice().expect("ddpm-math tables are contiguous")
}

fn print_summary(
    schedule: BetaSchedule,
    num_timesteps: usize,
    respace: Option<&str>,
    d: &GaussianDiffusion,
    timesteps: &[usize],
) {
    let k_len = d.num_timesteps();
    match respace {
        Some(spec) => println!(
            "{schedule} schedule, T = {num_timesteps}, respaced by {spec:?}: {k_len} of {num_timesteps} steps kept"
        ),
        None => println!("{schedule} schedule, T = {num_timesteps}"),
    }
    let betas = d.betas();
    let (k_min, k_max) = argmin_argmax(slice(betas));
    println!(
        "beta:       min {:.6e} (t = {}), max {:.6e} (t = {})",
        betas[k_min], timesteps[k_min], betas[k_max], timesteps[k_max]
    );
    let ac = d.alphas_cumprod();
    println!(
        "alpha_bar:  {:.6e} (t = {}) down to {:.6e} (t = {})",
        ac[0],
        timesteps[0],
        ac[k_len - 1],
        timesteps[k_len - 1]
    );
    let snr = d.log_snr();
    println!("log SNR:    {:.4} down to {:.4}", snr[0], snr[k_len - 1]);
    println!(
        "{:>6} {:>6} {:>14} {:>14} {:>14} {:>10}",
        "k", "t", "beta", "alpha_bar", "posterior_var", "log_snr"
    );
    let rows: Vec<usize> = if k_len <= 12 {
        (0..k_len).collect()
    } else {
        (0..5).chain(k_len - 5..k_len).collect()
    };
    for (i, &k) in rows.iter().enumerate() {
        if i > 0 && k != rows[i - 1] + 1 {
            println!("{:>6}", "…");
        }
        println!(
            "{:>6} {:>6} {:>14.6e} {:>14.6e} {:>14.6e} {:>10.4}",
            k,
            timesteps[k],
            betas[k],
            ac[k],
            d.posterior_variance()[k],
            snr[k]
        );
    }
}

fn argmin_argmax(values: &[f64]) -> (usize, usize) {
    let mut lo = 0;
    let mut hi = 0;
    for (i, &v) in values.iter().enumerate() {
        if v < values[lo] {
            lo = i;
        }
        if v > values[hi] {
            hi = i;
        }
    }
    (lo, hi)
}

const PANEL_W: u32 = 900;
const PANEL_H: u32 = 240;
const MARGIN_L: u32 = 50;
const MARGIN_R: u32 = 20;
const MARGIN_V: u32 = 16;
const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
const BLACK: Rgb<u8> = Rgb([0, 0, 0]);
const GREY: Rgb<u8> = Rgb([215, 215, 215]);

/// Three stacked panels (β_t, ᾱ_t, log SNR) against the original index t, each with its own linear y-range;
/// grey lines at the quarters of both axes, and at 0 in the log-SNR panel. Non-finite points are skipped.
fn plot(path: &Path, d: &GaussianDiffusion, timesteps: &[usize]) -> Result<()> {
    let series = [
        (slice(d.betas()).to_vec(), Rgb([31, 119, 180])),
        (slice(d.alphas_cumprod()).to_vec(), Rgb([44, 160, 44])),
        (d.log_snr().to_vec(), Rgb([214, 39, 40])),
    ];
    let mut img = RgbImage::from_pixel(PANEL_W, PANEL_H * series.len() as u32, WHITE);
    let t_max = (*timesteps.last().expect("at least two timesteps")).max(1) as f64;
    for (panel, (values, color)) in series.iter().enumerate() {
        let top = panel as u32 * PANEL_H + MARGIN_V;
        let bottom = (panel as u32 + 1) * PANEL_H - MARGIN_V;
        let (left, right) = (MARGIN_L, PANEL_W - MARGIN_R);
        let finite = values.iter().copied().filter(|v| v.is_finite());
        let (mut lo, mut hi) = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
        if !lo.is_finite() {
            (lo, hi) = (0.0, 1.0);
        } else if hi - lo <= f64::EPSILON * hi.abs().max(1.0) {
            let pad = 0.5 * hi.abs().max(1.0);
            (lo, hi) = (lo - pad, hi + pad);
        }
        let x_of = |t: f64| left as f64 + t / t_max * (right - left) as f64;
        let y_of = |v: f64| bottom as f64 - (v - lo) / (hi - lo) * (bottom - top) as f64;
        for q in 1..4 {
            let y = top + (bottom - top) * q / 4;
            line(
                &mut img,
                (left as f64, y as f64),
                (right as f64, y as f64),
                GREY,
            );
            let x = left + (right - left) * q / 4;
            line(
                &mut img,
                (x as f64, top as f64),
                (x as f64, bottom as f64),
                GREY,
            );
        }
        if lo < 0.0 && hi > 0.0 {
            let y0 = y_of(0.0);
            line(
                &mut img,
                (left as f64, y0),
                (right as f64, y0),
                Rgb([150, 150, 150]),
            );
        }
        line(
            &mut img,
            (left as f64, top as f64),
            (left as f64, bottom as f64),
            BLACK,
        );
        line(
            &mut img,
            (left as f64, bottom as f64),
            (right as f64, bottom as f64),
            BLACK,
        );
        let mut previous: Option<(f64, f64)> = None;
        for (&t, &v) in timesteps.iter().zip(values) {
            if !v.is_finite() {
                previous = None;
                continue;
            }
            let point = (x_of(t as f64), y_of(v));
            let start = previous.unwrap_or(point);
            // Two pixels thick.
            line(&mut img, start, point, *color);
            line(
                &mut img,
                (start.0, start.1 + 1.0),
                (point.0, point.1 + 1.0),
                *color,
            );
            previous = Some(point);
        }
    }
    img.save(path)
        .with_context(|| format!("cannot write the plot to {}", path.display()))?;
    Ok(())
}

/// A straight line by simple DDA, clipped to the image.
fn line(img: &mut RgbImage, from: (f64, f64), to: (f64, f64), color: Rgb<u8>) {
    let steps = (to.0 - from.0)
        .abs()
        .max((to.1 - from.1).abs())
        .ceil()
        .max(1.0) as usize;
    for i in 0..=steps {
        let s = i as f64 / steps as f64;
        let x = (from.0 + s * (to.0 - from.0)).round();
        let y = (from.1 + s * (to.1 - from.1)).round();
        if x >= 0.0 && y >= 0.0 && (x as u32) < img.width() && (y as u32) < img.height() {
            img.put_pixel(x as u32, y as u32, color);
        }
    }
}
