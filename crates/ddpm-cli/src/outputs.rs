//! Checks of a command's output paths before it computes anything, so that a bad path fails at
//! once and a failure leaves nothing behind.
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

/// `path` can be created or replaced as a file: it is not a folder, and its parent is a folder or
/// does not exist yet (it is then created), not a file. `option` names the setting in errors.
pub fn check_writable(path: &Path, option: &str) -> Result<()> {
    if path.is_dir() {
        bail!("{option} {}: is a folder, not a file", path.display());
    }
    check_parents(path, option)
}

/// `path` can be a folder of outputs (a run directory): it is a folder or does not exist yet,
/// and no folder above it is a file.
pub fn check_folder(path: &Path, option: &str) -> Result<()> {
    if path.exists() && !path.is_dir() {
        bail!("{option} {}: is a file, not a folder", path.display());
    }
    check_parents(path, option)
}

/// The nearest existing folder above `path` is a folder, not a file.
fn check_parents(path: &Path, option: &str) -> Result<()> {
    let mut parent = path.parent();
    while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
        if p.exists() {
            if !p.is_dir() {
                bail!(
                    "{option} {}: {} is a file, not a folder",
                    path.display(),
                    p.display()
                );
            }
            if !writable(p) {
                bail!(
                    "{option} {}: cannot write into {}: {}",
                    path.display(),
                    p.display(),
                    std::io::Error::last_os_error()
                );
            }
            return Ok(());
        }
        parent = p.parent();
    }
    // A bare name: the working folder.
    if !writable(Path::new(".")) {
        bail!(
            "{option} {}: cannot write into the working folder: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// `path` names a file of one of the formats `extensions` (lower case, without the dot), so that
/// a file's name says what it holds; `option` names the setting in errors.
pub fn check_extension(path: &Path, option: &str, extensions: &[&str]) -> Result<()> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    if ext.as_deref().is_some_and(|e| extensions.contains(&e)) {
        return Ok(());
    }
    let names: Vec<String> = extensions.iter().map(|e| format!(".{e}")).collect();
    bail!(crate::usage!(
        "{option} {}: this writes {} (give a name ending in {})",
        path.display(),
        match extensions.first() {
            Some(&"png") => "a PNG image",
            Some(&"h5") => "an HDF5 file",
            _ => "a file of another format",
        },
        names.join(" or ")
    ))
}

/// Every output (option, path, extensions) can be written: [`check_writable`] and
/// [`check_extension`].
pub fn check_outputs(outputs: &[(&str, &Path, &[&str])]) -> Result<()> {
    for &(option, path, extensions) in outputs {
        check_extension(path, option, extensions)?;
        check_writable(path, option)?;
    }
    Ok(())
}

/// File-name extensions of HDF5 outputs.
pub const HDF5: &[&str] = &["h5", "hdf5"];
/// File-name extensions of PNG outputs.
pub const PNG: &[&str] = &["png"];

/// Whether this process may create files in the folder `dir` (`access(W_OK | X_OK)`: permissions,
/// and a read-only file system).
fn writable(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a NUL-terminated path that lives across the call.
    unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
}

/// An existing `path` that `option` would replace must be a file of ours to replace: an HDF5
/// samples file, not another kind of file or a dataset file (with `train` / `test` splits).
pub fn check_replaceable_samples(path: &Path, option: &str) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let mut head = [0u8; 8];
    let is_hdf5 = std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
        .is_ok()
        && &head == b"\x89HDF\r\n\x1a\n";
    let is_dataset = is_hdf5
        && ddpm_train::h5images::open(path)
            .is_ok_and(|f| f.group("train").is_ok() || f.group("test").is_ok());
    if !is_hdf5 || is_dataset {
        bail!(
            "{option} {}: exists and is {}; not replacing it (choose another name)",
            path.display(),
            if is_dataset {
                "a dataset file"
            } else {
                "not an HDF5 samples file"
            }
        );
    }
    Ok(())
}

/// `path` as one shell word: unchanged when it holds only safe characters, else in single quotes
/// (for the commands that are printed for the user to run, e.g. the resume command).
pub fn shell_quote(path: &Path) -> String {
    let s = path.display().to_string();
    let safe = |c: char| c.is_ascii_alphanumeric() || "_-./,:=+@%".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        s
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// The output paths (option, path) name different files, none of them the `input` file.
pub fn check_distinct(outputs: &[(&str, &PathBuf)], input: Option<(&str, &PathBuf)>) -> Result<()> {
    let key = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let all: Vec<(&str, PathBuf)> = outputs
        .iter()
        .map(|(o, p)| (*o, key(p)))
        .chain(input.map(|(o, p)| (o, key(p))))
        .collect();
    for (i, (a, pa)) in all.iter().enumerate() {
        if let Some((b, _)) = all[i + 1..].iter().find(|(_, pb)| pb == pa) {
            bail!(crate::usage!(
                "{a} and {b} name the same file {}",
                pa.display()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_files_as_parents_and_shared_paths_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        assert!(check_writable(dir.path(), "--x")
            .unwrap_err()
            .to_string()
            .contains("folder"));
        let under = file.join("a/b.h5");
        assert!(check_writable(&under, "--x")
            .unwrap_err()
            .to_string()
            .contains("is a file"));
        check_writable(&dir.path().join("new/sub/o.h5"), "--x").unwrap();
        assert!(check_folder(&file.join("run"), "--out")
            .unwrap_err()
            .to_string()
            .contains("is a file"));
        assert!(check_folder(&file, "--out").is_err());
        check_folder(&dir.path().join("new/run"), "--out").unwrap();
        let (a, b) = (dir.path().join("a.h5"), dir.path().join("./a.h5"));
        let err = check_distinct(&[("--out", &a)], Some(("--noise", &b))).unwrap_err();
        assert!(err.to_string().contains("--out and --noise"), "{err}");
        check_distinct(&[("--out", &a), ("--grid", &file)], None).unwrap();
    }

    #[test]
    fn printed_paths_are_one_shell_word() {
        assert_eq!(shell_quote(Path::new("runs/a-1")), "runs/a-1");
        assert_eq!(shell_quote(Path::new("my runs/$x")), "'my runs/$x'");
        assert_eq!(shell_quote(Path::new("it's")), "'it'\\''s'");
    }

    #[test]
    fn a_name_must_say_what_the_file_holds() {
        check_extension(Path::new("a/s.H5"), "--out", HDF5).unwrap();
        check_extension(Path::new("g.png"), "--grid", PNG).unwrap();
        for (path, exts) in [("s.png", HDF5), ("p.txt", PNG), ("noext", PNG)] {
            let err = check_extension(Path::new(path), "--x", exts).unwrap_err();
            assert!(err.downcast_ref::<crate::exit::Usage>().is_some(), "{err}");
            assert!(err.to_string().contains(path), "{err}");
        }
    }
}
