//! Fitting a training config to a dataset file: the shape of the data as a model sees it
//! ([`DataShape`]), checking or completing a config's UNet for it ([`TrainConfig::fit_to_data`]),
//! and the `auto` preset that sizes a UNet for the data's resolution ([`TrainConfig::auto`]).
use std::path::Path;

use ddpm_nets::unet::SampleSize;
use ddpm_nets::UNetConfig;

use crate::config::{ModelKind, TrainConfig};
use crate::data::DataError;
use crate::error::{Result, TrainError};
use crate::h5images;

/// What a model needs to know about a dataset split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataShape {
    /// Image channels (1 or 3).
    pub channels: i64,
    /// Image height in pixels.
    pub height: i64,
    /// Image width in pixels.
    pub width: i64,
    /// Number of classes (largest label + 1); 0 when the split has no labels.
    pub num_classes: i64,
}

impl DataShape {
    /// Reads the shape of `/<split>` of the dataset file `path` (the images are not loaded; the
    /// labels are, to count the classes). Errors name the file: missing file or split (listing
    /// what the file holds), not our layout.
    pub fn read(path: &Path, split: &str) -> Result<Self> {
        let file = h5images::open(path)?;
        let Some(shape) = h5images::split_shape(&file, path, split)? else {
            let mut have = file.member_names().unwrap_or_default();
            have.sort();
            return Err(DataError::Layout {
                path: path.to_path_buf(),
                message: format!(
                    "no split `{split}` (no /{split}/images; the file holds: {})",
                    have.join(", ")
                ),
            }
            .into());
        };
        let num_classes = if shape.has_labels {
            let labels = h5images::read_labels(path, &format!("{split}/labels"), None)?;
            labels.iter().max().map_or(0, |&m| i64::from(m) + 1)
        } else {
            0
        };
        let [_, h, w, c] = shape.nhwc;
        Ok(Self {
            channels: c as i64,
            height: h as i64,
            width: w as i64,
            num_classes,
        })
    }

    /// The shape of a split in memory.
    pub fn of(data: &crate::loader::ImageData) -> Self {
        let (channels, height, width) = data.chw();
        Self {
            channels,
            height,
            width,
            num_classes: data.num_classes,
        }
    }

    fn size_text(&self) -> String {
        format!("{}x{}", self.height, self.width)
    }
}

/// The `(height, width)` a UNet's `sample_size` describes.
fn sample_hw(size: SampleSize) -> (i64, i64) {
    match size {
        SampleSize::Square(s) => (s, s),
        SampleSize::Rect([h, w]) => (h, w),
    }
}

impl TrainConfig {
    /// The image size the network sees for data of `shape`: the file's, or at least 32×32 with
    /// `data.pad_to_32`.
    pub fn input_hw(&self, shape: &DataShape) -> (i64, i64) {
        if self.data.pad_to_32 {
            (shape.height.max(32), shape.width.max(32))
        } else {
            (shape.height, shape.width)
        }
    }

    /// Completes and checks the config for data of `shape` (from `data.path`): a DDPM UNet without
    /// `sample_size` gets the data's; a class-conditional run (`data.conditional`) without
    /// `model.unet.num_class_embeds` gets the data's classes + 1 (the null label of classifier-free
    /// guidance). Then [`TrainConfig::check_fits_data`].
    pub fn fit_to_data(&mut self, shape: &DataShape) -> Result<()> {
        let hw = self.input_hw(shape);
        let conditional = self.data.conditional;
        if let Some(unet) = self.model.unet_mut() {
            if unet.sample_size.is_none() {
                unet.sample_size = Some(if hw.0 == hw.1 {
                    SampleSize::Square(hw.0)
                } else {
                    SampleSize::Rect([hw.0, hw.1])
                });
            }
            if conditional && unet.num_class_embeds.is_none() && shape.num_classes > 0 {
                unet.num_class_embeds = Some(shape.num_classes + 1);
            }
        }
        self.check_fits_data(shape)
    }

    /// Checks that a DDPM config fits data of `shape`: the UNet's channels and `sample_size` equal
    /// the data's, the size divides by 2 at each downsampling, and a class-conditional run has
    /// labels and enough class embeddings. Errors name the key, the config's value and the data's,
    /// and say how to fix it (`--preset auto` sizes a UNet for the data).
    pub fn check_fits_data(&self, shape: &DataShape) -> Result<()> {
        let Some(unet) = self.model.unet() else {
            return Ok(());
        };
        let file = if self.data.path.as_os_str().is_empty() {
            "the data".to_string()
        } else {
            self.data.path.display().to_string()
        };
        let (h, w) = self.input_hw(shape);
        if unet.in_channels != shape.channels {
            return Err(TrainError::config(
                "model.unet.in_channels",
                format!(
                    "is {} but {file} has {}-channel images (use --preset auto, or a preset made \
                     for {}-channel data)",
                    unet.in_channels, shape.channels, shape.channels
                ),
            ));
        }
        if let Some(size) = unet.sample_size.filter(|&s| sample_hw(s) != (h, w)) {
            let (sh, sw) = sample_hw(size);
            return Err(TrainError::config(
                "model.unet.sample_size",
                format!(
                    "is {sh}x{sw} but {file} has {} images{} (use --preset auto, or \
                     --set model.unet.sample_size={h})",
                    shape.size_text(),
                    if self.data.pad_to_32 {
                        ", padded to 32"
                    } else {
                        ""
                    }
                ),
            ));
        }
        let factor = 1i64 << (unet.block_out_channels.len().saturating_sub(1));
        if h % factor != 0 || w % factor != 0 {
            return Err(TrainError::config(
                "model.unet.block_out_channels",
                format!(
                    "has {} levels, so the image size must divide by {factor}; {file} has {h}x{w}",
                    unet.block_out_channels.len()
                ),
            ));
        }
        self.check_classes(unet, shape)
    }

    fn check_classes(&self, unet: &UNetConfig, shape: &DataShape) -> Result<()> {
        if !self.data.conditional {
            return Ok(());
        }
        if shape.num_classes == 0 {
            return Err(TrainError::config(
                "data.conditional",
                format!(
                    "is true but {} has no labels in /{} (import with --labels folders)",
                    self.data.path.display(),
                    self.data.split
                ),
            ));
        }
        match unet.num_class_embeds {
            Some(k) if k > shape.num_classes => Ok(()),
            k => Err(TrainError::config(
                "model.unet.num_class_embeds",
                format!(
                    "is {} but the data has {} classes (+1 null label needed)",
                    k.map_or("unset".to_string(), |k| k.to_string()),
                    shape.num_classes
                ),
            )),
        }
    }

    /// The `auto` preset: a DDPM sized for data of `shape`, the way improved-diffusion's
    /// `create_model` sizes a UNet by resolution (channel multipliers `(1, 1, 2, 2, 4, 4)` at 256 and
    /// above, `(1, 1, 2, 3, 4)` at 128, `(1, 2, 3, 4)` at 64, `(1, 2, 2, 2)` at 32 — the DDPM
    /// CIFAR-10 model — and `(1, 2, 2)` below 32), 128 base channels (64 below 32), two residual
    /// blocks per level, self-attention at 16×16 (and at the lowest level below 32); the rest is
    /// the `cifar10` recipe (Ho et al. 2020) without random flips; a size that does not halve that
    /// often gets fewer levels (30×30: two, 7×7: one). Channels, `sample_size` and
    /// `data.pad_to_32 = false` follow the data. Errors: images below 4×4 or not square.
    pub fn auto(shape: &DataShape) -> Result<Self> {
        let (h, w) = (shape.height, shape.width);
        if h != w {
            return Err(TrainError::config(
                "preset",
                format!("auto needs square images; the data is {h}x{w} (import with --size N)"),
            ));
        }
        if h < 4 {
            return Err(TrainError::config(
                "preset",
                format!("auto needs images of at least 4x4; the data is {h}x{w}"),
            ));
        }
        let mult: &[i64] = match h {
            s if s >= 256 => &[1, 1, 2, 2, 4, 4],
            s if s >= 128 => &[1, 1, 2, 3, 4],
            s if s >= 64 => &[1, 2, 3, 4],
            s if s >= 32 => &[1, 2, 2, 2],
            _ => &[1, 2, 2],
        };
        // Each level halves the size: keep as many levels as the size divides into.
        let divisible = 1 + h.trailing_zeros() as usize;
        let mult = &mult[..mult.len().min(divisible)];
        let base = if h >= 32 { 128 } else { 64 };
        let levels = mult.len();
        let attn_level = (0..levels).find(|&i| h >> i == 16).unwrap_or(levels - 1);
        let mut cfg = Self::cifar10();
        cfg.data.random_flip = false;
        cfg.data.pad_to_32 = false;
        cfg.model = crate::config::ModelConfig::default_for(ModelKind::Ddpm);
        let unet = cfg.model.unet_mut().expect("a DDPM model");
        unet.block_out_channels = mult.iter().map(|m| m * base).collect();
        (unet.down_block_types, unet.up_block_types) =
            crate::config::block_types(levels, attn_level);
        unet.in_channels = shape.channels;
        unet.out_channels = shape.channels;
        unet.sample_size = Some(SampleSize::Square(h));
        cfg.check_fits_data(shape)?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ddpm_nets::unet::{DownBlockType, UpBlockType};

    fn shape(c: i64, s: i64, k: i64) -> DataShape {
        DataShape {
            channels: c,
            height: s,
            width: s,
            num_classes: k,
        }
    }

    #[test]
    fn auto_sizes_the_unet_like_improved_diffusion() {
        let c32 = TrainConfig::auto(&shape(3, 32, 0)).unwrap();
        let u = c32.unet().unwrap();
        assert_eq!(u.block_out_channels, [128, 256, 256, 256]);
        assert_eq!(u.down_block_types[1], DownBlockType::AttnDown);
        assert_eq!(u.up_block_types[2], UpBlockType::AttnUp);
        assert_eq!(
            u,
            &UNetConfig::default(),
            "32×32 RGB is the DDPM CIFAR-10 model"
        );
        let c64 = TrainConfig::auto(&shape(1, 64, 0)).unwrap();
        let u = c64.unet().unwrap();
        assert_eq!(u.block_out_channels, [128, 256, 384, 512]);
        assert_eq!((u.in_channels, u.out_channels), (1, 1));
        assert_eq!(u.down_block_types[2], DownBlockType::AttnDown);
        let c28 = TrainConfig::auto(&shape(1, 28, 0)).unwrap();
        assert_eq!(c28.unet().unwrap().block_out_channels, [64, 128, 128]);
        let c30 = TrainConfig::auto(&shape(3, 30, 0)).unwrap();
        assert_eq!(c30.unet().unwrap().block_out_channels, [64, 128]);
        let c7 = TrainConfig::auto(&shape(3, 7, 0)).unwrap();
        assert_eq!(c7.unet().unwrap().block_out_channels, [64]);
        assert_eq!(
            c7.unet().unwrap().down_block_types,
            [DownBlockType::AttnDown]
        );
        let err = TrainConfig::auto(&shape(3, 3, 0)).unwrap_err().to_string();
        assert!(err.contains("at least 4x4") && err.contains("3x3"), "{err}");
    }

    #[test]
    fn a_preset_that_does_not_fit_names_both_sizes_and_channels() {
        let mut cfg = TrainConfig::mnist_cpu();
        cfg.data.path = "my.h5".into();
        let err = cfg.fit_to_data(&shape(3, 28, 0)).unwrap_err().to_string();
        assert!(
            err.contains("model.unet.in_channels") && err.contains("my.h5 has 3-channel"),
            "{err}"
        );
        let err = cfg.fit_to_data(&shape(1, 32, 0)).unwrap_err().to_string();
        assert!(
            err.contains("model.unet.sample_size")
                && err.contains("28x28")
                && err.contains("32x32"),
            "{err}"
        );
        cfg.fit_to_data(&shape(1, 28, 10)).unwrap();
    }

    #[test]
    fn fitting_fills_the_size_and_the_class_embeddings() {
        let mut cfg = TrainConfig::cifar10();
        cfg.data.path = "x.h5".into();
        cfg.model.unet_mut().unwrap().sample_size = None;
        cfg.data.conditional = true;
        cfg.fit_to_data(&shape(3, 32, 10)).unwrap();
        let u = cfg.unet().unwrap();
        assert_eq!(u.sample_size, Some(SampleSize::Square(32)));
        assert_eq!(u.num_class_embeds, Some(11));
        let err = cfg.fit_to_data(&shape(3, 32, 0)).unwrap_err().to_string();
        assert!(
            err.contains("data.conditional") && err.contains("no labels"),
            "{err}"
        );
    }
}
