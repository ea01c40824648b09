//! TensorBoard event files in a run directory (`tensorboard --logdir RUN_DIR`).
//!
//! One file, `events.out.tfevents.<unix seconds>.vmt-hub`, of TFRecord records (a
//! little-endian u64 length, its masked CRC32C, the bytes, their masked CRC32C), each an
//! `Event` protobuf (tensorflow/core/util/event.proto): first `file_version:
//! "brain.Event:2"`, then scalar summaries (`simple_value`) and image summaries (PNG).
//! On `--resume` the file is rewritten with only the events up to the checkpoint's
//! step (validation metrics left out: the run logs them again when it finishes), then
//! appended to, so that every step appears exactly once whatever happened after the
//! checkpoint (TensorBoard shows duplicates otherwise).

use std::io::Write;
use std::path::{Path, PathBuf};

use prost::Message;

use crate::error::{Error, Result};

/// The prefix of an event file's name (TensorBoard looks for `tfevents`).
pub const EVENTS_PREFIX: &str = "events.out.tfevents.";

#[derive(Clone, PartialEq, prost::Message)]
struct Event {
    #[prost(double, tag = "1")]
    wall_time: f64,
    #[prost(int64, tag = "2")]
    step: i64,
    #[prost(oneof = "What", tags = "3, 5")]
    what: Option<What>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum What {
    #[prost(string, tag = "3")]
    FileVersion(String),
    #[prost(message, tag = "5")]
    Summary(Summary),
}

#[derive(Clone, PartialEq, prost::Message)]
struct Summary {
    #[prost(message, repeated, tag = "1")]
    value: Vec<SummaryValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SummaryValue {
    #[prost(string, tag = "1")]
    tag: String,
    #[prost(oneof = "Value", tags = "2, 4")]
    value: Option<Value>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum Value {
    #[prost(float, tag = "2")]
    SimpleValue(f32),
    #[prost(message, tag = "4")]
    Image(Image),
}

#[derive(Clone, PartialEq, prost::Message)]
struct Image {
    #[prost(int32, tag = "1")]
    height: i32,
    #[prost(int32, tag = "2")]
    width: i32,
    /// 3: RGB.
    #[prost(int32, tag = "3")]
    colorspace: i32,
    #[prost(bytes = "vec", tag = "4")]
    encoded_image_string: Vec<u8>,
}

/// TFRecord's masked CRC32C.
fn masked_crc(bytes: &[u8]) -> u32 {
    let c = crc32c::crc32c(bytes);
    c.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One TFRecord.
fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

/// The events of a file, as long as its records are whole and their CRCs hold (a
/// torn last record, as a crash leaves, ends the list).
fn read_events(bytes: &[u8]) -> Vec<Event> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 12 {
        let len_bytes: [u8; 8] = rest[..8].try_into().expect("8 bytes");
        let crc = u32::from_le_bytes(rest[8..12].try_into().expect("4 bytes"));
        let len = usize::try_from(u64::from_le_bytes(len_bytes)).unwrap_or(usize::MAX);
        if crc != masked_crc(&len_bytes) || rest.len().saturating_sub(16) < len {
            break;
        }
        let data = &rest[12..12 + len];
        let data_crc = u32::from_le_bytes(rest[12 + len..16 + len].try_into().expect("4 bytes"));
        if data_crc != masked_crc(data) {
            break;
        }
        match Event::decode(data) {
            Ok(e) => out.push(e),
            Err(_) => break,
        }
        rest = &rest[16 + len..];
    }
    out
}

/// Whether an event holds validation metrics (`val/...`) only.
fn is_validation(e: &Event) -> bool {
    matches!(&e.what, Some(What::Summary(s))
        if !s.value.is_empty() && s.value.iter().all(|v| v.tag.starts_with("val/")))
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The event file of a run directory.
pub struct EventWriter {
    path: PathBuf,
    file: std::fs::File,
}

impl EventWriter {
    /// Opens the run's event file: a new one for a fresh run (`step` 0); for a resumed
    /// run, its existing file cut back to the events of steps up to `step`.
    ///
    /// # Errors
    /// The file cannot be read or written.
    pub fn open(run_dir: &Path, step: usize) -> Result<Self> {
        let existing = event_files(run_dir)?;
        let path = existing
            .last()
            .cloned()
            .unwrap_or_else(|| run_dir.join(format!("{EVENTS_PREFIX}{}.vmt-hub", now() as u64)));
        let mut kept = Vec::new();
        if step > 0 {
            if let Ok(bytes) = std::fs::read(&path) {
                for e in read_events(&bytes) {
                    // Validation is logged again when the run finishes.
                    if e.step <= step as i64 && !is_validation(&e) {
                        kept.extend(record(&e.encode_to_vec()));
                    }
                }
            }
        }
        for old in existing.iter().filter(|p| **p != path) {
            let _ = std::fs::remove_file(old);
        }
        if kept.is_empty() {
            let header = Event {
                wall_time: now(),
                step: 0,
                what: Some(What::FileVersion("brain.Event:2".into())),
            };
            kept = record(&header.encode_to_vec());
        }
        vmt_registry::file::write_atomic(&path, &kept).map_err(|e| Error::io(&path, e))?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        Ok(Self { path, file })
    }

    fn write(&mut self, step: usize, value: Vec<SummaryValue>) -> Result<()> {
        let event = Event {
            wall_time: now(),
            step: step as i64,
            what: Some(What::Summary(Summary { value })),
        };
        self.file
            .write_all(&record(&event.encode_to_vec()))
            .map_err(|e| Error::io(&self.path, e))
    }

    /// Scalars `(tag, value)` at `step`, in one event.
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn scalars(&mut self, step: usize, values: &[(String, f64)]) -> Result<()> {
        let value = values
            .iter()
            .map(|(tag, v)| SummaryValue {
                tag: tag.clone(),
                value: Some(Value::SimpleValue(*v as f32)),
            })
            .collect();
        self.write(step, value)
    }

    /// An RGB image under `tag` at `step` (stored as PNG).
    ///
    /// # Errors
    /// The image cannot be encoded or the file written.
    pub fn image(&mut self, step: usize, tag: &str, img: &image::RgbImage) -> Result<()> {
        let mut png = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .map_err(|e| Error::Invalid(format!("encoding {tag} as PNG: {e}")))?;
        let value = vec![SummaryValue {
            tag: tag.into(),
            value: Some(Value::Image(Image {
                height: img.height() as i32,
                width: img.width() as i32,
                colorspace: 3,
                encoded_image_string: png,
            })),
        }];
        self.write(step, value)
    }

    /// Makes what was written durable (at checkpoints).
    ///
    /// # Errors
    /// The file cannot be synced.
    pub fn flush(&mut self) -> Result<()> {
        self.file.sync_data().map_err(|e| Error::io(&self.path, e))
    }
}

/// The event files of `run_dir`, oldest name first.
fn event_files(run_dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = match std::fs::read_dir(run_dir) {
        Ok(entries) => entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(EVENTS_PREFIX))
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(Error::io(run_dir, e)),
    };
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_a_torn_tail_is_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let mut w = EventWriter::open(tmp.path(), 0).unwrap();
        for step in 1..=3 {
            w.scalars(step, &[("loss/total".into(), step as f64)])
                .unwrap();
        }
        drop(w);
        let path = event_files(tmp.path()).unwrap().remove(0);
        let mut bytes = std::fs::read(&path).unwrap();
        let events = read_events(&bytes);
        assert_eq!(events.len(), 4, "the header and three steps");
        assert!(matches!(&events[0].what, Some(What::FileVersion(v)) if v == "brain.Event:2"));
        bytes.truncate(bytes.len() - 3);
        assert_eq!(read_events(&bytes).len(), 3);
        // Resumed at step 2: step 3 is gone, then written again once.
        let mut w = EventWriter::open(tmp.path(), 2).unwrap();
        w.scalars(3, &[("loss/total".into(), 3.0)]).unwrap();
        let steps: Vec<i64> = read_events(&std::fs::read(&path).unwrap())
            .iter()
            .map(|e| e.step)
            .collect();
        assert_eq!(steps, [0, 1, 2, 3]);
    }

    #[test]
    fn the_crc_is_tfrecords() {
        // TFRecord's masked CRC32C of an empty payload, as TensorFlow computes it.
        assert_eq!(masked_crc(b""), 0xa282_ead8);
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
    }
}
