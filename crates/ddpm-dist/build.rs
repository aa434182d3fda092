//! Compiles the c10d shim (`shim/*.cpp`, C++17) against the headers of the libtorch that torch-sys
//! links, and links the crate's targets the way `../ddpm-nets/build.rs` links the other crates.
//!
//! * Headers: torch-sys (`links = "tch"`) exports its library folder as `DEP_TCH_LIBTORCH_LIB`; the
//!   headers sit beside it (`<lib>/../include`, the layout of both the PyPI wheel and the libtorch
//!   archive; `LIBTORCH_INCLUDE` overrides it as it does for torch-sys). They are passed with
//!   `-isystem`, so that only the shim's own code is held to `-Wall -Wextra`.
//! * ABI: `_GLIBCXX_USE_CXX11_ABI` must equal libtorch's (a mismatch fails at link time with
//!   undefined `c10d::TCPStore` symbols). Chosen as torch-sys chooses it: asked of the python of
//!   `LIBTORCH_USE_PYTORCH`, else `LIBTORCH_CXX11_ABI`, else 1.
//! * c10d: the headers declare the Gloo classes only under `USE_C10D_GLOO`. The wheel ships every
//!   c10d header but not the five gloo headers that `ProcessGroupGloo.hpp` includes;
//!   `shim/gloo_decls` stands in for them (see its README), and `DDPM_DIST_GLOO_INCLUDE` may name a
//!   folder with gloo's real headers instead.
//! * NCCL: `shim/nccl.cpp` is compiled (with `USE_C10D_NCCL`, defining `DDPM_DIST_NCCL`) when the
//!   libtorch has `libtorch_cuda` and [`nccl_includes`] finds the headers `ProcessGroupNCCL.hpp`
//!   needs: `nccl.h` and the CUDA runtime headers from the wheel's `nvidia-*` dependencies, plus
//!   `crt/host_config.h` and `nv/target`, which those lack and the `nvidia-cuda-crt` and
//!   `nvidia-cuda-cccl` wheels supply (`cargo xtask setup` installs them). `DDPM_DIST_NCCL=0`
//!   leaves NCCL out; `DDPM_DIST_CUDA_INCLUDE` adds include folders (e.g. a CUDA toolkit's).
//! * Linking: the shim's references to c10d resolve in `libtorch_cpu` (Gloo lives inside it) and
//!   `libc10`; the rest (rpath to the torch libraries, `--no-as-needed` libtorch_cuda) is
//!   ddpm-nets' build script, included as a module.
use std::env;
use std::path::PathBuf;
use std::process::Command;

/// ddpm-nets' build script: the link set-up shared by every crate that links libtorch.
#[path = "../ddpm-nets/build.rs"]
mod link_libtorch;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=shim");
    for var in [
        "DEP_TCH_LIBTORCH_LIB",
        "LIBTORCH_INCLUDE",
        "LIBTORCH_USE_PYTORCH",
        "LIBTORCH_CXX11_ABI",
        "VIRTUAL_ENV",
        "DDPM_DIST_GLOO_INCLUDE",
        "DDPM_DIST_NCCL",
        "DDPM_DIST_CUDA_INCLUDE",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let lib = PathBuf::from(env::var_os("DEP_TCH_LIBTORCH_LIB").expect(
        "torch-sys did not export DEP_TCH_LIBTORCH_LIB: ddpm-dist needs libtorch's headers \
         (build through `cargo xtask cargo`, which points torch-sys at the project's .venv)",
    ));
    let include = env::var_os("LIBTORCH_INCLUDE")
        .filter(|_| env::var_os("LIBTORCH_USE_PYTORCH").is_none())
        .map(|dir| PathBuf::from(dir).join("include"))
        .unwrap_or_else(|| lib.join("../include"));
    let c10d = include.join("torch/csrc/distributed/c10d/ProcessGroupGloo.hpp");
    assert!(
        c10d.exists(),
        "{} is missing: the libtorch at {} has no c10d headers",
        c10d.display(),
        lib.display()
    );
    let gloo = env::var_os("DDPM_DIST_GLOO_INCLUDE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("shim/gloo_decls"));
    let abi = cxx11_abi();

    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++17")
        .pic(true)
        .warnings(true)
        .extra_warnings(true)
        // Debug info of the torch headers doubled the compile time (about 60 s → 30 s for both
        // files on a loaded 2-core machine); the shim's own frames are thin wrappers.
        .debug(false);
    for dir in [
        include.clone(),
        include.join("torch/csrc/api/include"),
        gloo,
    ] {
        build
            .flag("-isystem")
            .flag(dir.to_str().expect("UTF-8 include path"));
    }
    build
        .define("_GLIBCXX_USE_CXX11_ABI", abi.as_str())
        .define("GLOG_USE_GLOG_EXPORT", None)
        .define("USE_C10D_GLOO", None)
        .file("shim/group.cpp")
        .file("shim/gloo.cpp");
    let nccl_dirs = nccl_includes(&lib);
    if let Some(dirs) = &nccl_dirs {
        for dir in dirs {
            build
                .flag("-isystem")
                .flag(dir.to_str().expect("UTF-8 include path"));
        }
        build
            .define("USE_C10D_NCCL", None)
            .define("DDPM_DIST_NCCL", None)
            .file("shim/nccl.cpp");
        // The Rust side's tests know which backends this build has.
        println!("cargo:rustc-cfg=ddpm_dist_nccl");
    }
    println!("cargo::rustc-check-cfg=cfg(ddpm_dist_nccl)");
    build.compile("ddpm_dist_shim");

    // The shim's references to c10d resolve in libtorch_cpu (Gloo lives inside it) and libc10.
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
    if nccl_dirs.is_some() {
        // ProcessGroupNCCL is in libtorch_cuda (linked below); the device functions in c10_cuda.
        println!("cargo:rustc-link-lib=dylib=c10_cuda");
    }
    // rpath and `--no-as-needed` libtorch_cuda: the set-up every crate that links libtorch shares.
    link_libtorch::main();
}

/// The include folders of the NCCL build, or `None` (with a cargo warning naming what is missing)
/// when NCCL is left out: no `libtorch_cuda` (a CPU libtorch), `DDPM_DIST_NCCL=0`, or headers
/// that cannot be found.
fn nccl_includes(lib: &std::path::Path) -> Option<Vec<PathBuf>> {
    if env::var("DDPM_DIST_NCCL").is_ok_and(|v| v == "0") || !lib.join("libtorch_cuda.so").exists()
    {
        return None;
    }
    // The wheel layout: site-packages/torch/lib, site-packages/nvidia/{nccl,cu13}/include.
    let nvidia = lib.join("../../nvidia");
    let mut dirs: Vec<PathBuf> = env::var_os("DDPM_DIST_CUDA_INCLUDE")
        .map(|v| env::split_paths(&v).collect())
        .unwrap_or_default();
    dirs.extend(
        ["nccl/include", "cu13/include", "cu12/include"]
            .iter()
            .map(|d| nvidia.join(d))
            .filter(|d| d.is_dir()),
    );
    let missing: Vec<&str> = ["nccl.h", "cuda_runtime.h", "crt/host_config.h", "nv/target"]
        .into_iter()
        .filter(|h| !dirs.iter().any(|d| d.join(h).exists()))
        .collect();
    if !missing.is_empty() {
        println!(
            "cargo:warning=ddpm-dist: NCCL left out (Gloo only): {} not found under {} \
             (`cargo xtask setup` installs the nvidia-cuda-crt and nvidia-cuda-cccl header wheels; \
             DDPM_DIST_CUDA_INCLUDE adds folders)",
            missing.join(", "),
            nvidia.display()
        );
        return None;
    }
    Some(dirs)
}

/// libtorch's `_GLIBCXX_USE_CXX11_ABI`, found the way torch-sys finds it for its own C++.
fn cxx11_abi() -> String {
    if env::var_os("LIBTORCH_USE_PYTORCH").is_none() {
        return env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    }
    let python = if env::var_os("VIRTUAL_ENV").is_some() {
        "python"
    } else {
        "python3"
    };
    let out = Command::new(python)
        .args([
            "-c",
            "import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))",
        ])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python} to ask torch for its C++ ABI: {e}"));
    let abi = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success() && (abi == "0" || abi == "1"),
        "{python} did not report torch's C++ ABI ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    abi
}
