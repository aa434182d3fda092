//! UNet building blocks in diffusers' layout: residual block, self-attention, down/up-sampling and the level blocks.
//!
//! Variable names follow diffusers' state-dict keys (`resnets.0.norm1.weight`, `attentions.0.to_q.weight`,
//! `downsamplers.0.conv.weight`, …), so that `UNet2DModel` checkpoints load by name.
use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module, Tensor};

fn group_norm(p: nn::Path, groups: i64, channels: i64, eps: f64) -> nn::GroupNorm {
    let cfg = nn::GroupNormConfig {
        eps,
        ..Default::default()
    };
    nn::group_norm(p, groups, channels, cfg)
}

fn conv(p: nn::Path, c_in: i64, c_out: i64, k: i64, stride: i64, padding: i64) -> nn::Conv2D {
    let cfg = nn::ConvConfig {
        stride,
        padding,
        ..Default::default()
    };
    nn::conv2d(p, c_in, c_out, k, cfg)
}

/// `silu(norm(xs))`; the SiLU runs in place when nothing records gradients (sampling), where the normalised
/// activation is not needed afterwards.
pub(crate) fn norm_silu(norm: &nn::GroupNorm, xs: &Tensor) -> Tensor {
    let mut hs = norm.forward(xs);
    if hs.requires_grad() {
        hs.silu()
    } else {
        let _ = hs.silu_();
        hs
    }
}

/// Hyper-parameters of [`ResnetBlock2D`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResnetBlockConfig {
    /// Input channels.
    pub in_channels: i64,
    /// Output channels; a 1×1 `conv_shortcut` maps the input when they differ.
    pub out_channels: i64,
    /// Width of the timestep embedding.
    pub temb_channels: i64,
    /// GroupNorm groups.
    pub groups: i64,
    /// GroupNorm epsilon.
    pub eps: f64,
    /// Dropout before the second convolution (training only).
    pub dropout: f64,
    /// The sum of shortcut and residual is divided by this.
    pub output_scale_factor: f64,
}

impl Default for ResnetBlockConfig {
    /// A block of the DDPM CIFAR-10 model at 256 channels.
    fn default() -> Self {
        Self {
            in_channels: 256,
            out_channels: 256,
            temb_channels: 512,
            groups: 32,
            eps: 1e-6,
            dropout: 0.1,
            output_scale_factor: 1.0,
        }
    }
}

/// Residual block with timestep conditioning (diffusers `ResnetBlock2D`, `time_embedding_norm = "default"`):
/// `h = conv1(silu(norm1(x))) + time_emb_proj(silu(temb))`, `h = conv2(dropout(silu(norm2(h))))`,
/// output `(shortcut(x) + h) / output_scale_factor`.
#[derive(Debug)]
pub struct ResnetBlock2D {
    norm1: nn::GroupNorm,
    conv1: nn::Conv2D,
    time_emb_proj: nn::Linear,
    norm2: nn::GroupNorm,
    conv2: nn::Conv2D,
    conv_shortcut: Option<nn::Conv2D>,
    dropout: f64,
    output_scale_factor: f64,
}

impl ResnetBlock2D {
    /// Creates `norm1`, `conv1`, `time_emb_proj`, `norm2`, `conv2` and, when the widths differ, `conv_shortcut`.
    pub fn new(p: nn::Path, cfg: &ResnetBlockConfig) -> Self {
        let (c_in, c_out) = (cfg.in_channels, cfg.out_channels);
        Self {
            norm1: group_norm(&p / "norm1", cfg.groups, c_in, cfg.eps),
            conv1: conv(&p / "conv1", c_in, c_out, 3, 1, 1),
            time_emb_proj: nn::linear(
                &p / "time_emb_proj",
                cfg.temb_channels,
                c_out,
                Default::default(),
            ),
            norm2: group_norm(&p / "norm2", cfg.groups, c_out, cfg.eps),
            conv2: conv(&p / "conv2", c_out, c_out, 3, 1, 1),
            conv_shortcut: (c_in != c_out)
                .then(|| conv(&p / "conv_shortcut", c_in, c_out, 1, 1, 0)),
            dropout: cfg.dropout,
            output_scale_factor: cfg.output_scale_factor,
        }
    }

    /// # Shapes
    /// `xs`: `[N, in_channels, H, W]`, `temb`: `[N, temb_channels]` → `[N, out_channels, H, W]`.
    pub fn forward_t(&self, xs: &Tensor, temb: &Tensor, train: bool) -> Tensor {
        let mut hs = self.conv1.forward(&norm_silu(&self.norm1, xs));
        let temb = self
            .time_emb_proj
            .forward(&temb.silu())
            .unsqueeze(-1)
            .unsqueeze(-1);
        // In place: a convolution's backward needs its input and weight, never its output, so adding into the
        // fresh output is safe under autograd and saves an activation-sized buffer per add.
        hs += temb;
        let hs = norm_silu(&self.norm2, &hs).dropout(self.dropout, train);
        let mut ys = self.conv2.forward(&hs);
        match &self.conv_shortcut {
            Some(c) => ys += c.forward(xs),
            None => ys += xs,
        }
        if self.output_scale_factor == 1.0 {
            ys
        } else {
            ys / self.output_scale_factor
        }
    }
}

/// Hyper-parameters of [`Attention`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttentionConfig {
    /// Channels of the feature map (query dimension).
    pub channels: i64,
    /// Width of one head; `channels / head_dim` heads.
    pub head_dim: i64,
    /// GroupNorm groups.
    pub groups: i64,
    /// GroupNorm epsilon.
    pub eps: f64,
    /// The output (with the residual) is divided by this.
    pub rescale_output_factor: f64,
}

impl Default for AttentionConfig {
    /// The DDPM CIFAR-10 attention at 256 channels: one head.
    fn default() -> Self {
        Self {
            channels: 256,
            head_dim: 256,
            groups: 32,
            eps: 1e-6,
            rescale_output_factor: 1.0,
        }
    }
}

/// Multi-head self-attention over the pixels with a residual connection (diffusers `Attention` as built by the
/// UNet2D blocks: `group_norm`, `to_q`, `to_k`, `to_v`, `to_out.0`).
#[derive(Debug)]
pub struct Attention {
    group_norm: nn::GroupNorm,
    to_q: nn::Linear,
    to_k: nn::Linear,
    to_v: nn::Linear,
    to_out: nn::Linear,
    heads: i64,
    rescale_output_factor: f64,
}

impl Attention {
    /// Creates the layers under `p`.
    pub fn new(p: nn::Path, cfg: &AttentionConfig) -> Self {
        let c = cfg.channels;
        let lin = |name: &str| nn::linear(&p / name, c, c, Default::default());
        Self {
            group_norm: group_norm(&p / "group_norm", cfg.groups, c, cfg.eps),
            to_q: lin("to_q"),
            to_k: lin("to_k"),
            to_v: lin("to_v"),
            to_out: nn::linear(&p / "to_out" / 0, c, c, Default::default()),
            heads: (c / cfg.head_dim).max(1),
            rescale_output_factor: cfg.rescale_output_factor,
        }
    }

    /// Softmax(q kᵀ/√d) v per head over the H·W positions, then `to_out`, plus the input.
    ///
    /// # Shapes
    /// `xs`: `[N, C, H, W]` → `[N, C, H, W]`.
    pub fn forward_t(&self, xs: &Tensor, _train: bool) -> Tensor {
        let (n, c, h, w) = xs.size4().expect("attention input must be [N, C, H, W]");
        let (heads, len) = (self.heads, h * w);
        let hs = self
            .group_norm
            .forward(xs)
            .view([n, c, len])
            .transpose(1, 2);
        let split = |t: Tensor| t.view([n, len, heads, c / heads]).transpose(1, 2);
        let q = split(self.to_q.forward(&hs));
        let k = split(self.to_k.forward(&hs));
        let v = split(self.to_v.forward(&hs));
        let hs = Tensor::scaled_dot_product_attention(
            &q,
            &k,
            &v,
            None::<Tensor>,
            0.0,
            false,
            None,
            false,
        );
        let hs = hs.transpose(1, 2).reshape([n, len, c]);
        let hs = self
            .to_out
            .forward(&hs)
            .transpose(1, 2)
            .reshape([n, c, h, w]);
        // Input first: the sum then takes the input's NCHW layout rather than the channels-last strides of
        // the transposed projection, so the next GroupNorm runs its fast contiguous kernel.
        let ys = xs + hs;
        if self.rescale_output_factor == 1.0 {
            ys
        } else {
            ys / self.rescale_output_factor
        }
    }
}

/// A 3×3 stride-2 convolution (diffusers `Downsample2D` with `use_conv`). With `padding = 0` the input is first
/// padded by one zero row and column at the bottom and right, as in the original DDPM code.
#[derive(Debug)]
pub struct Downsample2D {
    conv: nn::Conv2D,
    pad_bottom_right: bool,
}

impl Downsample2D {
    /// Creates `conv` under `p`.
    pub fn new(p: nn::Path, channels: i64, padding: i64) -> Self {
        Self {
            conv: conv(&p / "conv", channels, channels, 3, 2, padding),
            pad_bottom_right: padding == 0,
        }
    }

    /// # Shapes
    /// `xs`: `[N, C, H, W]` → `[N, C, ⌊H/2⌋, ⌊W/2⌋]` with padding 0, `[N, C, ⌈H/2⌉, ⌈W/2⌉]` with padding 1.
    pub fn forward_t(&self, xs: &Tensor, _train: bool) -> Tensor {
        if self.pad_bottom_right {
            self.conv.forward(&xs.constant_pad_nd([0, 1, 0, 1]))
        } else {
            self.conv.forward(xs)
        }
    }
}

/// Nearest-neighbour ×2 upsampling (or to a given size) followed by a 3×3 convolution (diffusers `Upsample2D`).
/// An exact ×2 runs as [`crate::fast::upsample2x_conv3x3`] (2.25× fewer multiply-adds).
#[derive(Debug)]
pub struct Upsample2D {
    conv: nn::Conv2D,
}

impl Upsample2D {
    /// Creates `conv` under `p`.
    pub fn new(p: nn::Path, channels: i64) -> Self {
        Self {
            conv: conv(&p / "conv", channels, channels, 3, 1, 1),
        }
    }

    /// # Shapes
    /// `xs`: `[N, C, H, W]` → `[N, C, 2H, 2W]`, or `[N, C, size[0], size[1]]` when `size` is given.
    pub fn forward_t(&self, xs: &Tensor, size: Option<[i64; 2]>, _train: bool) -> Tensor {
        let (_, _, h, w) = xs.size4().expect("upsample input must be [N, C, H, W]");
        let size = size.unwrap_or([2 * h, 2 * w]);
        if size == [2 * h, 2 * w] && crate::fast::enabled() {
            return crate::fast::upsample2x_conv3x3(xs, &self.conv.ws, self.conv.bs.as_ref());
        }
        self.conv
            .forward(&xs.upsample_nearest2d(size, None::<f64>, None::<f64>))
    }
}

/// `attentions.0 … attentions.{n-1}` under `p` (none when `on` is false): the attention layers of a down or
/// up block, one after each residual block.
fn attention_layers(
    p: &nn::Path,
    on: bool,
    n: i64,
    channels: i64,
    head_dim: i64,
    groups: i64,
    eps: f64,
) -> Vec<Attention> {
    if !on {
        return Vec::new();
    }
    let cfg = AttentionConfig {
        channels,
        head_dim,
        groups,
        eps,
        rescale_output_factor: 1.0,
    };
    (0..n)
        .map(|i| Attention::new(p / "attentions" / i, &cfg))
        .collect()
}

/// Hyper-parameters of [`DownBlock2D`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DownBlockConfig {
    /// Input channels.
    pub in_channels: i64,
    /// Output channels of every layer.
    pub out_channels: i64,
    /// Width of the timestep embedding.
    pub temb_channels: i64,
    /// Residual blocks (each followed by attention when `attention`).
    pub num_layers: i64,
    /// `AttnDownBlock2D` when true, `DownBlock2D` otherwise.
    pub attention: bool,
    /// Width of one attention head.
    pub attention_head_dim: i64,
    /// GroupNorm groups.
    pub groups: i64,
    /// GroupNorm epsilon.
    pub eps: f64,
    /// Dropout in the residual blocks.
    pub dropout: f64,
    /// Whether a [`Downsample2D`] ends the block.
    pub add_downsample: bool,
    /// Padding of the downsampling convolution (0 = DDPM's asymmetric padding).
    pub downsample_padding: i64,
}

impl Default for DownBlockConfig {
    /// The second level of the DDPM CIFAR-10 model (128 → 256, attention, 16×16 → 8×8).
    fn default() -> Self {
        Self {
            in_channels: 128,
            out_channels: 256,
            temb_channels: 512,
            num_layers: 2,
            attention: true,
            attention_head_dim: 256,
            groups: 32,
            eps: 1e-6,
            dropout: 0.1,
            add_downsample: true,
            downsample_padding: 0,
        }
    }
}

/// One encoder level (diffusers `DownBlock2D` / `AttnDownBlock2D`): residual blocks, optional attention after
/// each, optional downsampling.
#[derive(Debug)]
pub struct DownBlock2D {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Attention>,
    downsampler: Option<Downsample2D>,
}

impl DownBlock2D {
    /// Creates `resnets.i`, `attentions.i` and `downsamplers.0` under `p`.
    pub fn new(p: nn::Path, cfg: &DownBlockConfig) -> Self {
        let resnets = (0..cfg.num_layers)
            .map(|i| {
                let rcfg = ResnetBlockConfig {
                    in_channels: if i == 0 {
                        cfg.in_channels
                    } else {
                        cfg.out_channels
                    },
                    out_channels: cfg.out_channels,
                    temb_channels: cfg.temb_channels,
                    groups: cfg.groups,
                    eps: cfg.eps,
                    dropout: cfg.dropout,
                    output_scale_factor: 1.0,
                };
                ResnetBlock2D::new(&p / "resnets" / i, &rcfg)
            })
            .collect();
        let attentions = attention_layers(
            &p,
            cfg.attention,
            cfg.num_layers,
            cfg.out_channels,
            cfg.attention_head_dim,
            cfg.groups,
            cfg.eps,
        );
        let downsampler = cfg.add_downsample.then(|| {
            Downsample2D::new(
                &p / "downsamplers" / 0,
                cfg.out_channels,
                cfg.downsample_padding,
            )
        });
        Self {
            resnets,
            attentions,
            downsampler,
        }
    }

    /// Returns the block output and the skip activations (one per layer, plus the downsampled output).
    ///
    /// # Shapes
    /// `xs`: `[N, in_channels, H, W]`, `temb`: `[N, temb_channels]` → `[N, out_channels, H', W']` with
    /// `H'` as [`Downsample2D`] gives when downsampling, else `H`.
    pub fn forward_t(&self, xs: &Tensor, temb: &Tensor, train: bool) -> (Tensor, Vec<Tensor>) {
        let mut xs = xs.shallow_clone();
        let mut skips = Vec::with_capacity(self.resnets.len() + 1);
        for (i, resnet) in self.resnets.iter().enumerate() {
            xs = resnet.forward_t(&xs, temb, train);
            if let Some(attn) = self.attentions.get(i) {
                xs = attn.forward_t(&xs, train);
            }
            skips.push(xs.shallow_clone());
        }
        if let Some(down) = &self.downsampler {
            xs = down.forward_t(&xs, train);
            skips.push(xs.shallow_clone());
        }
        (xs, skips)
    }
}

/// Hyper-parameters of [`UpBlock2D`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpBlockConfig {
    /// Channels of the skip activation consumed by the last layer (the encoder level below's width).
    pub in_channels: i64,
    /// Channels of the block input (the previous decoder level's width).
    pub prev_output_channels: i64,
    /// Output channels of every layer.
    pub out_channels: i64,
    /// Width of the timestep embedding.
    pub temb_channels: i64,
    /// Residual blocks (`layers_per_block + 1` in the UNet).
    pub num_layers: i64,
    /// `AttnUpBlock2D` when true, `UpBlock2D` otherwise.
    pub attention: bool,
    /// Width of one attention head.
    pub attention_head_dim: i64,
    /// GroupNorm groups.
    pub groups: i64,
    /// GroupNorm epsilon.
    pub eps: f64,
    /// Dropout in the residual blocks.
    pub dropout: f64,
    /// Whether an [`Upsample2D`] ends the block.
    pub add_upsample: bool,
}

impl Default for UpBlockConfig {
    /// The attention level of the DDPM CIFAR-10 decoder (8×8 → 16×16 at 256 channels).
    fn default() -> Self {
        Self {
            in_channels: 128,
            prev_output_channels: 256,
            out_channels: 256,
            temb_channels: 512,
            num_layers: 3,
            attention: true,
            attention_head_dim: 256,
            groups: 32,
            eps: 1e-6,
            dropout: 0.1,
            add_upsample: true,
        }
    }
}

/// One decoder level (diffusers `UpBlock2D` / `AttnUpBlock2D`): each layer concatenates a skip activation
/// along channels, then a residual block and optional attention; optional upsampling at the end.
#[derive(Debug)]
pub struct UpBlock2D {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Attention>,
    upsampler: Option<Upsample2D>,
}

impl UpBlock2D {
    /// Creates `resnets.i`, `attentions.i` and `upsamplers.0` under `p`.
    pub fn new(p: nn::Path, cfg: &UpBlockConfig) -> Self {
        let n = cfg.num_layers;
        let resnets = (0..n)
            .map(|i| {
                let skip = if i == n - 1 {
                    cfg.in_channels
                } else {
                    cfg.out_channels
                };
                let input = if i == 0 {
                    cfg.prev_output_channels
                } else {
                    cfg.out_channels
                };
                let rcfg = ResnetBlockConfig {
                    in_channels: input + skip,
                    out_channels: cfg.out_channels,
                    temb_channels: cfg.temb_channels,
                    groups: cfg.groups,
                    eps: cfg.eps,
                    dropout: cfg.dropout,
                    output_scale_factor: 1.0,
                };
                ResnetBlock2D::new(&p / "resnets" / i, &rcfg)
            })
            .collect();
        let attentions = attention_layers(
            &p,
            cfg.attention,
            n,
            cfg.out_channels,
            cfg.attention_head_dim,
            cfg.groups,
            cfg.eps,
        );
        let upsampler = cfg
            .add_upsample
            .then(|| Upsample2D::new(&p / "upsamplers" / 0, cfg.out_channels));
        Self {
            resnets,
            attentions,
            upsampler,
        }
    }

    /// Number of skip activations the block consumes.
    pub fn num_layers(&self) -> usize {
        self.resnets.len()
    }

    /// Runs the block; `skips` are consumed from the last one backwards; `upsample_size` overrides the ×2 size
    /// (so that odd encoder sizes come back exactly).
    ///
    /// # Shapes
    /// `xs`: `[N, prev_output_channels, H, W]`, skips `[N, ·, H, W]` → `[N, out_channels, 2H, 2W]` (or
    /// `upsample_size`) when upsampling, else `[N, out_channels, H, W]`.
    pub fn forward_t(
        &self,
        xs: &Tensor,
        skips: &[Tensor],
        temb: &Tensor,
        upsample_size: Option<[i64; 2]>,
        train: bool,
    ) -> Tensor {
        assert_eq!(
            skips.len(),
            self.resnets.len(),
            "up block needs one skip per layer"
        );
        let mut xs = xs.shallow_clone();
        for (i, (resnet, skip)) in self.resnets.iter().zip(skips.iter().rev()).enumerate() {
            xs = resnet.forward_t(&Tensor::cat(&[&xs, skip], 1), temb, train);
            if let Some(attn) = self.attentions.get(i) {
                xs = attn.forward_t(&xs, train);
            }
        }
        match &self.upsampler {
            Some(up) => up.forward_t(&xs, upsample_size, train),
            None => xs,
        }
    }
}

/// Hyper-parameters of [`UNetMidBlock2D`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MidBlockConfig {
    /// Channels (the last level's width).
    pub channels: i64,
    /// Width of the timestep embedding.
    pub temb_channels: i64,
    /// Whether the attention layer sits between the two residual blocks.
    pub attention: bool,
    /// Width of one attention head.
    pub attention_head_dim: i64,
    /// GroupNorm groups of the residual blocks.
    pub groups: i64,
    /// GroupNorm groups of the attention.
    pub attention_groups: i64,
    /// GroupNorm epsilon.
    pub eps: f64,
    /// Dropout in the residual blocks.
    pub dropout: f64,
    /// Every residual block and the attention divide their output by this.
    pub output_scale_factor: f64,
}

impl Default for MidBlockConfig {
    /// The middle of the DDPM CIFAR-10 model (256 channels at 4×4, one head).
    fn default() -> Self {
        Self {
            channels: 256,
            temb_channels: 512,
            attention: true,
            attention_head_dim: 256,
            groups: 32,
            attention_groups: 32,
            eps: 1e-6,
            dropout: 0.1,
            output_scale_factor: 1.0,
        }
    }
}

/// The bottleneck (diffusers `UNetMidBlock2D` with one layer): residual block, attention, residual block.
#[derive(Debug)]
pub struct UNetMidBlock2D {
    resnets: [ResnetBlock2D; 2],
    attention: Option<Attention>,
}

impl UNetMidBlock2D {
    /// Creates `resnets.0`, `attentions.0` and `resnets.1` under `p`.
    pub fn new(p: nn::Path, cfg: &MidBlockConfig) -> Self {
        let rcfg = ResnetBlockConfig {
            in_channels: cfg.channels,
            out_channels: cfg.channels,
            temb_channels: cfg.temb_channels,
            groups: cfg.groups,
            eps: cfg.eps,
            dropout: cfg.dropout,
            output_scale_factor: cfg.output_scale_factor,
        };
        let resnet = |i: i64| ResnetBlock2D::new(&p / "resnets" / i, &rcfg);
        let first = resnet(0);
        let attention = cfg.attention.then(|| {
            let acfg = AttentionConfig {
                channels: cfg.channels,
                head_dim: cfg.attention_head_dim,
                groups: cfg.attention_groups,
                eps: cfg.eps,
                rescale_output_factor: cfg.output_scale_factor,
            };
            Attention::new(&p / "attentions" / 0, &acfg)
        });
        Self {
            resnets: [first, resnet(1)],
            attention,
        }
    }

    /// # Shapes
    /// `xs`: `[N, C, H, W]`, `temb`: `[N, temb_channels]` → `[N, C, H, W]`.
    pub fn forward_t(&self, xs: &Tensor, temb: &Tensor, train: bool) -> Tensor {
        let mut xs = self.resnets[0].forward_t(xs, temb, train);
        if let Some(attn) = &self.attention {
            xs = attn.forward_t(&xs, train);
        }
        self.resnets[1].forward_t(&xs, temb, train)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn randn(shape: &[i64]) -> Tensor {
        Tensor::randn(shape, (Kind::Float, Device::Cpu))
    }

    #[test]
    fn resnet_shapes_and_shortcut() {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = ResnetBlockConfig {
            in_channels: 8,
            out_channels: 16,
            temb_channels: 12,
            groups: 4,
            ..Default::default()
        };
        let block = ResnetBlock2D::new(vs.root(), &cfg);
        let ys = block.forward_t(&randn(&[2, 8, 5, 7]), &randn(&[2, 12]), false);
        assert_eq!(ys.size(), [2, 16, 5, 7]);
        assert!(vs.variables().contains_key("conv_shortcut.weight"));
    }

    #[test]
    fn attention_shapes_and_names() {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = AttentionConfig {
            channels: 16,
            head_dim: 8,
            groups: 4,
            ..Default::default()
        };
        let attn = Attention::new(vs.root(), &cfg);
        let xs = randn(&[2, 16, 3, 5]);
        let ys = attn.forward_t(&xs, false);
        assert_eq!(ys.size(), [2, 16, 3, 5]);
        assert!(
            ys.is_contiguous(),
            "attention output must keep the NCHW layout"
        );
        for name in [
            "group_norm.weight",
            "to_q.bias",
            "to_k.weight",
            "to_v.weight",
            "to_out.0.weight",
        ] {
            assert!(vs.variables().contains_key(name), "{name}");
        }
    }

    #[test]
    fn multi_head_attention_equals_explicit_softmax() {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = AttentionConfig {
            channels: 8,
            head_dim: 4,
            groups: 2,
            eps: 1e-5,
            rescale_output_factor: 1.0,
        };
        let attn = Attention::new(vs.root(), &cfg);
        let xs = randn(&[1, 8, 2, 3]);
        let ys = attn.forward_t(&xs, false);
        // Reference: per head, softmax(q kᵀ / 2) v with explicit matrices.
        let v = vs.variables();
        let hs = xs.group_norm(
            2,
            Some(&v["group_norm.weight"]),
            Some(&v["group_norm.bias"]),
            1e-5,
            false,
        );
        let hs = hs.view([8, 6]).transpose(0, 1); // [L, C]
        let lin = |n: &str| {
            hs.matmul(&v[&format!("{n}.weight")].transpose(0, 1)) + &v[&format!("{n}.bias")]
        };
        let (q, k, val) = (lin("to_q"), lin("to_k"), lin("to_v"));
        let heads: Vec<Tensor> = (0..2)
            .map(|h| {
                let s = |t: &Tensor| t.narrow(1, 4 * h, 4);
                (s(&q).matmul(&s(&k).transpose(0, 1)) / 2.0)
                    .softmax(-1, Kind::Float)
                    .matmul(&s(&val))
            })
            .collect();
        let out = Tensor::cat(&heads, 1).matmul(&v["to_out.0.weight"].transpose(0, 1))
            + &v["to_out.0.bias"];
        let expected = out.transpose(0, 1).reshape([1, 8, 2, 3]) + &xs;
        let err = (ys - expected).abs().max().double_value(&[]);
        assert!(err < 1e-5, "max abs error {err}");
    }

    #[test]
    fn downsample_sizes() {
        let vs = nn::VarStore::new(Device::Cpu);
        let d0 = Downsample2D::new(&vs.root() / "a", 4, 0);
        let d1 = Downsample2D::new(&vs.root() / "b", 4, 1);
        for (h, floor, ceil) in [(32, 16, 16), (28, 14, 14), (7, 3, 4)] {
            let xs = randn(&[1, 4, h, h]);
            assert_eq!(d0.forward_t(&xs, false).size(), [1, 4, floor, floor]);
            assert_eq!(d1.forward_t(&xs, false).size(), [1, 4, ceil, ceil]);
        }
    }

    #[test]
    fn up_and_down_block_shapes() {
        let vs = nn::VarStore::new(Device::Cpu);
        let down = DownBlock2D::new(
            &vs.root() / "down",
            &DownBlockConfig {
                in_channels: 8,
                out_channels: 16,
                temb_channels: 12,
                attention_head_dim: 16,
                groups: 4,
                ..Default::default()
            },
        );
        let temb = randn(&[2, 12]);
        let (ys, skips) = down.forward_t(&randn(&[2, 8, 7, 7]), &temb, false);
        assert_eq!(ys.size(), [2, 16, 3, 3]);
        assert_eq!(skips.len(), 3);
        let up = UpBlock2D::new(
            &vs.root() / "up",
            &UpBlockConfig {
                in_channels: 16,
                prev_output_channels: 16,
                out_channels: 16,
                temb_channels: 12,
                attention_head_dim: 8,
                groups: 4,
                ..Default::default()
            },
        );
        let skips: Vec<Tensor> = (0..3).map(|_| randn(&[2, 16, 3, 3])).collect();
        let ys = up.forward_t(&randn(&[2, 16, 3, 3]), &skips, &temb, Some([7, 7]), false);
        assert_eq!(ys.size(), [2, 16, 7, 7]);
        let mid = UNetMidBlock2D::new(
            &vs.root() / "mid",
            &MidBlockConfig {
                channels: 16,
                temb_channels: 12,
                attention_head_dim: 16,
                groups: 4,
                attention_groups: 4,
                ..Default::default()
            },
        );
        assert_eq!(
            mid.forward_t(&randn(&[2, 16, 3, 3]), &temb, true).size(),
            [2, 16, 3, 3]
        );
    }
}
