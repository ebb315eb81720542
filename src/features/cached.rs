//! Features for a whole dataset through the cache: hash every file, look up each hash,
//! run the backbone only on misses, and commit new vectors batch by batch, so a killed
//! run loses at most one batch and the rerun extracts only what is missing.

use std::path::PathBuf;

use rayon::prelude::*;

use super::cache::{hash_file, FeatureCache, Lookup, ModelFingerprint};
use super::extract::{extract, ExtractOptions, Skipped};
use crate::backbone::Backbone;
use crate::error::Result;
use crate::progress::Progress;

#[derive(Debug, Default)]
pub struct CachedFeatures {
    /// One entry per input path: `None` where the image was skipped.
    pub features: Vec<Option<Vec<f32>>>,
    pub hits: usize,
    /// Vectors computed by this run (misses plus corrupt entries).
    pub extracted: usize,
    /// Entries that failed their checksum and were recomputed.
    pub corrupt: usize,
    pub skipped: Vec<Skipped>,
    pub extraction_seconds: f64,
}

/// Features of every file in `paths`, from the cache where possible.
pub fn cached_features(
    backbone: &Backbone,
    cache: &FeatureCache,
    paths: &[PathBuf],
    options: ExtractOptions,
    progress: &dyn Progress,
) -> Result<CachedFeatures> {
    let fingerprint = ModelFingerprint::new(backbone.id, &backbone.weights_sha256);
    let hashes: Vec<Result<[u8; 32]>> = paths.par_iter().map(|p| hash_file(p)).collect();

    let mut out = CachedFeatures {
        features: vec![None; paths.len()],
        ..Default::default()
    };
    let mut todo: Vec<usize> = Vec::new();
    let mut keys: Vec<Option<[u8; 32]>> = vec![None; paths.len()];
    for (i, hash) in hashes.into_iter().enumerate() {
        let hash = match hash {
            Ok(h) => h,
            Err(err) => {
                progress.message(&format!("skipped {}: {err}", paths[i].display()));
                out.skipped.push(Skipped {
                    path: paths[i].clone(),
                    reason: err.to_string(),
                });
                continue;
            }
        };
        let key = fingerprint.key(&hash, "");
        keys[i] = Some(key);
        match cache.get(&key)? {
            Lookup::Hit(f) => {
                out.features[i] = Some(f);
                out.hits += 1;
            }
            Lookup::Miss => todo.push(i),
            Lookup::Corrupt => {
                out.corrupt += 1;
                todo.push(i);
            }
        }
    }
    if todo.is_empty() {
        return Ok(out);
    }

    let todo_paths: Vec<PathBuf> = todo.iter().map(|&i| paths[i].clone()).collect();
    // One durable commit per batch, before the batch is reported done: a kill loses at
    // most the batch in flight.
    let commit_every = options.batch_size.max(1);
    let mut pending: Vec<([u8; 32], Vec<f32>)> = Vec::with_capacity(commit_every);
    let mut extracted = 0usize;
    let report = extract(backbone, &todo_paths, options, progress, |image| {
        let i = todo[image.index];
        let features = image.features.to_vec();
        if let Some(key) = keys[i] {
            pending.push((key, features.clone()));
        }
        out.features[i] = Some(features);
        extracted += 1;
        if pending.len() >= commit_every {
            cache.put_many(&pending)?;
            pending.clear();
        }
        Ok(())
    })?;
    cache.put_many(&pending)?;
    out.extracted = extracted;
    out.skipped.extend(report.skipped);
    out.extraction_seconds = report.elapsed.as_secs_f64();
    Ok(out)
}
