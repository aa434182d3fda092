//! The rows of the table and their samples: DDPM with DPM-Solver++ 20, DDIM 50 and ancestral
//! sampling on all T steps, the GAN's generator and the VAE's decoder. Samples are drawn in chunk
//! files (`DIR/samples/<row>/chunk-NNN.h5` with a `.json` of how long it took), each from its own
//! seed, so that a stopped command loses at most one chunk and a rerun draws the same images.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result};
use ddpm_metrics::ImageSource;
use ddpm_train::model_io::write_samples;
use ndarray::{Array4, Axis};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tch::Tensor;

use super::plan::{write_text, Protocol};

/// Where a row's samples come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The DDPM's EMA weights with a sampler spec of `ddpm-cli sample` (`dpm++20`, `ddim50`).
    Ddpm(&'static str),
    /// The DDPM's ancestral sampler on every one of its T steps.
    Ancestral,
    /// The GAN's generator.
    Gan,
    /// The VAE's decoder means.
    Vae,
}

/// One row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowSpec {
    /// File-name id (`ddpm-dpmpp20`).
    pub id: &'static str,
    /// Model column (`DDPM`, `GAN`, `VAE`).
    pub model: &'static str,
    /// Sampler column (`DPM-Solver++ 20`).
    pub sampler: &'static str,
    /// Where the samples come from.
    pub source: Source,
}

/// The rows, in table order.
pub const ROWS: [RowSpec; 5] = [
    RowSpec {
        id: "ddpm-dpmpp20",
        model: "DDPM",
        sampler: "DPM-Solver++ 20",
        source: Source::Ddpm("dpm++20"),
    },
    RowSpec {
        id: "ddpm-ddim50",
        model: "DDPM",
        sampler: "DDIM 50",
        source: Source::Ddpm("ddim50"),
    },
    RowSpec {
        id: "ddpm-ancestral",
        model: "DDPM",
        sampler: "ancestral, all T steps",
        source: Source::Ancestral,
    },
    RowSpec {
        id: "gan",
        model: "GAN",
        sampler: "generator",
        source: Source::Gan,
    },
    RowSpec {
        id: "vae",
        model: "VAE",
        sampler: "decoder mean",
        source: Source::Vae,
    },
];

impl RowSpec {
    /// Samples this row draws under `p`.
    pub fn samples(&self, p: &Protocol) -> usize {
        p.samples_for(self.source == Source::Ancestral)
    }

    /// Network calls per sample (for time estimates): the sampler's steps, 1 for the baselines.
    pub fn calls_per_sample(&self, timesteps: usize) -> usize {
        match self.source {
            Source::Ddpm(spec) => spec
                .trim_start_matches(|c: char| !c.is_ascii_digit())
                .parse()
                .unwrap_or(timesteps),
            Source::Ancestral => timesteps,
            Source::Gan | Source::Vae => 1,
        }
    }
}

/// How one chunk file was made.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChunkInfo {
    /// Images in the chunk.
    pub n: usize,
    /// Wall-clock seconds of drawing them.
    pub secs: f64,
    /// The seed of its noise.
    pub seed: u64,
}

/// Draws `n` images as `chunk(count, seed) → uint8 [count, H, W, C]`.
pub type Draw<'a> = dyn FnMut(usize, u64) -> Result<Tensor> + 'a;

/// The chunk files of a row, drawing the missing ones with `draw`; returns all images in order
/// and the seconds per image over all chunks (this command's and earlier ones'). Checks `stop`
/// between chunks (`Err` from `stopped()` when set).
pub fn draw_row(
    dir: &Path,
    row: &RowSpec,
    p: &Protocol,
    draw: &mut Draw<'_>,
    stop: &AtomicBool,
    stopped: &dyn Fn() -> anyhow::Error,
    mut on_chunk: impl FnMut(usize, usize),
) -> Result<(Array4<u8>, f64)> {
    let n = row.samples(p);
    let folder = dir.join("samples").join(row.id);
    let chunks = n.div_ceil(p.chunk);
    let (mut parts, mut secs) = (Vec::with_capacity(chunks), 0.0);
    for k in 0..chunks {
        let count = p.chunk.min(n - k * p.chunk);
        let (h5, info) = chunk_paths(&folder, k);
        let done: Option<ChunkInfo> = read_json_if_present(&info)?;
        let info_now = match done {
            Some(i) if i.n == count && h5.is_file() => i,
            _ => {
                if stop.load(Ordering::SeqCst) {
                    return Err(stopped());
                }
                let seed = ddpm_train::engine::step_seed(p.seed ^ row_salt(row.id), k);
                let start = Instant::now();
                let images = draw(count, seed)?;
                let i = ChunkInfo {
                    n: count,
                    secs: start.elapsed().as_secs_f64(),
                    seed,
                };
                write_samples(&h5, &images, &[("row", row.id.to_string())])?;
                write_json(&info, &i)?;
                i
            }
        };
        secs += info_now.secs;
        let images = ImageSource::Samples { path: h5.clone() }
            .load(None)
            .with_context(|| format!("{}", h5.display()))?;
        anyhow::ensure!(
            images.dim().0 == count,
            "{}: {} images, its .json says {count}; remove the file to draw it again",
            h5.display(),
            images.dim().0
        );
        parts.push(images);
        on_chunk(k + 1, chunks);
    }
    let views: Vec<_> = parts.iter().map(|a| a.view()).collect();
    let all = ndarray::concatenate(Axis(0), &views).context("the chunks of one row")?;
    Ok((all, secs / n as f64))
}

fn chunk_paths(folder: &Path, k: usize) -> (PathBuf, PathBuf) {
    (
        folder.join(format!("chunk-{k:03}.h5")),
        folder.join(format!("chunk-{k:03}.json")),
    )
}

/// A different seed stream per row (FNV-1a of its id).
fn row_salt(id: &str) -> u64 {
    id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Reads a JSON file written by [`write_json`]; `None` when it does not exist.
///
/// # Errors
/// An unreadable or invalid file, naming it.
pub fn read_json_if_present<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    if !path.exists() {
        return Ok(None);
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let v = serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: not what this command wrote (remove it to redo that part)",
            path.display()
        )
    })?;
    Ok(Some(v))
}

/// Writes `value` as pretty JSON, atomically.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    write_text(
        path,
        &(serde_json::to_string_pretty(value).expect("serialisable") + "\n"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_have_distinct_ids_and_seed_streams() {
        let mut ids: Vec<_> = ROWS.iter().map(|r| r.id).collect();
        ids.dedup();
        assert_eq!(ids.len(), ROWS.len());
        assert_ne!(row_salt("gan"), row_salt("vae"));
        assert_eq!(ROWS[0].calls_per_sample(1000), 20);
        assert_eq!(ROWS[1].calls_per_sample(1000), 50);
        assert_eq!(ROWS[2].calls_per_sample(1000), 1000);
        assert_eq!(ROWS[3].calls_per_sample(1000), 1);
    }

    #[test]
    fn chunks_are_drawn_once_and_stop_between_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let p = Protocol {
            fid_samples: 5,
            cls_samples: 7,
            chunk: 3,
            ..Protocol::cpu()
        };
        let row = &ROWS[3];
        let mut calls = Vec::new();
        let mut draw = |count: usize, seed: u64| -> Result<Tensor> {
            calls.push((count, seed));
            Ok(Tensor::full(
                [count as i64, 2, 2, 1],
                seed as i64 % 200,
                (tch::Kind::Uint8, tch::Device::Cpu),
            ))
        };
        let stop = AtomicBool::new(false);
        let stopped = || anyhow::anyhow!("stopped");
        let (all, _) =
            draw_row(dir.path(), row, &p, &mut draw, &stop, &stopped, |_, _| {}).unwrap();
        assert_eq!(all.dim(), (7, 2, 2, 1));
        assert_eq!(calls.iter().map(|c| c.0).collect::<Vec<_>>(), [3, 3, 1]);
        let seeds: Vec<u64> = calls.iter().map(|c| c.1).collect();
        // A second pass reads the chunks back: no drawing, the same images.
        let mut none = |_: usize, _: u64| -> Result<Tensor> { panic!("drawn again") };
        let (again, _) =
            draw_row(dir.path(), row, &p, &mut none, &stop, &stopped, |_, _| {}).unwrap();
        assert_eq!(again, all);
        // A missing chunk is drawn again from the same seed; a stop request stops before it.
        std::fs::remove_file(dir.path().join("samples/gan/chunk-001.json")).unwrap();
        stop.store(true, Ordering::SeqCst);
        let err = draw_row(dir.path(), row, &p, &mut none, &stop, &stopped, |_, _| {}).unwrap_err();
        assert_eq!(err.to_string(), "stopped");
        stop.store(false, Ordering::SeqCst);
        let mut redo = Vec::new();
        let mut draw = |count: usize, seed: u64| -> Result<Tensor> {
            redo.push(seed);
            Ok(Tensor::full(
                [count as i64, 2, 2, 1],
                seed as i64 % 200,
                (tch::Kind::Uint8, tch::Device::Cpu),
            ))
        };
        let (third, _) =
            draw_row(dir.path(), row, &p, &mut draw, &stop, &stopped, |_, _| {}).unwrap();
        assert_eq!(redo, [seeds[1]]);
        assert_eq!(third, all);
    }
}
