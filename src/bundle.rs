//! A trained model on disk: a folder with
//! - `manifest.json`: format version, graft version, backbone and weights checksum,
//!   preprocessing, feature dimension, labels, training flags, split sizes, metrics;
//! - `head.safetensors`: the softmax layer (`weight` `[D, N]`, `bias` `[N]`);
//! - `labels.txt`: one label per line, in class-index order (retrain.py's `output_labels.txt`);
//! - `backbone.safetensors` (fine-tuned models only): the backbone tensors fine-tuning
//!   changed, by checkpoint key; the manifest's `fine_tune` records their checksum and the
//!   base weights' ([`Bundle::backbone`] rebuilds the network from both).
//!
//! A bundle is written into a temporary sibling folder and renamed into place, so a
//! crash never leaves a half bundle under the final name.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};

use crate::backbone::{BackboneId, Preprocess};
use crate::engine::{Backbone, EngineChoice};
use crate::error::{Error, Result};
use crate::finetune::{tensors_sha256, tuned_weights, FineTune};
use crate::head::HeadWeights;
use crate::progress::Progress;
use crate::weights::TensorMap;
use sha2::{Digest, Sha256};

pub const FORMAT_VERSION: u32 = 1;
const MANIFEST: &str = "manifest.json";
const HEAD: &str = "head.safetensors";
const LABELS: &str = "labels.txt";
const TUNED: &str = "backbone.safetensors";
/// Beside a bundle being saved: the folder the new bundle is written in, and the old
/// bundle moved aside, each followed by the saving process's id.
const STAGING_PREFIX: &str = ".graft-bundle-";
const OLD_PREFIX: &str = ".graft-old-";

/// Whether every entry of `dir` is a plain file a bundle is made of (or a temporary
/// file graft writes them through): what a staging or moved-aside folder holds.
fn holds_only_bundle_files(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.into_iter().all(|entry| {
        entry.is_ok_and(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            e.file_type().is_ok_and(|t| t.is_file())
                && (crate::output::BUNDLE_FILES.contains(&name.as_str())
                    || crate::fsx::is_temp_name(&name))
        })
    })
}

/// Removes a moved-aside or abandoned bundle folder file by file, so that a file that
/// is not a bundle's (put there since it was checked) stops the removal instead of
/// being deleted with it.
fn remove_bundle_files(dir: &Path) {
    if !holds_only_bundle_files(dir) {
        return;
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// Tidies the staging and moved-aside folders that killed saves left in `parent`:
/// folders named as [`Bundle::save`] names them, whose process is gone, holding only a
/// bundle's files. A concurrent save's folders (its process is alive) are left alone.
///
/// A staging folder is removed. A moved-aside bundle `.graft-old-<pid>-<name>` is the
/// previous model of `<name>`; it is removed only when the swap finished (a bundle is at
/// `<name>`). When nothing is at `<name>` the save was killed between its two renames
/// and the moved-aside folder is the only copy of that model: it is renamed back. When
/// something else is at `<name>` it is left where it is, with a warning.
fn clean_abandoned_swaps(parent: &Path) {
    // A folder that cannot be listed has nothing graft could clean; the save itself
    // reports whatever is wrong with it.
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(prefix) = [STAGING_PREFIX, OLD_PREFIX]
            .into_iter()
            .find(|p| name.starts_with(p))
        else {
            continue;
        };
        let path = entry.path();
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if !is_dir || crate::fsx::writer_may_be_alive(crate::fsx::pid_in(&name, prefix), &path) {
            continue;
        }
        if prefix == OLD_PREFIX {
            settle_moved_aside(parent, &name, &path);
        } else {
            remove_bundle_files(&path);
        }
    }
}

/// Removes, restores or keeps one abandoned moved-aside bundle, as
/// [`clean_abandoned_swaps`] says.
fn settle_moved_aside(parent: &Path, name: &str, path: &Path) {
    if !holds_only_bundle_files(path) {
        return;
    }
    let Some(model) = name
        .strip_prefix(OLD_PREFIX)
        .and_then(|rest| rest.split_once('-'))
        .map(|(_, model)| model)
        .filter(|m| !m.is_empty())
    else {
        return;
    };
    let target = parent.join(model);
    match std::fs::symlink_metadata(&target) {
        Ok(m)
            if m.is_dir()
                && target.join(MANIFEST).is_file()
                && matches!(crate::output::bundle_problem(&target), Ok(None)) =>
        {
            remove_bundle_files(path);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            match std::fs::rename(path, &target) {
                Ok(()) => tracing::warn!(
                    "restored the model {} from {}, where an interrupted save had moved it",
                    target.display(),
                    path.display()
                ),
                Err(e) => tracing::warn!(
                    "{} holds the model {} that an interrupted save moved aside, but it \
                     cannot be renamed back: {e}; rename it to {} by hand",
                    path.display(),
                    target.display(),
                    target.display()
                ),
            }
        }
        _ => tracing::warn!(
            "{} holds a model that an interrupted save moved aside from {}, and something \
             else is there now; it is left as it is: rename or remove it by hand",
            path.display(),
            target.display()
        ),
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SplitSizes {
    pub train: usize,
    pub validation: usize,
    pub test: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format_version: u32,
    pub graft_version: String,
    pub backbone: BackboneId,
    pub weights_sha256: String,
    pub preprocess: Preprocess,
    pub feature_dim: usize,
    pub labels: Vec<String>,
    /// The training flags, as given.
    pub training: serde_json::Value,
    pub split_sizes: SplitSizes,
    /// Final metrics (`test_accuracy`, `validation_accuracy`, ...).
    pub metrics: serde_json::Map<String, serde_json::Value>,
    /// Each label's path in the class tree (`Fruit/Apple/Granny-Smith`), index-aligned
    /// with `labels`; absent in a flat model (and in bundles older than the field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_paths: Option<Vec<String>>,
    /// Every consumer divides the logits by it before the softmax: fitted on the
    /// validation split after training ([`crate::head::calibrate`]); 1 when absent.
    #[serde(default = "no_temperature")]
    pub temperature: f32,
    /// The `--unknown-below` used when none is given (absent: every photo is answered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unknown_below: Option<f32>,
    /// Present when the top of the backbone was fine-tuned with the head.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fine_tune: Option<FineTune>,
}

fn no_temperature() -> f32 {
    1.0
}

impl Manifest {
    /// The folder the head was trained from, as `graft train` records it: where int8
    /// calibration images come from by default.
    pub fn training_image_dir(&self) -> Option<PathBuf> {
        self.training
            .get("image_dir")
            .and_then(|v| v.as_str())
            .map(PathBuf::from)
    }
}

/// What [`Bundle::backbone_weights`] gives: the backbone's tensors as the model runs them.
pub struct BackboneWeights {
    /// By checkpoint key: the installed base weights, the fine-tuned tensors in their place.
    pub tensors: TensorMap,
    /// The base weights' checksum (the published checkpoint's).
    pub base_sha256: String,
    /// The feature cache variant: empty for the published network, `fine-tune:<sha256>`.
    pub cache_variant: String,
    /// Where the weights came from, for messages.
    pub origin: String,
}

#[derive(Debug, Clone)]
pub struct Bundle {
    pub manifest: Manifest,
    pub head: HeadWeights,
    /// The fine-tuned backbone tensors (`backbone.safetensors`), when `manifest.fine_tune` is set.
    pub tuned: Option<TensorMap>,
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Refuses label lists a classifier cannot answer with: none, fewer than two, blank or
/// repeated names (two classes no answer can tell apart), or a `labels.txt` that lists
/// other labels than the manifest (one of them was edited).
fn check_labels(dir: &Path, labels: &[String]) -> Result<()> {
    let refuse = |reason: String| {
        Error::invalid_input(
            dir.join(MANIFEST),
            format!("{reason}; restore the model folder written by `graft train` or retrain"),
        )
    };
    if labels.len() < 2 {
        return Err(refuse(format!(
            "lists {} label(s); a model needs at least 2 classes",
            labels.len()
        )));
    }
    if let Some(i) = labels.iter().position(|l| l.trim().is_empty()) {
        return Err(refuse(format!("label {} is blank", i + 1)));
    }
    let mut seen = std::collections::HashSet::new();
    for label in labels {
        if !seen.insert(label) {
            return Err(refuse(format!("lists the label '{label}' twice")));
        }
    }
    let labels_path = dir.join(LABELS);
    if let Ok(text) = std::fs::read_to_string(&labels_path) {
        let listed: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
        if listed != labels.iter().map(String::as_str).collect::<Vec<_>>() {
            return Err(Error::invalid_input(
                &labels_path,
                format!(
                    "lists {} label(s) ({}) but {MANIFEST} lists {} ({}); one of them was \
                     edited: restore the model folder or retrain",
                    listed.len(),
                    preview(&listed),
                    labels.len(),
                    preview(&labels.iter().map(String::as_str).collect::<Vec<_>>())
                ),
            ));
        }
    }
    Ok(())
}

/// Refuses a temperature that is not a positive number, a default `--unknown-below`
/// outside (0, 1), and class paths that do not match the labels.
fn check_calibration(dir: &Path, m: &Manifest) -> Result<()> {
    let refuse = |reason: String| {
        Error::invalid_input(
            dir.join(MANIFEST),
            format!("{reason}; restore the model folder written by `graft train` or retrain"),
        )
    };
    if !(m.temperature.is_finite() && m.temperature > 0.0) {
        return Err(refuse(format!(
            "temperature {} is not a positive number",
            m.temperature
        )));
    }
    if let Some(p) = m.unknown_below {
        if !(p > 0.0 && p < 1.0) {
            return Err(refuse(format!("unknown_below {p} is not between 0 and 1")));
        }
    }
    if let Some(paths) = &m.class_paths {
        crate::taxonomy::Taxonomy::new(&m.labels, paths.clone())
            .map_err(|e| refuse(format!("class_paths: {e}")))?;
    }
    Ok(())
}

/// The first few labels, for a message.
fn preview(labels: &[&str]) -> String {
    let mut text = labels
        .iter()
        .take(5)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if labels.len() > 5 {
        text.push_str(", ...");
    }
    text
}

/// Reads `backbone.safetensors`, refusing a file whose checksum is not the manifest's.
fn load_tuned(dir: &Path, fine_tune: &FineTune) -> Result<TensorMap> {
    let path = dir.join(TUNED);
    let bytes = std::fs::read(&path).map_err(|e| {
        Error::invalid_input(
            &path,
            format!(
                "cannot read the fine-tuned backbone tensors ({e}); restore the model folder \
                 or retrain"
            ),
        )
    })?;
    let actual = tensors_sha256(&bytes);
    if actual != fine_tune.tensors_sha256 {
        return Err(Error::invalid_input(
            &path,
            format!(
                "has checksum {actual} but {MANIFEST} records {}; the file was changed: restore \
                 the model folder or retrain",
                fine_tune.tensors_sha256
            ),
        ));
    }
    crate::weights::parse_safetensors(&path, &bytes)
}

impl Bundle {
    /// Writes the bundle to `dir`, replacing an existing bundle there atomically.
    ///
    /// Only a folder that is a bundle and holds nothing but a bundle's files is
    /// replaced (see [`crate::output`]); anything else at `dir` is refused and left as
    /// it is. The old bundle is moved aside before the new one moves in, and removed
    /// file by file afterwards; staging and moved-aside folders that a killed run left
    /// beside `dir` are removed by the next save.
    pub fn save(&self, dir: &Path) -> Result<()> {
        self.head.check()?;
        // A link to a model folder keeps pointing at it: the folder it names is replaced.
        let dir = match std::fs::symlink_metadata(dir) {
            Ok(m) if m.file_type().is_symlink() => {
                std::fs::canonicalize(dir).map_err(|e| Error::io(dir, e))?
            }
            _ => dir.to_path_buf(),
        };
        let dir = dir.as_path();
        crate::output::check_folder(dir, crate::output::Folder::Bundle, "the model folder")?;
        let parent = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
        clean_abandoned_swaps(&parent);
        let pid = std::process::id();
        let staging = tempfile::Builder::new()
            .prefix(&format!("{STAGING_PREFIX}{pid}-"))
            .tempdir_in(&parent)
            .map_err(|e| Error::io(&parent, e))?;
        let mut manifest = self.manifest.clone();
        match (&self.tuned, manifest.fine_tune.as_mut()) {
            (Some(tuned), Some(fine_tune)) => {
                let path = staging.path().join(TUNED);
                let bytes = crate::weights::safetensors_bytes(&path, tuned)?;
                fine_tune.tensors_sha256 = tensors_sha256(&bytes);
                crate::fsx::write_atomic(&path, &bytes)?;
            }
            (None, None) => {}
            _ => {
                return Err(Error::Invalid(
                    "a fine-tuned model needs both its tuned tensors and their manifest record"
                        .into(),
                ))
            }
        }
        let manifest =
            serde_json::to_vec_pretty(&manifest).map_err(|e| Error::Invalid(e.to_string()))?;
        crate::fsx::write_atomic(&staging.path().join(MANIFEST), &manifest)?;
        let weight = f32_bytes(&self.head.weight);
        let bias = f32_bytes(&self.head.bias);
        let tensors = [
            (
                "weight",
                TensorView::new(Dtype::F32, vec![self.head.dim, self.head.classes], &weight),
            ),
            (
                "bias",
                TensorView::new(Dtype::F32, vec![self.head.classes], &bias),
            ),
        ];
        let tensors: Vec<(&str, TensorView)> = tensors
            .into_iter()
            .map(|(n, t)| t.map(|t| (n, t)).map_err(|e| Error::Invalid(e.to_string())))
            .collect::<Result<_>>()?;
        let meta = HashMap::from([("format".to_string(), "graft-head/1".to_string())]);
        let head = safetensors::serialize(tensors, &Some(meta))
            .map_err(|e| Error::Invalid(e.to_string()))?;
        crate::fsx::write_atomic(&staging.path().join(HEAD), &head)?;
        let mut labels = self.manifest.labels.join("\n");
        labels.push('\n');
        crate::fsx::write_atomic(&staging.path().join(LABELS), labels.as_bytes())?;

        // Swap into place: the old bundle (if any) moves aside first, then is removed.
        // It is checked again here: training may have taken hours since the first check.
        if std::fs::symlink_metadata(dir).is_ok() {
            crate::output::check_folder(dir, crate::output::Folder::Bundle, "the model folder")?;
            let old = parent.join(format!(
                "{OLD_PREFIX}{pid}-{}",
                dir.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            ));
            std::fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
            let staged = staging.keep();
            if let Err(e) = std::fs::rename(&staged, dir) {
                // The old bundle goes back, so a failed save never loses the model.
                remove_bundle_files(&staged);
                return Err(match std::fs::rename(&old, dir) {
                    Ok(()) => Error::io(dir, e),
                    Err(back) => Error::invalid_input(
                        dir,
                        format!(
                            "cannot move the new model into place ({e}), nor the previous \
                             model back from {} ({back}); rename {} to {} by hand",
                            old.display(),
                            old.display(),
                            dir.display()
                        ),
                    ),
                });
            }
            remove_bundle_files(&old);
        } else {
            let staged = staging.keep();
            std::fs::rename(&staged, dir).map_err(|e| Error::io(dir, e))?;
        }
        Ok(())
    }

    pub fn load(dir: &Path) -> Result<Bundle> {
        let not_bundle = |reason: String| {
            Error::invalid_input(
                dir,
                format!("{reason}; expected a model folder written by `graft train --output`"),
            )
        };
        let manifest_path = dir.join(MANIFEST);
        let text = std::fs::read(&manifest_path)
            .map_err(|e| not_bundle(format!("cannot read {MANIFEST}: {e}")))?;
        let manifest: Manifest = serde_json::from_slice(&text)
            .map_err(|e| not_bundle(format!("{MANIFEST} is invalid: {e}")))?;
        if manifest.format_version != FORMAT_VERSION {
            return Err(not_bundle(format!(
                "bundle format version {} is not supported (this graft reads version {FORMAT_VERSION})",
                manifest.format_version
            )));
        }
        let head_path = dir.join(HEAD);
        let bytes = std::fs::read(&head_path).map_err(|e| Error::io(&head_path, e))?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| {
            Error::invalid_input(
                &head_path,
                format!("corrupt head weights: {e}; retrain the model"),
            )
        })?;
        let read = |name: &str| -> Result<(Vec<usize>, Vec<f32>)> {
            let t = st
                .tensor(name)
                .map_err(|e| Error::invalid_input(&head_path, format!("missing '{name}': {e}")))?;
            let values = t
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            Ok((t.shape().to_vec(), values))
        };
        let (wshape, weight) = read("weight")?;
        let (_, bias) = read("bias")?;
        let head = HeadWeights {
            dim: wshape.first().copied().unwrap_or(0),
            classes: wshape.get(1).copied().unwrap_or(0),
            weight,
            bias,
        };
        head.check()
            .map_err(|e| Error::invalid_input(&head_path, e.to_string()))?;
        if head.classes != manifest.labels.len() || head.dim != manifest.feature_dim {
            return Err(not_bundle(format!(
                "head is {}x{} but the manifest lists {} labels and feature dim {}",
                head.dim,
                head.classes,
                manifest.labels.len(),
                manifest.feature_dim
            )));
        }
        check_labels(dir, &manifest.labels)?;
        check_calibration(dir, &manifest)?;
        let tuned = match &manifest.fine_tune {
            None => None,
            Some(fine_tune) => Some(load_tuned(dir, fine_tune)?),
        };
        Ok(Bundle {
            manifest,
            head,
            tuned,
        })
    }

    /// The backbone this model runs on, on the engine `choice` picks: the installed base
    /// weights, with the fine-tuned tensors in their place for a fine-tuned model. Every
    /// command that runs a model builds its backbone here.
    pub fn backbone(&self, choice: EngineChoice, progress: &dyn Progress) -> Result<Backbone> {
        let weights = self.backbone_weights(progress)?;
        Backbone::from_graph(
            self.manifest.backbone,
            &crate::backbone::graph_at(self.manifest.backbone, self.manifest.preprocess.size),
            &weights.tensors,
            (weights.base_sha256, weights.cache_variant),
            &weights.origin,
            choice,
            progress,
        )
    }

    /// The weights [`Bundle::backbone`] runs, for exporters.
    pub fn backbone_weights(&self, progress: &dyn Progress) -> Result<BackboneWeights> {
        let m = &self.manifest;
        let loaded = crate::weights::ensure(m.backbone, progress)?;
        if loaded.source_sha256 != m.weights_sha256 {
            return Err(Error::Invalid(format!(
                "this model was trained on {} with weights {} but the installed weights are {}; \
                 install the same weights (graft models fetch {}) or retrain",
                m.backbone, m.weights_sha256, loaded.source_sha256, m.backbone
            )));
        }
        let mut tensors = loaded.tensors;
        let mut origin = loaded.path.display().to_string();
        let variant = match (&self.manifest.fine_tune, &self.tuned) {
            (Some(fine_tune), Some(tuned)) => {
                tuned_weights(
                    &mut tensors,
                    &loaded.source_sha256,
                    tuned.clone(),
                    fine_tune,
                    "this fine-tuned model",
                )?;
                origin.push_str(&format!(" with the model's {TUNED}"));
                format!("fine-tune:{}", fine_tune.tensors_sha256)
            }
            _ => String::new(),
        };
        Ok(BackboneWeights {
            tensors,
            base_sha256: loaded.source_sha256,
            cache_variant: variant,
            origin,
        })
    }

    /// The model's class tree (flat when the manifest records none).
    pub fn taxonomy(&self) -> crate::taxonomy::Taxonomy {
        let m = &self.manifest;
        m.class_paths
            .as_ref()
            .and_then(|paths| crate::taxonomy::Taxonomy::new(&m.labels, paths.clone()).ok())
            .unwrap_or_else(|| crate::taxonomy::Taxonomy::flat(&m.labels))
    }

    /// Calibrated class probabilities of one feature vector `[dim]`: the head's logits
    /// divided by the bundle's temperature, through the softmax. Everything that turns
    /// features into scores goes through here, so no consumer forgets the temperature.
    pub fn probabilities(&self, features: &[f32]) -> Vec<f32> {
        crate::head::calibrate::softmax_at(&self.head.logits(features), self.manifest.temperature)
    }

    /// Checks the manifest against what graft knows of its backbone before anything is
    /// loaded or fetched: a manifest whose facts contradict its backbone was edited or
    /// comes from elsewhere.
    /// `dir` is the folder the bundle was loaded from, named in the error.
    pub fn check_manifest(&self, dir: &Path) -> Result<()> {
        let m = &self.manifest;
        let spec = m.backbone.spec();
        let differs = |what: &str, recorded: String, expected: String| {
            Error::invalid_input(
                dir.join(MANIFEST),
                format!(
                "this model's manifest says {} but records {what} {recorded}, while {} has {expected}; \
                 the manifest was edited or belongs to another model: restore it or retrain",
                m.backbone, m.backbone
            ),
            )
        };
        if let crate::backbone::WeightsSource::PipWheel { sha256, .. } = spec.weights {
            if m.weights_sha256 != sha256 {
                return Err(differs(
                    "weights",
                    m.weights_sha256.clone(),
                    format!("the published weights {sha256}"),
                ));
            }
        }
        if m.feature_dim != spec.feature_dim {
            return Err(differs(
                "feature dimension",
                m.feature_dim.to_string(),
                spec.feature_dim.to_string(),
            ));
        }
        // At the recorded input size (`--image-size`); a size it cannot run at is
        // compared with the native preprocessing, and differs.
        let expected = spec
            .preprocess_at(m.preprocess.size)
            .unwrap_or(spec.preprocess);
        if m.preprocess != expected {
            return Err(differs(
                "preprocessing",
                format!("{:?}", m.preprocess),
                format!("{expected:?}"),
            ));
        }
        Ok(())
    }

    /// SHA-256 of the head's weight then bias values as little-endian f32.
    pub fn head_sha256(&self) -> String {
        let mut hasher = Sha256::new();
        for value in self.head.weight.iter().chain(&self.head.bias) {
            hasher.update(value.to_le_bytes());
        }
        hex::encode(hasher.finalize())
    }

    /// `backbone-<first 12 hex digits of the head's SHA-256>`: what `serve` and exports
    /// call this model; it changes whenever the head does.
    pub fn model_id(&self) -> String {
        format!("{}-{}", self.manifest.backbone, &self.head_sha256()[..12])
    }

    /// Refuses a backbone other than the one the head was trained on, saying what differs.
    pub fn check_backbone(&self, backbone: &Backbone) -> Result<()> {
        let m = &self.manifest;
        if m.backbone != backbone.id {
            return Err(Error::Invalid(format!(
                "this model was trained on {} features, but the backbone in use is {}; \
                 use --backbone {} or retrain",
                m.backbone, backbone.id, m.backbone
            )));
        }
        if m.weights_sha256 != backbone.weights_sha256 {
            return Err(Error::Invalid(format!(
                "this model was trained on {} with weights {} but the installed weights are {}; \
                 install the same weights (graft models fetch {}) or retrain",
                m.backbone, m.weights_sha256, backbone.weights_sha256, m.backbone
            )));
        }
        if m.preprocess != backbone.preprocess {
            return Err(Error::Invalid(format!(
                "this model was trained with preprocessing {:?}, but this graft runs {} at \
                 {} pixels with {:?}; retrain the model with this graft",
                m.preprocess, m.backbone, m.preprocess.size, backbone.preprocess
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle() -> Bundle {
        Bundle {
            manifest: Manifest {
                format_version: FORMAT_VERSION,
                graft_version: "test".into(),
                backbone: BackboneId::EfficientNetLite0,
                weights_sha256: "abc".into(),
                preprocess: BackboneId::EfficientNetLite0.spec().preprocess,
                feature_dim: 2,
                labels: vec!["a".into(), "b".into(), "c".into()],
                training: serde_json::json!({"steps": 3}),
                split_sizes: SplitSizes {
                    train: 1,
                    validation: 2,
                    test: 3,
                },
                metrics: serde_json::Map::new(),
                class_paths: None,
                temperature: 1.0,
                unknown_below: None,
                fine_tune: None,
            },
            tuned: None,
            head: HeadWeights {
                dim: 2,
                classes: 3,
                weight: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
                bias: vec![0.0, 0.5, -1.0],
            },
        }
    }

    #[test]
    fn save_load_and_replace() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("model");
        let b = bundle();
        b.save(&target).unwrap();
        b.save(&target).unwrap();
        let loaded = Bundle::load(&target).unwrap();
        assert_eq!(loaded.manifest, b.manifest);
        assert_eq!(loaded.head, b.head);
        assert_eq!(
            std::fs::read_to_string(target.join("labels.txt")).unwrap(),
            "a\nb\nc\n"
        );
        // Only the bundle is left beside it.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec!["model"]);
    }

    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    }

    fn age(path: &Path) {
        let when = std::time::SystemTime::now() - std::time::Duration::from_secs(20 * 60);
        std::fs::File::open(path)
            .unwrap()
            .set_modified(when)
            .unwrap();
    }

    #[test]
    fn a_moved_aside_model_is_restored_unless_its_swap_finished() {
        let dir = tempfile::tempdir().unwrap();
        let dead = dead_pid();
        let b = bundle();
        // Killed after the renames: the new `done` is in place.
        b.save(&dir.path().join("done")).unwrap();
        let done_old = dir.path().join(format!(".graft-old-{dead}-done"));
        b.save(&done_old).unwrap();
        // Killed between the renames: nothing at `model`, its only copy moved aside.
        let lost = dir.path().join(format!(".graft-old-{dead}-model"));
        b.save(&lost).unwrap();
        // A fresh one may be a live save's in another PID namespace.
        let fresh = dir.path().join(format!(".graft-old-{dead}-fresh"));
        b.save(&fresh).unwrap();
        age(&lost);
        age(&done_old);

        b.save(&dir.path().join("other")).unwrap();
        assert!(!lost.exists());
        assert_eq!(
            Bundle::load(&dir.path().join("model")).unwrap().head,
            b.head
        );
        assert!(!done_old.exists());
        assert!(fresh.exists());
        assert!(!dir.path().join("fresh").exists());
    }

    #[test]
    fn check_manifest_names_the_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let err = bundle().check_manifest(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains(&dir.path().join(MANIFEST).display().to_string()),
            "{err}"
        );
        assert!(err.contains("restore it or retrain"), "{err}");
    }

    #[test]
    fn not_a_bundle_is_explained() {
        let dir = tempfile::tempdir().unwrap();
        let err = Bundle::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("graft train --output"), "{err}");
    }
}
