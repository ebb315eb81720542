//! Scoring a trained bundle on a labelled image set, with the reports people look at:
//! `metrics.json`, `confusion.csv`, `confusion.png`, `misclassified.csv`,
//! `predictions.csv` and `report.html`. Besides the classes it scores every level of the
//! class tree, the calibration of the scores and what answering `unknown` below a
//! threshold would cost and buy.

use std::path::PathBuf;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::features::cache::FeatureCache;
use crate::features::cached::{cached_features, cached_views, ViewRequest};
use crate::features::{ExtractOptions, Skipped};
use crate::head::calibrate::{self, CalibrationReport};
use crate::image::distort::View;
use crate::metrics::{evaluate, Evaluation};
use crate::openset::{at_threshold, risk_coverage, Rejection, THRESHOLDS};
use crate::output::Folder;
use crate::predict::{check_tta, Predictor};
use crate::progress::Progress;
use crate::report::confusion::confusion_png;
use crate::retrain::ImageSource;

#[derive(Clone, Debug)]
pub struct EvaluateOptions {
    pub bundle: PathBuf,
    pub source: ImageSource,
    pub bottleneck_dir: PathBuf,
    /// Images per forward pass (`None`: the backbone's preferred size).
    pub batch_size: Option<usize>,
    /// Test-time views averaged per image (1: none).
    pub tta: usize,
    pub output_dir: PathBuf,
    /// Where the HTML report goes (default: `<output_dir>/report.html`).
    pub report: Option<PathBuf>,
    /// `--unknown-below` (default: the bundle's stored default, else none).
    pub unknown_below: Option<f32>,
    /// Engine and precision of the backbone.
    pub backbone: crate::features::calibration::BackboneOptions,
}

/// The evaluation at one level of the class tree above the classes.
#[derive(Debug, Clone, Serialize)]
pub struct LevelResult {
    /// `level 1`, `level 2`, ...
    pub name: String,
    pub evaluation: Evaluation,
}

/// Points of the risk-coverage curve kept for the report and metrics.json.
const RISK_POINTS: usize = 200;

pub struct EvaluateResult {
    pub evaluation: Evaluation,
    /// The levels of the class tree above the classes, top first (none for a flat model).
    pub levels: Vec<LevelResult>,
    pub calibration: CalibrationReport,
    pub rejection: Rejection,
    /// Per evaluated image, in `paths` order: answered `unknown`.
    pub unknown: Vec<bool>,
    /// Each class's path in the model's tree, index-aligned with the labels.
    pub class_paths: Vec<String>,
    /// Relative path of each evaluated image, index-aligned with the evaluation.
    pub paths: Vec<String>,
    pub skipped: Vec<Skipped>,
}

impl EvaluateResult {
    /// Everything a script needs, as JSON.
    pub fn json(&self) -> serde_json::Value {
        let e = &self.evaluation;
        serde_json::json!({
            "samples": e.samples,
            "top1_accuracy": e.top1_accuracy,
            "top5_accuracy": e.top5_accuracy,
            "top_k": e.top_k,
            "macro_precision": e.macro_precision,
            "macro_recall": e.macro_recall,
            "macro_f1": e.macro_f1,
            "per_class": e.per_class,
            "confusion": e.confusion,
            "labels": e.labels,
            "class_paths": self.class_paths,
            "levels": self.levels.iter().map(|l| {
                let e = &l.evaluation;
                serde_json::json!({
                    "name": l.name,
                    "samples": e.samples,
                    "top1_accuracy": e.top1_accuracy,
                    "top5_accuracy": e.top5_accuracy,
                    "top_k": e.top_k,
                    "macro_precision": e.macro_precision,
                    "macro_recall": e.macro_recall,
                    "macro_f1": e.macro_f1,
                    "labels": e.labels,
                    "per_class": e.per_class,
                    "confusion": e.confusion,
                })
            }).collect::<Vec<_>>(),
            "calibration": self.calibration,
            "rejection": self.rejection,
            "misclassified": e.misclassified.iter().map(|m| serde_json::json!({
                "path": self.paths[m.index],
                "true": e.labels[m.truth],
                "predicted": e.labels[m.predicted],
                "score": m.predicted_probability,
                "true_score": m.true_probability,
            })).collect::<Vec<_>>(),
            "skipped": self.skipped.iter().map(|s| serde_json::json!({
                "path": s.path, "reason": s.reason,
            })).collect::<Vec<_>>(),
        })
    }
}

pub fn evaluate_bundle(
    options: &EvaluateOptions,
    progress: &dyn Progress,
) -> Result<EvaluateResult> {
    let started = std::time::Instant::now();
    let predictor = Predictor::load_with(&options.bundle, &options.backbone, progress)?;
    let labels = &predictor.bundle.manifest.labels;
    let dataset = options.source.load()?;
    check_outputs(options, &dataset.root)?;
    for warning in &dataset.scan_warnings {
        progress.message(&format!("warning: {warning}"));
    }
    for entry in &dataset.skipped {
        progress.message(&format!("skipped {entry}"));
    }
    // Map the evaluation set's class names onto the model's label indices.
    let mut to_model = Vec::with_capacity(dataset.classes.len());
    let mut unknown = Vec::new();
    for class in &dataset.classes {
        match labels.iter().position(|l| l == class) {
            Some(i) => to_model.push(i),
            None => {
                unknown.push(class.clone());
                to_model.push(usize::MAX);
            }
        }
    }
    if !unknown.is_empty() {
        return Err(Error::invalid_input(
            &dataset.root,
            format!(
                "classes the model was not trained on: {}; the model knows: {}",
                unknown.join(", "),
                labels.join(", ")
            ),
        ));
    }
    let cache = FeatureCache::open(&options.bottleneck_dir)?;
    let paths: Vec<PathBuf> = dataset.images.iter().map(|i| i.path.clone()).collect();
    let extract = ExtractOptions {
        batch_size: options.batch_size,
        ..ExtractOptions::default()
    };
    let tta = check_tta(options.tta)?;
    let cached = cached_features(&predictor.backbone, &cache, &paths, extract, progress)?;
    // Test-time views 1.. of every readable image, through the cache like the originals.
    let requests: Vec<ViewRequest> = cached
        .features
        .iter()
        .zip(&cached.hashes)
        .enumerate()
        .filter_map(|(image, (f, hash))| Some((image, f.as_ref()?, (*hash)?)))
        .flat_map(|(image, _, hash)| {
            (1..tta).map(move |k| ViewRequest {
                image,
                hash,
                view: View::test_time(k),
                tag: View::test_time_tag(k),
            })
        })
        .collect();
    let extra = cached_views(
        &predictor.backbone,
        &cache,
        &paths,
        &requests,
        extract,
        "test-time views",
        progress,
        |f| f,
    )?;
    let mut views: Vec<Vec<&[f32]>> = cached
        .features
        .iter()
        .map(|f| f.as_deref().into_iter().collect())
        .collect();
    for (request, f) in requests.iter().zip(&extra.features) {
        if let Some(f) = f {
            views[request.image].push(f);
        }
    }
    let mut truth = Vec::new();
    let mut probs = Vec::new();
    let mut raw_probs = Vec::new();
    let mut rel_paths = Vec::new();
    let mut full_paths = Vec::new();
    for (image, views) in dataset.images.iter().zip(&views) {
        if views.len() == tta {
            truth.push(to_model[image.label]);
            probs.push(predictor.mean_probabilities(views.iter().copied()));
            raw_probs.push(predictor.mean_probabilities_at(views.iter().copied(), 1.0));
            rel_paths.push(image.relative.clone());
            full_paths.push(image.path.clone());
        }
    }
    let evaluation = evaluate(labels, &truth, &probs)?;
    let taxonomy = predictor.bundle.taxonomy();
    let mut levels = Vec::new();
    for level in taxonomy.levels().into_iter().filter(|l| l.name != "fine") {
        levels.push(LevelResult {
            evaluation: level.evaluate(&truth, &probs)?,
            name: level.name,
        });
    }
    let bins = calibrate::ECE_BINS;
    let calibration = CalibrationReport {
        temperature: predictor.bundle.manifest.temperature,
        ece_uncalibrated: calibrate::ece(&raw_probs, &truth, bins),
        ece_calibrated: calibrate::ece(&probs, &truth, bins),
        reliability_uncalibrated: calibrate::reliability(&raw_probs, &truth, bins),
        reliability_calibrated: calibrate::reliability(&probs, &truth, bins),
    };
    let top1: Vec<(usize, f32)> = probs
        .iter()
        .map(|row| {
            crate::predict::top_k(row, 1)
                .first()
                .copied()
                .unwrap_or((usize::MAX, 0.0))
        })
        .collect();
    let confidence: Vec<f32> = top1.iter().map(|t| t.1).collect();
    let correct: Vec<bool> = top1.iter().zip(&truth).map(|(t, &c)| t.0 == c).collect();
    let unknown_below = predictor.unknown_below(options.unknown_below);
    let rejection = Rejection {
        unknown_below,
        at_chosen: unknown_below.map(|p| at_threshold(&confidence, &correct, p)),
        table: THRESHOLDS
            .iter()
            .map(|&p| at_threshold(&confidence, &correct, p))
            .collect(),
        risk_coverage: risk_coverage(&confidence, &correct, RISK_POINTS),
    };
    let unknown = probs
        .iter()
        .map(|row| crate::predict::is_unknown(row, unknown_below))
        .collect();
    let result = EvaluateResult {
        evaluation,
        levels,
        calibration,
        rejection,
        unknown,
        class_paths: taxonomy.paths().to_vec(),
        paths: rel_paths,
        skipped: dataset
            .skipped
            .iter()
            .cloned()
            .map(Skipped::from)
            .chain(cached.skipped)
            .collect(),
    };

    let dir = &options.output_dir;
    crate::output::prepare_folder(dir, Folder::Evaluation, "--output-dir")?;
    let json =
        serde_json::to_vec_pretty(&result.json()).map_err(|e| Error::Invalid(e.to_string()))?;
    crate::fsx::write_atomic(&dir.join("metrics.json"), &json)?;
    crate::fsx::write_atomic(
        &dir.join("confusion.csv"),
        result.evaluation.confusion_csv().as_bytes(),
    )?;
    confusion_png(
        &dir.join("confusion.png"),
        labels,
        &result.evaluation.confusion,
    )?;
    let mut w = csv::Writer::from_writer(Vec::new());
    let csv_err = |e: csv::Error| Error::Invalid(e.to_string());
    w.write_record(["path", "true", "predicted", "score"])
        .map_err(csv_err)?;
    for m in &result.evaluation.misclassified {
        w.write_record([
            result.paths[m.index].as_str(),
            labels[m.truth].as_str(),
            labels[m.predicted].as_str(),
            &format!("{:.4}", m.predicted_probability),
        ])
        .map_err(csv_err)?;
    }
    let bytes = w.into_inner().map_err(|e| Error::Invalid(e.to_string()))?;
    crate::fsx::write_atomic(&dir.join("misclassified.csv"), &bytes)?;
    crate::fsx::write_atomic(
        &dir.join("predictions.csv"),
        &predictions_csv(&result, &truth, &probs)?,
    )?;
    write_html_report(
        options,
        &predictor.bundle.manifest,
        &dataset,
        &result,
        &full_paths,
        started,
    )?;
    Ok(result)
}

/// `predictions.csv`: one row per evaluated photo, with the true and predicted class,
/// their paths in the class tree and the answer (`unknown` below the threshold), so a
/// script can recompute any level's accuracy (scripts/check_levels.py does).
fn predictions_csv(
    result: &EvaluateResult,
    truth: &[usize],
    probs: &[Vec<f32>],
) -> Result<Vec<u8>> {
    let labels = &result.evaluation.labels;
    let mut w = csv::Writer::from_writer(Vec::new());
    let csv_err = |e: csv::Error| Error::Invalid(e.to_string());
    w.write_record([
        "path",
        "true",
        "predicted",
        "score",
        "answer",
        "true_path",
        "predicted_path",
    ])
    .map_err(csv_err)?;
    for (i, (&t, row)) in truth.iter().zip(probs).enumerate() {
        let (p, score) = crate::predict::top_k(row, 1)
            .first()
            .copied()
            .unwrap_or((t, 0.0));
        let answer = if result.unknown[i] {
            crate::predict::UNKNOWN
        } else {
            labels[p].as_str()
        };
        w.write_record([
            result.paths[i].as_str(),
            labels[t].as_str(),
            labels[p].as_str(),
            &format!("{score:.6}"),
            answer,
            result.class_paths[t].as_str(),
            result.class_paths[p].as_str(),
        ])
        .map_err(csv_err)?;
    }
    w.into_inner().map_err(|e| Error::Invalid(e.to_string()))
}

/// Refuses, before any work, an output folder or report that is not graft's to write,
/// and an output folder inside the images being evaluated (or holding them).
fn check_outputs(options: &EvaluateOptions, dataset_root: &std::path::Path) -> Result<()> {
    crate::output::refuse_nested(
        &options.output_dir,
        "--output-dir",
        dataset_root,
        "the dataset folder",
    )?;
    crate::output::check_folder(&options.output_dir, Folder::Evaluation, "--output-dir")?;
    if let Some(report) = &options.report {
        crate::output::check_file(report, crate::output::File::Html, "--report")?;
    }
    Ok(())
}

/// `report.html`: the evaluation with the photos it got wrong, for people who do not
/// read JSON.
fn write_html_report(
    options: &EvaluateOptions,
    manifest: &crate::bundle::Manifest,
    dataset: &crate::dataset::classes::Dataset,
    result: &EvaluateResult,
    image_paths: &[PathBuf],
    started: std::time::Instant,
) -> Result<()> {
    let e = &result.evaluation;
    let mut summary = vec![
        ("model".to_string(), options.bundle.display().to_string()),
        ("backbone".to_string(), manifest.backbone.name().to_string()),
        (
            "classes the model knows".to_string(),
            manifest.labels.len().to_string(),
        ),
        (
            "evaluated images from".to_string(),
            dataset.root.display().to_string(),
        ),
        ("photos evaluated".to_string(), e.samples.to_string()),
        (
            "photos skipped (unreadable)".to_string(),
            result.skipped.len().to_string(),
        ),
        (
            "top-1 accuracy".to_string(),
            format!(
                "{:.2}% ({} of {})",
                e.top1_accuracy * 100.0,
                e.correct,
                e.samples
            ),
        ),
        (
            format!("top-{} accuracy", e.top_k),
            format!("{:.2}%", e.top5_accuracy * 100.0),
        ),
        (
            "macro precision / recall / F1".to_string(),
            format!(
                "{:.3} / {:.3} / {:.3}",
                e.macro_precision, e.macro_recall, e.macro_f1
            ),
        ),
    ];
    let s = &manifest.split_sizes;
    summary.push((
        "model trained on (train / validation / test)".to_string(),
        format!("{} / {} / {} images", s.train, s.validation, s.test),
    ));
    for (key, value) in &manifest.metrics {
        let shown = match value.as_f64() {
            Some(v) if key.contains("accuracy") => format!("{:.2}%", v * 100.0),
            _ => value.to_string(),
        };
        summary.push((format!("at training: {}", key.replace('_', " ")), shown));
    }
    summary.push((
        "time taken".to_string(),
        format!("{:.1} s", started.elapsed().as_secs_f64()),
    ));
    // Photos evaluated per class: the confusion rows, leaving out classes the set lacks.
    let class_counts = e
        .labels
        .iter()
        .zip(&e.confusion)
        .map(|(label, row)| {
            (
                label.clone(),
                row.iter().map(|&c| u64::from(c)).sum::<u64>(),
            )
        })
        .filter(|(_, n)| *n > 0)
        .collect();
    // The curves of the model's own training run, when its bundle kept them.
    let curve_png = std::fs::read(options.bundle.join("training_curves.png")).ok();
    let report = options
        .report
        .clone()
        .unwrap_or_else(|| options.output_dir.join("report.html"));
    crate::report::html::write_report(
        &report,
        &crate::report::html::ReportInput {
            title: format!(
                "Evaluation report — {} on {}",
                crate::report::html::short_name(&options.bundle),
                crate::report::html::short_name(&dataset.root)
            ),
            subtitle: format!(
                "The model labelled {} photos of {}.",
                e.samples,
                dataset.root.display()
            ),
            summary,
            flags: Vec::new(),
            class_counts,
            class_counts_caption: "Photos per class in the evaluated set".to_string(),
            small_class: 0,
            curve: &[],
            curve_png,
            evaluation: Some(e),
            image_paths,
            levels: result
                .levels
                .iter()
                .map(|l| (l.name.clone(), &l.evaluation))
                .collect(),
            calibration: Some(&result.calibration),
            rejection: Some(&result.rejection),
        },
    )
}
