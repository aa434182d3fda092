//! `ddpm-cli eval`: FID and Inception Score of generated images against real ones, the digit
//! classifier's FID_cls / IS_cls, and the bits/dim of a DDPM or VAE run on real images.
use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use ddpm_metrics::domain::domain_scores;
use ddpm_metrics::inception::{EvalOptions, Inception, FULL_FILE_NAME, POOL3_FILE_NAME};
use ddpm_metrics::nll::NllOptions;
use ddpm_metrics::refstats::{reference_stats, source_description};
use ddpm_metrics::{
    frechet_terms, images_to_nchw_tensor, inception_score, FeatureStats, ImageSource,
};
use ddpm_nets::device::DeviceSpec;
use ndarray::Array4;
use serde_json::{json, Map, Value};

use crate::bits_per_dim;
use crate::weights::{
    self, DEFAULT_MNIST_CLASSIFIER, FETCH_WEIGHTS_COMMAND, FULL_INCEPTION, POOL3_INCEPTION,
};

/// Where `--inception` is looked for when not given, in order (relative to the working folder).
const DEFAULT_INCEPTION: [&str; 2] = [FULL_INCEPTION, POOL3_INCEPTION];

/// Compare generated images with real ones (FID, IS, FID_cls, IS_cls), or measure a model's
/// bits/dim on real images (--nll).
///
/// Image sources (SRC): a folder of PNG files (sorted by name), an HDF5 samples file with a
/// uint8 dataset `images` ([N, H, W, C] or [N, H, W]), or a dataset split `FILE.h5:SPLIT`
/// (e.g. `datasets/mnist.h5:test`).
#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// Real images (needed for FID).
    #[arg(long, value_name = "SRC")]
    pub real: Option<String>,
    /// Generated images (needed for FID, IS, FID_cls and IS_cls).
    #[arg(long, value_name = "SRC")]
    pub fake: Option<String>,
    /// Fréchet Inception Distance between real and fake.
    #[arg(long)]
    pub fid: bool,
    /// Inception Score of the fake images (needs the full `inception-2015-12-05.pt`).
    #[arg(long = "is")]
    pub inception_score: bool,
    /// FID with the digit classifier's penultimate features (real vs fake).
    #[arg(long)]
    pub fid_cls: bool,
    /// Inception Score with the digit classifier's softmax (fake).
    #[arg(long)]
    pub is_cls: bool,
    /// Folder of the digit classifier (from `ddpm-cli train-classifier --dataset mnist`).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_MNIST_CLASSIFIER)]
    pub classifier: PathBuf,
    /// Bits/dim of --model on --data: the DDPM's full variational bound over all T steps (with
    /// its parts L_T, Σ L_t, L_0), or a VAE's negative ELBO.
    #[arg(long)]
    pub nll: bool,
    /// Run directory (DDPM or VAE) or diffusers folder for --nll.
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Real images for --nll (e.g. datasets/mnist.h5:test).
    #[arg(long, value_name = "SRC")]
    pub data: Option<String>,
    /// Images per group for --nll (each group is tiled over timesteps).
    #[arg(long, default_value_t = 16)]
    pub nll_batch: usize,
    /// Largest network batch (images × timesteps) for --nll.
    #[arg(long, default_value_t = 512)]
    pub nll_forward_batch: usize,
    /// Seed of the noise of --nll.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
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
    #[arg(long, default_value = "auto", value_parser = crate::choices::device)]
    pub device: DeviceSpec,
    /// Images per Inception forward pass.
    #[arg(long, default_value_t = 50)]
    pub batch_size: usize,
    /// Splits for the Inception Score.
    #[arg(long, default_value_t = ddpm_metrics::inception_score::DEFAULT_SPLITS, value_parser = crate::choices::count)]
    pub splits: usize,
    /// Cache for the real side's Inception statistics (HDF5): used when it records the same
    /// decoded pixels (a sha256 of them, not the file names) and the same network; recomputed and
    /// rewritten otherwise, saying why.
    #[arg(long, value_name = "FILE")]
    pub real_stats: Option<PathBuf>,
}

/// Runs `ddpm-cli eval`.
pub fn run(args: EvalArgs) -> Result<()> {
    if let Some(p) = &args.real_stats {
        crate::outputs::check_outputs(&[("--real-stats", p, crate::outputs::HDF5)])?;
    }
    let inception_wanted = args.fid || args.inception_score;
    let classifier_wanted = args.fid_cls || args.is_cls;
    if !inception_wanted && !classifier_wanted && !args.nll {
        bail!(crate::usage!(
            "nothing to compute: pass --fid, --is, --fid-cls, --is-cls and/or --nll"
        ));
    }
    if args.batch_size == 0 {
        bail!(crate::usage!("--batch-size must be at least 1"));
    }
    if args.limit == Some(0) {
        bail!(crate::usage!("--limit must be at least 1"));
    }
    let device = args.device.resolve().context("--device")?;
    let mut out = Map::new();
    let mut lines = Vec::new();
    if args.nll {
        nll(&args, device, &mut out, &mut lines)?;
    }
    if inception_wanted || classifier_wanted {
        let fake_src = match &args.fake {
            Some(f) => ImageSource::parse(f).context("--fake")?,
            None => bail!(crate::usage!(
                "--fid, --is, --fid-cls and --is-cls need --fake SRC"
            )),
        };
        let real_src = match (&args.real, args.fid || args.fid_cls) {
            (Some(r), _) => Some(ImageSource::parse(r).context("--real")?),
            (None, true) => bail!(crate::usage!("--fid and --fid-cls need --real SRC")),
            (None, false) => None,
        };
        let fake = load(&fake_src, args.limit, "--fake")?;
        let real = match &real_src {
            Some(src) => Some(load(src, args.limit, "--real")?),
            None => None,
        };
        if let (Some(src), Some(r)) = (&real_src, &real) {
            out.insert("n_real".into(), json!(r.dim().0));
            lines.push(format!("real     {src} ({} images)", r.dim().0));
        }
        out.insert("n_fake".into(), json!(fake.dim().0));
        lines.push(format!("fake     {fake_src} ({} images)", fake.dim().0));
        if let Some(r) = &real {
            warn_if_shapes_differ(r, &fake, &mut out);
        }
        if inception_wanted {
            inception_metrics(
                &args,
                device,
                real_src.as_ref(),
                real.as_ref(),
                &fake_src,
                &fake,
                &mut out,
                &mut lines,
            )?;
        }
        if classifier_wanted {
            classifier_metrics(&args, device, real.as_ref(), &fake, &mut out, &mut lines)?;
        }
    }
    if args.json {
        println!("{}", Value::Object(out));
    } else {
        for l in lines {
            println!("{l}");
        }
    }
    Ok(())
}

/// `--nll`: bits/dim of `--model` on `--data`.
fn nll(
    args: &EvalArgs,
    device: tch::Device,
    out: &mut Map<String, Value>,
    lines: &mut Vec<String>,
) -> Result<()> {
    let Some(model) = &args.model else {
        bail!(crate::usage!(
            "--nll needs --model RUN_DIR (a DDPM or VAE run, or a diffusers folder)"
        ))
    };
    let Some(data) = &args.data else {
        bail!(crate::usage!(
            "--nll needs --data SRC, e.g. datasets/mnist.h5:test"
        ))
    };
    let src = ImageSource::parse(data).context("--data")?;
    let images = load(&src, args.limit, "--data")?;
    let nchw = images_to_nchw_tensor(images.view());
    let opts = NllOptions {
        batch_size: args.nll_batch,
        forward_batch: args.nll_forward_batch,
        seed: args.seed,
        progress: std::io::stderr().is_terminal(),
        ..NllOptions::default()
    };
    let start = std::time::Instant::now();
    let r = bits_per_dim::of_run(model, &nchw, device, &opts)
        .with_context(|| format!("bits/dim of {}", model.display()))?;
    let secs = start.elapsed().as_secs_f64();
    out.insert("bpd".into(), json!(r.total));
    out.insert("bpd_prior".into(), json!(r.prior));
    out.insert("bpd_vb".into(), json!(r.vb_sum));
    out.insert("bpd_decoder".into(), json!(r.decoder));
    out.insert("n".into(), json!(r.n));
    out.insert("nll_model".into(), json!(r.model));
    out.insert("nll_seconds".into(), json!(secs));
    lines.push(format!("model    {} ({})", model.display(), r.model));
    lines.push(format!("data     {src} ({} images, {secs:.1} s)", r.n));
    match r.vb_sum {
        Some(vb) => lines.push(format!(
            "bits/dim {:.4}  = L_T {:.4} + sum L_t (t >= 1) {:.4} + L_0 {:.4}",
            r.total, r.prior, vb, r.decoder
        )),
        None => lines.push(format!(
            "bits/dim {:.4}  = KL {:.4} + reconstruction {:.4} (negative ELBO)",
            r.total, r.prior, r.decoder
        )),
    }
    Ok(())
}

/// `--fid-cls` / `--is-cls` with the digit classifier.
fn classifier_metrics(
    args: &EvalArgs,
    device: tch::Device,
    real: Option<&Array4<u8>>,
    fake: &Array4<u8>,
    out: &mut Map<String, Value>,
    lines: &mut Vec<String>,
) -> Result<()> {
    let clf = weights::load_classifier(&args.classifier, device, "--classifier DIR")?;
    lines.push(clf.describe());
    let weights_file = args.classifier.join("model.safetensors");
    out.insert(
        "classifier".into(),
        json!({
            "dir": args.classifier,
            "model_sha256": ddpm_metrics::inception::file_sha256(&weights_file)?,
        }),
    );
    let fake_out = clf.evaluate(fake.view(), args.batch_size.max(256))?;
    let real_out = match (args.fid_cls, real) {
        (true, Some(r)) => Some(clf.evaluate(r.view(), args.batch_size.max(256))?),
        _ => None,
    };
    if args.fid_cls {
        let n_real = real_out.as_ref().map_or(0, |r| r.features.nrows());
        let dim = fake_out.features.ncols();
        warn_if_few("FID_cls", [n_real, fake_out.features.nrows()], dim, out);
    }
    let scores = domain_scores(
        real_out.as_ref(),
        &fake_out,
        args.is_cls.then_some(args.splits),
    )?;
    if let Some(d) = scores.fid_cls {
        out.insert("fid_cls".into(), json!(d));
        lines.push(format!("FID_cls  {d:.4}"));
    }
    if let Some(s) = scores.is_cls {
        out.insert("is_cls_mean".into(), json!(s.mean));
        out.insert("is_cls_std".into(), json!(s.std));
        lines.push(format!(
            "IS_cls   {:.4} ± {:.4} ({} splits)",
            s.mean, s.std, args.splits
        ));
    }
    Ok(())
}

/// `--fid` / `--is` with the Inception network.
#[allow(clippy::too_many_arguments)]
fn inception_metrics(
    args: &EvalArgs,
    device: tch::Device,
    real_src: Option<&ImageSource>,
    real: Option<&Array4<u8>>,
    fake_src: &ImageSource,
    fake: &Array4<u8>,
    out: &mut Map<String, Value>,
    lines: &mut Vec<String>,
) -> Result<()> {
    let inception_path = match &args.inception {
        Some(p) => p.clone(),
        None => DEFAULT_INCEPTION.iter().map(PathBuf::from).find(|p| p.is_file()).with_context(|| {
            format!(
                "no Inception weights: neither {} nor {} exists; run `{FETCH_WEIGHTS_COMMAND}` or pass --inception FILE ({FULL_FILE_NAME} for FID and IS, {POOL3_FILE_NAME} for FID)",
                DEFAULT_INCEPTION[0], DEFAULT_INCEPTION[1]
            )
        })?,
    };
    let net = weights::load_inception(&inception_path, device, "--inception FILE")?;
    if args.inception_score {
        net.require_classifier()?;
    }
    lines.push(format!("network  {}", net.describe()));
    out.insert(
        "network".into(),
        json!({
            "name": net.variant().file_name(),
            "path": net.path(),
            "sha256": net.sha256(),
        }),
    );
    let opts = |features: bool, probabilities: bool| EvalOptions {
        batch_size: args.batch_size,
        features,
        probabilities,
        progress: std::io::stderr().is_terminal(),
    };
    let mut real_stats: Option<FeatureStats> = None;
    if let (true, Some(src), Some(real)) = (args.fid, real_src, real) {
        real_stats = Some(real_statistics(&net, src, real, args, opts(true, false))?);
    }
    let same_source = real_src == Some(fake_src);
    let start = std::time::Instant::now();
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
    tracing::info!(
        seconds = start.elapsed().as_secs_f64(),
        n = fake.dim().0,
        "Inception on the fake images"
    );
    if args.fid {
        let (Some(r), Some(f)) = (&real_stats, &fake_out.stats) else {
            unreachable!("FID statistics computed above")
        };
        warn_if_few(
            "FID",
            [real.map_or(0, |r| r.dim().0), fake.dim().0],
            ddpm_metrics::inception::FEATURE_DIM,
            out,
        );
        let terms = frechet_terms(r, f)?;
        out.insert("fid".into(), json!(terms.distance));
        lines.push(format!("FID      {:.4}", terms.distance));
    }
    if args.inception_score {
        let probs = fake_out
            .probabilities
            .as_ref()
            .expect("probabilities computed above");
        let s = inception_score(probs.view(), args.splits)?;
        out.insert("is_mean".into(), json!(s.mean));
        out.insert("is_std".into(), json!(s.std));
        lines.push(format!(
            "IS       {:.4} ± {:.4} ({} splits)",
            s.mean, s.std, args.splits
        ));
    }
    Ok(())
}

/// Adds a warning to `out["warnings"]` and prints it to stderr.
fn warn(out: &mut Map<String, Value>, text: String) {
    eprintln!("warning: {text}");
    let list = out.entry("warnings").or_insert_with(|| json!([]));
    if let Value::Array(v) = list {
        v.push(json!(text));
    }
}

/// Warns when the real and fake images differ in size or channels: the metric networks resize
/// and convert both, so a score is computed, but it then mostly measures the difference in format.
fn warn_if_shapes_differ(real: &Array4<u8>, fake: &Array4<u8>, out: &mut Map<String, Value>) {
    let (_, rh, rw, rc) = real.dim();
    let (_, fh, fw, fc) = fake.dim();
    if (rh, rw, rc) != (fh, fw, fc) {
        warn(
            out,
            format!(
                "real images are {rh}×{rw}×{rc} and fake ones {fh}×{fw}×{fc}: the scores then \
                 mostly measure the difference in size and channels"
            ),
        );
    }
}

/// Warns when a side of a Fréchet distance has fewer images than features: its covariance is
/// then singular and the distance is biased high (FID is usually reported on 10,000–50,000).
fn warn_if_few(metric: &str, counts: [usize; 2], dim: usize, out: &mut Map<String, Value>) {
    let n = counts.into_iter().filter(|&n| n > 0).min().unwrap_or(0);
    if n < dim {
        warn(
            out,
            format!(
                "{metric} from {n} images, fewer than its {dim} features: the covariance is \
                 singular and the distance biased high; compare only scores of equal sample size"
            ),
        );
    }
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
    let source = source_description(src, images.dim().0);
    Ok(reference_stats(
        net,
        images.view(),
        &source,
        args.real_stats.as_deref(),
        &opts,
    )?)
}
