//! `ddpm-cli sample`: draw images from a run directory or a diffusers folder, batched, with
//! progress; write an HDF5 file of uint8 `[N,H,W,C]` images, a grid and a trajectory strip.
//! GAN and VAE run directories are sampled too: G(z), or the VAE decoder's means, of z ~ N(0, I).
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use ddpm_nets::device::DeviceSpec;
use ddpm_train::config::ModelKind;
use ddpm_train::model_io::{self, Weights};
use ddpm_train::noise_file::ChainNoise;
use ddpm_train::sampler::{
    to_uint8_nhwc, Guidance, Sampler, SamplerSpec, SamplingSettings, X0Processing,
};
use ddpm_train::viz;
use ddpm_train::TrainError;
use tch::{Kind, Tensor};

use crate::models;

/// Arguments of `ddpm-cli sample`.
#[derive(clap::Args)]
pub struct SampleArgs {
    /// A run directory (config.toml + checkpoints) or a diffusers folder (config.json + safetensors).
    #[arg(long)]
    model: PathBuf,
    /// Number of images (default 64, or the number of chains in --noise).
    #[arg(long, value_parser = crate::choices::count)]
    num: Option<usize>,
    /// The sampler of the reverse chain (dpm++: deterministic, good images in 10–20 steps).
    #[arg(long, default_value = "ddim", value_parser = crate::choices::sampler())]
    sampler: String,
    /// Timesteps to visit: N (evenly; `ddimN` striding for ddim; diffusers' `linspace` for dpm++;
    /// a diffusers folder's `set_timesteps(N)`), `ddimN`, or sections `a,b,c`.
    #[arg(long, default_value = "50")]
    steps: String,
    /// DDIM stochasticity η in [0, 1] (0 = deterministic, 1 = ancestral-like); --sampler ddim only.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true, value_parser = crate::choices::unit_interval)]
    eta: f64,
    /// Seed of the initial noise and of the sampler's noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Take x_T, and the per-step noise when the file has it, from this file instead of --seed:
    /// `.safetensors` or `.npz` with `x_T` [N, C, H, W] f32 and optionally `step_noise`
    /// [M, N, C, H, W] (one slice per step that draws noise, from x_T on), or `.npy` with x_T.
    #[arg(long, value_name = "FILE")]
    noise: Option<PathBuf>,
    /// Write the noise this command used (x_T and the per-step noise) to FILE, in the format of
    /// --noise (`.npy` only for chains that draw no noise after x_T: dpm++, ddim with η = 0).
    #[arg(long, value_name = "FILE")]
    save_noise: Option<PathBuf>,
    /// Class to draw (class-conditional models).
    #[arg(long)]
    class: Option<i64>,
    /// Classifier-free guidance weight w (ε = ε_∅ + w (ε_c − ε_∅)) [default: 1]; needs --class.
    #[arg(long, requires = "class", allow_negative_numbers = true)]
    guidance: Option<f64>,
    /// Output HDF5 file, `.h5` (dataset `images`, uint8 [N,H,W,C]).
    #[arg(long)]
    out: PathBuf,
    /// Also write a grid of the samples to this PNG file.
    #[arg(long)]
    grid: Option<PathBuf>,
    /// Also write a strip of one chain from x_T to x_0 to this PNG file.
    #[arg(long)]
    trajectory: Option<PathBuf>,
    /// Images per network batch.
    #[arg(long, default_value_t = 256, value_parser = crate::choices::count)]
    batch_size: usize,
    /// Device: auto, cpu, cuda, cuda:N.
    #[arg(long, default_value = "auto", value_parser = crate::choices::device)]
    device: DeviceSpec,
    /// Use the raw weights of a run instead of its EMA.
    #[arg(long)]
    raw_weights: bool,
    /// Clamp the predicted x̂₀ to [−R, R] at each step (R = --clip-sample-range); the default is
    /// the model's own setting (our runs: `diffusion.clip_sample`; diffusers: `clip_sample`).
    #[arg(long, overrides_with = "no_clip_sample")]
    clip_sample: bool,
    /// Do not clamp x̂₀ (overrides the model's setting).
    #[arg(long, overrides_with = "clip_sample")]
    no_clip_sample: bool,
    /// The clipping bound R > 0 (implies --clip-sample).
    #[arg(long, allow_negative_numbers = true)]
    clip_sample_range: Option<f64>,
    /// Dynamic thresholding of x̂₀ (Saharia et al. 2022): per image s = the
    /// --dynamic-thresholding-ratio quantile of |x̂₀|, clamped to [1, --sample-max-value], then
    /// x̂₀ ← clamp(x̂₀, −s, s)/s. Replaces clipping.
    #[arg(long)]
    thresholding: bool,
    /// The quantile of dynamic thresholding, in (0, 1] (default: the model's, else 0.995).
    #[arg(long, allow_negative_numbers = true)]
    dynamic_thresholding_ratio: Option<f64>,
    /// The largest threshold s, ≥ 1 (default: the model's, else 1).
    #[arg(long, allow_negative_numbers = true)]
    sample_max_value: Option<f64>,
    /// Network arithmetic: auto (bf16 autocast on CUDA, f32 on the CPU), f32, or bf16 (autocast on either;
    /// on the CPU it pays with AVX512-BF16 or AMX). The chain itself (means, noise) stays f32.
    #[arg(long, default_value = "auto", value_parser = crate::choices::dtype())]
    dtype: String,
    /// Print what was written as one JSON object on stdout (out, num, height, width, sampler,
    /// seconds, and grid / trajectory / noise when written).
    #[arg(long)]
    json: bool,
}

/// What `sample` prints: lines for people, or one JSON object with `--json`.
#[derive(Default)]
struct Report {
    json: serde_json::Map<String, serde_json::Value>,
    lines: Vec<String>,
}

impl Report {
    fn add(&mut self, fields: serde_json::Value, line: String) {
        if let serde_json::Value::Object(m) = fields {
            self.json.extend(m);
        }
        self.lines.push(line);
    }

    fn print(self, json: bool) {
        if json {
            println!("{}", serde_json::Value::Object(self.json));
        } else {
            for l in self.lines {
                println!("{l}");
            }
        }
    }
}

pub fn run(args: SampleArgs) -> Result<()> {
    check_outputs(&args)?;
    let device = args.device.resolve()?;
    let bf16 = match args.dtype.as_str() {
        "auto" => device.is_cuda(),
        "bf16" => true,
        "f32" => false,
        other => bail!("--dtype {other}: expected auto, f32 or bf16"),
    };
    if let Some(kind) = models::run_kind(&args.model)? {
        if kind != ModelKind::Ddpm {
            let given: Vec<&str> = [
                ("--dtype", args.dtype != "auto"),
                ("--noise", args.noise.is_some()),
                ("--save-noise", args.save_noise.is_some()),
            ]
            .into_iter()
            .filter_map(|(name, set)| set.then_some(name))
            .collect();
            if !given.is_empty() {
                bail!(
                    "{} {} to DDPM models; {} is a {} run",
                    given.join(", "),
                    if given.len() == 1 { "applies" } else { "apply" },
                    args.model.display(),
                    format!("{kind:?}").to_lowercase()
                );
            }
            return run_baseline(&args, device);
        }
    }
    let noise = args.noise.as_deref().map(ChainNoise::read).transpose()?;
    let num = match (&noise, args.num) {
        (Some(z), Some(n)) if n != z.num_chains() => bail!(
            "--num {n} differs from the {} chains of --noise {}",
            z.num_chains(),
            args.noise
                .as_ref()
                .map_or(String::new(), |p| p.display().to_string())
        ),
        (Some(z), _) => z.num_chains(),
        (None, n) => n.unwrap_or(64),
    };
    let weights = if args.raw_weights {
        Weights::Raw
    } else {
        Weights::Ema
    };
    let model = models::load_ddpm(&args.model, weights, device)?;
    let spec = sampler_spec(&args, &model)?;
    let sampler = Sampler::new(&model.diffusion, &spec, device)?;
    let chw = [model.unet.config().in_channels, model.hw.0, model.hw.1];
    check_noise_files(&args, noise.as_ref(), chw, sampler.noise_steps())?;
    let guidance = guidance_for(&args, model.unet.config().num_class_embeds)?;
    let total_evals = spec.timesteps.len() * num.div_ceil(args.batch_size);
    let bar = ddpm_train::progress::bar(true, total_evals as u64, "network steps", "sampling");
    let start = Instant::now();
    tch::manual_seed(args.seed as i64);
    let chains = Chains {
        num,
        chw,
        guidance,
        noise: noise.as_ref(),
        record: args.save_noise.is_some(),
    };
    let drawn = draw_chains(&args, &model, &sampler, &chains, bf16, &bar)?;
    bar.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    let attrs = [
        ("model", args.model.display().to_string()),
        ("weights", model.source.display().to_string()),
        ("sampler", spec.label()),
        ("eta", args.eta.to_string()),
        ("x0_processing", spec.x0.label()),
        ("seed", args.seed.to_string()),
        (
            "noise",
            args.noise
                .as_ref()
                .map_or("seed".into(), |p| p.display().to_string()),
        ),
        ("class", args.class.map_or("none".into(), |c| c.to_string())),
        ("guidance", args.guidance.unwrap_or(1.0).to_string()),
    ];
    model_io::write_samples(&args.out, &drawn.images, &attrs)?;
    let evals = (spec.timesteps.len() * num) as f64 * if guidance.is_some() { 2.0 } else { 1.0 };
    let mut report = Report::default();
    report.add(
        serde_json::json!({
            "out": args.out, "num": num, "height": chw[1], "width": chw[2],
            "sampler": spec.label(), "seconds": secs, "network_evals": evals,
        }),
        format!(
            "{num} images ({}x{}) with {} in {secs:.1} s ({:.3} s/image, {:.1} network evals/s): {}",
            chw[1],
            chw[2],
            spec.label(),
            secs / num as f64,
            evals / secs,
            args.out.display()
        ),
    );
    if let (Some(path), Some(used)) = (&args.save_noise, &drawn.used) {
        used.write(path)?;
        report.add(
            serde_json::json!({ "noise": path, "noise_steps": sampler.noise_steps() }),
            format!(
                "noise (x_T and {} noise steps): {}",
                sampler.noise_steps(),
                path.display()
            ),
        );
    }
    write_pictures(&args, num, &drawn.images, &drawn.strip, &mut report)?;
    report.print(args.json);
    Ok(())
}

/// Checks the output paths (writable, named for their format, distinct from each other and from
/// --noise) before anything is loaded or sampled.
fn check_outputs(args: &SampleArgs) -> Result<()> {
    use crate::outputs::{self, HDF5, PNG};
    let mut named = vec![("--out", &args.out, HDF5)];
    named.extend(args.grid.as_ref().map(|p| ("--grid", p, PNG)));
    named.extend(args.trajectory.as_ref().map(|p| ("--trajectory", p, PNG)));
    let checks: Vec<_> = named
        .iter()
        .map(|(o, p, e)| (*o, p.as_path(), *e))
        .collect();
    outputs::check_outputs(&checks)?;
    outputs::check_replaceable_samples(&args.out, "--out")?;
    let mut paths: Vec<_> = named.iter().map(|(o, p, _)| (*o, *p)).collect();
    paths.extend(args.save_noise.as_ref().map(|p| ("--save-noise", p)));
    outputs::check_distinct(&paths, args.noise.as_ref().map(|p| ("--noise", p)))
}

/// Checks --noise against the model and the sampler, and that --save-noise can hold what this
/// sampler draws, before anything is sampled.
fn check_noise_files(
    args: &SampleArgs,
    noise: Option<&ChainNoise>,
    chw: [i64; 3],
    noise_steps: usize,
) -> Result<()> {
    if let (Some(path), Some(z)) = (&args.noise, noise) {
        z.check_fits(path, chw, noise_steps)?;
        if z.step_noise.is_none() && noise_steps > 0 {
            tracing::info!(file = %path.display(), steps = noise_steps, "x_T from the file; the per-step noise from --seed");
        }
    }
    if let Some(path) = &args.save_noise {
        ChainNoise::check_target(path, noise_steps > 0)?;
        crate::outputs::check_writable(path, "--save-noise")?;
    }
    Ok(())
}

/// What to draw: the chains, their image shape, guidance, and where the noise comes from.
struct Chains<'a> {
    num: usize,
    chw: [i64; 3],
    guidance: Option<Guidance>,
    noise: Option<&'a ChainNoise>,
    record: bool,
}

/// The result of [`draw_chains`].
struct Drawn {
    /// uint8 `[N, H, W, C]` on the CPU.
    images: Tensor,
    /// The frames of the first chain (with --trajectory).
    strip: Vec<Tensor>,
    /// The noise used (when recording).
    used: Option<ChainNoise>,
}

/// Runs the chains batch by batch, x_T and the per-step noise from `chains.noise` or the seeded
/// generator, recording them when asked.
fn draw_chains(
    args: &SampleArgs,
    model: &ddpm_train::model_io::LoadedDdpm,
    sampler: &Sampler,
    chains: &Chains,
    bf16: bool,
    bar: &ddpm_train::progress::ProgressBar,
) -> Result<Drawn> {
    let device = model.vs.device();
    let [c, h, w] = chains.chw;
    let (mut images, mut strip, mut starts, mut steps) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut done = 0;
    while done < chains.num {
        let n = (chains.num - done).min(args.batch_size);
        let (x_t, given) = match chains.noise {
            Some(z) => z.slice(done, n, device),
            None => (
                Tensor::randn([n as i64, c, h, w], (Kind::Float, device)),
                None,
            ),
        };
        let keep = if done == 0 && args.trajectory.is_some() {
            10
        } else {
            0
        };
        let base = bar.position();
        let mut drawn = Vec::new();
        if chains.record {
            starts.push(x_t.to_device(tch::Device::Cpu));
        }
        let samples = sampler.sample_with_noise(
            |x, t, y| {
                ddpm_nets::autocast::bf16_if(bf16, device, || model.unet.forward_t(x, t, y, false))
                    .to_kind(Kind::Float)
            },
            x_t,
            chains.guidance,
            keep,
            |k| bar.set_position(base + k as u64),
            |_, like| {
                let z = match &given {
                    Some(g) => g.get(drawn.len() as i64),
                    None => like.randn_like(),
                };
                if chains.record {
                    drawn.push(z.to_device(tch::Device::Cpu));
                } else {
                    drawn.push(Tensor::new());
                }
                z
            },
        )?;
        images.push(to_uint8_nhwc(&samples.images).to_device(tch::Device::Cpu));
        if keep > 0 {
            strip = samples.trajectory;
        }
        if chains.record && !drawn.is_empty() {
            steps.push(Tensor::stack(&drawn, 0));
        }
        done += n;
    }
    let used = chains.record.then(|| ChainNoise {
        x_t: Tensor::cat(&starts, 0),
        step_noise: (!steps.is_empty()).then(|| Tensor::cat(&steps, 1)),
    });
    Ok(Drawn {
        images: Tensor::cat(&images, 0),
        strip,
        used,
    })
}

/// Classifier-free guidance from `--class` / `--guidance` for a model with `num_class_embeds`
/// (classes + the null label); errors for a class outside the model's or a missing one.
fn guidance_for(args: &SampleArgs, num_class_embeds: Option<i64>) -> Result<Option<Guidance>> {
    Ok(match (args.class, num_class_embeds) {
        (Some(c), Some(k)) if c >= 0 && c < k - 1 => Some(Guidance {
            class: c,
            null_class: k - 1,
            weight: args.guidance.unwrap_or(1.0),
        }),
        (Some(c), Some(k)) => bail!("--class {c}: this model has classes 0–{}", k - 2),
        (Some(_), None) => bail!(
            "--class needs a class-conditional model; {} is unconditional",
            args.model.display()
        ),
        (None, Some(_)) => bail!(
            "{} is class-conditional: give --class C",
            args.model.display()
        ),
        (None, None) => None,
    })
}

/// Writes `--grid` (uint8 `images` `[N, H, W, C]`) and `--trajectory` (the frames of the first
/// chain, each `[n, C, H, W]` in [−1, 1]) when asked.
fn write_pictures(
    args: &SampleArgs,
    num: usize,
    images: &Tensor,
    strip: &[Tensor],
    report: &mut Report,
) -> Result<()> {
    if let Some(path) = &args.grid {
        let ncol = (num as f64).sqrt().ceil() as usize;
        viz::save_png(&viz::grid_nhwc(images, ncol), path)?;
        report.add(
            serde_json::json!({ "grid": path }),
            format!("grid: {}", path.display()),
        );
    }
    if let Some(path) = &args.trajectory {
        let frames = Tensor::cat(strip, 0);
        let img = viz::grid_nhwc(&to_uint8_nhwc(&frames), strip.len());
        viz::save_png(&img, path)?;
        report.add(
            serde_json::json!({ "trajectory": path, "trajectory_frames": strip.len() }),
            format!(
                "trajectory (x_T → x_0, {} frames): {}",
                strip.len(),
                path.display()
            ),
        );
    }
    Ok(())
}

/// Samples a GAN (generator on z ~ N(0, I)) or VAE (decoder means of z ~ N(0, I)) run directory.
fn run_baseline(args: &SampleArgs, device: tch::Device) -> Result<()> {
    if args.class.is_some() || args.trajectory.is_some() {
        bail!(
            "--class and --trajectory are for DDPM models; {} is a GAN/VAE run",
            args.model.display()
        );
    }
    let num = args.num.unwrap_or(64);
    let model = models::load_baseline(&args.model, device)?;
    let start = Instant::now();
    let images = models::sample_baseline(&model, num, args.batch_size, args.seed, device);
    let secs = start.elapsed().as_secs_f64();
    let method = match model.kind {
        ModelKind::Gan => "gan-generator",
        _ => "vae-decoder-mean",
    };
    let attrs = [
        ("model", args.model.display().to_string()),
        ("weights", model.source.display().to_string()),
        ("sampler", method.to_string()),
        ("step", model.step.to_string()),
        ("seed", args.seed.to_string()),
    ];
    model_io::write_samples(&args.out, &images, &attrs)?;
    let s = images.size();
    let mut report = Report::default();
    report.add(
        serde_json::json!({
            "out": args.out, "num": num, "height": s[1], "width": s[2],
            "sampler": method, "step": model.step, "seconds": secs,
        }),
        format!(
            "{} images ({}x{}) with {method} (step {}) in {:.2} s: {}",
            num,
            s[1],
            s[2],
            model.step,
            secs,
            args.out.display()
        ),
    );
    write_pictures(args, num, &images, &[], &mut report)?;
    report.print(args.json);
    Ok(())
}

/// The sampler the options ask for, with the model's sampling settings changed by the x̂₀ options.
fn sampler_spec(
    args: &SampleArgs,
    model: &ddpm_train::model_io::LoadedDdpm,
) -> Result<SamplerSpec> {
    if args.eta != 0.0 && args.sampler != "ddim" {
        bail!(crate::usage!(
            "--eta {} applies to --sampler ddim only (--sampler {} has no η)",
            args.eta,
            args.sampler
        ));
    }
    let settings = SamplingSettings {
        x0: x0_processing(args, &model.sampling)?,
        x0_explicit: args.clip_sample
            || args.no_clip_sample
            || args.clip_sample_range.is_some()
            || args.thresholding,
        ..model.sampling
    };
    SamplerSpec::from_cli(
        &args.sampler,
        &args.steps,
        args.eta,
        model.diffusion.num_timesteps(),
        &settings,
    )
    .map_err(|e| match e {
        // The spec's keys are this command's options.
        TrainError::Config { key, message } => {
            anyhow::Error::new(crate::usage!("--{key} {message}"))
        }
        e => e.into(),
    })
}

/// The x̂₀ processing: the model's own, changed by the command line's options (their defaults are
/// the model's configured range, quantile and maximum, also when its own mode differs).
fn x0_processing(args: &SampleArgs, model: &SamplingSettings) -> Result<X0Processing> {
    let (ratio, max_value) = model.threshold;
    let x0 = if args.thresholding {
        if args.clip_sample || args.clip_sample_range.is_some() {
            bail!(crate::usage!(
                "--thresholding replaces clipping: drop --clip-sample / --clip-sample-range"
            ));
        }
        X0Processing::DynamicThreshold {
            ratio: args.dynamic_thresholding_ratio.unwrap_or(ratio),
            max_value: args.sample_max_value.unwrap_or(max_value),
        }
    } else if args.dynamic_thresholding_ratio.is_some() || args.sample_max_value.is_some() {
        bail!(crate::usage!(
            "--dynamic-thresholding-ratio and --sample-max-value need --thresholding"
        ));
    } else if args.no_clip_sample {
        if args.clip_sample_range.is_some() {
            bail!(crate::usage!(
                "--clip-sample-range contradicts --no-clip-sample"
            ));
        }
        X0Processing::None
    } else if args.clip_sample || args.clip_sample_range.is_some() {
        X0Processing::Clip {
            range: args.clip_sample_range.unwrap_or(model.clip_sample_range),
        }
    } else {
        model.x0
    };
    Ok(x0.validate(|k| format!("--{}", k.replace('_', "-")))?)
}
