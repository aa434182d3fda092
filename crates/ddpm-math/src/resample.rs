//! Timestep samplers for Monte Carlo estimates of the variational bound (Nichol & Dhariwal 2021, §3.3).
//!
//! A sampler draws `t ~ p_t` and returns the weight `1/(T p_t)` of each draw, so that
//! `E_{t∼p}[L_t/(T p_t)] = (1/T) Σ_t L_t` whatever `p` is. Draws use a caller-provided random number generator,
//! e.g. `rand::rngs::StdRng::seed_from_u64(seed)`, so runs are reproducible.

use ndarray::{Array1, Array2};
use rand::{Rng, RngCore};

use crate::error::{Error, Result};

/// Timesteps drawn for a batch and their importance weights `1/(T p_t)`.
#[derive(Debug, Clone, PartialEq)]
pub struct TimestepSample {
    /// One timestep per batch element.
    pub timesteps: Vec<usize>,
    /// `1/(T p_{t_b})` for each drawn `t_b`.
    pub weights: Vec<f64>,
}

/// A distribution over timesteps `0..T` that may adapt to the observed losses.
pub trait ScheduleSampler {
    /// The number of timesteps `T`.
    fn num_timesteps(&self) -> usize;

    /// Unnormalised, non-negative weights of the timesteps, shape `[T]`; `p_t = w_t / Σ w`.
    fn weights(&self) -> Array1<f64>;

    /// Records per-timestep losses (one loss per drawn timestep). The default does nothing.
    ///
    /// # Errors
    /// Implementations reject mismatched lengths, out-of-range timesteps and non-finite losses.
    fn update_with_losses(&mut self, _timesteps: &[usize], _losses: &[f64]) -> Result<()> {
        Ok(())
    }

    /// Draws `batch_size` timesteps i.i.d. from `p_t = w_t / Σ w` with weights `1/(T p_t)`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if the weights do not sum to a positive finite number.
    fn sample(&self, batch_size: usize, rng: &mut dyn RngCore) -> Result<TimestepSample> {
        let w = self.weights();
        let total = w.sum();
        if !(total.is_finite() && total > 0.0) || w.iter().any(|&x| x.is_nan() || x < 0.0) {
            return Err(Error::InvalidArgument {
                name: "weights sum",
                value: total,
                reason: "sampler weights must be non-negative with a positive finite sum",
            });
        }
        let p = w / total;
        let cumulative: Vec<f64> = p
            .iter()
            .scan(0.0, |acc, &x| {
                *acc += x;
                Some(*acc)
            })
            .collect();
        let last_positive = p.iter().rposition(|&x| x > 0.0).expect("total > 0");
        let t_len = p.len() as f64;
        let mut timesteps = Vec::with_capacity(batch_size);
        let mut weights = Vec::with_capacity(batch_size);
        for _ in 0..batch_size {
            let u = rng.gen::<f64>() * cumulative[cumulative.len() - 1];
            let t = cumulative.partition_point(|&c| c <= u).min(last_positive);
            timesteps.push(t);
            weights.push(1.0 / (t_len * p[t]));
        }
        Ok(TimestepSample { timesteps, weights })
    }
}

/// Uniform `p_t = 1/T`; every weight is 1.
///
/// # Example
/// ```
/// use ddpm_math::{ScheduleSampler, UniformSampler};
/// use rand::{rngs::StdRng, SeedableRng};
/// let sampler = UniformSampler::new(1000);
/// let draw = sampler.sample(4, &mut StdRng::seed_from_u64(0))?;
/// assert!(draw.timesteps.iter().all(|&t| t < 1000));
/// assert!(draw.weights.iter().all(|&w| (w - 1.0).abs() < 1e-12));
/// # Ok::<(), ddpm_math::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UniformSampler {
    num_timesteps: usize,
}

impl UniformSampler {
    /// A uniform sampler over `0..num_timesteps`.
    pub fn new(num_timesteps: usize) -> Self {
        UniformSampler { num_timesteps }
    }
}

impl ScheduleSampler for UniformSampler {
    fn num_timesteps(&self) -> usize {
        self.num_timesteps
    }

    fn weights(&self) -> Array1<f64> {
        Array1::ones(self.num_timesteps)
    }
}

/// Importance sampling of `t` by the second moment of the loss (Nichol & Dhariwal 2021, eq. 18):
/// uniform until every `t` has `history_per_term` (10) recorded losses, then
/// `p_t ∝ √E[L_t²]` over the last 10 losses of `t`, mixed as `(1 − u) p_t + u/T` with `u = 0.001`.
///
/// # Example
/// ```
/// use ddpm_math::{LossSecondMomentSampler, ScheduleSampler};
/// use rand::{rngs::StdRng, SeedableRng};
/// let mut sampler = LossSecondMomentSampler::new(4);
/// for _ in 0..10 {
///     sampler.update_with_losses(&[0, 1, 2, 3], &[1.0, 1.0, 1.0, 7.0])?;
/// }
/// assert!(sampler.is_warmed_up());
/// let draw = sampler.sample(1000, &mut StdRng::seed_from_u64(7))?;
/// let threes = draw.timesteps.iter().filter(|&&t| t == 3).count();
/// assert!(threes > 600, "t = 3 carries 70% of the mass, drawn {threes} times");
/// # Ok::<(), ddpm_math::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct LossSecondMomentSampler {
    history_per_term: usize,
    uniform_prob: f64,
    history: Array2<f64>,
    counts: Vec<usize>,
}

impl LossSecondMomentSampler {
    /// Losses kept per timestep (Improved DDPM's 10).
    pub const DEFAULT_HISTORY_PER_TERM: usize = 10;
    /// Weight of the uniform mixture component (Improved DDPM's 0.001).
    pub const DEFAULT_UNIFORM_PROB: f64 = 0.001;

    /// A sampler over `0..num_timesteps` with the Improved-DDPM settings (10 losses per term, `u = 0.001`).
    pub fn new(num_timesteps: usize) -> Self {
        Self::with_params(
            num_timesteps,
            Self::DEFAULT_HISTORY_PER_TERM,
            Self::DEFAULT_UNIFORM_PROB,
        )
        .expect("the defaults are valid")
    }

    /// A sampler with `history_per_term ≥ 1` losses per timestep and uniform mixture weight `u ∈ [0, 1]`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for `history_per_term = 0` or `u` outside `[0, 1]`.
    pub fn with_params(
        num_timesteps: usize,
        history_per_term: usize,
        uniform_prob: f64,
    ) -> Result<Self> {
        if history_per_term == 0 {
            return Err(Error::InvalidArgument {
                name: "history_per_term",
                value: 0.0,
                reason: "at least one loss per timestep must be kept",
            });
        }
        if !(0.0..=1.0).contains(&uniform_prob) {
            return Err(Error::InvalidArgument {
                name: "uniform_prob",
                value: uniform_prob,
                reason: "a mixture weight must lie in [0, 1]",
            });
        }
        Ok(LossSecondMomentSampler {
            history_per_term,
            uniform_prob,
            history: Array2::zeros((num_timesteps, history_per_term)),
            counts: vec![0; num_timesteps],
        })
    }

    /// The recorded losses of each timestep, oldest first (for checkpoints).
    pub fn history(&self) -> Vec<Vec<f64>> {
        self.history
            .rows()
            .into_iter()
            .zip(&self.counts)
            .map(|(row, &c)| row.iter().take(c).copied().collect())
            .collect()
    }

    /// Restores a history written by [`LossSecondMomentSampler::history`].
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when the number of timesteps differs, a timestep holds more than
    /// `history_per_term` losses, or a loss is not finite.
    pub fn set_history(&mut self, history: Vec<Vec<f64>>) -> Result<()> {
        let bad = |reason| Error::InvalidArgument {
            name: "history",
            value: history.len() as f64,
            reason,
        };
        if history.len() != self.counts.len() {
            return Err(bad("one list of losses per timestep is needed"));
        }
        if history
            .iter()
            .any(|h| h.len() > self.history_per_term || h.iter().any(|l| !l.is_finite()))
        {
            return Err(bad("at most history_per_term finite losses per timestep"));
        }
        self.history.fill(0.0);
        for (t, h) in history.iter().enumerate() {
            for (j, &l) in h.iter().enumerate() {
                self.history[[t, j]] = l;
            }
            self.counts[t] = h.len();
        }
        Ok(())
    }

    /// Whether every timestep has a full history, so that the weights are no longer uniform.
    pub fn is_warmed_up(&self) -> bool {
        self.counts.iter().all(|&c| c == self.history_per_term)
    }
}

impl ScheduleSampler for LossSecondMomentSampler {
    fn num_timesteps(&self) -> usize {
        self.counts.len()
    }

    /// Ones before warm-up; then `(1 − u)·√E[L_t²]/Σ_s √E[L_s²] + u/T` (uniform if every loss is 0).
    fn weights(&self) -> Array1<f64> {
        let t_len = self.counts.len();
        if !self.is_warmed_up() {
            return Array1::ones(t_len);
        }
        let rms: Array1<f64> = self
            .history
            .rows()
            .into_iter()
            .map(|row| row.mapv(|l| l * l).mean().unwrap_or(0.0).sqrt())
            .collect();
        let total = rms.sum();
        if !(total > 0.0 && total.is_finite()) {
            return Array1::ones(t_len);
        }
        rms.mapv(|r| (1.0 - self.uniform_prob) * r / total + self.uniform_prob / t_len as f64)
    }

    /// Appends each loss to its timestep's history, dropping the oldest once `history_per_term` are kept.
    fn update_with_losses(&mut self, timesteps: &[usize], losses: &[f64]) -> Result<()> {
        if timesteps.len() != losses.len() {
            return Err(Error::BatchMismatch {
                timesteps: timesteps.len(),
                batch: losses.len(),
            });
        }
        let t_len = self.counts.len();
        for (&t, &loss) in timesteps.iter().zip(losses) {
            if t >= t_len {
                return Err(Error::TimestepOutOfRange {
                    t,
                    num_timesteps: t_len,
                });
            }
            if !loss.is_finite() {
                return Err(Error::InvalidArgument {
                    name: "loss",
                    value: loss,
                    reason: "losses must be finite",
                });
            }
        }
        for (&t, &loss) in timesteps.iter().zip(losses) {
            let mut row = self.history.row_mut(t);
            if self.counts[t] == self.history_per_term {
                for j in 1..self.history_per_term {
                    row[j - 1] = row[j];
                }
                row[self.history_per_term - 1] = loss;
            } else {
                row[self.counts[t]] = loss;
                self.counts[t] += 1;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    #[test]
    fn history_round_trips_and_restores_the_weights() {
        let mut s = LossSecondMomentSampler::with_params(3, 2, 0.001).unwrap();
        s.update_with_losses(&[0, 1, 2, 0, 1, 2, 0], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
            .unwrap();
        let h = s.history();
        assert_eq!(h, vec![vec![4.0, 7.0], vec![2.0, 5.0], vec![3.0, 6.0]]);
        let mut r = LossSecondMomentSampler::with_params(3, 2, 0.001).unwrap();
        r.set_history(h.clone()).unwrap();
        assert!(r.is_warmed_up());
        assert_eq!(r.weights(), s.weights());
        assert_eq!(r.history(), h);
        assert!(
            r.set_history(vec![vec![1.0]; 2]).is_err(),
            "wrong number of timesteps"
        );
        assert!(
            r.set_history(vec![vec![1.0, 2.0, 3.0]; 3]).is_err(),
            "too many losses"
        );
        assert!(
            r.set_history(vec![vec![f64::NAN]; 3]).is_err(),
            "non-finite loss"
        );
    }

    #[test]
    fn warm_up_is_uniform_until_every_term_is_full() {
        let mut sampler = LossSecondMomentSampler::new(3);
        for _ in 0..9 {
            sampler
                .update_with_losses(&[0, 1, 2], &[1.0, 2.0, 3.0])
                .unwrap();
        }
        sampler.update_with_losses(&[0, 1], &[1.0, 2.0]).unwrap();
        assert!(!sampler.is_warmed_up());
        assert_eq!(sampler.weights(), Array1::ones(3));
        sampler.update_with_losses(&[2], &[3.0]).unwrap();
        assert!(sampler.is_warmed_up());
        let w = sampler.weights();
        let expected = [1.0, 2.0, 3.0].map(|r| 0.999 * r / 6.0 + 0.001 / 3.0);
        for (a, b) in w.iter().zip(expected) {
            assert!((a - b).abs() < 1e-15, "{a} vs {b}");
        }
        assert!((w.sum() - 1.0).abs() < 1e-15);
    }

    #[test]
    fn history_keeps_the_last_losses() {
        let mut sampler = LossSecondMomentSampler::with_params(2, 2, 0.0).unwrap();
        sampler
            .update_with_losses(&[0, 0, 0, 1, 1], &[5.0, 3.0, 4.0, 0.0, 0.0])
            .unwrap();
        // t = 0 keeps [3, 4] → √(25/2); t = 1 keeps [0, 0] → 0.
        let w = sampler.weights();
        assert_eq!(w[1], 0.0);
        assert!((w[0] - 1.0).abs() < 1e-15);
        // With p_1 = 0 and u = 0, only t = 0 can be drawn, with weight 1/(2·1).
        let draw = sampler.sample(50, &mut StdRng::seed_from_u64(1)).unwrap();
        assert!(draw.timesteps.iter().all(|&t| t == 0));
        assert!(draw.weights.iter().all(|&w| w == 0.5));
    }

    #[test]
    fn seeded_draws_repeat() {
        let sampler = UniformSampler::new(1000);
        let a = sampler.sample(16, &mut StdRng::seed_from_u64(42)).unwrap();
        let b = sampler.sample(16, &mut StdRng::seed_from_u64(42)).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn rejects_bad_updates() {
        let mut sampler = LossSecondMomentSampler::new(3);
        assert!(sampler.update_with_losses(&[0, 1], &[1.0]).is_err());
        assert!(sampler.update_with_losses(&[3], &[1.0]).is_err());
        assert!(sampler.update_with_losses(&[0], &[f64::NAN]).is_err());
        assert!(UniformSampler::new(0)
            .sample(1, &mut StdRng::seed_from_u64(0))
            .is_err());
    }
}
