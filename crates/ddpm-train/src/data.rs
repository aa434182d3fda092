//! Datasets: import of the official gzipped IDX files into our HDF5 layout, and loading it back.
//!
//! # HDF5 layout (h5py-readable)
//! ```text
//! /train/images  uint8 [N, 28, 28]     /train/labels  uint8 [N]
//! /test/images   uint8 [M, 28, 28]     /test/labels   uint8 [M]
//! attributes on /: dataset (name), format_version,
//!   <file stem>.file / .md5 / .sha256 for each of the four source files
//! ```
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use md5::Md5;
use ndarray::{Array1, Array3, ArrayView1};
use sha2::{Digest, Sha256};

use crate::h5images::{self, get_str_attr, set_str_attr};

/// Version of the HDF5 layout written by [`import_idx_dataset`].
pub const FORMAT_VERSION: u32 = 1;

/// The four official files of an MNIST-style dataset, in (split, images, labels) order.
pub const IDX_FILES: [(&str, &str, &str); 2] = [
    (
        "train",
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
    ),
    (
        "test",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ),
];

/// Errors of dataset import and loading. Each names the file and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file's digest differs from the published value.
    #[error("{path}: {algorithm} checksum mismatch: expected {expected}, got {actual}")]
    Checksum {
        /// The file.
        path: PathBuf,
        /// `md5` or `sha256`.
        algorithm: &'static str,
        /// Published digest.
        expected: String,
        /// Digest of the file on disk.
        actual: String,
    },
    /// The gzip stream is corrupt or truncated.
    #[error("{path}: corrupt or truncated gzip data: {message}")]
    Gzip {
        /// The file.
        path: PathBuf,
        /// What the decoder said.
        message: String,
    },
    /// The IDX header or payload is malformed.
    #[error("{path}: invalid IDX file: {message}")]
    Idx {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Images and labels of a split disagree.
    #[error("{images} holds {n_images} images but {labels} holds {n_labels} labels")]
    CountMismatch {
        /// The images file.
        images: PathBuf,
        /// Number of images.
        n_images: usize,
        /// The labels file.
        labels: PathBuf,
        /// Number of labels.
        n_labels: usize,
    },
    /// An HDF5 operation failed.
    #[error("{path}: HDF5 error: {source}")]
    Hdf5 {
        /// The HDF5 file.
        path: PathBuf,
        /// The underlying error.
        source: hdf5::Error,
    },
    /// Reading a dataset of an HDF5 file failed.
    #[error("{path}: {dataset}: {source}")]
    Hdf5Dataset {
        /// The HDF5 file.
        path: PathBuf,
        /// The dataset, e.g. `/test/images`.
        dataset: String,
        /// The underlying error.
        source: hdf5::Error,
    },
    /// An HDF5 file lacks a dataset.
    #[error("{path}: no dataset {dataset}; {}", holds(group, available))]
    MissingDataset {
        /// The HDF5 file.
        path: PathBuf,
        /// The dataset that was asked for, e.g. `/valid/images`.
        dataset: String,
        /// The group whose members are listed: the dataset's own, or `/` when that is missing too.
        group: String,
        /// The members of `group`, sorted.
        available: Vec<String>,
    },
    /// The HDF5 file does not have the expected layout.
    #[error("{path}: {message}")]
    Layout {
        /// The HDF5 file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, DataError>;

impl From<ddpm_nets::atomic::WriteError> for DataError {
    fn from(e: ddpm_nets::atomic::WriteError) -> Self {
        Self::Io {
            path: e.path,
            source: e.source,
        }
    }
}

/// `/test holds images, labels` (`the file holds …` for the root) for [`DataError::MissingDataset`].
fn holds(group: &str, available: &[String]) -> String {
    let group = if group == "/" { "the file" } else { group };
    if available.is_empty() {
        format!("{group} holds nothing")
    } else {
        format!("{group} holds {}", available.join(", "))
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
    move |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn h5_err(path: &Path) -> impl FnOnce(hdf5::Error) -> DataError + '_ {
    move |source| DataError::Hdf5 {
        path: path.to_path_buf(),
        source,
    }
}

/// md5 and sha256 of a byte string, lower-case hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digests {
    /// md5, hex.
    pub md5: String,
    /// sha256, hex.
    pub sha256: String,
}

impl Digests {
    /// Digests of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self {
            md5: hex::encode(Md5::digest(bytes)),
            sha256: hex::encode(Sha256::digest(bytes)),
        }
    }
}

/// A published checksum that a source file must match (md5 or sha256, by its length).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// File name, e.g. `train-images-idx3-ubyte.gz`.
    pub file: String,
    /// Lower-case hex digest: 32 digits for md5, 64 for sha256.
    pub digest: String,
}

fn verify(path: &Path, actual: &Digests, expected: &[Expected]) -> Result<()> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    for e in expected.iter().filter(|e| e.file == name) {
        let want = e.digest.to_ascii_lowercase();
        let (algorithm, got) = match want.len() {
            32 => ("md5", &actual.md5),
            _ => ("sha256", &actual.sha256),
        };
        if &want != got {
            return Err(DataError::Checksum {
                path: path.to_path_buf(),
                algorithm,
                expected: want,
                actual: got.clone(),
            });
        }
    }
    Ok(())
}

/// An IDX array of unsigned bytes (type code 0x08): dimensions and row-major data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    /// Dimension sizes, outermost first.
    pub dims: Vec<usize>,
    /// Row-major payload, `dims.iter().product()` bytes.
    pub data: Vec<u8>,
}

/// Parses an uncompressed IDX file (magic `00 00 08 nd`, big-endian u32 dims, u8 payload).
pub fn parse_idx(bytes: &[u8], path: &Path) -> Result<IdxArray> {
    let bad = |message: String| DataError::Idx {
        path: path.to_path_buf(),
        message,
    };
    if bytes.len() < 4 {
        return Err(bad(format!(
            "{} bytes is too short for the 4-byte magic",
            bytes.len()
        )));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(bad(format!(
            "bad magic {:02x} {:02x} {:02x} {:02x} (expected 00 00 08 nd)",
            bytes[0], bytes[1], bytes[2], bytes[3]
        )));
    }
    if bytes[2] != 0x08 {
        return Err(bad(format!(
            "element type 0x{:02x} is not unsigned byte (0x08)",
            bytes[2]
        )));
    }
    let nd = bytes[3] as usize;
    if nd == 0 {
        return Err(bad("zero dimensions".to_string()));
    }
    let header = 4 + 4 * nd;
    if bytes.len() < header {
        return Err(bad(format!(
            "truncated header: {nd} dimensions need {header} bytes"
        )));
    }
    let dims: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let n = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| bad(format!("dimensions {dims:?} overflow")))?;
    let payload = bytes.len() - header;
    if payload != n {
        return Err(bad(format!(
            "dimensions {dims:?} need {n} data bytes, file has {payload}"
        )));
    }
    Ok(IdxArray {
        dims,
        data: bytes[header..].to_vec(),
    })
}

/// Reads a gzip file: returns the digests of the compressed bytes and the decompressed content.
/// Truncation and CRC errors are reported as [`DataError::Gzip`].
pub fn read_gz(path: &Path) -> Result<(Digests, Vec<u8>)> {
    let raw = fs::read(path).map_err(io_err(path))?;
    let digests = Digests::of(&raw);
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(raw.as_slice())
        .read_to_end(&mut out)
        .map_err(|e| DataError::Gzip {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    Ok((digests, out))
}

/// One split in memory: images `[N, H, W]` and labels `[N]`.
#[derive(Debug, Clone)]
pub struct Split {
    /// uint8 images `[N, H, W]`.
    pub images: Array3<u8>,
    /// uint8 class labels `[N]`.
    pub labels: Array1<u8>,
}

impl Split {
    /// Number of examples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the split is empty.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// A source file as recorded in the HDF5 attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    /// File name.
    pub name: String,
    /// Digests of the gzip file.
    pub digests: Digests,
}

/// Reads, verifies and parses one split's images and labels files from `dir`.
pub fn read_idx_split(
    dir: &Path,
    images: &str,
    labels: &str,
    expected: &[Expected],
) -> Result<(Split, [SourceFile; 2])> {
    let ipath = dir.join(images);
    let lpath = dir.join(labels);
    let (idig, ibytes) = read_gz(&ipath)?;
    verify(&ipath, &idig, expected)?;
    let (ldig, lbytes) = read_gz(&lpath)?;
    verify(&lpath, &ldig, expected)?;
    let img = parse_idx(&ibytes, &ipath)?;
    let lab = parse_idx(&lbytes, &lpath)?;
    if img.dims.len() != 3 || img.dims[1] == 0 || img.dims[2] == 0 {
        return Err(DataError::Idx {
            path: ipath,
            message: format!(
                "images must have 3 non-empty dimensions [N, H, W], got {:?}",
                img.dims
            ),
        });
    }
    if lab.dims.len() != 1 {
        return Err(DataError::Idx {
            path: lpath,
            message: format!("labels must have 1 dimension [N], got {:?}", lab.dims),
        });
    }
    if img.dims[0] != lab.dims[0] {
        return Err(DataError::CountMismatch {
            images: ipath,
            n_images: img.dims[0],
            labels: lpath,
            n_labels: lab.dims[0],
        });
    }
    let images_arr = Array3::from_shape_vec((img.dims[0], img.dims[1], img.dims[2]), img.data)
        .expect("IDX payload length was checked against its dimensions");
    let split = Split {
        images: images_arr,
        labels: Array1::from_vec(lab.data),
    };
    let files = [
        SourceFile {
            name: images.to_string(),
            digests: idig,
        },
        SourceFile {
            name: labels.to_string(),
            digests: ldig,
        },
    ];
    Ok((split, files))
}

/// What an imported dataset file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetSummary {
    /// Dataset name recorded in the file (e.g. `mnist`).
    pub name: String,
    /// Number of training examples.
    pub n_train: usize,
    /// Number of test examples.
    pub n_test: usize,
    /// Image height and width.
    pub image_hw: (usize, usize),
    /// The source files with their digests.
    pub sources: Vec<SourceFile>,
}

/// Imports the four gzipped IDX files in `raw_dir` into the HDF5 file `out`.
///
/// Every file is checked against `expected` (published md5/sha256 values; files not listed are
/// not checked), decompressed (truncation and CRC errors are caught), parsed and cross-checked
/// (images `[N, H, W]`, labels `[N]`, same N). The HDF5 file is written to a temporary file beside
/// `out` and renamed into place only when complete, so a failure leaves no partial `out`.
pub fn import_idx_dataset(
    name: &str,
    raw_dir: &Path,
    out: &Path,
    expected: &[Expected],
) -> Result<DatasetSummary> {
    let mut splits = Vec::new();
    for (split, images, labels) in IDX_FILES {
        let (data, files) = read_idx_split(raw_dir, images, labels, expected)?;
        splits.push((split, data, files));
    }
    let (h, w) = (splits[0].1.images.dim().1, splits[0].1.images.dim().2);
    for (split, data, files) in &splits {
        if (data.images.dim().1, data.images.dim().2) != (h, w) {
            return Err(DataError::Idx {
                path: raw_dir.join(&files[0].name),
                message: format!(
                    "{split} images are {:?}, train images are {h}x{w}",
                    &data.images.shape()[1..]
                ),
            });
        }
    }
    h5images::create_atomically(out, |file: &hdf5::File| -> Result<()> {
        set_str_attr(file, "dataset", name, out)?;
        file.new_attr::<u32>()
            .create("format_version")
            .and_then(|a| a.write_scalar(&FORMAT_VERSION))
            .map_err(h5_err(out))?;
        for (split, data, files) in &splits {
            let g = file.create_group(split).map_err(h5_err(out))?;
            g.new_dataset_builder()
                .with_data(&data.images)
                .create("images")
                .map_err(h5_err(out))?;
            g.new_dataset_builder()
                .with_data(&data.labels)
                .create("labels")
                .map_err(h5_err(out))?;
            for (kind, f) in ["images", "labels"].iter().zip(files) {
                let key = format!("{split}_{kind}");
                set_str_attr(file, &format!("{key}.file"), &f.name, out)?;
                set_str_attr(file, &format!("{key}.md5"), &f.digests.md5, out)?;
                set_str_attr(file, &format!("{key}.sha256"), &f.digests.sha256, out)?;
            }
        }
        Ok(())
    })?;
    tracing::info!(path = %out.display(), "wrote dataset {name}");
    check_dataset(out)
}

/// Opens an imported dataset and checks its layout: both splits present, images `[N, H, W]`
/// uint8 with as many labels, and the source attributes. Returns what it holds.
pub fn check_dataset(path: &Path) -> Result<DatasetSummary> {
    let file = h5images::open(path)?;
    let name = get_str_attr(&file, "dataset", path)?;
    let mut counts = Vec::new();
    let mut hw = None;
    let mut sources = Vec::new();
    for (split, _, _) in IDX_FILES {
        let images = file
            .dataset(&format!("{split}/images"))
            .map_err(|_| DataError::Layout {
                path: path.to_path_buf(),
                message: format!("missing dataset /{split}/images"),
            })?;
        let labels = file
            .dataset(&format!("{split}/labels"))
            .map_err(|_| DataError::Layout {
                path: path.to_path_buf(),
                message: format!("missing dataset /{split}/labels"),
            })?;
        let (ishape, lshape) = (images.shape(), labels.shape());
        let layout = |message: String| DataError::Layout {
            path: path.to_path_buf(),
            message,
        };
        if ishape.len() != 3 || lshape.len() != 1 || ishape[0] != lshape[0] {
            return Err(layout(format!(
                "/{split}/images {ishape:?} and /{split}/labels {lshape:?} do not form [N,H,W] + [N]"
            )));
        }
        for (ds, what) in [(&images, "images"), (&labels, "labels")] {
            let dt = ds.dtype().map_err(h5_err(path))?;
            if !dt.is::<u8>() {
                return Err(layout(format!("/{split}/{what} is not uint8")));
            }
        }
        match hw {
            None => hw = Some((ishape[1], ishape[2])),
            Some(prev) if prev != (ishape[1], ishape[2]) => {
                return Err(layout(format!(
                    "/{split}/images has another image size than /train"
                )));
            }
            Some(_) => {}
        }
        counts.push(ishape[0]);
        for kind in ["images", "labels"] {
            let key = format!("{split}_{kind}");
            sources.push(SourceFile {
                name: get_str_attr(&file, &format!("{key}.file"), path)?,
                digests: Digests {
                    md5: get_str_attr(&file, &format!("{key}.md5"), path)?,
                    sha256: get_str_attr(&file, &format!("{key}.sha256"), path)?,
                },
            });
        }
    }
    Ok(DatasetSummary {
        name,
        n_train: counts[0],
        n_test: counts[1],
        image_hw: hw.unwrap_or((0, 0)),
        sources,
    })
}

/// Loads one split (`train` or `test`) of an imported dataset into memory: grey images
/// `[N, H, W]` and labels `[N]` (through [`h5images::read_split`], whose errors name the file and
/// the dataset).
pub fn load_split(path: &Path, split: &str) -> Result<Split> {
    let (images, labels) = h5images::read_split(path, split)?;
    if images.dim().3 != 1 {
        return Err(DataError::Layout {
            path: path.to_path_buf(),
            message: format!(
                "/{split}/images has {} channels, expected grey [N, H, W]",
                images.dim().3
            ),
        });
    }
    Ok(Split {
        images: images.index_axis_move(ndarray::Axis(3), 0),
        labels,
    })
}

/// Writes an IDX byte array (used by tests and tools that need small synthetic files).
pub fn encode_idx(dims: &[usize], data: ArrayView1<'_, u8>) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, dims.len() as u8];
    for &d in dims {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    out.extend(data.iter().copied());
    out
}
