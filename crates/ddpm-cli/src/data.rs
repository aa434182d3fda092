//! `ddpm-cli data`: import the official IDX files into HDF5, check a dataset file, look at it.
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use ddpm_train::data::{self, Expected};

/// Dataset subcommands.
#[derive(clap::Subcommand)]
pub enum DataCommand {
    /// Verify, decompress and convert the four gzipped IDX files of a dataset into one HDF5 file.
    Import {
        /// Dataset name recorded in the file (mnist, fashion-mnist).
        #[arg(long)]
        name: String,
        /// Folder holding the .gz files.
        #[arg(long)]
        raw: PathBuf,
        /// Output HDF5 file (written atomically).
        #[arg(long)]
        out: PathBuf,
        /// Published digest a file must match, as FILE=HEX (md5 or sha256); repeatable.
        #[arg(long = "expect", value_parser = parse_expected)]
        expected: Vec<Expected>,
    },
    /// Check that a dataset file has our layout (and, with --expect, came from the given files).
    Check {
        /// The HDF5 file.
        #[arg(long)]
        file: PathBuf,
        /// Digest the recorded source file must have, as FILE=HEX; repeatable.
        #[arg(long = "expect", value_parser = parse_expected)]
        expected: Vec<Expected>,
    },
    /// Print a summary of a dataset file and optionally write a grid of its first images.
    Summary {
        /// The HDF5 file.
        #[arg(long)]
        file: PathBuf,
        /// PNG grid of the first 100 training images.
        #[arg(long)]
        grid: Option<PathBuf>,
    },
}

fn parse_expected(s: &str) -> Result<Expected, String> {
    let (file, digest) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not FILE=HEX"))?;
    let ok = matches!(digest.len(), 32 | 64) && digest.chars().all(|c| c.is_ascii_hexdigit());
    if !ok {
        return Err(format!(
            "`{digest}` is not an md5 (32) or sha256 (64) hex digest"
        ));
    }
    Ok(Expected {
        file: file.to_string(),
        digest: digest.to_ascii_lowercase(),
    })
}

pub fn run(cmd: DataCommand) -> Result<()> {
    match cmd {
        DataCommand::Import {
            name,
            raw,
            out,
            expected,
        } => {
            let s = data::import_idx_dataset(&name, &raw, &out, &expected)?;
            println!(
                "{}: {} train + {} test images of {}x{} ({})",
                out.display(),
                s.n_train,
                s.n_test,
                s.image_hw.0,
                s.image_hw.1,
                s.name
            );
            Ok(())
        }
        DataCommand::Check { file, expected } => {
            let s = data::check_dataset(&file)?;
            for e in &expected {
                let src = s
                    .sources
                    .iter()
                    .find(|f| f.name == e.file)
                    .with_context(|| {
                        format!("{}: records no source file {}", file.display(), e.file)
                    })?;
                let got = if e.digest.len() == 32 {
                    &src.digests.md5
                } else {
                    &src.digests.sha256
                };
                if got != &e.digest {
                    bail!(
                        "{}: source {} has digest {got}, expected {}",
                        file.display(),
                        e.file,
                        e.digest
                    );
                }
            }
            println!(
                "{}: valid ({} train, {} test)",
                file.display(),
                s.n_train,
                s.n_test
            );
            Ok(())
        }
        DataCommand::Summary { file, grid } => summary(&file, grid.as_deref()),
    }
}

fn summary(file: &std::path::Path, grid: Option<&std::path::Path>) -> Result<()> {
    let s = data::check_dataset(file)?;
    println!("dataset {} ({})", s.name, file.display());
    println!(
        "  image size   {}x{} uint8, grey",
        s.image_hw.0, s.image_hw.1
    );
    for split in ["train", "test"] {
        let d = data::load_split(file, split)?;
        let mut counts = [0usize; 256];
        for &l in d.labels.iter() {
            counts[l as usize] += 1;
        }
        let classes: Vec<String> = counts
            .iter()
            .enumerate()
            .filter(|(_, &c)| c > 0)
            .map(|(k, c)| format!("{k}:{c}"))
            .collect();
        let n = d.images.len() as f64;
        let mean = d.images.iter().map(|&p| p as f64).sum::<f64>() / n;
        let var = d
            .images
            .iter()
            .map(|&p| (p as f64 - mean).powi(2))
            .sum::<f64>()
            / n;
        println!(
            "  {split:<5} {:>6} images, pixel mean {:.2} std {:.2} (of 255), per class {}",
            d.len(),
            mean,
            var.sqrt(),
            classes.join(" ")
        );
        if split == "train" {
            if let Some(path) = grid {
                let k = d.len().min(100);
                let images = d.images.slice(ndarray::s![..k, .., ..]);
                let img = ddpm_train::viz::grid(images.insert_axis(ndarray::Axis(3)), 10);
                ddpm_train::viz::save_png(&img, path)?;
                println!(
                    "  grid of the first {k} training images: {}",
                    path.display()
                );
            }
        }
    }
    Ok(())
}
