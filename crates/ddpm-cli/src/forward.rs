//! `ddpm-cli forward`: run a UNet on tensors from a safetensors file.
use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use ddpm_nets::checkpoint::{read_tensors, write_tensors};
use ddpm_nets::device::DeviceSpec;
use tch::{Kind, Tensor};

/// Arguments of `ddpm-cli forward`.
#[derive(clap::Args)]
pub struct ForwardArgs {
    /// The model: a run directory (its newest checkpoint, EMA weights), a checkpoint folder
    /// (`RUN/checkpoints/best`), a diffusers UNet folder (config.json +
    /// diffusion_pytorch_model.safetensors) or a diffusers pipeline folder (unet/ inside).
    #[arg(long)]
    model: PathBuf,
    /// safetensors file with `x` [N,C,H,W] float32, `t` [N] int64 and, for class-conditional models,
    /// `class_labels` [N] int64.
    #[arg(long)]
    input: PathBuf,
    /// safetensors file to write `y` [N,C_out,H,W] float32 to.
    #[arg(long)]
    output: PathBuf,
    /// Device: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto", value_parser = crate::choices::device)]
    device: DeviceSpec,
}

pub fn run(args: ForwardArgs) -> Result<()> {
    crate::outputs::check_outputs(&[("--output", &args.output, &["safetensors"])])?;
    crate::outputs::check_distinct(
        &[("--output", &args.output)],
        Some(("--input", &args.input)),
    )?;
    let device = args.device.resolve()?;
    let (_vs, model) = if args.model.join("config.toml").is_file() {
        let m = crate::models::load_ddpm(&args.model, ddpm_train::model_io::Weights::Ema, device)?;
        (m.vs, m.unet)
    } else if args.model.join("unet/config.json").is_file() {
        ddpm_nets::diffusers::load_pretrained(&args.model.join("unet"), device)
            .with_context(|| format!("loading the model folder {}/unet", args.model.display()))?
    } else {
        ddpm_nets::diffusers::load_pretrained(&args.model, device)
            .with_context(|| format!("loading the model folder {}", args.model.display()))?
    };
    let mut inputs: HashMap<String, Tensor> = read_tensors(&args.input)
        .with_context(|| format!("reading {}", args.input.display()))?
        .into_iter()
        .collect();
    let mut take = |name: &str, what: &str| -> Result<Tensor> {
        match inputs.remove(name) {
            Some(t) => Ok(t),
            None => bail!(
                "{}: no tensor named `{name}` ({what}); expected x [N,C,H,W] float32 and t [N] int64",
                args.input.display()
            ),
        }
    };
    let xs = take("x", "the noisy images")?;
    let t = take("t", "the timesteps")?;
    let class_labels = inputs.remove("class_labels");
    if !xs.is_floating_point() {
        bail!("`x` has kind {:?}, expected float32", xs.kind());
    }
    let xs = xs.to_device(device).to_kind(Kind::Float);
    let t = t.to_device(device);
    let class_labels = class_labels.map(|c| c.to_device(device));
    let ys = tch::no_grad(|| model.f_forward_t(&xs, &t, class_labels.as_ref(), false))
        .context("running the network")?;
    write_tensors(&args.output, &[("y".to_string(), ys.shallow_clone())])
        .with_context(|| format!("writing {}", args.output.display()))?;
    println!("y {:?} written to {}", ys.size(), args.output.display());
    Ok(())
}
