//! Respacing: sampling with a subsequence of the original timesteps (Nichol & Dhariwal 2021, §4; DDIM strides).
//!
//! A respaced process keeps timesteps `s_0 < s_1 < … < s_{K−1}` of the original one and defines new betas
//! `β′_k = 1 − ᾱ_{s_k}/ᾱ_{s_{k−1}}` (with `ᾱ_{s_{−1}} = 1`) so that its `ᾱ′_k = ᾱ_{s_k}`: the marginals
//! `q(x_{s_k} | x_0)` are unchanged. The network still sees the original index `s_k`.

use crate::diffusion::GaussianDiffusion;
use crate::error::{Error, Result};
use ndarray::Array1;

/// The original timesteps to keep, sorted, for a respacing specification.
///
/// - `"a,b,c"`: split `0..T` into as many equal sections as counts (the first `T mod n` sections one step longer)
///   and take `count` evenly strided indices from each, rounding the fractional positions with Python's `round`
///   (ties to even) so the result matches improved-diffusion's `space_timesteps`;
/// - `"ddimN"`: the stride `k ≥ 1` (smallest first, `k < T`) with `len(range(0, T, k)) = N`, keeping `0, k, 2k, …`.
///
/// # Example
/// ```
/// use ddpm_math::space_timesteps;
/// assert_eq!(space_timesteps(100, "10")?, (0..100).step_by(11).collect::<Vec<_>>());
/// assert_eq!(space_timesteps(1000, "ddim50")?, (0..1000).step_by(20).collect::<Vec<_>>());
/// assert_eq!(space_timesteps(10, "2,3")?, vec![0, 4, 5, 7, 9]);
/// assert!(space_timesteps(1000, "ddim3000").is_err());
/// # Ok::<(), ddpm_math::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidSpacing`] for a count that is not a non-negative integer, a section asked for more steps than
/// it has, a `ddimN` with no integer stride, or an empty result.
pub fn space_timesteps(num_timesteps: usize, spec: &str) -> Result<Vec<usize>> {
    let invalid = |reason: String| Error::InvalidSpacing {
        spec: spec.to_string(),
        num_timesteps,
        reason,
    };
    let spec_trimmed = spec.trim();
    if let Some(count) = spec_trimmed.strip_prefix("ddim") {
        let desired: usize = count
            .parse()
            .map_err(|_| invalid(format!("`{count}` is not a step count")))?;
        let stride = (1..num_timesteps)
            .find(|&k| num_timesteps.div_ceil(k) == desired)
            .ok_or_else(|| invalid(format!("no integer stride gives exactly {desired} steps")))?;
        return Ok((0..num_timesteps).step_by(stride).collect());
    }
    let counts = spec_trimmed
        .split(',')
        .map(|s| {
            s.trim()
                .parse::<usize>()
                .map_err(|_| invalid(format!("`{}` is not a step count", s.trim())))
        })
        .collect::<Result<Vec<_>>>()?;
    let size_per = num_timesteps / counts.len();
    let extra = num_timesteps % counts.len();
    let mut start = 0usize;
    let mut steps = Vec::new();
    for (i, &count) in counts.iter().enumerate() {
        let size = size_per + usize::from(i < extra);
        if size < count {
            return Err(invalid(format!(
                "cannot take {count} steps from a section of {size}"
            )));
        }
        let frac_stride = if count <= 1 {
            1.0
        } else {
            (size - 1) as f64 / (count - 1) as f64
        };
        let mut cur = 0.0f64;
        for _ in 0..count {
            steps.push(start + cur.round_ties_even() as usize);
            cur += frac_stride;
        }
        start += size;
    }
    steps.sort_unstable();
    steps.dedup();
    if steps.is_empty() {
        return Err(invalid("no timestep kept".to_string()));
    }
    Ok(steps)
}

/// A diffusion on a subsequence of another's timesteps, with the map back to the original indices.
///
/// # Example
/// ```
/// use ddpm_math::{BetaSchedule, GaussianDiffusion, LossType, ModelMeanType, ModelVarType, SpacedDiffusion};
/// let base = GaussianDiffusion::new(BetaSchedule::Linear.betas(1000)?, ModelMeanType::Epsilon,
///     ModelVarType::FixedLarge, LossType::Simple)?;
/// let spaced = SpacedDiffusion::from_spec(&base, "ddim50")?;
/// assert_eq!(spaced.diffusion().num_timesteps(), 50);
/// assert_eq!(spaced.timestep_map()[1], 20);
/// // The kept marginals are the original ones.
/// assert_eq!(spaced.diffusion().alphas_cumprod()[1], base.alphas_cumprod()[20]);
/// # Ok::<(), ddpm_math::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct SpacedDiffusion {
    diffusion: GaussianDiffusion,
    timestep_map: Vec<usize>,
    original_num_timesteps: usize,
}

impl SpacedDiffusion {
    /// Keeps the timesteps `use_timesteps` (any order; duplicates ignored) of `base`, with the same modelling
    /// choices: `β′_k = 1 − ᾱ_{s_k}/ᾱ_{s_{k−1}}`.
    ///
    /// # Errors
    /// [`Error::TimestepOutOfRange`] for an index `≥ T`; the errors of [`GaussianDiffusion::new`] for the new
    /// betas (e.g. fewer than 2 kept steps, or a `β′` that is NaN because `ᾱ` underflowed to 0).
    pub fn new(base: &GaussianDiffusion, use_timesteps: &[usize]) -> Result<Self> {
        let num_timesteps = base.num_timesteps();
        let mut kept = use_timesteps.to_vec();
        kept.sort_unstable();
        kept.dedup();
        if let Some(&t) = kept.iter().find(|&&t| t >= num_timesteps) {
            return Err(Error::TimestepOutOfRange { t, num_timesteps });
        }
        let alphas_cumprod = base.alphas_cumprod();
        let mut last = 1.0;
        let betas: Array1<f64> = kept
            .iter()
            .map(|&t| {
                let beta = 1.0 - alphas_cumprod[t] / last;
                last = alphas_cumprod[t];
                beta
            })
            .collect();
        let diffusion =
            GaussianDiffusion::new(betas, base.mean_type(), base.var_type(), base.loss_type())?;
        Ok(SpacedDiffusion {
            diffusion,
            timestep_map: kept,
            original_num_timesteps: num_timesteps,
        })
    }

    /// Respaces `base` by a [`space_timesteps`] specification such as `"ddim50"` or `"10,20"`.
    ///
    /// # Errors
    /// As [`space_timesteps`] and [`SpacedDiffusion::new`].
    pub fn from_spec(base: &GaussianDiffusion, spec: &str) -> Result<Self> {
        SpacedDiffusion::new(base, &space_timesteps(base.num_timesteps(), spec)?)
    }

    /// The respaced process, indexed `k ∈ 0..K`.
    pub fn diffusion(&self) -> &GaussianDiffusion {
        &self.diffusion
    }

    /// `timestep_map()[k] = s_k`, the original index of respaced step `k`, increasing.
    pub fn timestep_map(&self) -> &[usize] {
        &self.timestep_map
    }

    /// The number of timesteps of the original process.
    pub fn original_num_timesteps(&self) -> usize {
        self.original_num_timesteps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_follow_python_rounding() {
        // 1000 steps, one section of 250: stride 999/249 ≈ 4.012.
        let steps = space_timesteps(1000, "250").unwrap();
        assert_eq!(steps.len(), 250);
        assert_eq!((steps[0], steps[249]), (0, 999));
        // Two sections of 5 and 5 steps, 3 and 2 kept: [0, 2, 4] and [5, 9].
        assert_eq!(space_timesteps(10, "3,2").unwrap(), vec![0, 2, 4, 5, 9]);
        // Uneven split: 11 = 6 + 5.
        assert_eq!(space_timesteps(11, "2,2").unwrap(), vec![0, 5, 6, 10]);
        // Ties go to the even integer: stride 2.5 → positions 0, 2.5, 5, 7.5, 10 → 0, 2, 5, 8, 10.
        assert_eq!(space_timesteps(11, "5").unwrap(), vec![0, 2, 5, 8, 10]);
    }

    #[test]
    fn ddim_strides() {
        assert_eq!(space_timesteps(1000, "ddim10").unwrap().len(), 10);
        assert_eq!(space_timesteps(1000, "ddim1000").unwrap().len(), 1000);
        assert_eq!(
            space_timesteps(1000, "ddim3").unwrap(),
            vec![0, 334, 668],
            "the smallest stride with 3 steps is 334"
        );
        assert!(space_timesteps(1000, "ddimx").is_err());
        assert!(space_timesteps(1000, "ddim0").is_err());
    }

    #[test]
    fn bad_specs_are_named() {
        let err = space_timesteps(10, "3,x").unwrap_err();
        assert!(err.to_string().contains("`x`"), "{err}");
        assert!(space_timesteps(10, "11").is_err());
        assert!(space_timesteps(10, "5,6").is_err());
        assert!(space_timesteps(10, "0").is_err());
        assert!(space_timesteps(10, "").is_err());
    }
}
