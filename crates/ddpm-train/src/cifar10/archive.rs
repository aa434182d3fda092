//! Reader for the official CIFAR-10 *python* archive, and a generator of
//! small synthetic archives with the same layout (for tests).
//!
//! # Format
//!
//! The archive `cifar-10-python.tar.gz` published at
//! <https://www.cs.toronto.edu/~kriz/cifar.html> is a gzipped tar holding
//! `cifar-10-batches-py/data_batch_1` … `data_batch_5` (training set, 10 000
//! images each), `cifar-10-batches-py/test_batch` (test set, 10 000 images),
//! `cifar-10-batches-py/batches.meta` and `readme.html`.
//!
//! Each batch is a Python 2 `cPickle` (protocol 2) of a dict with
//! `'batch_label'` (str), `'labels'` (list of ints in 0..=9), `'data'` (a numpy
//! `uint8` array of shape `(N, 3072)`: each row holds the 1024 red, then 1024
//! green, then 1024 blue values of a 32×32 image, each plane in row-major
//! order) and `'filenames'` (list of str). `batches.meta` is a dict with
//! `'label_names'` (10 str), `'num_cases_per_batch'` and `'num_vis'` (3072).
//!
//! Pickles are decoded with `serde-pickle`, which accepts both Python 2
//! pickles (byte-string keys, `SHORT_BINSTRING`/`BINSTRING`) and Python 3
//! protocol-2 pickles (`BINUNICODE` keys, bytes as `_codecs.encode(s,
//! 'latin1')`, `numpy._core.multiarray` globals).
//!
//! # How the numpy array is recognised
//!
//! A pickled ndarray is `_reconstruct(ndarray, (0,), 'b')` followed by a
//! `BUILD` with the state `(1, shape, dtype, is_fortran, raw_bytes)`.
//! serde-pickle cannot call numpy, so with `replace_unresolved_globals` the
//! `REDUCE` yields an opaque stand-in that `BUILD` replaces by its state: the
//! array arrives as that state tuple, and the dtype arrives as the dtype's own
//! `BUILD` state `(3, '|', None, …)`, without its type code `'u1'` (a `REDUCE`
//! argument that serde-pickle drops). The reader therefore accepts the array
//! as `uint8` when `raw_bytes` holds exactly one byte per element of `shape`
//! (this rules out every multi-byte dtype; `int8`/`bool` would pass too, but
//! CIFAR-10 never uses them) and `is_fortran` is false.

#![warn(missing_docs)]

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;
use ndarray::{s, Array1, Array4, Axis};
use serde_pickle::{DeOptions, HashableValue, Value};
use thiserror::Error;

/// File name of the archive as published by the dataset authors.
pub const ARCHIVE_NAME: &str = "cifar-10-python.tar.gz";
/// MD5 of [`ARCHIVE_NAME`] as published by the authors (and used by
/// torchvision); callers with an MD5 implementation can verify downloads.
pub const ARCHIVE_MD5: &str = "c58f30108f718f92721af3b95e74349a";
/// Tar members of the five training batches, in training-set order.
pub const TRAIN_MEMBERS: [&str; 5] = [
    "cifar-10-batches-py/data_batch_1",
    "cifar-10-batches-py/data_batch_2",
    "cifar-10-batches-py/data_batch_3",
    "cifar-10-batches-py/data_batch_4",
    "cifar-10-batches-py/data_batch_5",
];
/// Tar member of the test batch.
pub const TEST_MEMBER: &str = "cifar-10-batches-py/test_batch";
/// Tar member holding the class names.
pub const META_MEMBER: &str = "cifar-10-batches-py/batches.meta";
/// The class names stored in `batches.meta` of the published archive.
pub const CLASS_NAMES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];
/// Image height and width in pixels.
pub const SIDE: usize = 32;
/// Colour channels (red, green, blue).
pub const CHANNELS: usize = 3;
/// Bytes in one `data` row: 32 × 32 × 3.
pub const ROW_LEN: usize = SIDE * SIDE * CHANNELS;
/// Number of classes; labels lie in `0..NUM_CLASSES`.
pub const NUM_CLASSES: usize = 10;

/// The whole dataset, converted to arrays.
#[derive(Debug, Clone, PartialEq)]
pub struct Cifar10 {
    /// Training images, shape `[N, 32, 32, 3]` (NHWC, RGB), `data_batch_1`
    /// to `data_batch_5` concatenated in that order (N = 50 000 in the real
    /// archive).
    pub train_images: Array4<u8>,
    /// Training labels in `0..10`, shape `[N]`, aligned with `train_images`.
    pub train_labels: Array1<u8>,
    /// Test images from `test_batch`, shape `[M, 32, 32, 3]` (M = 10 000).
    pub test_images: Array4<u8>,
    /// Test labels in `0..10`, shape `[M]`.
    pub test_labels: Array1<u8>,
    /// The 10 class names from `batches.meta`, indexed by label.
    pub class_names: Vec<String>,
}

/// One decoded batch pickle.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Images, shape `[N, 32, 32, 3]` (NHWC, RGB): pixel `(n, y, x, c)` is
    /// byte `c*1024 + y*32 + x` of row `n` of the pickled `data`.
    pub images: Array4<u8>,
    /// Labels in `0..10`, shape `[N]`.
    pub labels: Array1<u8>,
}

/// Why an archive could not be read. Every message names the archive path
/// and, where one is involved, the tar member.
#[derive(Debug, Error)]
pub enum CifarError {
    /// The gzip or tar layer is corrupt or truncated.
    #[error("{} is corrupt or truncated (gzip/tar): {source}", .path.display())]
    Archive {
        /// Archive path.
        path: PathBuf,
        /// Underlying decoder error.
        source: io::Error,
    },
    /// A required member is not in the tar.
    #[error("{member} is missing from {}", .path.display())]
    MissingMember {
        /// Archive path.
        path: PathBuf,
        /// Missing tar member.
        member: String,
    },
    /// A member is not a pickle serde-pickle can decode.
    #[error("{}: {member} is not a readable pickle: {source}", .path.display())]
    Pickle {
        /// Archive path.
        path: PathBuf,
        /// Tar member.
        member: String,
        /// Decoder error.
        source: serde_pickle::Error,
    },
    /// The pickle decodes but does not have the CIFAR-10 structure.
    #[error("{}: {member}: unexpected pickle content at '{key}': {what}", .path.display())]
    Content {
        /// Archive path.
        path: PathBuf,
        /// Tar member.
        member: String,
        /// Dict key concerned (`<top level>` for the pickle itself).
        key: String,
        /// What is wrong.
        what: String,
    },
    /// `data` rows are not 3072 bytes long.
    #[error("{}: {member}: data has rows of {got} bytes, expected 3072 (32×32×3)", .path.display())]
    RowSize {
        /// Archive path.
        path: PathBuf,
        /// Tar member.
        member: String,
        /// Row length found.
        got: usize,
    },
    /// `labels` and `data` disagree on the number of images.
    #[error("{}: {member}: {labels} labels but data has {rows} rows", .path.display())]
    CountMismatch {
        /// Archive path.
        path: PathBuf,
        /// Tar member.
        member: String,
        /// Number of labels.
        labels: usize,
        /// Number of data rows.
        rows: usize,
    },
    /// A label is not in `0..10`.
    #[error("{}: {member}: label {value} at index {index} is out of range 0..=9", .path.display())]
    LabelRange {
        /// Archive path.
        path: PathBuf,
        /// Tar member.
        member: String,
        /// Position in `labels`.
        index: usize,
        /// Offending value.
        value: String,
    },
    /// `label_names` is not a list of 10 strings.
    #[error("{}: {member}: label_names must be a list of 10 strings, but {what}", .path.display())]
    ClassNames {
        /// Archive path.
        path: PathBuf,
        /// Tar member.
        member: String,
        /// What was found instead.
        what: String,
    },
}

/// Where a value comes from, for error messages.
#[derive(Clone, Copy)]
struct Ctx<'a> {
    path: &'a Path,
    member: &'a str,
}

impl Ctx<'_> {
    fn content(self, key: &str, what: impl Into<String>) -> CifarError {
        CifarError::Content {
            path: self.path.to_path_buf(),
            member: self.member.to_string(),
            key: key.to_string(),
            what: what.into(),
        }
    }

    fn class_names(self, what: String) -> CifarError {
        CifarError::ClassNames {
            path: self.path.to_path_buf(),
            member: self.member.to_string(),
            what,
        }
    }
}

/// Reads the bytes of a `cifar-10-python.tar.gz` archive into arrays.
///
/// `path` is used only in error messages. Members are looked up by name
/// (`cifar-10-batches-py/…`, a leading `./` is tolerated) in any order;
/// other members are ignored. The whole gzip stream is read, so its CRC is
/// checked.
///
/// # Errors
/// [`CifarError::Archive`] for a corrupt or truncated gzip/tar stream,
/// [`CifarError::MissingMember`] when a batch or `batches.meta` is absent, and
/// the errors of [`parse_batch`] (and their `batches.meta` counterparts:
/// `num_vis` ≠ 3072, `label_names` not 10 strings) for bad members.
pub fn read_archive(bytes: &[u8], path: &Path) -> Result<Cifar10, CifarError> {
    let mut members = read_members(bytes, path)?;
    let mut take = |member: &str| {
        members
            .remove(member)
            .ok_or_else(|| CifarError::MissingMember {
                path: path.to_path_buf(),
                member: member.to_string(),
            })
    };
    let train_raw = TRAIN_MEMBERS
        .iter()
        .map(|m| take(m))
        .collect::<Result<Vec<_>, _>>()?;
    let test_raw = take(TEST_MEMBER)?;
    let meta_raw = take(META_MEMBER)?;

    let class_names = parse_meta(&meta_raw, path, META_MEMBER)?;
    let train = train_raw
        .into_iter()
        .zip(TRAIN_MEMBERS)
        .map(|(raw, member)| parse_batch(&raw, path, member))
        .collect::<Result<Vec<_>, _>>()?;
    let test = parse_batch(&test_raw, path, TEST_MEMBER)?;
    let (train_images, train_labels) = concat_batches(&train);
    Ok(Cifar10 {
        train_images,
        train_labels,
        test_images: test.images,
        test_labels: test.labels,
        class_names,
    })
}

/// Decompresses the archive and returns the contents of the members the
/// reader needs, keyed by member name.
fn read_members(bytes: &[u8], path: &Path) -> Result<HashMap<String, Vec<u8>>, CifarError> {
    let wanted: Vec<&str> = TRAIN_MEMBERS
        .iter()
        .copied()
        .chain([TEST_MEMBER, META_MEMBER])
        .collect();
    let corrupt = |source: io::Error| CifarError::Archive {
        path: path.to_path_buf(),
        source,
    };
    let mut archive = tar::Archive::new(GzDecoder::new(bytes));
    let mut found = HashMap::new();
    for entry in archive.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry
            .path()
            .map_err(corrupt)?
            .to_string_lossy()
            .into_owned();
        let name = name.trim_start_matches("./");
        if !wanted.contains(&name) {
            continue;
        }
        let size = entry.size();
        let mut data = Vec::with_capacity(size.min(1 << 26) as usize);
        entry.read_to_end(&mut data).map_err(corrupt)?;
        if data.len() as u64 != size {
            let what = format!("{name} ends after {} of {size} bytes", data.len());
            return Err(corrupt(io::Error::new(io::ErrorKind::UnexpectedEof, what)));
        }
        found.insert(name.to_string(), data);
    }
    // Read the tar padding and the gzip trailer too, so that truncation
    // and CRC errors after the last member are reported.
    io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(corrupt)?;
    Ok(found)
}

/// Decodes one batch pickle (`data_batch_*` or `test_batch`), produced by
/// Python 2 `cPickle` or Python 3 `pickle` (protocol 2).
///
/// `path` and `member` are used only in error messages. Only `data` and
/// `labels` are read; `batch_label` and `filenames` are ignored.
///
/// # Errors
/// [`CifarError::Pickle`] if `bytes` is not a pickle;
/// [`CifarError::Content`] if it is not a dict, a key is missing, or `data`
/// is not a C-order 2-D array with one byte per element;
/// [`CifarError::RowSize`] if rows are not 3072 bytes;
/// [`CifarError::LabelRange`] for a label outside `0..10`;
/// [`CifarError::CountMismatch`] if labels and rows differ in number.
pub fn parse_batch(bytes: &[u8], path: &Path, member: &str) -> Result<Batch, CifarError> {
    let ctx = Ctx { path, member };
    let mut dict = load_dict(bytes, ctx)?;
    let (rows, raw) = parse_data(take_key(&mut dict, "data", ctx)?, ctx)?;
    let labels = parse_labels(take_key(&mut dict, "labels", ctx)?, ctx)?;
    if labels.len() != rows {
        return Err(CifarError::CountMismatch {
            path: path.to_path_buf(),
            member: member.to_string(),
            labels: labels.len(),
            rows,
        });
    }
    let planar = Array4::from_shape_vec((rows, CHANNELS, SIDE, SIDE), raw)
        .map_err(|e| ctx.content("data", e.to_string()))?;
    let images = planar
        .permuted_axes([0, 2, 3, 1])
        .as_standard_layout()
        .into_owned();
    Ok(Batch {
        images,
        labels: Array1::from(labels),
    })
}

/// Decodes `batches.meta`: checks `num_vis` and returns `label_names`.
fn parse_meta(bytes: &[u8], path: &Path, member: &str) -> Result<Vec<String>, CifarError> {
    let ctx = Ctx { path, member };
    let mut dict = load_dict(bytes, ctx)?;
    match take_key(&mut dict, "num_vis", ctx)? {
        Value::I64(n) if n == ROW_LEN as i64 => {}
        Value::I64(n) => {
            return Err(ctx.content(
                "num_vis",
                format!("num_vis is {n}, expected 3072 (32×32×3)"),
            ));
        }
        other => {
            return Err(ctx.content(
                "num_vis",
                format!("expected an int, found {}", kind(&other)),
            ));
        }
    }
    let items = match take_key(&mut dict, "label_names", ctx)? {
        Value::List(items) | Value::Tuple(items) => items,
        other => return Err(ctx.class_names(format!("found {}", kind(&other)))),
    };
    if items.len() != NUM_CLASSES {
        return Err(ctx.class_names(format!("found {} items", items.len())));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::String(s) => Ok(s),
            Value::Bytes(b) => {
                String::from_utf8(b).map_err(|_| ctx.class_names(format!("item {i} is not UTF-8")))
            }
            other => Err(ctx.class_names(format!("item {i} is {}", kind(&other)))),
        })
        .collect()
}

/// Unpickles `bytes` and requires a dict at the top level.
fn load_dict(bytes: &[u8], ctx: Ctx) -> Result<BTreeMap<HashableValue, Value>, CifarError> {
    let options = DeOptions::new().replace_unresolved_globals();
    let value =
        serde_pickle::value_from_slice(bytes, options).map_err(|source| CifarError::Pickle {
            path: ctx.path.to_path_buf(),
            member: ctx.member.to_string(),
            source,
        })?;
    match value {
        Value::Dict(dict) => Ok(dict),
        other => Err(ctx.content(
            "<top level>",
            format!("expected a dict, found {}", kind(&other)),
        )),
    }
}

/// Removes `key` from a pickled dict; Python 2 keys are byte strings,
/// Python 3 keys are str, both are accepted.
fn take_key(
    dict: &mut BTreeMap<HashableValue, Value>,
    key: &str,
    ctx: Ctx,
) -> Result<Value, CifarError> {
    dict.remove(&HashableValue::Bytes(key.as_bytes().to_vec()))
        .or_else(|| dict.remove(&HashableValue::String(key.to_string())))
        .ok_or_else(|| ctx.content(key, "key is missing"))
}

/// Interprets the ndarray state tuple `(1, shape, dtype, is_fortran, bytes)`
/// (see the module docs) and returns `(rows, row-major bytes)`.
fn parse_data(value: Value, ctx: Ctx) -> Result<(usize, Vec<u8>), CifarError> {
    let bad = |what: String| ctx.content("data", what);
    let mut state = match value {
        Value::Tuple(state) => state,
        other => {
            return Err(bad(format!(
                "expected a numpy array, found {}",
                kind(&other)
            )));
        }
    };
    let fields = state.len();
    if fields == 5 {
        state.remove(0); // pickle-state version, 1
    }
    let [shape, _dtype, fortran, raw] = <[Value; 4]>::try_from(state).map_err(|_| {
        bad(format!(
            "array state has {fields} fields, expected (1, shape, dtype, is_fortran, bytes)"
        ))
    })?;
    let shape = match shape {
        Value::Tuple(dims) => dims
            .into_iter()
            .map(|d| match d {
                Value::I64(d) => usize::try_from(d).ok(),
                _ => None,
            })
            .collect::<Option<Vec<usize>>>(),
        _ => None,
    }
    .ok_or_else(|| bad("array shape is not a tuple of non-negative ints".into()))?;
    match fortran {
        Value::Bool(false) | Value::I64(0) => {}
        Value::Bool(true) | Value::I64(_) => return Err(bad("array is in Fortran order".into())),
        other => return Err(bad(format!("is_fortran is {}", kind(&other)))),
    }
    let Value::Bytes(raw) = raw else {
        return Err(bad(format!(
            "array buffer is {}, expected bytes",
            kind(&raw)
        )));
    };
    let [rows, cols] = shape[..] else {
        return Err(bad(format!(
            "array has shape {shape:?}, expected (N, 3072)"
        )));
    };
    if rows.checked_mul(cols) != Some(raw.len()) {
        return Err(bad(format!(
            "array buffer has {} bytes for shape ({rows}, {cols}): not 1 byte per element (uint8)",
            raw.len()
        )));
    }
    if cols != ROW_LEN {
        return Err(CifarError::RowSize {
            path: ctx.path.to_path_buf(),
            member: ctx.member.to_string(),
            got: cols,
        });
    }
    Ok((rows, raw))
}

/// Reads `labels`: a list of ints, each in `0..10`.
fn parse_labels(value: Value, ctx: Ctx) -> Result<Vec<u8>, CifarError> {
    let items = match value {
        Value::List(items) | Value::Tuple(items) => items,
        other => {
            return Err(ctx.content("labels", format!("expected a list, found {}", kind(&other))));
        }
    };
    let out_of_range = |index: usize, value: String| CifarError::LabelRange {
        path: ctx.path.to_path_buf(),
        member: ctx.member.to_string(),
        index,
        value,
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::I64(v) => u8::try_from(v)
                .ok()
                .filter(|&l| usize::from(l) < NUM_CLASSES)
                .ok_or_else(|| out_of_range(i, v.to_string())),
            Value::Int(v) => Err(out_of_range(i, v.to_string())),
            other => Err(ctx.content(
                "labels",
                format!("item {i} is {}, expected an int", kind(&other)),
            )),
        })
        .collect()
}

/// Concatenates batches along the image axis.
fn concat_batches(batches: &[Batch]) -> (Array4<u8>, Array1<u8>) {
    let total = batches.iter().map(|b| b.images.len_of(Axis(0))).sum();
    let mut images = Array4::zeros((total, SIDE, SIDE, CHANNELS));
    let mut labels = Vec::with_capacity(total);
    let mut start = 0;
    for batch in batches {
        let n = batch.images.len_of(Axis(0));
        images
            .slice_mut(s![start..start + n, .., .., ..])
            .assign(&batch.images);
        labels.extend(batch.labels.iter().copied());
        start += n;
    }
    (images, Array1::from(labels))
}

/// A short description of a pickled value's type, for error messages.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::None => "None",
        Value::Bool(_) => "a bool",
        Value::I64(_) | Value::Int(_) => "an int",
        Value::F64(_) => "a float",
        Value::Bytes(_) => "a byte string",
        Value::String(_) => "a str",
        Value::List(_) => "a list",
        Value::Tuple(_) => "a tuple",
        Value::Set(_) | Value::FrozenSet(_) => "a set",
        Value::Dict(_) => "a dict",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cifar10::synthetic::{self, cpickle2, BatchContent, Builder, Py2};
    use ndarray::{ArrayView1, ArrayView4};

    const PATH: &str = "/data/cifar-10-python.tar.gz";
    const PY3_FIXTURE: &[u8] =
        include_bytes!("../../tests/fixtures/cifar10/cifar_batch_py3_protocol2.pkl");
    const PY2_FIXTURE: &[u8] =
        include_bytes!("../../tests/fixtures/cifar10/cifar_batch_py2_cpickle.pkl");

    fn read(bytes: &[u8]) -> Result<Cifar10, CifarError> {
        read_archive(bytes, Path::new(PATH))
    }

    fn error_of(bytes: &[u8]) -> String {
        match read(bytes) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    fn assert_contains(message: &str, parts: &[&str]) {
        for part in parts {
            assert!(message.contains(part), "{message:?} lacks {part:?}");
        }
    }

    fn assert_batch(images: ArrayView4<u8>, labels: ArrayView1<u8>, content: &BatchContent) {
        assert_eq!(images.dim(), (content.rows, 32, 32, 3));
        for ((n, y, x, c), &v) in images.indexed_iter() {
            assert_eq!(v, content.data[n * 3072 + c * 1024 + y * 32 + x]);
        }
        let expected: Vec<u8> = content.labels.iter().map(|&l| l as u8).collect();
        assert_eq!(labels.to_vec(), expected);
    }

    fn text(s: &str) -> Py2 {
        Py2::Str(s.as_bytes().to_vec())
    }

    #[test]
    fn synthetic_round_trip() {
        let builder = Builder::new(4, 7);
        let cifar = read(&builder.build()).unwrap();
        assert_eq!(cifar.train_images.dim(), (20, 32, 32, 3));
        assert_eq!(cifar.train_labels.len(), 20);
        for k in 0..5 {
            let rows = 4 * k..4 * k + 4;
            assert_batch(
                cifar.train_images.slice(s![rows.clone(), .., .., ..]),
                cifar.train_labels.slice(s![rows]),
                &builder.batch_content(k),
            );
        }
        let test = builder.batch_content(5);
        assert_batch(cifar.test_images.view(), cifar.test_labels.view(), &test);
        // Spot check of the layout: pixel (n, y, x, c) = row byte c*1024 + y*32 + x.
        assert_eq!(
            cifar.test_images[[1, 2, 5, 2]],
            test.data[3072 + 2 * 1024 + 2 * 32 + 5]
        );
        assert_eq!(cifar.class_names, CLASS_NAMES);
        assert_ne!(builder.batch_content(0).data, builder.batch_content(1).data);
        assert_eq!(synthetic::archive(4, 7), builder.build());
        assert_ne!(synthetic::archive(4, 8), builder.build());
    }

    #[test]
    fn empty_batches_give_empty_arrays() {
        let cifar = read(&synthetic::archive(0, 1)).unwrap();
        assert_eq!(cifar.train_images.dim(), (0, 32, 32, 3));
        assert_eq!(cifar.test_labels.len(), 0);
    }

    #[test]
    fn member_order_and_unrelated_members_do_not_matter() {
        let plain = read(&synthetic::archive(3, 11)).unwrap();
        let shuffled = Builder::new(3, 11)
            .reversed()
            .extra("cifar-10-batches-py/data_batch_6", b"junk".to_vec())
            .extra("other/data_batch_1", b"junk".to_vec())
            .extra("notes.txt", Vec::new());
        assert_eq!(read(&shuffled.build()).unwrap(), plain);
        // A leading "./" on member names is accepted.
        let test_batch = cpickle2(&Builder::new(3, 11).batch_content(5).to_py2());
        let dotted = Builder::new(3, 11)
            .omit(TEST_MEMBER)
            .extra(&format!("./{TEST_MEMBER}"), test_batch);
        assert_eq!(read(&dotted.build()).unwrap(), plain);
    }

    #[test]
    fn large_batch_pickle_uses_long_memo_and_batched_appends() {
        // 1001 rows: filenames need LONG_BINPUT, lists end with a 1-item APPEND.
        let content = Builder::new(1001, 3).batch_content(2);
        let batch = parse_batch(&cpickle2(&content.to_py2()), Path::new(PATH), "big").unwrap();
        assert_batch(batch.images.view(), batch.labels.view(), &content);
    }

    #[test]
    fn missing_members_are_named() {
        for member in TRAIN_MEMBERS.iter().chain(&[TEST_MEMBER, META_MEMBER]) {
            let message = error_of(&Builder::new(2, 1).omit(member).build());
            assert_eq!(message, format!("{member} is missing from {PATH}"));
        }
    }

    #[test]
    fn wrong_row_size_is_reported() {
        let message = error_of(&Builder::new(2, 1).row_len(3071).build());
        assert_contains(
            &message,
            &[
                PATH,
                TRAIN_MEMBERS[0],
                "data has rows of 3071 bytes, expected 3072 (32×32×3)",
            ],
        );
    }

    #[test]
    fn label_count_mismatch_is_reported() {
        let message = error_of(&Builder::new(2, 1).label_count(3).build());
        assert_contains(
            &message,
            &[PATH, TRAIN_MEMBERS[0], "3 labels but data has 2 rows"],
        );
    }

    #[test]
    fn out_of_range_labels_are_reported() {
        for (label, shown) in [
            (10, "label 10 "),
            (-1, "label -1 "),
            (1 << 40, "label 1099511627776 "),
        ] {
            let message = error_of(&Builder::new(2, 1).first_label(label).build());
            assert_contains(
                &message,
                &[
                    PATH,
                    TRAIN_MEMBERS[0],
                    shown,
                    "at index 0 is out of range 0..=9",
                ],
            );
        }
    }

    #[test]
    fn wrong_num_vis_is_reported() {
        let message = error_of(&Builder::new(2, 1).num_vis(3071).build());
        assert_contains(
            &message,
            &[
                PATH,
                META_MEMBER,
                "'num_vis'",
                "num_vis is 3071, expected 3072",
            ],
        );
    }

    #[test]
    fn bad_label_names_are_reported() {
        let message = error_of(&Builder::new(2, 1).label_names(&CLASS_NAMES[..9]).build());
        assert_contains(
            &message,
            &[
                PATH,
                META_MEMBER,
                "label_names must be a list of 10 strings",
                "found 9 items",
            ],
        );
        let meta = Py2::Dict(vec![
            (text("num_vis"), Py2::Int(3072)),
            (
                text("label_names"),
                Py2::List((0..10).map(Py2::Int).collect()),
            ),
        ]);
        let message = error_of(
            &Builder::new(2, 1)
                .replace(META_MEMBER, cpickle2(&meta))
                .build(),
        );
        assert_contains(
            &message,
            &[PATH, META_MEMBER, "label_names", "item 0 is an int"],
        );
    }

    #[test]
    fn non_pickle_member_is_reported() {
        let builder =
            Builder::new(2, 1).replace(TRAIN_MEMBERS[1], b"this is not a pickle".to_vec());
        let message = error_of(&builder.build());
        assert_contains(
            &message,
            &[PATH, TRAIN_MEMBERS[1], "is not a readable pickle"],
        );
    }

    #[test]
    fn unexpected_pickle_content_names_member_and_key() {
        let labels = || (text("labels"), Py2::List(vec![Py2::Int(1), Py2::Int(2)]));
        let matrix = |len: usize| Py2::U8Matrix {
            rows: 2,
            cols: 3072,
            data: vec![0; len],
        };
        let cases = [
            (
                Py2::List(vec![]),
                "'<top level>': expected a dict, found a list",
            ),
            (Py2::Dict(vec![labels()]), "'data': key is missing"),
            (
                Py2::Dict(vec![labels(), (text("data"), Py2::List(vec![]))]),
                "'data': expected a numpy array, found a list",
            ),
            (
                Py2::Dict(vec![labels(), (text("data"), matrix(3072))]),
                "3072 bytes for shape (2, 3072): not 1 byte per element",
            ),
            (
                Py2::Dict(vec![
                    (text("labels"), Py2::Int(1)),
                    (text("data"), matrix(6144)),
                ]),
                "'labels': expected a list, found an int",
            ),
        ];
        for (value, expected) in cases {
            let builder = Builder::new(2, 1).replace(TEST_MEMBER, cpickle2(&value));
            assert_contains(&error_of(&builder.build()), &[PATH, TEST_MEMBER, expected]);
        }
    }

    #[test]
    fn fortran_order_array_is_rejected() {
        let mut pickle = cpickle2(&Builder::new(2, 1).batch_content(0).to_py2());
        // The is_fortran flag follows the dtype's (TUPLE, BUILD).
        let at = pickle
            .windows(3)
            .position(|w| w == [b't', b'b', 0x89])
            .unwrap();
        pickle[at + 2] = 0x88; // NEWTRUE
        let error = parse_batch(&pickle, Path::new(PATH), TRAIN_MEMBERS[0]).unwrap_err();
        assert_contains(
            &error.to_string(),
            &[PATH, TRAIN_MEMBERS[0], "'data'", "Fortran order"],
        );
    }

    #[test]
    fn truncated_or_corrupt_archive_is_an_error() {
        let archive = synthetic::archive(3, 5);
        let n = archive.len();
        for cut in [0, 1, 10, 18, n / 4, n / 2, 3 * n / 4, n - 9, n - 4, n - 1] {
            let message = error_of(&archive[..cut]);
            assert_contains(&message, &[PATH, "corrupt or truncated"]);
        }
        let mut flipped = archive.clone();
        flipped[n / 2] ^= 0x55;
        assert_contains(&error_of(&flipped), &[PATH, "corrupt or truncated"]);
        assert_contains(
            &error_of(b"PK\x03\x04 not a gzip file"),
            &[PATH, "corrupt or truncated"],
        );
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &[b'A'; 2048]).unwrap();
        assert_contains(
            &error_of(&gz.finish().unwrap()),
            &[PATH, "corrupt or truncated"],
        );
    }

    /// The batch written by `fixtures/make_cifar_fixture.py`.
    fn fixture_content() -> BatchContent {
        BatchContent {
            batch_label: "fixture batch 1 of 1".into(),
            labels: vec![3, 0, 9],
            rows: 3,
            row_len: 3072,
            data: (0..3 * 3072)
                .map(|i| ((i / 3072) * 101 + (i % 3072) * 7) as u8)
                .collect(),
            filenames: (0..3).map(|i| format!("fixture_{i:06}.png")).collect(),
        }
    }

    #[test]
    fn python3_protocol2_fixture_parses() {
        let batch = parse_batch(PY3_FIXTURE, Path::new("fixture.pkl"), "py3").unwrap();
        assert_eq!(batch.labels.to_vec(), vec![3, 0, 9]);
        assert_eq!(batch.images.dim(), (3, 32, 32, 3));
        for ((n, y, x, c), &v) in batch.images.indexed_iter() {
            assert_eq!(
                usize::from(v),
                (n * 101 + (c * 1024 + y * 32 + x) * 7) % 256
            );
        }
    }

    #[test]
    fn synthetic_writer_matches_cpickle_and_numpy() {
        let content = fixture_content();
        // Python 2.7's dict iterates these four keys as data, labels,
        // batch_label, filenames; apart from that order the bytes must match.
        let Py2::Dict(mut pairs) = content.to_py2() else {
            unreachable!()
        };
        pairs.swap(0, 2);
        assert_eq!(cpickle2(&Py2::Dict(pairs)), PY2_FIXTURE);

        let path = Path::new("fixture.pkl");
        let ours = parse_batch(&cpickle2(&content.to_py2()), path, "synthetic").unwrap();
        assert_eq!(parse_batch(PY2_FIXTURE, path, "py2").unwrap(), ours);
        assert_eq!(parse_batch(PY3_FIXTURE, path, "py3").unwrap(), ours);
        assert_batch(ours.images.view(), ours.labels.view(), &content);
    }
}
