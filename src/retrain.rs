//! The whole of retrain.py as one library call: dataset -> stable split -> cached
//! features -> softmax head -> test evaluation -> model bundle (+ TensorBoard summaries,
//! training curves and `report.html`). The CLI only parses flags and renders the events.

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::backbone::BackboneId;
use crate::bundle::{Bundle, Manifest, SplitSizes, FORMAT_VERSION};
use crate::dataset::classes::Dataset;
use crate::dataset::split::{which_split, Split};
use crate::engine::Backbone;
use crate::error::{Error, Result};
use crate::features::cache::FeatureCache;
use crate::features::cached::{cached_features, cached_views, ViewRequest};
use crate::features::{extract_views, ExtractOptions, Job, Skipped};
use crate::head::train::{score, CachedVariants, Originals, TrainFeatures};
use crate::head::{train_head, HeadWeights, SplitData, TrainConfig, TrainEvent};
use crate::image::distort::Distortions;
use crate::metrics::{evaluate, Evaluation};
use crate::output::{check_folder, refuse_nested, Folder};
use crate::progress::Progress;
use crate::report::curves::{training_curves_png, CurvePoint};
use crate::report::tensorboard::SummaryWriter;

/// Where the labelled images come from.
#[derive(Clone, Debug)]
pub enum ImageSource {
    /// One sub-folder per class.
    Folders(PathBuf),
    /// A CSV of `path,label` rows; paths relative to `images` (default: the CSV's folder).
    Csv {
        labels: PathBuf,
        images: Option<PathBuf>,
    },
}

impl ImageSource {
    pub fn load(&self) -> Result<Dataset> {
        match self {
            ImageSource::Folders(dir) => Dataset::from_class_folders(dir),
            ImageSource::Csv { labels, images } => {
                Dataset::from_labels_csv(labels, images.as_deref())
            }
        }
    }
}

#[derive(Clone, Debug)]
pub struct RetrainOptions {
    pub source: ImageSource,
    pub backbone: BackboneId,
    pub bottleneck_dir: PathBuf,
    pub validation_percentage: f64,
    pub testing_percentage: f64,
    pub train: TrainConfig,
    /// `-1`: the whole test split; otherwise a random class-balanced sample of this size.
    pub test_batch_size: i64,
    pub extract: ExtractOptions,
    pub summaries_dir: Option<PathBuf>,
    pub output: PathBuf,
    /// Save an intermediate bundle every N steps (0: never) under `intermediate_dir`.
    pub intermediate_store_frequency: usize,
    pub intermediate_dir: PathBuf,
    /// Engine and precision of the backbone; int8 calibrates on the training folder
    /// unless these name another.
    pub backbone_run: crate::features::calibration::BackboneOptions,
    /// retrain.py's training-time distortions (all off by default).
    pub distortions: Distortions,
    pub distortion_mode: DistortionMode,
    /// Distorted variants per training image in [`DistortionMode::Cached`].
    pub distorted_variants: usize,
}

/// How training-time distortions reach the head.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum DistortionMode {
    /// Each training image gets K distorted variants, extracted once and kept in the
    /// feature cache; every sample is the original or one of its variants.
    Cached,
    /// retrain.py's way: a fresh distortion of every sample at every step, through the
    /// whole network (train-batch-size forward passes a step; hours on a CPU).
    Online,
}

/// What the run reports beyond training events.
pub enum RetrainEvent<'a> {
    Warning(String),
    Features {
        /// What was looked up: "features" or "distorted variants".
        what: &'static str,
        hits: usize,
        extracted: usize,
        corrupt: usize,
        seconds: f64,
    },
    Training(&'a TrainEvent),
}

pub struct RetrainOutcome {
    pub bundle: Bundle,
    pub dataset: Dataset,
    pub split_sizes: SplitSizes,
    /// Evaluation on the test split (None when the split is empty).
    pub test: Option<Evaluation>,
    /// Relative paths of the evaluated test images, index-aligned with `test`.
    pub test_paths: Vec<String>,
    pub skipped: Vec<Skipped>,
    pub head_seconds: f64,
}

/// Runs the whole retraining; `on_event` receives warnings, feature-cache statistics
/// and training progress.
pub fn retrain(
    options: &RetrainOptions,
    progress: &dyn Progress,
    mut on_event: impl FnMut(RetrainEvent<'_>),
) -> Result<RetrainOutcome> {
    let run_started = std::time::Instant::now();
    options.distortions.check()?;
    let dataset = options.source.load()?;
    dataset.require_trainable()?;
    check_outputs(options, &dataset.root)?;
    for warning in dataset.warnings() {
        on_event(RetrainEvent::Warning(warning));
    }
    for entry in &dataset.skipped {
        progress.message(&format!("skipped {entry}"));
    }
    let weights = crate::weights::ensure(options.backbone, progress)?;
    let backbone = crate::features::calibration::load_backbone(
        options.backbone,
        &weights,
        &options.backbone_run,
        Some(&dataset.root),
        progress,
    )?;
    let cache = FeatureCache::open(&options.bottleneck_dir)?;
    let paths: Vec<PathBuf> = dataset.images.iter().map(|i| i.path.clone()).collect();
    let cached = cached_features(&backbone, &cache, &paths, options.extract, progress)?;
    on_event(RetrainEvent::Features {
        what: "features",
        hits: cached.hits,
        extracted: cached.extracted,
        corrupt: cached.corrupt,
        seconds: cached.extraction_seconds,
    });

    let dim = backbone.spec().feature_dim;
    let mut splits = [
        SplitData {
            dim,
            ..Default::default()
        },
        SplitData {
            dim,
            ..Default::default()
        },
        SplitData {
            dim,
            ..Default::default()
        },
    ];
    let mut test_paths = Vec::new();
    // Dataset index of each train split row.
    let mut train_images = Vec::new();
    for (index, (image, features)) in dataset.images.iter().zip(&cached.features).enumerate() {
        let Some(features) = features else { continue };
        let split = which_split(
            &image.relative,
            options.validation_percentage,
            options.testing_percentage,
        );
        let slot = match split {
            Split::Train => {
                train_images.push(index);
                0
            }
            Split::Validation => 1,
            Split::Test => {
                test_paths.push(image.relative.clone());
                2
            }
        };
        splits[slot].push(features, image.label);
    }
    for (slot, split) in [Split::Train, Split::Validation, Split::Test]
        .into_iter()
        .enumerate()
    {
        let mut present = vec![false; dataset.classes.len()];
        for &l in &splits[slot].labels {
            present[l] = true;
        }
        for (class, _) in present.iter().enumerate().filter(|(_, p)| !**p) {
            on_event(RetrainEvent::Warning(format!(
                "class '{}' has no image in the {} split",
                dataset.classes[class],
                split.name()
            )));
        }
    }
    let [train, validation, test] = splits;
    let split_sizes = SplitSizes {
        train: train.len(),
        validation: validation.len(),
        test: test.len(),
    };

    let mut writers = match &options.summaries_dir {
        Some(dir) => Some((
            SummaryWriter::create(&dir.join("train"))?,
            SummaryWriter::create(&dir.join("validation"))?,
        )),
        None => None,
    };
    let mut curve = Vec::new();
    let manifest_for = |head_metrics: serde_json::Map<String, serde_json::Value>| Manifest {
        format_version: FORMAT_VERSION,
        graft_version: env!("CARGO_PKG_VERSION").to_string(),
        backbone: backbone.id,
        weights_sha256: backbone.weights_sha256.clone(),
        preprocess: backbone.spec().preprocess,
        feature_dim: dim,
        labels: dataset.classes.clone(),
        training: serde_json::json!({
            "how_many_training_steps": options.train.steps,
            "learning_rate": options.train.learning_rate,
            "train_batch_size": options.train.train_batch_size,
            "eval_step_interval": options.train.eval_step_interval,
            "validation_batch_size": options.train.validation_batch_size,
            "test_batch_size": options.test_batch_size,
            "validation_percentage": options.validation_percentage,
            "testing_percentage": options.testing_percentage,
            "optimizer": options.train.optimizer,
            "weight_decay": options.train.weight_decay,
            "seed": options.train.seed,
            "flip_left_right": options.distortions.flip_left_right,
            "random_crop": options.distortions.random_crop,
            "random_scale": options.distortions.random_scale,
            "random_brightness": options.distortions.random_brightness,
            "distortion_mode": options.distortion_mode,
            "distorted_variants": options.distorted_variants,
            // Where `--precision int8` finds calibration images by default.
            "precision": backbone.precision().name(),
            "image_dir": std::fs::canonicalize(&dataset.root).unwrap_or_else(|_| dataset.root.clone()),
        }),
        split_sizes: split_sizes.clone(),
        metrics: head_metrics,
    };

    // Only training images are ever distorted: validation and test use the originals.
    let mut variants_note = String::new();
    let train_paths: Vec<PathBuf> = train_images
        .iter()
        .map(|&i| dataset.images[i].path.clone())
        .collect();
    let mut sources: Box<dyn TrainFeatures + '_> = if options.distortions.is_none() {
        Box::new(Originals)
    } else {
        match options.distortion_mode {
            DistortionMode::Cached => {
                let variants = cached_variants(
                    options,
                    &backbone,
                    &cache,
                    &paths,
                    &train_images,
                    &cached.hashes,
                    progress,
                    &mut on_event,
                )?;
                variants_note = format!(
                    "; {} distorted variants per training image",
                    options.distorted_variants
                );
                Box::new(variants)
            }
            DistortionMode::Online => {
                variants_note = "; distorted afresh at every step (online)".into();
                Box::new(OnlineDistortions {
                    backbone: &backbone,
                    paths: &train_paths,
                    distortions: options.distortions,
                    rng: ChaCha8Rng::seed_from_u64(options.train.seed ^ 0xd157_0127),
                    extract: options.extract,
                })
            }
        }
    };

    let started = std::time::Instant::now();
    let result = train_head(
        &options.train,
        dataset.classes.len(),
        &train,
        sources.as_mut(),
        &validation,
        options.intermediate_store_frequency,
        |event, weights| {
            match event {
                TrainEvent::Evaluation {
                    step,
                    train_accuracy,
                    cross_entropy,
                    validation_accuracy,
                    validation_cross_entropy,
                } => {
                    if let Some((tw, vw)) = writers.as_mut() {
                        let s = *step as i64;
                        tw.scalar("accuracy", s, *train_accuracy)?;
                        tw.scalar("cross_entropy", s, *cross_entropy)?;
                        tw.histogram("final_training_ops/weights", s, &weights.weight)?;
                        tw.histogram("final_training_ops/biases", s, &weights.bias)?;
                        if let (Some(a), Some(l)) = (validation_accuracy, validation_cross_entropy)
                        {
                            vw.scalar("accuracy", s, *a)?;
                            vw.scalar("cross_entropy", s, *l)?;
                        }
                    }
                    curve.push(CurvePoint {
                        step: *step as u64,
                        train_accuracy: *train_accuracy,
                        train_cross_entropy: *cross_entropy,
                        validation_accuracy: *validation_accuracy,
                        validation_cross_entropy: *validation_cross_entropy,
                    });
                }
                TrainEvent::Intermediate { step } => {
                    let bundle = Bundle {
                        manifest: manifest_for(serde_json::Map::new()),
                        head: weights.clone(),
                    };
                    bundle.save(&options.intermediate_dir.join(format!("step-{step}")))?;
                }
            }
            on_event(RetrainEvent::Training(event));
            Ok(())
        },
    )?;
    let head_seconds = started.elapsed().as_secs_f64();
    if let Some((tw, vw)) = writers.as_mut() {
        tw.flush()?;
        vw.flush()?;
    }

    let mut metrics = serde_json::Map::new();
    let all_validation: Vec<usize> = (0..validation.len()).collect();
    if !validation.is_empty() {
        let (acc, _) = score(&result.head, &validation, &all_validation);
        metrics.insert("validation_accuracy".into(), f64::from(acc).into());
    }
    let (test_eval, test_paths) =
        evaluate_test(&result.head, &dataset, &test, test_paths, options)?;
    if let Some(e) = &test_eval {
        metrics.insert("test_accuracy".into(), e.top1_accuracy.into());
        metrics.insert("test_top5_accuracy".into(), e.top5_accuracy.into());
        metrics.insert("test_images".into(), e.samples.into());
    }
    let bundle = Bundle {
        manifest: manifest_for(metrics),
        head: result.head,
    };
    bundle.save(&options.output)?;
    if !curve.is_empty() {
        training_curves_png(&options.output.join("training_curves.png"), &curve)?;
    }
    let skipped = dataset
        .skipped
        .iter()
        .cloned()
        .map(Skipped::from)
        .chain(cached.skipped)
        .collect();
    let outcome = RetrainOutcome {
        bundle,
        dataset,
        split_sizes,
        test: test_eval,
        test_paths,
        skipped,
        head_seconds,
    };
    let features = format!(
        "{} from the cache, {} extracted{variants_note}",
        cached.hits, cached.extracted
    );
    write_html_report(options, &outcome, &curve, features, run_started)?;
    Ok(outcome)
}

/// Refuses, before any work, every output folder that is not graft's to write or that
/// lies inside the dataset being read (or holds it).
fn check_outputs(options: &RetrainOptions, dataset_root: &Path) -> Result<()> {
    const DATASET: &str = "the dataset folder";
    refuse_nested(&options.output, "--output", dataset_root, DATASET)?;
    check_folder(&options.output, Folder::Bundle, "--output")?;
    if options.intermediate_store_frequency > 0 {
        let flag = "--intermediate-output-dir";
        refuse_nested(&options.intermediate_dir, flag, dataset_root, DATASET)?;
        check_folder(&options.intermediate_dir, Folder::AppendOnly, flag)?;
    }
    if let Some(dir) = &options.summaries_dir {
        refuse_nested(dir, "--summaries-dir", dataset_root, DATASET)?;
        check_folder(dir, Folder::AppendOnly, "--summaries-dir")?;
    }
    Ok(())
}

/// `<output>/report.html`: the run summary, curves and the test split's evaluation.
fn write_html_report(
    options: &RetrainOptions,
    outcome: &RetrainOutcome,
    curve: &[CurvePoint],
    features: String,
    run_started: std::time::Instant,
) -> Result<()> {
    let manifest = &outcome.bundle.manifest;
    let dataset = &outcome.dataset;
    let s = &outcome.split_sizes;
    let percent = |key: &str| {
        manifest
            .metrics
            .get(key)
            .and_then(|v| v.as_f64())
            .map(|v| format!("{:.2}%", v * 100.0))
    };
    let flags: Vec<String> = match &manifest.training {
        serde_json::Value::Object(map) => map
            .iter()
            .map(|(k, v)| {
                format!(
                    "--{} {}",
                    k.replace('_', "-"),
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string())
                )
            })
            .collect(),
        _ => Vec::new(),
    };
    let mut summary = vec![
        ("model".to_string(), options.output.display().to_string()),
        ("backbone".to_string(), manifest.backbone.name().to_string()),
        (
            "images from".to_string(),
            dataset.root.display().to_string(),
        ),
        ("classes".to_string(), dataset.classes.len().to_string()),
        (
            "images: train / validation / test".to_string(),
            format!("{} / {} / {}", s.train, s.validation, s.test),
        ),
        (
            "images skipped (unreadable)".to_string(),
            outcome.skipped.len().to_string(),
        ),
        ("features".to_string(), features),
    ];
    if let Some(v) = percent("validation_accuracy") {
        summary.push(("final validation accuracy".to_string(), v));
    }
    if let Some(test) = &outcome.test {
        summary.push((
            "final test accuracy".to_string(),
            format!(
                "{:.2}% ({} of {})",
                test.top1_accuracy * 100.0,
                test.correct,
                test.samples
            ),
        ));
        summary.push((
            format!("test top-{} accuracy", test.top_k),
            format!("{:.2}%", test.top5_accuracy * 100.0),
        ));
    }
    summary.push((
        "head training time".to_string(),
        format!("{:.1} s", outcome.head_seconds),
    ));
    summary.push((
        "time taken in all".to_string(),
        format!("{:.1} s", run_started.elapsed().as_secs_f64()),
    ));
    let subtitle = match &outcome.test {
        Some(test) => format!(
            "A new head on {} features, trained on {} photos of {} classes. The evaluation below is on the test split: {} photos the head never trained on. \
             Photos taken in one session can fall on both sides of a split, so this can flatter the model; \
             `graft evaluate` on a separate folder gives the fairer figure.",
            manifest.backbone.name(), s.train, dataset.classes.len(), test.samples
        ),
        None => format!(
            "A new head on {} features, trained on {} photos of {} classes. There is no test split to evaluate (raise --testing-percentage).",
            manifest.backbone.name(), s.train, dataset.classes.len()
        ),
    };
    let image_paths: Vec<PathBuf> = outcome
        .test_paths
        .iter()
        .map(|p| dataset.root.join(p))
        .collect();
    crate::report::html::write_report(
        &options.output.join("report.html"),
        &crate::report::html::ReportInput {
            title: format!(
                "Training report — {}",
                crate::report::html::short_name(&options.output)
            ),
            subtitle,
            summary,
            flags,
            class_counts: dataset
                .classes
                .iter()
                .cloned()
                .zip(dataset.class_counts().into_iter().map(|n| n as u64))
                .collect(),
            class_counts_caption: format!("Images per class in {}", dataset.root.display()),
            small_class: crate::dataset::classes::MIN_IMAGES_PER_CLASS as u64,
            curve,
            curve_png: None,
            evaluation: outcome.test.as_ref(),
            image_paths: &image_paths,
        },
    )
}

/// Extracts (or finds in the cache) `options.distorted_variants` distorted views of every
/// training image.
#[allow(clippy::too_many_arguments)]
fn cached_variants(
    options: &RetrainOptions,
    backbone: &Backbone,
    cache: &FeatureCache,
    paths: &[PathBuf],
    train_images: &[usize],
    hashes: &[Option<[u8; 32]>],
    progress: &dyn Progress,
    on_event: &mut impl FnMut(RetrainEvent<'_>),
) -> Result<CachedVariants> {
    let k_max = options.distorted_variants;
    if k_max == 0 {
        return Err(Error::Invalid(
            "--distorted-variants 0 leaves nothing to train the distortions on: give 1 or more, \
             or use --distortion-mode online"
                .into(),
        ));
    }
    let size = backbone.spec().preprocess.size;
    let mut requests = Vec::with_capacity(train_images.len() * k_max);
    // The train row of each request.
    let mut rows = Vec::with_capacity(train_images.len() * k_max);
    for (row, &image) in train_images.iter().enumerate() {
        // Every training row had its features read, so its hash is known.
        let Some(hash) = hashes[image] else { continue };
        for k in 0..k_max {
            rows.push(row);
            requests.push(ViewRequest {
                image,
                hash,
                view: options.distortions.variant(size, &hash, k),
                tag: options.distortions.variant_tag(k),
            });
        }
    }
    let views = cached_views(
        backbone,
        cache,
        paths,
        &requests,
        options.extract,
        "distorting",
        progress,
    )?;
    on_event(RetrainEvent::Features {
        what: "distorted variants",
        hits: views.hits,
        extracted: views.extracted,
        corrupt: views.corrupt,
        seconds: views.extraction_seconds,
    });
    for skipped in &views.skipped {
        on_event(RetrainEvent::Warning(format!(
            "no distorted variants of {}: {}",
            skipped.path.display(),
            skipped.reason
        )));
    }
    let mut variants = vec![Vec::new(); train_images.len()];
    for (&row, features) in rows.iter().zip(views.features) {
        if let Some(f) = features {
            variants[row].extend_from_slice(&f);
        }
    }
    Ok(CachedVariants { variants })
}

/// retrain.py's distortions as it runs them: every sample of every step is a fresh random
/// distortion of the image, run through the whole backbone.
struct OnlineDistortions<'a> {
    backbone: &'a Backbone,
    /// Path of each training row.
    paths: &'a [PathBuf],
    distortions: Distortions,
    /// Separate from the training loop's stream, so the batches drawn are the same as
    /// in cached mode with the same seed.
    rng: ChaCha8Rng,
    extract: ExtractOptions,
}

impl TrainFeatures for OnlineDistortions<'_> {
    fn rows(
        &mut self,
        train: &SplitData,
        batch: &[usize],
        _rng: &mut ChaCha8Rng,
    ) -> Result<Vec<f32>> {
        let size = self.backbone.spec().preprocess.size;
        let jobs: Vec<Job> = batch
            .iter()
            .map(|&image| Job {
                image,
                view: self.distortions.draw(size, &mut self.rng),
            })
            .collect();
        let dim = train.dim;
        let mut rows = vec![0f32; batch.len() * dim];
        let report = extract_views(
            self.backbone,
            self.paths,
            &jobs,
            self.extract,
            "distorting",
            &crate::progress::Silent,
            |out| {
                rows[out.index * dim..(out.index + 1) * dim].copy_from_slice(out.features);
                Ok(())
            },
        )?;
        if let Some(skipped) = report.skipped.first() {
            return Err(Error::invalid_input(
                &skipped.path,
                format!(
                    "could not be read again for an online distortion ({}); restore the file or remove it and retrain",
                    skipped.reason
                ),
            ));
        }
        Ok(rows)
    }
}

fn evaluate_test(
    head: &HeadWeights,
    dataset: &Dataset,
    test: &SplitData,
    test_paths: Vec<String>,
    options: &RetrainOptions,
) -> Result<(Option<Evaluation>, Vec<String>)> {
    if test.is_empty() {
        return Ok((None, Vec::new()));
    }
    let indices: Vec<usize> = if options.test_batch_size < 0 {
        (0..test.len()).collect()
    } else {
        // retrain.py samples the test batch at random; a seeded stream keeps it repeatable.
        let mut rng = ChaCha8Rng::seed_from_u64(options.train.seed ^ 0x7e57);
        (0..options.test_batch_size as usize)
            .map(|_| rng.gen_range(0..test.len()))
            .collect()
    };
    let probs: Vec<Vec<f32>> = indices
        .iter()
        .map(|&i| head.probabilities(test.row(i)))
        .collect();
    let truth: Vec<usize> = indices.iter().map(|&i| test.labels[i]).collect();
    let eval = evaluate(&dataset.classes, &truth, &probs)?;
    Ok((
        Some(eval),
        indices.iter().map(|&i| test_paths[i].clone()).collect(),
    ))
}

/// Default feature-cache folder: `<graft home>/bottlenecks`.
pub fn default_bottleneck_dir() -> PathBuf {
    crate::home::graft_home().join("bottlenecks")
}

/// Checks a path given on the command line exists, naming it otherwise.
pub fn require_exists(path: &Path, what: &str) -> Result<()> {
    if path.exists() {
        Ok(())
    } else {
        Err(Error::invalid_input(path, format!("{what} does not exist")))
    }
}
