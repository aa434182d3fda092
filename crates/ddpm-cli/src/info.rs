//! `ddpm-cli info`.
use anyhow::Result;
#[derive(clap::Args)]
pub struct InfoArgs {}
pub fn run(_a: InfoArgs) -> Result<()> { Ok(()) }
