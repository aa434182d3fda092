//! The project-local Python virtual environment that provides libtorch (torch==2.11.0, which
//! tch 0.24 requires exactly) and cmake (for the static HDF5 build).
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The torch version tch 0.24 is built for.
pub const TORCH_VERSION: &str = "2.11.0";
/// pip requirements of the environment.
const REQUIREMENTS: [&str; 2] = ["torch==2.11.0", "cmake>=3.20"];

/// Sets the variables under which torch-sys finds the environment's torch
/// (`LIBTORCH_USE_PYTORCH` with `python` from `VIRTUAL_ENV`) and hdf5-src finds cmake.
pub fn apply_env(cmd: &mut Command, venv: &Path) {
    let bin = venv.join("bin");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![bin.clone()];
    paths.extend(std::env::split_paths(&path));
    cmd.env(
        "PATH",
        std::env::join_paths(paths).expect("PATH entries without ':'"),
    );
    cmd.env("VIRTUAL_ENV", venv);
    cmd.env("LIBTORCH_USE_PYTORCH", "1");
    cmd.env("CMAKE", bin.join("cmake"));
}

/// The torch version the environment's python imports, if any.
fn torch_version(python: &Path) -> Option<String> {
    let out = Command::new(python)
        .args(["-c", "import torch; print(torch.__version__)"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn cmake_ok(venv: &Path) -> bool {
    Command::new(venv.join("bin/cmake"))
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Checks the environment and creates or completes it when needed. Returns the python path.
pub fn ensure(venv: &Path) -> Result<PathBuf> {
    let python = venv.join("bin/python");
    if python.exists() {
        if let Some(v) = torch_version(&python) {
            if v.split('+').next() == Some(TORCH_VERSION) && cmake_ok(venv) {
                return Ok(python);
            }
            eprintln!(
                "{}: torch {v} found; (re)installing {REQUIREMENTS:?}",
                venv.display()
            );
        }
    } else {
        let python3 = which("python3").context(
            "python3 not found on PATH: install Python 3 (3.9 or newer) with the venv module and pip, \
             then run this command again",
        )?;
        eprintln!(
            "creating {} with {} (torch wheels are ~4.7 GB; a few minutes)",
            venv.display(),
            python3.display()
        );
        let status = Command::new(&python3)
            .args(["-m", "venv"])
            .arg(venv)
            .status()
            .with_context(|| format!("cannot run {}", python3.display()))?;
        if !status.success() || !python.exists() {
            let _ = std::fs::remove_dir_all(venv);
            bail!(
                "`{} -m venv {}` failed: the Python venv module (and ensurepip) is missing; \
                 on Debian install python3-venv",
                python3.display(),
                venv.display()
            );
        }
    }
    let pip_ok = Command::new(&python)
        .args(["-m", "pip", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !pip_ok {
        bail!(
            "{}: pip is missing from the virtual environment; install pip for python3 (Debian: python3-pip) \
             or remove {} and run again",
            python.display(),
            venv.display()
        );
    }
    let status = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--progress-bar",
            "off",
        ])
        .args(REQUIREMENTS)
        .status()
        .context("cannot run pip")?;
    if !status.success() {
        bail!(
            "pip install {REQUIREMENTS:?} into {} failed (see pip's message above)",
            venv.display()
        );
    }
    match torch_version(&python) {
        Some(v) if v.split('+').next() == Some(TORCH_VERSION) => Ok(python),
        other => bail!(
            "after pip install, {} imports torch {other:?}, not {TORCH_VERSION}",
            python.display()
        ),
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
