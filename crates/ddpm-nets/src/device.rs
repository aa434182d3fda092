//! Device selection (`auto`, `cpu`, `cuda`, `cuda:N`) and a truthful report of what libtorch can use.
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use tch::{Cuda, Device};

/// A device request as users write it on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// The first CUDA device when one is usable, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// CUDA device with this ordinal.
    Cuda(usize),
}

/// Errors of device selection.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The text is not `auto`, `cpu`, `cuda` or `cuda:N`.
    #[error("invalid device `{0}`: expected auto, cpu, cuda or cuda:N")]
    Parse(String),
    /// CUDA was asked for but libtorch cannot use it.
    #[error("device `{requested}` requested but {reason}")]
    Unavailable {
        /// What the user asked for.
        requested: String,
        /// Why it cannot be had.
        reason: String,
    },
}

impl FromStr for DeviceSpec {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| DeviceError::Parse(s.to_string())),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => write!(f, "auto"),
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceSpec {
    /// Resolves the request against what libtorch reports; asking for an absent GPU is an error.
    ///
    /// On CUDA this also turns on cuDNN's autotuner (`cudnn.benchmark`): every workload here runs the same
    /// shapes step after step, so the fastest convolution algorithm is found once and reused.
    pub fn resolve(self) -> Result<Device, DeviceError> {
        let device = self.resolve_device()?;
        if device.is_cuda() {
            Cuda::cudnn_set_benchmark(true);
        }
        Ok(device)
    }

    fn resolve_device(self) -> Result<Device, DeviceError> {
        match self {
            Self::Auto => Ok(Device::cuda_if_available()),
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(n) => {
                let count = Cuda::device_count();
                if !Cuda::is_available() {
                    Err(DeviceError::Unavailable {
                        requested: self.to_string(),
                        reason: cuda_unavailable_reason(),
                    })
                } else if n as i64 >= count {
                    Err(DeviceError::Unavailable {
                        requested: self.to_string(),
                        reason: format!("only {count} CUDA device(s) are visible"),
                    })
                } else {
                    Ok(Device::Cuda(n))
                }
            }
        }
    }
}

/// Why CUDA is not usable, in words.
fn cuda_unavailable_reason() -> String {
    if !linked_torch_cuda() {
        "this binary was built against a libtorch without libtorch_cuda".to_string()
    } else {
        "no CUDA device is visible to the linked libtorch_cuda (no driver or no GPU)".to_string()
    }
}

/// Whether this binary was linked against `libtorch_cuda` (see the shared build script).
pub fn linked_torch_cuda() -> bool {
    env!("DDPM_LINKED_TORCH_CUDA") == "1"
}

/// What libtorch and the machine offer, as `ddpm-cli info` prints it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeviceReport {
    /// libtorch version read from the loaded library's `version.py` (e.g. `2.11.0+cu130`).
    pub libtorch_version: Option<String>,
    /// The folder of the `libtorch_cpu.so` that this process loaded.
    pub libtorch_loaded_from: Option<PathBuf>,
    /// The folder libtorch was linked from at build time.
    pub libtorch_built_against: String,
    /// Whether libtorch_cuda is linked into this binary.
    pub linked_torch_cuda: bool,
    /// Intra-op CPU threads libtorch uses.
    pub cpu_threads: i32,
    /// `torch::cuda::is_available()`.
    pub cuda_available: bool,
    /// Whether cuDNN is usable.
    pub cudnn_available: bool,
    /// Number of visible CUDA devices.
    pub cuda_device_count: i64,
    /// Device names from the CUDA driver, one per device.
    pub cuda_device_names: Vec<String>,
    /// What `--device auto` resolves to.
    pub auto_device: String,
}

impl DeviceReport {
    /// Queries libtorch (and, for device names, the CUDA driver).
    pub fn collect() -> Self {
        let cuda_available = Cuda::is_available();
        let cuda_device_count = if cuda_available {
            Cuda::device_count()
        } else {
            0
        };
        let libtorch_loaded_from = loaded_libtorch_dir();
        let libtorch_version = libtorch_loaded_from
            .as_ref()
            .and_then(|dir| read_torch_version(dir))
            .or_else(|| read_torch_version(&PathBuf::from(env!("DDPM_LIBTORCH_LIB"))));
        let cuda_device_names = if cuda_device_count > 0 {
            (0..cuda_device_count as i32)
                .map(|i| cuda_device_name(i).unwrap_or_else(|e| format!("<name unavailable: {e}>")))
                .collect()
        } else {
            Vec::new()
        };
        let auto_device = match Device::cuda_if_available() {
            Device::Cuda(n) => format!("cuda:{n}"),
            _ => "cpu".to_string(),
        };
        Self {
            libtorch_version,
            libtorch_loaded_from,
            libtorch_built_against: env!("DDPM_LIBTORCH_LIB").to_string(),
            linked_torch_cuda: linked_torch_cuda(),
            cpu_threads: tch::get_num_threads(),
            cuda_available,
            cudnn_available: Cuda::cudnn_is_available(),
            cuda_device_count,
            cuda_device_names,
            auto_device,
        }
    }
}

/// The folder holding the `libtorch_cpu.so` mapped into this process, from `/proc/self/maps`.
fn loaded_libtorch_dir() -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.ends_with("/libtorch_cpu.so"))
        .and_then(|p| PathBuf::from(p).parent().map(PathBuf::from))
}

/// Reads `__version__` from the `version.py` next to a torch `lib/` folder.
fn read_torch_version(lib_dir: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(lib_dir.parent()?.join("version.py")).ok()?;
    text.lines().find_map(|l| {
        let rest = l.trim().strip_prefix("__version__")?;
        let value = rest.trim_start().strip_prefix('=')?.trim();
        Some(value.trim_matches(|c| c == '\'' || c == '"').to_string())
    })
}

/// The name of CUDA device `ordinal`, from the driver API (`libcuda.so.1`).
fn cuda_device_name(ordinal: i32) -> Result<String, String> {
    type CuInit = unsafe extern "C" fn(u32) -> i32;
    type CuDeviceGet = unsafe extern "C" fn(*mut i32, i32) -> i32;
    type CuDeviceGetName = unsafe extern "C" fn(*mut std::os::raw::c_char, i32, i32) -> i32;
    // SAFETY: libcuda's driver API functions have these C signatures (cuda.h); the name buffer is
    // larger than the length passed, and the library stays loaded while the symbols are used.
    unsafe {
        let lib = libloading::Library::new("libcuda.so.1").map_err(|e| e.to_string())?;
        let init: libloading::Symbol<CuInit> = lib.get(b"cuInit\0").map_err(|e| e.to_string())?;
        let get: libloading::Symbol<CuDeviceGet> =
            lib.get(b"cuDeviceGet\0").map_err(|e| e.to_string())?;
        let name: libloading::Symbol<CuDeviceGetName> =
            lib.get(b"cuDeviceGetName\0").map_err(|e| e.to_string())?;
        let rc = init(0);
        if rc != 0 {
            return Err(format!("cuInit returned {rc}"));
        }
        let mut dev = 0i32;
        let rc = get(&mut dev, ordinal);
        if rc != 0 {
            return Err(format!("cuDeviceGet({ordinal}) returned {rc}"));
        }
        let mut buf = vec![0 as std::os::raw::c_char; 257];
        let rc = name(buf.as_mut_ptr(), 256, dev);
        if rc != 0 {
            return Err(format!("cuDeviceGetName returned {rc}"));
        }
        Ok(std::ffi::CStr::from_ptr(buf.as_ptr())
            .to_string_lossy()
            .into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_specs() {
        assert_eq!("auto".parse::<DeviceSpec>().unwrap(), DeviceSpec::Auto);
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!("cuda:3".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(3));
        for bad in ["gpu", "cuda:", "cuda:x", "", "cpu0"] {
            let err = bad.parse::<DeviceSpec>().unwrap_err().to_string();
            assert!(err.contains(&format!("`{bad}`")), "{err}");
        }
    }

    #[test]
    fn cpu_always_resolves_and_absent_cuda_is_an_error() {
        assert_eq!(DeviceSpec::Cpu.resolve().unwrap(), Device::Cpu);
        let count = Cuda::device_count();
        let err = DeviceSpec::Cuda(count as usize + 7)
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(err.contains("cuda:"), "{err}");
    }

    #[test]
    fn report_reads_the_loaded_libtorch() {
        let report = DeviceReport::collect();
        let dir = report
            .libtorch_loaded_from
            .expect("libtorch_cpu.so is mapped");
        assert!(dir.join("libtorch_cpu.so").exists());
        let version = report
            .libtorch_version
            .expect("version.py beside torch/lib");
        assert!(version.starts_with("2.11.0"), "{version}");
        assert!(report.cpu_threads >= 1);
        assert_eq!(report.cuda_available, report.cuda_device_count > 0);
    }
}
