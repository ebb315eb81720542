//! Features for a whole dataset through the cache: hash every file, look up each hash,
//! run the backbone only on misses, and commit new vectors batch by batch, so a killed
//! run loses at most one batch and the rerun extracts only what is missing.

use std::path::PathBuf;

use rayon::prelude::*;

use super::cache::{hash_file, FeatureCache, Lookup, ModelFingerprint};
use super::extract::{extract_views, ExtractOptions, Job, Skipped};
use crate::engine::Backbone;
use crate::error::Result;
use crate::image::distort::View;
use crate::progress::Progress;

#[derive(Debug, Default)]
pub struct CachedFeatures {
    /// One entry per input path: `None` where the image was skipped.
    pub features: Vec<Option<Vec<f32>>>,
    /// Content hash of each input (`None` where the file could not be read).
    pub hashes: Vec<Option<[u8; 32]>>,
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
    let hashes: Vec<Result<[u8; 32]>> = paths.par_iter().map(|p| hash_file(p)).collect();
    let mut skipped = Vec::new();
    let mut requests = Vec::with_capacity(paths.len());
    let mut out_hashes = vec![None; paths.len()];
    for (image, hash) in hashes.into_iter().enumerate() {
        match hash {
            Ok(hash) => {
                out_hashes[image] = Some(hash);
                requests.push(ViewRequest {
                    image,
                    hash,
                    view: View::ORIGINAL,
                    tag: String::new(),
                });
            }
            Err(err) => {
                progress.message(&format!("skipped {}: {err}", paths[image].display()));
                skipped.push(Skipped {
                    path: paths[image].clone(),
                    reason: err.to_string(),
                });
            }
        }
    }
    let views = cached_views(
        backbone,
        cache,
        paths,
        &requests,
        options,
        "extracting",
        progress,
        |f| f,
    )?;
    let mut features = vec![None; paths.len()];
    for (request, f) in requests.iter().zip(views.features) {
        features[request.image] = f;
    }
    skipped.extend(views.skipped);
    Ok(CachedFeatures {
        features,
        hashes: out_hashes,
        hits: views.hits,
        extracted: views.extracted,
        corrupt: views.corrupt,
        skipped,
        extraction_seconds: views.extraction_seconds,
    })
}

/// One cached view of an image: a distorted variant, say, or a test-time view.
#[derive(Clone, Debug)]
pub struct ViewRequest {
    /// Index into `paths`.
    pub image: usize,
    /// The image's content hash (from [`CachedFeatures::hashes`]).
    pub hash: [u8; 32],
    pub view: View,
    /// Names the view in the cache key: empty for the original; for others, everything
    /// the view depends on apart from the image (parameters, variant index).
    pub tag: String,
}

/// Features of `requests`, index-aligned with them (`None` where the image could not be
/// decoded), with the same cache statistics as [`CachedFeatures`]. `T` is how each view is
/// kept in memory (the vector itself, or a narrower copy: see [`cached_views`]).
#[derive(Debug)]
pub struct CachedViews<T = Vec<f32>> {
    pub features: Vec<Option<T>>,
    pub hits: usize,
    pub extracted: usize,
    pub corrupt: usize,
    pub skipped: Vec<Skipped>,
    pub extraction_seconds: f64,
}

/// Features of every requested view, from the cache where possible; misses are extracted
/// (in request order: list an image's views together so they share one decode) and
/// committed batch by batch. `stage` names the progress bar. Each view is handed to
/// `keep` as soon as it is read or extracted (`|f| f` keeps the vector), so a caller
/// keeping a narrower copy (fine-tuning keeps activations at the cut as f16) never holds
/// all of them as f32. The cache stores the f32 vectors either way.
#[allow(clippy::too_many_arguments)]
pub fn cached_views<T>(
    backbone: &Backbone,
    cache: &FeatureCache,
    paths: &[PathBuf],
    requests: &[ViewRequest],
    options: ExtractOptions,
    stage: &str,
    progress: &dyn Progress,
    mut keep: impl FnMut(Vec<f32>) -> T,
) -> Result<CachedViews<T>> {
    let fingerprint = ModelFingerprint::with_variant(
        backbone.id,
        &backbone.weights_sha256,
        &backbone.cache_variant(),
    );
    let mut out = CachedViews {
        features: std::iter::repeat_with(|| None)
            .take(requests.len())
            .collect(),
        hits: 0,
        extracted: 0,
        corrupt: 0,
        skipped: Vec::new(),
        extraction_seconds: 0.0,
    };
    let keys: Vec<[u8; 32]> = requests
        .iter()
        .map(|r| fingerprint.key(&r.hash, &r.tag))
        .collect();
    let mut todo: Vec<usize> = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        match cache.get(key)? {
            Lookup::Hit(f) => {
                out.features[i] = Some(keep(f));
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

    let jobs: Vec<Job> = todo
        .iter()
        .map(|&i| Job {
            image: requests[i].image,
            view: requests[i].view,
        })
        .collect();
    // One durable commit per batch, before the batch is reported done: a kill loses at
    // most the batch in flight.
    let commit_every = options.batch_for(backbone);
    let mut pending: Vec<([u8; 32], Vec<f32>)> = Vec::with_capacity(commit_every);
    let mut extracted = 0usize;
    let report = extract_views(backbone, paths, &jobs, options, stage, progress, |image| {
        let i = todo[image.index];
        let features = image.features.to_vec();
        out.features[i] = Some(keep(features.clone()));
        pending.push((keys[i], features));
        extracted += 1;
        if pending.len() >= commit_every {
            cache.put_many(&pending)?;
            pending.clear();
        }
        Ok(())
    })?;
    cache.put_many(&pending)?;
    out.extracted = extracted;
    out.skipped = report.skipped;
    out.extraction_seconds = report.elapsed.as_secs_f64();
    Ok(out)
}
