//! `ddpm-cli forward`: run a UNet on tensors from a safetensors file.
use anyhow::{bail, Result};

/// Arguments of `ddpm-cli forward`.
#[derive(clap::Args)]
pub struct ForwardArgs {}

pub fn run(_args: ForwardArgs) -> Result<()> {
    bail!("forward: not implemented yet")
}
