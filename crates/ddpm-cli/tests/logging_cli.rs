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
