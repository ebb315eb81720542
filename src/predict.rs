//! Classifying images with a trained bundle: decode and preprocess in parallel with
//! inference, features through the backbone, probabilities through the head.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::backbone::Backbone;
use crate::bundle::Bundle;
use crate::dataset::scan_images;
use crate::error::{Error, Result};
use crate::features::{extract, ExtractOptions, Skipped};
use crate::progress::Progress;

/// A trained model ready to classify.
pub struct Predictor {
    pub bundle: Bundle,
    pub backbone: Backbone,
}

#[derive(Debug, Clone, Serialize)]
pub struct Scored {
    pub label: String,
    pub score: f32,
}

#[derive(Debug, Clone, Serialize)]
pub struct Prediction {
    pub path: PathBuf,
    /// The file name without extension: the seed's submission `image_id`.
    pub image_id: String,
    /// Best first.
    pub top: Vec<Scored>,
}

/// The `k` best (class, probability) pairs, best first, ties to the lower class index.
pub fn top_k(probs: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|a, b| probs[*b].total_cmp(&probs[*a]).then(a.cmp(b)));
    order.into_iter().take(k).map(|i| (i, probs[i])).collect()
}

/// Expands folders (recursively, sorted) and keeps files as given, in argument order.
pub fn expand_inputs(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for input in inputs {
        let meta = std::fs::metadata(input).map_err(|e| Error::io(input, e))?;
        if meta.is_dir() {
            out.extend(scan_images(input)?.into_iter().map(|e| e.path));
        } else {
            out.push(input.clone());
        }
    }
    Ok(out)
}

impl Predictor {
    /// Loads the bundle and the backbone it was trained on, refusing a mismatch.
    pub fn load(bundle_dir: &Path, progress: &dyn Progress) -> Result<Predictor> {
        let bundle = Bundle::load(bundle_dir)?;
        bundle.check_manifest()?;
        let backbone = Backbone::load(bundle.manifest.backbone, progress)?;
        bundle.check_backbone(&backbone)?;
        Ok(Predictor { bundle, backbone })
    }

    /// Probabilities over the bundle's labels for one feature vector.
    pub fn probabilities(&self, features: &[f32]) -> Vec<f32> {
        self.bundle.head.probabilities(features)
    }

    fn scored(&self, probs: &[f32], k: usize) -> Vec<Scored> {
        top_k(probs, k)
            .into_iter()
            .map(|(i, score)| Scored {
                label: self.bundle.manifest.labels[i].clone(),
                score,
            })
            .collect()
    }

    /// Classifies every file in `paths`; unreadable images are skipped and reported.
    pub fn predict_paths(
        &self,
        paths: &[PathBuf],
        k: usize,
        options: ExtractOptions,
        progress: &dyn Progress,
    ) -> Result<(Vec<Prediction>, Vec<Skipped>)> {
        let mut predictions = Vec::with_capacity(paths.len());
        let report = extract(&self.backbone, paths, options, progress, |out| {
            let path = &paths[out.index];
            let probs = self.probabilities(out.features);
            predictions.push(Prediction {
                path: path.clone(),
                image_id: path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                top: self.scored(&probs, k.max(1)),
            });
            Ok(())
        })?;
        Ok((predictions, report.skipped))
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
