//! Running a backbone over many image files: decoding and preprocessing run in parallel
//! on the rayon pool, one batch ahead of inference, so the network never waits for JPEG
//! decoding; memory stays bounded by two batches of pixels.

use std::path::PathBuf;
use std::sync::mpsc::sync_channel;
use std::time::{Duration, Instant};

use rayon::prelude::*;

use crate::backbone::Backbone;
use crate::error::{Error, Result};
use crate::image::preprocess::preprocess;
use crate::image::{decode_rgb8, DecodeLimits};
use crate::progress::Progress;

#[derive(Debug, Clone, Copy)]
pub struct ExtractOptions {
    /// Images per forward pass.
    pub batch_size: usize,
    pub limits: DecodeLimits,
}

impl Default for ExtractOptions {
    /// Batch 1: with burn's `flex` CPU engine larger batches run slower per image
    /// (lite2, 100 photos: 15.7 images/s at batch 1, 15.2 at 4, 13.9 at 8).
    fn default() -> Self {
        ExtractOptions {
            batch_size: 1,
            limits: DecodeLimits::default(),
        }
    }
}

/// An input that could not be used, and why.
#[derive(Debug, Clone)]
pub struct Skipped {
    pub path: PathBuf,
    pub reason: String,
}

#[derive(Debug, Default)]
pub struct ExtractReport {
    /// Images that went through the network.
    pub processed: usize,
    pub skipped: Vec<Skipped>,
    pub elapsed: Duration,
}

impl ExtractReport {
    pub fn images_per_second(&self) -> f64 {
        self.processed as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// One image's outputs, handed to the sink in input order.
pub struct ImageOutputs<'a> {
    /// Index into the `paths` given to [`extract`].
    pub index: usize,
    /// `[D]` pooled features.
    pub features: &'a [f32],
    /// `[1000]` ImageNet logits.
    pub logits: &'a [f32],
}

type Prepared = Vec<(usize, Result<Vec<f32>>)>;

/// Decodes, preprocesses and runs every file in `paths` through `backbone`, calling
/// `sink` for each image that worked. Files that cannot be decoded are reported through
/// `progress` with their path and reason, counted, and skipped; the run goes on.
pub fn extract(
    backbone: &Backbone,
    paths: &[PathBuf],
    options: ExtractOptions,
    progress: &dyn Progress,
    mut sink: impl FnMut(ImageOutputs<'_>) -> Result<()>,
) -> Result<ExtractReport> {
    let start = Instant::now();
    let spec = backbone.spec();
    let preprocess_spec = spec.preprocess;
    let per_image = 3 * (preprocess_spec.size * preprocess_spec.size) as usize;
    let batch_size = options.batch_size.max(1);
    let mut report = ExtractReport::default();
    progress.begin("extracting", paths.len() as u64);

    std::thread::scope(|scope| -> Result<()> {
        // Two prepared batches in flight at most: bounded memory, full overlap.
        let (tx, rx) = sync_channel::<Prepared>(1);
        scope.spawn(move || {
            for (chunk_index, chunk) in paths.chunks(batch_size).enumerate() {
                let prepared: Prepared = chunk
                    .par_iter()
                    .enumerate()
                    .map(|(i, path)| {
                        let pixels = decode_rgb8(path, options.limits)
                            .and_then(|rgb| preprocess(&rgb, &preprocess_spec));
                        (chunk_index * batch_size + i, pixels)
                    })
                    .collect();
                if tx.send(prepared).is_err() {
                    return; // The consumer stopped on an error.
                }
            }
        });

        for prepared in rx {
            let mut pixels = Vec::with_capacity(prepared.len() * per_image);
            let mut indices = Vec::with_capacity(prepared.len());
            for (index, result) in prepared {
                match result {
                    Ok(p) => {
                        pixels.extend_from_slice(&p);
                        indices.push(index);
                    }
                    Err(err) => {
                        let reason = match &err {
                            Error::Decode { reason, .. } => reason.trim().to_string(),
                            Error::Io { source, .. } => source.to_string(),
                            other => other.to_string(),
                        };
                        progress.message(&format!("skipped {}: {reason}", paths[index].display()));
                        report.skipped.push(Skipped {
                            path: paths[index].clone(),
                            reason,
                        });
                        progress.advance(1);
                    }
                }
            }
            if indices.is_empty() {
                continue;
            }
            let outputs = backbone.run(pixels, indices.len())?;
            let dim = outputs.features.len() / indices.len();
            let classes = outputs.logits.len() / indices.len();
            for (row, index) in indices.iter().enumerate() {
                sink(ImageOutputs {
                    index: *index,
                    features: &outputs.features[row * dim..(row + 1) * dim],
                    logits: &outputs.logits[row * classes..(row + 1) * classes],
                })?;
            }
            report.processed += indices.len();
            progress.advance(indices.len() as u64);
        }
        Ok(())
    })?;
    progress.finish();
    report.elapsed = start.elapsed();
    Ok(report)
}
