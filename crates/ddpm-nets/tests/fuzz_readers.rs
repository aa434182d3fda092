//! Mutation fuzzing of ddpm-nets' readers of outside data (issue 16): safetensors checkpoints
//! ([`checkpoint::read_tensors`]), diffusers `config.json` ([`diffusers::read_config`]) and whole
//! diffusers folders ([`diffusers::load_pretrained`]). Every mutated input must give `Ok` or an
//! error naming the file; a panic fails the case. `PROPTEST_CASES` sets the number of cases.
mod fuzz_support;

use std::path::{Path, PathBuf};

use ddpm_nets::{checkpoint, diffusers};
use fuzz_support::{apply, config, mutated_text, mutations};
use proptest::prelude::*;
use tch::{Device, Kind, Tensor};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/grey28")
        .join(name)
}

/// A small safetensors file written by our own writer: several kinds and ranks, one empty tensor.
fn safetensors_seed() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("seed.safetensors");
    let opts = |k| (k, Device::Cpu);
    let tensors = vec![
        (
            "a.weight".to_string(),
            Tensor::ones([2, 3], opts(Kind::Float)),
        ),
        ("b".to_string(), Tensor::ones([4], opts(Kind::Half))),
        ("c".to_string(), Tensor::ones([1, 1, 2], opts(Kind::Int64))),
        ("d".to_string(), Tensor::zeros([0, 3], opts(Kind::Uint8))),
        ("e".to_string(), Tensor::ones([3], opts(Kind::Double))),
    ];
    checkpoint::write_tensors(&path, &tensors).unwrap();
    std::fs::read(&path).unwrap()
}

/// Writes `bytes` to a fresh file named `name` in a temporary folder.
fn write_temp(name: &str, bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    (dir, path)
}

/// An error must name the file it is about.
fn assert_names(err: &ddpm_nets::Error, path: &Path) {
    let msg = err.to_string();
    let name = path.file_name().unwrap().to_string_lossy();
    assert!(
        msg.contains(name.as_ref()),
        "error does not name {name}: {msg}"
    );
}

fn check_tensors(bytes: &[u8]) {
    let (_dir, path) = write_temp("fuzz.safetensors", bytes);
    if let Err(e) = checkpoint::read_tensors(&path) {
        assert_names(&e, &path);
    }
}

fn check_config(bytes: &[u8]) {
    let (_dir, path) = write_temp("config.json", bytes);
    if let Err(e) = diffusers::read_config(&path) {
        assert_names(&e, &path);
    }
}

/// A diffusers folder from the grey28 fixture with `config` and `weights` as its files.
fn check_folder(config_bytes: &[u8], weights: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(diffusers::CONFIG_NAME), config_bytes).unwrap();
    std::fs::write(dir.path().join(diffusers::WEIGHTS_NAME), weights).unwrap();
    if let Err(e) = diffusers::load_pretrained(dir.path(), Device::Cpu) {
        let msg = e.to_string();
        assert!(
            msg.contains(diffusers::CONFIG_NAME) || msg.contains(diffusers::WEIGHTS_NAME),
            "error names neither file: {msg}"
        );
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn safetensors_reader_never_panics(muts in mutations(6)) {
        check_tensors(&apply(&safetensors_seed(), &muts));
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn diffusers_config_reader_never_panics(
        bytes in mutated_text(std::fs::read_to_string(fixture("config.json")).unwrap(), 4)
    ) {
        check_config(&bytes);
    }
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn diffusers_folder_loader_never_panics(
        text in mutated_text(std::fs::read_to_string(fixture("config.json")).unwrap(), 3),
        muts in mutations(4),
        which in 0..3u8,
    ) {
        let config = std::fs::read(fixture("config.json")).unwrap();
        let weights = std::fs::read(fixture(diffusers::WEIGHTS_NAME)).unwrap();
        match which {
            0 => check_folder(&text, &weights),
            1 => check_folder(&config, &apply(&weights, &muts)),
            _ => check_folder(&text, &apply(&weights, &muts)),
        }
    }
}

#[test]
fn the_seeds_are_read() {
    let (_dir, path) = write_temp("seed.safetensors", &safetensors_seed());
    assert_eq!(checkpoint::read_tensors(&path).unwrap().len(), 5);
    diffusers::read_config(&fixture("config.json")).unwrap();
    diffusers::load_pretrained(&fixture(""), Device::Cpu).unwrap();
}

/// The grey28 config with `key` set to `value`.
fn config_with(edits: &[(&str, serde_json::Value)]) -> Vec<u8> {
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("config.json")).unwrap()).unwrap();
    for (key, value) in edits {
        v[*key] = value.clone();
    }
    serde_json::to_vec(&v).unwrap()
}

// Regression cases found by the fuzz targets above.

#[test]
fn a_dtype_libtorch_lacks_is_an_error_naming_the_file() {
    // Found by `safetensors_reader_never_panics` (a flipped dtype byte: "I64" became "U64"): the
    // error was "conversion error: unsupported dtype U64", without the file.
    let header = br#"{"x":{"dtype":"U64","shape":[1],"data_offsets":[0,8]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&[0; 8]);
    let (_dir, path) = write_temp("u64.safetensors", &bytes);
    let err = checkpoint::read_tensors(&path).unwrap_err().to_string();
    assert!(
        err.contains("u64.safetensors") && err.contains("U64"),
        "{err}"
    );
}

#[test]
fn a_huge_freq_shift_is_an_error_not_an_overflow() {
    // `2 * freq_shift` overflowed (a panic in checked builds).
    let bytes = config_with(&[("freq_shift", serde_json::json!(i64::MAX / 2 + 1))]);
    let (_dir, path) = write_temp("config.json", &bytes);
    let err = diffusers::read_config(&path).unwrap_err().to_string();
    assert!(
        err.contains("config.json") && err.contains("freq_shift"),
        "{err}"
    );
}

#[test]
fn a_huge_first_channel_count_is_an_error_not_an_overflow() {
    // The default time embedding width `4 * block_out_channels[0]` overflowed.
    let c = 1i64 << 62;
    let bytes = config_with(&[("block_out_channels", serde_json::json!([c, c, c]))]);
    let weights = std::fs::read(fixture(diffusers::WEIGHTS_NAME)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(diffusers::CONFIG_NAME), &bytes).unwrap();
    std::fs::write(dir.path().join(diffusers::WEIGHTS_NAME), weights).unwrap();
    let err = diffusers::load_pretrained(dir.path(), Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("config.json"), "{err}");
}

#[test]
fn a_config_larger_than_its_weights_is_refused_before_building() {
    // 32768 channels need 9 GiB per convolution: the network must not be built (it was, and the
    // allocation failed inside libtorch or exhausted memory).
    let bytes = config_with(&[
        (
            "block_out_channels",
            serde_json::json!([32768, 32768, 32768]),
        ),
        ("num_class_embeds", serde_json::Value::Null),
    ]);
    let weights = std::fs::read(fixture(diffusers::WEIGHTS_NAME)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(diffusers::CONFIG_NAME), &bytes).unwrap();
    std::fs::write(dir.path().join(diffusers::WEIGHTS_NAME), weights).unwrap();
    let err = diffusers::load_pretrained(dir.path(), Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("config.json")
            && err.contains(diffusers::WEIGHTS_NAME)
            && err.contains("can hold"),
        "{err}"
    );
}
