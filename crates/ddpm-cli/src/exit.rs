//! How `ddpm-cli` ends: the exit status and the error message.
//!
//! The statuses follow the shell's conventions (and torchrun's): 0 success, 1 a runtime error,
//! 2 a usage error (clap's own, and [`Usage`] for combinations of options that only the command
//! can judge), 130 / 143 interrupted by Ctrl-C / SIGTERM ([`Interrupted`]). Errors are printed as messages, never
//! as a backtrace, also with `RUST_BACKTRACE=1`: a backtrace helps with a bug, not with a wrong
//! path (a panic, which is a bug, still prints one).
use std::fmt;
use std::process::ExitCode;

/// A usage error found by the command (options that contradict each other, a value the parser
/// cannot judge): exit status 2, like clap's own usage errors.
#[derive(Debug)]
pub struct Usage(pub String);

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// A [`Usage`] error from a format string, e.g. `bail!(usage!("--eta {eta} needs --sampler ddim"))`.
#[macro_export]
macro_rules! usage {
    ($($arg:tt)*) => {
        $crate::exit::Usage(format!($($arg)*))
    };
}

/// The command stopped at the user's request (Ctrl-C, SIGTERM) after saving what it had; the exit
/// status it carries is 128 + the signal (130, 143). What was saved and how to continue are
/// printed by the command before it returns this.
#[derive(Debug)]
pub struct Interrupted(pub u8);

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "interrupted (exit status {})", self.0)
    }
}

impl std::error::Error for Interrupted {}

/// The exit status for `error`, after printing it to stderr: `error: …` and one `caused by: …`
/// line per cause that adds something (a cause whose text the line above already contains is
/// not repeated).
pub fn report(error: &anyhow::Error) -> ExitCode {
    if let Some(Interrupted(status)) = error.downcast_ref::<Interrupted>() {
        return ExitCode::from(*status);
    }
    eprintln!("{}", message(error));
    if error.downcast_ref::<Usage>().is_some() {
        eprintln!("\nFor more information, try '--help'.");
        return ExitCode::from(2);
    }
    ExitCode::from(1)
}

/// The text [`report`] prints for `error`.
pub fn message(error: &anyhow::Error) -> String {
    let mut out = format!("error: {}", without_cpp_trace(&error.to_string()));
    let mut last = error.to_string();
    for cause in error.chain().skip(1) {
        let text = without_cpp_trace(&cause.to_string());
        if !text.is_empty() && !last.contains(&text) {
            out.push_str(&format!("\n  caused by: {text}"));
        }
        last = text;
    }
    out
}

/// `text` without the C++ stack trace that libtorch appends to its messages ("Exception raised
/// from …" and the frames after it): a user needs the first lines, not the frames.
fn without_cpp_trace(text: &str) -> String {
    match text.find("Exception raised from") {
        Some(i) => text[..i].trim_end().to_string(),
        None => text.to_string(),
    }
}

/// Makes a failed write to stdout (a full disk behind `> file`, `/dev/full`) end the process
/// with an `error:` line and status 1 instead of a panic: `println!` panics on such errors.
pub fn quiet_on_stdout_errors() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let text = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if let Some(why) = text.strip_prefix("failed printing to stdout: ") {
            eprintln!("error: cannot write the output to stdout: {why}");
            ddpm_nets::atomic::exit_now(1);
        }
        default(info);
    }));
}

/// Restores the default action of SIGPIPE (Rust's runtime ignores it, so that a closed pipe
/// makes `println!` panic): `ddpm-cli … | head` then ends quietly when `head` stops reading, as
/// other Unix tools do. Files are written to a temporary name and renamed, so an end there
/// leaves no partial output.
pub fn quiet_on_closed_pipe() {
    // SAFETY: setting a signal's disposition to its default before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn causes_that_repeat_the_message_are_dropped() {
        let inner = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let err = Err::<(), _>(inner)
            .context("reading x.h5: no such file")
            .context("--data x.h5")
            .unwrap_err();
        assert_eq!(
            message(&err),
            "error: --data x.h5\n  caused by: reading x.h5: no such file"
        );
    }

    #[test]
    fn libtorch_stack_traces_are_cut() {
        let err = anyhow::anyhow!("bad file\nException raised from load at x.cpp:1\nframe #0: f");
        assert_eq!(message(&err), "error: bad file");
    }

    #[test]
    fn statuses_follow_the_conventions() {
        assert_eq!(report(&anyhow::anyhow!("x")), ExitCode::from(1));
        assert_eq!(report(&anyhow::Error::new(usage!("y"))), ExitCode::from(2));
        assert_eq!(
            report(&anyhow::Error::new(Interrupted(130))),
            ExitCode::from(130)
        );
        let wrapped = anyhow::Error::new(usage!("z")).context("while checking");
        assert_eq!(report(&wrapped), ExitCode::from(2));
    }
}
