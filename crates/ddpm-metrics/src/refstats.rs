//! Cached reference statistics (μ, Σ, n, and what they were computed from) in an HDF5 file.
//!
//! Layout: dataset `/mu` f64 `[D]`, dataset `/sigma` f64 `[D, D]`, root attributes `n` (u64),
//! `source` (the images, e.g. `datasets/mnist.h5:test, first 10000 images`), `pixels_sha256` (the
//! digest of the decoded images, [`pixels_digest`]), `network` (the feature extractor, e.g.
//! `fid-inception-pool3.pt (sha256 …)`) and `format`. A cache is keyed on its content: it is used
//! only when the pixel digest and the network equal the current ones (the path and the count are
//! only a description), so replacing the files of a folder by others with the same names is
//! noticed. Files are written to a temporary file in the target's folder and renamed into place,
//! so a reader never sees a half-written cache.
use std::path::Path;
use std::time::Instant;

use hdf5::types::VarLenUnicode;
use ndarray::{Array1, Array2, ArrayView4};

use crate::error::{MetricsError, Result};
use crate::inception::{EvalOptions, Inception};
use crate::inputs::ImageSource;
use crate::stats::FeatureStats;

/// Value of the `format` attribute.
pub const FORMAT: &str = "ddpm-rs feature statistics v1";

/// Feature statistics with a record of where they came from.
#[derive(Debug, Clone, PartialEq)]
pub struct RefStats {
    /// μ, Σ (ddof 1) and n.
    pub stats: FeatureStats,
    /// The images they were computed from.
    pub source: String,
    /// sha256 of the decoded images ([`pixels_digest`]); empty in caches written before it existed.
    pub pixels: String,
    /// The network that computed the features.
    pub network: String,
}

/// The content key of uint8 images `[N, H, W, C]`: sha256 (hex) of the shape (four little-endian
/// u64) followed by the pixels in row-major order. Two image sets have the same key exactly when
/// they hold the same decoded pixels in the same order.
pub fn pixels_digest(images: ArrayView4<'_, u8>) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for d in images.shape() {
        h.update((*d as u64).to_le_bytes());
    }
    match images.as_slice() {
        Some(all) => h.update(all),
        None => images.iter().for_each(|&p| h.update([p])),
    }
    hex::encode(h.finalize())
}

fn vlu(path: &Path, s: &str) -> Result<VarLenUnicode> {
    s.parse::<VarLenUnicode>().map_err(|e| {
        MetricsError::InvalidValue(format!("{}: cannot store `{s}`: {e}", path.display()))
    })
}

impl RefStats {
    /// Writes the statistics to `path` atomically (see [`ddpm_train::h5images::create_atomically`]).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        self.stats.validate()?;
        let h = |what: &str| {
            let what = what.to_string();
            move |e| MetricsError::hdf5(path, what, e)
        };
        ddpm_train::h5images::create_atomically(path, |file: &hdf5::File| -> Result<()> {
            file.new_dataset_builder()
                .with_data(&self.stats.mean)
                .create("mu")
                .map_err(h("writing /mu"))?;
            file.new_dataset_builder()
                .with_data(&self.stats.cov)
                .create("sigma")
                .map_err(h("writing /sigma"))?;
            file.new_attr::<u64>()
                .shape(())
                .create("n")
                .and_then(|a| a.write_scalar(&(self.stats.n as u64)))
                .map_err(h("writing attribute n"))?;
            for (name, value) in [
                ("source", &self.source),
                ("pixels_sha256", &self.pixels),
                ("network", &self.network),
                ("format", &FORMAT.to_string()),
            ] {
                let v = vlu(path, value)?;
                file.new_attr::<VarLenUnicode>()
                    .shape(())
                    .create(name)
                    .and_then(|a| a.write_scalar(&v))
                    .map_err(h(&format!("writing attribute {name}")))?;
            }
            Ok(())
        })?;
        tracing::info!(path = %path.display(), n = self.stats.n, source = %self.source, "wrote reference statistics");
        Ok(())
    }

    /// Reads statistics written by [`RefStats::save`]. A file on which HDF5 would loop forever
    /// ([`ddpm_train::h5check`]) is refused before HDF5 opens it.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let h = |what: &'static str| move |e| MetricsError::hdf5(path, what, e);
        if path.is_file() {
            ddpm_train::h5check::check_global_heaps(path)?;
        }
        let file = hdf5::File::open(path).map_err(h("opening"))?;
        let format: VarLenUnicode = file
            .attr("format")
            .and_then(|a| a.read_scalar())
            .map_err(h("reading attribute format"))?;
        if format.as_str() != FORMAT {
            return Err(MetricsError::InvalidValue(format!(
                "{}: format `{}`, expected `{FORMAT}`",
                path.display(),
                format.as_str()
            )));
        }
        let mean: Array1<f64> = file
            .dataset("mu")
            .and_then(|d| d.read_1d())
            .map_err(h("reading /mu"))?;
        let cov: Array2<f64> = file
            .dataset("sigma")
            .and_then(|d| d.read_2d())
            .map_err(h("reading /sigma"))?;
        let n: u64 = file
            .attr("n")
            .and_then(|a| a.read_scalar())
            .map_err(h("reading attribute n"))?;
        let source: VarLenUnicode = file
            .attr("source")
            .and_then(|a| a.read_scalar())
            .map_err(h("reading attribute source"))?;
        let network: VarLenUnicode = file
            .attr("network")
            .and_then(|a| a.read_scalar())
            .map_err(h("reading attribute network"))?;
        let pixels: String = file
            .attr("pixels_sha256")
            .and_then(|a| a.read_scalar::<VarLenUnicode>())
            .map(|v| v.as_str().to_string())
            .unwrap_or_default();
        let stats = FeatureStats {
            mean,
            cov,
            n: n as usize,
        };
        stats
            .validate()
            .map_err(|e| MetricsError::InvalidValue(format!("{}: {e}", path.display())))?;
        Ok(Self {
            stats,
            source: source.as_str().to_string(),
            pixels,
            network: network.as_str().to_string(),
        })
    }

    /// The cached statistics at `path` when the file exists and was computed from images with the
    /// pixel digest `pixels` ([`pixels_digest`]) by `network`; `None` when it is absent, or (said
    /// on stderr, with the reason) when it records other images or another network — it should
    /// then be recomputed and rewritten. `source` only describes the images in that message.
    pub fn load_matching(
        path: impl AsRef<Path>,
        pixels: &str,
        network: &str,
        source: &str,
    ) -> Result<Option<FeatureStats>> {
        let path = path.as_ref();
        if !path.exists() {
            return Ok(None);
        }
        let cached = Self::load(path)?;
        let why = if cached.pixels.is_empty() {
            "it records no pixel digest (written by an older version)".to_string()
        } else if cached.pixels != pixels {
            format!(
                "it was computed from other images ({}, pixels sha256 {}…; now {source}, {}…)",
                cached.source,
                &cached.pixels[..12.min(cached.pixels.len())],
                &pixels[..12.min(pixels.len())]
            )
        } else if cached.network != network {
            format!("it was computed by {} (now {network})", cached.network)
        } else {
            tracing::info!(path = %path.display(), n = cached.stats.n, "using cached reference statistics");
            return Ok(Some(cached.stats));
        };
        tracing::warn!(
            "{}: not using the cached statistics: {why}; recomputing",
            path.display()
        );
        Ok(None)
    }
}

/// How a cache records which images its statistics describe: the canonical path of `src` (with
/// `:split` or `/ (PNG, JPEG)`) and the number of images, e.g. `/abs/mnist.h5:test, first 2000 images`.
/// Pass it as the `source` of [`reference_stats`], so that one cache serves every caller that
/// describes the same images.
pub fn source_description(src: &ImageSource, n: usize) -> String {
    let canonical = std::fs::canonicalize(src.path()).unwrap_or_else(|_| src.path().to_path_buf());
    let described = match src {
        ImageSource::Split { split, .. } => format!("{}:{split}", canonical.display()),
        ImageSource::ImageDir { .. } => format!("{}/ (PNG, JPEG)", canonical.display()),
        ImageSource::Samples { .. } => canonical.display().to_string(),
    };
    format!("{described}, first {n} images")
}

/// The Inception feature statistics of the reference `images` (uint8 `[N, H, W, C]`): read from
/// `cache` when that file records the same pixels ([`pixels_digest`]) and network, computed with
/// `net` otherwise (`opts` with `features` forced on) and then written to `cache` when one is
/// given, with `source` (see [`source_description`]) as its description.
///
/// # Errors
/// An unreadable or unwritable cache (naming the file), or the network failing on the images.
pub fn reference_stats(
    net: &Inception,
    images: ArrayView4<'_, u8>,
    source: &str,
    cache: Option<&Path>,
    opts: &EvalOptions,
) -> Result<FeatureStats> {
    let network = net.describe();
    let pixels = pixels_digest(images);
    if let Some(cache) = cache {
        if let Some(stats) = RefStats::load_matching(cache, &pixels, &network, source)? {
            return Ok(stats);
        }
    }
    let start = Instant::now();
    let opts = EvalOptions {
        features: true,
        ..*opts
    };
    let stats = net
        .evaluate(images, &opts)?
        .stats
        .expect("features were asked for");
    let secs = start.elapsed().as_secs_f64();
    tracing::info!(
        seconds = secs,
        images_per_sec = images.dim().0 as f64 / secs,
        "Inception on the reference images"
    );
    if let Some(cache) = cache {
        RefStats {
            stats: stats.clone(),
            source: source.to_string(),
            pixels,
            network,
        }
        .save(cache)?;
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn round_trips_and_matches_on_source_and_network() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/ref.h5");
        let r = RefStats {
            stats: FeatureStats {
                mean: array![1.0, -2.5],
                cov: array![[2.0, 0.1], [0.1, 3.0]],
                n: 17,
            },
            source: "datasets/mnist.h5:test, first 17 images".into(),
            pixels: "ab12".repeat(16),
            network: "fid-inception-pool3.pt (sha256 7ff4…)".into(),
        };
        r.save(&path).unwrap();
        assert_eq!(RefStats::load(&path).unwrap(), r);
        let matching = |pixels: &str, network: &str| {
            RefStats::load_matching(&path, pixels, network, "somewhere").unwrap()
        };
        assert_eq!(matching(&r.pixels, &r.network), Some(r.stats.clone()));
        assert_eq!(
            matching(&"cd34".repeat(16), &r.network),
            None,
            "other pixels"
        );
        assert_eq!(matching(&r.pixels, "another network"), None);
        assert_eq!(
            RefStats::load_matching(dir.path().join("absent.h5"), "x", "y", "z").unwrap(),
            None
        );
        // No temporary files left behind.
        let left: Vec<_> = std::fs::read_dir(dir.path().join("sub")).unwrap().collect();
        assert_eq!(left.len(), 1);
    }

    #[test]
    fn the_pixel_digest_sees_every_pixel_the_order_and_the_shape() {
        let a = ndarray::Array4::<u8>::from_shape_fn((2, 3, 4, 1), |(n, y, x, _)| {
            (n * 12 + y * 4 + x) as u8
        });
        let d = pixels_digest(a.view());
        assert_eq!(d.len(), 64);
        assert_eq!(pixels_digest(a.view()), d);
        let mut b = a.clone();
        b[[1, 2, 3, 0]] ^= 1;
        assert_ne!(pixels_digest(b.view()), d, "one pixel");
        let swapped = ndarray::concatenate![
            ndarray::Axis(0),
            a.slice(ndarray::s![1..;1, .., .., ..]),
            a.slice(ndarray::s![..1, .., .., ..])
        ];
        assert_ne!(pixels_digest(swapped.view()), d, "order");
        let reshaped = a.clone().into_shape_with_order((2, 4, 3, 1)).unwrap();
        assert_ne!(pixels_digest(reshaped.view()), d, "shape");
        // A non-contiguous view digests like its contiguous copy.
        let t = a.view().reversed_axes();
        assert_eq!(
            pixels_digest(t),
            pixels_digest(t.as_standard_layout().view())
        );
    }

    #[test]
    fn a_cache_on_which_hdf5_would_hang_is_refused() {
        // The first object of the string attributes' global heap collection set to "index 0,
        // size 0": HDF5 2.2.0 would spin reading the `format` attribute (ddpm_train::h5check).
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spin.h5");
        RefStats {
            stats: FeatureStats {
                mean: array![0.0],
                cov: array![[1.0]],
                n: 2,
            },
            source: "s".into(),
            pixels: "p".into(),
            network: "n".into(),
        }
        .save(&path)
        .unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        let gcol = bytes.windows(4).position(|w| w == b"GCOL").unwrap();
        bytes[gcol + 16..gcol + 32].fill(0);
        std::fs::write(&path, bytes).unwrap();
        let err = RefStats::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("spin.h5") && err.contains("loop forever"),
            "{err}"
        );
    }

    #[test]
    fn loading_a_missing_file_names_it() {
        let err = RefStats::load("/nonexistent/ref.h5")
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/ref.h5"), "{err}");
    }
}
