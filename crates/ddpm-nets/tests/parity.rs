//! Parity with diffusers' `UNet2DModel`: fixtures written by scripts/make_unet_parity_fixtures.py (random small
//! checkpoints, inputs and diffusers' outputs) must be reproduced within 1e-4, on the CPU, in eval mode.
use std::path::{Path, PathBuf};

use ddpm_nets::checkpoint::{read_tensors, write_tensors};
use ddpm_nets::diffusers::{load_pretrained, save_pretrained, CONFIG_NAME, WEIGHTS_NAME};
use ddpm_nets::unet::num_parameters;
use ddpm_nets::{Error, UNet2DModel, UNetConfig};
use tch::{nn::VarStore, Device, Kind, Tensor};

const TOLERANCE: f64 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn io(dir: &Path) -> std::collections::HashMap<String, Tensor> {
    read_tensors(&dir.join("io.safetensors"))
        .unwrap()
        .into_iter()
        .collect()
}

fn max_abs_error(dir: &Path, model: &UNet2DModel) -> f64 {
    let io = io(dir);
    let ys = tch::no_grad(|| model.forward_t(&io["x"], &io["t"], io.get("class_labels"), false));
    assert_eq!(ys.size(), io["y"].size());
    (ys - &io["y"]).abs().max().double_value(&[])
}

fn check_fixture(name: &str) {
    let dir = fixture(name);
    let (_vs, model) = load_pretrained(&dir, Device::Cpu).unwrap();
    let err = max_abs_error(&dir, &model);
    println!("{name}: max abs error {err:.3e}");
    assert!(err < TOLERANCE, "{name}: max abs error {err} ≥ {TOLERANCE}");
}

#[test]
fn cifar_layout_matches_diffusers() {
    check_fixture("cifar_layout");
}

#[test]
fn grey28_class_conditional_matches_diffusers() {
    check_fixture("grey28");
}

#[test]
fn cifar10_config_has_35_746_307_parameters() {
    let vs = VarStore::new(Device::Cpu);
    UNet2DModel::new(vs.root(), &UNetConfig::default()).unwrap();
    assert_eq!(num_parameters(&vs), 35_746_307);
}

/// Copies a fixture folder into a temporary one so that a test can break it.
fn copy_fixture(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for file in [CONFIG_NAME, WEIGHTS_NAME, "io.safetensors"] {
        std::fs::copy(fixture(name).join(file), tmp.path().join(file)).unwrap();
    }
    tmp
}

#[test]
fn unsupported_config_option_is_named() {
    let tmp = copy_fixture("grey28");
    let path = tmp.path().join(CONFIG_NAME);
    let text = std::fs::read_to_string(&path).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["resnet_time_scale_shift"] = "scale_shift".into();
    std::fs::write(&path, json.to_string()).unwrap();
    let err = load_pretrained(tmp.path(), Device::Cpu).unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("resnet_time_scale_shift") && msg.contains("scale_shift"),
        "{msg}"
    );
}

#[test]
fn missing_tensor_is_named() {
    let tmp = copy_fixture("cifar_layout");
    let path = tmp.path().join(WEIGHTS_NAME);
    let mut tensors = read_tensors(&path).unwrap();
    let victim = "down_blocks.1.attentions.0.to_k.weight";
    let before = tensors.len();
    tensors.retain(|(n, _)| n != victim);
    assert_eq!(tensors.len(), before - 1);
    write_tensors(&path, &tensors).unwrap();
    let err = load_pretrained(tmp.path(), Device::Cpu).unwrap_err();
    assert!(matches!(err, Error::MissingTensors { .. }), "{err}");
    assert!(err.to_string().contains(victim), "{err}");
}

#[test]
fn misshaped_tensor_is_named() {
    let tmp = copy_fixture("cifar_layout");
    let path = tmp.path().join(WEIGHTS_NAME);
    let victim = "up_blocks.2.resnets.1.conv1.weight";
    let tensors: Vec<(String, Tensor)> = read_tensors(&path)
        .unwrap()
        .into_iter()
        .map(|(n, t)| {
            if n == victim {
                let s = t.size();
                (n, t.reshape([s[0], s[1], s[2] * s[3]]))
            } else {
                (n, t)
            }
        })
        .collect();
    write_tensors(&path, &tensors).unwrap();
    let err = load_pretrained(tmp.path(), Device::Cpu).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    assert!(err.to_string().contains(victim), "{err}");
}

#[test]
fn deprecated_attention_names_and_half_weights_load() {
    // Older checkpoints name attention weights query/key/value/proj_attn, and many are stored in f16.
    let tmp = copy_fixture("cifar_layout");
    let path = tmp.path().join(WEIGHTS_NAME);
    let tensors: Vec<(String, Tensor)> = read_tensors(&path)
        .unwrap()
        .into_iter()
        .map(|(n, t)| {
            let n = n
                .replace(".to_q.", ".query.")
                .replace(".to_k.", ".key.")
                .replace(".to_v.", ".value.")
                .replace(".to_out.0.", ".proj_attn.");
            (n, t.to_kind(Kind::Half))
        })
        .collect();
    assert!(tensors.iter().any(|(n, _)| n.contains("proj_attn")));
    write_tensors(&path, &tensors).unwrap();
    let (_vs, model) = load_pretrained(tmp.path(), Device::Cpu).unwrap();
    // Rounding the weights to f16 moves the output a little, but far less than a wrong mapping would.
    let err = max_abs_error(tmp.path(), &model);
    assert!(err < 2e-2, "max abs error {err}");
}

#[test]
fn save_load_round_trip_is_exact() {
    let (vs, model) = load_pretrained(&fixture("grey28"), Device::Cpu).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("saved");
    save_pretrained(&out, model.config(), &vs).unwrap();
    let (_vs2, model2) = load_pretrained(&out, Device::Cpu).unwrap();
    assert_eq!(model2.config(), model.config());
    let io = io(&fixture("grey28"));
    let labels = io.get("class_labels");
    let (a, b) = tch::no_grad(|| {
        (
            model.forward_t(&io["x"], &io["t"], labels, false),
            model2.forward_t(&io["x"], &io["t"], labels, false),
        )
    });
    assert!(a.equal(&b));
}
