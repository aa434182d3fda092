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
    /// The CUDA version libtorch was built with (`version.py`'s `cuda`, e.g. `13.0`; `None` for a
    /// CPU-only build).
    pub libtorch_cuda_version: Option<String>,
    /// The folder of the `libtorch_cpu.so` that this process loaded.
    pub libtorch_loaded_from: Option<PathBuf>,
    /// The folder libtorch was linked from at build time.
    pub libtorch_built_against: String,
    /// Whether libtorch_cuda is linked into this binary.
    pub linked_torch_cuda: bool,
    /// Intra-op CPU threads libtorch uses.
    pub cpu_threads: i32,
    /// CPUs this process may use (affinity mask and cgroup quota; see [`crate::cpu_threads`]).
    pub cpu_available: usize,
    /// How the OpenMP threads wait between parallel regions, and who chose it.
    pub cpu_wait_policy: crate::cpu_threads::WaitPolicy,
    /// `TORCH_ALLOW_TF32_CUBLAS_OVERRIDE` (`1`: f32 matrix products on CUDA run in TF32).
    pub tf32_cublas_override: Option<String>,
    /// `torch::cuda::is_available()`.
    pub cuda_available: bool,
    /// Whether cuDNN is usable.
    pub cudnn_available: bool,
    /// The loaded cuDNN's version (`cudnnGetVersion`, e.g. `9.10.2`), when it is loaded.
    pub cudnn_version: Option<String>,
    /// The CUDA driver's version (`cuDriverGetVersion`, e.g. `13.0`), when a driver is installed.
    pub cuda_driver_version: Option<String>,
    /// Number of visible CUDA devices.
    pub cuda_device_count: i64,
    /// Per device: name, compute capability, memory and bf16 support (from the CUDA driver).
    pub cuda_devices: Vec<CudaDeviceInfo>,
    /// What `--device auto` resolves to.
    pub auto_device: String,
}

/// One CUDA device as the driver describes it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CudaDeviceInfo {
    /// `cuDeviceGetName`.
    pub name: String,
    /// Compute capability `major.minor` (8.0 = A100, 9.0 = H100/H200).
    pub compute_capability: String,
    /// Total memory in MiB (`cuDeviceTotalMem`).
    pub total_memory_mib: f64,
    /// Native bf16 arithmetic (compute capability ≥ 8.0, Ampere and later).
    pub bf16_supported: bool,
}

impl DeviceReport {
    /// Queries libtorch (and, for device details, the CUDA driver and cuDNN).
    pub fn collect() -> Self {
        let cuda_available = Cuda::is_available();
        let cuda_device_count = if cuda_available {
            Cuda::device_count()
        } else {
            0
        };
        let libtorch_loaded_from = loaded_libtorch_dir();
        let version_py = |key: &str| {
            libtorch_loaded_from
                .as_ref()
                .and_then(|dir| read_version_py(dir, key))
                .or_else(|| read_version_py(&PathBuf::from(env!("DDPM_LIBTORCH_LIB")), key))
        };
        let cuda_devices: Vec<CudaDeviceInfo> = (0..cuda_device_count as i32)
            .map(|i| {
                cuda_driver::device_info(i).unwrap_or_else(|e| CudaDeviceInfo {
                    name: format!("<unavailable: {e}>"),
                    compute_capability: "?".into(),
                    total_memory_mib: f64::NAN,
                    bf16_supported: false,
                })
            })
            .collect();
        let auto_device = match Device::cuda_if_available() {
            Device::Cuda(n) => format!("cuda:{n}"),
            _ => "cpu".to_string(),
        };
        Self {
            libtorch_version: version_py("__version__"),
            libtorch_cuda_version: version_py("cuda"),
            libtorch_loaded_from,
            libtorch_built_against: env!("DDPM_LIBTORCH_LIB").to_string(),
            linked_torch_cuda: linked_torch_cuda(),
            cpu_threads: tch::get_num_threads(),
            cpu_available: crate::cpu_threads::available_cpus(),
            cpu_wait_policy: crate::cpu_threads::WaitPolicy::current(),
            tf32_cublas_override: std::env::var(crate::cpu_threads::TF32_VAR).ok(),
            cuda_available,
            cudnn_available: Cuda::cudnn_is_available(),
            cudnn_version: cuda_driver::cudnn_version(),
            cuda_driver_version: cuda_driver::driver_version(),
            cuda_device_count,
            cuda_devices,
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

/// Reads the string value of `key` (`__version__`, `cuda`) from the `version.py` next to a torch
/// `lib/` folder; `None` when absent or `None` there.
fn read_version_py(lib_dir: &std::path::Path, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(lib_dir.parent()?.join("version.py")).ok()?;
    text.lines().find_map(|l| {
        let rest = l.trim().strip_prefix(key)?;
        let rest = rest.split_once('=')?.1.trim();
        let value = rest.trim_matches(|c| c == '\'' || c == '"');
        (value != "None" && value != rest).then(|| value.to_string())
    })
}

/// Device details from the CUDA driver API (`libcuda.so.1`) and cuDNN (`libcudnn.so.9`), loaded
/// at run time so that a CPU machine without them still runs.
pub mod cuda_driver {
    use super::CudaDeviceInfo;
    use std::os::raw::{c_char, c_int};

    type CuInit = unsafe extern "C" fn(u32) -> c_int;
    type CuDeviceGet = unsafe extern "C" fn(*mut c_int, c_int) -> c_int;
    type CuDeviceGetName = unsafe extern "C" fn(*mut c_char, c_int, c_int) -> c_int;
    type CuDeviceGetAttribute = unsafe extern "C" fn(*mut c_int, c_int, c_int) -> c_int;
    type CuDeviceTotalMem = unsafe extern "C" fn(*mut usize, c_int) -> c_int;
    type CuDriverGetVersion = unsafe extern "C" fn(*mut c_int) -> c_int;
    type CuMemGetInfo = unsafe extern "C" fn(*mut usize, *mut usize) -> c_int;
    type CudnnGetVersion = unsafe extern "C" fn() -> usize;

    /// `CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR` / `_MINOR` (cuda.h).
    const CC_MAJOR: c_int = 75;
    const CC_MINOR: c_int = 76;

    fn libcuda() -> Result<libloading::Library, String> {
        // SAFETY: loading the driver library runs its initialisers, which have no preconditions.
        unsafe { libloading::Library::new("libcuda.so.1") }.map_err(|e| e.to_string())
    }

    fn check(what: &str, rc: c_int) -> Result<(), String> {
        if rc == 0 {
            Ok(())
        } else {
            Err(format!("{what} returned CUDA error {rc}"))
        }
    }

    /// Name, compute capability and memory of device `ordinal`.
    pub fn device_info(ordinal: i32) -> Result<CudaDeviceInfo, String> {
        let lib = libcuda()?;
        // SAFETY: the driver API functions have these C signatures (cuda.h); buffers and out
        // pointers are valid for the lengths passed; `lib` outlives every symbol.
        unsafe {
            let init: libloading::Symbol<CuInit> =
                lib.get(b"cuInit\0").map_err(|e| e.to_string())?;
            let get: libloading::Symbol<CuDeviceGet> =
                lib.get(b"cuDeviceGet\0").map_err(|e| e.to_string())?;
            let name: libloading::Symbol<CuDeviceGetName> =
                lib.get(b"cuDeviceGetName\0").map_err(|e| e.to_string())?;
            let attr: libloading::Symbol<CuDeviceGetAttribute> = lib
                .get(b"cuDeviceGetAttribute\0")
                .map_err(|e| e.to_string())?;
            let total: libloading::Symbol<CuDeviceTotalMem> = lib
                .get(b"cuDeviceTotalMem_v2\0")
                .map_err(|e| e.to_string())?;
            check("cuInit", init(0))?;
            let mut dev = 0;
            check("cuDeviceGet", get(&mut dev, ordinal))?;
            let mut buf = vec![0 as c_char; 257];
            check("cuDeviceGetName", name(buf.as_mut_ptr(), 256, dev))?;
            let (mut major, mut minor, mut bytes) = (0, 0, 0usize);
            check("cuDeviceGetAttribute", attr(&mut major, CC_MAJOR, dev))?;
            check("cuDeviceGetAttribute", attr(&mut minor, CC_MINOR, dev))?;
            check("cuDeviceTotalMem", total(&mut bytes, dev))?;
            Ok(CudaDeviceInfo {
                name: std::ffi::CStr::from_ptr(buf.as_ptr())
                    .to_string_lossy()
                    .into_owned(),
                compute_capability: format!("{major}.{minor}"),
                total_memory_mib: bytes as f64 / (1u64 << 20) as f64,
                bf16_supported: major >= 8,
            })
        }
    }

    /// The driver's CUDA version (`cuDriverGetVersion`: 13000 → `13.0`).
    pub fn driver_version() -> Option<String> {
        let lib = libcuda().ok()?;
        // SAFETY: as in `device_info`.
        unsafe {
            let f: libloading::Symbol<CuDriverGetVersion> =
                lib.get(b"cuDriverGetVersion\0").ok()?;
            let mut v = 0;
            (f(&mut v) == 0).then(|| format!("{}.{}", v / 1000, (v % 1000) / 10))
        }
    }

    /// The version of the cuDNN libtorch loaded (`cudnnGetVersion`: 91002 → `9.10.2`).
    pub fn cudnn_version() -> Option<String> {
        // SAFETY: `cudnnGetVersion` takes no arguments and only returns a number.
        unsafe {
            let lib = libloading::Library::new("libcudnn.so.9").ok()?;
            let f: libloading::Symbol<CudnnGetVersion> = lib.get(b"cudnnGetVersion\0").ok()?;
            let v = f();
            Some(format!("{}.{}.{}", v / 10000, (v % 10000) / 100, v % 100))
        }
    }

    /// Device memory in use on the current thread's CUDA context, in MiB (`cuMemGetInfo`: total −
    /// free, all processes on the device included). libtorch's caching allocator keeps what it
    /// reserved, so after a phase this bounds the phase's peak from above. `None` without a context.
    pub fn memory_in_use_mib() -> Option<f64> {
        let lib = libcuda().ok()?;
        // SAFETY: as in `device_info`; `cuMemGetInfo_v2` fails (no context) rather than crash.
        unsafe {
            let f: libloading::Symbol<CuMemGetInfo> = lib.get(b"cuMemGetInfo_v2\0").ok()?;
            let (mut free, mut total) = (0usize, 0usize);
            (f(&mut free, &mut total) == 0)
                .then(|| total.saturating_sub(free) as f64 / (1u64 << 20) as f64)
        }
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
    fn version_py_values_are_read_and_none_is_absent() {
        let dir = std::env::temp_dir().join(format!("ddpm-version-py-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("lib")).unwrap();
        std::fs::write(
            dir.join("version.py"),
            "__version__ = '2.11.0+cu130'\ndebug = False\ncuda: Optional[str] = '13.0'\nhip: Optional[str] = None\n",
        )
        .unwrap();
        let lib = dir.join("lib");
        assert_eq!(
            read_version_py(&lib, "__version__").as_deref(),
            Some("2.11.0+cu130")
        );
        assert_eq!(read_version_py(&lib, "cuda").as_deref(), Some("13.0"));
        assert_eq!(read_version_py(&lib, "hip"), None);
        assert_eq!(read_version_py(&lib, "debug"), None, "not a string");
        assert_eq!(read_version_py(&lib, "rocm"), None);
        std::fs::remove_dir_all(&dir).unwrap();
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
        assert!(report.cpu_available >= 1);
        // A CUDA build (`+cuNNN`) names its CUDA version; a CPU build has none.
        assert_eq!(
            report.libtorch_cuda_version.is_some(),
            version.contains("+cu"),
            "{version}: {:?}",
            report.libtorch_cuda_version
        );
        assert_eq!(report.cuda_devices.len() as i64, report.cuda_device_count);
        assert_eq!(report.cuda_available, report.cuda_device_count > 0);
    }
}
