//! TensorBoard event files: scalars and histograms written during training so that
//! `tensorboard --logdir <summaries>` shows the run, as the reference retrain tool does.
//!
//! The format is a TFRecord file of protobuf `tensorflow.Event` messages. We write both
//! by hand: the framing is a length and two CRC32C checksums, and the three messages we
//! need (Event, Summary with its Value, HistogramProto) take a few varint/fixed64
//! helpers. A protobuf toolchain (code generator, build script, runtime crate) for three
//! messages would be far heavier than these sixty lines, and the `tensorboard-rs` crate
//! brings the old `protobuf` 2 runtime and a second, older `image` crate with it.
//!
//! Event files are append-only logs that TensorBoard reads while training runs, so they
//! are deliberately not written atomically: each record is self-checking, and a reader
//! ignores a truncated last record.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};

/// Number of equal-width buckets a histogram is split into.
const HISTOGRAM_BUCKETS: usize = 30;

/// Appends TensorBoard events to one `events.out.tfevents.*` file in a folder.
pub struct SummaryWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl SummaryWriter {
    /// Creates `dir` (and its parents) and a new event file in it, named
    /// `events.out.tfevents.<unix seconds>.<host name>` like TensorFlow's, and writes
    /// the file-version record TensorBoard expects first.
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let now = unix_seconds();
        let base = format!("events.out.tfevents.{:010}.{}", now as u64, host_name());
        // Two writers started in the same second in the same folder (a quick re-run)
        // must not append to each other's file.
        let mut attempt = 0u32;
        let (path, file) = loop {
            let name = match attempt {
                0 => base.clone(),
                n => format!("{base}.{n}"),
            };
            let path = dir.join(name);
            match File::options().write(true).create_new(true).open(&path) {
                Ok(file) => break (path, file),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 1000 => {
                    attempt += 1
                }
                Err(e) => return Err(Error::io(path, e)),
            }
        };
        let mut writer = SummaryWriter {
            path,
            out: BufWriter::new(file),
        };
        let mut event = event_header(now, 0);
        put_bytes(&mut event, 3, b"brain.Event:2");
        writer.write_record(&event)?;
        writer.flush()?;
        Ok(writer)
    }

    /// The event file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records `value` for `tag` at training step `step`.
    pub fn scalar(&mut self, tag: &str, step: i64, value: f32) -> Result<()> {
        let mut summary_value = Vec::new();
        put_bytes(&mut summary_value, 1, tag.as_bytes());
        put_key(&mut summary_value, 2, WIRE_FIXED32);
        summary_value.extend_from_slice(&value.to_le_bytes());
        self.write_summary(step, &summary_value)
    }

    /// Records the distribution of `values` for `tag` at step `step`, in
    /// [`HISTOGRAM_BUCKETS`] equal-width buckets between the smallest and largest value.
    /// Non-finite values are left out (they have no place on the axis).
    pub fn histogram(&mut self, tag: &str, step: i64, values: &[f32]) -> Result<()> {
        let histo = encode_histogram(values);
        let mut summary_value = Vec::new();
        put_bytes(&mut summary_value, 1, tag.as_bytes());
        put_bytes(&mut summary_value, 5, &histo);
        self.write_summary(step, &summary_value)
    }

    /// Pushes buffered events to the file, so a running TensorBoard sees them.
    pub fn flush(&mut self) -> Result<()> {
        self.out.flush().map_err(|e| Error::io(&self.path, e))
    }

    fn write_summary(&mut self, step: i64, summary_value: &[u8]) -> Result<()> {
        let mut summary = Vec::new();
        put_bytes(&mut summary, 1, summary_value);
        let mut event = event_header(unix_seconds(), step);
        put_bytes(&mut event, 5, &summary);
        self.write_record(&event)
    }

    /// TFRecord framing: length, its masked CRC, the data, the data's masked CRC.
    fn write_record(&mut self, data: &[u8]) -> Result<()> {
        let length = (data.len() as u64).to_le_bytes();
        let mut record = Vec::with_capacity(data.len() + 16);
        record.extend_from_slice(&length);
        record.extend_from_slice(&masked_crc32c(&length).to_le_bytes());
        record.extend_from_slice(data);
        record.extend_from_slice(&masked_crc32c(data).to_le_bytes());
        self.out
            .write_all(&record)
            .map_err(|e| Error::io(&self.path, e))
    }
}

fn unix_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The host name for the file name, as TensorFlow does, reduced to characters that are
/// safe in a file name; "graft" when it cannot be found.
fn host_name() -> String {
    let raw = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .unwrap_or_default();
    let clean: String = raw
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .collect();
    if clean.is_empty() {
        "graft".to_string()
    } else {
        clean
    }
}

/// The `Event` fields every record starts with: wall_time (1) and step (2).
fn event_header(wall_time: f64, step: i64) -> Vec<u8> {
    let mut event = Vec::new();
    put_double(&mut event, 1, wall_time);
    put_key(&mut event, 2, WIRE_VARINT);
    // int64 is encoded as the two's-complement u64 (10 bytes when negative).
    put_varint(&mut event, step as u64);
    event
}

/// A `HistogramProto` of the finite `values`. Bucket `i` counts the values in
/// `(limit[i-1], limit[i]]`, the first one from `min`; TensorBoard reads it that way.
fn encode_histogram(values: &[f32]) -> Vec<u8> {
    let finite: Vec<f64> = values
        .iter()
        .filter(|v| v.is_finite())
        .map(|&v| f64::from(v))
        .collect();
    let (min, max) = finite
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    let (limits, counts) = if finite.is_empty() {
        (vec![0.0], vec![0.0])
    } else if min == max {
        (vec![max], vec![finite.len() as f64])
    } else {
        let width = (max - min) / HISTOGRAM_BUCKETS as f64;
        let mut counts = vec![0.0; HISTOGRAM_BUCKETS];
        for &v in &finite {
            let bucket = (((v - min) / width) as usize).min(HISTOGRAM_BUCKETS - 1);
            counts[bucket] += 1.0;
        }
        let mut limits: Vec<f64> = (1..HISTOGRAM_BUCKETS)
            .map(|i| min + width * i as f64)
            .collect();
        limits.push(max);
        (limits, counts)
    };
    let (min, max) = if finite.is_empty() {
        (0.0, 0.0)
    } else {
        (min, max)
    };

    let mut histo = Vec::new();
    put_double(&mut histo, 1, min);
    put_double(&mut histo, 2, max);
    put_double(&mut histo, 3, finite.len() as f64);
    put_double(&mut histo, 4, finite.iter().sum());
    put_double(&mut histo, 5, finite.iter().map(|v| v * v).sum());
    put_packed_doubles(&mut histo, 6, &limits);
    put_packed_doubles(&mut histo, 7, &counts);
    histo
}

// --- protobuf encoding -------------------------------------------------------------

const WIRE_VARINT: u32 = 0;
const WIRE_FIXED64: u32 = 1;
const WIRE_LEN: u32 = 2;
const WIRE_FIXED32: u32 = 5;

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_key(out: &mut Vec<u8>, field: u32, wire_type: u32) {
    put_varint(out, u64::from(field << 3 | wire_type));
}

fn put_double(out: &mut Vec<u8>, field: u32, value: f64) {
    put_key(out, field, WIRE_FIXED64);
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_key(out, field, WIRE_LEN);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn put_packed_doubles(out: &mut Vec<u8>, field: u32, values: &[f64]) {
    put_key(out, field, WIRE_LEN);
    put_varint(out, (values.len() * 8) as u64);
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

// --- CRC32C (Castagnoli), as TFRecord requires ---------------------------------------

/// Reflected Castagnoli polynomial.
const CRC32C_POLY: u32 = 0x82f6_3b78;

const CRC32C_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ CRC32C_POLY
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

fn crc32c(data: &[u8]) -> u32 {
    !data.iter().fold(!0u32, |crc, &byte| {
        CRC32C_TABLE[((crc ^ u32::from(byte)) & 0xff) as usize] ^ (crc >> 8)
    })
}

/// TFRecord stores CRCs masked, so that a CRC of data that itself holds CRCs stays
/// well distributed.
fn masked_crc32c(data: &[u8]) -> u32 {
    let crc = crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_known_vectors() {
        assert_eq!(crc32c(b""), 0);
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        // RFC 3720 (iSCSI) test vectors.
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62A8_AB43);
        let ascending: Vec<u8> = (0..32).collect();
        assert_eq!(crc32c(&ascending), 0x46DD_794E);
    }

    #[test]
    fn varints_match_the_protobuf_spec() {
        let enc = |v: u64| {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            out
        };
        assert_eq!(enc(1), [0x01]);
        assert_eq!(enc(150), [0x96, 0x01]);
        assert_eq!(enc(300), [0xac, 0x02]);
        assert_eq!(enc(-1i64 as u64).len(), 10);
    }

    // --- a minimal reader, to check what we write ----------------------------------

    #[derive(Debug, PartialEq)]
    enum Field {
        Varint(u64),
        Fixed64([u8; 8]),
        Fixed32([u8; 4]),
        Bytes(Vec<u8>),
    }

    fn read_varint(data: &[u8], pos: &mut usize) -> u64 {
        let mut value = 0u64;
        let mut shift = 0;
        loop {
            let byte = data[*pos];
            *pos += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return value;
            }
            shift += 7;
        }
    }

    fn parse(data: &[u8]) -> Vec<(u32, Field)> {
        let mut pos = 0;
        let mut fields = Vec::new();
        while pos < data.len() {
            let key = read_varint(data, &mut pos);
            let field = (key >> 3) as u32;
            let value = match key & 7 {
                0 => Field::Varint(read_varint(data, &mut pos)),
                1 => {
                    pos += 8;
                    Field::Fixed64(data[pos - 8..pos].try_into().unwrap())
                }
                2 => {
                    let len = read_varint(data, &mut pos) as usize;
                    pos += len;
                    Field::Bytes(data[pos - len..pos].to_vec())
                }
                5 => {
                    pos += 4;
                    Field::Fixed32(data[pos - 4..pos].try_into().unwrap())
                }
                other => panic!("unexpected wire type {other}"),
            };
            fields.push((field, value));
        }
        fields
    }

    fn get(fields: &[(u32, Field)], number: u32) -> &Field {
        &fields.iter().find(|(n, _)| *n == number).unwrap().1
    }

    fn bytes(field: &Field) -> &[u8] {
        match field {
            Field::Bytes(b) => b,
            other => panic!("expected bytes, got {other:?}"),
        }
    }

    fn double(field: &Field) -> f64 {
        match field {
            Field::Fixed64(b) => f64::from_le_bytes(*b),
            other => panic!("expected double, got {other:?}"),
        }
    }

    fn doubles(field: &Field) -> Vec<f64> {
        bytes(field)
            .chunks(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    /// Splits a TFRecord file into its records, checking both CRCs of each.
    fn records(file: &[u8]) -> Vec<Vec<u8>> {
        let mut pos = 0;
        let mut out = Vec::new();
        while pos < file.len() {
            let length_bytes = &file[pos..pos + 8];
            let length = u64::from_le_bytes(length_bytes.try_into().unwrap()) as usize;
            let length_crc = u32::from_le_bytes(file[pos + 8..pos + 12].try_into().unwrap());
            assert_eq!(length_crc, masked_crc32c(length_bytes));
            let data = &file[pos + 12..pos + 12 + length];
            let data_crc = u32::from_le_bytes(
                file[pos + 12 + length..pos + 16 + length]
                    .try_into()
                    .unwrap(),
            );
            assert_eq!(data_crc, masked_crc32c(data));
            out.push(data.to_vec());
            pos += 16 + length;
        }
        out
    }

    fn write_example(dir: &Path) -> PathBuf {
        let mut writer = SummaryWriter::create(dir).unwrap();
        writer.scalar("accuracy", 7, 0.875).unwrap();
        writer.scalar("cross_entropy", -3, 1.5).unwrap();
        let values: Vec<f32> = (0..100).map(|i| i as f32 / 10.0 - 2.0).collect();
        writer.histogram("final_layer/weights", 7, &values).unwrap();
        writer.flush().unwrap();
        writer.path().to_path_buf()
    }

    #[test]
    fn scalar_and_histogram_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_example(&dir.path().join("train"));
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with("events.out.tfevents."), "{name}");

        let file = std::fs::read(&path).unwrap();
        let records = records(&file);
        assert_eq!(records.len(), 4);

        let first = parse(&records[0]);
        assert_eq!(bytes(get(&first, 3)), b"brain.Event:2");
        assert!(double(get(&first, 1)) > 1.6e9, "wall time is unix seconds");

        let scalar = parse(&records[1]);
        assert_eq!(get(&scalar, 2), &Field::Varint(7));
        let summary = parse(bytes(get(&scalar, 5)));
        let value = parse(bytes(get(&summary, 1)));
        assert_eq!(bytes(get(&value, 1)), b"accuracy");
        assert_eq!(get(&value, 2), &Field::Fixed32(0.875f32.to_le_bytes()));

        let negative = parse(&records[2]);
        assert_eq!(get(&negative, 2), &Field::Varint(-3i64 as u64));

        let histogram = parse(&records[3]);
        let summary = parse(bytes(get(&histogram, 5)));
        let value = parse(bytes(get(&summary, 1)));
        assert_eq!(bytes(get(&value, 1)), b"final_layer/weights");
        let histo = parse(bytes(get(&value, 5)));
        assert!((double(get(&histo, 1)) - -2.0).abs() < 1e-6);
        assert!((double(get(&histo, 2)) - 7.9).abs() < 1e-6);
        assert_eq!(double(get(&histo, 3)), 100.0);
        let limits = doubles(get(&histo, 6));
        let counts = doubles(get(&histo, 7));
        assert_eq!(limits.len(), HISTOGRAM_BUCKETS);
        assert_eq!(counts.len(), HISTOGRAM_BUCKETS);
        assert_eq!(counts.iter().sum::<f64>(), 100.0);
        assert!(limits.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(*limits.last().unwrap(), double(get(&histo, 2)));
    }

    #[test]
    fn histogram_edge_cases() {
        let histo = parse(&encode_histogram(&[f32::NAN, 3.0, 3.0, f32::INFINITY]));
        assert_eq!(double(get(&histo, 3)), 2.0);
        assert_eq!(doubles(get(&histo, 6)), vec![3.0]);
        assert_eq!(doubles(get(&histo, 7)), vec![2.0]);
        assert_eq!(double(get(&histo, 4)), 6.0);
        assert_eq!(double(get(&histo, 5)), 18.0);

        let empty = parse(&encode_histogram(&[]));
        assert_eq!(double(get(&empty, 3)), 0.0);
        assert_eq!(doubles(get(&empty, 7)), vec![0.0]);
    }

    #[test]
    fn two_writers_in_one_folder_get_separate_files() {
        let dir = tempfile::tempdir().unwrap();
        let a = SummaryWriter::create(dir.path()).unwrap();
        let b = SummaryWriter::create(dir.path()).unwrap();
        assert_ne!(a.path(), b.path());
    }

    #[test]
    fn error_names_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("not-a-dir");
        std::fs::write(&blocker, b"x").unwrap();
        let err = SummaryWriter::create(&blocker.join("train")).err().unwrap();
        assert!(err.to_string().contains("not-a-dir"), "{err}");
    }
}
