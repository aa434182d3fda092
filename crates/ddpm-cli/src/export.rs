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
    crate::outputs::check_folder(&args.out, "--out")?;
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
    let unet = ddpm_nets::diffusers::read_config(&args.out.join("unet/config.json"))?;
    let dir = args.out.display();
    match unet.num_class_embeds {
        None => {
            println!("diffusers: DDPMPipeline.from_pretrained(\"{dir}\")(batch_size=16, num_inference_steps=1000)");
            println!("ddpm-rs:   ddpm-cli sample --model {dir} --out samples.h5");
        }
        Some(k) => {
            // DDPMPipeline passes no class labels; the UNet takes them.
            println!(
                "class-conditional: labels 0..{} and the null label {} (classifier-free guidance); \
                 DDPMPipeline passes no labels, so call the UNet yourself:",
                k - 2,
                k - 1
            );
            println!("diffusers: UNet2DModel.from_pretrained(\"{dir}/unet\")(x_t, t, class_labels=labels).sample, with DDPMScheduler.from_pretrained(\"{dir}/scheduler\")");
            println!(
                "ddpm-rs:   ddpm-cli sample --model {dir} --class 3 --guidance 2 --out samples.h5"
            );
        }
    }
    Ok(())
}
