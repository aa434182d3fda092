//! The real MNIST and Fashion-MNIST files that `cargo xtask fetch-data` installs: sizes, and
//! byte-for-byte equality of the HDF5 content with the official IDX files. These tests fail (never
//! skip) when the data is missing.
use std::path::PathBuf;

use ddpm_train::data::{self, IDX_FILES};

fn datasets_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../datasets")
}

fn check_real(name: &str) {
    let h5 = datasets_dir().join(format!("{name}.h5"));
    let raw = datasets_dir().join("raw").join(name);
    assert!(
        h5.exists() && raw.exists(),
        "{} or {} is missing: run `cargo xtask fetch-data --dataset all` first",
        h5.display(),
        raw.display()
    );
    let summary = data::check_dataset(&h5).unwrap();
    assert_eq!(
        (summary.n_train, summary.n_test, summary.image_hw),
        (60_000, 10_000, (28, 28))
    );
    assert_eq!(summary.name, name);
    for (split, images, labels) in IDX_FILES {
        let stored = data::load_split(&h5, split).unwrap();
        let (digests, idx) = data::read_gz(&raw.join(images)).unwrap();
        let recorded = summary.sources.iter().find(|s| s.name == images).unwrap();
        assert_eq!(recorded.digests, digests, "{images}");
        assert_eq!(
            &idx[..16],
            &[
                0,
                0,
                8,
                3,
                0,
                0,
                if split == "train" { 0xea } else { 0x27 },
                if split == "train" { 0x60 } else { 0x10 },
                0,
                0,
                0,
                28,
                0,
                0,
                0,
                28
            ]
        );
        assert!(
            stored.images.as_slice().unwrap() == &idx[16..],
            "{split} images differ from {images}"
        );
        let (_, idx) = data::read_gz(&raw.join(labels)).unwrap();
        assert!(
            stored.labels.as_slice().unwrap() == &idx[8..],
            "{split} labels differ from {labels}"
        );
        assert!(stored.labels.iter().all(|&l| l < 10));
    }
}

#[test]
fn mnist_h5_matches_the_official_idx_files() {
    check_real("mnist");
}

#[test]
fn fashion_mnist_h5_matches_the_official_idx_files() {
    check_real("fashion-mnist");
}
