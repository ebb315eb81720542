//! Features as Parquet (`extract --output x.parquet`, `train --features`): one row per
//! image, written a row group at a time as extraction goes, so no process ever holds the
//! feature matrix of a whole catalogue, and readable as-is by pandas, polars, DuckDB and
//! Spark. The schema (agreed with the Python/Ray extractor, which writes the same with
//! pyarrow):
//!
//! | column           | type                        | holds                                  |
//! |------------------|-----------------------------|----------------------------------------|
//! | `path`           | Utf8                        | path under the extracted folder, `/`   |
//! | `sha256`         | Utf8                        | lowercase hex SHA-256 of the file      |
//! | `backbone`       | Utf8                        | backbone id, e.g. `efficientnet-lite2` |
//! | `weights_sha256` | Utf8                        | the weights checksum bundles record    |
//! | `features`       | FixedSizeList<Float32, D>   | the pooled features                    |
//!
//! with key-value metadata `graft.version`, `graft.backbone`, `graft.weights_sha256` and
//! `graft.feature_dim`. Readers take the per-row columns as the truth (a file rewritten by
//! another tool may lose the metadata) and refuse metadata that disagrees with them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{
    Array, ArrayRef, FixedSizeListArray, Float32Array, LargeStringArray, RecordBatch, StringArray,
    StringViewArray,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;

use crate::backbone::BackboneId;
use crate::error::{Error, Result};
use crate::fsx::AtomicFile;

/// Key-value metadata keys.
pub const META_VERSION: &str = crate::output::PARQUET_KEY;
pub const META_BACKBONE: &str = "graft.backbone";
pub const META_WEIGHTS: &str = "graft.weights_sha256";
pub const META_DIM: &str = "graft.feature_dim";

/// Rows per row group (and per batch handed to the writer): 1024 rows of Inception's
/// 2048 floats are 8 MiB, so the writer's buffer stays small while each group is big
/// enough for readers to scan quickly.
pub const ROW_GROUP_ROWS: usize = 1024;

/// Whether `path` names a Parquet output by its extension (`.parquet`, any case).
pub fn is_parquet_path(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("parquet"))
}

fn schema(dim: usize) -> Result<SchemaRef> {
    let width = i32::try_from(dim)
        .map_err(|_| Error::Invalid(format!("feature width {dim} is too large")))?;
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    Ok(Arc::new(Schema::new(vec![
        Field::new("path", DataType::Utf8, false),
        Field::new("sha256", DataType::Utf8, false),
        Field::new("backbone", DataType::Utf8, false),
        Field::new("weights_sha256", DataType::Utf8, false),
        Field::new("features", DataType::FixedSizeList(item, width), false),
    ])))
}

fn parquet_error(path: &Path, what: &str, e: impl std::fmt::Display) -> Error {
    Error::invalid_input(path, format!("{what}: {e}"))
}

/// Writes features to a Parquet file under a temporary name, one row group per
/// [`ROW_GROUP_ROWS`] rows; [`FeaturesWriter::finish`] renames it into place, and a
/// writer dropped unfinished leaves nothing under the target name.
pub struct FeaturesWriter {
    writer: ArrowWriter<AtomicFile>,
    schema: SchemaRef,
    backbone: BackboneId,
    weights_sha256: String,
    dim: usize,
    paths: Vec<String>,
    hashes: Vec<String>,
    values: Vec<f32>,
    rows: usize,
}

impl FeaturesWriter {
    pub fn create(path: &Path, backbone: BackboneId, weights_sha256: &str) -> Result<Self> {
        let dim = backbone.spec().feature_dim;
        let schema = schema(dim)?;
        let metadata = [
            (META_VERSION, env!("CARGO_PKG_VERSION").to_string()),
            (META_BACKBONE, backbone.name().to_string()),
            (META_WEIGHTS, weights_sha256.to_string()),
            (META_DIM, dim.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| KeyValue::new(k.to_string(), v))
        .collect();
        // Dictionaries only where values repeat: on the paths, hashes and floats they
        // would be built and thrown away for every page.
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_dictionary_enabled(false)
            .set_column_dictionary_enabled(ColumnPath::from("backbone"), true)
            .set_column_dictionary_enabled(ColumnPath::from("weights_sha256"), true)
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .set_key_value_metadata(Some(metadata))
            .build();
        let file = AtomicFile::create(path)?;
        let writer = ArrowWriter::try_new(file, schema.clone(), Some(props))
            .map_err(|e| parquet_error(path, "cannot start the Parquet file", e))?;
        Ok(FeaturesWriter {
            writer,
            schema,
            backbone,
            weights_sha256: weights_sha256.to_string(),
            dim,
            paths: Vec::new(),
            hashes: Vec::new(),
            values: Vec::new(),
            rows: 0,
        })
    }

    /// Adds one image's row: its path under the extracted folder, its content hash and
    /// its `[D]` features.
    pub fn push(&mut self, relative: &str, sha256: &[u8; 32], features: &[f32]) -> Result<()> {
        if features.len() != self.dim {
            return Err(Error::Invalid(format!(
                "{relative}: {} features, expected {} for {}",
                features.len(),
                self.dim,
                self.backbone
            )));
        }
        self.paths.push(relative.to_string());
        self.hashes.push(hex::encode(sha256));
        self.values.extend_from_slice(features);
        self.rows += 1;
        if self.paths.len() >= ROW_GROUP_ROWS {
            self.write_buffered()?;
        }
        Ok(())
    }

    /// Rows pushed so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    fn write_buffered(&mut self) -> Result<()> {
        let n = self.paths.len();
        if n == 0 {
            return Ok(());
        }
        let target = self.writer.inner().path().to_path_buf();
        let item = Arc::new(Field::new("item", DataType::Float32, false));
        let values = Float32Array::from(std::mem::take(&mut self.values));
        let features =
            FixedSizeListArray::try_new(item, self.dim as i32, Arc::new(values), None)
                .map_err(|e| parquet_error(&target, "cannot build the features column", e))?;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(std::mem::take(&mut self.paths))),
            Arc::new(StringArray::from(std::mem::take(&mut self.hashes))),
            Arc::new(StringArray::from(vec![self.backbone.name(); n])),
            Arc::new(StringArray::from(vec![self.weights_sha256.as_str(); n])),
            Arc::new(features),
        ];
        let batch = RecordBatch::try_new(self.schema.clone(), columns)
            .map_err(|e| parquet_error(&target, "cannot build a row group", e))?;
        self.writer
            .write(&batch)
            .map_err(|e| parquet_error(&target, "cannot write a row group", e))?;
        // Flush now so the writer never holds more than one group of encoded pages.
        self.writer
            .flush()
            .map_err(|e| parquet_error(&target, "cannot write a row group", e))
    }

    /// Writes what is buffered and the footer, then renames the file into place.
    pub fn finish(mut self) -> Result<()> {
        self.write_buffered()?;
        let target = self.writer.inner().path().to_path_buf();
        let file = self
            .writer
            .into_inner()
            .map_err(|e| parquet_error(&target, "cannot finish the Parquet file", e))?;
        file.commit()
    }
}

/// One image's row as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureRow {
    pub path: String,
    pub sha256: String,
    pub features: Vec<f32>,
}

/// Every row of one or more Parquet parts, from one backbone.
#[derive(Debug, Clone)]
pub struct FeatureParts {
    pub backbone: BackboneId,
    pub weights_sha256: String,
    pub dim: usize,
    /// Sorted by path (the order a folder scan gives), each path once.
    pub rows: Vec<FeatureRow>,
}

/// The strings of a text column, whatever string layout the writer chose.
fn strings(column: &ArrayRef) -> Option<Vec<Option<String>>> {
    let any = column.as_any();
    if let Some(a) = any.downcast_ref::<StringArray>() {
        return Some(a.iter().map(|s| s.map(str::to_string)).collect());
    }
    if let Some(a) = any.downcast_ref::<LargeStringArray>() {
        return Some(a.iter().map(|s| s.map(str::to_string)).collect());
    }
    if let Some(a) = any.downcast_ref::<StringViewArray>() {
        return Some(a.iter().map(|s| s.map(str::to_string)).collect());
    }
    None
}

/// One part's rows, with its backbone and weights (from its columns, checked against
/// its metadata).
fn read_part(path: &Path) -> Result<(BackboneId, String, usize, Vec<FeatureRow>)> {
    let fix = "; pass Parquet files written by `graft extract --output x.parquet` or graft's \
               Ray extractor";
    let bad = |reason: String| Error::invalid_input(path, format!("{reason}{fix}"));
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| bad(format!("is not a readable Parquet file ({e})")))?;
    let meta: HashMap<String, String> = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .map(|kv| {
            kv.iter()
                .filter_map(|k| Some((k.key.clone(), k.value.clone()?)))
                .collect()
        })
        .unwrap_or_default();
    let schema = builder.schema().clone();
    for name in ["path", "sha256", "backbone", "weights_sha256", "features"] {
        if schema.column_with_name(name).is_none() {
            return Err(bad(format!("has no column '{name}'")));
        }
    }
    let dim = match schema.field_with_name("features").map(|f| f.data_type()) {
        Ok(DataType::FixedSizeList(item, width)) if item.data_type() == &DataType::Float32 => {
            *width as usize
        }
        Ok(other) => {
            return Err(bad(format!(
                "has a 'features' column of type {other}, not FixedSizeList<Float32, D>"
            )))
        }
        Err(e) => return Err(bad(e.to_string())),
    };
    let reader = builder
        .with_batch_size(ROW_GROUP_ROWS)
        .build()
        .map_err(|e| bad(format!("cannot be read ({e})")))?;
    let mut rows = Vec::new();
    let mut identity: Option<(String, String)> = None;
    for batch in reader {
        let batch = batch.map_err(|e| bad(format!("cannot be read ({e})")))?;
        let text = |name: &str| -> Result<Vec<Option<String>>> {
            let column = batch
                .column_by_name(name)
                .ok_or_else(|| bad(format!("has no column '{name}'")))?;
            strings(column).ok_or_else(|| {
                bad(format!(
                    "has a '{name}' column of type {}, not text",
                    column.data_type()
                ))
            })
        };
        let paths = text("path")?;
        let hashes = text("sha256")?;
        let backbones = text("backbone")?;
        let weights = text("weights_sha256")?;
        let features = batch
            .column_by_name("features")
            .and_then(|c| c.as_any().downcast_ref::<FixedSizeListArray>())
            .ok_or_else(|| bad("has no FixedSizeList 'features' column".into()))?;
        let values = features
            .values()
            .as_any()
            .downcast_ref::<Float32Array>()
            .ok_or_else(|| bad("has features that are not Float32".into()))?;
        if values.null_count() > 0 {
            return Err(bad("has missing values inside a feature vector".into()));
        }
        let values = values.values();
        for row in 0..batch.num_rows() {
            let at = rows.len();
            let null = |what: &str| bad(format!("row {at}: '{what}' is empty"));
            let path = paths[row].clone().ok_or_else(|| null("path"))?;
            let backbone = backbones[row].clone().ok_or_else(|| null("backbone"))?;
            let weight = weights[row].clone().ok_or_else(|| null("weights_sha256"))?;
            match &identity {
                None => identity = Some((backbone, weight)),
                Some((b, w)) if *b == backbone && *w == weight => {}
                Some((b, w)) => {
                    return Err(bad(format!(
                        "mixes backbones or weights: '{path}' has {backbone} (weights \
                         {weight}), earlier rows {b} (weights {w}); extract every part with \
                         the same backbone and weights"
                    )))
                }
            }
            if features.is_null(row) {
                return Err(null("features"));
            }
            let start = features.value_offset(row) as usize;
            rows.push(FeatureRow {
                path,
                sha256: hashes[row].clone().ok_or_else(|| null("sha256"))?,
                features: values[start..start + dim].to_vec(),
            });
        }
    }
    // A shard can be empty; then only the metadata says what it was extracted with.
    let identity = identity.or_else(|| {
        Some((
            meta.get(META_BACKBONE)?.clone(),
            meta.get(META_WEIGHTS)?.clone(),
        ))
    });
    let Some((backbone, weights)) = identity else {
        return Err(bad("has no rows and no graft metadata".into()));
    };
    let id: BackboneId = backbone
        .parse()
        .map_err(|e| bad(format!("names an unknown backbone ({e})")))?;
    for (key, column) in [(META_BACKBONE, &backbone), (META_WEIGHTS, &weights)] {
        if let Some(v) = meta.get(key) {
            if v != column {
                return Err(bad(format!(
                    "has metadata {key} = {v}, but its rows say {column}"
                )));
            }
        }
    }
    let expected = id.spec().feature_dim;
    if dim != expected {
        return Err(bad(format!(
            "has features {dim} wide, but {id} gives {expected}"
        )));
    }
    Ok((id, weights, dim, rows))
}

/// Reads every part, refusing parts of different backbones or weights and a path that
/// appears twice (naming both files), and sorts the rows by path.
pub fn read_parts(parts: &[PathBuf]) -> Result<FeatureParts> {
    let mut all: Vec<(FeatureRow, usize)> = Vec::new();
    let mut identity: Option<(BackboneId, String, usize)> = None;
    for (p, part) in parts.iter().enumerate() {
        let (id, weights, dim, rows) = read_part(part)?;
        match &identity {
            None => identity = Some((id, weights, dim)),
            Some((i, w, _)) if *i == id && *w == weights => {}
            Some((i, w, _)) => {
                return Err(Error::invalid_input(
                    part,
                    format!(
                        "holds features of {id} (weights {weights}), but {} holds {i} \
                         (weights {w}); train from parts extracted with one backbone and \
                         the same weights",
                        parts[0].display()
                    ),
                ))
            }
        }
        all.extend(rows.into_iter().map(|r| (r, p)));
    }
    let Some((backbone, weights_sha256, dim)) = identity else {
        return Err(Error::Invalid(
            "no Parquet features given; pass --features with one or more files".into(),
        ));
    };
    all.sort_by(|a, b| a.0.path.cmp(&b.0.path));
    for pair in all.windows(2) {
        if pair[0].0.path == pair[1].0.path {
            let (a, b) = (&parts[pair[0].1], &parts[pair[1].1]);
            let where_ = if a == b {
                format!("twice in {}", a.display())
            } else {
                format!("in both {} and {}", a.display(), b.display())
            };
            return Err(Error::invalid_input(
                b,
                format!(
                    "the image '{}' appears {where_}; each image must be in exactly one \
                     part: drop the overlapping part (were two shards run with different N?)",
                    pair[0].0.path
                ),
            ));
        }
    }
    Ok(FeatureParts {
        backbone,
        weights_sha256,
        dim,
        rows: all.into_iter().map(|(r, _)| r).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, id: BackboneId, weights: &str, rows: &[(&str, f32)]) {
        let mut w = FeaturesWriter::create(path, id, weights).unwrap();
        let dim = id.spec().feature_dim;
        for (p, v) in rows {
            let f: Vec<f32> = (0..dim).map(|i| v + i as f32).collect();
            w.push(p, &[7u8; 32], &f).unwrap();
        }
        w.finish().unwrap();
    }

    #[test]
    fn round_trips_sorted_across_parts_and_row_groups() {
        let dir = tempfile::tempdir().unwrap();
        let id = BackboneId::EfficientNetLite0;
        let many: Vec<String> = (0..ROW_GROUP_ROWS + 5)
            .map(|i| format!("b/{i:05}.jpg"))
            .collect();
        let many: Vec<(&str, f32)> = many.iter().map(|p| (p.as_str(), 0.5)).collect();
        write(&dir.path().join("1.parquet"), id, "ab", &many);
        write(
            &dir.path().join("0.parquet"),
            id,
            "ab",
            &[("a/x.jpg", -1.0)],
        );
        let parts =
            read_parts(&[dir.path().join("1.parquet"), dir.path().join("0.parquet")]).unwrap();
        assert_eq!(parts.rows.len(), ROW_GROUP_ROWS + 6);
        assert_eq!(parts.rows[0].path, "a/x.jpg");
        assert_eq!(parts.rows[0].features[3], 2.0);
        assert_eq!(parts.rows[0].sha256, "07".repeat(32));
        assert_eq!(
            parts.rows.last().unwrap().path,
            format!("b/{:05}.jpg", ROW_GROUP_ROWS + 4)
        );
        // No temporary file left beside the outputs.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn refuses_mixed_weights_and_duplicates_naming_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let id = BackboneId::EfficientNetLite0;
        let (a, b, c) = (
            dir.path().join("a.parquet"),
            dir.path().join("b.parquet"),
            dir.path().join("c.parquet"),
        );
        write(&a, id, "ab", &[("x/1.jpg", 0.0)]);
        write(&b, id, "cd", &[("x/2.jpg", 0.0)]);
        write(&c, id, "ab", &[("x/1.jpg", 0.0)]);
        let err = read_parts(&[a.clone(), b.clone()]).unwrap_err().to_string();
        assert!(
            err.contains("a.parquet") && err.contains("b.parquet") && err.contains("weights"),
            "{err}"
        );
        let err = read_parts(&[a, c]).unwrap_err().to_string();
        assert!(
            err.contains("a.parquet") && err.contains("c.parquet") && err.contains("x/1.jpg"),
            "{err}"
        );
    }
}
