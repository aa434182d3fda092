//! The command line's contract with its users: a failed command leaves the file system as it
//! found it (and the corrected retry works), signals and closed pipes end quietly with the
//! conventional status, choices are checked by the parser (exit 2 with a suggestion), and user
//! errors print a message, never a backtrace.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

mod common;
use common::{cli, listing, text, tiny_config};

/// A trained tiny run shared by the tests of this file (2 steps).
fn tiny_run() -> &'static Path {
    static RUN: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &RUN.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let out = cli(dir.path())
            .args(["train", "--no-progress", "--config"])
            .arg(tiny_config(dir.path(), 2))
            .arg("--out")
            .arg(&run)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        (dir, run)
    })
    .1
}

/// Runs `args` in `dir`, which must fail with `code`, name `named` and leave `dir` as it was.
fn fails_leaving_nothing<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(
    dir: &Path,
    args: &[S],
    code: i32,
    named: &str,
) {
    let before = listing(dir);
    let out = cli(dir).args(args).output().unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {all}");
    assert!(
        all.contains(named),
        "{args:?} does not name `{named}`: {all}"
    );
    assert!(!all.contains("panicked"), "{args:?}: {all}");
    let after = listing(dir);
    let new: Vec<_> = after.difference(&before).collect();
    assert!(new.is_empty(), "{args:?} left {new:?}");
}

#[test]
fn failed_commands_leave_nothing_and_the_corrected_retry_works() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let config = tiny_config(d, 1);
    let config = config.to_str().unwrap();
    std::fs::write(d.join("afile"), "x").unwrap();
    let run = tiny_run().to_str().unwrap().to_string();
    let train = |extra: &[&str]| -> Vec<String> {
        let mut a = vec!["train", "--no-progress", "--config", config];
        a.extend_from_slice(extra);
        a.into_iter().map(String::from).collect()
    };
    // A device that no machine has, data that is not there, a run that is not there, a folder
    // under a file, a missing config: refused before anything is created.
    fails_leaving_nothing(
        d,
        &train(&["--out", "runs/a", "--device", "cuda:99"]),
        1,
        "cuda:99",
    );
    fails_leaving_nothing(
        d,
        &train(&["--out", "runs/a", "--set", "data.path=\"nope.h5\""]),
        1,
        "nope.h5",
    );
    fails_leaving_nothing(
        d,
        &["train", "--resume", "runs/typo"],
        1,
        "no such run directory",
    );
    fails_leaving_nothing(d, &train(&["--out", "afile/run"]), 1, "afile is a file");
    fails_leaving_nothing(
        d,
        &["train", "--config", "missing.toml", "--out", "runs/a"],
        1,
        "missing.toml",
    );
    fails_leaving_nothing(
        d,
        &["train", "--resume", &run, "--preset", "cifar10"],
        2,
        "--preset",
    );
    // Sampling: output paths are checked before anything is sampled or written.
    let sample = |extra: &[&str]| {
        let mut a = vec!["sample", "--model", &run, "--num", "2", "--steps", "3"];
        a.extend_from_slice(extra);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let s = sample(&["--out", "s.h5", "--grid", "afile/g.png"]);
    fails_leaving_nothing(d, &s, 1, "afile is a file");
    fails_leaving_nothing(d, &sample(&["--out", "s.png"]), 2, ".h5");
    fails_leaving_nothing(
        d,
        &sample(&["--out", "s.h5", "--guidance", "2"]),
        2,
        "--class",
    );
    fails_leaving_nothing(d, &["schedule", "--plot", "p.txt"], 2, ".png");
    fails_leaving_nothing(
        d,
        &["schedule", "--plot", "afile/p.png"],
        1,
        "afile is a file",
    );
    fails_leaving_nothing(
        d,
        &["visualize", "forward", "--num", "0", "--out", "f.png"],
        2,
        "--num",
    );
    fails_leaving_nothing(
        d,
        &["compare", "--config", &compare_config(d, "nope.h5:test")],
        1,
        "no-classifier",
    );
    // A resumed run keeps its network and process; its config.toml is not rewritten.
    let config_before = std::fs::read_to_string(tiny_run().join("config.toml")).unwrap();
    fails_leaving_nothing(
        d,
        &[
            "train",
            "--resume",
            &run,
            "--steps",
            "9",
            "--set",
            "diffusion.timesteps=20",
        ],
        2,
        "keeps the diffusion",
    );
    let config_after = std::fs::read_to_string(tiny_run().join("config.toml")).unwrap();
    assert_eq!(config_before, config_after);
    // A dataset file or a file of another kind is not replaced by samples.
    std::fs::write(d.join("notes.h5"), "my notes").unwrap();
    let s = sample(&["--out", "notes.h5"]);
    fails_leaving_nothing(d, &s, 1, "not an HDF5 samples file");
    assert_eq!(
        std::fs::read_to_string(d.join("notes.h5")).unwrap(),
        "my notes"
    );
    // forward does not overwrite its own input.
    std::fs::write(d.join("in.safetensors"), "x").unwrap();
    fails_leaving_nothing(
        d,
        &[
            "forward",
            "--model",
            &run,
            "--input",
            "in.safetensors",
            "--output",
            "in.safetensors",
        ],
        2,
        "same file",
    );
    // The corrected commands work.
    let out = cli(d).args(train(&["--out", "runs/a"])).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let s = sample(&["--out", "s.h5", "--grid", "g.png"]);
    let out = cli(d).args(&s).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(d.join("s.h5").is_file() && d.join("g.png").is_file());
}

/// A compare config in `dir` (reference `reference`, classifier `dir/no-classifier`, which is
/// missing); returns its path.
fn compare_config(dir: &Path, reference: &str) -> String {
    let path = dir.join("compare.toml");
    std::fs::write(
        &path,
        format!(
            "out_dir = \"cmp\"\ndevice = \"cpu\"\nreference = \"{reference}\"\n\
             classifier = \"no-classifier\"\n"
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn two_quick_interrupts_never_crash_and_end_with_130() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tiny_config(tmp.path(), 1_000_000);
    for i in 0..20 {
        let run = tmp.path().join(format!("run{i}"));
        let mut child = cli(tmp.path())
            .args(["train", "--no-progress", "--config"])
            .arg(&config)
            .arg("--out")
            .arg(&run)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while !run.join("config.toml").exists() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "no run after 60 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // At different moments of start-up and training.
        std::thread::sleep(Duration::from_millis(30 * (i % 10)));
        for _ in 0..2 {
            let ok = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status()
                .unwrap();
            assert!(ok.success());
            std::thread::sleep(Duration::from_millis(50));
        }
        let status = child.wait().unwrap();
        let mut stderr = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        assert_eq!(status.code(), Some(130), "try {i}: {status:?}\n{stderr}");
    }
}

#[test]
fn a_full_stdout_is_an_error_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let full = std::fs::File::options()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = cli(tmp.path())
        .args(["schedule", "--json"])
        .stdout(full)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("error: cannot write the output"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_closed_stdout_pipe_ends_quietly() {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = cli(tmp.path())
        .args(["schedule", "--json", "--timesteps", "100000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read a little, then close the pipe, as `| head -c 20` does.
    let mut first = [0u8; 20];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut first).unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.is_empty(), "{stderr}");
    assert_ne!(out.status.code(), Some(101), "panicked");
    assert!(out.status.code().is_none_or(|c| c == 0), "{:?}", out.status);
}

#[test]
fn typos_in_choices_are_usage_errors_with_a_suggestion() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "sample",
                "--model",
                "m",
                "--out",
                "s.h5",
                "--sampler",
                "ddimm",
            ],
            "'ddim'",
        ),
        (
            &["sample", "--model", "m", "--out", "s.h5", "--dtype", "bf61"],
            "'bf16'",
        ),
        (
            &[
                "sample", "--model", "m", "--out", "s.h5", "--device", "cudaa",
            ],
            "'cuda'",
        ),
        (&["schedule", "--schedule", "cosin"], "'cosine'"),
        (
            &[
                "visualize",
                "forward",
                "--out",
                "f.png",
                "--schedule",
                "lineaar",
            ],
            "'linear'",
        ),
        (
            &["train", "--out", "r", "--preset", "mnist-cpuu"],
            "'mnist-cpu'",
        ),
        (&["train", "--out", "r", "--model", "vaee"], "'vae'"),
        (&["train", "--out", "r", "--device", "cpuu"], "'cpu'"),
        (&["train-classifier", "--dataset", "mnistt"], "'mnist'"),
        (&["bench", "--preset", "cifar1"], "'cifar10'"),
        (&["eval", "--fid", "--device", "cudda"], "'cuda'"),
    ];
    for (args, suggestion) in cases {
        let out = cli(tmp.path()).args(*args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!("a similar value exists: {suggestion}")),
            "{args:?}: {stderr}"
        );
    }
    assert!(listing(tmp.path()).is_empty());
    // The values are listed in --help.
    let help = cli(tmp.path()).args(["sample", "--help"]).output().unwrap();
    let help = text(&help);
    for value in ["- ddpm:", "- ddim:", "- dpm++:"] {
        assert!(help.contains(value), "{help}");
    }
}

#[test]
fn user_errors_print_a_message_without_a_backtrace() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: &[(&[&str], i32, &str)] = &[
        (
            &["train", "--resume", "nowhere"],
            1,
            "nowhere: no such run directory",
        ),
        (&["schedule", "--timesteps", "4000000000"], 1, "more than"),
        (&["schedule", "--timesteps", "10"], 1, "T ≥ 20"),
        (
            &["visualize", "forward", "--out", "f.png", "--at", "1000"],
            2,
            "0–999",
        ),
        (
            &["sample", "--model", "nowhere", "--out", "s.h5"],
            1,
            "no such run directory",
        ),
    ];
    for (args, code, named) in cases {
        let out = cli(tmp.path())
            .args(*args)
            .env("RUST_BACKTRACE", "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(*code), "{args:?}: {stderr}");
        assert!(stderr.contains(named), "{args:?}: {stderr}");
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
        assert!(
            !stderr.to_lowercase().contains("backtrace"),
            "{args:?}: {stderr}"
        );
        let lines: Vec<&str> = stderr.lines().collect();
        let unique: BTreeSet<&str> = lines
            .iter()
            .map(|l| l.trim_start_matches("  caused by: "))
            .collect();
        assert_eq!(unique.len(), lines.len(), "a line repeats: {stderr}");
    }
}
