//! Noise schedules `β_0 … β_{T−1}`: the named schedules of DDPM and Improved DDPM, and validation of given betas.
//!
//! Timesteps are indexed `0..T`; index `t` is the paper's step `t + 1`. Every schedule is returned as an
//! `Array1<f64>` of length `T` that has passed [`validate_betas`].

use std::f64::consts::FRAC_PI_2;
use std::fmt;
use std::str::FromStr;

use ndarray::Array1;

use crate::error::{Error, Result};

/// Offset `s` of the cosine schedule (Nichol & Dhariwal 2021, eq. 17), which keeps `β_0` from being tiny.
pub const COSINE_S: f64 = 0.008;

/// Largest β of the cosine schedule, clipping the singularity at `t = T` (Nichol & Dhariwal 2021, §3.2).
pub const COSINE_MAX_BETA: f64 = 0.999;

/// `β_0` of the linear schedule at `T = 1000` (Ho et al. 2020, §4); other `T` scale it by `1000 / T`.
pub const LINEAR_BETA_START: f64 = 1e-4;

/// `β_{T−1}` of the linear schedule at `T = 1000` (Ho et al. 2020, §4); other `T` scale it by `1000 / T`.
pub const LINEAR_BETA_END: f64 = 0.02;

/// The most timesteps a schedule is built for (every table then holds 8 MB of f64): a bound that
/// turns an absurd `T` into an error instead of an allocation failure. DDPM uses 1000, improved
/// DDPM 4000.
pub const MAX_TIMESTEPS: usize = 1_000_000;

/// A named noise schedule.
///
/// The linear-family schedules (`Linear`, `Quad`, `Sigmoid`, `Const`) use the DDPM end points
/// `β_start = s·10⁻⁴`, `β_end = s·0.02` with `s = 1000 / T`, so that the total noise is comparable across `T`
/// (Nichol & Dhariwal 2021, §3.2). For `T < 20` that makes `β_end > 1`, which validation rejects.
///
/// | name      | `β_i`, `i = 0 … T−1`                                                                 |
/// |-----------|--------------------------------------------------------------------------------------|
/// | `linear`  | `linspace(β_start, β_end, T)_i` (Ho et al. 2020)                                      |
/// | `cosine`  | `min(1 − f((i+1)/T) / f(i/T), 0.999)`, `f(u) = cos²(((u + 0.008)/1.008)·π/2)` (Nichol & Dhariwal 2021, eq. 17) |
/// | `quad`    | `linspace(√β_start, √β_end, T)_i²`                                                    |
/// | `sigmoid` | `β_start + (β_end − β_start)·σ(linspace(−6, 6, T)_i)`, `σ(x) = 1/(1 + e^{−x})`        |
/// | `const`   | `β_end`                                                                              |
/// | `jsd`     | `1 / (T − i)` (Sohl-Dickstein et al. 2015); `β_{T−1} = 1`, so `ᾱ_{T−1} = 0`           |
///
/// `linspace` includes both ends, as numpy's does.
///
/// # Example
/// ```
/// use ddpm_math::BetaSchedule;
/// let betas = "cosine".parse::<BetaSchedule>()?.betas(1000)?;
/// assert_eq!(betas.len(), 1000);
/// assert!(betas.iter().all(|&b| b > 0.0 && b <= 0.999));
/// # Ok::<(), ddpm_math::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BetaSchedule {
    /// Linearly increasing β (DDPM).
    Linear,
    /// β derived from a squared-cosine `ᾱ` (Improved DDPM).
    Cosine,
    /// Linear in `√β`.
    Quad,
    /// A sigmoid ramp between the linear end points.
    Sigmoid,
    /// Constant `β_end`.
    Const,
    /// `β_i = 1/(T − i)`, the schedule of Sohl-Dickstein et al. (2015).
    Jsd,
}

impl BetaSchedule {
    /// Every named schedule, in the order of the table above.
    pub const ALL: [BetaSchedule; 6] = [
        BetaSchedule::Linear,
        BetaSchedule::Cosine,
        BetaSchedule::Quad,
        BetaSchedule::Sigmoid,
        BetaSchedule::Const,
        BetaSchedule::Jsd,
    ];

    /// The name that [`FromStr`] accepts, e.g. `"cosine"`.
    pub fn name(self) -> &'static str {
        match self {
            BetaSchedule::Linear => "linear",
            BetaSchedule::Cosine => "cosine",
            BetaSchedule::Quad => "quad",
            BetaSchedule::Sigmoid => "sigmoid",
            BetaSchedule::Const => "const",
            BetaSchedule::Jsd => "jsd",
        }
    }

    /// The largest β this schedule may produce for `num_timesteps` steps: `0.999` for cosine, `1` for jsd and
    /// `β_end = 0.02·1000/T` for the linear family (`(√β_end)²`, as rounded, for quad).
    pub fn max_beta(self, num_timesteps: usize) -> f64 {
        let end = linear_end_points(num_timesteps).1;
        match self {
            BetaSchedule::Cosine => COSINE_MAX_BETA,
            BetaSchedule::Jsd => 1.0,
            BetaSchedule::Quad => end.sqrt() * end.sqrt(),
            _ => end,
        }
    }

    /// The betas `β_0 … β_{T−1}` for `T = num_timesteps`, validated by [`validate_betas`].
    ///
    /// # Errors
    /// [`Error::EmptyBetas`] for `T = 0`; [`Error::TooManyTimesteps`] above [`MAX_TIMESTEPS`];
    /// [`Error::LinearFamilyTooShort`] when the linear family is asked for `T < 20` (its
    /// `β_end = 20/T` exceeds 1).
    pub fn betas(self, num_timesteps: usize) -> Result<Array1<f64>> {
        if num_timesteps == 0 {
            return Err(Error::EmptyBetas);
        }
        if num_timesteps > MAX_TIMESTEPS {
            return Err(Error::TooManyTimesteps {
                got: num_timesteps,
                max: MAX_TIMESTEPS,
            });
        }
        let t = num_timesteps;
        let (start, end) = linear_end_points(t);
        let betas = match self {
            BetaSchedule::Linear => linspace(start, end, t),
            BetaSchedule::Cosine => betas_for_alpha_bar(t, cosine_alpha_bar, COSINE_MAX_BETA),
            BetaSchedule::Quad => linspace(start.sqrt(), end.sqrt(), t).mapv(|b| b * b),
            BetaSchedule::Sigmoid => {
                linspace(-6.0, 6.0, t).mapv(|x| (end - start) * sigmoid(x) + start)
            }
            BetaSchedule::Const => Array1::from_elem(t, end),
            BetaSchedule::Jsd => linspace(t as f64, 1.0, t).mapv(|x| 1.0 / x),
        };
        validate_betas(betas.as_slice().expect("a fresh Array1 is contiguous")).map_err(
            |e| match (self, e) {
                (BetaSchedule::Cosine | BetaSchedule::Jsd, e) => e,
                (_, Error::BetaOutOfRange { .. }) => Error::LinearFamilyTooShort {
                    schedule: self.name(),
                    num_timesteps,
                },
                (_, e) => e,
            },
        )?;
        Ok(betas)
    }
}

impl fmt::Display for BetaSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BetaSchedule {
    type Err = Error;

    /// Parses one of `linear`, `cosine`, `quad`, `sigmoid`, `const`, `jsd` (surrounding whitespace ignored).
    fn from_str(s: &str) -> Result<Self> {
        let name = s.trim();
        BetaSchedule::ALL
            .into_iter()
            .find(|schedule| schedule.name() == name)
            .ok_or_else(|| Error::UnknownSchedule(s.to_string()))
    }
}

/// The betas of the schedule called `name` (see [`BetaSchedule`]) for `num_timesteps` steps.
///
/// # Example
/// ```
/// let betas = ddpm_math::get_named_beta_schedule("linear", 1000)?;
/// assert_eq!((betas[0], betas[999]), (1e-4, 0.02));
/// assert!(ddpm_math::get_named_beta_schedule("warp", 1000).is_err());
/// # Ok::<(), ddpm_math::Error>(())
/// ```
///
/// # Errors
/// [`Error::UnknownSchedule`] for an unknown name, and the errors of [`BetaSchedule::betas`].
pub fn get_named_beta_schedule(name: &str, num_timesteps: usize) -> Result<Array1<f64>> {
    name.parse::<BetaSchedule>()?.betas(num_timesteps)
}

/// Betas that make `∏_{j≤i} (1 − β_j)` follow a given `ᾱ(u)`, `u ∈ [0, 1]`:
/// `β_i = min(1 − ᾱ((i+1)/T) / ᾱ(i/T), max_beta)`, with `i/T` a float division.
///
/// `alpha_bar` should decrease from `ᾱ(0) > 0`. The result is not validated.
pub fn betas_for_alpha_bar(
    num_timesteps: usize,
    alpha_bar: impl Fn(f64) -> f64,
    max_beta: f64,
) -> Array1<f64> {
    let t = num_timesteps as f64;
    Array1::from_shape_fn(num_timesteps, |i| {
        let t1 = i as f64 / t;
        let t2 = (i + 1) as f64 / t;
        (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(max_beta)
    })
}

/// The cosine schedule's `f(u) = cos²(((u + s)/(1 + s))·π/2)` with `s = 0.008` (Nichol & Dhariwal 2021, eq. 17).
pub fn cosine_alpha_bar(u: f64) -> f64 {
    let c = ((u + COSINE_S) / (1.0 + COSINE_S) * FRAC_PI_2).cos();
    c * c
}

/// Checks given betas: non-empty, every β finite and in `(0, 1]`.
///
/// # Example
/// ```
/// use ddpm_math::{validate_betas, Error};
/// assert!(validate_betas(&[0.1, 0.2, 1.0]).is_ok());
/// assert_eq!(validate_betas(&[0.1, 0.0]), Err(Error::BetaOutOfRange { index: 1, value: 0.0 }));
/// ```
///
/// # Errors
/// [`Error::EmptyBetas`], [`Error::NonFiniteBeta`] or [`Error::BetaOutOfRange`], naming the first bad index.
pub fn validate_betas(betas: &[f64]) -> Result<()> {
    if betas.is_empty() {
        return Err(Error::EmptyBetas);
    }
    for (index, &value) in betas.iter().enumerate() {
        if !value.is_finite() {
            return Err(Error::NonFiniteBeta { index, value });
        }
        if !(value > 0.0 && value <= 1.0) {
            return Err(Error::BetaOutOfRange { index, value });
        }
    }
    Ok(())
}

/// User-given betas as a validated `Array1<f64>`.
///
/// # Errors
/// As [`validate_betas`].
pub fn user_betas(betas: Vec<f64>) -> Result<Array1<f64>> {
    validate_betas(&betas)?;
    Ok(Array1::from(betas))
}

/// The logistic function `σ(x) = 1/(1 + e^{−x})`.
fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// `(β_start, β_end) = (1000/T · 10⁻⁴, 1000/T · 0.02)`.
fn linear_end_points(num_timesteps: usize) -> (f64, f64) {
    let scale = 1000.0 / num_timesteps as f64;
    (scale * LINEAR_BETA_START, scale * LINEAR_BETA_END)
}

/// numpy's `linspace(start, stop, num)`: `start + i·(stop − start)/(num − 1)`, the last element exactly `stop`.
fn linspace(start: f64, stop: f64, num: usize) -> Array1<f64> {
    if num == 1 {
        return Array1::from_elem(1, start);
    }
    let step = (stop - start) / (num - 1) as f64;
    let mut out = Array1::from_shape_fn(num, |i| i as f64 * step + start);
    out[num - 1] = stop;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_matches_ddpm_end_points_at_1000() {
        let betas = BetaSchedule::Linear.betas(1000).unwrap();
        assert_eq!(betas[0], 1e-4);
        assert_eq!(betas[999], 0.02);
        let step = (0.02 - 1e-4) / 999.0;
        assert!((betas[1] - betas[0] - step).abs() < 1e-15);
    }

    #[test]
    fn linear_scales_with_timesteps() {
        let betas = BetaSchedule::Linear.betas(4000).unwrap();
        assert!((betas[0] - 2.5e-5).abs() < 1e-18);
        assert!((betas[3999] - 0.005).abs() < 1e-17);
    }

    #[test]
    fn cosine_uses_float_division() {
        // With integer division i/T = 0 for every i < T, which gave 999 zero betas elsewhere.
        let betas = BetaSchedule::Cosine.betas(1000).unwrap();
        assert!(betas.iter().all(|&b| b > 0.0));
        let distinct = betas
            .windows(2)
            .into_iter()
            .filter(|w| w[0] != w[1])
            .count();
        assert!(distinct > 900, "only {distinct} distinct consecutive betas");
        // β_0 = 1 − f(1/T)/f(0): a closed form, about 4.1e-5 at T = 1000.
        let expected = 1.0 - cosine_alpha_bar(0.001) / cosine_alpha_bar(0.0);
        assert_eq!(betas[0], expected);
        assert!(betas[0] > 3e-5 && betas[0] < 5e-5, "β_0 = {}", betas[0]);
        assert_eq!(betas[999], COSINE_MAX_BETA);
    }

    #[test]
    fn jsd_is_one_over_remaining_steps() {
        let betas = BetaSchedule::Jsd.betas(10).unwrap();
        for (i, &b) in betas.iter().enumerate() {
            assert_eq!(b, 1.0 / (10 - i) as f64);
        }
    }

    #[test]
    fn quad_sigmoid_const_end_points() {
        let quad = BetaSchedule::Quad.betas(1000).unwrap();
        assert!((quad[0] - 1e-4).abs() < 1e-18 && (quad[999] - 0.02).abs() < 1e-17);
        let sigmoid = BetaSchedule::Sigmoid.betas(1000).unwrap();
        assert!(sigmoid.windows(2).into_iter().all(|w| w[1] > w[0]));
        assert!(sigmoid[0] > 1e-4 && sigmoid[999] < 0.02);
        let constant = BetaSchedule::Const.betas(100).unwrap();
        assert!(constant.iter().all(|&b| b == 0.2));
    }

    #[test]
    fn names_round_trip_and_unknown_is_named() {
        for schedule in BetaSchedule::ALL {
            assert_eq!(schedule.name().parse::<BetaSchedule>().unwrap(), schedule);
        }
        let err = "warp".parse::<BetaSchedule>().unwrap_err();
        assert!(err.to_string().contains("`warp`"), "{err}");
    }

    #[test]
    fn validation_rejects_bad_betas() {
        assert_eq!(validate_betas(&[]), Err(Error::EmptyBetas));
        assert!(matches!(
            validate_betas(&[0.1, f64::NAN]),
            Err(Error::NonFiniteBeta { index: 1, .. })
        ));
        assert!(matches!(
            validate_betas(&[0.1, f64::INFINITY]),
            Err(Error::NonFiniteBeta { index: 1, .. })
        ));
        assert_eq!(
            validate_betas(&[-0.1]),
            Err(Error::BetaOutOfRange {
                index: 0,
                value: -0.1
            })
        );
        assert_eq!(
            validate_betas(&[0.5, 1.5]),
            Err(Error::BetaOutOfRange {
                index: 1,
                value: 1.5
            })
        );
        assert!(validate_betas(&[1.0]).is_ok());
        assert_eq!(BetaSchedule::Linear.betas(0), Err(Error::EmptyBetas));
        for schedule in [
            BetaSchedule::Linear,
            BetaSchedule::Quad,
            BetaSchedule::Sigmoid,
        ] {
            let err = schedule.betas(19).unwrap_err();
            assert!(matches!(
                err,
                Error::LinearFamilyTooShort {
                    num_timesteps: 19,
                    ..
                }
            ));
            assert!(err.to_string().contains("T ≥ 20"), "{err}");
            assert!(schedule.betas(20).is_ok());
        }
        assert!(BetaSchedule::Jsd.betas(2).is_ok());
        assert_eq!(
            BetaSchedule::Cosine.betas(MAX_TIMESTEPS + 1),
            Err(Error::TooManyTimesteps {
                got: MAX_TIMESTEPS + 1,
                max: MAX_TIMESTEPS
            })
        );
    }
}
