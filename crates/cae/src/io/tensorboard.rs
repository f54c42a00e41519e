//! TensorBoard event files: the records `tensorboard --logdir runs` reads, written as a run
//! goes (scalars, the reconstruction grid, weight histograms).
//!
//! Burn has no TensorBoard writer, and the maintained Rust ones pull in far more than the four
//! messages needed; these are `prost` derives of TensorBoard's own `event.proto` and
//! `summary.proto` (field numbers checked against the Python package's descriptors), framed as
//! TFRecords: length, masked CRC-32C of the length, data, masked CRC-32C of the data.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use prost::Message;

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Event {
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    #[prost(int64, tag = "2")]
    pub step: i64,
    #[prost(string, optional, tag = "3")]
    pub file_version: Option<String>,
    #[prost(message, optional, tag = "5")]
    pub summary: Option<Summary>,
    #[prost(message, optional, tag = "7")]
    pub session_log: Option<SessionLog>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SessionLog {
    /// 1: START. TensorBoard drops what an earlier session logged at this step or later, so a
    /// resumed run continues its curves without duplicate steps.
    #[prost(int32, tag = "1")]
    pub status: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Summary {
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<Value>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Value {
    #[prost(string, tag = "1")]
    pub tag: String,
    #[prost(float, optional, tag = "2")]
    pub simple_value: Option<f32>,
    #[prost(message, optional, tag = "4")]
    pub image: Option<Image>,
    #[prost(message, optional, tag = "5")]
    pub histo: Option<Histogram>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Image {
    #[prost(int32, tag = "1")]
    pub height: i32,
    #[prost(int32, tag = "2")]
    pub width: i32,
    #[prost(int32, tag = "3")]
    pub colorspace: i32,
    #[prost(bytes = "vec", tag = "4")]
    pub encoded_image_string: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Histogram {
    #[prost(double, tag = "1")]
    pub min: f64,
    #[prost(double, tag = "2")]
    pub max: f64,
    #[prost(double, tag = "3")]
    pub num: f64,
    #[prost(double, tag = "4")]
    pub sum: f64,
    #[prost(double, tag = "5")]
    pub sum_squares: f64,
    #[prost(double, repeated, tag = "6")]
    pub bucket_limit: Vec<f64>,
    #[prost(double, repeated, tag = "7")]
    pub bucket: Vec<f64>,
}

/// TFRecord's checksum: CRC-32C, rotated and offset so that checksums of data holding
/// checksums stay well distributed.
pub(crate) fn masked_crc(bytes: &[u8]) -> u32 {
    let crc = crc32c::crc32c(bytes);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One TFRecord around `data`.
pub(crate) fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend(len);
    out.extend(masked_crc(&len).to_le_bytes());
    out.extend(data);
    out.extend(masked_crc(data).to_le_bytes());
    out
}

/// The records of an event file, each checked against its two CRCs.
#[cfg(test)]
pub(crate) fn read_records(bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
    let mut records = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        anyhow::ensure!(rest.len() >= 12, "a record header is cut short");
        let (len, crc) = (&rest[..8], &rest[8..12]);
        anyhow::ensure!(
            masked_crc(len).to_le_bytes() == crc,
            "record {}: the length's CRC does not match",
            records.len()
        );
        let n = usize::try_from(u64::from_le_bytes(len.try_into().expect("8 bytes")))?;
        let data = rest
            .get(12..12 + n)
            .context("a record's data is cut short")?;
        let crc = rest
            .get(12 + n..16 + n)
            .context("a record's CRC is cut short")?;
        anyhow::ensure!(
            masked_crc(data).to_le_bytes() == crc,
            "record {}: the data's CRC does not match",
            records.len()
        );
        records.push(data.to_vec());
        rest = &rest[16 + n..];
    }
    Ok(records)
}

/// An event file in a run folder, open for appending.
#[derive(Debug)]
pub(crate) struct EventWriter {
    file: BufWriter<File>,
    path: PathBuf,
}

impl EventWriter {
    /// A new event file in `dir` (each start or resume of a run writes its own, as TensorBoard
    /// expects), beginning with the file version and a session start at `first_step`.
    pub(crate) fn create(dir: &Path, first_step: i64) -> Result<Self> {
        let stamp = wall_time();
        let name = format!(
            "events.out.tfevents.{}.cae.{}",
            stamp as u64,
            std::process::id()
        );
        // A run resumed by the same process within the same second (a library caller that
        // trains and resumes in one go) would get the same name: later files of that second
        // take a counter, which also sorts them after the first, as TensorBoard reads files in
        // name order.
        let (file, path) = (0..)
            .map(|n| match n {
                0 => dir.join(&name),
                n => dir.join(format!("{name}.{n}")),
            })
            .find_map(
                |path| match OpenOptions::new().create_new(true).append(true).open(&path) {
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => None,
                    opened => Some((opened, path)),
                },
            )
            .expect("an unused event file name");
        let file = file.with_context(|| format!("cannot create {}", path.display()))?;
        let mut writer = Self {
            file: BufWriter::new(file),
            path,
        };
        writer.write(Event {
            wall_time: stamp,
            file_version: Some("brain.Event:2".into()),
            ..Event::default()
        })?;
        writer.write(Event {
            wall_time: stamp,
            step: first_step,
            session_log: Some(SessionLog { status: 1 }),
            ..Event::default()
        })?;
        writer.flush()?;
        Ok(writer)
    }

    /// Appends `values` at `step`.
    pub(crate) fn summary(&mut self, step: i64, values: Vec<Value>) -> Result<()> {
        self.write(Event {
            wall_time: wall_time(),
            step,
            summary: Some(Summary { value: values }),
            ..Event::default()
        })
    }

    /// Makes what was written visible to a TensorBoard reading the file now.
    pub(crate) fn flush(&mut self) -> Result<()> {
        self.file
            .flush()
            .with_context(|| format!("cannot write {}", self.path.display()))
    }

    fn write(&mut self, event: Event) -> Result<()> {
        self.file
            .write_all(&record(&event.encode_to_vec()))
            .with_context(|| format!("cannot write {}", self.path.display()))
    }
}

fn wall_time() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A scalar summary value.
pub(crate) fn scalar(tag: &str, value: f64) -> Value {
    Value {
        tag: tag.to_string(),
        simple_value: Some(value as f32),
        ..Value::default()
    }
}

/// An image summary value from a PNG file's bytes.
pub(crate) fn png_image(tag: &str, png: Vec<u8>, width: u32, height: u32, channels: u8) -> Value {
    Value {
        tag: tag.to_string(),
        image: Some(Image {
            height: height as i32,
            width: width as i32,
            colorspace: i32::from(channels),
            encoded_image_string: png,
        }),
        ..Value::default()
    }
}

/// A histogram summary of `values` in 30 equal buckets between their minimum and maximum.
pub(crate) fn histogram(tag: &str, values: &[f32]) -> Value {
    const BUCKETS: usize = 30;
    let (min, max) = values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(f64::from(v)), hi.max(f64::from(v)))
        });
    let (min, max) = if values.is_empty() {
        (0.0, 0.0)
    } else {
        (min, max)
    };
    let width = ((max - min) / BUCKETS as f64).max(f64::MIN_POSITIVE);
    let mut bucket = vec![0.0; BUCKETS];
    for &v in values {
        let i = (((f64::from(v) - min) / width) as usize).min(BUCKETS - 1);
        bucket[i] += 1.0;
    }
    Value {
        tag: tag.to_string(),
        histo: Some(Histogram {
            min,
            max,
            num: values.len() as f64,
            sum: values.iter().map(|&v| f64::from(v)).sum(),
            sum_squares: values.iter().map(|&v| f64::from(v) * f64::from(v)).sum(),
            bucket_limit: (1..=BUCKETS).map(|i| min + width * i as f64).collect(),
            bucket,
        }),
        ..Value::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_carry_the_masked_crc32c_of_length_and_data() {
        // CRC-32C of "123456789" is 0xE3069283 (RFC 3720's check value).
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        let framed = record(b"event bytes");
        assert_eq!(&framed[..8], &11u64.to_le_bytes());
        assert_eq!(read_records(&framed).unwrap(), [b"event bytes".to_vec()]);
        let mut broken = framed.clone();
        broken[14] ^= 1;
        let error = read_records(&broken).unwrap_err().to_string();
        assert!(error.contains("data's CRC"), "{error}");
    }

    #[test]
    fn events_decode_back() {
        let event = Event {
            wall_time: 1.5,
            step: 7,
            summary: Some(Summary {
                value: vec![scalar("val/loss", 0.25), histogram("w", &[1.0, 2.0, 3.0])],
            }),
            ..Event::default()
        };
        let decoded = Event::decode(event.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded, event);
        let histo = decoded.summary.unwrap().value[1].histo.clone().unwrap();
        assert_eq!(histo.bucket.iter().sum::<f64>(), 3.0);
        assert_eq!((histo.min, histo.max, histo.sum), (1.0, 3.0, 6.0));
    }
}
