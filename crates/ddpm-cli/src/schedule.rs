//! `ddpm-cli schedule`: print or plot a noise schedule and its derived tables (computed by ddpm-math).
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ddpm_math::{
    BetaSchedule, GaussianDiffusion, LossType, ModelMeanType, ModelVarType, SpacedDiffusion,
};
use serde::Serialize;

/// Arguments of `ddpm-cli schedule`.
#[derive(clap::Args)]
pub struct ScheduleArgs {
    /// Schedule name: linear, cosine, quad, sigmoid, const or jsd.
    #[arg(long, default_value = "linear", value_parser = crate::choices::schedule())]
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
    /// Draw β_t (top, log scale), ᾱ_t (middle) and log SNR = ln(ᾱ_t/(1 − ᾱ_t)) (bottom) against t
    /// into this PNG.
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
    if let Some(path) = &args.plot {
        crate::outputs::check_outputs(&[("--plot", path, crate::outputs::PNG)])?;
    }
    let schedule: BetaSchedule = args.schedule.parse().context("--schedule")?;
    let betas = schedule
        .betas(args.timesteps)
        .with_context(|| format!("--schedule {schedule} --timesteps {}", args.timesteps))?;
    // The tables do not depend on the modelling choices; these are DDPM's.
    let base = GaussianDiffusion::new(
        betas,
        ModelMeanType::Epsilon,
        ModelVarType::FixedLarge,
        LossType::Simple,
    )
    .with_context(|| format!("--schedule {schedule} --timesteps {}", args.timesteps))?;
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
        let title = match &args.respace {
            Some(spec) => format!(
                "{schedule} schedule, T = {}, respaced {spec} ({} steps)",
                args.timesteps,
                timesteps.len()
            ),
            None => format!("{schedule} schedule, T = {}", args.timesteps),
        };
        plot(path, &title, diffusion, &timesteps)?;
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

/// Three stacked panels (β_t, ᾱ_t, log SNR) against the original index t, each with its own y-range,
/// under `title`.
fn plot(path: &Path, title: &str, d: &GaussianDiffusion, timesteps: &[usize]) -> Result<()> {
    use ddpm_train::viz::{self, PlotPanel};
    let xs: Vec<f64> = timesteps.iter().map(|&t| t as f64).collect();
    let img = viz::plot(
        title,
        "t (diffusion step)",
        &[
            PlotPanel::new(
                "β_t: variance of the noise added at step t",
                xs.clone(),
                slice(d.betas()).to_vec(),
            )
            .y_label("β_t (log scale)")
            .color([31, 119, 180])
            .log_y(true),
            PlotPanel::new(
                "ᾱ_t = ∏ (1 − β_s), s ≤ t: signal kept",
                xs.clone(),
                slice(d.alphas_cumprod()).to_vec(),
            )
            .y_label("ᾱ_t")
            .color([44, 160, 44]),
            PlotPanel::new("log SNR = ln(ᾱ_t / (1 − ᾱ_t))", xs, d.log_snr().to_vec())
                .y_label("log SNR")
                .color([214, 39, 40]),
        ],
    );
    viz::save_png(&img, path)
        .with_context(|| format!("cannot write the plot to {}", path.display()))
}
