//! `manifest.json` of a checkpoint folder: the size and sha256 of every file in it, written last
//! (after the files are synced), so that a folder with a manifest that matches its files is a
//! complete, undamaged checkpoint. `--resume` loads only such folders ([`verify`]); a truncated
//! tensor file, a flipped byte, a missing `state.json` or a missing manifest is named and skipped.
use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Result, TrainError};

/// The manifest's file name in a checkpoint folder.
pub const MANIFEST: &str = "manifest.json";

/// The files every checkpoint folder holds besides its tensor files.
pub const REQUIRED: [&str; 2] = ["state.json", "config.toml"];

/// Size and digest of one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    /// Length in bytes.
    pub bytes: u64,
    /// sha256 of the content, lower-case hex.
    pub sha256: String,
}

/// What a checkpoint folder holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Layout version (1).
    pub format: u32,
    /// Every file of the folder but the manifest, by name.
    pub files: BTreeMap<String, FileDigest>,
}

fn damaged(path: &Path, message: impl Into<String>) -> TrainError {
    TrainError::Checkpoint {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Size and sha256 of the file `path`.
///
/// # Errors
/// [`TrainError::Io`] when it cannot be read.
pub fn digest(path: &Path) -> Result<FileDigest> {
    let mut f = fs::File::open(path).map_err(TrainError::io(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(TrainError::io(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok(FileDigest {
        bytes,
        sha256: hex::encode(hasher.finalize()),
    })
}

/// Syncs every file of `dir` to disk, then writes and syncs `dir/manifest.json` listing them,
/// then syncs the folder itself.
///
/// # Errors
/// [`TrainError::Io`] naming the file that could not be read, synced or written.
pub fn write(dir: &Path) -> Result<Manifest> {
    let mut files = BTreeMap::new();
    for e in fs::read_dir(dir).map_err(TrainError::io(dir))? {
        let path = e.map_err(TrainError::io(dir))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name == MANIFEST || !path.is_file() {
            continue;
        }
        fs::File::open(&path)
            .and_then(|f| f.sync_all())
            .map_err(TrainError::io(&path))?;
        files.insert(name.to_string(), digest(&path)?);
    }
    let manifest = Manifest { format: 1, files };
    let path = dir.join(MANIFEST);
    let text = serde_json::to_string_pretty(&manifest).expect("a manifest serialises");
    fs::write(&path, text + "\n").map_err(TrainError::io(&path))?;
    for p in [path.as_path(), dir] {
        fs::File::open(p)
            .and_then(|f| f.sync_all())
            .map_err(TrainError::io(p))?;
    }
    Ok(manifest)
}

/// Checks the checkpoint folder `dir`: its manifest is there and readable, lists `state.json`
/// and `config.toml`, and every listed file exists with the recorded size and sha256.
///
/// # Errors
/// [`TrainError::Checkpoint`] naming the first missing or damaged file (or the folder when the
/// manifest is missing: a checkpoint whose writing did not finish).
pub fn verify(dir: &Path) -> Result<Manifest> {
    let path = dir.join(MANIFEST);
    if !path.is_file() {
        return Err(damaged(
            dir,
            "no manifest.json: an incomplete checkpoint (its writing did not finish)",
        ));
    }
    let text = fs::read_to_string(&path).map_err(TrainError::io(&path))?;
    let manifest: Manifest = serde_json::from_str(&text)
        .map_err(|e| damaged(&path, format!("unreadable manifest: {e}")))?;
    for name in REQUIRED {
        if !manifest.files.contains_key(name) {
            return Err(damaged(&path, format!("does not list {name}")));
        }
    }
    for (name, want) in &manifest.files {
        let file = dir.join(name);
        if !file.is_file() {
            return Err(damaged(&file, "missing (listed in manifest.json)"));
        }
        let got = digest(&file)?;
        if got.bytes != want.bytes {
            return Err(damaged(
                &file,
                format!(
                    "{} bytes, manifest.json says {} (truncated or overwritten)",
                    got.bytes, want.bytes
                ),
            ));
        }
        if got.sha256 != want.sha256 {
            return Err(damaged(
                &file,
                format!(
                    "sha256 {} differs from manifest.json's {} (damaged content)",
                    got.sha256, want.sha256
                ),
            ));
        }
    }
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint(dir: &Path) {
        fs::create_dir_all(dir).unwrap();
        fs::write(dir.join("state.json"), "{\"step\": 3}").unwrap();
        fs::write(dir.join("config.toml"), "[run]\n").unwrap();
        fs::write(dir.join("model.safetensors"), vec![7u8; 4096]).unwrap();
        write(dir).unwrap();
    }

    #[test]
    fn a_written_folder_verifies_and_each_kind_of_damage_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("step_3");
        checkpoint(&dir);
        let m = verify(&dir).unwrap();
        assert_eq!(m.files.len(), 3);
        assert_eq!(m.files["model.safetensors"].bytes, 4096);
        // A flipped byte.
        let model = dir.join("model.safetensors");
        let mut bytes = fs::read(&model).unwrap();
        bytes[100] ^= 1;
        fs::write(&model, &bytes).unwrap();
        let err = verify(&dir).unwrap_err().to_string();
        assert!(
            err.contains("model.safetensors") && err.contains("sha256"),
            "{err}"
        );
        // Truncated.
        fs::write(&model, &bytes[..1000]).unwrap();
        let err = verify(&dir).unwrap_err().to_string();
        assert!(err.contains("1000 bytes"), "{err}");
        // A missing state.json.
        checkpoint(&dir);
        fs::remove_file(dir.join("state.json")).unwrap();
        let err = verify(&dir).unwrap_err().to_string();
        assert!(
            err.contains("state.json") && err.contains("missing"),
            "{err}"
        );
        // No manifest.
        checkpoint(&dir);
        fs::remove_file(dir.join(MANIFEST)).unwrap();
        let err = verify(&dir).unwrap_err().to_string();
        assert!(err.contains("no manifest.json"), "{err}");
    }
}
