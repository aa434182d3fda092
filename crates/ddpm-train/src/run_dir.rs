//! Run directories: `config.toml`, `metrics.jsonl`, `samples/`, and atomic checkpoints under
//! `checkpoints/step_NNNNNNN/` of which the newest N are kept.
//!
//! ```text
//! RUN_DIR/config.toml            resolved config (written first)
//! RUN_DIR/metrics.jsonl          one JSON object per log interval
//! RUN_DIR/train.log              tracing output (set up by the CLI)
//! RUN_DIR/samples/step_N.png     sample grids;  RUN_DIR/loss.png  loss curve
//! RUN_DIR/checkpoints/step_N/    {model,ema,optim}.safetensors + state.json + config.toml
//! RUN_DIR/tensorboard/           TensorBoard event files, one per session (crate::tensorboard)
//! ```
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::error::{Result, TrainError};

/// What a checkpoint records besides tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimisation steps completed.
    pub step: usize,
    /// The run's seed (all randomness of step s derives from (seed, s)).
    pub seed: u64,
    /// Wall-clock seconds of training so far (summed over resumed sessions).
    pub elapsed_secs: f64,
    /// Images seen.
    pub images_seen: u64,
    /// Extra state of the importance sampler (loss history), when used.
    #[serde(default)]
    pub sampler_history: Option<Vec<Vec<f64>>>,
}

/// A run directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    /// Its path.
    pub path: PathBuf,
}

/// The folder of the best checkpoint by the evaluation metric, under `checkpoints/`.
pub const BEST: &str = "best";
/// The file in `checkpoints/best` naming its step, metric and value.
pub const BEST_FILE: &str = "best.json";

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes text atomically (see [`ddpm_nets::atomic::write_atomically`]).
fn write_text_atomic(path: &Path, text: &str) -> Result<()> {
    Ok(ddpm_nets::atomic::write_bytes_atomically(
        path,
        text.as_bytes(),
    )?)
}

impl TrainState {
    /// The state of a run that has not taken a step.
    pub fn new(seed: u64) -> Self {
        Self {
            step: 0,
            seed,
            elapsed_secs: 0.0,
            images_seen: 0,
            sampler_history: None,
        }
    }
}

impl RunDir {
    /// Creates a new run directory (it must not hold a run already) and writes `config.toml`.
    /// An unwritable location fails here, before any training.
    pub fn create(path: &Path, config: &TrainConfig) -> Result<Self> {
        Self::create_with_text(path, &config.to_toml())
    }

    /// [`RunDir::create`] with the config as TOML text (runs whose config is not a
    /// [`TrainConfig`], such as the digit classifier's).
    pub fn create_with_text(path: &Path, config_toml: &str) -> Result<Self> {
        if path.join("config.toml").exists() {
            return Err(TrainError::Checkpoint {
                path: path.to_path_buf(),
                message: "already holds a run; use --resume to continue it or choose another --out"
                    .into(),
            });
        }
        fs::create_dir_all(path.join("checkpoints")).map_err(io(path))?;
        fs::create_dir_all(path.join("samples")).map_err(io(path))?;
        let dir = Self {
            path: path.to_path_buf(),
        };
        write_text_atomic(&dir.path.join("config.toml"), config_toml)?;
        Ok(dir)
    }

    /// Opens an existing run directory.
    pub fn open(path: &Path) -> Result<Self> {
        if !path.join("config.toml").is_file() {
            let message = if path.exists() {
                "is not a run directory (no config.toml)"
            } else {
                "no such run directory"
            };
            return Err(TrainError::Checkpoint {
                path: path.to_path_buf(),
                message: message.into(),
            });
        }
        Ok(Self {
            path: path.to_path_buf(),
        })
    }

    /// Rewrites `config.toml` (a resumed run may change run settings such as `run.steps`).
    pub fn write_config(&self, config: &TrainConfig) -> Result<()> {
        self.write_config_text(&config.to_toml())
    }

    /// Writes the text file `name` of the run atomically.
    pub fn write_file(&self, name: &str, text: &str) -> Result<()> {
        write_text_atomic(&self.path.join(name), text)
    }

    /// Rewrites `config.toml` with TOML text.
    pub fn write_config_text(&self, config_toml: &str) -> Result<()> {
        write_text_atomic(&self.path.join("config.toml"), config_toml)
    }

    /// Drops `metrics.jsonl` records after `step` (written by a session that was interrupted
    /// after its last checkpoint), so a resumed run's log has each step once.
    pub fn truncate_metrics(&self, step: usize) -> Result<()> {
        let records = self.read_metrics()?;
        let kept: Vec<String> = records
            .iter()
            .filter(|r| r["step"].as_u64().is_some_and(|s| s as usize <= step))
            .map(|r| r.to_string())
            .collect();
        if kept.len() != records.len() || !self.metrics_are_whole() {
            let mut text = kept.join("\n");
            if !text.is_empty() {
                text.push('\n');
            }
            write_text_atomic(&self.path.join("metrics.jsonl"), &text)?;
        }
        Ok(())
    }

    /// The run's resolved config.
    pub fn config(&self) -> Result<TrainConfig> {
        TrainConfig::from_file(&self.path.join("config.toml"))
    }

    /// `tensorboard/`, the folder of the run's TensorBoard event files.
    pub fn tensorboard_dir(&self) -> PathBuf {
        self.path.join("tensorboard")
    }

    /// `checkpoints/`.
    pub fn checkpoints_dir(&self) -> PathBuf {
        self.path.join("checkpoints")
    }

    /// The `step_N` checkpoint folders, oldest first, as (step, dir), whether complete or not
    /// (see [`RunDir::latest_checkpoint`] for the newest verified one).
    pub fn checkpoints(&self) -> Result<Vec<(usize, PathBuf)>> {
        let dir = self.checkpoints_dir();
        let mut out = Vec::new();
        if !dir.exists() {
            return Ok(out);
        }
        for e in fs::read_dir(&dir).map_err(io(&dir))? {
            let p = e.map_err(io(&dir))?.path();
            let step = p
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("step_"))
                .and_then(|s| s.parse::<usize>().ok());
            if let (Some(step), true) = (step, p.is_dir()) {
                out.push((step, p));
            }
        }
        out.sort();
        Ok(out)
    }

    /// The newest checkpoint that verifies against its manifest ([`crate::manifest::verify`]);
    /// a newer damaged or incomplete one is named in a warning and passed over.
    pub fn latest_checkpoint(&self) -> Result<Option<PathBuf>> {
        for (_, dir) in self.checkpoints()?.into_iter().rev() {
            match crate::manifest::verify(&dir) {
                Ok(_) => return Ok(Some(dir)),
                Err(e) => tracing::warn!(checkpoint = %dir.display(), problem = %e,
                    "damaged or incomplete checkpoint passed over; using an older one"),
            }
        }
        Ok(None)
    }

    /// Every checkpoint folder (`step_N` oldest first, then `best`) with the result of
    /// verifying it against its manifest.
    pub fn verify_all(&self) -> Result<Vec<(PathBuf, Result<()>)>> {
        let mut dirs: Vec<PathBuf> = self.checkpoints()?.into_iter().map(|(_, p)| p).collect();
        let best = self.checkpoints_dir().join(BEST);
        if best.is_dir() {
            dirs.push(best);
        }
        Ok(dirs
            .into_iter()
            .map(|d| {
                let r = crate::manifest::verify(&d).map(|_| ());
                (d, r)
            })
            .collect())
    }

    /// Cleans up after a training that was killed while writing: removes the temporary folders
    /// of unfinished checkpoints (`.tmp_*`) and of removals (`.del_*`), and puts a checkpoint
    /// that was being replaced (`.old_NAME_PID`) back when `NAME` is missing. Only the holder of
    /// the run's lock may call this.
    pub fn recover(&self) -> Result<()> {
        let dir = self.checkpoints_dir();
        if !dir.is_dir() {
            return Ok(());
        }
        for e in fs::read_dir(&dir).map_err(io(&dir))? {
            let p = e.map_err(io(&dir))?.path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with(".tmp_") || name.starts_with(".del_") {
                tracing::info!(path = %p.display(), "removing what a killed training left");
                fs::remove_dir_all(&p).map_err(io(&p))?;
            } else if let Some(rest) = name.strip_prefix(".old_") {
                let original = rest.rsplit_once('_').map_or(rest, |(n, _)| n);
                let target = dir.join(original);
                if target.exists() {
                    fs::remove_dir_all(&p).map_err(io(&p))?;
                } else {
                    fs::rename(&p, &target).map_err(io(&p))?;
                }
            }
        }
        Ok(())
    }

    /// Writes a checkpoint atomically: files go to a temporary folder which is renamed to
    /// `step_N` when complete; then all but the newest `keep` are removed.
    pub fn save_checkpoint(
        &self,
        state: &TrainState,
        config_toml: &str,
        tensors: &[(&str, Vec<(String, tch::Tensor)>)],
        keep: usize,
    ) -> Result<PathBuf> {
        let name = format!("step_{:07}", state.step);
        let final_dir = self.write_checkpoint(&name, state, config_toml, tensors, None)?;
        let all = self.checkpoints()?;
        if all.len() > keep {
            for (_, p) in &all[..all.len() - keep] {
                // Renamed first, so that a kill during the removal leaves no half-deleted
                // `step_N` (recover() removes the rest).
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("step");
                let doomed = self.checkpoints_dir().join(format!(".del_{name}"));
                if fs::rename(p, &doomed).is_ok() {
                    let _ = fs::remove_dir_all(&doomed);
                }
            }
        }
        Ok(final_dir)
    }

    /// Writes `checkpoints/best` (as a checkpoint, plus `best.json` with the step, the metric and
    /// its value), replacing the previous one only once the new one is complete. It is never
    /// counted among the `step_N` checkpoints, so resuming and keep-N ignore it.
    pub fn save_best(
        &self,
        state: &TrainState,
        config_toml: &str,
        tensors: &[(&str, Vec<(String, tch::Tensor)>)],
        (metric, value, setting): (&str, f64, &str),
    ) -> Result<PathBuf> {
        let best = serde_json::json!({
            "step": state.step,
            "metric": metric,
            "value": value,
            "setting": setting,
        });
        self.write_checkpoint(BEST, state, config_toml, tensors, Some(&best))
    }

    /// What `checkpoints/best` was chosen by: its `best.json` as (metric, value, step, setting),
    /// if there is one (`setting` describes how the metric was computed; empty when unrecorded).
    ///
    /// # Errors
    /// An unreadable or malformed `best.json`, naming it.
    pub fn best(&self) -> Result<Option<(String, f64, usize, String)>> {
        let p = self.checkpoints_dir().join(BEST).join(BEST_FILE);
        if !p.is_file() {
            return Ok(None);
        }
        let text = fs::read_to_string(&p).map_err(io(&p))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| TrainError::Checkpoint {
                path: p.clone(),
                message: format!("unreadable: {e}"),
            })?;
        match (
            v["metric"].as_str(),
            v["value"].as_f64(),
            v["step"].as_u64(),
        ) {
            (Some(m), Some(value), Some(step)) => Ok(Some((
                m.to_string(),
                value,
                step as usize,
                v["setting"].as_str().unwrap_or_default().to_string(),
            ))),
            _ => Err(TrainError::Checkpoint {
                path: p,
                message: "lacks metric, value or step".into(),
            }),
        }
    }

    /// Writes the checkpoint folder `checkpoints/<name>` through a temporary folder renamed into
    /// place; a previous folder of that name is moved aside first and removed after.
    fn write_checkpoint(
        &self,
        name: &str,
        state: &TrainState,
        config_toml: &str,
        tensors: &[(&str, Vec<(String, tch::Tensor)>)],
        best: Option<&serde_json::Value>,
    ) -> Result<PathBuf> {
        let dir = self.checkpoints_dir();
        let final_dir = dir.join(name);
        let pid = std::process::id();
        let tmp = dir.join(format!(".tmp_{name}_{pid}"));
        let old = dir.join(format!(".old_{name}_{pid}"));
        let result = (|| -> Result<()> {
            fs::create_dir_all(&tmp).map_err(io(&tmp))?;
            for (group, ts) in tensors {
                ddpm_nets::checkpoint::write_tensors(
                    &tmp.join(format!("{group}.safetensors")),
                    ts,
                )?;
            }
            let json = serde_json::to_string_pretty(state).expect("state serialises");
            let texts = [
                ("state.json", Some(json)),
                ("config.toml", Some(config_toml.to_string())),
                (BEST_FILE, best.map(|b| format!("{b}\n"))),
            ];
            for (name, text) in texts {
                if let Some(text) = text {
                    let p = tmp.join(name);
                    fs::write(&p, text).map_err(io(&p))?;
                }
            }
            // Last: the manifest says the folder is complete.
            crate::manifest::write(&tmp)?;
            if final_dir.exists() {
                fs::rename(&final_dir, &old).map_err(io(&final_dir))?;
            }
            fs::rename(&tmp, &final_dir).map_err(io(&final_dir))
        })();
        if let Err(e) = result {
            let _ = fs::remove_dir_all(&tmp);
            if old.exists() && !final_dir.exists() {
                let _ = fs::rename(&old, &final_dir);
            }
            return Err(e);
        }
        let _ = fs::remove_dir_all(&old);
        Ok(final_dir)
    }

    /// Reads a checkpoint's state.
    pub fn read_state(ckpt: &Path) -> Result<TrainState> {
        let p = ckpt.join("state.json");
        let text = fs::read_to_string(&p).map_err(io(&p))?;
        serde_json::from_str(&text).map_err(|e| TrainError::Checkpoint {
            path: p.clone(),
            message: format!("unreadable state: {e}"),
        })
    }

    /// Appends one JSON line to `metrics.jsonl`.
    pub fn append_metrics(&self, record: &serde_json::Value) -> Result<()> {
        use std::io::Write;
        let p = self.path.join("metrics.jsonl");
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .map_err(io(&p))?;
        writeln!(f, "{record}").map_err(io(&p))
    }

    /// The `metrics.jsonl` records so far.
    pub fn read_metrics(&self) -> Result<Vec<serde_json::Value>> {
        let p = self.path.join("metrics.jsonl");
        if !p.exists() {
            return Ok(Vec::new());
        }
        let text = fs::read_to_string(&p).map_err(io(&p))?;
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    }

    /// Whether `metrics.jsonl` holds only whole records: every line parses and the file ends
    /// with a newline (a training killed while appending leaves a partial last line).
    fn metrics_are_whole(&self) -> bool {
        let p = self.path.join("metrics.jsonl");
        match fs::read_to_string(&p) {
            Ok(text) => {
                (text.is_empty() || text.ends_with('\n'))
                    && text
                        .lines()
                        .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok())
            }
            Err(_) => true,
        }
    }
}
