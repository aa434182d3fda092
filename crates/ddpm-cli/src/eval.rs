//! `ddpm-cli eval`: FID and Inception Score of generated images against real ones.
use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use ddpm_metrics::inception::{EvalOptions, Inception, FULL_FILE_NAME, POOL3_FILE_NAME};
use ddpm_metrics::{frechet_terms, inception_score, FeatureStats, ImageSource, RefStats};
use ddpm_nets::device::DeviceSpec;
use ndarray::Array4;
use serde_json::{json, Map, Value};

/// Where `--inception` is looked for when not given, in order (relative to the working folder).
const DEFAULT_INCEPTION: [&str; 2] = [
    "datasets/weights/inception-2015-12-05.pt",
    "datasets/weights/fid-inception-pool3.pt",
];

/// Compare generated images with real ones: FID and Inception Score.
///
/// Image sources (SRC): a folder of PNG files (sorted by name), an HDF5 samples file with a
/// uint8 dataset `images` ([N, H, W, C] or [N, H, W]), or a dataset split `FILE.h5:SPLIT`
/// (e.g. `datasets/mnist.h5:test`).
#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// Real images (needed for FID).
    #[arg(long, value_name = "SRC")]
    pub real: Option<String>,
    /// Generated images.
    #[arg(long, value_name = "SRC")]
    pub fake: String,
    /// Fréchet Inception Distance between real and fake.
    #[arg(long)]
    pub fid: bool,
    /// Inception Score of the fake images (needs the full `inception-2015-12-05.pt`).
    #[arg(long = "is")]
    pub inception_score: bool,
    /// FID with the digit classifier's features (not yet available).
    #[arg(long)]
    pub fid_cls: bool,
    /// IS with the digit classifier's probabilities (not yet available).
    #[arg(long)]
    pub is_cls: bool,
    /// TorchScript Inception: NVIDIA's inception-2015-12-05.pt (FID and IS) or
    /// fid-inception-pool3.pt (FID only). Default: the first of datasets/weights/{inception-2015-12-05.pt,fid-inception-pool3.pt}.
    #[arg(long, value_name = "FILE")]
    pub inception: Option<PathBuf>,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// Use at most N images from each side (the first N).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Device: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: DeviceSpec,
    /// Images per Inception forward pass.
    #[arg(long, default_value_t = 50)]
    pub batch_size: usize,
    /// Splits for the Inception Score.
    #[arg(long, default_value_t = ddpm_metrics::inception_score::DEFAULT_SPLITS)]
    pub splits: usize,
    /// Cache for the real side's Inception statistics (HDF5): used when it records the same
    /// images and network, (re)written otherwise.
    #[arg(long, value_name = "FILE")]
    pub real_stats: Option<PathBuf>,
}

/// Runs `ddpm-cli eval`.
pub fn run(args: EvalArgs) -> Result<()> {
    if args.fid_cls || args.is_cls {
        bail!(
            "--fid-cls / --is-cls are not yet available: they need the MNIST digit classifier from ddpm-nets, which is not wired into eval yet"
        );
    }
    if !args.fid && !args.inception_score {
        bail!("nothing to compute: pass --fid and/or --is");
    }
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    if args.limit == Some(0) {
        bail!("--limit must be at least 1");
    }
    let real_src = match (&args.real, args.fid) {
        (Some(r), _) => Some(ImageSource::parse(r).context("--real")?),
        (None, true) => bail!("--fid needs --real SRC"),
        (None, false) => None,
    };
    let fake_src = ImageSource::parse(&args.fake).context("--fake")?;

    let device = args.device.resolve().context("--device")?;
    let inception_path = match &args.inception {
        Some(p) => p.clone(),
        None => DEFAULT_INCEPTION.iter().map(PathBuf::from).find(|p| p.is_file()).with_context(|| {
            format!(
                "no Inception weights: neither {} nor {} exists; run `cargo xtask fetch-weights` or pass --inception FILE ({FULL_FILE_NAME} for FID and IS, {POOL3_FILE_NAME} for FID)",
                DEFAULT_INCEPTION[0], DEFAULT_INCEPTION[1]
            )
        })?,
    };
    let net = Inception::load(&inception_path, device)?;
    if args.inception_score {
        net.require_classifier()?;
    }
    let opts = |features: bool, probabilities: bool| EvalOptions {
        batch_size: args.batch_size,
        features,
        probabilities,
        progress: std::io::stderr().is_terminal(),
    };

    let fake = load(&fake_src, args.limit, "--fake")?;
    let n_fake = fake.dim().0;
    let mut real_stats: Option<FeatureStats> = None;
    let mut n_real = None;
    if let Some(src) = &real_src {
        let real = load(src, args.limit, "--real")?;
        n_real = Some(real.dim().0);
        if args.fid {
            real_stats = Some(real_statistics(&net, src, &real, &args, opts(true, false))?);
        }
    }

    let mut out = Map::new();
    let same_source = real_src.as_ref() == Some(&fake_src);
    let fake_out = if args.fid && same_source {
        tracing::info!("--real and --fake are the same images: reusing the real statistics");
        let probs = if args.inception_score {
            net.evaluate(fake.view(), &opts(false, true))?.probabilities
        } else {
            None
        };
        ddpm_metrics::InceptionOutputs {
            stats: real_stats.clone(),
            probabilities: probs,
        }
    } else {
        net.evaluate(fake.view(), &opts(args.fid, args.inception_score))?
    };
    if args.fid {
        let (Some(r), Some(f)) = (&real_stats, &fake_out.stats) else {
            unreachable!("FID statistics computed above")
        };
        let terms = frechet_terms(r, f)?;
        out.insert("fid".into(), json!(terms.distance));
    }
    if args.inception_score {
        let probs = fake_out
            .probabilities
            .as_ref()
            .expect("probabilities computed above");
        let s = inception_score(probs.view(), args.splits)?;
        out.insert("is_mean".into(), json!(s.mean));
        out.insert("is_std".into(), json!(s.std));
    }
    if let Some(n) = n_real {
        out.insert("n_real".into(), json!(n));
    }
    out.insert("n_fake".into(), json!(n_fake));

    if args.json {
        println!("{}", Value::Object(out));
    } else {
        println!("network  {}", net.describe());
        if let Some(src) = &real_src {
            println!("real     {src} ({} images)", n_real.unwrap_or(0));
        }
        println!("fake     {fake_src} ({n_fake} images)");
        if let Some(v) = out.get("fid") {
            println!("FID      {:.4}", v.as_f64().unwrap_or(f64::NAN));
        }
        if let (Some(m), Some(s)) = (out.get("is_mean"), out.get("is_std")) {
            println!(
                "IS       {:.4} ± {:.4} ({} splits)",
                m.as_f64().unwrap_or(f64::NAN),
                s.as_f64().unwrap_or(f64::NAN),
                args.splits
            );
        }
    }
    Ok(())
}

fn load(src: &ImageSource, limit: Option<usize>, flag: &str) -> Result<Array4<u8>> {
    src.load(limit).with_context(|| format!("{flag} {src}"))
}

/// The real side's feature statistics, through the `--real-stats` cache when one is given.
fn real_statistics(
    net: &Inception,
    src: &ImageSource,
    images: &Array4<u8>,
    args: &EvalArgs,
    opts: EvalOptions,
) -> Result<FeatureStats> {
    let canonical = std::fs::canonicalize(src.path()).unwrap_or_else(|_| src.path().to_path_buf());
    let described = match src {
        ImageSource::Split { split, .. } => format!("{}:{split}", canonical.display()),
        ImageSource::PngDir { .. } => format!("{}/*.png", canonical.display()),
        ImageSource::Samples { .. } => canonical.display().to_string(),
    };
    let description = format!("{described}, first {} images", images.dim().0);
    let network = net.describe();
    if let Some(cache) = &args.real_stats {
        if let Some(stats) = RefStats::load_matching(cache, &description, &network)? {
            return Ok(stats);
        }
    }
    let stats = net
        .evaluate(images.view(), &opts)?
        .stats
        .expect("features were asked for");
    if let Some(cache) = &args.real_stats {
        RefStats {
            stats: stats.clone(),
            source: description,
            network,
        }
        .save(cache)?;
    }
    Ok(stats)
}
