//! The CIFAR-10 importer on synthetic archives with the real layout: the file it writes, and the
//! bad-input cases of the IDX importer (wrong checksum, truncated archive, missing batch, wrong
//! record size), each named and leaving no partial or changed output.
use std::fs;
use std::path::{Path, PathBuf};

use ddpm_train::cifar10::{self, synthetic};
use ddpm_train::data::{self, Digests, Expected};
use ddpm_train::h5images;

fn write(dir: &Path, bytes: &[u8]) -> PathBuf {
    let path = dir.join(cifar10::ARCHIVE_NAME);
    fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn a_synthetic_archive_becomes_our_layout_with_class_names_and_its_digests() {
    let dir = tempfile::tempdir().unwrap();
    let builder = synthetic::Builder::new(3, 42);
    let bytes = builder.build();
    let archive = write(dir.path(), &bytes);
    let out = dir.path().join("cifar10.h5");
    let digests = Digests::of(&bytes);
    let expected = [Expected {
        file: cifar10::ARCHIVE_NAME.into(),
        digest: digests.md5.clone(),
    }];
    let s = cifar10::import_cifar10(&archive, &out, &expected).unwrap();
    assert_eq!((s.name.as_str(), s.n_train, s.n_test), ("cifar10", 15, 3));
    assert_eq!((s.image_hw, s.channels, s.has_labels), ((32, 32), 3, true));
    assert_eq!(s.class_names[0], "airplane");
    assert_eq!(s.class_names.len(), 10);
    assert_eq!(s.sources.len(), 1);
    assert_eq!(s.sources[0].digests, digests);
    let (train, labels) = h5images::read_split(&out, "train").unwrap();
    // Image 4 of the training set is image 1 of data_batch_2: its row byte c·1024 + y·32 + x.
    let batch2 = builder.batch_content(1);
    let row = &batch2.data[3072..2 * 3072];
    for (y, x, c) in [(0, 0, 0), (5, 17, 1), (31, 31, 2)] {
        assert_eq!(train[[4, y, x, c]], row[c * 1024 + y * 32 + x]);
    }
    assert_eq!(labels.unwrap()[4] as i64, batch2.labels[1]);
    let (test, _) = h5images::read_split(&out, "test").unwrap();
    assert_eq!(test.dim(), (3, 32, 32, 3));
}

fn assert_refused(archive: &Path, out: &Path, expected: &[Expected], needles: &[&str]) {
    let before = fs::read(out).ok();
    let err = cifar10::import_cifar10(archive, out, expected)
        .unwrap_err()
        .to_string();
    for n in needles {
        assert!(err.contains(n), "`{err}` lacks `{n}`");
    }
    assert_eq!(
        fs::read(out).ok(),
        before,
        "the output must be left as it was"
    );
    let names: Vec<_> = fs::read_dir(out.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(names.is_empty(), "temporary files left: {names:?}");
}

#[test]
fn bad_archives_are_named_and_leave_the_previous_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cifar10.h5");
    let good = synthetic::archive(2, 1);
    let archive = write(dir.path(), &good);
    cifar10::import_cifar10(&archive, &out, &[]).unwrap();

    let wrong = [Expected {
        file: cifar10::ARCHIVE_NAME.into(),
        digest: cifar10::ARCHIVE_MD5.into(),
    }];
    assert_refused(
        &archive,
        &out,
        &wrong,
        &["cifar-10-python.tar.gz", "md5 checksum mismatch"],
    );

    write(dir.path(), &good[..good.len() / 2]);
    assert_refused(
        &archive,
        &out,
        &[],
        &["cifar-10-python.tar.gz", "truncated"],
    );

    write(
        dir.path(),
        &synthetic::Builder::new(2, 1)
            .omit("cifar-10-batches-py/data_batch_3")
            .build(),
    );
    assert_refused(
        &archive,
        &out,
        &[],
        &["data_batch_3 is missing", "cifar-10-python.tar.gz"],
    );

    write(
        dir.path(),
        &synthetic::Builder::new(2, 1).row_len(3071).build(),
    );
    assert_refused(&archive, &out, &[], &["3071", "3072"]);

    // A digest for a file that is not read must not pass unnoticed.
    write(dir.path(), &good);
    let other = [Expected {
        file: "other.tar.gz".into(),
        digest: cifar10::ARCHIVE_MD5.into(),
    }];
    assert_refused(
        &archive,
        &out,
        &other,
        &["other.tar.gz", "not one of the files read"],
    );
    let by_path = [Expected {
        file: format!("some/dir/{}", cifar10::ARCHIVE_NAME),
        digest: cifar10::ARCHIVE_MD5.into(),
    }];
    assert_refused(&archive, &out, &by_path, &["md5 checksum mismatch"]);

    fs::remove_file(&archive).unwrap();
    assert_refused(&archive, &out, &[], &["cifar-10-python.tar.gz"]);
    assert!(
        data::check_dataset(&out).is_ok(),
        "the earlier import is intact"
    );
}
