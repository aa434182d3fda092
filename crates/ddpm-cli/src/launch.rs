//! `ddpm-cli train --nproc-per-node N`: a data-parallel run on this machine without torchrun. It
//! starts N copies of this command (without the option) with the variables `torchrun --standalone`
//! would set (`WORLD_SIZE`, `RANK`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR=127.0.0.1`, a
//! free `MASTER_PORT`), passes Ctrl-C/SIGTERM on to them once each, and waits.
//!
//! When a rank fails, the others are sent SIGTERM at once (they fail by themselves too, at their
//! next collective) and SIGKILL 30 s later; the message lists the failed ranks and their statuses.
//! A requested stop (a signal to the launcher or to one rank: every rank saves and exits 130 or
//! 143) ends the launcher with that status.
use std::ffi::OsString;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// How long the other ranks have, after one failed and they were sent SIGTERM, before SIGKILL.
const KILL_AFTER: Duration = Duration::from_secs(30);

/// Runs the data-parallel training of this command line with `n` local processes.
pub fn run(n: usize) -> Result<()> {
    if std::env::var_os("WORLD_SIZE").is_some() {
        bail!(crate::usage!(
            "--nproc-per-node starts the processes of a job itself; this process is already \
             part of one (WORLD_SIZE is set, e.g. by torchrun): leave the option out"
        ));
    }
    let exe = std::env::current_exe().context("cannot find this program to start its ranks")?;
    let args = without_nproc(std::env::args_os().skip(1).collect());
    let port = match std::env::var("MASTER_PORT") {
        Ok(p) => p,
        Err(_) => free_port()?.to_string(),
    };
    let pids = Arc::new(Mutex::new(Vec::<i32>::new()));
    forward_signals(pids.clone())?;
    let mut children = Vec::with_capacity(n);
    for rank in 0..n {
        let child = spawn_rank(&exe, &args, rank, n, &port)
            .with_context(|| format!("cannot start rank {rank} ({})", exe.display()))?;
        pids.lock().expect("pid list").push(child.id() as i32);
        children.push(child);
    }
    tracing::info!(processes = n, master_port = %port, "data-parallel training on this machine");
    let (statuses, first) = wait_all(&mut children)?;
    let stopped = |s: &ExitStatus| matches!(s.code(), Some(130 | 143));
    let failed: Vec<(usize, ExitStatus)> = statuses
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, s)| !s.success())
        .collect();
    if failed.is_empty() {
        return Ok(());
    }
    if failed.iter().all(|(_, s)| stopped(s)) {
        // Stopped on request (a signal to the launcher or to one rank): every rank saved and
        // ended together; rank 0 printed how to continue. A rank that got no signal itself ends
        // with 130, so a SIGTERM anywhere shows as 143.
        let code = failed
            .iter()
            .filter_map(|(_, s)| s.code())
            .max()
            .unwrap_or(130);
        return Err(crate::exit::Interrupted(code as u8).into());
    }
    let list: Vec<String> = failed
        .iter()
        .map(|(rank, s)| format!("rank {rank} ({})", describe(*s)))
        .collect();
    let cause = first.map_or(String::new(), |r| {
        format!(
            "; rank {r} failed first ({}), the others followed",
            describe(statuses[r])
        )
    });
    bail!("{} of {n} failed{cause}", list.join(", "))
}

/// The arguments without `--nproc-per-node N` / `--nproc-per-node=N`.
fn without_nproc(args: Vec<OsString>) -> Vec<OsString> {
    let mut out = Vec::with_capacity(args.len());
    let mut skip_next = false;
    for a in args {
        if skip_next {
            skip_next = false;
            continue;
        }
        if a == "--nproc-per-node" {
            skip_next = true;
            continue;
        }
        if a.to_string_lossy().starts_with("--nproc-per-node=") {
            continue;
        }
        out.push(a);
    }
    out
}

/// A TCP port that was free on 127.0.0.1 a moment ago, for rank 0's store.
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .context("cannot find a free port on 127.0.0.1 for the ranks' store")?;
    Ok(l.local_addr()?.port())
}

fn spawn_rank(
    exe: &std::path::Path,
    args: &[OsString],
    rank: usize,
    n: usize,
    port: &str,
) -> std::io::Result<Child> {
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .env("WORLD_SIZE", n.to_string())
        .env("RANK", rank.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("LOCAL_WORLD_SIZE", n.to_string())
        .env("GROUP_RANK", "0")
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port)
        .env_remove("TORCHELASTIC_USE_AGENT_STORE")
        // Its own process group: a terminal's Ctrl-C reaches the launcher only, which passes it
        // on once (a rank that got it twice would exit without saving).
        .process_group(0);
    // SAFETY: prctl is async-signal-safe and the closure allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            // A launcher killed outright takes its ranks with it.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// Passes every SIGINT/SIGTERM the launcher gets on to the ranks.
fn forward_signals(pids: Arc<Mutex<Vec<i32>>>) -> Result<()> {
    let mut signals =
        Signals::new([SIGINT, SIGTERM]).context("cannot install the signal handler")?;
    std::thread::spawn(move || {
        for signal in signals.forever() {
            for &pid in pids.lock().expect("pid list").iter() {
                // SAFETY: kill has no memory effects; a pid that already exited is ESRCH.
                unsafe { libc::kill(pid, signal) };
            }
        }
    });
    Ok(())
}

/// Waits for every rank and returns their statuses and the rank that failed first. Once one has
/// failed (a status other than 0 and the 130 / 143 of a requested stop), the others are sent
/// SIGTERM at once, as torchrun does (they also fail by themselves at their next collective), and
/// SIGKILL [`KILL_AFTER`] later.
fn wait_all(children: &mut [Child]) -> Result<(Vec<ExitStatus>, Option<usize>)> {
    let mut done: Vec<Option<ExitStatus>> = vec![None; children.len()];
    let mut failed_at: Option<Instant> = None;
    let mut first: Option<usize> = None;
    let mut killed = false;
    while done.iter().any(Option::is_none) {
        let mut newly_failed = false;
        for (rank, child) in children.iter_mut().enumerate() {
            if done[rank].is_some() {
                continue;
            }
            if let Some(status) = child.try_wait().context("waiting for a rank")? {
                done[rank] = Some(status);
                if !matches!(status.code(), Some(0 | 130 | 143)) {
                    newly_failed = true;
                    first.get_or_insert(rank);
                }
            }
        }
        if newly_failed && failed_at.is_none() {
            failed_at = Some(Instant::now());
            signal_running(children, &done, libc::SIGTERM);
        }
        if failed_at.is_some_and(|t| t.elapsed() > KILL_AFTER) && !killed {
            killed = true;
            signal_running(children, &done, libc::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((done.into_iter().flatten().collect(), first))
}

/// Sends `signal` to the ranks still running.
fn signal_running(children: &[Child], done: &[Option<ExitStatus>], signal: i32) {
    for (child, status) in children.iter().zip(done) {
        if status.is_none() {
            // SAFETY: kill has no memory effects; a pid that already exited is ESRCH.
            unsafe { libc::kill(child.id() as i32, signal) };
        }
    }
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => status.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_option_and_its_value_are_dropped() {
        let a = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            without_nproc(a(&["train", "--nproc-per-node", "2", "--out", "r"])),
            a(&["train", "--out", "r"])
        );
        assert_eq!(
            without_nproc(a(&[
                "--threads",
                "1",
                "train",
                "--nproc-per-node=4",
                "--steps",
                "3"
            ])),
            a(&["--threads", "1", "train", "--steps", "3"])
        );
    }
}
