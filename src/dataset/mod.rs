//! Datasets on disk: finding images, class folders, labels.

pub mod classes;
pub mod organize;
pub mod scan;
pub mod shard;
pub mod split;
pub mod stats;

pub use scan::{scan_images, ImageEntry, Scan, SkippedEntry};
