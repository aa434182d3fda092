//! Sampling from a trained ε-network: ancestral DDPM (fixed-small, fixed-large or learned
//! variance) on the full or a respaced chain, and DDIM with η; classifier-free guidance.
use ddpm_math::{space_timesteps, GaussianDiffusion, SpacedDiffusion};
use tch::{Device, Kind, Tensor};

use crate::error::{Result, TrainError};
use crate::tables::DeviceTables;

/// Which reverse process to run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SamplerKind {
    /// Ancestral sampling `x_{t−1} ~ p_θ(x_{t−1}|x_t)` (Ho et al. 2020, Algorithm 2).
    Ddpm,
    /// DDIM (Song et al. 2021) with stochasticity η (0 = deterministic).
    Ddim {
        /// η.
        eta: f64,
    },
}

/// A sampler and the timesteps it visits.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerSpec {
    /// Ancestral or DDIM.
    pub kind: SamplerKind,
    /// The kept original timesteps, increasing.
    pub timesteps: Vec<usize>,
}

impl SamplerSpec {
    /// Parses a config-style spec: `ddimN` = DDIM (η = 0) on the `ddimN` respacing; anything else
    /// (`1000`, `100`, `10,20,30`) = ancestral sampling on that respacing.
    pub fn parse(spec: &str, num_timesteps: usize) -> Result<Self> {
        let kind = if spec.starts_with("ddim") {
            SamplerKind::Ddim { eta: 0.0 }
        } else {
            SamplerKind::Ddpm
        };
        Ok(Self {
            kind,
            timesteps: space_timesteps(num_timesteps, spec)?,
        })
    }

    /// The command line's form: `--sampler ddpm|ddim --steps SPEC [--eta E]`. For DDIM a plain
    /// number N means the evenly strided `ddimN` chain when T allows it.
    pub fn from_cli(sampler: &str, steps: &str, eta: f64, num_timesteps: usize) -> Result<Self> {
        let kind = match sampler {
            "ddpm" => SamplerKind::Ddpm,
            "ddim" => SamplerKind::Ddim { eta },
            other => {
                return Err(TrainError::config(
                    "sampler",
                    format!("`{other}` is not ddpm or ddim"),
                ))
            }
        };
        let timesteps = match (kind, steps.parse::<usize>()) {
            (SamplerKind::Ddim { .. }, Ok(n)) => {
                space_timesteps(num_timesteps, &format!("ddim{n}"))
                    .or_else(|_| space_timesteps(num_timesteps, steps))?
            }
            _ => space_timesteps(num_timesteps, steps)?,
        };
        Ok(Self { kind, timesteps })
    }

    /// A short human-readable name, e.g. `ddim50` or `ddpm1000`.
    pub fn label(&self) -> String {
        match self.kind {
            SamplerKind::Ddpm => format!("ddpm{}", self.timesteps.len()),
            SamplerKind::Ddim { eta: 0.0 } => format!("ddim{}", self.timesteps.len()),
            SamplerKind::Ddim { eta } => format!("ddim{}-eta{eta}", self.timesteps.len()),
        }
    }
}

/// Classifier-free guidance: class labels and the guidance weight w (ε = ε_∅ + w (ε_c − ε_∅)).
#[derive(Debug, Clone, Copy)]
pub struct Guidance {
    /// Class to draw.
    pub class: i64,
    /// The null label the model was trained with when the label was dropped.
    pub null_class: i64,
    /// Guidance weight w (1 = plain conditional sampling).
    pub weight: f64,
}

/// A prepared sampler for one diffusion and one spec.
pub struct Sampler {
    tables: DeviceTables,
    kind: SamplerKind,
}

/// What a sampling call returns.
pub struct Samples {
    /// Final samples in [−1, 1], `[N, C, H, W]`.
    pub images: Tensor,
    /// Snapshots of the first chain, from x_T towards x_0 (when asked for).
    pub trajectory: Vec<Tensor>,
}

impl Sampler {
    /// Respaces `diffusion` to the spec's timesteps and moves the tables to `device`.
    pub fn new(diffusion: &GaussianDiffusion, spec: &SamplerSpec, device: Device) -> Result<Self> {
        let spaced = SpacedDiffusion::new(diffusion, &spec.timesteps)?;
        Ok(Self {
            tables: DeviceTables::new(spaced.diffusion(), spaced.timestep_map(), device),
            kind: spec.kind,
        })
    }

    /// Number of network evaluations per image (doubled by guidance).
    pub fn num_steps(&self) -> usize {
        self.tables.num_timesteps()
    }

    /// Runs the chain from x_T = `noise` with `model(x_t, t_original) → output`.
    /// `keep_trajectory` snapshots of chain 0 are returned (0 = none). `on_step` is called after
    /// each step with the number done. Runs under `no_grad`.
    pub fn sample<F>(
        &self,
        mut model: F,
        noise: Tensor,
        guidance: Option<Guidance>,
        keep_trajectory: usize,
        mut on_step: impl FnMut(usize),
    ) -> Samples
    where
        F: FnMut(&Tensor, &Tensor, Option<&Tensor>) -> Tensor,
    {
        tch::no_grad(|| {
            let n = noise.size()[0];
            let device = noise.device();
            let steps = self.tables.num_timesteps();
            let every = if keep_trajectory > 0 {
                steps.div_ceil(keep_trajectory).max(1)
            } else {
                usize::MAX
            };
            let mut x = noise;
            let mut trajectory = Vec::new();
            if keep_trajectory > 0 {
                trajectory.push(x.narrow(0, 0, 1).copy());
            }
            for (done, k) in (0..steps).rev().enumerate() {
                let t = Tensor::full([n], k as i64, (Kind::Int64, device));
                let t_model = self.tables.timestep_map.index_select(0, &t);
                let out = match guidance {
                    None => model(&x, &t_model, None),
                    Some(g) => guided(&mut model, &x, &t_model, g, &self.tables),
                };
                let p = self.tables.p_mean_variance(&out, &x, &t, true);
                x = match self.kind {
                    SamplerKind::Ddpm if k == 0 => p.dist.mean.shallow_clone(),
                    SamplerKind::Ddpm => self.tables.p_sample(&p, &t, &x.randn_like()),
                    SamplerKind::Ddim { eta } if eta == 0.0 || k == 0 => {
                        self.tables.ddim_step(&p, &x, &t, 0.0, &x.zeros_like())
                    }
                    SamplerKind::Ddim { eta } => {
                        self.tables.ddim_step(&p, &x, &t, eta, &x.randn_like())
                    }
                };
                if keep_trajectory > 0 && ((done + 1) % every == 0 || k == 0) {
                    trajectory.push(x.narrow(0, 0, 1).copy());
                }
                on_step(done + 1);
            }
            Samples {
                images: x.clamp(-1.0, 1.0),
                trajectory,
            }
        })
    }
}

/// One guided model evaluation: the conditional and the null-label outputs in one batch; the mean
/// part is mixed, a learned variance part comes from the conditional output.
fn guided<F>(model: &mut F, x: &Tensor, t: &Tensor, g: Guidance, tables: &DeviceTables) -> Tensor
where
    F: FnMut(&Tensor, &Tensor, Option<&Tensor>) -> Tensor,
{
    let n = x.size()[0];
    let device = x.device();
    let labels = Tensor::cat(
        &[
            Tensor::full([n], g.class, (Kind::Int64, device)),
            Tensor::full([n], g.null_class, (Kind::Int64, device)),
        ],
        0,
    );
    let out = model(
        &Tensor::cat(&[x, x], 0),
        &Tensor::cat(&[t, t], 0),
        Some(&labels),
    );
    let cond = out.narrow(0, 0, n);
    let uncond = out.narrow(0, n, n);
    let (c_mean, c_var) = tables.split_output(&cond);
    let (u_mean, _) = tables.split_output(&uncond);
    let mixed = &u_mean + (&c_mean - &u_mean) * g.weight;
    match c_var {
        Some(v) => Tensor::cat(&[mixed, v], 1),
        None => mixed,
    }
}

/// uint8 images `[N, H, W, C]` from samples in [−1, 1] `[N, C, H, W]` (p = round((x + 1)·127.5)).
pub fn to_uint8_nhwc(x: &Tensor) -> Tensor {
    ((x.clamp(-1.0, 1.0) + 1.0) * 127.5)
        .round()
        .to_kind(Kind::Uint8)
        .permute([0, 2, 3, 1])
        .contiguous()
}
