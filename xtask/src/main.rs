//! `cargo xtask`: project automation for ddpm-rs (set-up, data, weights, tests, quickstart).
//!
//! This crate is pure Rust with no libtorch or HDF5 dependency, so it builds on a fresh machine
//! before anything else exists; it creates the Python environment that provides libtorch and
//! cmake, then drives cargo and `ddpm-cli` with the right environment.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

mod bench;
mod bundle;
mod catalog;
mod ctx;
mod fetch;
mod venv;

use ctx::{run, Ctx};

/// Project automation for ddpm-rs.
#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    /// Build and run ddpm-cli in the release profile (the dev profile otherwise).
    #[arg(long, global = true)]
    release: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum DatasetChoice {
    /// MNIST (four gzipped IDX files, 11 MB).
    Mnist,
    /// Fashion-MNIST (four gzipped IDX files, 30 MB).
    FashionMnist,
    /// CIFAR-10 (the python archive, 163 MB).
    Cifar10,
    /// MNIST and Fashion-MNIST (CIFAR-10 only by name).
    All,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create (or check) the project-local virtual environment with torch==2.11.0 and cmake.
    Setup,
    /// Download (or copy with --from), verify and convert datasets to datasets/<name>.h5.
    FetchData {
        #[arg(long, value_enum, default_value = "mnist")]
        dataset: DatasetChoice,
        /// Folder holding the official files (or a folder with one sub-folder per dataset); for
        /// CIFAR-10 also the archive cifar-10-python.tar.gz itself.
        #[arg(long)]
        from: Option<PathBuf>,
        /// Rebuild even when a valid file is present.
        #[arg(long)]
        force: bool,
    },
    /// Install the FID Inception TorchScript into datasets/weights/.
    FetchWeights {
        /// A local copy of inception-2015-12-05.pt or fid-inception-pool3.pt (checked by sha256).
        #[arg(long)]
        from: Option<PathBuf>,
        /// Re-install even when a valid file is present.
        #[arg(long)]
        force: bool,
    },
    /// The README's test command: set-up, data, weights, fmt check, clippy -D warnings, all tests.
    Test,
    /// The README's main command: set-up, MNIST, a grid of real digits and a data summary.
    Quickstart,
    /// The lecture's experiment end to end: set-up, MNIST, the FID Inception and the digit
    /// classifier, then `ddpm-cli reproduce EXPERIMENT ARGS` in the release profile (train the
    /// DDPM, GAN and VAE, score every row beside its real-vs-real floor, write results.json,
    /// results.md, results.png). Running it again continues where it stopped.
    Reproduce {
        /// The experiment (`mnist`).
        experiment: String,
        /// Options of `ddpm-cli reproduce` (e.g. `--minutes-per-model 25 --out runs/r`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run `cargo <ARGS>` with the project environment (e.g. `cargo xtask cargo build --release`).
    Cargo {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run ddpm-cli with the project environment (e.g. `cargo xtask cli info`).
    Cli {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// ddpm-cli bench against PyTorch eager + diffusers' UNet2DModel (same weights, batch, dtype,
    /// threads), back to back and repeated; prints the side-by-side table and the ratios.
    BenchPytorch(bench::BenchArgs),
    /// A portable folder (≤ 60 MB) for a machine without cargo: the stripped release ddpm-cli, the
    /// `ddpm` launcher (finds the machine's torch 2.11), gpu_check.sh and MNIST's .gz files.
    Bundle(bundle::BundleArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("xtask lives one level below the workspace root")?
        .to_path_buf();
    let ctx = Ctx {
        root,
        release: cli.release,
    };
    match cli.command {
        Cmd::Setup => venv::ensure(&ctx.venv()).map(|_| ()),
        Cmd::FetchData {
            dataset,
            from,
            force,
        } => {
            venv::ensure(&ctx.venv())?;
            for spec in datasets_of(dataset) {
                fetch::fetch_dataset(&ctx, spec, from.as_deref(), force)?;
            }
            Ok(())
        }
        Cmd::FetchWeights { from, force } => {
            venv::ensure(&ctx.venv())?;
            fetch::fetch_weights(&ctx, from.as_deref(), force).map(|_| ())
        }
        Cmd::Test => test(&ctx),
        Cmd::Quickstart => quickstart(&Ctx {
            release: true,
            ..ctx
        }),
        Cmd::Reproduce { experiment, args } => reproduce(
            &Ctx {
                release: true,
                ..ctx
            },
            &experiment,
            &args,
        ),
        Cmd::Cargo { args } => {
            venv::ensure(&ctx.venv())?;
            run(ctx.cargo().args(args))
        }
        Cmd::Cli { args } => {
            venv::ensure(&ctx.venv())?;
            run(&mut ctx.ddpm_cli(args))
        }
        Cmd::BenchPytorch(args) => bench::bench_pytorch(&ctx, &args),
        Cmd::Bundle(args) => bundle::bundle(&ctx, &args),
    }
}

fn datasets_of(choice: DatasetChoice) -> Vec<&'static catalog::DatasetSpec> {
    match choice {
        DatasetChoice::Mnist => vec![&catalog::MNIST],
        DatasetChoice::FashionMnist => vec![&catalog::FASHION_MNIST],
        DatasetChoice::Cifar10 => vec![&catalog::CIFAR10],
        DatasetChoice::All => vec![&catalog::MNIST, &catalog::FASHION_MNIST],
    }
}

fn step(name: &str) {
    eprintln!("\n==> {name}");
}

fn test(ctx: &Ctx) -> Result<()> {
    let start = std::time::Instant::now();
    step("set-up (virtual environment with torch and cmake)");
    venv::ensure(&ctx.venv())?;
    step("datasets");
    for spec in datasets_of(DatasetChoice::All) {
        fetch::fetch_dataset(ctx, spec, None, false)?;
    }
    step("FID Inception weights");
    fetch::fetch_weights(ctx, None, false)?;
    step("cargo fmt --check");
    run(ctx.cargo().args(["fmt", "--all", "--", "--check"]))?;
    step("cargo clippy -D warnings");
    run(ctx.cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    step("cargo test");
    run(ctx.cargo().args(["test", "--workspace"]))?;
    eprintln!(
        "\nall checks passed in {:.0} s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn quickstart(ctx: &Ctx) -> Result<()> {
    let start = std::time::Instant::now();
    step("set-up (virtual environment with torch and cmake)");
    venv::ensure(&ctx.venv())?;
    step("MNIST");
    fetch::fetch_dataset(ctx, &catalog::MNIST, None, false)?;
    step("FID Inception weights");
    if let Err(e) = fetch::fetch_weights(ctx, None, false) {
        eprintln!("warning: FID weights unavailable ({e:#}); evaluation will need them");
    }
    step("ddpm-cli info");
    let info = ctx
        .ddpm_cli(["info", "--json"])
        .output()
        .context("cannot run ddpm-cli info")?;
    if !info.status.success() {
        bail!(
            "ddpm-cli info failed: {}",
            String::from_utf8_lossy(&info.stderr)
        );
    }
    let cuda = String::from_utf8_lossy(&info.stdout).contains("\"cuda_available\": true");
    run(&mut ctx.ddpm_cli(["info"]))?;
    let out = ctx.root.join("runs/quickstart");
    let os = |p: &Path| p.as_os_str().to_owned();
    step("a look at the data");
    let data = ctx.datasets().join("mnist.h5");
    run(ctx
        .ddpm_cli(["data", "summary", "--file"])
        .arg(&data)
        .arg("--grid")
        .arg(out.join("real_digits.png")))?;
    let preset = if cuda { "mnist" } else { "mnist-cpu" };
    step(&format!(
        "train a DDPM (preset {preset}; Ctrl-C saves, and running quickstart again resumes)"
    ));
    let run_dir = out.join("ddpm");
    let mut train = ctx.ddpm_cli(["train"]);
    if run_dir.join("config.toml").exists() {
        train.arg("--resume").arg(&run_dir);
    } else {
        train.args(["--preset", preset, "--out"]).arg(&run_dir);
    }
    run(&mut train)?;
    step("sample 64 digits with DDIM, 50 steps");
    let samples = out.join("samples.h5");
    run(ctx
        .ddpm_cli([
            "sample",
            "--num",
            "64",
            "--sampler",
            "ddim",
            "--steps",
            "50",
            "--model",
        ])
        .arg(os(&run_dir))
        .arg("--out")
        .arg(&samples)
        .arg("--grid")
        .arg(out.join("samples.png"))
        .arg("--trajectory")
        .arg(out.join("trajectory.png")))?;
    let (fake, real) = quickstart_scores(ctx, &run_dir, &out)?;
    eprintln!(
        "\nquickstart done in {:.0} min. In {}:\n  real_digits.png  training data\n  ddpm/            the run (config.toml, metrics.jsonl, train.log, loss.png, samples/, checkpoints/)\n  samples.h5       64 generated digits, uint8 [N,28,28,1]\n  samples.png      their grid; trajectory.png one chain from noise to digit\n  scored.h5        {SCORED} digits drawn with DPM-Solver++ (20 steps) for the score below",
        start.elapsed().as_secs_f64() / 60.0,
        out.display()
    );
    eprintln!(
        "\nFID_cls against {SCORED} MNIST test images (lower is better; the digit classifier's features):\n  {SCORED} generated digits      {fake:8.3}\n  {SCORED} real training digits  {real:8.3}   (real vs real: the floor at this sample size)"
    );
    Ok(())
}

/// `cargo xtask reproduce`: what the experiment needs, then the command itself.
fn reproduce(ctx: &Ctx, experiment: &str, args: &[String]) -> Result<()> {
    step("set-up (virtual environment with torch and cmake)");
    venv::ensure(&ctx.venv())?;
    step("MNIST");
    fetch::fetch_dataset(ctx, &catalog::MNIST, None, false)?;
    step("FID Inception weights");
    fetch::fetch_weights(ctx, None, false)?;
    ensure_classifier(ctx)?;
    step(&format!(
        "ddpm-cli reproduce {experiment} (Ctrl-C stops it with everything saved; the same command continues)"
    ));
    run(ctx.ddpm_cli(["reproduce", experiment]).args(args))
}

/// Trains the MNIST digit classifier of FID_cls when it is missing (resuming an interrupted one).
fn ensure_classifier(ctx: &Ctx) -> Result<PathBuf> {
    let classifier = ctx.datasets().join("weights/classifier-mnist");
    if !classifier.join("model.safetensors").exists() {
        step("train the digit classifier of FID_cls (once; datasets/weights/classifier-mnist)");
        let mut cmd = ctx.ddpm_cli(["train-classifier", "--dataset", "mnist"]);
        if classifier.join("config.toml").exists() {
            cmd.arg("--resume").arg(&classifier);
        }
        run(&mut cmd)?;
    }
    Ok(classifier)
}

/// Images on each side of the quickstart's FID_cls.
const SCORED: usize = 1000;

/// Trains the MNIST digit classifier when it is missing (resuming an interrupted one), draws
/// [`SCORED`] digits with DPM-Solver++ and returns their FID_cls against the first [`SCORED`] test
/// images, and that of as many training images (real vs real) for scale.
fn quickstart_scores(ctx: &Ctx, run_dir: &Path, out: &Path) -> Result<(f64, f64)> {
    let classifier = ensure_classifier(ctx)?;
    step(&format!(
        "sample {SCORED} digits with DPM-Solver++, 20 steps, and score them"
    ));
    let scored = out.join("scored.h5");
    run(ctx
        .ddpm_cli(["sample", "--sampler", "dpm++", "--steps", "20", "--model"])
        .arg(run_dir)
        .arg("--num")
        .arg(SCORED.to_string())
        .arg("--out")
        .arg(&scored))?;
    let data = ctx.datasets().join("mnist.h5");
    let test = format!("{}:test", data.display());
    let fid_cls = |fake: &str| -> Result<f64> {
        let output = ctx
            .ddpm_cli([
                "eval",
                "--fid-cls",
                "--json",
                "--real",
                &test,
                "--fake",
                fake,
            ])
            .arg("--classifier")
            .arg(&classifier)
            .arg("--limit")
            .arg(SCORED.to_string())
            .output()
            .context("cannot run ddpm-cli eval")?;
        if !output.status.success() {
            bail!(
                "ddpm-cli eval failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let v: serde_json::Value = serde_json::from_slice(&output.stdout)
            .context("ddpm-cli eval --json printed no JSON")?;
        v["fid_cls"]
            .as_f64()
            .context("ddpm-cli eval --json printed no fid_cls")
    };
    let fake = fid_cls(&scored.display().to_string())?;
    let real = fid_cls(&format!("{}:train", data.display()))?;
    Ok((fake, real))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reproduce_passes_every_option_on_to_ddpm_cli() {
        let cli = Cli::try_parse_from([
            "cargo xtask",
            "reproduce",
            "mnist",
            "--minutes-per-model",
            "5",
            "--out",
            "runs/r",
            "--force",
        ])
        .unwrap();
        match cli.command {
            Cmd::Reproduce { experiment, args } => {
                assert_eq!(experiment, "mnist");
                assert_eq!(
                    args,
                    ["--minutes-per-model", "5", "--out", "runs/r", "--force"]
                );
            }
            _ => panic!("not the reproduce command"),
        }
    }
}
