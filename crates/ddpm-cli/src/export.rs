//! `ddpm-cli export`: a run directory's DDPM as a diffusers `DDPMPipeline` folder, loadable with
//! `DDPMPipeline.from_pretrained(DIR)` and by `ddpm-cli sample --model DIR` / `eval --nll --model DIR`.
use std::path::PathBuf;

use anyhow::Result;
use ddpm_train::model_io::{self, Weights};

/// Arguments of `ddpm-cli export`.
#[derive(clap::Args)]
pub struct ExportArgs {
    /// The run directory (a DDPM run with at least one checkpoint; its newest is exported).
    #[arg(long)]
    model: PathBuf,
    /// The pipeline folder to create (it must not exist).
    #[arg(long)]
    out: PathBuf,
    /// Export the raw weights instead of the EMA.
    #[arg(long)]
    raw_weights: bool,
}

pub fn run(args: ExportArgs) -> Result<()> {
    let weights = if args.raw_weights {
        Weights::Raw
    } else {
        Weights::Ema
    };
    let step = model_io::export_diffusers(&args.model, &args.out, weights)?;
    println!(
        "exported {} (step {step}, {} weights) to {}:",
        args.model.display(),
        if args.raw_weights { "raw" } else { "EMA" },
        args.out.display()
    );
    for f in model_io::PIPELINE_FILES {
        println!("  {f}");
    }
    println!(
        "diffusers: DDPMPipeline.from_pretrained(\"{}\")(batch_size=16, num_inference_steps=1000)",
        args.out.display()
    );
    println!(
        "ddpm-rs:   ddpm-cli sample --model {} --out samples.h5",
        args.out.display()
    );
    Ok(())
}
