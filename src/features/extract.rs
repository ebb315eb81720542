//! Running a backbone over many image files (or several views of each): decoding and
//! preprocessing run in parallel on the rayon pool, one round ahead of inference, so the
//! network never waits for JPEG decoding; memory stays bounded by two rounds of pixels.

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::mpsc::sync_channel;
use std::time::{Duration, Instant};

use rayon::prelude::*;

use crate::engine::Backbone;
use crate::error::{Error, Result};
use crate::image::distort::{prepare, View};
use crate::image::{decode_rgb8, DecodeLimits};
use crate::progress::Progress;

#[derive(Debug, Clone, Copy)]
pub struct ExtractOptions {
    /// Images per forward pass; `None`: the backbone's preferred size on its engine.
    pub batch_size: Option<usize>,
    pub limits: DecodeLimits,
}

impl ExtractOptions {
    /// The batch size to run `backbone` with.
    pub fn batch_for(&self, backbone: &Backbone) -> usize {
        self.batch_size
            .unwrap_or_else(|| backbone.preferred_batch_size())
            .max(1)
    }
}

impl Default for ExtractOptions {
    fn default() -> Self {
        ExtractOptions {
            batch_size: None,
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

/// An entry the folder walk left out counts as a skipped input like an unreadable image.
impl From<crate::dataset::SkippedEntry> for Skipped {
    fn from(entry: crate::dataset::SkippedEntry) -> Skipped {
        Skipped {
            path: entry.path,
            reason: entry.reason,
        }
    }
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
    /// Index into the `paths` given to [`extract`] (the jobs given to [`extract_views`]).
    pub index: usize,
    /// `[D]` pooled features.
    pub features: &'a [f32],
    /// `[1000]` ImageNet logits.
    pub logits: &'a [f32],
}

/// One network input: an image file (an index into the `paths` given to
/// [`extract_views`]) and the view of it the network sees.
#[derive(Clone, Copy, Debug)]
pub struct Job {
    pub image: usize,
    pub view: View,
}

/// Each job's network input, or why its image could not be used.
type Prepared = Vec<(usize, std::result::Result<Vec<f32>, String>)>;

/// The reason shown for a skipped image: the decoder's or file system's own words.
fn skip_reason(err: &Error) -> String {
    match err {
        Error::Decode { reason, .. } => reason.trim().to_string(),
        Error::Io { source, .. } => source.to_string(),
        other => other.to_string(),
    }
}

/// Decodes, preprocesses and runs every file in `paths` through `backbone`, calling
/// `sink` for each image that worked. Files that cannot be decoded are reported through
/// `progress` with their path and reason, counted, and skipped; the run goes on.
pub fn extract(
    backbone: &Backbone,
    paths: &[PathBuf],
    options: ExtractOptions,
    progress: &dyn Progress,
    sink: impl FnMut(ImageOutputs<'_>) -> Result<()>,
) -> Result<ExtractReport> {
    let jobs: Vec<Job> = (0..paths.len())
        .map(|image| Job {
            image,
            view: View::ORIGINAL,
        })
        .collect();
    extract_views(
        backbone,
        paths,
        &jobs,
        options,
        "extracting",
        progress,
        sink,
    )
}

/// Runs every job (a view of one of `paths`) through `backbone`, calling `sink` in job
/// order with [`ImageOutputs::index`] the job's index. Consecutive jobs of the same image
/// share one decode, so list an image's views together. A file that cannot be decoded is
/// reported once, and all its jobs are skipped.
pub fn extract_views(
    backbone: &Backbone,
    paths: &[PathBuf],
    jobs: &[Job],
    options: ExtractOptions,
    stage: &str,
    progress: &dyn Progress,
    mut sink: impl FnMut(ImageOutputs<'_>) -> Result<()>,
) -> Result<ExtractReport> {
    let start = Instant::now();
    let preprocess_spec = backbone.preprocess;
    let per_image = 3 * (preprocess_spec.size * preprocess_spec.size) as usize;
    let batch_size = options.batch_for(backbone);
    let mut report = ExtractReport::default();
    progress.begin(stage, jobs.len() as u64);

    // Runs of consecutive jobs on the same image: one decode each.
    let mut groups: Vec<std::ops::Range<usize>> = Vec::new();
    for (j, job) in jobs.iter().enumerate() {
        match groups.last_mut() {
            Some(g) if jobs[g.start].image == job.image => g.end = j + 1,
            _ => groups.push(j..j + 1),
        }
    }
    // Enough images per round to fill a batch and keep every decoding thread busy.
    let per_round = batch_size.max(rayon::current_num_threads());

    std::thread::scope(|scope| -> Result<()> {
        // One round prepared ahead of inference at most: bounded memory, full overlap.
        let (tx, rx) = sync_channel::<Prepared>(1);
        let groups = &groups;
        scope.spawn(move || {
            for round in groups.chunks(per_round) {
                let prepared: Vec<Prepared> = round
                    .par_iter()
                    .map(|range| {
                        let image = jobs[range.start].image;
                        let decoded = decode_rgb8(&paths[image], options.limits);
                        range
                            .clone()
                            .map(|j| {
                                let pixels =
                                    decoded.as_ref().map_err(skip_reason).and_then(|rgb| {
                                        prepare(rgb, &preprocess_spec, &jobs[j].view)
                                            .map_err(|e| skip_reason(&e))
                                    });
                                (j, pixels)
                            })
                            .collect::<Prepared>()
                    })
                    .collect();
                if tx.send(prepared.into_iter().flatten().collect()).is_err() {
                    return; // The consumer stopped on an error.
                }
            }
        });

        let mut reported: HashSet<usize> = HashSet::new();
        let mut pending: VecDeque<(usize, Vec<f32>)> = VecDeque::new();
        let mut run_batch =
            |pending: &mut VecDeque<(usize, Vec<f32>)>, report: &mut ExtractReport| -> Result<()> {
                let n = pending.len().min(batch_size);
                let mut pixels = Vec::with_capacity(n * per_image);
                let mut indices = Vec::with_capacity(n);
                for (index, p) in pending.drain(..n) {
                    pixels.extend_from_slice(&p);
                    indices.push(index);
                }
                let outputs = backbone.run(pixels, n)?;
                let dim = outputs.features.len() / n;
                let classes = outputs.logits.len() / n;
                for (row, index) in indices.iter().enumerate() {
                    sink(ImageOutputs {
                        index: *index,
                        features: &outputs.features[row * dim..(row + 1) * dim],
                        logits: &outputs.logits[row * classes..(row + 1) * classes],
                    })?;
                }
                report.processed += n;
                progress.advance(n as u64);
                Ok(())
            };
        for prepared in rx {
            for (index, result) in prepared {
                match result {
                    Ok(p) => pending.push_back((index, p)),
                    Err(reason) => {
                        let image = jobs[index].image;
                        if reported.insert(image) {
                            progress
                                .message(&format!("skipped {}: {reason}", paths[image].display()));
                            report.skipped.push(Skipped {
                                path: paths[image].clone(),
                                reason,
                            });
                        }
                        progress.advance(1);
                    }
                }
                if pending.len() >= batch_size {
                    run_batch(&mut pending, &mut report)?;
                }
            }
        }
        while !pending.is_empty() {
            run_batch(&mut pending, &mut report)?;
        }
        Ok(())
    })?;
    progress.finish();
    report.elapsed = start.elapsed();
    Ok(report)
}
