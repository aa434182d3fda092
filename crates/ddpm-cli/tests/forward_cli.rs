//! `ddpm-cli forward` on the ddpm-nets parity fixtures: its output must equal diffusers' within 1e-4.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use ddpm_nets::checkpoint::{read_tensors, write_tensors};
use tch::Tensor;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../ddpm-nets/tests/fixtures")
        .join(name)
}

fn read(path: &Path) -> HashMap<String, Tensor> {
    read_tensors(path).unwrap().into_iter().collect()
}

fn forward(model: &Path, input: &Path, output: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ddpm-cli"))
        .args(["forward", "--device", "cpu", "--model"])
        .arg(model)
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(output)
        .output()
        .unwrap()
}

#[test]
fn forward_reproduces_diffusers_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["cifar_layout", "grey28"] {
        let dir = fixture(name);
        let out = tmp.path().join(format!("{name}.safetensors"));
        let res = forward(&dir, &dir.join("io.safetensors"), &out);
        assert!(
            res.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&res.stderr)
        );
        let expected = read(&dir.join("io.safetensors"));
        let got = read(&out);
        let err = (&got["y"] - &expected["y"]).abs().max().double_value(&[]);
        assert!(err < 1e-4, "{name}: max abs error {err}");
    }
}

#[test]
fn missing_input_tensor_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture("cifar_layout");
    let io = read(&dir.join("io.safetensors"));
    let input = tmp.path().join("in.safetensors");
    write_tensors(&input, &[("x".to_string(), io["x"].shallow_clone())]).unwrap();
    let out = tmp.path().join("out.safetensors");
    let res = forward(&dir, &input, &out);
    assert!(!res.status.success());
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(stderr.contains("`t`"), "{stderr}");
    assert!(!out.exists());
}
