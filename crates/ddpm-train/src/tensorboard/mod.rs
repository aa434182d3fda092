//! TensorBoard event files of a run (`RUN/tensorboard/`): the metrics records as scalars, sample
//! grids as PNG images and the resolved config as text, in TFRecord-framed `Event` protobufs
//! ([`record`], [`proto`]) that TensorBoard reads as it reads PyTorch's `SummaryWriter` files.
//!
//! Each training session writes its own file, `events.out.tfevents.NNNN.ddpm-rs` (NNNN counts the
//! sessions, so files sort in the order they were written). The first event of a file is the
//! `brain.Event:2` file version; a resumed session's second event is a `SessionLog` START at its
//! first new step, on which TensorBoard drops what earlier files recorded at that step or later
//! (the steps a killed session logged after its last checkpoint, which the resumed session logs
//! again). Writes are buffered and flushed by [`EventWriter::flush`], which the engine calls at
//! every log window and evaluation, so a crash loses at most the records since the last flush.
pub mod proto;
pub mod record;

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use image::RgbImage;
use prost::Message;
use serde_json::Value as Json;

use crate::error::{Result, TrainError};
use proto::{Event, Kind, PluginData, SessionLog, SessionStatus, Summary, SummaryMetadata, What};

/// What every event file starts with, naming the format version (2: restarts are marked by
/// `SessionLog` START events).
pub const FILE_VERSION: &str = "brain.Event:2";
/// How event file names start (TensorBoard reads files whose name contains `tfevents`).
const PREFIX: &str = "events.out.tfevents.";
/// How ddpm-rs's event file names end.
const SUFFIX: &str = ".ddpm-rs";

/// An open event file: one session's events, appended and flushed on request.
#[derive(Debug)]
pub struct EventWriter {
    path: PathBuf,
    out: Mutex<BufWriter<File>>,
}

impl EventWriter {
    /// Creates `dir` if needed and a new event file in it, named after the files there, and
    /// writes its file version. `purge_from`: the session resumes a run and its first new step is
    /// this one; a `SessionLog` START at it makes readers drop earlier files' events from it on.
    pub fn create(dir: &Path, purge_from: Option<usize>) -> Result<Self> {
        fs::create_dir_all(dir).map_err(TrainError::io(dir))?;
        let index = event_files(dir)?
            .iter()
            .filter_map(|p| file_index(p))
            .max()
            .map_or(0, |i| i + 1);
        let path = dir.join(format!("{PREFIX}{index:04}{SUFFIX}"));
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(TrainError::io(&path))?;
        let w = Self {
            path,
            out: Mutex::new(BufWriter::new(file)),
        };
        w.write(0, What::FileVersion(FILE_VERSION.into()))?;
        if let Some(step) = purge_from {
            let log = SessionLog {
                status: SessionStatus::Start as i32,
                checkpoint_path: String::new(),
                msg: format!("resumed; steps from {step} on replace earlier records"),
            };
            w.write(step, What::SessionLog(log))?;
        }
        Ok(w)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes every field of a `metrics.jsonl` record except `step` as a scalar at the record's
    /// step ([`record_scalars`]).
    pub fn record(&self, record: &Json) -> Result<()> {
        let Some(step) = record["step"].as_u64() else {
            return Ok(());
        };
        let values = record_scalars(record);
        let refs: Vec<(&str, f64)> = values.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        self.scalars(step as usize, &refs)
    }

    /// One event at `step` with a scalar per `(tag, value)` (stored as f32, as TensorBoard does).
    pub fn scalars(&self, step: usize, values: &[(&str, f64)]) -> Result<()> {
        let value = values
            .iter()
            .map(|&(tag, v)| proto::Value {
                tag: tag.into(),
                metadata: None,
                kind: Some(Kind::SimpleValue(v as f32)),
            })
            .collect();
        self.write(step, What::Summary(Summary { value }))
    }

    /// `img` as a PNG image tagged `tag` at `step`.
    pub fn image(&self, step: usize, tag: &str, img: &RgbImage) -> Result<()> {
        let mut png = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .map_err(|e| TrainError::io(&self.path)(std::io::Error::other(e)))?;
        let image = proto::Image {
            height: img.height() as i32,
            width: img.width() as i32,
            colorspace: 3,
            encoded_image_string: png,
        };
        self.write(step, one_value(tag, None, Kind::Image(image)))
    }

    /// Markdown text tagged `tag` at `step`, for TensorBoard's text plugin (a string tensor of
    /// shape `[1]`).
    pub fn text(&self, step: usize, tag: &str, markdown: &str) -> Result<()> {
        let tensor = proto::TensorProto {
            dtype: proto::DT_STRING,
            tensor_shape: Some(proto::TensorShapeProto {
                dim: vec![proto::Dim { size: 1 }],
            }),
            string_val: vec![markdown.as_bytes().to_vec()],
        };
        let meta = SummaryMetadata {
            plugin_data: Some(PluginData {
                plugin_name: "text".into(),
                content: Vec::new(),
            }),
        };
        self.write(step, one_value(tag, Some(meta), Kind::Tensor(tensor)))
    }

    /// Hands the buffered events to the operating system (they then survive the process).
    pub fn flush(&self) -> Result<()> {
        self.lock().flush().map_err(TrainError::io(&self.path))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BufWriter<File>> {
        // A panic while holding the lock leaves whole records behind (each is one write).
        self.out.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self, step: usize, what: What) -> Result<()> {
        let event = Event {
            wall_time: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            step: step as i64,
            what: Some(what),
        };
        let bytes = record::frame(&event.encode_to_vec());
        self.lock()
            .write_all(&bytes)
            .map_err(TrainError::io(&self.path))
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            tracing::warn!(error = %e, "the TensorBoard event file could not be flushed");
        }
    }
}

/// The scalars of a `metrics.jsonl` record, `step` left out: a number under its key, a list of
/// numbers (`loss_q`, the loss by quarter of t) as `key/0`, `key/1`, …, and `null` (how JSON
/// writes a non-finite value) as NaN; text and other values are left out.
pub fn record_scalars(record: &Json) -> Vec<(String, f64)> {
    let number = |v: &Json| match v {
        Json::Number(n) => n.as_f64(),
        Json::Null => Some(f64::NAN),
        _ => None,
    };
    let Some(map) = record.as_object() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (k, v) in map.iter().filter(|(k, _)| k.as_str() != "step") {
        match v {
            Json::Array(items) => out.extend(
                items
                    .iter()
                    .enumerate()
                    .filter_map(|(i, x)| Some((format!("{k}/{i}"), number(x)?))),
            ),
            v => out.extend(number(v).map(|x| (k.clone(), x))),
        }
    }
    out
}

/// A summary event payload of one value.
fn one_value(tag: &str, metadata: Option<SummaryMetadata>, kind: Kind) -> What {
    What::Summary(Summary {
        value: vec![proto::Value {
            tag: tag.into(),
            metadata,
            kind: Some(kind),
        }],
    })
}

/// The session number NNNN of a ddpm-rs event file name.
fn file_index(path: &Path) -> Option<usize> {
    let name = path.file_name()?.to_str()?;
    name.strip_prefix(PREFIX)?
        .strip_suffix(SUFFIX)?
        .parse()
        .ok()
}

/// The event files in `dir` (names containing `tfevents`), sorted by name as TensorBoard reads
/// them; none when `dir` does not exist.
pub fn event_files(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for e in fs::read_dir(dir).map_err(TrainError::io(dir))? {
        let p = e.map_err(TrainError::io(dir))?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.contains("tfevents") && p.is_file() {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// The events of one event file, checking every record's CRCs; a damaged or cut record is an
/// error naming the file and the record's offset.
pub fn read_events(path: &Path) -> Result<Vec<Event>> {
    let bytes = fs::read(path).map_err(TrainError::io(path))?;
    let fail = |offset, message: String| TrainError::EventFile {
        path: path.to_path_buf(),
        offset,
        message,
    };
    let records = record::unframe(&bytes).map_err(|e| fail(e.offset, e.message.into()))?;
    let mut offset = 0u64;
    records
        .into_iter()
        .map(|data| {
            let at = offset;
            offset += data.len() as u64 + 16;
            Event::decode(data).map_err(|e| fail(at, format!("not an Event: {e}")))
        })
        .collect()
}

#[cfg(test)]
mod tests;
