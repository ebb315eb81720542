//! Batch feature extraction with a backbone, and the features file format.

pub mod cache;
pub mod cached;
pub mod calibration;
pub mod extract;
pub mod file;
pub mod parquet;
pub mod stream;

pub use extract::{extract, extract_views, ExtractOptions, ExtractReport, Job, Skipped};
