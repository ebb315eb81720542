//! Features of a whole folder handed out a chunk at a time, through the feature cache or
//! not, so that a writer can put each chunk on disk before the next is computed: memory
//! holds one chunk of vectors, never the matrix of the whole set (a catalogue of
//! millions of photos at 8 KiB a vector would not fit).

use std::path::PathBuf;

use rayon::prelude::*;

use super::cache::{hash_file, FeatureCache};
use super::cached::cached_features;
use super::extract::{extract, ExtractOptions, Skipped};
use crate::engine::Backbone;
use crate::error::Result;
use crate::progress::Progress;

/// What [`features_in_chunks`] did.
#[derive(Debug, Default)]
pub struct StreamReport {
    /// Vectors computed by the network (not from the cache).
    pub extracted: usize,
    /// Vectors read from the cache.
    pub hits: usize,
    /// Inputs that could not be read or decoded, each reported through the progress.
    pub skipped: Vec<Skipped>,
    /// Seconds spent in the network (decoding included).
    pub extraction_seconds: f64,
}

/// Passes the inner stages' progress on as one stage: each chunk's extraction would
/// otherwise start a bar of its own.
struct OneStage<'a>(&'a dyn Progress);

impl Progress for OneStage<'_> {
    fn begin(&self, _stage: &str, _total: u64) {}
    fn advance(&self, n: u64) {
        self.0.advance(n)
    }
    fn message(&self, text: &str) {
        self.0.message(text)
    }
    fn finish(&self) {}
}

/// Features of every file in `paths`, `chunk` images at a time, in input order: `sink`
/// gets each usable image's index into `paths`, content hash (SHA-256 of its bytes) and
/// `[D]` features. With a cache, hits come from it and new vectors go into it, as
/// [`cached_features`] does; without, every vector is computed afresh.
pub fn features_in_chunks(
    backbone: &Backbone,
    cache: Option<&FeatureCache>,
    paths: &[PathBuf],
    options: ExtractOptions,
    chunk: usize,
    progress: &dyn Progress,
    mut sink: impl FnMut(usize, &[u8; 32], &[f32]) -> Result<()>,
) -> Result<StreamReport> {
    let mut report = StreamReport::default();
    let inner = OneStage(progress);
    progress.begin("extracting", paths.len() as u64);
    for (c, part) in paths.chunks(chunk.max(1)).enumerate() {
        let base = c * chunk.max(1);
        match cache {
            Some(cache) => {
                let got = cached_features(backbone, cache, part, options, &inner)?;
                // Hits and unhashable files never pass through the network's progress.
                progress.advance(
                    (got.hits + (part.len() - got.hashes.iter().flatten().count())) as u64,
                );
                report.hits += got.hits;
                report.extracted += got.extracted;
                report.extraction_seconds += got.extraction_seconds;
                report.skipped.extend(got.skipped);
                for (i, (features, hash)) in got.features.iter().zip(&got.hashes).enumerate() {
                    if let (Some(features), Some(hash)) = (features, hash) {
                        sink(base + i, hash, features)?;
                    }
                }
            }
            None => {
                let hashes: Vec<Result<[u8; 32]>> = part.par_iter().map(|p| hash_file(p)).collect();
                let mut readable = Vec::with_capacity(part.len());
                let mut readable_hashes = Vec::with_capacity(part.len());
                for (i, hash) in hashes.into_iter().enumerate() {
                    match hash {
                        Ok(h) => {
                            readable.push(part[i].clone());
                            readable_hashes.push((i, h));
                        }
                        Err(err) => {
                            progress.message(&format!("skipped {}: {err}", part[i].display()));
                            progress.advance(1);
                            report.skipped.push(Skipped {
                                path: part[i].clone(),
                                reason: err.to_string(),
                            });
                        }
                    }
                }
                let got = extract(backbone, &readable, options, &inner, |out| {
                    let (i, hash) = &readable_hashes[out.index];
                    sink(base + i, hash, out.features)
                })?;
                report.extracted += got.processed;
                report.extraction_seconds += got.elapsed.as_secs_f64();
                report.skipped.extend(got.skipped);
            }
        }
    }
    progress.finish();
    Ok(report)
}
