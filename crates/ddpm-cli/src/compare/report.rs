//! The comparison's results: one [`Row`] per model and sampler, and the files made of them
//! (`report.md`, `report.json`, `report.png`).
use std::path::Path;

use anyhow::{Context, Result};
use ddpm_metrics::NllReport;
use ddpm_train::viz;
use serde::Serialize;

use super::config::CompareConfig;

/// One row of the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    /// `DDPM`, `GAN` or `VAE`.
    pub model: String,
    /// Sampler and steps (`ancestral 1000`, `DDIM 50`, `generator`, `decoder mean`).
    pub sampler: String,
    /// Samples drawn.
    pub n: usize,
    /// FID with the Inception network.
    pub fid_inception: Option<f64>,
    /// FID with the classifier features.
    pub fid_cls: f64,
    /// IS with the classifier probabilities: mean.
    pub is_cls_mean: f64,
    /// IS_cls standard deviation over the splits.
    pub is_cls_std: f64,
    /// Bits/dim (DDPM bound, VAE negative ELBO), on the first `nll_images` reference images.
    pub bpd: Option<f64>,
    /// Parameters of the sampling network.
    pub parameters: usize,
    /// Training steps of the loaded checkpoint.
    pub train_steps: usize,
    /// Training wall-clock seconds (`state.json` of the last checkpoint).
    pub train_secs: f64,
    /// Sampling seconds per image.
    pub sample_secs_per_image: f64,
}

/// What a comparison produced.
#[derive(Debug, Clone, Serialize)]
pub struct CompareReport {
    /// The rows, in order.
    pub rows: Vec<Row>,
    /// Bits/dim details per model.
    pub nll: Vec<(String, NllReport)>,
    /// Reference images used for FID / FID_cls.
    pub reference_images: usize,
    /// The classifier's description.
    pub classifier: String,
    /// The Inception network's description, when FID-Inception was computed.
    pub inception: Option<String>,
    /// The configuration.
    pub config: CompareConfig,
}

/// Writes `report.md`, `report.json` and `report.png` (the `grids`, one per row, side by side)
/// into `out_dir`.
pub fn write_report(
    out_dir: &Path,
    report: &CompareReport,
    grids: &[image::RgbImage],
) -> Result<()> {
    let write = |name: &str, text: &str| {
        let p = out_dir.join(name);
        std::fs::write(&p, text).with_context(|| format!("cannot write {}", p.display()))
    };
    write("report.md", &render_markdown(report))?;
    write(
        "report.json",
        &serde_json::to_string_pretty(report).expect("serialisable"),
    )?;
    viz::save_png(&viz::hstack(grids, 12), &out_dir.join("report.png"))?;
    Ok(())
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "—".into(), |x| format!("{x:.digits$}"))
}

/// The Markdown report: the table, the bits/dim parts, and how the numbers were made.
pub fn render_markdown(r: &CompareReport) -> String {
    let mut s = String::from("# DDPM vs GAN vs VAE on MNIST\n\n");
    s.push_str(
        "| model | sampler / steps | n | FID-Inception | FID_cls | IS_cls | bits/dim | parameters | training (steps, time) | sampling s/image |\n",
    );
    s.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for row in &r.rows {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {:.3} | {:.3} ± {:.3} | {} | {} | {} steps, {:.0} s | {:.4} |\n",
            row.model,
            row.sampler,
            row.n,
            opt(row.fid_inception, 2),
            row.fid_cls,
            row.is_cls_mean,
            row.is_cls_std,
            opt(row.bpd, 3),
            row.parameters,
            row.train_steps,
            row.train_secs,
            row.sample_secs_per_image,
        ));
    }
    s.push_str(&bits_per_dim_section(r));
    s.push_str(&setup_section(r));
    s
}

fn bits_per_dim_section(r: &CompareReport) -> String {
    let mut s = String::from("\n## Bits/dim\n\n");
    if r.nll.is_empty() {
        s.push_str("Not computed (nll_images = 0).\n");
    }
    for (name, n) in &r.nll {
        match n.vb_sum {
            Some(vb) => s.push_str(&format!(
                "- {name}: {:.4} bits/dim = L_T {:.4} + Σ_(t≥1) L_t {:.4} + L_0 {:.4} (full variational bound over all T, {} test images, one x_t sample per step)\n",
                n.total, n.prior, vb, n.decoder, n.n
            )),
            None => s.push_str(&format!(
                "- {name}: {:.4} bits/dim = KL {:.4} + reconstruction {:.4} (negative ELBO, one latent sample, {} test images)\n",
                n.total, n.prior, n.decoder, n.n
            )),
        }
    }
    s
}

/// A model's run directory in backticks, or "not included".
fn run_label(e: &super::config::ModelEntry) -> String {
    if e.include {
        format!("`{}`", e.run.display())
    } else {
        "not included".into()
    }
}

fn setup_section(r: &CompareReport) -> String {
    let c = &r.config;
    format!(
        "\n## Setup\n\n- Reference: `{}`, first {} images (FID, FID_cls); bits/dim on the first {} (same discretisation: 256 bins on x = p/127.5 − 1).\n- {}; FID_cls = Fréchet distance of its penultimate features, IS_cls = Inception Score of its softmax ({} splits).\n- FID-Inception: {}.\n- Runs: DDPM {}, GAN {}, VAE {}; DDPM samples from the EMA weights. Seed {}.\n- Training time = `elapsed_secs` of the run's last checkpoint; sampling time = wall clock of drawing the row's samples (batch {}) / n, device `{}`.\n- `report.png`: the first {} samples of each row, left to right in table order.\n",
        c.reference,
        r.reference_images,
        c.nll_images,
        r.classifier,
        c.splits,
        r.inception.as_deref().unwrap_or("not computed (fid_inception = false)"),
        run_label(&c.ddpm),
        run_label(&c.gan),
        run_label(&c.vae),
        c.seed,
        c.batch_size,
        c.device,
        c.grid_images,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_has_one_line_per_row() {
        let row = Row {
            model: "GAN".into(),
            sampler: "generator".into(),
            n: 4,
            fid_inception: None,
            fid_cls: 1.5,
            is_cls_mean: 2.0,
            is_cls_std: 0.1,
            bpd: None,
            parameters: 10,
            train_steps: 2,
            train_secs: 3.0,
            sample_secs_per_image: 0.01,
        };
        let r = CompareReport {
            rows: vec![
                row.clone(),
                Row {
                    model: "VAE".into(),
                    bpd: Some(1.25),
                    ..row
                },
            ],
            nll: Vec::new(),
            reference_images: 10,
            classifier: "classifier x".into(),
            inception: None,
            config: CompareConfig::default(),
        };
        let md = render_markdown(&r);
        assert!(md.contains("| GAN | generator | 4 | — | 1.500 | 2.000 ± 0.100 | — | 10 | 2 steps, 3 s | 0.0100 |"), "{md}");
        assert!(
            md.contains("| VAE | generator | 4 | — | 1.500 | 2.000 ± 0.100 | 1.250 |"),
            "{md}"
        );
    }
}
