//! IDX → HDF5 import: a valid synthetic dataset round-trips, and every kind of bad input fails
//! with an error naming the file and the problem, leaving no output file behind.
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use ddpm_train::data::{self, encode_idx, Digests, Expected, IDX_FILES};
use ndarray::Array1;

/// Gzip-compresses bytes.
fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// Writes a synthetic 4-file dataset (n_train, n_test images of h×w) into `dir`.
fn write_dataset(dir: &Path, n_train: usize, n_test: usize, h: usize, w: usize) {
    for (split, images, labels) in IDX_FILES {
        let n = if split == "train" { n_train } else { n_test };
        let pixels = Array1::from_iter((0..n * h * w).map(|i| (i * 7 % 256) as u8));
        let labs = Array1::from_iter((0..n).map(|i| (i % 10) as u8));
        fs::write(dir.join(images), gz(&encode_idx(&[n, h, w], pixels.view()))).unwrap();
        fs::write(dir.join(labels), gz(&encode_idx(&[n], labs.view()))).unwrap();
    }
}

fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("raw");
    fs::create_dir_all(&raw).unwrap();
    write_dataset(&raw, 12, 5, 4, 3);
    let out = dir.path().join("out/toy.h5");
    (dir, raw, out)
}

/// Asserts the import fails, the message contains every needle, and nothing is left in out's folder.
fn assert_fails(raw: &Path, out: &Path, expected: &[Expected], needles: &[&str]) {
    let err = data::import_idx_dataset("toy", raw, out, expected)
        .unwrap_err()
        .to_string();
    for n in needles {
        assert!(err.contains(n), "error `{err}` should mention `{n}`");
    }
    assert!(
        !out.exists(),
        "{} must not exist after a failed import",
        out.display()
    );
    if let Some(dir) = out.parent().filter(|d| d.exists()) {
        let left: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "temporary files left behind: {left:?}");
    }
}

#[test]
fn valid_dataset_round_trips_byte_for_byte() {
    let (_dir, raw, out) = setup();
    let md5 = Digests::of(&fs::read(raw.join(IDX_FILES[0].1)).unwrap()).md5;
    let expected = vec![Expected {
        file: IDX_FILES[0].1.to_string(),
        digest: md5.clone(),
    }];
    let s = data::import_idx_dataset("toy", &raw, &out, &expected).unwrap();
    assert_eq!(
        (s.name.as_str(), s.n_train, s.n_test, s.image_hw),
        ("toy", 12, 5, (4, 3))
    );
    assert_eq!(s.sources.len(), 4);
    assert_eq!(s.sources[0].name, IDX_FILES[0].1);
    assert_eq!(s.sources[0].digests.md5, md5);
    let train = data::load_split(&out, "train").unwrap();
    assert_eq!(train.images.shape(), &[12, 4, 3]);
    let want: Vec<u8> = (0..12 * 4 * 3).map(|i| (i * 7 % 256) as u8).collect();
    assert_eq!(train.images.iter().copied().collect::<Vec<_>>(), want);
    assert_eq!(
        train.labels.to_vec(),
        (0..12).map(|i| (i % 10) as u8).collect::<Vec<_>>()
    );
    assert_eq!(data::load_split(&out, "test").unwrap().len(), 5);
    let err = data::load_split(&out, "valid").unwrap_err().to_string();
    assert!(err.contains("/valid/images"), "{err}");
}

#[test]
fn wrong_checksum_names_file_and_digests() {
    let (_dir, raw, out) = setup();
    let bad = "0".repeat(64);
    let expected = vec![Expected {
        file: IDX_FILES[1].2.to_string(),
        digest: bad.clone(),
    }];
    assert_fails(
        &raw,
        &out,
        &expected,
        &[IDX_FILES[1].2, "sha256 checksum mismatch", &bad],
    );
    let expected = vec![Expected {
        file: IDX_FILES[0].1.to_string(),
        digest: "f".repeat(32),
    }];
    assert_fails(
        &raw,
        &out,
        &expected,
        &[IDX_FILES[0].1, "md5 checksum mismatch"],
    );
}

#[test]
fn truncated_gzip_is_reported() {
    let (_dir, raw, out) = setup();
    let path = raw.join(IDX_FILES[1].1);
    let bytes = fs::read(&path).unwrap();
    fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    assert_fails(
        &raw,
        &out,
        &[],
        &[IDX_FILES[1].1, "corrupt or truncated gzip"],
    );
}

#[test]
fn corrupt_gzip_crc_is_reported() {
    let (_dir, raw, out) = setup();
    let path = raw.join(IDX_FILES[0].2);
    let mut bytes = fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n - 6] ^= 0xff; // inside the CRC32 trailer
    fs::write(&path, &bytes).unwrap();
    assert_fails(&raw, &out, &[], &[IDX_FILES[0].2, "gzip"]);
}

#[test]
fn bad_idx_magic_is_reported() {
    let (_dir, raw, out) = setup();
    let mut idx = encode_idx(&[12, 4, 3], Array1::zeros(144).view());
    idx[2] = 0x0d; // float instead of unsigned byte
    fs::write(raw.join(IDX_FILES[0].1), gz(&idx)).unwrap();
    assert_fails(&raw, &out, &[], &[IDX_FILES[0].1, "element type 0x0d"]);
    idx[0] = 0x12;
    fs::write(raw.join(IDX_FILES[0].1), gz(&idx)).unwrap();
    assert_fails(&raw, &out, &[], &[IDX_FILES[0].1, "bad magic"]);
}

#[test]
fn bad_idx_dimensions_are_reported() {
    let (_dir, raw, out) = setup();
    // Header claims 12x4x3 but the payload is one byte short.
    let idx = encode_idx(&[12, 4, 3], Array1::zeros(143).view());
    fs::write(raw.join(IDX_FILES[0].1), gz(&idx)).unwrap();
    assert_fails(
        &raw,
        &out,
        &[],
        &[IDX_FILES[0].1, "need 144 data bytes, file has 143"],
    );
    // Images stored with 2 dimensions.
    let idx = encode_idx(&[12, 12], Array1::zeros(144).view());
    fs::write(raw.join(IDX_FILES[0].1), gz(&idx)).unwrap();
    assert_fails(&raw, &out, &[], &[IDX_FILES[0].1, "3 non-empty dimensions"]);
    // Test images of another size than the training images.
    write_dataset(&raw, 12, 5, 4, 3);
    let idx = encode_idx(&[5, 3, 4], Array1::zeros(60).view());
    fs::write(raw.join(IDX_FILES[1].1), gz(&idx)).unwrap();
    assert_fails(&raw, &out, &[], &[IDX_FILES[1].1, "train images are 4x3"]);
}

#[test]
fn label_count_mismatch_is_reported() {
    let (_dir, raw, out) = setup();
    let labs = Array1::from_iter((0..11).map(|i| i as u8));
    fs::write(
        raw.join(IDX_FILES[0].2),
        gz(&encode_idx(&[11], labs.view())),
    )
    .unwrap();
    assert_fails(
        &raw,
        &out,
        &[],
        &[IDX_FILES[0].1, "12 images", IDX_FILES[0].2, "11 labels"],
    );
}

#[test]
fn missing_file_is_reported() {
    let (_dir, raw, out) = setup();
    fs::remove_file(raw.join(IDX_FILES[1].2)).unwrap();
    assert_fails(&raw, &out, &[], &[IDX_FILES[1].2]);
}

#[test]
fn failed_reimport_keeps_the_previous_file() {
    let (_dir, raw, out) = setup();
    data::import_idx_dataset("toy", &raw, &out, &[]).unwrap();
    let before = fs::read(&out).unwrap();
    let path = raw.join(IDX_FILES[0].1);
    let bytes = fs::read(&path).unwrap();
    fs::write(&path, &bytes[..10]).unwrap();
    assert!(data::import_idx_dataset("toy", &raw, &out, &[]).is_err());
    assert_eq!(
        fs::read(&out).unwrap(),
        before,
        "the valid file must survive a failed import"
    );
    let names: Vec<_> = fs::read_dir(out.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

#[test]
fn check_rejects_a_file_without_our_layout() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.h5");
    {
        let f = hdf5::File::create(&path).unwrap();
        f.new_dataset_builder()
            .with_data(&Array1::<u8>::zeros(3))
            .create("x")
            .unwrap();
    }
    let err = data::check_dataset(&path).unwrap_err().to_string();
    assert!(err.contains("other.h5") && err.contains("dataset"), "{err}");
    let err = data::check_dataset(&dir.path().join("absent.h5"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("absent.h5"), "{err}");
}
