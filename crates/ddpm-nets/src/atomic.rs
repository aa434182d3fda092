//! Atomic file writes, the one way every crate of the workspace writes a file (xtask, which builds
//! before libtorch exists, does the same with `tempfile` directly).
//!
//! The content goes to a temporary file created in the destination's folder (so the final rename
//! never crosses a file system), is flushed to disk, and is renamed over the destination only when
//! complete. A reader therefore sees the old file or the new one, never half of one; a failed write
//! removes the temporary file and leaves an existing destination untouched.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Temporary files of writes in progress, so that a signal handler can remove them
/// ([`remove_in_flight`]) before the process exits without running destructors.
static IN_FLIGHT: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn in_flight() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    IN_FLIGHT.lock().unwrap_or_else(|e| e.into_inner())
}

/// Removes the temporary files of the atomic writes in progress (their destinations are not
/// touched). For signal handlers that end the process at once ([`exit_now`]), e.g. a Ctrl-C
/// during `data import` or a second Ctrl-C during training.
pub fn remove_in_flight() {
    for p in in_flight().drain(..) {
        let _ = std::fs::remove_file(p);
    }
}

/// Ends the process at once with `code` from a signal handler (e.g. 130 after a second Ctrl-C):
/// removes the temporary files of the atomic writes in progress, then `_exit`s. Unlike
/// `std::process::exit`, `_exit` runs no `atexit` handlers or static destructors, which would
/// tear libtorch down under the main thread while it is still computing (a segmentation fault).
pub fn exit_now(code: i32) -> ! {
    remove_in_flight();
    // SAFETY: `_exit` takes no pointers and never returns.
    unsafe { libc::_exit(code) }
}

/// Creates `dir` and its parents; when a parent exists as a file, the error says which one.
fn create_folder(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| {
        match dir.ancestors().find(|a| a.exists() && !a.is_dir()) {
            Some(file) => std::io::Error::new(
                std::io::ErrorKind::NotADirectory,
                format!("{} is a file, not a folder", file.display()),
            ),
            None => e,
        }
    })
}

/// A failed atomic write: the destination and what went wrong (creating the folder or the
/// temporary file, syncing it, or renaming it into place). Each crate's error type converts it
/// into its own I/O variant, so the message names the destination.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {}: {source}", path.display())]
pub struct WriteError {
    /// The destination file.
    pub path: PathBuf,
    /// The underlying error.
    pub source: std::io::Error,
}

impl From<WriteError> for crate::Error {
    fn from(e: WriteError) -> Self {
        Self::Io {
            path: e.path,
            source: e.source,
        }
    }
}

/// Writes `path` atomically: creates its folder if missing, makes a temporary file beside it
/// (`.NAME.XXXXXX.tmp`, mode 0666 less the umask, like a plain `File::create`), calls
/// `write(tmp_path)` to fill it (by path, so HDF5, PNG and safetensors writers can use it), syncs it
/// and renames it to `path`.
///
/// Returns what `write` returned. Errors: `write`'s own error unchanged, or a [`WriteError`] naming
/// `path` (converted into `E`) when the folder or temporary file cannot be created, synced or
/// renamed, or when `path` has no file name. On any error the temporary file is removed and an
/// existing `path` is kept as it was.
pub fn write_atomically<T, E>(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<T, E>,
) -> Result<T, E>
where
    E: From<WriteError>,
{
    let fail = |source: std::io::Error| WriteError {
        path: path.to_path_buf(),
        source,
    };
    let name = path
        .file_name()
        .ok_or_else(|| fail(std::io::Error::other("not a file path")))?
        .to_string_lossy();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    create_folder(dir).map_err(fail)?;
    let prefix = format!(".{name}.");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".tmp");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    let tmp = builder.tempfile_in(dir).map_err(fail)?;
    let tmp_path = tmp.path().to_path_buf();
    in_flight().push(tmp_path.clone());
    let done = || in_flight().retain(|p| p != &tmp_path);
    // On error, `tmp` is dropped, which removes the temporary file.
    let value = write(tmp.path()).inspect_err(|_| done())?;
    let result = tmp
        .as_file()
        .sync_all()
        .map_err(fail)
        .and_then(|()| tmp.persist(path).map_err(|e| fail(e.error)));
    done();
    result?;
    Ok(value)
}

/// Writes `bytes` to `path` atomically (see [`write_atomically`]).
pub fn write_bytes_atomically(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    write_atomically(path, |tmp| {
        std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(tmp)
            .and_then(|mut f| f.write_all(bytes))
            .map_err(|source| WriteError {
                path: path.to_path_buf(),
                source,
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn replaces_the_file_creates_folders_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/x.txt");
        write_bytes_atomically(&path, b"one").unwrap();
        write_bytes_atomically(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(names(path.parent().unwrap()), ["x.txt"]);
    }

    #[test]
    fn the_writer_gets_a_temporary_path_beside_the_destination() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.bin");
        let seen = write_atomically(&path, |tmp| -> Result<PathBuf, WriteError> {
            assert!(!path.exists(), "the destination appears only at the end");
            std::fs::write(tmp, b"data").unwrap();
            Ok(tmp.to_path_buf())
        })
        .unwrap();
        assert_eq!(seen.parent(), path.parent());
        assert_ne!(seen, path);
        assert!(!seen.exists());
        assert_eq!(std::fs::read(&path).unwrap(), b"data");
    }

    #[cfg(unix)]
    #[test]
    fn files_get_ordinary_permissions_not_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (ours, plain) = (dir.path().join("ours"), dir.path().join("plain"));
        write_bytes_atomically(&ours, b"x").unwrap();
        std::fs::write(&plain, b"x").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&ours), mode(&plain));
    }

    #[test]
    fn a_parent_that_is_a_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("plain"), b"x").unwrap();
        let err = write_bytes_atomically(&dir.path().join("plain/sub/x.h5"), b"y")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("plain is a file, not a folder") && err.contains("x.h5"),
            "{err}"
        );
    }

    #[test]
    fn writes_in_progress_are_registered_for_signal_handlers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.h5");
        let tmp = write_atomically(&path, |tmp| -> Result<PathBuf, WriteError> {
            std::fs::write(tmp, b"partial").unwrap();
            assert!(
                in_flight().iter().any(|p| p == tmp),
                "registered while writing"
            );
            Ok(tmp.to_path_buf())
        })
        .unwrap();
        assert!(!in_flight().contains(&tmp), "deregistered when done");
        let failed = write_atomically(&path, |tmp| -> Result<(), WriteError> {
            Err(WriteError {
                path: tmp.to_path_buf(),
                source: std::io::Error::other("boom"),
            })
        });
        assert!(failed.is_err());
        assert!(in_flight().iter().all(|p| p.parent() != Some(dir.path())));
    }

    #[test]
    fn a_failed_write_keeps_the_old_file_and_removes_the_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keep.txt");
        write_bytes_atomically(&path, b"old").unwrap();
        let err = write_atomically(&path, |tmp| -> Result<(), crate::Error> {
            std::fs::write(tmp, b"half").unwrap();
            Err(crate::Error::BadInput("the writer failed".into()))
        })
        .unwrap_err();
        assert!(err.to_string().contains("the writer failed"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(names(dir.path()), ["keep.txt"]);
    }

    #[test]
    fn errors_name_the_destination() {
        let dir = tempfile::tempdir().unwrap();
        // A file where the folder should be: the folder cannot be created.
        std::fs::write(dir.path().join("file"), b"x").unwrap();
        let path = dir.path().join("file/sub/x.txt");
        let err = write_bytes_atomically(&path, b"x").unwrap_err();
        assert_eq!(err.path, path);
        assert!(err.to_string().contains("file/sub/x.txt"), "{err}");
        // Renaming onto a folder fails; the temporary file is removed.
        let folder = dir.path().join("folder");
        std::fs::create_dir(&folder).unwrap();
        std::fs::write(folder.join("inside"), b"x").unwrap();
        let err = crate::Error::from(write_bytes_atomically(&folder, b"x").unwrap_err());
        assert!(err.to_string().contains("folder"), "{err}");
        assert_eq!(names(dir.path()), ["file", "folder"]);
    }
}
