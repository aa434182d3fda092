//! `ddpm-cli info`: versions, the device libtorch would use, the distributed backends, and which data
//! and weights are present.
use std::path::PathBuf;

use anyhow::Result;
use ddpm_nets::device::DeviceReport;

/// Arguments of `ddpm-cli info`.
#[derive(clap::Args)]
pub struct InfoArgs {
    /// Folder where datasets and weights live.
    #[arg(long, default_value = "datasets")]
    datasets: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: InfoArgs) -> Result<()> {
    let report = DeviceReport::collect();
    let files = present_files(&args.datasets);
    if args.json {
        let v = serde_json::json!({
            "ddpm_cli": env!("CARGO_PKG_VERSION"),
            "tch": "0.24",
            "device": report,
            "host_allocator": ddpm_nets::host_memory::current().to_string(),
            "distributed_backends": ddpm_dist::Backend::ALL
                .iter()
                .map(|b| (b.name().to_string(), serde_json::json!(b.is_built())))
                .collect::<serde_json::Map<_, _>>(),
            "files": files.iter().map(|(k, v)| (k.clone(), serde_json::json!(v))).collect::<serde_json::Map<_, _>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("ddpm-cli {} (tch 0.24)", env!("CARGO_PKG_VERSION"));
    println!(
        "libtorch {} loaded from {}",
        report
            .libtorch_version
            .as_deref()
            .unwrap_or("<unknown version>"),
        report
            .libtorch_loaded_from
            .as_ref()
            .map_or("<not found>".to_string(), |p| p.display().to_string())
    );
    println!("  built against {}", report.libtorch_built_against);
    println!(
        "  libtorch_cuda linked: {}",
        if report.linked_torch_cuda {
            "yes"
        } else {
            "no"
        }
    );
    let wait = &report.cpu_wait_policy;
    println!(
        "cpu: {} threads ({} CPUs available to this process), OpenMP wait policy {} ({})",
        report.cpu_threads,
        report.cpu_available,
        wait.omp_wait_policy
            .as_deref()
            .unwrap_or("spin, then sleep"),
        wait.set_by
    );
    println!("  host memory: {}", ddpm_nets::host_memory::current());
    println!(
        "cuda: {} ({} device(s)){}",
        if report.cuda_available {
            "available"
        } else {
            "not available"
        },
        report.cuda_device_count,
        if report.cuda_available {
            format!(
                ", cudnn {} {}, driver {}, libtorch built for CUDA {}, TF32 matmul override {}",
                report.cudnn_available,
                report.cudnn_version.as_deref().unwrap_or("?"),
                report.cuda_driver_version.as_deref().unwrap_or("?"),
                report.libtorch_cuda_version.as_deref().unwrap_or("-"),
                report.tf32_cublas_override.as_deref().unwrap_or("unset"),
            )
        } else {
            String::new()
        }
    );
    for (i, d) in report.cuda_devices.iter().enumerate() {
        println!(
            "  cuda:{i} {} (compute capability {}, {:.0} MiB, bf16 {})",
            d.name,
            d.compute_capability,
            d.total_memory_mib,
            if d.bf16_supported { "yes" } else { "no" }
        );
    }
    println!("device (--device auto): {}", report.auto_device);
    let backends: Vec<String> = ddpm_dist::Backend::ALL
        .iter()
        .map(|b| format!("{b} {}", if b.is_built() { "yes" } else { "not built" }))
        .collect();
    println!("distributed backends: {}", backends.join(", "));
    println!("data and weights in {}:", args.datasets.display());
    for (name, state) in &files {
        println!("  {name:<32} {state}");
    }
    Ok(())
}

/// The files the project installs, and whether each is there.
fn present_files(dir: &std::path::Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (name, fetch) in [
        ("mnist.h5", "cargo xtask fetch-data"),
        (
            "fashion-mnist.h5",
            "cargo xtask fetch-data --dataset fashion-mnist",
        ),
        ("cifar10.h5", "cargo xtask fetch-data --dataset cifar10"),
    ] {
        let path = dir.join(name);
        let state = match ddpm_train::data::check_dataset(&path) {
            Ok(s) => format!("present ({} train, {} test)", s.n_train, s.n_test),
            Err(_) if !path.exists() => format!("missing ({fetch})"),
            Err(e) => format!("invalid: {e}"),
        };
        out.push((name.to_string(), state));
    }
    let record = dir.join("weights/inception.json");
    let state = match std::fs::read_to_string(&record) {
        Ok(text) => match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(v) => {
                let file = dir
                    .join("weights")
                    .join(v["file"].as_str().unwrap_or_default());
                if file.exists() {
                    format!(
                        "{} variant: {}",
                        v["variant"].as_str().unwrap_or("?"),
                        file.display()
                    )
                } else {
                    format!("recorded but missing: {}", file.display())
                }
            }
            Err(e) => format!("unreadable record {}: {e}", record.display()),
        },
        Err(_) => "missing (cargo xtask fetch-weights)".to_string(),
    };
    out.push(("FID Inception".to_string(), state));
    for dataset in ["mnist", "fashion-mnist"] {
        let folder = dir.join("weights").join(format!("classifier-{dataset}"));
        let state = match ddpm_train::classifier::read_report(&folder) {
            Ok(r) => format!(
                "present (test accuracy {:.4}): {}",
                r.test_accuracy,
                folder.display()
            ),
            Err(_) => format!("missing (ddpm-cli train-classifier --dataset {dataset})"),
        };
        out.push((format!("classifier {dataset}"), state));
    }
    out
}
