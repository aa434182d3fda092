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
            break;
        }
        parent = p.parent();
    }
    Ok(())
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
            bail!("{a} and {b} name the same file {}", pa.display());
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
        let (a, b) = (dir.path().join("a.h5"), dir.path().join("./a.h5"));
        let err = check_distinct(&[("--out", &a)], Some(("--noise", &b))).unwrap_err();
        assert!(err.to_string().contains("--out and --noise"), "{err}");
        check_distinct(&[("--out", &a), ("--grid", &file)], None).unwrap();
    }
}
