//! Image sources for evaluation: our HDF5 sample files, splits of our HDF5 datasets, and folders
//! of PNG files, all loaded as uint8 `[N, H, W, C]` with C = 1 (grey) or 3 (RGB).
//!
//! Source strings:
//! * `DIR` — every PNG and JPEG file in the folder and its sub-folders, sorted by path, read
//!   through [`ddpm_train::image_folder`]: each file is converted on its own (alpha dropped,
//!   16-bit reduced), to grey when every file is grey and to RGB otherwise; all must have one size;
//! * `FILE.h5` — a samples file with a uint8 dataset `images`, `[N, H, W, C]` or `[N, H, W]`;
//! * `FILE.h5:SPLIT` — a dataset file's `/SPLIT/images` (e.g. `datasets/mnist.h5:test`).
use std::fmt;
use std::path::{Path, PathBuf};

use ddpm_train::data::DataError;
use ddpm_train::h5images;
use ddpm_train::image_folder::{self, Preprocess};
use ndarray::{Array4, ArrayView4};
use tch::{Device, Kind, Tensor};

use crate::error::{MetricsError, Result};

/// Where evaluation images come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// An HDF5 file with a root dataset `images` (what `ddpm-cli sample` writes).
    Samples {
        /// The HDF5 file.
        path: PathBuf,
    },
    /// `/<split>/images` of an HDF5 dataset file.
    Split {
        /// The HDF5 file.
        path: PathBuf,
        /// The group name (`train`, `test`, ...).
        split: String,
    },
    /// A folder of PNG and JPEG files (searched recursively).
    ImageDir {
        /// The folder.
        path: PathBuf,
    },
}

impl ImageSource {
    /// Interprets a source string (see the module docs); the file or folder must exist.
    pub fn parse(text: &str) -> Result<Self> {
        let bad = |reason: String| MetricsError::BadSource {
            source_str: text.to_string(),
            reason,
        };
        let whole = Path::new(text);
        if whole.is_dir() {
            return Ok(Self::ImageDir {
                path: whole.to_path_buf(),
            });
        }
        if whole.is_file() {
            return Ok(Self::Samples {
                path: whole.to_path_buf(),
            });
        }
        if let Some((file, split)) = text.rsplit_once(':') {
            let file_path = Path::new(file);
            if file_path.is_file() {
                if split.is_empty() || split.contains('/') {
                    return Err(bad(format!(
                        "`{split}` is not a split name such as test or train"
                    )));
                }
                return Ok(Self::Split {
                    path: file_path.to_path_buf(),
                    split: split.to_string(),
                });
            }
            if !file.is_empty() && !file_path.exists() {
                return Err(bad(format!("no such file: {file}")));
            }
        }
        Err(bad("no such file or folder".to_string()))
    }

    /// The file or folder the images come from.
    pub fn path(&self) -> &Path {
        match self {
            Self::Samples { path } | Self::Split { path, .. } | Self::ImageDir { path } => path,
        }
    }

    /// Loads at most `limit` images (all when `None`), in file order, as `[N, H, W, C]` uint8.
    pub fn load(&self, limit: Option<usize>) -> Result<Array4<u8>> {
        let images = match self {
            Self::Samples { path } => read_h5_images(path, "images", limit)?,
            Self::Split { path, split } => read_h5_images(path, &format!("{split}/images"), limit)?,
            Self::ImageDir { path } => read_image_dir(path, limit)?,
        };
        let (n, h, w, c) = images.dim();
        if n == 0 {
            return Err(MetricsError::BadImages(format!("{self}: no images")));
        }
        tracing::info!(source = %self, n, h, w, c, "loaded images");
        Ok(images)
    }
}

impl fmt::Display for ImageSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Samples { path } => write!(f, "{}", path.display()),
            Self::Split { path, split } => write!(f, "{}:{split}", path.display()),
            Self::ImageDir { path } => write!(f, "{}/ (PNG, JPEG)", path.display()),
        }
    }
}

impl std::str::FromStr for ImageSource {
    type Err = MetricsError;

    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

/// Copies generated images, a uint8 tensor `[N, H, W, C]` on any device, into an ndarray (the
/// layout every metric of this crate reads).
///
/// # Errors
/// [`MetricsError::BadImages`] when the tensor is not 4-D; [`MetricsError::Torch`] when it cannot
/// be read back.
pub fn images_from_tensor(images: &Tensor) -> Result<Array4<u8>> {
    let size = images.size();
    if size.len() != 4 {
        return Err(MetricsError::BadImages(format!(
            "images must be a tensor [N, H, W, C], got shape {size:?}"
        )));
    }
    let t = images
        .to_device(Device::Cpu)
        .to_kind(Kind::Uint8)
        .contiguous();
    let data =
        Vec::<u8>::try_from(t.view([-1])).map_err(|e| MetricsError::torch("reading images", e))?;
    let s: Vec<usize> = size.iter().map(|&d| d as usize).collect();
    Array4::from_shape_vec((s[0], s[1], s[2], s[3]), data)
        .map_err(|e| MetricsError::Shape(e.to_string()))
}

/// uint8 images `[N, H, W, C]` as a CPU uint8 tensor `[N, C, H, W]` (the layout of the bits/dim
/// functions in [`crate::nll`]).
pub fn images_to_nchw_tensor(images: ArrayView4<'_, u8>) -> Tensor {
    let (n, h, w, c) = images.dim();
    let data: Vec<u8> = images.iter().copied().collect();
    Tensor::from_slice(&data)
        .view([n as i64, h as i64, w as i64, c as i64])
        .permute([0, 3, 1, 2])
        .contiguous()
}

/// Reads the first `limit` images of a uint8 dataset `[N, H, W]` or `[N, H, W, C]` (C = 1 or 3)
/// through [`ddpm_train::h5images`]; a dataset file given without a split gets a hint.
fn read_h5_images(path: &Path, name: &str, limit: Option<usize>) -> Result<Array4<u8>> {
    h5images::read_images(path, name, limit).map_err(|e| match e {
        DataError::MissingDataset { .. } if name == "images" => MetricsError::BadImages(format!(
            "{e} (a dataset file needs one of its splits: FILE.h5:SPLIT)"
        )),
        e => MetricsError::Train(e.into()),
    })
}

/// Reads the first `limit` PNG and JPEG files of a folder (recursively, sorted by path) with
/// [`Preprocess::EVAL`]: sizes kept, grey unless some file has colour.
fn read_image_dir(dir: &Path, limit: Option<usize>) -> Result<Array4<u8>> {
    let mut files =
        image_folder::image_files(dir, true).map_err(|e| MetricsError::Train(e.into()))?;
    if let Some(l) = limit {
        files.truncate(l);
    }
    let read = image_folder::read_files(&files, &Preprocess::EVAL, false, || {})
        .map_err(|e| MetricsError::Train(e.into()))?;
    Ok(read.images)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_conversions_round_trip() {
        let a = Array4::from_shape_fn((2, 3, 4, 1), |(n, y, x, _)| (n * 50 + y * 7 + x) as u8);
        let nchw = images_to_nchw_tensor(a.view());
        assert_eq!(nchw.size(), [2, 1, 3, 4]);
        assert_eq!(nchw.int64_value(&[1, 0, 2, 3]), i64::from(a[[1, 2, 3, 0]]));
        let back = images_from_tensor(&nchw.permute([0, 2, 3, 1])).unwrap();
        assert_eq!(back, a);
        let err = images_from_tensor(&Tensor::zeros([2, 3], (Kind::Uint8, Device::Cpu)))
            .unwrap_err()
            .to_string();
        assert!(err.contains("[2, 3]"), "{err}");
    }

    #[test]
    fn parses_folders_files_and_splits() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("d.h5");
        std::fs::write(&file, b"x").unwrap();
        let d = dir.path().to_str().unwrap();
        assert_eq!(
            ImageSource::parse(d).unwrap(),
            ImageSource::ImageDir {
                path: dir.path().into()
            }
        );
        let f = file.to_str().unwrap();
        assert_eq!(
            ImageSource::parse(f).unwrap(),
            ImageSource::Samples { path: file.clone() }
        );
        assert_eq!(
            ImageSource::parse(&format!("{f}:test")).unwrap(),
            ImageSource::Split {
                path: file.clone(),
                split: "test".into()
            }
        );
        let err = ImageSource::parse(&format!("{d}/missing.h5:test"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no such file"), "{err}");
        assert!(ImageSource::parse(&format!("{f}:")).is_err());
    }

    #[test]
    fn a_folder_that_mixes_grey_and_colour_is_read_as_rgb_whatever_comes_first() {
        let dir = tempfile::tempdir().unwrap();
        image::GrayImage::from_pixel(3, 2, image::Luma([90]))
            .save(dir.path().join("a_grey.png"))
            .unwrap();
        image::RgbImage::from_pixel(3, 2, image::Rgb([10, 20, 30]))
            .save(dir.path().join("b_colour.png"))
            .unwrap();
        let imgs = ImageSource::parse(dir.path().to_str().unwrap())
            .unwrap()
            .load(None)
            .unwrap();
        assert_eq!(imgs.dim(), (2, 2, 3, 3));
        assert_eq!(imgs.slice(ndarray::s![0, 1, 2, ..]).to_vec(), [90, 90, 90]);
        assert_eq!(imgs.slice(ndarray::s![1, 0, 0, ..]).to_vec(), [10, 20, 30]);
    }

    #[test]
    fn reads_pngs_sorted_with_limit_and_h5_splits() {
        let dir = tempfile::tempdir().unwrap();
        for (name, v) in [("b.png", 20u8), ("a.png", 10), ("c.png", 30)] {
            image::GrayImage::from_pixel(5, 4, image::Luma([v]))
                .save(dir.path().join(name))
                .unwrap();
        }
        let src = ImageSource::parse(dir.path().to_str().unwrap()).unwrap();
        let imgs = src.load(Some(2)).unwrap();
        assert_eq!(imgs.dim(), (2, 4, 5, 1));
        assert_eq!(imgs[[0, 0, 0, 0]], 10);
        assert_eq!(imgs[[1, 3, 4, 0]], 20);

        let h5 = dir.path().join("ds.h5");
        {
            let f = hdf5::File::create(&h5).unwrap();
            let g = f.create_group("test").unwrap();
            let data =
                ndarray::Array3::from_shape_fn((6, 3, 2), |(n, y, x)| (n * 6 + y * 2 + x) as u8);
            g.new_dataset_builder()
                .with_data(&data)
                .create("images")
                .unwrap();
        }
        let imgs = ImageSource::parse(&format!("{}:test", h5.display()))
            .unwrap()
            .load(Some(4))
            .unwrap();
        assert_eq!(imgs.dim(), (4, 3, 2, 1));
        assert_eq!(imgs[[3, 2, 1, 0]], 23);
        let err = ImageSource::parse(h5.to_str().unwrap())
            .unwrap()
            .load(None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("FILE.h5:SPLIT"), "{err}");
    }
}
