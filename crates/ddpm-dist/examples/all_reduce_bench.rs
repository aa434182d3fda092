//! Times Gloo all-reduces between processes on this machine, at the sizes data-parallel training
//! of the project's UNets would send: the parameter counts of the `mnist-cpu` UNet and of the
//! CIFAR-10 UNet (35,746,307), as f32.
//!
//! ```text
//! cargo xtask cargo run --release -p ddpm-dist --example all_reduce_bench -- [--nproc 2] [--iters 5]
//!     [--floats N]... [--bucket-mb 25]
//! ```
//!
//! It starts `--nproc` copies of itself as the ranks of a job on 127.0.0.1 (one intra-op thread
//! each, as torchrun sets) and rank 0 prints, per size: one blocking `all_reduce_sum` of the whole
//! buffer, the same buffer as `--bucket-mb` slices in flight at once (`all_reduce_sum_async`),
//! and a 3-float all-reduce (the per-log-window control message). Times are min and median over
//! `--iters` runs after one warm-up, each started behind a barrier; the sums are checked.
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use ddpm_dist::{Backend, DistEnv, ProcessGroup};
use ddpm_nets::unet::{num_parameters, DownBlockType, SampleSize, UNet2DModel, UpBlockType};
use ddpm_nets::UNetConfig;
use tch::{nn, Device, Kind, Tensor};

const RANK_VAR: &str = "DDPM_DIST_BENCH_RANK";

fn flag<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} {v}: not a valid value"))
        })
        .unwrap_or(default)
}

/// The `mnist-cpu` preset's UNet (`ddpm_train::TrainConfig::mnist_cpu`: levels 32, 64, 64, one
/// residual block per level, attention at 7×7, 8 groups), restated because ddpm-train comes after
/// ddpm-dist in the crate chain.
fn mnist_cpu_unet() -> UNetConfig {
    UNetConfig {
        sample_size: Some(SampleSize::Square(28)),
        in_channels: 1,
        out_channels: 1,
        block_out_channels: vec![32, 64, 64],
        layers_per_block: 1,
        down_block_types: vec![
            DownBlockType::Down,
            DownBlockType::Down,
            DownBlockType::AttnDown,
        ],
        up_block_types: vec![UpBlockType::AttnUp, UpBlockType::Up, UpBlockType::Up],
        norm_num_groups: 8,
        dropout: 0.0,
        ..UNetConfig::default()
    }
}

fn parameters(cfg: &UNetConfig) -> i64 {
    let vs = nn::VarStore::new(Device::Cpu);
    UNet2DModel::new(vs.root(), cfg).expect("a valid UNet config");
    num_parameters(&vs)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if std::env::var_os(RANK_VAR).is_some() {
        rank(&args);
        return ExitCode::SUCCESS;
    }
    launch(&args)
}

fn launch(args: &[String]) -> ExitCode {
    let nproc: usize = flag(args, "--nproc", 2);
    let mut sizes: Vec<(String, i64)> = args
        .windows(2)
        .filter(|w| w[0] == "--floats")
        .map(|w| {
            let n = w[1].parse().expect("--floats N");
            (format!("{n} floats"), n)
        })
        .collect();
    if sizes.is_empty() {
        sizes = vec![
            ("mnist-cpu UNet".into(), parameters(&mnist_cpu_unet())),
            ("CIFAR-10 UNet".into(), parameters(&UNetConfig::default())),
        ];
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let sizes_arg: Vec<String> = sizes
        .iter()
        .map(|(name, n)| format!("{name}={n}"))
        .collect();
    let exe = std::env::current_exe().expect("own path");
    let mut children: Vec<_> = (0..nproc)
        .map(|r| {
            Command::new(&exe)
                .args(args)
                .arg("--sizes")
                .arg(sizes_arg.join(","))
                .env(RANK_VAR, "1")
                .env("RANK", r.to_string())
                .env("LOCAL_RANK", r.to_string())
                .env("WORLD_SIZE", nproc.to_string())
                .env("LOCAL_WORLD_SIZE", nproc.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", port.to_string())
                .env("OMP_NUM_THREADS", "1")
                .env_remove("TORCHELASTIC_USE_AGENT_STORE")
                .spawn()
                .expect("start a rank")
        })
        .collect();
    let mut ok = true;
    for child in &mut children {
        ok &= child.wait().is_ok_and(|s| s.success());
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Min and median of `times`, in seconds.
/// Minimum and median seconds of `iters` runs of `reduce` on `buf` (after one warm-up run), each
/// started together on every rank (a barrier) from `buf` filled with `rank + 1`, and checked.
fn timed(
    iters: usize,
    g: &ProcessGroup,
    buf: &mut Tensor,
    rank: usize,
    check: &dyn Fn(&Tensor),
    mut reduce: impl FnMut(&mut Tensor),
) -> (f64, f64) {
    let mut times = Vec::new();
    for i in 0..=iters {
        let _ = buf.fill_((rank + 1) as f64);
        g.barrier().expect("barrier");
        let start = Instant::now();
        reduce(buf);
        let secs = start.elapsed().as_secs_f64();
        check(buf);
        if i > 0 {
            times.push(secs);
        }
    }
    stats(times)
}

fn stats(mut times: Vec<f64>) -> (f64, f64) {
    times.sort_by(f64::total_cmp);
    (times[0], times[times.len() / 2])
}

fn rank(args: &[String]) {
    tch::set_num_threads(1);
    let iters: usize = flag(args, "--iters", 5);
    let bucket_mb: f64 = flag(args, "--bucket-mb", 25.0);
    let sizes: Vec<(String, i64)> = flag::<String>(args, "--sizes", String::new())
        .split(',')
        .map(|s| {
            let (name, n) = s.rsplit_once('=').expect("name=floats");
            (name.to_string(), n.parse().expect("a float count"))
        })
        .collect();
    let env = DistEnv::from_env()
        .expect("the launcher's variables")
        .expect("WORLD_SIZE is set");
    let g = ProcessGroup::init(&env, Backend::Gloo, Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}"));
    let (r, w) = (g.rank(), g.world_size() as f64);
    let want = w * (w + 1.0) / 2.0;
    let say = |line: String| {
        if r == 0 {
            println!("{line}");
        }
    };
    say(format!(
        "Gloo all-reduce (sum, f32) between {} processes on 127.0.0.1, 1 thread each; \
         min / median of {iters} after a warm-up",
        g.world_size()
    ));
    for (name, n) in sizes {
        let bytes = n as f64 * 4.0;
        // Bus bandwidth as NCCL's tests define it: data each rank sends and receives per second.
        let busbw = |secs: f64| bytes * 2.0 * (w - 1.0) / w / secs / 1e9;
        let mut buf = Tensor::empty([n], (Kind::Float, Device::Cpu));
        let check = |buf: &Tensor| {
            let (lo, hi) = (buf.min().double_value(&[]), buf.max().double_value(&[]));
            assert!(
                lo == want && hi == want,
                "sum is in [{lo}, {hi}], want {want}"
            );
        };

        let (min, med) = timed(iters, &g, &mut buf, r, &check, |buf| {
            g.all_reduce_sum(buf).expect("all_reduce_sum");
        });
        say(format!(
            "{name}: {n} floats ({:.1} MB): one call {min:.4} s / {med:.4} s ({:.2} GB/s bus bandwidth)",
            bytes / 1e6,
            busbw(med)
        ));

        let bucket = ((bucket_mb * 1e6 / 4.0) as i64).max(1);
        let (min, med) = timed(iters, &g, &mut buf, r, &check, |buf| {
            let mut slices: Vec<Tensor> = (0..n)
                .step_by(bucket as usize)
                .map(|s| buf.narrow(0, s, bucket.min(n - s)))
                .collect();
            let works: Vec<_> = slices
                .iter_mut()
                .map(|s| g.all_reduce_sum_async(s).expect("all_reduce_sum_async"))
                .collect();
            for work in works {
                work.wait().expect("wait");
            }
        });
        say(format!(
            "{name}: {} slices of <= {bucket_mb} MB in flight: {min:.4} s / {med:.4} s",
            (n + bucket - 1) / bucket
        ));
    }
    let mut small = Tensor::zeros([3], (Kind::Float, Device::Cpu));
    let times: Vec<f64> = (0..200)
        .map(|_| {
            let start = Instant::now();
            g.all_reduce_sum(&mut small).expect("small all_reduce_sum");
            start.elapsed().as_secs_f64()
        })
        .collect();
    let (min, med) = stats(times);
    say(format!(
        "3 floats (control message): {:.0} us / {:.0} us",
        min * 1e6,
        med * 1e6
    ));
    g.barrier().expect("final barrier");
}
