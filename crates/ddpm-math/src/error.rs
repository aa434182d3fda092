//! The error type of `ddpm-math` and its `Result` alias.

/// Everything that can go wrong when building or using a diffusion process.
///
/// Messages name the offending value and carry no trailing period.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// A schedule or a diffusion was asked for zero timesteps or given no betas.
    #[error("betas must not be empty (got 0 timesteps)")]
    EmptyBetas,
    /// A beta is NaN or infinite.
    #[error("beta[{index}] = {value} is not finite")]
    NonFiniteBeta { index: usize, value: f64 },
    /// A beta lies outside `(0, 1]`.
    #[error("beta[{index}] = {value} is outside (0, 1]")]
    BetaOutOfRange { index: usize, value: f64 },
    /// `1 - beta[0]` rounds to 1 in f32 (the precision of the device tables), so `1 - alpha_bar_0` is
    /// zero there and the posterior is undefined.
    #[error("beta[0] = {value} is too small: 1 - beta[0] rounds to 1 in f32, the precision of the device tables")]
    BetaTooSmall { value: f64 },
    /// `ᾱ_t` is positive but below [`MIN_ALPHA_BAR`](crate::diffusion::MIN_ALPHA_BAR): f32 tables would hold 0.
    #[error(
        "alpha_bar[{index}] = {value:e} (of {num_timesteps} timesteps) is below 1e-30: the schedule destroys \
         all signal long before its end, and the f32 tables of training and sampling would hold 0 there"
    )]
    AlphaBarUnderflow {
        index: usize,
        num_timesteps: usize,
        value: f64,
    },
    /// More timesteps than [`MAX_TIMESTEPS`](crate::schedule::MAX_TIMESTEPS).
    #[error("{got} timesteps is more than the {max} this library builds tables for")]
    TooManyTimesteps { got: usize, max: usize },
    /// A schedule of the linear family (linear, quad, sigmoid, const) at `T < 20`, where its
    /// `β_end = 0.02·1000/T` exceeds 1.
    #[error(
        "the {schedule} schedule scales β by 1000/T (β_end = 0.02·1000/T), so it needs T ≥ 20 \
         timesteps; got T = {num_timesteps} (cosine and jsd work from T = 2)"
    )]
    LinearFamilyTooShort {
        schedule: &'static str,
        num_timesteps: usize,
    },
    /// A [`GaussianDiffusion`](crate::GaussianDiffusion) needs at least two timesteps.
    #[error("a diffusion needs at least 2 timesteps, got {0}")]
    TooFewTimesteps(usize),
    /// The schedule name is not one of the known names.
    #[error(
        "unknown beta schedule `{0}` (expected one of linear, cosine, quad, sigmoid, const, jsd)"
    )]
    UnknownSchedule(String),
    /// A timestep index is not in `0..num_timesteps`.
    #[error("timestep {t} is out of range for a diffusion with {num_timesteps} timesteps")]
    TimestepOutOfRange { t: usize, num_timesteps: usize },
    /// The number of timesteps does not match the batch size (the leading axis).
    #[error("got {timesteps} timesteps for a batch of {batch}")]
    BatchMismatch { timesteps: usize, batch: usize },
    /// Two arrays that must have the same shape do not.
    #[error("shape mismatch: `{name}` has shape {got:?}, expected {expected:?}")]
    ShapeMismatch {
        name: &'static str,
        got: Vec<usize>,
        expected: Vec<usize>,
    },
    /// An array has too few axes (ops need a leading batch axis; learned variances need a channel axis).
    #[error("`{name}` needs at least {min} axes, got {got}")]
    TooFewAxes {
        name: &'static str,
        min: usize,
        got: usize,
    },
    /// A respacing specification could not be parsed or cannot be satisfied.
    #[error("invalid respacing `{spec}` for {num_timesteps} timesteps: {reason}")]
    InvalidSpacing {
        spec: String,
        num_timesteps: usize,
        reason: String,
    },
    /// `ᾱ_t` reaches 0 before the last timestep (a `β = 1` before the end, or an underflowing product), so every
    /// later step has no signal and the posterior and respacing ratios `ᾱ_t/ᾱ_{t−1}` are `0/0`.
    #[error(
        "alpha_bar reaches 0 at timestep {index} of {num_timesteps} (beta[{index}] = {beta}): only the last \
         timestep may have alpha_bar = 0 (zero terminal SNR)"
    )]
    ZeroAlphaBarBeforeEnd {
        index: usize,
        num_timesteps: usize,
        beta: f64,
    },
    /// The modelling choices do not fit together (e.g. a learned variance trained with the simple loss).
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// An argument is outside its domain (e.g. a negative DDIM eta).
    #[error("invalid argument `{name}` = {value}: {reason}")]
    InvalidArgument {
        name: &'static str,
        value: f64,
        reason: &'static str,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
