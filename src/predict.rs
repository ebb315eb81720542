//! Classifying images with a trained bundle: decode and preprocess in parallel with
//! inference, features through the backbone, probabilities through the head.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::bundle::Bundle;
use crate::dataset::{scan_images, SkippedEntry};
use crate::engine::Backbone;
use crate::error::{Error, Result};
use crate::features::calibration::{load_backbone, BackboneOptions};
use crate::features::{extract_views, ExtractOptions, Job, Skipped};
use crate::image::distort::View;
use crate::progress::Progress;

/// A trained model ready to classify.
pub struct Predictor {
    pub bundle: Bundle,
    pub backbone: Backbone,
}

#[derive(Debug, Clone, Serialize)]
pub struct Scored {
    pub label: String,
    /// The label's path in the class tree (`Fruit/Apple/Granny-Smith`; the label itself
    /// for a flat model).
    pub class_path: String,
    pub score: f32,
}

/// What an image is answered with when its calibrated top score is below the
/// `--unknown-below` threshold.
pub const UNKNOWN: &str = "unknown";

#[derive(Debug, Clone, Serialize)]
pub struct Prediction {
    pub path: PathBuf,
    /// The file name without extension: the seed's submission `image_id`.
    pub image_id: String,
    /// Best first.
    pub top: Vec<Scored>,
    /// The top score is below the `--unknown-below` threshold: the answer is
    /// [`UNKNOWN`] (`top` still lists the best guesses).
    pub unknown: bool,
}

impl Prediction {
    /// The answer: the best label, or [`UNKNOWN`].
    pub fn answer(&self) -> &str {
        match self.top.first() {
            Some(best) if !self.unknown => &best.label,
            _ => UNKNOWN,
        }
    }
}

/// The `k` best (class, probability) pairs, best first, ties to the lower class index.
pub fn top_k(probs: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|a, b| probs[*b].total_cmp(&probs[*a]).then(a.cmp(b)));
    order.into_iter().take(k).map(|i| (i, probs[i])).collect()
}

/// The images to classify: folders expanded, files as given.
#[derive(Debug, Default)]
pub struct Inputs {
    pub paths: Vec<PathBuf>,
    /// Entries of the folders that could not be read, and files whose name is not UTF-8.
    pub skipped: Vec<SkippedEntry>,
    /// What the folder walks noticed without skipping anything.
    pub warnings: Vec<String>,
}

/// Expands folders (recursively, sorted, by [`scan_images`]'s rules) and keeps files as
/// given, in argument order. A file given by a name that is not UTF-8 is skipped, as the
/// walk skips one: its image id could not be written without merging it with another.
pub fn expand_inputs(inputs: &[PathBuf]) -> Result<Inputs> {
    let mut out = Inputs::default();
    for input in inputs {
        let meta = std::fs::metadata(input).map_err(|e| Error::io(input, e))?;
        if meta.is_dir() {
            let scan = scan_images(input)?;
            out.paths.extend(scan.images.into_iter().map(|e| e.path));
            out.skipped.extend(scan.skipped);
            out.warnings.extend(scan.warnings);
        } else if input.file_name().and_then(|n| n.to_str()).is_none() {
            out.skipped.push(SkippedEntry {
                path: input.clone(),
                reason: "its name is not valid UTF-8 (shown with \\x escapes); rename it"
                    .to_string(),
            });
        } else {
            out.paths.push(input.clone());
        }
    }
    Ok(out)
}

impl Predictor {
    /// Loads the bundle and the backbone it was trained on, refusing a mismatch.
    pub fn load(bundle_dir: &Path, progress: &dyn Progress) -> Result<Predictor> {
        Predictor::load_with(bundle_dir, &BackboneOptions::default(), progress)
    }

    /// [`Predictor::load`] with the backbone run as `options` ask; int8 calibrates on the
    /// folder the bundle was trained from unless `options` name another.
    pub fn load_with(
        bundle_dir: &Path,
        options: &BackboneOptions,
        progress: &dyn Progress,
    ) -> Result<Predictor> {
        let bundle = Bundle::load(bundle_dir)?;
        bundle.check_manifest(bundle_dir)?;
        let backbone = match options.precision {
            crate::engine::Precision::Fp32 => bundle.backbone(options.engine, progress)?,
            crate::engine::Precision::Int8 => {
                if bundle.manifest.fine_tune.is_some() {
                    return Err(Error::Invalid(format!(
                        "{} is fine-tuned, and --precision int8 quantizes only the published \
                         backbone so far: run this model at fp32 (leave out --precision)",
                        bundle_dir.display()
                    )));
                }
                let trained_on = bundle.manifest.training_image_dir();
                let weights = crate::weights::ensure(bundle.manifest.backbone, progress)?;
                load_backbone(
                    bundle.manifest.backbone,
                    bundle.manifest.preprocess.size,
                    &weights,
                    options,
                    trained_on.as_deref(),
                    progress,
                )?
            }
        };
        bundle.check_backbone(&backbone)?;
        Ok(Predictor { bundle, backbone })
    }

    /// Probabilities over the bundle's labels for one feature vector.
    pub fn probabilities(&self, features: &[f32]) -> Vec<f32> {
        self.bundle.probabilities(features)
    }

    /// `k` labels per image as asked, at most as many as the model has (as serve does).
    pub fn effective_k(&self, k: usize) -> usize {
        k.clamp(1, self.bundle.manifest.labels.len().max(1))
    }

    fn scored(&self, probs: &[f32], k: usize) -> Vec<Scored> {
        let taxonomy = self.bundle.taxonomy();
        top_k(probs, self.effective_k(k))
            .into_iter()
            .map(|(i, score)| Scored {
                label: self.bundle.manifest.labels[i].clone(),
                class_path: taxonomy.path(i).to_string(),
                score,
            })
            .collect()
    }

    /// The threshold in force: the one asked for, else the bundle's stored default.
    pub fn unknown_below(&self, asked: Option<f32>) -> Option<f32> {
        asked.or(self.bundle.manifest.unknown_below)
    }

    /// Probabilities averaged over several views' feature vectors (test-time augmentation).
    pub fn mean_probabilities<'a>(&self, views: impl IntoIterator<Item = &'a [f32]>) -> Vec<f32> {
        self.mean_probabilities_at(views, self.bundle.manifest.temperature)
    }

    /// [`Predictor::mean_probabilities`] at another temperature (1: uncalibrated).
    pub fn mean_probabilities_at<'a>(
        &self,
        views: impl IntoIterator<Item = &'a [f32]>,
        temperature: f32,
    ) -> Vec<f32> {
        let mut sum = vec![0f32; self.bundle.manifest.labels.len()];
        let mut n = 0usize;
        for features in views {
            let logits = self.bundle.head.logits(features);
            let probs = crate::head::calibrate::softmax_at(&logits, temperature);
            for (s, p) in sum.iter_mut().zip(probs) {
                *s += p;
            }
            n += 1;
        }
        sum.iter_mut().for_each(|s| *s /= n.max(1) as f32);
        sum
    }

    /// Classifies every file in `paths`, averaging the softmax over the first `tta`
    /// test-time views of each (1: the plain prediction); unreadable images are skipped
    /// and reported.
    pub fn predict_paths(
        &self,
        paths: &[PathBuf],
        k: usize,
        tta: usize,
        unknown_below: Option<f32>,
        options: ExtractOptions,
        progress: &dyn Progress,
    ) -> Result<(Vec<Prediction>, Vec<Skipped>)> {
        let tta = check_tta(tta)?;
        let jobs: Vec<Job> = (0..paths.len())
            .flat_map(|image| {
                (0..tta).map(move |v| Job {
                    image,
                    view: View::test_time(v),
                })
            })
            .collect();
        let mut predictions = Vec::with_capacity(paths.len());
        // The views of one image arrive together, in order.
        let mut views: Vec<Vec<f32>> = Vec::with_capacity(tta);
        let stage = if tta > 1 {
            "classifying views"
        } else {
            "extracting"
        };
        let report = extract_views(
            &self.backbone,
            paths,
            &jobs,
            options,
            stage,
            progress,
            |out| {
                views.push(out.features.to_vec());
                if views.len() < tta {
                    return Ok(());
                }
                let path = &paths[jobs[out.index].image];
                let probs = self.mean_probabilities(views.iter().map(Vec::as_slice));
                views.clear();
                predictions.push(Prediction {
                    path: path.clone(),
                    image_id: path
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    top: self.scored(&probs, k),
                    unknown: is_unknown(&probs, unknown_below),
                });
                Ok(())
            },
        )?;
        Ok((predictions, report.skipped))
    }
}

/// Pairs of predictions that share an `image_id` (`x.jpg` and `x.png` in one folder, or
/// `a/x.jpg` and `b/x.jpg`): a submission keyed by id cannot tell them apart. Each
/// later file is paired with the first one of its id. `predictions` must be sorted by id.
pub fn duplicate_ids(predictions: &[Prediction]) -> Vec<(&Prediction, &Prediction)> {
    let mut out = Vec::new();
    let mut first = 0;
    for i in 1..predictions.len() {
        if predictions[i].image_id == predictions[first].image_id {
            out.push((&predictions[first], &predictions[i]));
        } else {
            first = i;
        }
    }
    out
}

/// Whether a calibrated probability row is answered [`UNKNOWN`] at `threshold`.
pub fn is_unknown(probs: &[f32], threshold: Option<f32>) -> bool {
    match threshold {
        Some(p) => top_k(probs, 1)
            .first()
            .is_none_or(|&(_, best)| !(best >= p)),
        None => false,
    }
}

/// Validates `--tta N`.
pub fn check_tta(tta: usize) -> Result<usize> {
    if (1..=View::TEST_TIME_VIEWS).contains(&tta) {
        Ok(tta)
    } else {
        Err(Error::Invalid(format!(
            "--tta {tta}: give 1 (no test-time augmentation) to {} views (original, mirror, \
             four corner crops and their mirrors)",
            View::TEST_TIME_VIEWS
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_is_ordered_and_stable() {
        assert_eq!(top_k(&[0.1, 0.5, 0.4], 2), vec![(1, 0.5), (2, 0.4)]);
        assert_eq!(top_k(&[0.5, 0.5], 5), vec![(0, 0.5), (1, 0.5)]);
    }
}
