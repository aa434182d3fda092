//! What the commands share: the workspace paths and profile ([`Ctx`]) and running a command
//! ([`run`]). A module of its own so that the command modules use it without importing `main.rs`,
//! which imports them.
use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::venv;

/// Paths and options shared by the commands.
pub struct Ctx {
    /// Workspace root.
    pub root: PathBuf,
    /// Whether ddpm-cli runs in the release profile.
    pub release: bool,
}

impl Ctx {
    /// The project-local virtual environment.
    pub fn venv(&self) -> PathBuf {
        self.root.join(".venv")
    }

    /// Where datasets land.
    pub fn datasets(&self) -> PathBuf {
        self.root.join("datasets")
    }

    /// `cargo` with the environment that torch-sys and hdf5's static build need.
    pub fn cargo(&self) -> Command {
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.current_dir(&self.root);
        venv::apply_env(&mut cmd, &self.venv());
        cmd
    }

    /// Builds ddpm-cli in the release profile and returns the binary's path (under
    /// `CARGO_TARGET_DIR` when set).
    pub fn build_release_cli(&self) -> Result<PathBuf> {
        eprintln!("\n==> cargo build --release -p ddpm-cli");
        run(self
            .cargo()
            .args(["build", "--release", "--package", "ddpm-cli"]))?;
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| self.root.join("target"));
        Ok(target.join("release/ddpm-cli"))
    }

    /// `cargo run -p ddpm-cli -- ARGS` in the chosen profile.
    pub fn ddpm_cli<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = self.cargo();
        cmd.args(["run", "--quiet", "--package", "ddpm-cli"]);
        if self.release {
            cmd.arg("--release");
        }
        cmd.arg("--").args(args);
        cmd
    }
}

/// Runs a command, failing with its command line when it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if status.code() == Some(130) {
        bail!(
            "interrupted (Ctrl-C): {:?} saved what it had; run the same cargo xtask command again to continue",
            cmd.get_program()
        );
    }
    if !status.success() {
        bail!("command failed ({status}): {cmd:?}");
    }
    Ok(())
}
