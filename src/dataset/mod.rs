//! Datasets on disk: finding images, class folders, labels.

pub mod classes;
pub mod scan;
pub mod split;

pub use scan::{scan_images, ImageEntry};
