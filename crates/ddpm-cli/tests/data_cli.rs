//! `ddpm-cli data import` end to end: a generated folder of colour images is imported, looked at,
//! trained on (class-conditional, with the UNet checked against the file), sampled, and scored
//! with FID against the same folder; the CIFAR-10 importer on a synthetic archive with the real
//! layout, and the `cifar10` preset starting on it.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ddpm_train::TrainConfig;

fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ddpm-cli"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run ddpm-cli")
}

fn ok(args: &[&str]) -> String {
    let out = cli(args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{args:?} failed ({}):\n{text}",
        out.status
    );
    text
}

fn fails(args: &[&str]) -> String {
    let out = cli(args);
    assert!(!out.status.success(), "{args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `<workspace>/datasets/weights/fid-inception-pool3.pt`, else `../shared/weights/…`.
fn pool3_weights() -> PathBuf {
    let ws = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    [
        ws.join("datasets/weights/fid-inception-pool3.pt"),
        ws.join("../shared/weights/fid-inception-pool3.pt"),
    ]
    .into_iter()
    .find(|p| p.is_file())
    .expect("fid-inception-pool3.pt not found: run `cargo xtask fetch-weights`")
}

/// 24 colour images of 20×20 in two class folders, half PNG, half JPEG.
fn colour_folder(dir: &Path) {
    for i in 0..24u32 {
        let class = if i % 3 == 0 { "red" } else { "blue" };
        let img = image::RgbImage::from_fn(20, 20, |x, y| {
            let v = ((i * 13 + x * 9 + y * 5) % 200) as u8;
            if class == "red" {
                image::Rgb([200, v, 40])
            } else {
                image::Rgb([30, v, 220])
            }
        });
        let ext = if i % 2 == 0 { "png" } else { "jpg" };
        let path = dir.join(class).join(format!("{i:02}.{ext}"));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        img.save(path).unwrap();
    }
}

/// A tiny conditional RGB DDPM config for 16×16 data, with `num_class_embeds` left for the CLI
/// to set from the file.
fn tiny_rgb_config(dir: &Path) -> PathBuf {
    let cfg = TrainConfig::preset("mnist-cpu")
        .unwrap()
        .with_overrides(&[
            "model.unet.block_out_channels=[8, 16]".into(),
            "model.unet.down_block_types=[\"DownBlock2D\", \"AttnDownBlock2D\"]".into(),
            "model.unet.up_block_types=[\"AttnUpBlock2D\", \"UpBlock2D\"]".into(),
            "model.unet.norm_num_groups=4".into(),
            "model.unet.layers_per_block=1".into(),
            "model.unet.in_channels=3".into(),
            "model.unet.out_channels=3".into(),
            "model.unet.sample_size=16".into(),
            "diffusion.timesteps=100".into(),
            "data.conditional=true".into(),
            "data.batch_size=8".into(),
            "run.steps=3".into(),
            "run.log_every=1".into(),
            "run.sample_every=0".into(),
            "run.sample_num=4".into(),
            "run.sample_steps=\"ddim5\"".into(),
        ])
        .unwrap();
    let path = dir.join("tiny_rgb.toml");
    std::fs::write(&path, cfg.to_toml()).unwrap();
    path
}

#[test]
fn import_a_colour_folder_train_sample_and_score_against_it() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let (imgs, h5) = (d.join("imgs"), d.join("colour.h5"));
    colour_folder(&imgs);
    let text = ok(&[
        "data",
        "import",
        "--images",
        &s(&imgs),
        "--out",
        &s(&h5),
        "--size",
        "16",
        "--labels",
        "folders",
        "--test-fraction",
        "0.25",
        "--no-progress",
    ]);
    assert!(
        text.contains("18 train + 6 test images of 16x16, RGB") && text.contains("2 classes"),
        "{text}"
    );
    let text = ok(&[
        "data",
        "summary",
        "--file",
        &s(&h5),
        "--grid",
        &s(&d.join("g.png")),
    ]);
    assert!(
        text.contains("RGB") && text.contains("0:blue 1:red"),
        "{text}"
    );
    assert!(
        text.contains("per class blue:") && text.contains(" red:"),
        "{text}"
    );
    ok(&[
        "visualize",
        "forward",
        "--data",
        &s(&h5),
        "--num",
        "2",
        "--at",
        "0,500,999",
        "--out",
        &s(&d.join("f.png")),
    ]);
    assert!(d.join("g.png").is_file() && d.join("f.png").is_file());

    // A preset made for grey 28×28 digits does not fit, and says why; nothing is created.
    let bad = d.join("bad_run");
    let err = fails(&[
        "train",
        "--preset",
        "mnist-cpu",
        "--data",
        &s(&h5),
        "--out",
        &s(&bad),
        "--no-progress",
    ]);
    assert!(
        err.contains("model.unet.in_channels") && err.contains("3-channel"),
        "{err}"
    );
    assert!(!bad.exists(), "a refused run leaves no folder");

    let run = d.join("run");
    let cfg = tiny_rgb_config(d);
    ok(&[
        "train",
        "--config",
        &s(&cfg),
        "--data",
        &s(&h5),
        "--out",
        &s(&run),
        "--no-progress",
    ]);
    let saved = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(
        saved.contains("num_class_embeds = 3"),
        "the file's 2 classes + the null label:\n{saved}"
    );
    let samples = d.join("s.h5");
    ok(&[
        "sample",
        "--model",
        &s(&run),
        "--num",
        "8",
        "--sampler",
        "ddim",
        "--steps",
        "5",
        "--class",
        "1",
        "--out",
        &s(&samples),
        "--device",
        "cpu",
    ]);
    let out = ok(&[
        "eval",
        "--real",
        &s(&imgs),
        "--fake",
        &s(&samples),
        "--fid",
        "--json",
        "--device",
        "cpu",
        "--batch-size",
        "8",
        "--inception",
        &s(&pool3_weights()),
    ]);
    let json = out
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("{out}"));
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(
        (v["n_real"].as_u64(), v["n_fake"].as_u64()),
        (Some(24), Some(8)),
        "{v}"
    );
    assert!(
        v["fid"].as_f64().is_some_and(|f| f.is_finite() && f > 0.0),
        "{v}"
    );
}

#[test]
fn import_refuses_bad_choices_and_broken_folders_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let out = d.join("x.h5");
    let err = fails(&[
        "data",
        "import",
        "--name",
        "foo",
        "--raw",
        "r",
        "--out",
        &s(&out),
    ]);
    assert!(
        err.contains("foo") && err.contains("mnist") && err.contains("cifar10"),
        "{err}"
    );
    let err = fails(&[
        "data",
        "import",
        "--images",
        &s(d),
        "--out",
        &s(&out),
        "--channels",
        "rbg",
    ]);
    assert!(err.contains("rbg") && err.contains("rgb"), "{err}");
    std::fs::create_dir_all(d.join("empty")).unwrap();
    let err = fails(&[
        "data",
        "import",
        "--images",
        &s(&d.join("empty")),
        "--out",
        &s(&out),
    ]);
    assert!(
        err.contains("empty") && err.contains("no PNG or JPEG"),
        "{err}"
    );
    let imgs = d.join("imgs");
    colour_folder(&imgs);
    // Choices checked by the parser (exit 2).
    for (args, needle) in [
        (vec!["--size", "0"], "1..=4096"),
        (vec!["--test-fraction", "-0.1"], "outside [0, 1)"),
        (vec!["--dataset-name", ""], "dataset-name"),
    ] {
        let mut full = vec![
            "data",
            "import",
            "--images",
            imgs.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        full.extend(args);
        let o = cli(&full);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains(needle),
            "{full:?}: {err}"
        );
    }
    let err = fails(&[
        "data",
        "import",
        "--name",
        "cifar10",
        "--raw",
        "x.tar.gz",
        "--out",
        &s(&out),
        "--size",
        "16",
    ]);
    assert!(
        err.contains("--size") && err.contains("cannot be used"),
        "{err}"
    );
    // An existing file that is not HDF5 (here one of the input images) is never replaced.
    let victim = imgs.join("red/00.png");
    let before = std::fs::read(&victim).unwrap();
    let err = fails(&[
        "data",
        "import",
        "--images",
        &s(&imgs),
        "--out",
        &s(&victim),
    ]);
    assert!(err.contains("an HDF5 file"), "{err}");
    assert_eq!(std::fs::read(&victim).unwrap(), before);
    std::fs::write(imgs.join("red/zz_broken.png"), b"not a png").unwrap();
    let err = fails(&[
        "data",
        "import",
        "--images",
        &s(&imgs),
        "--out",
        &s(&out),
        "--size",
        "16",
    ]);
    assert!(err.contains("zz_broken.png"), "{err}");
    assert!(!out.exists());
    let out_text = cli(&[
        "data",
        "import",
        "--images",
        &s(&imgs),
        "--out",
        &s(&out),
        "--size",
        "16",
        "--skip-bad",
        "--no-progress",
    ]);
    let stderr = String::from_utf8_lossy(&out_text.stderr);
    assert!(
        out_text.status.success() && stderr.contains("skipped") && stderr.contains("zz_broken.png"),
        "{stderr}"
    );
}

#[test]
fn cifar10_import_of_a_synthetic_archive_and_the_preset_starts_on_it() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let archive = d.join("cifar-10-python.tar.gz");
    std::fs::write(&archive, ddpm_train::cifar10::synthetic::archive(2, 3)).unwrap();
    let h5 = d.join("cifar10.h5");
    let text = ok(&[
        "data",
        "import",
        "--name",
        "cifar10",
        "--raw",
        &s(&archive),
        "--out",
        &s(&h5),
    ]);
    assert!(
        text.contains("10 train + 2 test images of 32x32, RGB (cifar10, 10 classes)"),
        "{text}"
    );
    let text = ok(&["data", "summary", "--file", &s(&h5)]);
    assert!(
        text.contains("0:airplane") && text.contains("9:truck"),
        "{text}"
    );
    let err = fails(&[
        "data",
        "import",
        "--name",
        "cifar10",
        "--raw",
        &s(&archive),
        "--out",
        &s(&d.join("x.h5")),
        "--expect",
        &format!(
            "cifar-10-python.tar.gz={}",
            ddpm_train::cifar10::ARCHIVE_MD5
        ),
    ]);
    assert!(
        err.contains("md5 checksum mismatch") && err.contains("cifar-10-python.tar.gz"),
        "{err}"
    );
    // The paper's 35.7M-parameter UNet takes one step of 2 images and draws one 2-step sample.
    let run = d.join("run");
    let text = ok(&[
        "train",
        "--preset",
        "cifar10",
        "--data",
        &s(&h5),
        "--out",
        &s(&run),
        "--steps",
        "1",
        "--device",
        "cpu",
        "--no-progress",
        "--set",
        "data.batch_size=2",
        "--set",
        "run.sample_num=1",
        "--set",
        "run.sample_steps=\"ddim2\"",
        "--set",
        "run.log_every=1",
    ]);
    assert!(
        text.contains("finished") && text.contains("at step 1"),
        "{text}"
    );
    assert!(run.join("checkpoints").is_dir());
}
