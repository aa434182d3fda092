//! Ctrl-C (SIGINT) and SIGTERM (what `kill`, schedulers and torchrun send) for the commands that
//! write long: the first signal asks the command to stop cleanly (training checkpoints after the
//! current step), a second one ends the process at once without saving (the temporary files of
//! writes in progress are removed; finished files are untouched). The exit status is the shell's
//! 128 + signal number: 130 after SIGINT, 143 after SIGTERM. In a data-parallel job (`WORLD_SIZE`
//! set) signals within 1 s of the first count as the first (torchrun sends SIGTERM after the
//! terminal's SIGINT), and the ranks stop together at the end of the next log window.
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// In a data-parallel job, a signal this soon after the first is a launcher passing the same
/// request on (torchrun does within milliseconds), not a second one.
const LAUNCHER_ECHO: std::time::Duration = std::time::Duration::from_secs(1);

/// The stop request of a command, set by the first SIGINT or SIGTERM.
#[derive(Debug, Clone)]
pub struct StopRequest {
    /// Set by the first signal.
    pub flag: Arc<AtomicBool>,
    signal: Arc<AtomicI32>,
}

impl StopRequest {
    /// The error that ends a command stopped by this request: exit status 128 + the signal.
    pub fn interrupted(&self) -> anyhow::Error {
        let signal = self.signal.load(Ordering::SeqCst);
        crate::exit::Interrupted((128 + signal.clamp(1, 127)) as u8).into()
    }
}

/// Installs the handler: the first signal sets the returned request's flag and prints `first`;
/// a second one prints why and exits at once.
pub fn stop_on_signals(first: &'static str) -> Result<StopRequest> {
    let request = StopRequest {
        flag: Arc::new(AtomicBool::new(false)),
        signal: Arc::new(AtomicI32::new(SIGINT)),
    };
    let mut signals =
        Signals::new([SIGINT, SIGTERM]).context("cannot install the signal handler")?;
    let (flag, which) = (request.flag.clone(), request.signal.clone());
    // In a data-parallel job, torchrun's agent answers the terminal's Ctrl-C (which every rank
    // got too) with a SIGTERM to each rank: one request, not two.
    let in_job = std::env::var_os("WORLD_SIZE").is_some();
    std::thread::spawn(move || {
        let mut first_at: Option<std::time::Instant> = None;
        for signal in signals.forever() {
            if in_job && first_at.is_some_and(|t| t.elapsed() < LAUNCHER_ECHO) {
                continue;
            }
            first_at.get_or_insert_with(std::time::Instant::now);
            if flag.swap(true, Ordering::SeqCst) {
                eprintln!("\nsecond signal: exiting at once, without saving");
                ddpm_nets::atomic::exit_now(128 + signal);
            }
            which.store(signal, Ordering::SeqCst);
            let name = if signal == SIGTERM {
                "SIGTERM"
            } else {
                "interrupt"
            };
            eprintln!("\n{name}: {first} (send it again to exit at once, without saving)");
        }
    });
    Ok(request)
}

/// Installs a handler that ends the process at once on SIGINT or SIGTERM, removing the
/// temporary file of a write in progress, after printing `message` (for commands whose only
/// output is written at the end, such as `data import`).
pub fn exit_on_signals(message: &'static str) -> Result<()> {
    let mut signals =
        Signals::new([SIGINT, SIGTERM]).context("cannot install the signal handler")?;
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            eprintln!("\n{message}");
            ddpm_nets::atomic::exit_now(128 + signal);
        }
    });
    Ok(())
}
