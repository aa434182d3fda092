//! `ddpm-cli schedule`: print or plot a noise schedule (filled in with ddpm-math).
use anyhow::{bail, Result};

/// Arguments of `ddpm-cli schedule`.
#[derive(clap::Args)]
pub struct ScheduleArgs {}

pub fn run(_args: ScheduleArgs) -> Result<()> {
    bail!("schedule: not implemented yet")
}
