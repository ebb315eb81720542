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
use crate::finetune::train::{fine_tune, CutData, EpochEvent, FineTuneConfig};
use crate::finetune::{Cut, FineTune};
use crate::head::calibrate;
use crate::head::train::{score, CachedVariants, Originals, TrainFeatures, TrainResult};
use crate::head::{train_head, HeadWeights, SplitData, TrainConfig, TrainEvent};
use crate::image::distort::Distortions;
use crate::image::distort::View;
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
    /// Input size the backbone runs at (`--image-size`); `None`: its native size.
    pub image_size: Option<u32>,
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
    /// The `--unknown-below` the bundle answers with when none is given: a number, or
    /// `auto`, chosen after the features are in ([`crate::openset::auto_threshold`]).
    pub unknown_below: Option<crate::openset::UnknownBelow>,
    /// Fine-tune the top of the backbone after the head (`--fine-tune`).
    pub fine_tune: Option<FineTuneOptions>,
}

/// `--fine-tune N` and its companions.
#[derive(Clone, Debug)]
pub struct FineTuneOptions {
    pub train: FineTuneConfig,
    /// Augmented views per training image beside its centre view, cached at the cut.
    pub views: usize,
    /// How the augmented views are drawn (retrain.py's distortion flags).
    pub augment: Distortions,
}

impl FineTuneOptions {
    /// The augmentation of fine-tuning views when no distortion flag is given: mirror,
    /// crops down to about two thirds of the side, and brightness within 20%.
    pub const DEFAULT_AUGMENT: Distortions = Distortions {
        flip_left_right: true,
        random_crop: 20.0,
        random_scale: 30.0,
        random_brightness: 20.0,
        random_contrast: 0.0,
        random_saturation: 0.0,
    };
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
    /// Fine-tuning begins: `epochs` epochs.
    FineTuneStart {
        epochs: usize,
    },
    FineTuneEpoch(&'a EpochEvent),
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
    /// Time the frozen head trained; None where fine-tuning from a new head skipped it.
    pub head_seconds: Option<f64>,
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
    let size = options
        .image_size
        .unwrap_or(options.backbone.spec().preprocess.size);
    options.backbone.spec().preprocess_at(size)?;
    let dataset = options.source.load()?;
    dataset.require_trainable()?;
    check_outputs(options, &dataset.root)?;
    for warning in dataset.warnings() {
        on_event(RetrainEvent::Warning(warning));
    }
    for entry in &dataset.skipped {
        progress.message(&format!("skipped {entry}"));
    }
    if options.fine_tune.is_some()
        && options.backbone_run.precision == crate::engine::Precision::Int8
    {
        return Err(Error::Invalid(
            "--fine-tune trains the float network and --precision int8 quantizes only the \
             published backbone so far: leave out one of them"
                .into(),
        ));
    }
    let cut = match &options.fine_tune {
        Some(ft) => {
            let no_validation = !dataset.images.iter().any(|i| {
                which_split(
                    &i.relative,
                    options.validation_percentage,
                    options.testing_percentage,
                ) == Split::Validation
            });
            if no_validation {
                return Err(Error::Invalid(format!(
                    "--fine-tune keeps the epoch with the best validation accuracy, but no image \
                     of {} falls in the validation split (--validation-percentage {}): raise \
                     --validation-percentage or add images",
                    dataset.root.display(),
                    options.validation_percentage
                )));
            }
            ft.augment.check()?;
            Some(Cut::new(options.backbone, size, ft.train.blocks)?)
        }
        None => None,
    };
    let weights = crate::weights::ensure(options.backbone, progress)?;
    let backbone = crate::features::calibration::load_backbone(
        options.backbone,
        size,
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
    let features_note = format!(
        "{} from the cache, {} extracted",
        cached.hits, cached.extracted
    );
    let inputs = TrainInputs {
        dataset,
        features: cached.features,
        backbone: backbone.id,
        preprocess: backbone.preprocess,
        weights_sha256: backbone.weights_sha256.clone(),
        images: Some(ImageInputs {
            backbone: &backbone,
            cut,
            cache: &cache,
            paths,
            hashes: cached.hashes,
        }),
        skipped: cached.skipped,
        features_note,
    };
    train_on(options, inputs, run_started, progress, on_event)
}

/// Precomputed features to train from instead of images (`train --features`).
#[derive(Clone, Debug)]
pub struct FeatureSource {
    /// Parquet parts, as `graft extract --output x.parquet` or the Ray extractor write them.
    pub parts: Vec<PathBuf>,
    /// A labels CSV (`path,label`, paths as in the parts' `path` column); without one,
    /// each row's class is its path's folder, as when training from class folders.
    pub labels: Option<PathBuf>,
    /// The backbone asked for on the command line, if any: it must be the parts'.
    pub backbone: Option<BackboneId>,
}

/// [`retrain`] on precomputed features: the same labels, split, sample order and
/// training, so features of a folder give the head training on that folder gives. The
/// bundle records the parts' backbone and weights checksum. `options.source`,
/// `options.backbone` and `options.bottleneck_dir` are not used.
pub fn retrain_from_features(
    options: &RetrainOptions,
    source: &FeatureSource,
    progress: &dyn Progress,
    mut on_event: impl FnMut(RetrainEvent<'_>),
) -> Result<RetrainOutcome> {
    let run_started = std::time::Instant::now();
    options.distortions.check()?;
    if options.backbone_run.precision != crate::engine::Precision::Fp32 {
        return Err(Error::Invalid(
            "--features trains on the features the files hold, which are fp32: leave out \
             --precision"
                .into(),
        ));
    }
    if let Some(size) = options.image_size {
        return Err(Error::Invalid(format!(
            "--image-size {size} sets the size images are run at, but --features trains on \
             features already extracted (at the backbone's native size): leave out --image-size"
        )));
    }
    let parts = crate::features::parquet::read_parts(&source.parts)?;
    if let Some(asked) = source.backbone {
        if asked != parts.backbone {
            return Err(Error::invalid_input(
                &source.parts[0],
                format!(
                    "holds {} features, but --backbone {asked} was asked for; drop --backbone \
                     (the features decide it) or extract the features with {asked}",
                    parts.backbone
                ),
            ));
        }
    }
    // The first part names the source in messages and the report.
    let root = source.parts[0].clone();
    let n_rows = parts.rows.len();
    let mut rows = parts.rows;
    let mut dataset = match &source.labels {
        None => {
            let entries = rows
                .iter()
                .map(|r| crate::dataset::ImageEntry {
                    relative: r.path.clone(),
                    path: PathBuf::from(&r.path),
                })
                .collect();
            Dataset::labelled_by_folder(&root, entries)?
        }
        Some(csv) => Dataset::from_labels_csv(csv, Some(Path::new("")))?,
    };
    dataset.root = root;
    dataset.require_trainable()?;
    check_outputs(options, &dataset.root)?;
    let index: std::collections::HashMap<String, usize> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| (r.path.clone(), i))
        .collect();
    let mut features = Vec::with_capacity(dataset.images.len());
    let mut skipped = Vec::new();
    for image in &dataset.images {
        match index.get(&image.relative) {
            Some(&i) => features.push(Some(std::mem::take(&mut rows[i].features))),
            None => {
                let reason = format!(
                    "listed in the labels CSV but in none of the {} Parquet file(s); extract it \
                     or remove its row",
                    source.parts.len()
                );
                progress.message(&format!("skipped {}: {reason}", image.relative));
                skipped.push(Skipped {
                    path: image.path.clone(),
                    reason,
                });
                features.push(None);
            }
        }
    }
    drop(rows);
    for warning in dataset.warnings() {
        on_event(RetrainEvent::Warning(warning));
    }
    let inputs = TrainInputs {
        dataset,
        features,
        backbone: parts.backbone,
        preprocess: parts.backbone.spec().preprocess,
        weights_sha256: parts.weights_sha256,
        images: None,
        skipped,
        features_note: format!(
            "{n_rows} rows read from {} Parquet file(s)",
            source.parts.len()
        ),
    };
    train_on(options, inputs, run_started, progress, on_event)
}

/// What the head is trained on, however the features were found.
struct TrainInputs<'a> {
    dataset: Dataset,
    /// One entry per dataset image: `None` where it was skipped.
    features: Vec<Option<Vec<f32>>>,
    backbone: BackboneId,
    /// How the images became the backbone's input (its size is `--image-size`'s).
    preprocess: crate::backbone::Preprocess,
    weights_sha256: String,
    /// The images themselves, for distortions; `None` when training from precomputed
    /// features.
    images: Option<ImageInputs<'a>>,
    /// Images whose features could not be had.
    skipped: Vec<Skipped>,
    /// Where the features came from, for the report.
    features_note: String,
}

struct ImageInputs<'a> {
    backbone: &'a Backbone,
    /// Where the backbone is cut for `--fine-tune`.
    cut: Option<Cut>,
    cache: &'a FeatureCache,
    /// Path of each dataset image.
    paths: Vec<PathBuf>,
    /// Content hash of each dataset image (`None` where it could not be read).
    hashes: Vec<Option<[u8; 32]>>,
}

/// Splits, trains, evaluates and writes the bundle and its report.
fn train_on(
    options: &RetrainOptions,
    inputs: TrainInputs<'_>,
    run_started: std::time::Instant,
    progress: &dyn Progress,
    mut on_event: impl FnMut(RetrainEvent<'_>),
) -> Result<RetrainOutcome> {
    let TrainInputs {
        dataset,
        features: image_features,
        backbone,
        preprocess,
        weights_sha256,
        images,
        skipped: feature_skipped,
        features_note,
    } = inputs;
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
    let mut test_images = Vec::new();
    // Dataset index of each train and validation split row.
    let mut train_images = Vec::new();
    let mut validation_images = Vec::new();
    for (index, (image, features)) in dataset.images.iter().zip(&image_features).enumerate() {
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
            Split::Validation => {
                validation_images.push(index);
                1
            }
            Split::Test => {
                test_images.push(index);
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
    // What `--unknown-below auto` measured, for the manifest.
    let mut unknown_below_draws = None;
    let unknown_below = match options.unknown_below {
        None => None,
        Some(crate::openset::UnknownBelow::At(p)) => Some(p),
        Some(crate::openset::UnknownBelow::Auto) => {
            progress.message(
                "--unknown-below auto: playing out new products (heads trained with classes \
                 left out)",
            );
            let recipe = crate::openset::HeadRecipe {
                config: options.train.clone(),
                validation_pct: options.validation_percentage,
                testing_pct: options.testing_percentage,
            };
            let pool: Vec<usize> = (0..dataset.classes.len()).collect();
            let auto = crate::openset::auto_threshold(
                &splits,
                &dataset.classes,
                &pool,
                &recipe,
                options.train.seed,
            )?;
            progress.message(&format!(
                "--unknown-below auto: {:.4} (draws: {})",
                auto.threshold,
                auto.draws
                    .iter()
                    .map(|d| format!("{:.4}, AUROC {:.3}", d.threshold, d.auroc))
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
            unknown_below_draws = serde_json::to_value(&auto.draws).ok();
            Some(auto.threshold)
        }
    };
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
    let manifest_for = |head_metrics: serde_json::Map<String, serde_json::Value>,
                        temperature: f32| Manifest {
        format_version: FORMAT_VERSION,
        graft_version: env!("CARGO_PKG_VERSION").to_string(),
        backbone,
        weights_sha256: weights_sha256.clone(),
        preprocess,
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
            "random_contrast": options.distortions.random_contrast,
            "random_saturation": options.distortions.random_saturation,
            "distortion_mode": options.distortion_mode,
            "distorted_variants": options.distorted_variants,
            // Where `--precision int8` finds calibration images by default.
            "precision": images
                .as_ref()
                .map_or(crate::engine::Precision::Fp32, |i| i.backbone.precision())
                .name(),
            "image_dir": std::fs::canonicalize(&dataset.root).unwrap_or_else(|_| dataset.root.clone()),
            "unknown_below_auto": unknown_below_draws,
        }),
        split_sizes: split_sizes.clone(),
        metrics: head_metrics,
        class_paths: Some(dataset.class_paths.clone()),
        temperature,
        unknown_below,
        fine_tune: None,
    };

    // Only training images are ever distorted: validation and test use the originals.
    let mut variants_note = String::new();
    let train_paths: Vec<PathBuf> = train_images
        .iter()
        .map(|&i| dataset.images[i].path.clone())
        .collect();
    // Fine-tuning from a new head uses nothing of the frozen head: its training (and the
    // distorted whole-network features it reads) is skipped; only a warm start needs it.
    let frozen_head = options
        .fine_tune
        .as_ref()
        .is_none_or(|ft| ft.train.warm_start);
    let mut sources: Box<dyn TrainFeatures + '_> = if !frozen_head || options.distortions.is_none()
    {
        Box::new(Originals)
    } else {
        let Some(images) = &images else {
            return Err(Error::Invalid(
                "distortions need the images, not precomputed features: train from the \
                 image folder, or drop the distortion flags"
                    .into(),
            ));
        };
        let backbone = images.backbone;
        match options.distortion_mode {
            DistortionMode::Cached => {
                let variants = cached_variants(
                    options,
                    backbone,
                    images.cache,
                    &images.paths,
                    &train_images,
                    &images.hashes,
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
                    backbone,
                    paths: &train_paths,
                    distortions: options.distortions,
                    rng: ChaCha8Rng::seed_from_u64(options.train.seed ^ 0xd157_0127),
                    extract: options.extract,
                })
            }
        }
    };

    let started = std::time::Instant::now();
    let result = if let Some(ft) = options.fine_tune.as_ref().filter(|_| !frozen_head) {
        // The head fine-tuning starts from.
        TrainResult {
            head: crate::finetune::train::new_head(dim, dataset.classes.len(), ft.train.seed),
            history: Vec::new(),
        }
    } else {
        train_head(
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
                            if let (Some(a), Some(l)) =
                                (validation_accuracy, validation_cross_entropy)
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
                            manifest: manifest_for(serde_json::Map::new(), 1.0),
                            head: weights.clone(),
                            tuned: None,
                        };
                        bundle.save(&options.intermediate_dir.join(format!("step-{step}")))?;
                    }
                }
                on_event(RetrainEvent::Training(event));
                Ok(())
            },
        )?
    };
    let head_seconds = frozen_head.then_some(started.elapsed().as_secs_f64());
    if let Some((tw, vw)) = writers.as_mut() {
        tw.flush()?;
        vw.flush()?;
    }

    let mut head = result.head;
    let mut metrics = serde_json::Map::new();
    let all_validation: Vec<usize> = (0..validation.len()).collect();
    if frozen_head && !validation.is_empty() {
        let (acc, _) = score(&head, &validation, &all_validation);
        metrics.insert("validation_accuracy".into(), f64::from(acc).into());
    }
    let mut manifest = manifest_for(serde_json::Map::new(), 1.0);
    let mut validation = validation;
    let mut tuned = None;
    let mut test = test;
    let fine_tuning = match (&options.fine_tune, &images) {
        (
            Some(ft),
            Some(ImageInputs {
                backbone,
                cache,
                paths,
                hashes,
                cut: Some(cut),
            }),
        ) => Some((ft, *backbone, *cache, paths, hashes, cut)),
        _ => None,
    };
    if let Some((ft, backbone, cache, paths, hashes, cut)) = fine_tuning {
        let stage = FineTuneStage {
            options,
            ft,
            cut,
            backbone,
            cache,
            paths,
            hashes,
        };
        let done = stage.run(
            &head,
            (&train_images, &train),
            (&validation_images, &validation),
            writers.as_mut(),
            progress,
            &mut on_event,
        )?;
        curve = done.curve;
        head = done.tuned.head;
        metrics.insert(
            "validation_accuracy".into(),
            f64::from(done.tuned.best_validation_accuracy).into(),
        );
        // Named as the flags, so report.html lists them as it lists the others.
        let t = &ft.train;
        for (flag, value) in [
            ("fine_tune", serde_json::Value::from(t.blocks)),
            ("fine_tune_epochs", t.epochs.into()),
            ("fine_tune_views", ft.views.into()),
            ("fine_tune_learning_rate", t.backbone_learning_rate.into()),
            ("fine_tune_head_learning_rate", t.head_learning_rate.into()),
            (
                "fine_tune_schedule",
                serde_json::to_value(t.schedule).unwrap_or_default(),
            ),
            (
                "fine_tune_keep",
                serde_json::to_value(t.keep).unwrap_or_default(),
            ),
            ("fine_tune_batch_size", t.batch_size.into()),
            ("label_smoothing", t.label_smoothing.into()),
            ("dropout", t.dropout.into()),
        ] {
            manifest.training[flag] = value;
        }
        manifest.fine_tune = Some(done.record);
        let bundle = Bundle {
            manifest: manifest.clone(),
            head: head.clone(),
            tuned: Some(done.tuned.tensors),
        };
        // The test split runs through the network the bundle rebuilds, as predict will.
        let tuned_backbone = bundle.backbone(crate::engine::EngineChoice::Auto, progress)?;
        let test_files: Vec<PathBuf> = test_images
            .iter()
            .map(|&i| dataset.images[i].path.clone())
            .collect();
        let features = cached_features(
            &tuned_backbone,
            cache,
            &test_files,
            options.extract,
            progress,
        )?;
        // Calibration is fitted on the logits of the network the bundle keeps, so the
        // validation split runs through it too.
        let validation_files: Vec<PathBuf> = validation_images
            .iter()
            .map(|&i| dataset.images[i].path.clone())
            .collect();
        let tuned_validation = cached_features(
            &tuned_backbone,
            cache,
            &validation_files,
            options.extract,
            progress,
        )?;
        validation = SplitData {
            dim,
            ..Default::default()
        };
        for (image, f) in validation_images.iter().zip(tuned_validation.features) {
            if let Some(f) = f {
                validation.push(&f, dataset.images[*image].label);
            }
        }
        test = SplitData {
            dim,
            ..Default::default()
        };
        let mut kept = Vec::new();
        for ((image, f), path) in test_images.iter().zip(features.features).zip(test_paths) {
            if let Some(f) = f {
                test.push(&f, dataset.images[*image].label);
                kept.push(path);
            }
        }
        test_paths = kept;
        tuned = bundle.tuned;
    }
    // Calibration is fitted on the validation split and judged on the test split, which
    // the fit never saw.
    let validation_logits: Vec<Vec<f32>> = (0..validation.len())
        .map(|i| head.logits(validation.row(i)))
        .collect();
    let temperature = calibrate::fit_temperature(&validation_logits, &validation.labels);
    manifest.temperature = temperature;
    metrics.insert("temperature".into(), f64::from(temperature).into());
    let (test_eval, test_paths) = evaluate_test(
        &head,
        temperature,
        &dataset,
        &test,
        test_paths,
        options,
        &mut metrics,
    )?;
    if let Some(e) = &test_eval {
        metrics.insert("test_accuracy".into(), e.top1_accuracy.into());
        metrics.insert("test_top5_accuracy".into(), e.top5_accuracy.into());
        metrics.insert("test_images".into(), e.samples.into());
    }
    manifest.metrics = metrics;
    let bundle = Bundle {
        manifest,
        head,
        tuned,
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
        .chain(feature_skipped)
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
    let features = format!("{features_note}{variants_note}");
    write_html_report(options, &outcome, &curve, features, run_started)?;
    Ok(outcome)
}

/// What fine-tuning reads: the run's options, its cut, and the whole-backbone state it
/// shares with head training (cache, paths, content hashes).
struct FineTuneStage<'a> {
    options: &'a RetrainOptions,
    ft: &'a FineTuneOptions,
    cut: &'a Cut,
    backbone: &'a Backbone,
    cache: &'a FeatureCache,
    paths: &'a [PathBuf],
    hashes: &'a [Option<[u8; 32]>],
}

struct FineTuneDone {
    tuned: crate::finetune::train::FineTuned,
    record: FineTune,
    curve: Vec<CurvePoint>,
}

impl FineTuneStage<'_> {
    /// Activations at the cut for the centre and augmented views of the training images
    /// and the centre views of the validation images (from the cache where it has them),
    /// then the joint training of the top and the head, starting from `head` (frozen or new).
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        head: &HeadWeights,
        train: (&[usize], &SplitData),
        validation: (&[usize], &SplitData),
        mut writers: Option<&mut (SummaryWriter, SummaryWriter)>,
        progress: &dyn Progress,
        on_event: &mut impl FnMut(RetrainEvent<'_>),
    ) -> Result<FineTuneDone> {
        let (ft, cut) = (self.ft, self.cut);
        let loaded = crate::weights::ensure(self.options.backbone, progress)?;
        let lower = Backbone::from_graph(
            self.options.backbone,
            &cut.lower(),
            &loaded.tensors,
            (loaded.source_sha256.clone(), cut.variant()),
            &loaded.path.display().to_string(),
            crate::engine::EngineChoice::Auto,
            progress,
        )?;
        let size = self.backbone.preprocess.size;
        let mut requests = Vec::new();
        // (0 train / 1 validation, row) of each request.
        let mut owners = Vec::new();
        for (split, (images, _)) in [train, validation].into_iter().enumerate() {
            for (row, &image) in images.iter().enumerate() {
                let Some(hash) = self.hashes[image] else {
                    continue;
                };
                requests.push(ViewRequest {
                    image,
                    hash,
                    view: View::ORIGINAL,
                    tag: String::new(),
                });
                owners.push((split, row));
                // Validation and test views are never augmented.
                for k in (0..ft.views).filter(|_| split == 0) {
                    requests.push(ViewRequest {
                        image,
                        hash,
                        view: ft.augment.variant(size, &hash, k),
                        tag: ft.augment.variant_tag(k),
                    });
                    owners.push((split, row));
                }
            }
        }
        let views = cached_views(
            &lower,
            self.cache,
            self.paths,
            &requests,
            self.options.extract,
            "activations at the cut",
            progress,
            CutData::keep,
        )?;
        on_event(RetrainEvent::Features {
            what: "activations at the cut",
            hits: views.hits,
            extracted: views.extracted,
            corrupt: views.corrupt,
            seconds: views.extraction_seconds,
        });
        let shape = match cut.graph.shape(cut.at) {
            crate::backbone::graph::Shape::Map {
                channels,
                height,
                width,
            } => [*channels, *height, *width],
            other => {
                return Err(Error::Engine(format!(
                    "the fine-tuning cut is not a feature map ({other:?})"
                )))
            }
        };
        let mut per_row = [
            vec![Vec::new(); train.1.len()],
            vec![Vec::new(); validation.1.len()],
        ];
        let len = shape.iter().product::<usize>();
        for (&(split, row), f) in owners.iter().zip(views.features) {
            if let Some(f) = f {
                if f.len() != len {
                    return Err(Error::Engine(format!(
                        "{} holds an activation at the cut of {} values where {shape:?} has \
                         {len}; clear it (graft cache clear --bottleneck-dir {}) and train \
                         again",
                        self.cache.path().display(),
                        f.len(),
                        self.cache
                            .path()
                            .parent()
                            .unwrap_or(Path::new("."))
                            .display()
                    )));
                }
                per_row[split][row].push(f);
            }
        }
        let [train_views, validation_views] = per_row;
        // A row whose image could not be read again has no views: it sits this out.
        let split_data = |views: Vec<Vec<Vec<half::f16>>>, labels: &[usize]| {
            let (views, labels): (Vec<_>, Vec<_>) = views
                .into_iter()
                .zip(labels.iter().copied())
                .filter(|(v, _)| !v.is_empty())
                .unzip();
            CutData {
                shape,
                views,
                labels,
            }
        };
        let train_cut = split_data(train_views, &train.1.labels);
        let validation_cut = split_data(validation_views, &validation.1.labels);
        drop(lower);

        on_event(RetrainEvent::FineTuneStart {
            epochs: ft.train.epochs,
        });
        let mut curve = Vec::new();
        let tuned = fine_tune(
            &ft.train,
            cut,
            &loaded.tensors,
            head,
            &train_cut,
            &validation_cut,
            |event| {
                if let Some((tw, vw)) = writers.as_deref_mut() {
                    let s = event.epoch as i64;
                    tw.scalar("fine_tune/cross_entropy", s, event.train_loss)?;
                    tw.scalar("fine_tune/accuracy", s, event.train_accuracy)?;
                    vw.scalar("fine_tune/accuracy", s, event.validation_accuracy)?;
                    vw.scalar("fine_tune/cross_entropy", s, event.validation_cross_entropy)?;
                    tw.flush()?;
                    vw.flush()?;
                }
                curve.push(CurvePoint {
                    step: event.epoch as u64,
                    train_accuracy: event.train_accuracy,
                    train_cross_entropy: event.train_loss,
                    validation_accuracy: Some(event.validation_accuracy),
                    validation_cross_entropy: Some(event.validation_cross_entropy),
                });
                on_event(RetrainEvent::FineTuneEpoch(event));
                Ok(())
            },
        )?;
        let record = FineTune {
            blocks: cut.blocks,
            base_weights_sha256: loaded.source_sha256.clone(),
            tensors_sha256: crate::finetune::tensors_sha256(&crate::weights::safetensors_bytes(
                Path::new("backbone.safetensors"),
                &tuned.tensors,
            )?),
            best_epoch: tuned.best_epoch,
            epoch_seconds: tuned.history.iter().map(|e| e.seconds).collect(),
            extract_seconds: views.extraction_seconds,
        };
        Ok(FineTuneDone {
            tuned,
            record,
            curve,
        })
    }
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
    if let Some(seconds) = outcome.head_seconds {
        summary.push(("head training time".to_string(), format!("{seconds:.1} s")));
    }
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
            levels: Vec::new(),
            calibration: None,
            rejection: None,
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
    let size = backbone.preprocess.size;
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
        |f| f,
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
        let size = self.backbone.preprocess.size;
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

/// The test split's evaluation at the fitted temperature, recording in `metrics` the
/// expected calibration error there before (`T = 1`) and after calibration.
fn evaluate_test(
    head: &HeadWeights,
    temperature: f32,
    dataset: &Dataset,
    test: &SplitData,
    test_paths: Vec<String>,
    options: &RetrainOptions,
    metrics: &mut serde_json::Map<String, serde_json::Value>,
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
    let logits: Vec<Vec<f32>> = indices.iter().map(|&i| head.logits(test.row(i))).collect();
    let raw: Vec<Vec<f32>> = logits
        .iter()
        .map(|l| calibrate::softmax_at(l, 1.0))
        .collect();
    let probs: Vec<Vec<f32>> = logits
        .iter()
        .map(|l| calibrate::softmax_at(l, temperature))
        .collect();
    let truth: Vec<usize> = indices.iter().map(|&i| test.labels[i]).collect();
    let bins = calibrate::ECE_BINS;
    metrics.insert(
        "test_ece_uncalibrated".into(),
        calibrate::ece(&raw, &truth, bins).into(),
    );
    metrics.insert(
        "test_ece_calibrated".into(),
        calibrate::ece(&probs, &truth, bins).into(),
    );
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
