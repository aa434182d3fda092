//! Saving and loading VarStores as safetensors by variable name, with precise errors, and JSON configs beside them.
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{de::DeserializeOwned, Serialize};
use tch::{nn::VarStore, Device, Tensor};

use crate::atomic::{write_atomically, write_bytes_atomically};
use crate::error::{Error, Result};

/// File name of a model's weights in our own model folders (baselines).
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// File name of a model's config in a model folder.
pub const CONFIG_FILE: &str = "config.json";

/// Writes named tensors to a safetensors file atomically (tensors are moved to the CPU and made contiguous).
pub fn write_tensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let cpu: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, t)| (n.clone(), t.detach().to_device(Device::Cpu).contiguous()))
        .collect();
    write_atomically(path, |tmp| {
        Tensor::write_safetensors(&cpu, tmp).map_err(Error::from)
    })
}

/// Reads all tensors of a safetensors file, in the file's order.
///
/// # Errors
/// [`Error::Io`] for a missing file; [`Error::Torch`] (a safetensors error, which names the file)
/// for a malformed one; [`Error::TorchFile`] naming the file for a tensor libtorch cannot hold
/// (e.g. dtype `U64`).
pub fn read_tensors(path: &Path) -> Result<Vec<(String, Tensor)>> {
    if !path.is_file() {
        return Err(Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        ));
    }
    Tensor::read_safetensors(path).map_err(|e| match e {
        e @ tch::TchError::SafeTensorError { .. } => Error::Torch(e),
        source => Error::TorchFile {
            path: path.to_path_buf(),
            source,
        },
    })
}

/// Saves every variable of `vs` under its name (sorted), atomically.
pub fn save_varstore(vs: &VarStore, path: &Path) -> Result<()> {
    let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    let tensors: Vec<(String, Tensor)> = vars.into_iter().collect();
    write_tensors(path, &tensors)
}

/// Loads a safetensors file into `vs` by name; every variable must be present with its shape, and no tensor may be
/// left over. Tensors are converted to the variable's kind and device.
pub fn load_varstore(vs: &mut VarStore, path: &Path) -> Result<()> {
    load_varstore_renamed(vs, path, |name| name.to_string())
}

/// As [`load_varstore`], with the file's names passed through `rename` first (e.g. to map deprecated names).
pub fn load_varstore_renamed(
    vs: &mut VarStore,
    path: &Path,
    rename: impl Fn(&str) -> String,
) -> Result<()> {
    let tensors: BTreeMap<String, Tensor> = read_tensors(path)?
        .into_iter()
        .map(|(n, t)| (rename(&n), t))
        .collect();
    let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    let var_names: BTreeSet<&String> = vars.keys().collect();
    let file_names: BTreeSet<&String> = tensors.keys().collect();
    let missing: Vec<String> = var_names
        .difference(&file_names)
        .map(|s| s.to_string())
        .collect();
    if !missing.is_empty() {
        return Err(Error::MissingTensors {
            path: path.to_path_buf(),
            names: missing,
        });
    }
    let unexpected: Vec<String> = file_names
        .difference(&var_names)
        .map(|s| s.to_string())
        .collect();
    if !unexpected.is_empty() {
        return Err(Error::UnexpectedTensors {
            path: path.to_path_buf(),
            names: unexpected,
        });
    }
    for (name, var) in &vars {
        let src = &tensors[name];
        if src.size() != var.size() {
            return Err(Error::ShapeMismatch {
                path: path.to_path_buf(),
                name: name.clone(),
                expected: var.size(),
                found: src.size(),
            });
        }
    }
    tch::no_grad(|| -> Result<()> {
        for (name, var) in vars {
            let mut var = var;
            var.f_copy_(&tensors[&name])?;
        }
        Ok(())
    })
}

/// Writes a config as pretty JSON, atomically.
pub fn write_json<C: Serialize>(path: &Path, config: &C) -> Result<()> {
    let text = serde_json::to_string_pretty(config).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(write_bytes_atomically(path, (text + "\n").as_bytes())?)
}

/// Reads a JSON config.
pub fn read_json<C: DeserializeOwned>(path: &Path) -> Result<C> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// Saves a model folder: `config.json` (the config) and `model.safetensors` (the variables).
pub fn save_model<C: Serialize>(dir: &Path, config: &C, vs: &VarStore) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    write_json(&dir.join(CONFIG_FILE), config)?;
    save_varstore(vs, &dir.join(WEIGHTS_FILE))
}

/// Reads the config of a model folder written by [`save_model`].
pub fn read_model_config<C: DeserializeOwned>(dir: &Path) -> Result<C> {
    read_json(&dir.join(CONFIG_FILE))
}

/// Loads the weights of a model folder written by [`save_model`] into `vs` (built from its config).
pub fn load_model_weights(vs: &mut VarStore, dir: &Path) -> Result<()> {
    load_varstore(vs, &dir.join(WEIGHTS_FILE))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn, Kind};

    fn store() -> VarStore {
        let vs = VarStore::new(Device::Cpu);
        let _ = nn::linear(vs.root() / "a", 3, 2, Default::default());
        let _ = nn::conv2d(vs.root() / "b" / 0, 2, 4, 3, Default::default());
        vs
    }

    #[test]
    fn round_trip_and_named_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let vs = store();
        save_varstore(&vs, &path).unwrap();
        let mut other = store();
        load_varstore(&mut other, &path).unwrap();
        let (a, b) = (vs.variables(), other.variables());
        for (name, t) in &a {
            assert!(t.equal(&b[name]), "{name}");
        }
        // A missing tensor is named.
        let mut tensors = read_tensors(&path).unwrap();
        tensors.retain(|(n, _)| n != "b.0.bias");
        write_tensors(&path, &tensors).unwrap();
        let err = load_varstore(&mut other, &path).unwrap_err().to_string();
        assert!(
            err.contains("`b.0.bias`") && err.contains("missing"),
            "{err}"
        );
        // A mis-shaped one too.
        tensors.push((
            "b.0.bias".into(),
            Tensor::zeros([5], (Kind::Float, Device::Cpu)),
        ));
        write_tensors(&path, &tensors).unwrap();
        let err = load_varstore(&mut other, &path).unwrap_err().to_string();
        assert!(
            err.contains("`b.0.bias`") && err.contains("[5]") && err.contains("[4]"),
            "{err}"
        );
        // And an extra one.
        tensors.pop();
        tensors.push((
            "b.0.bias".into(),
            Tensor::zeros([4], (Kind::Half, Device::Cpu)),
        ));
        tensors.push((
            "c.weight".into(),
            Tensor::zeros([1], (Kind::Float, Device::Cpu)),
        ));
        write_tensors(&path, &tensors).unwrap();
        let err = load_varstore(&mut other, &path).unwrap_err().to_string();
        assert!(
            err.contains("`c.weight`") && err.contains("unexpected"),
            "{err}"
        );
        // Half-precision tensors are converted to the variable's kind.
        tensors.pop();
        write_tensors(&path, &tensors).unwrap();
        load_varstore(&mut other, &path).unwrap();
        assert_eq!(other.variables()["b.0.bias"].kind(), Kind::Float);
        assert!(std::fs::read_dir(dir.path()).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".tmp")));
    }

    #[test]
    fn missing_file_is_named() {
        let mut vs = store();
        let err = load_varstore(&mut vs, Path::new("/nonexistent/w.safetensors"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/w.safetensors"), "{err}");
    }
}
