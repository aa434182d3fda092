//! The C ABI of `shim/ddpm_dist.h`, declared for Rust. Only `group.rs` calls it.
use std::ffi::{c_char, c_int, c_void};

/// `ddpm_dist_group`: a joined process group (store + backend).
#[repr(C)]
pub struct Group {
    _opaque: [u8; 0],
}

/// `ddpm_dist_work`: a collective in flight.
#[repr(C)]
pub struct Work {
    _opaque: [u8; 0],
}

/// `ddpm_dist_group_options`; see the header for each field.
#[repr(C)]
pub struct GroupOptions {
    pub backend: *const c_char,
    pub store_host: *const c_char,
    pub store_port: u16,
    pub host_store: c_int,
    pub rank: c_int,
    pub world_size: c_int,
    pub timeout_ms: i64,
    pub key_prefix: *const c_char,
    pub gloo_ifnames: *const c_char,
    pub gloo_hostname: *const c_char,
    pub device_index: c_int,
}

extern "C" {
    pub fn ddpm_dist_has_backend(name: *const c_char) -> c_int;
    pub fn ddpm_dist_group_new(options: *const GroupOptions) -> *mut Group;
    pub fn ddpm_dist_group_free(group: *mut Group);
    pub fn ddpm_dist_all_reduce_sum(group: *mut Group, tensor: *mut c_void) -> c_int;
    pub fn ddpm_dist_broadcast(group: *mut Group, tensor: *mut c_void, root: c_int) -> c_int;
    pub fn ddpm_dist_barrier(group: *mut Group) -> c_int;
    pub fn ddpm_dist_all_reduce_sum_async(group: *mut Group, tensor: *mut c_void) -> *mut Work;
    pub fn ddpm_dist_work_wait(work: *mut Work) -> c_int;
    pub fn ddpm_dist_work_free(work: *mut Work);
    pub fn ddpm_dist_store_set(
        group: *mut Group,
        key: *const c_char,
        data: *const u8,
        len: usize,
    ) -> c_int;
    pub fn ddpm_dist_store_get(
        group: *mut Group,
        key: *const c_char,
        data: *mut *mut u8,
        len: *mut usize,
    ) -> c_int;
    pub fn ddpm_dist_bytes_free(data: *mut u8);
    pub fn ddpm_dist_last_error() -> *const c_char;
}

/// The message of the shim's last failure on this thread.
pub fn last_error() -> String {
    // SAFETY: the shim returns a NUL-terminated thread-local string, valid until the next failing
    // call on this thread; it is copied at once.
    unsafe { std::ffi::CStr::from_ptr(ddpm_dist_last_error()) }
        .to_string_lossy()
        .into_owned()
}
