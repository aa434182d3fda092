//! The project-local Python virtual environment that provides libtorch (torch==2.11.0, which
//! tch 0.24 requires exactly), cmake (for the static HDF5 build) and tensorboard (whose reader the
//! tests of ddpm-rs's event files use).
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The torch version tch 0.24 is built for.
pub const TORCH_VERSION: &str = "2.11.0";
/// The tensorboard version whose `EventAccumulator` reads the event files in the tests.
const TENSORBOARD_VERSION: &str = "2.21.0";
/// pip requirements of the environment: torch, cmake, the two CUDA header wheels that
/// ddpm-dist's NCCL build needs besides the torch wheel's own (`crt/host_config.h`, `nv/target`;
/// ~3 MB), and tensorboard (~20 MB with its dependencies).
const REQUIREMENTS: [&str; 5] = [
    "torch==2.11.0",
    "cmake>=3.20",
    "nvidia-cuda-crt==13.0.*",
    "nvidia-cuda-cccl==13.0.*",
    "tensorboard==2.21.0",
];
/// Files of the header wheels, relative to site-packages.
const NCCL_BUILD_HEADERS: [&str; 2] = [
    "nvidia/cu13/include/crt/host_config.h",
    "nvidia/cu13/include/nv/target",
];
/// Disk the installed packages take (torch 2.11.0 with its CUDA 13 wheels, triton and cmake:
/// 4.7 GB measured), with a margin.
const INSTALLED_BYTES: u64 = 5_000_000_000;
/// Disk the downloaded wheels take in pip's temporary folder until the install ends (2.75 GB
/// measured), with a margin. `--no-cache-dir` keeps pip from storing a second copy in its cache.
const WHEEL_BYTES: u64 = 3_000_000_000;

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

/// Whether the environment's python imports tensorboard [`TENSORBOARD_VERSION`].
fn tensorboard_ok(python: &Path) -> bool {
    Command::new(python)
        .args(["-c", "import tensorboard; print(tensorboard.__version__)"])
        .output()
        .is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == TENSORBOARD_VERSION
        })
}

fn cmake_ok(venv: &Path) -> bool {
    Command::new(venv.join("bin/cmake"))
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Whether the header wheels of the NCCL build are installed.
fn nccl_headers_ok(venv: &Path) -> bool {
    let Ok(lib) = std::fs::read_dir(venv.join("lib")) else {
        return false;
    };
    lib.flatten().any(|python| {
        let site = python.path().join("site-packages");
        NCCL_BUILD_HEADERS.iter().all(|h| site.join(h).exists())
    })
}

/// Checks the environment and creates or completes it when needed. Returns the python path.
pub fn ensure(venv: &Path) -> Result<PathBuf> {
    let python = venv.join("bin/python");
    let mut has_torch = false;
    if python.exists() {
        if let Some(v) = torch_version(&python) {
            has_torch = v.split('+').next() == Some(TORCH_VERSION);
            if has_torch && cmake_ok(venv) && nccl_headers_ok(venv) && tensorboard_ok(&python) {
                return Ok(python);
            }
            eprintln!(
                "{}: torch {v} found; completing it with {REQUIREMENTS:?}",
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
    if !has_torch {
        check_free_disk(venv)?;
    }
    let status = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-cache-dir",
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

/// Refuses, before any download, an install that cannot fit: pip would otherwise fail with
/// ENOSPC after minutes, part-way through unpacking.
fn check_free_disk(venv: &Path) -> Result<()> {
    let tmp = std::env::temp_dir();
    let (Some(v), Some(t)) = (disk_of(venv), disk_of(&tmp)) else {
        return Ok(()); // statvfs unavailable: let pip try
    };
    let gb = |b: u64| b as f64 / 1e9;
    let need_here = if v.device == t.device {
        INSTALLED_BYTES + WHEEL_BYTES
    } else {
        INSTALLED_BYTES
    };
    if v.free < need_here {
        bail!(
            "not enough disk for torch in {}: {:.1} GB free, the install needs about {:.1} GB \
             ({:.1} GB installed{}); free some space (or point TMPDIR at another disk) and run again",
            venv.display(),
            gb(v.free),
            gb(need_here),
            gb(INSTALLED_BYTES),
            if v.device == t.device {
                format!(" + {:.1} GB of wheels in {} while installing", gb(WHEEL_BYTES), tmp.display())
            } else {
                String::new()
            }
        );
    }
    if v.device != t.device && t.free < WHEEL_BYTES {
        bail!(
            "not enough disk in TMPDIR {} for torch's wheels: {:.1} GB free, pip needs about {:.1} GB \
             there while installing; free some space or point TMPDIR elsewhere",
            tmp.display(),
            gb(t.free),
            gb(WHEEL_BYTES)
        );
    }
    Ok(())
}

/// The file system holding a path (or its nearest existing ancestor).
struct Disk {
    device: u64,
    /// Bytes an unprivileged user may still write.
    free: u64,
}

fn disk_of(path: &Path) -> Option<Disk> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    let existing = path.ancestors().find(|p| p.exists())?;
    let device = std::fs::metadata(existing).ok()?.dev();
    let c = std::ffi::CString::new(existing.as_os_str().as_bytes()).ok()?;
    // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized out-parameter.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(Disk {
        device,
        free: st.f_bavail as u64 * st.f_frsize as u64,
    })
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
