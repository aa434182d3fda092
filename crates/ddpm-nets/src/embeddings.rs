//! Timestep embeddings of the UNet: sinusoidal features of t (Transformer positional encoding) and the MLP after them.
use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module, Kind, Tensor};

/// Sinusoidal features of the timesteps, as diffusers' `get_timestep_embedding` computes them in f32.
///
/// With `half = dim / 2` and frequencies `ω_k = exp(−ln(10000)·k / (half − freq_shift))`, `k = 0..half`,
/// the features are `[sin(t·ω), cos(t·ω)]`, or `[cos(t·ω), sin(t·ω)]` when `flip_sin_to_cos`; an odd `dim`
/// gets one zero column at the end. DDPM (Ho et al. 2020) uses `freq_shift = 1`, `flip_sin_to_cos = false`.
///
/// # Shapes
/// `t`: `[N]` (any numeric kind) → `[N, dim]` f32 on `t`'s device.
pub fn timestep_embedding(t: &Tensor, dim: i64, flip_sin_to_cos: bool, freq_shift: f64) -> Tensor {
    let half = dim / 2;
    let exponent = Tensor::arange(half, (Kind::Float, t.device())) * (-(10000f64.ln()));
    let exponent = exponent / (half as f64 - freq_shift);
    let freqs = exponent.exp();
    let args = t.to_kind(Kind::Float).unsqueeze(1) * freqs.unsqueeze(0);
    let (sin, cos) = (args.sin(), args.cos());
    let emb = if flip_sin_to_cos {
        Tensor::cat(&[cos, sin], -1)
    } else {
        Tensor::cat(&[sin, cos], -1)
    };
    if dim % 2 == 1 {
        emb.constant_pad_nd([0, 1])
    } else {
        emb
    }
}

/// Hyper-parameters of [`TimestepEmbedding`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimestepEmbeddingConfig {
    /// Width of the sinusoidal features (the UNet's first block width).
    pub in_channels: i64,
    /// Width of the embedding (4× the first block width in DDPM).
    pub time_embed_dim: i64,
}

impl Default for TimestepEmbeddingConfig {
    /// The DDPM CIFAR-10 model: 128 → 512.
    fn default() -> Self {
        Self {
            in_channels: 128,
            time_embed_dim: 512,
        }
    }
}

/// The MLP on the sinusoidal features: `linear_2(silu(linear_1(·)))` (diffusers `TimestepEmbedding`).
#[derive(Debug)]
pub struct TimestepEmbedding {
    linear_1: nn::Linear,
    linear_2: nn::Linear,
}

impl TimestepEmbedding {
    /// Creates `linear_1` and `linear_2` under `p`.
    pub fn new(p: nn::Path, cfg: &TimestepEmbeddingConfig) -> Self {
        let linear_1 = nn::linear(
            &p / "linear_1",
            cfg.in_channels,
            cfg.time_embed_dim,
            Default::default(),
        );
        let linear_2 = nn::linear(
            &p / "linear_2",
            cfg.time_embed_dim,
            cfg.time_embed_dim,
            Default::default(),
        );
        Self { linear_1, linear_2 }
    }

    /// Embeds the sinusoidal features.
    ///
    /// # Shapes
    /// `xs`: `[N, in_channels]` → `[N, time_embed_dim]`.
    pub fn forward_t(&self, xs: &Tensor, _train: bool) -> Tensor {
        self.linear_2.forward(&self.linear_1.forward(xs).silu())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sinusoidal_matches_the_closed_form() {
        let t = Tensor::from_slice(&[0i64, 7, 999]);
        let dim = 6;
        for (flip, shift) in [(false, 1.0), (true, 0.0)] {
            let emb = timestep_embedding(&t, dim, flip, shift);
            assert_eq!(emb.size(), [3, 6]);
            for (i, tv) in [0.0f64, 7.0, 999.0].into_iter().enumerate() {
                for k in 0..3 {
                    let w = (-(10000f64.ln()) * k as f64 / (3.0 - shift)).exp();
                    let (s, c) = ((tv * w).sin(), (tv * w).cos());
                    let (a, b) = if flip { (c, s) } else { (s, c) };
                    let got_a = emb.double_value(&[i as i64, k]);
                    let got_b = emb.double_value(&[i as i64, k + 3]);
                    assert!((got_a - a).abs() < 1e-3, "t={tv} k={k}: {got_a} vs {a}");
                    assert!((got_b - b).abs() < 1e-3, "t={tv} k={k}: {got_b} vs {b}");
                }
            }
        }
    }

    #[test]
    fn odd_width_is_zero_padded() {
        let emb = timestep_embedding(&Tensor::from_slice(&[5i64, 6]), 7, false, 1.0);
        assert_eq!(emb.size(), [2, 7]);
        assert_eq!(emb.double_value(&[0, 6]), 0.0);
        assert_eq!(emb.double_value(&[1, 6]), 0.0);
    }

    #[test]
    fn embedding_shapes() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let cfg = TimestepEmbeddingConfig {
            in_channels: 8,
            time_embed_dim: 32,
        };
        let m = TimestepEmbedding::new(vs.root() / "time_embedding", &cfg);
        let ys = m.forward_t(
            &Tensor::zeros([4, 8], (Kind::Float, tch::Device::Cpu)),
            false,
        );
        assert_eq!(ys.size(), [4, 32]);
        let mut names: Vec<_> = vs.variables().into_keys().collect();
        names.sort();
        assert_eq!(
            names,
            [
                "time_embedding.linear_1.bias",
                "time_embedding.linear_1.weight",
                "time_embedding.linear_2.bias",
                "time_embedding.linear_2.weight"
            ]
        );
    }
}
