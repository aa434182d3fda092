//! `ddpm-cli train --model vae|gan` and `ddpm-cli sample` on the baseline run directory: the binary
//! end to end on real MNIST, checking the HDF5 sample file it writes.
use std::path::{Path, PathBuf};
use std::process::Command;

fn mnist_h5() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../datasets/mnist.h5");
    assert!(
        p.exists(),
        "{} is missing: run `cargo xtask fetch-data` first",
        p.display()
    );
    p
}

fn cli(args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_ddpm-cli"))
        .args(args)
        .output()
        .expect("ddpm-cli runs");
    assert!(
        out.status.success(),
        "ddpm-cli {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn train_then_sample(model: &str, dir: &Path) {
    let run = dir.join(format!("{model}-run"));
    let data = format!("data.path=\"{}\"", mnist_h5().display());
    let run_s = run.to_str().unwrap();
    cli(&[
        "train",
        "--model",
        model,
        "--preset",
        "mnist-cpu",
        "--set",
        "run.steps=4",
        "--set",
        &data,
        "--set",
        "data.batch_size=8",
        "--set",
        "run.cpu_threads=1",
        "--set",
        "run.sample_num=4",
        "--no-progress",
        "--out",
        run_s,
    ]);
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(config.contains(&format!("kind = \"{model}\"")), "{config}");
    assert!(run.join("checkpoints/step_0000004/state.json").is_file());

    let h5 = dir.join(format!("{model}.h5"));
    let grid = dir.join(format!("{model}.png"));
    let out = cli(&[
        "sample",
        "--model",
        run_s,
        "--num",
        "4",
        "--device",
        "cpu",
        "--out",
        h5.to_str().unwrap(),
        "--grid",
        grid.to_str().unwrap(),
    ]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("4 images"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let file = hdf5::File::open(&h5).unwrap();
    let images = file.dataset("images").unwrap();
    assert_eq!(images.shape(), vec![4, 28, 28, 1]);
    let pixels = images.read_raw::<u8>().unwrap();
    assert_eq!(pixels.len(), 4 * 28 * 28);
    assert!(grid.is_file());
    // The network dtype switch is a DDPM option: asked of a baseline it is refused, naming the run.
    let refused = Command::new(env!("CARGO_BIN_EXE_ddpm-cli"))
        .args([
            "sample", "--model", run_s, "--num", "1", "--device", "cpu", "--dtype", "bf16",
        ])
        .arg("--out")
        .arg(dir.join("refused.h5"))
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("--dtype applies to DDPM models") && err.contains(model),
        "{err}"
    );
    assert!(!dir.join("refused.h5").exists());

    // Resume extends the run exactly where it stopped.
    cli(&["train", "--resume", run_s, "--steps", "6", "--no-progress"]);
    assert!(run.join("checkpoints/step_0000006/state.json").is_file());
}

#[test]
fn vae_trains_and_samples_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    train_then_sample("vae", dir.path());
}

#[test]
fn gan_trains_and_samples_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    train_then_sample("gan", dir.path());
}
