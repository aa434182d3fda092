//! `RUN_DIR/train.log`: the tracing output of a training command, written only once the
//! training has started on its run ([`ddpm_train::engine::session_started`]: the run exists,
//! this process holds its lock, its checkpoint is restored), so that a command that fails before (bad config, missing data, a
//! run that is not there, a run another training holds) leaves nothing behind. Lines logged
//! before that are kept in memory and written first.
use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;

/// The log file of the run in `dir`, opened (for appending) on the first write after the run
/// exists.
#[derive(Debug)]
pub struct RunLog {
    dir: PathBuf,
    file: Option<File>,
    pending: Vec<u8>,
    /// Whether the training has started (the engine's flag; a test's own).
    started: fn() -> bool,
}

impl RunLog {
    /// The log of the run directory `dir` (nothing is created yet); each session of the run
    /// starts with a line naming the version, the command line and the working folder.
    pub fn new(dir: PathBuf) -> Self {
        let cwd = std::env::current_dir().map(|d| d.display().to_string());
        let header = format!(
            "=== ddpm-cli {} (unix time {}): {} (in {})\n",
            env!("CARGO_PKG_VERSION"),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            std::env::args().collect::<Vec<_>>().join(" "),
            cwd.unwrap_or_default()
        );
        Self {
            dir,
            file: None,
            pending: header.into_bytes(),
            started: ddpm_train::engine::session_started,
        }
    }

    /// The open file once the run exists; the buffered lines are written to it first.
    fn file(&mut self) -> io::Result<Option<&mut File>> {
        if self.file.is_none()
            && (self.started)()
            && self.dir.join("config.toml").is_file()
            && self.holds_lock()
        {
            let mut f = File::options()
                .create(true)
                .append(true)
                .open(self.dir.join("train.log"))?;
            f.write_all(&std::mem::take(&mut self.pending))?;
            self.file = Some(f);
        }
        Ok(self.file.as_mut())
    }
}

impl RunLog {
    /// Whether the run's lock file names this process.
    fn holds_lock(&self) -> bool {
        let lock = self.dir.join(ddpm_train::run_lock::LOCK_FILE);
        std::fs::read_to_string(lock)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(t.trim()).ok())
            .is_some_and(|v| v["pid"].as_u64() == Some(u64::from(std::process::id())))
    }
}

impl Write for RunLog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.file()? {
            Some(f) => f.write_all(buf)?,
            None => self.pending.extend_from_slice(buf),
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.file.as_mut() {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_written_before_the_run_exists_then_everything_is() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        static STARTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        let mut log = RunLog {
            started: || STARTED.load(std::sync::atomic::Ordering::SeqCst),
            ..RunLog::new(run.clone())
        };
        log.write_all(b"early\n").unwrap();
        assert!(!run.exists(), "the log created the run directory");
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(run.join("config.toml"), "").unwrap();
        log.write_all(b"before the lock\n").unwrap();
        assert!(
            !run.join("train.log").exists(),
            "written without holding the lock"
        );
        let _lock = ddpm_train::run_lock::RunLock::acquire(&run).unwrap();
        log.write_all(b"locked, not started\n").unwrap();
        assert!(!run.join("train.log").exists(), "written before the start");
        STARTED.store(true, std::sync::atomic::Ordering::SeqCst);
        log.write_all(b"late\n").unwrap();
        log.flush().unwrap();
        let log = std::fs::read_to_string(run.join("train.log")).unwrap();
        let (header, rest) = log.split_once('\n').unwrap();
        assert!(header.starts_with("=== ddpm-cli "), "{header}");
        assert_eq!(rest, "early\nbefore the lock\nlocked, not started\nlate\n");
    }
}
