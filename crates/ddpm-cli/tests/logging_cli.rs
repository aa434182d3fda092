//! Log lines written to a pipe (or a file) carry no ANSI colour codes.
use std::process::{Command, Stdio};

#[test]
fn logs_to_a_piped_stderr_have_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("schedule.png");
    // `schedule --plot` logs one info line ("wrote the schedule plot") after writing the plot.
    let out = Command::new(env!("CARGO_BIN_EXE_ddpm-cli"))
        .args(["schedule", "--timesteps", "20", "--plot"])
        .arg(&png)
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run ddpm-cli");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "schedule failed\nstderr: {stderr}");
    assert!(
        stderr.contains("wrote the schedule plot"),
        "the info line is missing, so the check below would prove nothing\nstderr: {stderr}"
    );
    assert!(
        !stderr.contains("\x1b["),
        "ANSI escape codes in piped stderr: {stderr:?}"
    );
}

/// A `train` that is refused (bad setting, a run that is not there) leaves no folder and no
/// `train.log` behind, so the corrected command can use the same `--out`.
#[test]
fn a_refused_train_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/mnist.h5");
    let cases: [(&[&str], &str); 3] = [
        (
            &["--out", "a", "--set", "optim.grad_accum=3"],
            "optim.grad_accum",
        ),
        (
            &["--out", "b", "--set", "optim.lr_schedule=cosin"],
            "lr_schedule",
        ),
        (&["--resume", "c"], "c"),
    ];
    for (args, named) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_ddpm-cli"))
            .current_dir(dir.path())
            .args(["train", "--preset", "mnist-cpu", "--no-progress", "--set"])
            .arg(format!("data.path=\"{}\"", data.display()))
            .args(args)
            .output()
            .expect("run ddpm-cli");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(stderr.contains(named), "{args:?}: {stderr}");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "{args:?} left {left:?}");
    }
}
