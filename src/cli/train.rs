//! `graft train IMAGE_DIR`: retrain.py's job, with its flags and defaults.

use std::path::PathBuf;

use graft::backbone::BackboneId;
use graft::features::ExtractOptions;
use graft::finetune::train::{FineTuneConfig, Keep, Schedule};
use graft::finetune::Cut;
use graft::head::{Optimizer, TrainConfig, TrainEvent};
use graft::image::distort::Distortions;
use graft::progress::Progress;
use graft::retrain::{
    default_bottleneck_dir, retrain, retrain_from_features, DistortionMode, FeatureSource,
    FineTuneOptions, RetrainEvent, RetrainOptions,
};

use super::render::Bar;
use super::source::SourceArgs;
use super::values;
use super::Outcome;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    source: SourceArgs,
    /// Train from precomputed features instead of images: Parquet files written by
    /// `graft extract --output x.parquet` (or the Ray extractor), as paths or quoted glob
    /// patterns ('part-*.parquet'). Labels come from the paths' class folders, or from
    /// --labels (path,label); the split and the head are those training on the folder gives.
    #[arg(long, num_args = 1.., value_name = "PARQUET")]
    features: Vec<String>,
    /// Backbone network (default: efficientnet-lite2; with --features, the one the
    /// features were extracted with).
    #[arg(long)]
    backbone: Option<String>,
    /// Run the backbone on S x S pixels instead of its native size (Lite0 224, Lite1 240,
    /// Lite2 260, Inception V3 299), for training and for every command that runs the
    /// model (the model records it), 96 to 640; features and activations are cached per
    /// size. On the grocery photos, fine-tuning Lite2 at 300 scored as at 260 over three
    /// seeds (84.0% against 83.7% on val/, 84.6% against 84.8% with --tta 10) in 1.34
    /// times the time, and a frozen head loses 1-2 points above 260 (docs/fine-tuning.md).
    #[arg(long, value_name = "S")]
    image_size: Option<u32>,
    /// Where to write the trained model (a folder).
    #[arg(long, short, default_value = "graft-model")]
    output: PathBuf,
    /// Feature cache folder (default: <graft home>/bottlenecks).
    #[arg(long)]
    bottleneck_dir: Option<PathBuf>,
    #[arg(long, default_value_t = 4000, value_parser = values::count())]
    how_many_training_steps: usize,
    /// Step size. retrain.py uses 0.01 with plain gradient descent; graft's default is
    /// Adam at 0.001, which reaches a tuned logistic regression's accuracy (docs/accuracy.md).
    #[arg(long, default_value_t = 0.001, value_parser = values::learning_rate, allow_hyphen_values = true)]
    learning_rate: f64,
    #[arg(long, default_value_t = 100, value_parser = values::count())]
    train_batch_size: usize,
    #[arg(long, default_value_t = 10, value_parser = values::count())]
    eval_step_interval: usize,
    /// Validation images per evaluation; -1 for the whole validation split.
    #[arg(long, default_value_t = 100, allow_negative_numbers = true, value_parser = values::count_or_all)]
    validation_batch_size: i64,
    /// Test images for the final accuracy; -1 for the whole test split.
    #[arg(long, default_value_t = -1, allow_negative_numbers = true, value_parser = values::count_or_all)]
    test_batch_size: i64,
    /// Percent of the images held out for validation (0 to 100; with --testing-percentage
    /// below 100 in all).
    #[arg(long, default_value_t = 10.0, value_parser = values::percentage, allow_hyphen_values = true)]
    validation_percentage: f64,
    /// Percent of the images held out for the final test (0 to 100).
    #[arg(long, default_value_t = 10.0, value_parser = values::percentage, allow_hyphen_values = true)]
    testing_percentage: f64,
    /// `sgd` is retrain.py's optimizer (use it with --learning-rate 0.01 for its behaviour).
    #[arg(long, value_enum, default_value_t = Optimizer::Adam)]
    optimizer: Optimizer,
    /// L2 penalty on the head's weights.
    #[arg(long, default_value_t = 0.0, value_parser = values::penalty, allow_hyphen_values = true)]
    weight_decay: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// List the test images the model gets wrong.
    #[arg(long)]
    print_misclassified_test_images: bool,
    /// Write TensorBoard summaries (train/ and validation/) here.
    #[arg(long)]
    summaries_dir: Option<PathBuf>,
    /// Save an intermediate model every N steps (0: never).
    #[arg(long, default_value_t = 0)]
    intermediate_store_frequency: usize,
    /// Where intermediate models go (default: <output>-intermediate).
    #[arg(long)]
    intermediate_output_dir: Option<PathBuf>,
    /// Images per backbone forward pass (default: the fastest measured for the backbone
    /// on its engine; 1 for the EfficientNet-Lite models).
    #[arg(long, value_parser = values::batch_size())]
    batch_size: Option<usize>,
    /// Distortion: mirror training images left to right at random (retrain.py's
    /// --flip_left_right).
    #[arg(long)]
    flip_left_right: bool,
    /// Distortion: a random crop that leaves out up to this percentage of the view, as
    /// retrain.py's --random_crop (the view is enlarged by 1 + P/100 and cut back).
    #[arg(long, default_value_t = 0.0, value_name = "PERCENT", value_parser = values::percentage_f32, allow_hyphen_values = true)]
    random_crop: f32,
    /// Distortion: enlarge the view by a random factor up to 1 + P/100 before cutting
    /// (retrain.py's --random_scale; combines with --random-crop into one crop).
    #[arg(long, default_value_t = 0.0, value_name = "PERCENT", value_parser = values::percentage_f32, allow_hyphen_values = true)]
    random_scale: f32,
    /// Distortion: multiply pixel values by a random factor in [1 - P/100, 1 + P/100)
    /// (retrain.py's --random_brightness).
    #[arg(long, default_value_t = 0.0, value_name = "PERCENT", value_parser = values::percentage_f32, allow_hyphen_values = true)]
    random_brightness: f32,
    /// Distortion: colour jitter of the contrast, blending with the mean grey by a random
    /// factor in [1 - P/100, 1 + P/100) (torchvision's ColorJitter; not in retrain.py).
    #[arg(long, default_value_t = 0.0, value_name = "PERCENT", value_parser = values::percentage_f32, allow_hyphen_values = true)]
    random_contrast: f32,
    /// Distortion: colour jitter of the saturation, blending with each pixel's grey by a
    /// random factor in [1 - P/100, 1 + P/100) (torchvision's ColorJitter).
    #[arg(long, default_value_t = 0.0, value_name = "PERCENT", value_parser = values::percentage_f32, allow_hyphen_values = true)]
    random_saturation: f32,
    /// cached: K distorted variants per training image, extracted once into the feature
    /// cache; online: retrain.py's fresh distortion per sample per step (hours on a CPU).
    #[arg(long, value_enum, default_value_t = DistortionMode::Cached)]
    distortion_mode: DistortionMode,
    /// Distorted variants per training image in cached mode. 16 matched online mode's
    /// validation accuracy at equal steps (1000) on the grocery photos, with a third of the
    /// forward passes of those 1000 online steps (docs/accuracy.md, "Distortions").
    #[arg(long, default_value_t = 16, value_name = "K")]
    distorted_variants: usize,
    /// Store a default for predict / evaluate / serve: answer `unknown` when the
    /// calibrated top score is below P (between 0 and 1; default: always answer). `auto`
    /// picks P from the training photos: heads trained with an eighth of the classes
    /// left out, P where their photos and the known validation photos separate best
    /// (docs/taxonomy.md; on the grocery photos it refuses most photos of unseen
    /// products, and a third to half of the known ones from other shopping sessions).
    #[arg(long, value_name = "P|auto", value_parser = values::unknown_below, allow_hyphen_values = true)]
    unknown_below: Option<graft::openset::UnknownBelow>,
    /// Fine-tune the top N blocks of the backbone together with a new head (the frozen
    /// head trains first only for --fine-tune-warm-start). For the EfficientNet-Lite
    /// backbones N counts MBConv blocks from the end, and the 1x1 head convolution always
    /// trains with them: Lite0 has 16 blocks (N at most 16), Lite1 and
    /// Lite2 have 21 (at most 21). On the grocery photos (2140 training images, 2 cores,
    /// Lite2, 4 views, 7 epochs), N = 6 took 13 min 39 s from an empty cache on an
    /// AVX2-only CPU (features 70 s, activations at the cut 216 s, epochs 71-77 s each),
    /// 4 min 58 s on an AVX-512 one (epochs 26-32 s), 83.67% on val/ over 3 seeds; N = 10
    /// took 6 min 33 s on the AVX-512 CPU (epochs 45-67 s), 84.46% over 3 seeds, 85.14%
    /// with --testing-percentage 0 (docs/fine-tuning.md).
    /// Inception V3 cannot be fine-tuned yet.
    #[arg(long, value_name = "N", value_parser = values::count())]
    fine_tune: Option<usize>,
    /// Fine-tuning epochs (each: every training image once, in one of its cached views);
    /// the epoch with the best validation accuracy is kept.
    #[arg(long, default_value_t = 7, value_parser = values::count())]
    fine_tune_epochs: usize,
    /// Augmented views per training image beside its centre view, computed once and
    /// cached at the cut (drawn with the distortion flags; without any, a mirror, a random
    /// crop and brightness change).
    #[arg(long, default_value_t = 4, value_name = "K")]
    fine_tune_views: usize,
    /// Peak learning rate of the backbone blocks (AdamW; see --fine-tune-schedule).
    #[arg(long, default_value_t = 1e-4, value_parser = values::learning_rate, allow_hyphen_values = true)]
    fine_tune_learning_rate: f64,
    /// Peak learning rate of the head while fine-tuning.
    #[arg(long, default_value_t = 1e-3, value_parser = values::learning_rate, allow_hyphen_values = true)]
    fine_tune_head_learning_rate: f64,
    /// The learning-rate schedule of fine-tuning: a linear warm-up over the first tenth of
    /// the steps then a cosine to zero, or the peak rates throughout.
    #[arg(long, value_enum, default_value_t = Schedule::Cosine)]
    fine_tune_schedule: Schedule,
    /// Start fine-tuning from the frozen head instead of a new one. Off by default:
    /// on the grocery photos it scored 80.07% on val/ against 84.80% from a new head
    /// (Lite2, --fine-tune 6, seed 0; docs/fine-tuning.md).
    #[arg(long)]
    fine_tune_warm_start: bool,
    /// The weights fine-tuning keeps: the epoch with the best validation accuracy, or the
    /// mean of the weights after each epoch of the second half (stochastic weight
    /// averaging). On the grocery photos (Lite2, --fine-tune 10 --testing-percentage 0, 3
    /// seeds) the mean scored 85.48% on val/ against 85.14% for the best epoch, 86.60%
    /// against 85.81% with --tta 10 (docs/fine-tuning.md).
    #[arg(long, value_enum, default_value_t = Keep::Best)]
    fine_tune_keep: Keep,
    /// Images per fine-tuning step.
    #[arg(long, default_value_t = 32, value_parser = values::count())]
    fine_tune_batch_size: usize,
    /// Label smoothing of the fine-tuning loss (make_image_classifier's default, 0.1).
    #[arg(long, default_value_t = 0.1, value_parser = values::fraction, allow_hyphen_values = true)]
    label_smoothing: f64,
    /// Dropout before the head while fine-tuning.
    #[arg(long, default_value_t = 0.2, value_parser = values::fraction, allow_hyphen_values = true)]
    dropout: f64,
    #[command(flatten)]
    precision: super::precision::PrecisionArgs,
}

/// `--features`, its patterns expanded, after refusing the flags that need images.
fn feature_source(args: &Args) -> anyhow::Result<Option<FeatureSource>> {
    if args.features.is_empty() {
        return Ok(None);
    }
    let needs_images = [
        (args.source.image_dir().is_some(), "an image folder"),
        (args.source.images().is_some(), "--images"),
        (args.flip_left_right, "--flip-left-right"),
        (args.random_crop > 0.0, "--random-crop"),
        (args.random_scale > 0.0, "--random-scale"),
        (args.random_brightness > 0.0, "--random-brightness"),
        (args.random_contrast > 0.0, "--random-contrast"),
        (args.random_saturation > 0.0, "--random-saturation"),
        (args.batch_size.is_some(), "--batch-size"),
    ];
    for (given, what) in needs_images {
        if given {
            values::refuse(format!(
                "--features trains from precomputed features, so {what} cannot be used with \
                 it (distortions and the backbone's batches need the images): drop {what}, or \
                 train from the image folder instead of --features"
            ));
        }
    }
    let mut parts: Vec<PathBuf> = Vec::new();
    for pattern in &args.features {
        if pattern.contains(['*', '?', '[']) {
            let matches = glob::glob(pattern).map_err(|e| {
                anyhow::anyhow!("--features {pattern:?} is not a valid pattern: {e}")
            })?;
            let mut found: Vec<PathBuf> = Vec::new();
            for m in matches {
                found.push(m.map_err(|e| anyhow::anyhow!("--features {pattern:?}: {e}"))?);
            }
            anyhow::ensure!(
                !found.is_empty(),
                "--features {pattern:?} matches no file; check the pattern and the folder"
            );
            found.sort();
            parts.extend(found);
        } else {
            graft::retrain::require_exists(std::path::Path::new(pattern), "this --features file")?;
            parts.push(PathBuf::from(pattern));
        }
    }
    // A part named twice (a path and a pattern) is one part, not a duplicate of itself.
    let mut seen = std::collections::HashSet::new();
    parts.retain(|p| seen.insert(graft::output::resolve(p)));
    let backbone = match &args.backbone {
        Some(name) => Some(name.parse()?),
        None => None,
    };
    Ok(Some(FeatureSource {
        parts,
        labels: args.source.labels().cloned(),
        backbone,
    }))
}

fn percent(v: f32) -> String {
    format!("{:.1}%", v * 100.0)
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    if args.validation_percentage + args.testing_percentage >= 100.0 {
        values::refuse(format!(
            "--validation-percentage {} and --testing-percentage {} leave no images to train on; \
             keep their sum below 100",
            args.validation_percentage, args.testing_percentage
        ));
    }
    let features = feature_source(&args)?;
    let source = match &features {
        Some(_) => graft::retrain::ImageSource::Folders(PathBuf::new()),
        None => args.source.source()?,
    };
    let backbone: BackboneId = match &args.backbone {
        Some(name) => name.parse()?,
        None => features
            .as_ref()
            .and_then(|f| f.backbone)
            .unwrap_or(BackboneId::DEFAULT),
    };
    if let Some(size) = args.image_size {
        if features.is_some() {
            values::refuse(format!(
                "--image-size {size} sets the size images are run at, and --features trains on \
                 features already extracted at the backbone's native size: leave out --image-size"
            ));
        }
        if let Err(e) = backbone.spec().preprocess_at(size) {
            values::refuse(e.to_string());
        }
    }
    let fine_tune = match args.fine_tune {
        None => None,
        Some(_) if features.is_some() => values::refuse(
            "--fine-tune trains the backbone on the images, and --features gives none: train \
             from the image folder to fine-tune, or leave out --fine-tune"
                .to_string(),
        ),
        Some(blocks) => {
            if args.distortion_mode == DistortionMode::Online {
                values::refuse(
                    "--fine-tune trains on views cached at the cut and cannot distort online: \
                     leave out --distortion-mode online (its cached views are drawn with the \
                     distortion flags)"
                        .to_string(),
                );
            }
            let size = args.image_size.unwrap_or(backbone.spec().preprocess.size);
            if let Err(e) = Cut::new(backbone, size, blocks) {
                values::refuse(e.to_string());
            }
            if args.dropout >= 1.0 {
                values::refuse(format!(
                    "--dropout {} drops every feature; give a value below 1",
                    args.dropout
                ));
            }
            let distortions = Distortions {
                flip_left_right: args.flip_left_right,
                random_crop: args.random_crop,
                random_scale: args.random_scale,
                random_brightness: args.random_brightness,
                random_contrast: args.random_contrast,
                random_saturation: args.random_saturation,
            };
            Some(FineTuneOptions {
                train: FineTuneConfig {
                    blocks,
                    epochs: args.fine_tune_epochs,
                    batch_size: args.fine_tune_batch_size,
                    backbone_learning_rate: args.fine_tune_learning_rate,
                    head_learning_rate: args.fine_tune_head_learning_rate,
                    weight_decay: FineTuneConfig::DEFAULT_WEIGHT_DECAY,
                    warmup: FineTuneConfig::DEFAULT_WARMUP,
                    schedule: args.fine_tune_schedule,
                    dropout: args.dropout,
                    label_smoothing: args.label_smoothing,
                    seed: args.seed,
                    warm_start: args.fine_tune_warm_start,
                    keep: args.fine_tune_keep,
                },
                views: args.fine_tune_views,
                augment: if distortions.is_none() {
                    FineTuneOptions::DEFAULT_AUGMENT
                } else {
                    distortions
                },
            })
        }
    };
    let intermediate_dir = args.intermediate_output_dir.clone().unwrap_or_else(|| {
        let mut name = args.output.file_name().unwrap_or_default().to_os_string();
        name.push("-intermediate");
        args.output.with_file_name(name)
    });
    let options = RetrainOptions {
        source,
        backbone,
        image_size: args.image_size,
        bottleneck_dir: args
            .bottleneck_dir
            .clone()
            .unwrap_or_else(default_bottleneck_dir),
        validation_percentage: args.validation_percentage,
        testing_percentage: args.testing_percentage,
        train: TrainConfig {
            steps: args.how_many_training_steps,
            learning_rate: args.learning_rate,
            train_batch_size: args.train_batch_size,
            eval_step_interval: args.eval_step_interval,
            validation_batch_size: args.validation_batch_size,
            optimizer: args.optimizer,
            weight_decay: args.weight_decay,
            seed: args.seed,
        },
        test_batch_size: args.test_batch_size,
        extract: ExtractOptions {
            batch_size: args.batch_size,
            ..ExtractOptions::default()
        },
        summaries_dir: args.summaries_dir.clone(),
        output: args.output.clone(),
        intermediate_store_frequency: args.intermediate_store_frequency,
        backbone_run: args.precision.options(graft::engine::EngineChoice::Auto),
        intermediate_dir,
        distortions: Distortions {
            flip_left_right: args.flip_left_right,
            random_crop: args.random_crop,
            random_scale: args.random_scale,
            random_brightness: args.random_brightness,
            random_contrast: args.random_contrast,
            random_saturation: args.random_saturation,
        },
        distortion_mode: args.distortion_mode,
        distorted_variants: args.distorted_variants,
        unknown_below: args.unknown_below,
        fine_tune,
    };

    let bar = Bar::new();
    let mut training_started = false;
    let mut last_step = 0usize;
    let on_event = |event: RetrainEvent<'_>| match event {
        RetrainEvent::Warning(w) => bar.message(&format!("warning: {w}")),
        RetrainEvent::Features {
            what,
            hits,
            extracted,
            corrupt,
            seconds,
        } => {
            let rate = if seconds > 0.0 {
                format!(" ({:.2} images/s)", extracted as f64 / seconds)
            } else {
                String::new()
            };
            let corrupt = if corrupt > 0 {
                format!(", {corrupt} corrupt entries recomputed")
            } else {
                String::new()
            };
            bar.message(&format!(
                "{what}: {hits} from cache, {extracted} extracted{rate}{corrupt}"
            ));
        }
        RetrainEvent::Training(TrainEvent::Evaluation {
            step,
            train_accuracy,
            cross_entropy,
            validation_accuracy,
            ..
        }) => {
            if !training_started {
                bar.begin("training", options.train.steps as u64);
                training_started = true;
            }
            let validation = validation_accuracy
                .map(percent)
                .unwrap_or_else(|| "n/a".into());
            bar.message(&format!(
                "step {step}: train accuracy = {}, cross entropy = {cross_entropy:.4}, validation accuracy = {validation}",
                percent(*train_accuracy)
            ));
            bar.advance(step.saturating_sub(last_step) as u64);
            last_step = *step;
        }
        RetrainEvent::FineTuneStart { epochs } => {
            bar.finish();
            bar.begin("fine-tuning", epochs as u64);
        }
        RetrainEvent::FineTuneEpoch(e) => {
            bar.message(&format!(
                "fine-tune epoch {}/{}: train loss = {:.4}, train accuracy = {}, validation accuracy = {} ({:.1}s)",
                e.epoch,
                e.epochs,
                e.train_loss,
                percent(e.train_accuracy),
                percent(e.validation_accuracy),
                e.seconds
            ));
            bar.advance(1);
        }
        RetrainEvent::Training(TrainEvent::Intermediate { step }) => {
            bar.message(&format!("step {step}: saved an intermediate model"));
        }
    };
    let outcome = match &features {
        Some(features) => retrain_from_features(&options, features, &bar, on_event)?,
        None => retrain(&options, &bar, on_event)?,
    };
    bar.finish();

    let sizes = &outcome.split_sizes;
    let head = match outcome.head_seconds {
        Some(seconds) => format!("; head trained in {seconds:.1}s"),
        None => String::new(),
    };
    println!(
        "{} classes; images: {} train, {} validation, {} test{head}",
        outcome.dataset.classes.len(),
        sizes.train,
        sizes.validation,
        sizes.test,
    );
    match &outcome.test {
        Some(test) => {
            println!(
                "Final test accuracy = {:.1}% (N={})",
                test.top1_accuracy * 100.0,
                test.samples
            );
            if args.print_misclassified_test_images {
                println!("=== MISCLASSIFIED TEST IMAGES ===");
                for m in &test.misclassified {
                    println!(
                        "{:>60}  true {}  predicted {} ({:.2})",
                        outcome.test_paths[m.index],
                        test.labels[m.truth],
                        test.labels[m.predicted],
                        m.predicted_probability
                    );
                }
            }
        }
        None => println!("no test images (raise --testing-percentage to measure test accuracy)"),
    }
    if let Some(ft) = &outcome.bundle.manifest.fine_tune {
        let total: f64 = ft.epoch_seconds.iter().sum();
        let averaged = args.fine_tune_keep == Keep::Average;
        let best = match ft.best_epoch {
            0 => "none beat the frozen model's validation accuracy; kept the frozen weights"
                .to_string(),
            n if averaged => format!("kept the mean of epochs {}-{n}", Keep::first_averaged(n)),
            n => format!("kept epoch {n}"),
        };
        println!(
            "fine-tuned the top {} blocks: activations at the cut computed in {:.1}s, {} epochs in {total:.1}s; {best}",
            ft.blocks,
            ft.extract_seconds,
            ft.epoch_seconds.len()
        );
    }
    println!(
        "model written to {}; report: {}",
        args.output.display(),
        args.output.join("report.html").display()
    );
    Ok(match outcome.skipped.len() {
        0 => Outcome::Done,
        n => Outcome::Skipped(n as u64),
    })
}
