//! CIFAR-10 (Krizhevsky 2009): the official python archive `cifar-10-python.tar.gz` converted to
//! our dataset layout (`/train` 50,000 and `/test` 10,000 RGB 32×32 images with labels, and the
//! ten class names). [`archive`] reads the archive, [`import_cifar10`] verifies and writes, and
//! [`synthetic`] builds small archives with the real layout for tests.
use std::path::Path;

use crate::data::{
    self, DataError, DatasetRecord, DatasetSummary, Digests, Expected, SourceFile, SplitData,
};

pub mod archive;
pub mod synthetic;

pub use archive::{ARCHIVE_MD5, ARCHIVE_NAME};

/// Imports the CIFAR-10 python archive at `archive_path` into the dataset file `out`.
///
/// The archive is checked against `expected` (entries for its file name; `cargo xtask fetch-data`
/// passes the published md5), read ([`archive::read_archive`]: five training batches in order,
/// the test batch, the class names), and written atomically with the archive's name, md5 and
/// sha256 recorded (`archive.file`, `archive.md5`, `archive.sha256`).
///
/// Errors name the archive (unreadable, wrong checksum, truncated or corrupt, a missing batch, a
/// wrong record size) or `out`; on any error `out` is left as it was.
pub fn import_cifar10(
    archive_path: &Path,
    out: &Path,
    expected: &[Expected],
) -> data::Result<DatasetSummary> {
    let bytes = std::fs::read(archive_path).map_err(|source| DataError::Io {
        path: archive_path.to_path_buf(),
        source,
    })?;
    let file_name = archive_path.file_name().map_or_else(
        || ARCHIVE_NAME.to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    data::check_expected_names(archive_path, expected, &[&file_name])?;
    let digests = Digests::of(&bytes);
    data::verify(archive_path, &digests, expected)?;
    let set = archive::read_archive(&bytes, archive_path)?;
    let splits = [
        SplitData {
            name: "train",
            images: set.train_images.view().into_dyn(),
            labels: Some(set.train_labels.view()),
        },
        SplitData {
            name: "test",
            images: set.test_images.view().into_dyn(),
            labels: Some(set.test_labels.view()),
        },
    ];
    let name = archive_path.file_name().map_or_else(
        || ARCHIVE_NAME.to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let sources = [("archive", SourceFile { name, digests })];
    let record = DatasetRecord {
        name: "cifar10",
        class_names: &set.class_names,
        sources: &sources,
        attrs: &[],
    };
    data::write_dataset(out, &splits, &record)?;
    tracing::info!(path = %out.display(), "wrote dataset cifar10");
    data::check_dataset(out)
}
