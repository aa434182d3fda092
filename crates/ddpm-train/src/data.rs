//! Datasets: import of the official gzipped IDX files into our HDF5 layout, the one writer and
//! checker of dataset files ([`write_dataset`], [`check_dataset`]; the CIFAR-10 archive and image
//! folders are imported through them too), and loading a grey split back.
//!
//! # HDF5 layout (h5py-readable)
//! ```text
//! /train/images  uint8 [N, H, W] or [N, H, W, C] (C = 1 or 3)   /train/labels  uint8 [N] (optional)
//! /test/images   uint8 [M, H, W(, C)] (optional split)          /test/labels   uint8 [M]
//! attributes on /: dataset (name), format_version, class_names (JSON list, optional),
//!   KEY.file / .md5 / .sha256 for each source file (KEY in SOURCE_KEYS),
//!   and importer-specific ones (source_folder, file_count, preprocessing, skipped)
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
    /// The CIFAR-10 archive is damaged or not laid out as published (the message names the archive
    /// and the member).
    #[error(transparent)]
    Cifar10(#[from] crate::cifar10::archive::CifarError),
    /// An image file that cannot be used (unreadable, empty, corrupt, too small, another size).
    #[error("{path}: {message}")]
    Image {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
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

impl Expected {
    /// Whether this entry is for the file called `name` (its `file` may be a path; its last
    /// component is compared).
    pub fn names(&self, name: &str) -> bool {
        Path::new(&self.file)
            .file_name()
            .is_some_and(|f| f == std::ffi::OsStr::new(name))
    }
}

/// Errors when an entry of `expected` names none of the files read (`names`), so that a digest
/// given for a misspelt or other file is not silently left unchecked. `path` is where the files
/// are (for the message).
pub(crate) fn check_expected_names(
    path: &Path,
    expected: &[Expected],
    names: &[&str],
) -> Result<()> {
    match expected.iter().find(|e| !names.iter().any(|n| e.names(n))) {
        Some(e) => Err(DataError::Layout {
            path: path.to_path_buf(),
            message: format!(
                "a digest is given for `{}`, which is not one of the files read ({})",
                e.file,
                names.join(", ")
            ),
        }),
        None => Ok(()),
    }
}

pub(crate) fn verify(path: &Path, actual: &Digests, expected: &[Expected]) -> Result<()> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    for e in expected.iter().filter(|e| e.names(name)) {
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

/// What a dataset file holds (see [`check_dataset`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetSummary {
    /// Dataset name recorded in the file (e.g. `mnist`, `cifar10`, or an imported folder's name).
    pub name: String,
    /// Number of training examples.
    pub n_train: usize,
    /// Number of test examples (0 when the file has no `/test` split).
    pub n_test: usize,
    /// Image height and width.
    pub image_hw: (usize, usize),
    /// Channels: 1 (grey) or 3 (RGB).
    pub channels: usize,
    /// Whether the splits carry class labels.
    pub has_labels: bool,
    /// Class names by label (empty when the file records none, as the IDX imports).
    pub class_names: Vec<String>,
    /// The source files with their digests (IDX files, the CIFAR-10 archive; none for a folder).
    pub sources: Vec<SourceFile>,
}

/// One split of a dataset file to write: uint8 images `[N, H, W]` or `[N, H, W, C]` (C = 1 or 3)
/// and, optionally, uint8 labels `[N]`.
pub struct SplitData<'a> {
    /// `train` or `test`.
    pub name: &'a str,
    /// The images.
    pub images: ndarray::ArrayViewD<'a, u8>,
    /// The labels.
    pub labels: Option<ArrayView1<'a, u8>>,
}

/// What [`write_dataset`] records besides the splits.
pub struct DatasetRecord<'a> {
    /// The dataset name (attribute `dataset`).
    pub name: &'a str,
    /// Class names by label (attribute `class_names`, a JSON list); empty for none.
    pub class_names: &'a [String],
    /// Source files with their digests, by key (attributes `KEY.file`, `KEY.md5`, `KEY.sha256`).
    pub sources: &'a [(&'a str, SourceFile)],
    /// Further string attributes (e.g. `source_folder`, `preprocessing`).
    pub attrs: &'a [(&'a str, String)],
}

/// Keys under which [`write_dataset`] callers record source files, in the order
/// [`DatasetSummary::sources`] lists them.
pub const SOURCE_KEYS: [&str; 5] = [
    "train_images",
    "train_labels",
    "test_images",
    "test_labels",
    "archive",
];

/// Writes a dataset file in our layout, atomically (a failure leaves no partial `out` and keeps an
/// existing one): `/<split>/images`, `/<split>/labels` when given, and the attributes of
/// `record` plus `format_version`. Errors name `out`.
pub fn write_dataset(
    out: &Path,
    splits: &[SplitData<'_>],
    record: &DatasetRecord<'_>,
) -> Result<()> {
    h5images::create_atomically(out, |file: &hdf5::File| -> Result<()> {
        set_str_attr(file, "dataset", record.name, out)?;
        file.new_attr::<u32>()
            .create("format_version")
            .and_then(|a| a.write_scalar(&FORMAT_VERSION))
            .map_err(h5_err(out))?;
        if !record.class_names.is_empty() {
            let json = serde_json::to_string(record.class_names).expect("strings serialize");
            set_str_attr(file, "class_names", &json, out)?;
        }
        for split in splits {
            let g = file.create_group(split.name).map_err(h5_err(out))?;
            g.new_dataset_builder()
                .with_data(&split.images.as_standard_layout())
                .create("images")
                .map_err(h5_err(out))?;
            if let Some(labels) = split.labels {
                g.new_dataset_builder()
                    .with_data(&labels.as_standard_layout())
                    .create("labels")
                    .map_err(h5_err(out))?;
            }
        }
        for (key, f) in record.sources {
            set_str_attr(file, &format!("{key}.file"), &f.name, out)?;
            set_str_attr(file, &format!("{key}.md5"), &f.digests.md5, out)?;
            set_str_attr(file, &format!("{key}.sha256"), &f.digests.sha256, out)?;
        }
        for (key, value) in record.attrs {
            set_str_attr(file, key, value, out)?;
        }
        Ok(())
    })
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
    let names: Vec<&str> = IDX_FILES.iter().flat_map(|(_, i, l)| [*i, *l]).collect();
    check_expected_names(raw_dir, expected, &names)?;
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
    let to_write: Vec<SplitData<'_>> = splits
        .iter()
        .map(|(split, data, _)| SplitData {
            name: split,
            images: data.images.view().into_dyn(),
            labels: Some(data.labels.view()),
        })
        .collect();
    let keys: Vec<String> = splits
        .iter()
        .flat_map(|(split, _, _)| ["images", "labels"].map(|k| format!("{split}_{k}")))
        .collect();
    let sources: Vec<(&str, SourceFile)> = keys
        .iter()
        .map(String::as_str)
        .zip(
            splits
                .iter()
                .flat_map(|(_, _, files)| files.iter().cloned()),
        )
        .collect();
    let record = DatasetRecord {
        name,
        class_names: &[],
        sources: &sources,
        attrs: &[],
    };
    write_dataset(out, &to_write, &record)?;
    tracing::info!(path = %out.display(), "wrote dataset {name}");
    check_dataset(out)
}

/// The class names recorded in a dataset file (attribute `class_names`, a JSON list), if any.
fn class_names_of(file: &hdf5::File, path: &Path) -> Result<Vec<String>> {
    if file.attr("class_names").is_err() {
        return Ok(Vec::new());
    }
    let json = get_str_attr(file, "class_names", path)?;
    serde_json::from_str(&json).map_err(|e| DataError::Layout {
        path: path.to_path_buf(),
        message: format!("attribute class_names is not a JSON list of strings: {e}"),
    })
}

/// Opens a dataset file and checks its layout: a `/train` split (and optionally `/test`) of uint8
/// images `[N, H, W]` or `[N, H, W, C]` of one size, labels `[N]` in every split or in none, the
/// `dataset` attribute, and complete source records (`KEY.file` with `.md5` and `.sha256`).
/// Returns what it holds. Errors name the file and what is wrong.
pub fn check_dataset(path: &Path) -> Result<DatasetSummary> {
    let file = h5images::open(path)?;
    let name = get_str_attr(&file, "dataset", path)?;
    let layout = |message: String| DataError::Layout {
        path: path.to_path_buf(),
        message,
    };
    let shape = |split| -> Result<Option<([usize; 4], bool)>> {
        Ok(h5images::split_shape(&file, path, split)?.map(|s| (s.nhwc, s.has_labels)))
    };
    let train =
        shape("train")?.ok_or_else(|| layout("missing dataset /train/images".to_string()))?;
    let test = shape("test")?;
    if let Some((t, labels)) = test {
        if t[1..] != train.0[1..] {
            return Err(layout(format!(
                "/test/images are {:?} but /train/images are {:?} (H, W, C)",
                &t[1..],
                &train.0[1..]
            )));
        }
        if labels != train.1 {
            return Err(layout(
                "only one of /train and /test has labels".to_string(),
            ));
        }
    }
    let mut sources = Vec::new();
    for key in SOURCE_KEYS {
        if file.attr(&format!("{key}.file")).is_ok() {
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
        n_train: train.0[0],
        n_test: test.map_or(0, |t| t.0[0]),
        image_hw: (train.0[1], train.0[2]),
        channels: train.0[3],
        has_labels: train.1,
        class_names: class_names_of(&file, path)?,
        sources,
    })
}

/// Loads one split (`train` or `test`) of an imported dataset into memory: grey images
/// `[N, H, W]` and labels `[N]` (through [`h5images::read_split`], whose errors name the file and
/// the dataset).
pub fn load_split(path: &Path, split: &str) -> Result<Split> {
    let (images, labels) = h5images::read_split(path, split)?;
    let labels = labels.ok_or_else(|| DataError::Layout {
        path: path.to_path_buf(),
        message: format!("/{split} has no labels"),
    })?;
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
