//! `ddpm-cli visualize`: pictures of the diffusion process.
use std::path::PathBuf;

use anyhow::{bail, Result};
use ddpm_math::{BetaSchedule, GaussianDiffusion, LossType, ModelMeanType, ModelVarType};
use ddpm_metrics::inputs::ImageSource;
use ddpm_train::sampler::to_uint8_nhwc;
use ddpm_train::tables::DeviceTables;
use ddpm_train::{loader, viz};
use tch::{Device, Kind, Tensor};

/// Visualisations.
#[derive(clap::Subcommand)]
pub enum VisualizeCommand {
    /// Real images noised along the forward process q(x_t | x_0): one row per image, one column per t.
    Forward {
        /// The images, grey or colour: `FILE.h5:SPLIT` (a dataset file's split), `FILE.h5` (a
        /// samples file, or a dataset file's test split, else its train split), or a folder of
        /// PNG/JPEG files (as `eval --real`).
        #[arg(long, value_name = "SOURCE", default_value = "datasets/mnist.h5")]
        data: String,
        /// Number of images (rows), 1–256.
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
        num: u16,
        /// Schedule name.
        #[arg(long, default_value = "linear", value_parser = crate::choices::schedule())]
        schedule: String,
        /// Number of diffusion steps T.
        #[arg(long, default_value_t = 1000)]
        timesteps: usize,
        /// Timesteps to show (0-based indices, 0 to T − 1).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "0,50,100,200,300,400,500,700,999"
        )]
        at: Vec<usize>,
        /// Seed of the noise.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Output PNG file.
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn run(cmd: VisualizeCommand) -> Result<()> {
    match cmd {
        VisualizeCommand::Forward {
            data,
            num,
            schedule,
            timesteps,
            at,
            seed,
            out,
        } => {
            crate::outputs::check_outputs(&[("--out", &out, crate::outputs::PNG)])?;
            if at.is_empty() || at.len() > 100 {
                bail!(crate::usage!(
                    "--at lists {} timesteps; give 1 to 100 (one column each)",
                    at.len()
                ));
            }
            if let Some(&t) = at.iter().find(|&&t| t >= timesteps) {
                bail!(crate::usage!(
                    "--at {t}: the timesteps of T = {timesteps} are 0–{}",
                    timesteps - 1
                ));
            }
            let betas = schedule.parse::<BetaSchedule>()?.betas(timesteps)?;
            let d = GaussianDiffusion::new(
                betas,
                ModelMeanType::Epsilon,
                ModelVarType::FixedLarge,
                LossType::Simple,
            )?;
            let tables = DeviceTables::full(&d, Device::Cpu);
            let source = image_source(&data)?;
            let nhwc = source.load(Some(num as usize))?;
            let (n, h, w, c) = nhwc.dim();
            if n < num as usize {
                eprintln!("note: {source} holds {n} images (--num {num})");
            }
            let flat: Vec<u8> = nhwc.iter().copied().collect();
            let x_u8 = Tensor::from_slice(&flat)
                .reshape([n as i64, h as i64, w as i64, c as i64])
                .permute([0, 3, 1, 2]);
            let x0 = loader::to_model_input(&x_u8, false, Device::Cpu);
            tch::manual_seed(seed as i64);
            let noise = x0.randn_like();
            let n = n as i64;
            // Row-major grid: image i, timestep j at cell i * len(at) + j.
            let frames: Vec<Tensor> = at
                .iter()
                .map(|&t| {
                    tables.q_sample(
                        &x0,
                        &Tensor::full([n], t as i64, (Kind::Int64, Device::Cpu)),
                        &noise,
                    )
                })
                .collect();
            let grid = Tensor::stack(&frames, 1).flatten(0, 1);
            let img = viz::grid_nhwc(&to_uint8_nhwc(&grid), at.len());
            viz::save_png(&img, &out)?;
            println!(
                "{} images × t = {:?} ({schedule}, T = {timesteps}): {}",
                n,
                at,
                out.display()
            );
            Ok(())
        }
    }
}

/// The image source `--data` names; a dataset file without a split gives its test split, else
/// its train split.
fn image_source(data: &str) -> Result<ImageSource> {
    Ok(match ImageSource::parse(data)? {
        ImageSource::Samples { path } if path.extension().is_some_and(|e| e == "h5") => {
            let file = ddpm_train::h5images::open(&path)?;
            let split = ["test", "train"].into_iter().find(|s| {
                ddpm_train::h5images::split_shape(&file, &path, s)
                    .ok()
                    .flatten()
                    .is_some()
            });
            match split {
                Some(split) => ImageSource::Split {
                    path,
                    split: split.to_string(),
                },
                None => ImageSource::Samples { path },
            }
        }
        other => other,
    })
}
