//! `compare.toml`: which runs to compare, how many samples, which reference images and networks.
//! The defaults are the command line's (`datasets/…`, `runs/…`, relative to the working folder).
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};

use crate::weights::{DEFAULT_MNIST_CLASSIFIER, POOL3_INCEPTION};

/// One DDPM row: a sampler spec and, optionally, its own sample count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplerRow {
    /// `ddimN` (DDIM, η = 0), `dpm++N` (DPM-Solver++(2M), N steps) or a respacing such as `1000`
    /// (ancestral sampling).
    pub spec: String,
    /// Samples for this row (default: the config's `samples`).
    #[serde(default)]
    pub samples: Option<usize>,
}

/// One model of the comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelEntry {
    /// Include this model.
    pub include: bool,
    /// Its run directory (trained here with `train.preset` when missing and `train.missing`).
    pub run: PathBuf,
    /// Extra `KEY=VALUE` overrides when training it here.
    pub set: Vec<String>,
}

impl Default for ModelEntry {
    /// Included, with no run directory (a table that names the model must give `run`).
    fn default() -> Self {
        Self {
            include: true,
            run: PathBuf::new(),
            set: Vec::new(),
        }
    }
}

/// What to do about missing run directories.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainMissing {
    /// Train a missing run (otherwise it is an error).
    pub missing: bool,
    /// The preset of runs trained here (`preset_for_model`).
    pub preset: String,
    /// `KEY=VALUE` overrides for every run trained here.
    pub set: Vec<String>,
}

impl Default for TrainMissing {
    fn default() -> Self {
        Self {
            missing: true,
            preset: "mnist-cpu".into(),
            set: Vec::new(),
        }
    }
}

/// `compare.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompareConfig {
    /// Where `report.md`, `report.json`, `report.png` and the samples go.
    pub out_dir: PathBuf,
    /// `auto`, `cpu`, `cuda`, `cuda:N`.
    pub device: String,
    /// libtorch CPU threads (0 = the CPUs the process may use).
    pub cpu_threads: usize,
    /// Seed of the samples and of the bound's noise.
    pub seed: u64,
    /// Samples per row.
    pub samples: usize,
    /// Reference images (the MNIST test split).
    pub reference: String,
    /// Reference images used for FID / FID_cls (the first N).
    pub reference_images: usize,
    /// Reference images for bits/dim (the first N; 0 = no bits/dim).
    pub nll_images: usize,
    /// Compute FID with the Inception network (slow on a CPU: a few images/s).
    pub fid_inception: bool,
    /// Cache of the reference images' Inception statistics (default `out_dir/reference-inception-stats.h5`);
    /// the same file format and source description as `ddpm-cli eval --real-stats`.
    pub reference_inception_stats: Option<PathBuf>,
    /// The TorchScript Inception of FID.
    pub inception: PathBuf,
    /// The digit classifier folder of FID_cls / IS_cls.
    pub classifier: PathBuf,
    /// Splits of IS_cls.
    pub splits: usize,
    /// Images per network call when sampling and evaluating.
    pub batch_size: usize,
    /// Images in each grid of `report.png`.
    pub grid_images: usize,
    /// The DDPM.
    pub ddpm: ModelEntry,
    /// The DDPM's rows: one per sampler setting.
    pub ddpm_rows: Vec<SamplerRow>,
    /// The GAN.
    pub gan: ModelEntry,
    /// The VAE.
    pub vae: ModelEntry,
    /// Training of missing runs.
    pub train: TrainMissing,
}

impl Default for CompareConfig {
    /// Small CPU settings: 256 samples per row (64 for 1000-step ancestral sampling), FID_cls /
    /// IS_cls against 2000 test images, bits/dim on 32 test images, no Inception FID.
    fn default() -> Self {
        let entry = |run: &str| ModelEntry {
            include: true,
            run: PathBuf::from(run),
            set: Vec::new(),
        };
        let row = |spec: &str, samples: Option<usize>| SamplerRow {
            spec: spec.into(),
            samples,
        };
        Self {
            out_dir: PathBuf::from("runs/compare"),
            device: "auto".into(),
            cpu_threads: 0,
            seed: 0,
            samples: 256,
            reference: "datasets/mnist.h5:test".into(),
            reference_images: 2000,
            nll_images: 32,
            fid_inception: false,
            reference_inception_stats: None,
            inception: PathBuf::from(POOL3_INCEPTION),
            classifier: PathBuf::from(DEFAULT_MNIST_CLASSIFIER),
            splits: 10,
            batch_size: 128,
            grid_images: 64,
            ddpm: entry("runs/mnist-cpu"),
            ddpm_rows: vec![
                row("1000", Some(64)),
                row("ddim50", None),
                row("ddim20", None),
                row("ddim10", None),
                row("dpm++20", None),
                row("dpm++10", None),
            ],
            gan: entry("runs/mnist-cpu-gan"),
            vae: entry("runs/mnist-cpu-vae"),
            train: TrainMissing::default(),
        }
    }
}

impl CompareConfig {
    /// Reads a TOML file (unknown keys are errors); errors name the file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Self::from_toml(&text).map_err(|message| anyhow!("{}: {message}", path.display()))
    }

    /// Parses TOML text; the error names the offending key or setting.
    pub fn from_toml(text: &str) -> std::result::Result<Self, String> {
        let c: Self = toml::from_str(text).map_err(|e| e.to_string())?;
        c.validate()?;
        Ok(c)
    }

    /// The configuration as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a CompareConfig always serialises")
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if self.samples == 0 || self.batch_size == 0 || self.reference_images < 2 {
            return Err("samples and batch_size must be ≥ 1 and reference_images ≥ 2".into());
        }
        if self.ddpm_rows.iter().any(|r| r.samples == Some(0)) {
            return Err("a DDPM row with samples = 0".into());
        }
        if !self.ddpm.include && !self.gan.include && !self.vae.include {
            return Err("no model included".into());
        }
        for (name, e) in [("ddpm", &self.ddpm), ("gan", &self.gan), ("vae", &self.vae)] {
            if e.include && e.run.as_os_str().is_empty() {
                return Err(format!(
                    "{name}.run is empty (a [{name}] table must name its run directory)"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_round_trips_and_rejects_unknown_keys() {
        let c = CompareConfig::default();
        assert_eq!(CompareConfig::from_toml(&c.to_toml()).unwrap(), c);
        let err = CompareConfig::from_toml("sampels = 3").unwrap_err();
        assert!(err.contains("sampels"), "{err}");
        let c = CompareConfig::from_toml("samples = 8\n[gan]\ninclude = false\n").unwrap();
        assert!(CompareConfig::from_toml("[vae]\nset = []\n")
            .unwrap_err()
            .contains("vae.run"));
        assert_eq!(c.samples, 8);
        assert!(!c.gan.include && c.vae.include);
    }

    #[test]
    fn a_bad_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "samples = 0\n").unwrap();
        let err = CompareConfig::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("bad.toml") && err.contains("samples"), "{err}");
        let err = CompareConfig::from_file(&dir.path().join("absent.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("absent.toml"), "{err}");
    }
}
