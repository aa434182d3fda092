//! `ddpm-cli visualize`: pictures of the diffusion process.
use std::path::PathBuf;

use anyhow::{bail, Result};
use ddpm_math::{BetaSchedule, GaussianDiffusion, LossType, ModelMeanType, ModelVarType};
use ddpm_train::sampler::to_uint8_nhwc;
use ddpm_train::tables::DeviceTables;
use ddpm_train::{loader, viz};
use tch::{Device, Kind, Tensor};

/// Visualisations.
#[derive(clap::Subcommand)]
pub enum VisualizeCommand {
    /// Real images noised along the forward process q(x_t | x_0): one row per image, one column per t.
    Forward {
        /// Dataset file (grey or colour).
        #[arg(long, default_value = "datasets/mnist.h5")]
        data: PathBuf,
        /// Split to take the images from (default: test when the file has one, else train).
        #[arg(long)]
        split: Option<String>,
        /// Number of images (rows).
        #[arg(long, default_value_t = 8)]
        num: usize,
        /// Schedule name.
        #[arg(long, default_value = "linear")]
        schedule: String,
        /// Number of diffusion steps T.
        #[arg(long, default_value_t = 1000)]
        timesteps: usize,
        /// Timesteps to show (0-based indices).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "0,50,100,200,300,400,500,700,999"
        )]
        at: Vec<usize>,
        /// Seed of the noise.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Output PNG.
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn run(cmd: VisualizeCommand) -> Result<()> {
    match cmd {
        VisualizeCommand::Forward {
            data,
            split,
            num,
            schedule,
            timesteps,
            at,
            seed,
            out,
        } => {
            if let Some(&t) = at.iter().find(|&&t| t >= timesteps) {
                bail!("--at {t} is outside 0..{timesteps}");
            }
            let betas = schedule.parse::<BetaSchedule>()?.betas(timesteps)?;
            let d = GaussianDiffusion::new(
                betas,
                ModelMeanType::Epsilon,
                ModelVarType::FixedLarge,
                LossType::Simple,
            )?;
            let tables = DeviceTables::full(&d, Device::Cpu);
            let split = match split {
                Some(s) => s,
                None => {
                    let file = ddpm_train::h5images::open(&data)?;
                    let has_test = ddpm_train::h5images::split_shape(&file, &data, "test")?;
                    if has_test.is_some() { "test" } else { "train" }.to_string()
                }
            };
            let images = loader::load_images(&data, &split)?;
            let idx: Vec<usize> = (0..num.min(images.len())).collect();
            let (x_u8, _) = images.gather(&idx);
            let x0 = loader::to_model_input(&x_u8, false, Device::Cpu);
            tch::manual_seed(seed as i64);
            let noise = x0.randn_like();
            let n = idx.len() as i64;
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
