//! The DDPM ε-network: a UNet with the layout, behaviour and variable names of diffusers' `UNet2DModel`.
use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module, Kind, Tensor};

use crate::blocks::{
    DownBlock2D, DownBlockConfig, MidBlockConfig, UNetMidBlock2D, UpBlock2D, UpBlockConfig,
};
use crate::embeddings::{timestep_embedding, TimestepEmbedding, TimestepEmbeddingConfig};
use crate::error::{Error, Result};

/// Kind of an encoder level (diffusers' `down_block_types` entries).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DownBlockType {
    /// Residual blocks only.
    #[serde(rename = "DownBlock2D")]
    Down,
    /// Residual blocks each followed by self-attention.
    #[serde(rename = "AttnDownBlock2D")]
    AttnDown,
}

/// Kind of a decoder level (diffusers' `up_block_types` entries, listed from the bottom level up).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpBlockType {
    /// Residual blocks only.
    #[serde(rename = "UpBlock2D")]
    Up,
    /// Residual blocks each followed by self-attention.
    #[serde(rename = "AttnUpBlock2D")]
    AttnUp,
}

/// The training image size of a checkpoint (informational; any size ≥ 1 per level runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SampleSize {
    /// Square images.
    Square(i64),
    /// `[height, width]`.
    Rect([i64; 2]),
}

/// Hyper-parameters of [`UNet2DModel`]. Field names are diffusers' `config.json` keys.
///
/// `Default` is the DDPM CIFAR-10 model (Ho et al. 2020; `google/ddpm-cifar10-32`): 35,746,307 parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UNetConfig {
    /// Training image size (informational).
    pub sample_size: Option<SampleSize>,
    /// Image channels.
    pub in_channels: i64,
    /// Output channels: `in_channels` for ε only, `2 × in_channels` with a learned variance.
    pub out_channels: i64,
    /// Map the input from [0, 1] to [-1, 1] first (`2x − 1`).
    pub center_input_sample: bool,
    /// `s` in the frequencies `exp(−ln(10000)·k/(half − s))` of the sinusoidal embedding.
    pub freq_shift: i64,
    /// `[cos, sin]` instead of `[sin, cos]`.
    pub flip_sin_to_cos: bool,
    /// Encoder levels, top (full resolution) first.
    pub down_block_types: Vec<DownBlockType>,
    /// Decoder levels, bottom (lowest resolution) first.
    pub up_block_types: Vec<UpBlockType>,
    /// Width of each level, top first.
    pub block_out_channels: Vec<i64>,
    /// Residual blocks per encoder level (the decoder has one more).
    pub layers_per_block: i64,
    /// Output scale of the middle block's residual blocks and attention.
    pub mid_block_scale_factor: f64,
    /// Padding of the stride-2 downsampling convolutions: 0 = DDPM's pad-bottom-right-then-valid, 1 = same.
    pub downsample_padding: i64,
    /// Dropout in the residual blocks (training only).
    pub dropout: f64,
    /// Width of an attention head; `None` = one head per attention layer.
    pub attention_head_dim: Option<i64>,
    /// GroupNorm groups.
    pub norm_num_groups: i64,
    /// GroupNorm groups of the middle block's attention; `None` = `norm_num_groups`.
    pub attn_norm_num_groups: Option<i64>,
    /// GroupNorm epsilon.
    pub norm_eps: f64,
    /// Self-attention in the middle block.
    pub add_attention: bool,
    /// Number of classes of a class-conditional model (`class_embedding`, added to the time embedding).
    pub num_class_embeds: Option<i64>,
    /// Width of the time embedding; `None` = 4 × `block_out_channels[0]`.
    pub time_embedding_dim: Option<i64>,
}

impl Default for UNetConfig {
    fn default() -> Self {
        use DownBlockType::{AttnDown, Down};
        use UpBlockType::{AttnUp, Up};
        Self {
            sample_size: Some(SampleSize::Square(32)),
            in_channels: 3,
            out_channels: 3,
            center_input_sample: false,
            freq_shift: 1,
            flip_sin_to_cos: false,
            down_block_types: vec![Down, AttnDown, Down, Down],
            up_block_types: vec![Up, Up, AttnUp, Up],
            block_out_channels: vec![128, 256, 256, 256],
            layers_per_block: 2,
            mid_block_scale_factor: 1.0,
            downsample_padding: 0,
            dropout: 0.1,
            attention_head_dim: None,
            norm_num_groups: 32,
            attn_norm_num_groups: None,
            norm_eps: 1e-6,
            add_attention: true,
            num_class_embeds: None,
            time_embedding_dim: None,
        }
    }
}

impl UNetConfig {
    /// Width of the time embedding.
    pub fn time_embed_dim(&self) -> i64 {
        self.time_embedding_dim.unwrap_or(
            self.block_out_channels
                .first()
                .copied()
                .unwrap_or(0)
                .saturating_mul(4),
        )
    }

    /// Checks that the numbers fit together (group counts and head widths divide the channels, list lengths agree).
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidConfig(m));
        let levels = self.block_out_channels.len();
        if levels == 0 {
            return bad("block_out_channels is empty".into());
        }
        if self.down_block_types.len() != levels || self.up_block_types.len() != levels {
            return bad(format!(
                "{} block_out_channels but {} down_block_types and {} up_block_types",
                levels,
                self.down_block_types.len(),
                self.up_block_types.len()
            ));
        }
        if self.in_channels < 1 || self.out_channels < 1 {
            return bad("in_channels and out_channels must be positive".into());
        }
        if self.layers_per_block < 1 {
            return bad(format!(
                "layers_per_block = {} (must be ≥ 1)",
                self.layers_per_block
            ));
        }
        if self.norm_num_groups < 1 {
            return bad(format!("norm_num_groups = {}", self.norm_num_groups));
        }
        for &c in &self.block_out_channels {
            if c < 1 || c % self.norm_num_groups != 0 {
                return bad(format!(
                    "block_out_channels entry {c} is not a positive multiple of norm_num_groups = {}",
                    self.norm_num_groups
                ));
            }
        }
        if self.norm_eps.is_nan() || self.norm_eps <= 0.0 {
            return bad(format!("norm_eps = {} (must be > 0)", self.norm_eps));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout = {} (must be in [0, 1))", self.dropout));
        }
        if self.mid_block_scale_factor.is_nan() || self.mid_block_scale_factor <= 0.0 {
            return bad(format!(
                "mid_block_scale_factor = {}",
                self.mid_block_scale_factor
            ));
        }
        if !(0..=1).contains(&self.downsample_padding) {
            return bad(format!(
                "downsample_padding = {} (0 or 1)",
                self.downsample_padding
            ));
        }
        if 2 * i128::from(self.freq_shift) >= i128::from(self.block_out_channels[0]) {
            return bad(format!(
                "freq_shift = {} too large for the embedding",
                self.freq_shift
            ));
        }
        if self.time_embed_dim() < 1 {
            return bad(format!("time_embedding_dim = {}", self.time_embed_dim()));
        }
        if let Some(n) = self.num_class_embeds {
            if n < 1 {
                return bad(format!("num_class_embeds = {n} (must be ≥ 1)"));
            }
        }
        let last = *self.block_out_channels.last().unwrap_or(&0);
        let head_fits = |c: i64| match self.attention_head_dim {
            Some(d) => d >= 1 && c % d == 0,
            None => true,
        };
        let mut attention_widths = Vec::new();
        for (i, t) in self.down_block_types.iter().enumerate() {
            if *t == DownBlockType::AttnDown {
                attention_widths.push(self.block_out_channels[i]);
            }
        }
        for (i, t) in self.up_block_types.iter().enumerate() {
            if *t == UpBlockType::AttnUp {
                attention_widths.push(self.block_out_channels[levels - 1 - i]);
            }
        }
        if self.add_attention {
            attention_widths.push(last);
            let g = self.attn_norm_num_groups.unwrap_or(self.norm_num_groups);
            if g < 1 || last % g != 0 {
                return bad(format!(
                    "attn_norm_num_groups = {g} does not divide {last} channels"
                ));
            }
        }
        if let Some(c) = attention_widths.into_iter().find(|&c| !head_fits(c)) {
            return bad(format!(
                "attention_head_dim = {:?} does not divide {c} channels",
                self.attention_head_dim
            ));
        }
        Ok(())
    }
}

/// The UNet ε-network of DDPM in diffusers' `UNet2DModel` layout; maps `(x_t, t[, y])` to an output of the same
/// spatial size and knows nothing about noise schedules.
#[derive(Debug)]
pub struct UNet2DModel {
    config: UNetConfig,
    conv_in: nn::Conv2D,
    time_embedding: TimestepEmbedding,
    class_embedding: Option<nn::Embedding>,
    down_blocks: Vec<DownBlock2D>,
    mid_block: UNetMidBlock2D,
    up_blocks: Vec<UpBlock2D>,
    conv_norm_out: nn::GroupNorm,
    conv_out: nn::Conv2D,
}

impl UNet2DModel {
    /// Builds the network under `p` (use the VarStore root so that names equal diffusers' state-dict keys).
    pub fn new(p: nn::Path, cfg: &UNetConfig) -> Result<Self> {
        cfg.validate()?;
        let ch = &cfg.block_out_channels;
        let levels = ch.len();
        let temb = cfg.time_embed_dim();
        let conv3 = nn::ConvConfig {
            padding: 1,
            ..Default::default()
        };
        let conv_in = nn::conv2d(&p / "conv_in", cfg.in_channels, ch[0], 3, conv3);
        let time_embedding = TimestepEmbedding::new(
            &p / "time_embedding",
            &TimestepEmbeddingConfig {
                in_channels: ch[0],
                time_embed_dim: temb,
            },
        );
        let class_embedding = cfg
            .num_class_embeds
            .map(|n| nn::embedding(&p / "class_embedding", n, temb, Default::default()));
        let head = |c: i64| cfg.attention_head_dim.unwrap_or(c);
        let mut down_blocks = Vec::with_capacity(levels);
        let mut out = ch[0];
        for (i, kind) in cfg.down_block_types.iter().enumerate() {
            let input = out;
            out = ch[i];
            let dcfg = DownBlockConfig {
                in_channels: input,
                out_channels: out,
                temb_channels: temb,
                num_layers: cfg.layers_per_block,
                attention: *kind == DownBlockType::AttnDown,
                attention_head_dim: head(out),
                groups: cfg.norm_num_groups,
                eps: cfg.norm_eps,
                dropout: cfg.dropout,
                add_downsample: i + 1 < levels,
                downsample_padding: cfg.downsample_padding,
            };
            down_blocks.push(DownBlock2D::new(&p / "down_blocks" / i, &dcfg));
        }
        let last = ch[levels - 1];
        let mid_block = UNetMidBlock2D::new(
            &p / "mid_block",
            &MidBlockConfig {
                channels: last,
                temb_channels: temb,
                attention: cfg.add_attention,
                attention_head_dim: head(last),
                groups: cfg.norm_num_groups,
                attention_groups: cfg.attn_norm_num_groups.unwrap_or(cfg.norm_num_groups),
                eps: cfg.norm_eps,
                dropout: cfg.dropout,
                output_scale_factor: cfg.mid_block_scale_factor,
            },
        );
        let reversed: Vec<i64> = ch.iter().rev().copied().collect();
        let mut up_blocks = Vec::with_capacity(levels);
        let mut out = reversed[0];
        for (i, kind) in cfg.up_block_types.iter().enumerate() {
            let prev = out;
            out = reversed[i];
            let ucfg = UpBlockConfig {
                in_channels: reversed[(i + 1).min(levels - 1)],
                prev_output_channels: prev,
                out_channels: out,
                temb_channels: temb,
                num_layers: cfg.layers_per_block + 1,
                attention: *kind == UpBlockType::AttnUp,
                attention_head_dim: head(out),
                groups: cfg.norm_num_groups,
                eps: cfg.norm_eps,
                dropout: cfg.dropout,
                add_upsample: i + 1 < levels,
            };
            up_blocks.push(UpBlock2D::new(&p / "up_blocks" / i, &ucfg));
        }
        let conv_norm_out = nn::group_norm(
            &p / "conv_norm_out",
            cfg.norm_num_groups,
            ch[0],
            nn::GroupNormConfig {
                eps: cfg.norm_eps,
                ..Default::default()
            },
        );
        let conv_out = nn::conv2d(&p / "conv_out", ch[0], cfg.out_channels, 3, conv3);
        Ok(Self {
            config: cfg.clone(),
            conv_in,
            time_embedding,
            class_embedding,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out,
            conv_out,
        })
    }

    /// The configuration the network was built from.
    pub fn config(&self) -> &UNetConfig {
        &self.config
    }

    /// Runs the network; panics where [`UNet2DModel::f_forward_t`] returns an error.
    ///
    /// # Shapes
    /// `xs`: `[N, in_channels, H, W]` float, `t`: `[N]` (or a scalar) timestep indices, `class_labels`: `[N]` int64
    /// (class-conditional models only) → `[N, out_channels, H, W]`.
    pub fn forward_t(
        &self,
        xs: &Tensor,
        t: &Tensor,
        class_labels: Option<&Tensor>,
        train: bool,
    ) -> Tensor {
        self.f_forward_t(xs, t, class_labels, train)
            .unwrap_or_else(|e| panic!("UNet2DModel::forward_t: {e}"))
    }

    /// Runs the network, checking that the inputs fit it (channels, batch sizes, class labels iff conditional).
    ///
    /// # Shapes
    /// As [`UNet2DModel::forward_t`].
    pub fn f_forward_t(
        &self,
        xs: &Tensor,
        t: &Tensor,
        class_labels: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        let cfg = &self.config;
        let size = xs.size();
        if size.len() != 4 || size[1] != cfg.in_channels {
            return Err(Error::BadInput(format!(
                "x has shape {size:?}, expected [N, {}, H, W]",
                cfg.in_channels
            )));
        }
        let n = size[0];
        let t = match t.size().as_slice() {
            [] | [1] => t.reshape([1]).expand([n], false),
            [m] if *m == n => t.shallow_clone(),
            other => {
                return Err(Error::BadInput(format!(
                    "t has shape {other:?}, expected [{n}] (one timestep per image)"
                )))
            }
        };
        let t = t.to_device(xs.device());
        let xs = if cfg.center_input_sample {
            xs * 2.0 - 1.0
        } else {
            xs.shallow_clone()
        };
        let t_emb = timestep_embedding(
            &t,
            cfg.block_out_channels[0],
            cfg.flip_sin_to_cos,
            cfg.freq_shift as f64,
        )
        .to_kind(xs.kind());
        let temb = self.time_embedding.forward_t(&t_emb, train);
        let emb =
            match (&self.class_embedding, class_labels) {
                (Some(embedding), Some(labels)) => {
                    if labels.size() != [n] {
                        return Err(Error::BadInput(format!(
                            "class_labels has shape {:?}, expected [{n}]",
                            labels.size()
                        )));
                    }
                    let labels = labels.to_device(xs.device()).to_kind(Kind::Int64);
                    temb + embedding.forward(&labels)
                }
                (Some(_), None) => {
                    return Err(Error::BadInput(
                        "the model is class-conditional: class_labels are required".into(),
                    ))
                }
                (None, Some(_)) => return Err(Error::BadInput(
                    "class_labels given but the model has no class embedding (num_class_embeds)"
                        .into(),
                )),
                (None, None) => temb,
            };
        let mut xs = self.conv_in.forward(&xs);
        let mut skips = vec![xs.shallow_clone()];
        for block in &self.down_blocks {
            let (ys, block_skips) = block.forward_t(&xs, &emb, train);
            xs = ys;
            skips.extend(block_skips);
        }
        xs = self.mid_block.forward_t(&xs, &emb, train);
        for block in &self.up_blocks {
            let rest = skips.len() - block.num_layers();
            let block_skips = skips.split_off(rest);
            let upsample_size = skips.last().map(|s| {
                let s = s.size();
                [s[2], s[3]]
            });
            xs = block.forward_t(&xs, &block_skips, &emb, upsample_size, train);
        }
        let xs = crate::blocks::norm_silu(&self.conv_norm_out, &xs);
        let (c_out, c_in) = (self.conv_out.ws.size()[0], self.conv_out.ws.size()[1]);
        if crate::fast::enabled() && crate::fast::conv3x3_few_outputs_pays(c_in, c_out) {
            return Ok(crate::fast::conv3x3_few_outputs(
                &xs,
                &self.conv_out.ws,
                self.conv_out.bs.as_ref(),
            ));
        }
        Ok(self.conv_out.forward(&xs))
    }
}

/// Number of trainable parameters (elements) in a VarStore.
pub fn num_parameters(vs: &nn::VarStore) -> i64 {
    vs.trainable_variables()
        .iter()
        .map(Tensor::numel)
        .sum::<usize>() as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn tiny() -> UNetConfig {
        UNetConfig {
            sample_size: Some(SampleSize::Square(28)),
            in_channels: 1,
            out_channels: 2,
            block_out_channels: vec![8, 16, 16],
            down_block_types: vec![
                DownBlockType::Down,
                DownBlockType::AttnDown,
                DownBlockType::Down,
            ],
            up_block_types: vec![UpBlockType::Up, UpBlockType::AttnUp, UpBlockType::Up],
            layers_per_block: 1,
            norm_num_groups: 4,
            ..Default::default()
        }
    }

    #[test]
    fn default_is_the_cifar10_model() {
        let vs = nn::VarStore::new(Device::Cpu);
        UNet2DModel::new(vs.root(), &UNetConfig::default()).unwrap();
        assert_eq!(num_parameters(&vs), 35_746_307);
    }

    #[test]
    fn odd_sizes_and_shapes() {
        let vs = nn::VarStore::new(Device::Cpu);
        let model = UNet2DModel::new(vs.root(), &tiny()).unwrap();
        for (h, w) in [(28, 28), (13, 9)] {
            let xs = Tensor::randn([2, 1, h, w], (Kind::Float, Device::Cpu));
            let t = Tensor::from_slice(&[0i64, 999]);
            let ys = model.forward_t(&xs, &t, None, false);
            assert_eq!(ys.size(), [2, 2, h, w]);
        }
        // A scalar timestep broadcasts over the batch.
        let xs = Tensor::randn([3, 1, 28, 28], (Kind::Float, Device::Cpu));
        let ys = model.forward_t(&xs, &Tensor::from(5i64), None, true);
        assert_eq!(ys.size(), [3, 2, 28, 28]);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let vs = nn::VarStore::new(Device::Cpu);
        let model = UNet2DModel::new(vs.root(), &tiny()).unwrap();
        let xs = Tensor::randn([2, 3, 8, 8], (Kind::Float, Device::Cpu));
        let t = Tensor::from_slice(&[1i64, 2]);
        assert!(matches!(
            model.f_forward_t(&xs, &t, None, false),
            Err(Error::BadInput(_))
        ));
        let xs = Tensor::randn([2, 1, 8, 8], (Kind::Float, Device::Cpu));
        let t3 = Tensor::from_slice(&[1i64, 2, 3]);
        assert!(matches!(
            model.f_forward_t(&xs, &t3, None, false),
            Err(Error::BadInput(_))
        ));
        let labels = Tensor::from_slice(&[1i64, 2]);
        let err = model
            .f_forward_t(&xs, &t, Some(&labels), false)
            .unwrap_err();
        assert!(err.to_string().contains("num_class_embeds"), "{err}");
    }

    #[test]
    fn invalid_configs_are_refused() {
        let vs = nn::VarStore::new(Device::Cpu);
        let mut cfg = tiny();
        cfg.norm_num_groups = 3;
        assert!(matches!(
            UNet2DModel::new(vs.root(), &cfg),
            Err(Error::InvalidConfig(_))
        ));
        let mut cfg = tiny();
        cfg.attention_head_dim = Some(5);
        assert!(matches!(
            UNet2DModel::new(vs.root(), &cfg),
            Err(Error::InvalidConfig(_))
        ));
        let mut cfg = tiny();
        cfg.up_block_types.pop();
        assert!(matches!(
            UNet2DModel::new(vs.root(), &cfg),
            Err(Error::InvalidConfig(_))
        ));
    }

    #[test]
    fn config_serde_round_trip() {
        let cfg = tiny();
        let json = serde_json::to_string(&cfg).unwrap();
        assert_eq!(serde_json::from_str::<UNetConfig>(&json).unwrap(), cfg);
        assert!(json.contains("\"AttnDownBlock2D\""));
    }
}
