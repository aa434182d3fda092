//! Link-time set-up shared by every ddpm-rs crate that links libtorch (ddpm-nets, ddpm-train,
//! ddpm-metrics and ddpm-cli point their `build` key at this file; ddpm-dist's build script
//! includes it as a module).
//!
//! * rpath: binaries and test executables find the torch libraries of the project's virtual
//!   environment without `LD_LIBRARY_PATH` (which still overrides it, e.g. on a GPU box).
//! * CUDA: rustc links with `--as-needed`, so `libtorch_cuda.so`, whose symbols nothing references
//!   directly, would be dropped and CUDA would be silently unavailable. Where the library exists we
//!   link it with `--no-as-needed`.
use std::env;
use std::path::PathBuf;

/// Public so that a crate with a build script of its own (ddpm-dist) can run it as a module.
pub fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-changed=../ddpm-nets/build.rs");
    let Some(lib) = env::var_os("DEP_TCH_LIBTORCH_LIB") else {
        println!("cargo:rustc-env=DDPM_LIBTORCH_LIB=");
        println!("cargo:rustc-env=DDPM_LINKED_TORCH_CUDA=0");
        return;
    };
    let lib = PathBuf::from(lib);
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    println!("cargo:rustc-env=DDPM_LIBTORCH_LIB={}", lib.display());
    let cuda = lib.join("libtorch_cuda.so").exists();
    if cuda {
        println!("cargo:rustc-link-arg=-L{}", lib.display());
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
    println!("cargo:rustc-env=DDPM_LINKED_TORCH_CUDA={}", u8::from(cuda));
}
