//! `RUN/.lock`: one training at a time writes to a run directory.
//!
//! The lock is an advisory `flock` on the file, which the kernel releases when its process ends,
//! however it ends (also SIGKILL): a lock left by a dead process is therefore never in force, and
//! the next training takes it over (saying whose it was). The file holds the holder's PID, host
//! and start time, for the message that refuses a second training while the first one lives.
use std::fs;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::error::{Result, TrainError};

/// The lock file's name in a run directory.
pub const LOCK_FILE: &str = ".lock";

/// A held lock on a run directory; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct RunLock {
    file: fs::File,
}

/// This machine's host name.
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it or fails.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown-host".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

impl RunLock {
    /// Takes the lock of the run directory `dir` (which must exist) for this process.
    ///
    /// # Errors
    /// [`TrainError::Checkpoint`] when a live process holds it, naming that process's PID and
    /// host; [`TrainError::Io`] when the lock file cannot be opened or written.
    pub fn acquire(dir: &Path) -> Result<Self> {
        let path = dir.join(LOCK_FILE);
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(TrainError::io(&path))?;
        let mut previous = String::new();
        // Unreadable content only loses the holder's description.
        let _ = file.read_to_string(&mut previous);
        // SAFETY: flock on an open descriptor we own.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(TrainError::Checkpoint {
                    path: dir.to_path_buf(),
                    message: format!(
                        "is in use by another training ({}); wait for it to end or stop it first",
                        describe(&previous)
                    ),
                });
            }
            return Err(TrainError::Io { path, source: err });
        }
        let holder = previous.trim();
        if !holder.is_empty() {
            tracing::info!(lock = %path.display(), previous = %describe(holder), "took over the lock of a process that has ended");
        }
        let me = serde_json::json!({
            "pid": std::process::id(),
            "host": host_name(),
            "started_unix": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        });
        file.set_len(0)
            .and_then(|_| file.rewind())
            .and_then(|_| writeln!(file, "{me}"))
            .and_then(|_| file.sync_all())
            .map_err(TrainError::io(&path))?;
        Ok(Self { file })
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // An ended training leaves an empty lock file: nobody's.
        let _ = self.file.set_len(0);
    }
}

/// "PID p on host h" from a lock file's content.
fn describe(content: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(content.trim()) {
        Ok(v) => format!(
            "PID {} on host {}",
            v["pid"].as_u64().map_or("?".into(), |p| p.to_string()),
            v["host"].as_str().unwrap_or("?")
        ),
        Err(_) => "a process whose lock file is unreadable".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_refuses_a_second_holder_and_is_free_once_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = RunLock::acquire(dir.path()).unwrap();
        // flock locks belong to the open file description: a second open in this process
        // conflicts as another process's would.
        let err = RunLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains(&format!("PID {}", std::process::id())) && err.contains(&host_name()),
            "{err}"
        );
        drop(first);
        let again = RunLock::acquire(dir.path()).unwrap();
        drop(again);
    }

    #[test]
    fn a_lock_file_left_by_a_dead_process_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(LOCK_FILE),
            "{\"pid\": 999999999, \"host\": \"elsewhere\"}\n",
        )
        .unwrap();
        let lock = RunLock::acquire(dir.path()).unwrap();
        let content = fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap();
        assert!(
            content.contains(&format!("\"pid\":{}", std::process::id())),
            "{content}"
        );
        drop(lock);
    }
}
