//! `ddpm-cli data`.
use anyhow::Result;
#[derive(clap::Subcommand)]
pub enum DataCommand { Check }
pub fn run(_c: DataCommand) -> Result<()> { Ok(()) }
