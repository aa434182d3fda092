//! Mixed-precision autocast with an explicit device and dtype.
//!
//! `tch::autocast` switches on libtorch's CUDA autocast without choosing its dtype, and libtorch's default
//! CUDA autocast dtype is float16, not bfloat16; it has no CPU switch at all. [`with_autocast`] sets both the
//! device type and the dtype through libtorch's own `at::autocast::set_autocast_enabled(DeviceType, bool)`
//! and `set_autocast_dtype(DeviceType, ScalarType)` (C++ functions exported by `libtorch_cpu`, called here
//! by their mangled names; `DeviceType` and `ScalarType` are one-byte enums), and restores the previous
//! state afterwards.
use tch::{Device, Kind};

mod ffi {
    extern "C" {
        #[link_name = "_ZN2at8autocast19is_autocast_enabledEN3c1010DeviceTypeE"]
        pub fn is_autocast_enabled(device_type: i8) -> bool;
        #[link_name = "_ZN2at8autocast20set_autocast_enabledEN3c1010DeviceTypeEb"]
        pub fn set_autocast_enabled(device_type: i8, enabled: bool);
        #[link_name = "_ZN2at8autocast18get_autocast_dtypeEN3c1010DeviceTypeE"]
        pub fn get_autocast_dtype(device_type: i8) -> i8;
        #[link_name = "_ZN2at8autocast18set_autocast_dtypeEN3c1010DeviceTypeENS1_10ScalarTypeE"]
        pub fn set_autocast_dtype(device_type: i8, dtype: i8);
        #[link_name = "_ZN2at8autocast17increment_nestingEv"]
        pub fn increment_nesting() -> i32;
        #[link_name = "_ZN2at8autocast17decrement_nestingEv"]
        pub fn decrement_nesting() -> i32;
        #[link_name = "_ZN2at8autocast11clear_cacheEv"]
        pub fn clear_cache();
    }
}

/// `c10::DeviceType` codes.
const CPU: i8 = 0;
const CUDA: i8 = 1;

/// `c10::ScalarType` codes of the dtypes autocast can run in.
fn scalar_type(kind: Kind) -> Option<i8> {
    match kind {
        Kind::Half => Some(5),
        Kind::Float => Some(6),
        Kind::BFloat16 => Some(15),
        _ => None,
    }
}

fn kind_of(code: i8) -> Option<Kind> {
    match code {
        5 => Some(Kind::Half),
        6 => Some(Kind::Float),
        15 => Some(Kind::BFloat16),
        _ => None,
    }
}

fn device_type(device: Device) -> i8 {
    if device.is_cuda() {
        CUDA
    } else {
        CPU
    }
}

/// Whether autocast is on for `device`'s type, and in which dtype.
pub fn state(device: Device) -> (bool, Option<Kind>) {
    let d = device_type(device);
    // SAFETY: plain getters of libtorch's thread-local autocast state.
    unsafe {
        (
            ffi::is_autocast_enabled(d),
            kind_of(ffi::get_autocast_dtype(d)),
        )
    }
}

/// Runs `f` with autocast on for `device`'s type in `dtype` (`Kind::BFloat16` or `Kind::Half`), then
/// restores the previous state (also when `f` panics) and clears the cast-weight cache of the outermost
/// region.
///
/// # Panics
/// When `dtype` is not a floating-point kind autocast supports.
pub fn with_autocast<T>(device: Device, dtype: Kind, f: impl FnOnce() -> T) -> T {
    let code = scalar_type(dtype).expect("autocast dtype must be BFloat16, Half or Float");
    let d = device_type(device);
    struct Restore {
        d: i8,
        enabled: bool,
        dtype: i8,
    }
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: setters of libtorch's thread-local autocast state, with values read from it; the
            // cache of cast weights is dropped when the outermost region ends, as torch.autocast does.
            unsafe {
                if ffi::decrement_nesting() == 0 {
                    ffi::clear_cache();
                }
                ffi::set_autocast_dtype(self.d, self.dtype);
                ffi::set_autocast_enabled(self.d, self.enabled);
            }
        }
    }
    // SAFETY: as above.
    let _restore = unsafe {
        let restore = Restore {
            d,
            enabled: ffi::is_autocast_enabled(d),
            dtype: ffi::get_autocast_dtype(d),
        };
        ffi::set_autocast_dtype(d, code);
        ffi::set_autocast_enabled(d, true);
        ffi::increment_nesting();
        restore
    };
    f()
}

/// bf16 autocast on `device` (what `run.bf16` asks for on CUDA).
pub fn bf16<T>(device: Device, f: impl FnOnce() -> T) -> T {
    with_autocast(device, Kind::BFloat16, f)
}

/// `f` under bf16 autocast on `device` when `on`, plainly otherwise.
pub fn bf16_if<T>(on: bool, device: Device, f: impl FnOnce() -> T) -> T {
    if on {
        bf16(device, f)
    } else {
        f()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Tensor;

    #[test]
    fn cpu_autocast_runs_matmul_and_conv_in_bf16_and_restores() {
        let a = Tensor::randn([4, 8], (Kind::Float, Device::Cpu));
        let b = Tensor::randn([8, 3], (Kind::Float, Device::Cpu));
        let x = Tensor::randn([1, 2, 5, 5], (Kind::Float, Device::Cpu));
        let w = Tensor::randn([3, 2, 3, 3], (Kind::Float, Device::Cpu));
        assert!(!state(Device::Cpu).0);
        let (mm, conv, inner) = with_autocast(Device::Cpu, Kind::BFloat16, || {
            (
                a.matmul(&b).kind(),
                x.conv2d(&w, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1)
                    .kind(),
                state(Device::Cpu),
            )
        });
        assert_eq!(mm, Kind::BFloat16);
        assert_eq!(conv, Kind::BFloat16);
        assert_eq!(inner, (true, Some(Kind::BFloat16)));
        assert!(!state(Device::Cpu).0);
        assert_eq!(a.matmul(&b).kind(), Kind::Float);
    }

    #[test]
    fn cuda_dtype_is_set_to_bf16_not_libtorchs_float16_default() {
        // Setting and reading the CUDA autocast state needs no GPU.
        let cuda = Device::Cuda(0);
        let before = state(cuda);
        let inner = bf16(cuda, || state(cuda));
        assert_eq!(inner, (true, Some(Kind::BFloat16)));
        assert_eq!(state(cuda), before);
        let half = with_autocast(cuda, Kind::Half, || state(cuda).1);
        assert_eq!(half, Some(Kind::Half));
    }

    #[test]
    fn restores_after_a_panic() {
        let r = std::panic::catch_unwind(|| bf16(Device::Cpu, || panic!("inside")));
        assert!(r.is_err());
        assert!(!state(Device::Cpu).0);
    }
}
