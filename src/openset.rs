//! Answering "unknown": what refusing low-confidence photos costs and buys
//! (coverage, accuracy of what is answered, the risk-coverage curve), how well a score
//! separates photos of classes the model knows from photos of classes it never saw
//! (AUROC), the rejection scores compared for that, and the experiment that measures
//! it honestly: heads trained with some classes held out, scored on photos of those.

use std::path::PathBuf;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::dataset::classes::Dataset;
use crate::dataset::split::{which_split, Split};
use crate::error::{Error, Result};
use crate::features::cache::FeatureCache;
use crate::features::cached::cached_features;
use crate::features::ExtractOptions;
use crate::head::train::Originals;
use crate::head::{train_head, HeadWeights, Optimizer, SplitData, TrainConfig};
use crate::predict::Predictor;
use crate::progress::Progress;
use crate::retrain::ImageSource;

/// The thresholds `evaluate` tabulates besides the one asked for.
pub const THRESHOLDS: [f32; 9] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9];

/// What answering `unknown` below a threshold does on the evaluated photos.
#[derive(Debug, Clone, Serialize)]
pub struct Rejection {
    /// The threshold in force, if any.
    pub unknown_below: Option<f32>,
    /// Coverage and accuracy of the answered at that threshold.
    pub at_chosen: Option<AtThreshold>,
    /// The same at [`THRESHOLDS`].
    pub table: Vec<AtThreshold>,
    pub risk_coverage: Vec<RiskPoint>,
}

/// Answering only the photos whose top score is at least `threshold`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AtThreshold {
    pub threshold: f32,
    /// Photos answered.
    pub answered: usize,
    /// `answered / photos` (1 when there are none).
    pub coverage: f64,
    /// Of the answered, the fraction answered right (1 when none is answered: no
    /// mistake was made).
    pub answered_accuracy: f64,
}

/// Coverage and accuracy of what is answered at `threshold`; `confidence[i]` is photo
/// `i`'s calibrated top score and `correct[i]` whether its top label is right.
pub fn at_threshold(confidence: &[f32], correct: &[bool], threshold: f32) -> AtThreshold {
    let answered: Vec<bool> = confidence
        .iter()
        .zip(correct)
        .filter(|(&c, _)| c >= threshold)
        .map(|(_, &right)| right)
        .collect();
    let right = answered.iter().filter(|&&r| r).count();
    AtThreshold {
        threshold,
        answered: answered.len(),
        coverage: ratio(answered.len(), confidence.len(), 1.0),
        answered_accuracy: ratio(right, answered.len(), 1.0),
    }
}

fn ratio(n: usize, d: usize, empty: f64) -> f64 {
    if d == 0 {
        empty
    } else {
        n as f64 / d as f64
    }
}

/// One point of the risk-coverage curve: answering the `coverage` share of photos the
/// model is surest of, `risk` of them are wrong.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RiskPoint {
    pub coverage: f64,
    pub risk: f64,
    /// The top score of the least sure photo answered.
    pub threshold: f32,
}

/// The risk-coverage curve, surest photos first, at most `points` points (evenly spaced
/// in coverage, always ending at full coverage). Ties in confidence enter together.
pub fn risk_coverage(confidence: &[f32], correct: &[bool], points: usize) -> Vec<RiskPoint> {
    let n = confidence.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| confidence[b].total_cmp(&confidence[a]));
    let mut out = Vec::new();
    let mut wrong = 0usize;
    let step = (n / points.max(1)).max(1);
    for (k, &i) in order.iter().enumerate() {
        wrong += usize::from(!correct[i]);
        let answered = k + 1;
        let tie_follows = order
            .get(answered)
            .is_some_and(|&next| confidence[next] == confidence[i]);
        if tie_follows || (answered % step != 0 && answered != n) {
            continue;
        }
        out.push(RiskPoint {
            coverage: answered as f64 / n as f64,
            risk: wrong as f64 / answered as f64,
            threshold: confidence[i],
        });
    }
    out
}

/// Area under the ROC curve of telling `positive` from `negative` by a score (higher:
/// more likely positive): the chance that a random positive scores above a random
/// negative, ties counting half (Mann-Whitney). 0.5 when either side is empty.
pub fn auroc(positive: &[f64], negative: &[f64]) -> f64 {
    if positive.is_empty() || negative.is_empty() {
        return 0.5;
    }
    // Rank everything once: O(n log n) instead of comparing every pair.
    let mut all: Vec<(f64, bool)> = positive
        .iter()
        .map(|&s| (s, true))
        .chain(negative.iter().map(|&s| (s, false)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j < all.len() && all[j].0.total_cmp(&all[i].0).is_eq() {
            j += 1;
        }
        // Ranks i+1 ..= j share their mean.
        let mean_rank = (i + 1 + j) as f64 / 2.0;
        rank_sum += mean_rank * all[i..j].iter().filter(|x| x.1).count() as f64;
        i = j;
    }
    let (p, q) = (positive.len() as f64, negative.len() as f64);
    (rank_sum - p * (p + 1.0) / 2.0) / (p * q)
}

/// A photo's "known" scores from the head's logits and its features: higher means more
/// like the classes the model was trained on.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct KnownScores {
    /// The calibrated top softmax probability.
    pub max_softmax: f64,
    /// Minus the free energy: `T · logsumexp(logits / T)`.
    pub energy: f64,
    /// Minus the distance (cosine, features L2-normalised) to the nearest class mean.
    pub class_mean: f64,
}

/// Class means of L2-normalised feature rows, themselves normalised: what
/// [`KnownScores::class_mean`] measures distance to.
pub fn class_means(features: &[&[f32]], labels: &[usize], classes: usize) -> Vec<Vec<f32>> {
    let dim = features.first().map_or(0, |f| f.len());
    let mut sums = vec![vec![0f32; dim]; classes];
    for (row, &label) in features.iter().zip(labels) {
        if let Some(sum) = sums.get_mut(label) {
            for (s, v) in sum.iter_mut().zip(normalised(row)) {
                *s += v;
            }
        }
    }
    sums.into_iter().map(|s| normalised(&s)).collect()
}

fn normalised(row: &[f32]) -> Vec<f32> {
    let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
    if norm > 0.0 {
        row.iter().map(|v| v / norm).collect()
    } else {
        row.to_vec()
    }
}

/// The three scores of one photo.
pub fn known_scores(
    logits: &[f32],
    temperature: f32,
    features: &[f32],
    means: &[Vec<f32>],
) -> KnownScores {
    let t = f64::from(temperature);
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&v| ((v as f64 - max) / t).exp()).sum();
    let energy = max + t * sum.ln();
    let max_softmax = 1.0 / sum;
    let f = normalised(features);
    let best_cosine = means
        .iter()
        .map(|m| m.iter().zip(&f).map(|(a, b)| a * b).sum::<f32>())
        .fold(f32::NEG_INFINITY, f32::max);
    KnownScores {
        max_softmax,
        energy,
        class_mean: f64::from(best_cosine) - 1.0,
    }
}

/// `graft evaluate --open-set-classes K`: how well unseen products are refused.
#[derive(Debug, Clone)]
pub struct OpenSetOptions {
    /// The images the heads are trained on (the bundle's training set, or any other).
    pub train: ImageSource,
    /// Classes held out of training per run.
    pub held_out: usize,
    /// Runs, each holding out another random set of classes (seeds 0, 1, ...).
    pub seeds: u64,
    /// The threshold whose rates are reported.
    pub unknown_below: f32,
    pub bottleneck_dir: PathBuf,
    pub extract: ExtractOptions,
}

/// One score's separation of known from held-out photos.
#[derive(Debug, Clone, Serialize)]
pub struct ScoreAuroc {
    pub max_softmax: f64,
    pub energy: f64,
    pub class_mean: f64,
}

/// One run: a set of held-out classes.
#[derive(Debug, Clone, Serialize)]
pub struct OpenSetRun {
    pub seed: u64,
    pub held_out: Vec<String>,
    pub known_photos: usize,
    pub held_out_photos: usize,
    pub auroc: ScoreAuroc,
    pub temperature: f32,
    /// Top-1 accuracy on the known photos when every photo is answered.
    pub known_accuracy: f64,
    /// The same for the known photos answered at the threshold (max-softmax).
    pub known_answered_accuracy: f64,
    /// Share of the known photos answered at the threshold.
    pub known_coverage: f64,
    /// Share of the held-out photos answered `unknown` at the threshold.
    pub held_out_rejected: f64,
    /// The same at the threshold `--unknown-below auto` picks from this run's known
    /// classes alone ([`auto_threshold`]).
    pub auto: AutoRates,
}

/// Rates at a run's automatic threshold, and how it was picked.
#[derive(Debug, Clone, Serialize)]
pub struct AutoRates {
    pub threshold: f32,
    pub known_answered_accuracy: f64,
    pub known_coverage: f64,
    pub held_out_rejected: f64,
    pub draws: Vec<AutoDraw>,
}

#[derive(Debug, Clone, Serialize)]
pub struct OpenSetReport {
    pub unknown_below: f32,
    pub runs: Vec<OpenSetRun>,
    /// Means over the runs.
    pub mean_auroc: ScoreAuroc,
    /// The score with the highest mean AUROC.
    pub best_score: &'static str,
}

/// Features of a dataset's readable images with their labels.
fn dataset_features(
    predictor: &Predictor,
    dataset: &Dataset,
    options: &OpenSetOptions,
    progress: &dyn Progress,
) -> Result<Vec<(usize, String, Vec<f32>)>> {
    let cache = FeatureCache::open(&options.bottleneck_dir)?;
    let paths: Vec<PathBuf> = dataset.images.iter().map(|i| i.path.clone()).collect();
    let cached = cached_features(
        &predictor.backbone,
        &cache,
        &paths,
        options.extract,
        progress,
    )?;
    Ok(dataset
        .images
        .iter()
        .zip(cached.features)
        .filter_map(|(image, f)| Some((image.label, image.relative.clone(), f?)))
        .collect())
}

/// How the heads of these experiments are trained: the bundle's head flags and split.
#[derive(Debug, Clone)]
pub struct HeadRecipe {
    pub config: TrainConfig,
    pub validation_pct: f64,
    pub testing_pct: f64,
}

impl HeadRecipe {
    /// `rows` (label, path relative to the image folder, features) in their train,
    /// validation and test splits, labels as given.
    pub fn split(&self, rows: &[(usize, String, Vec<f32>)], dim: usize) -> [SplitData; 3] {
        let mut splits: [SplitData; 3] = std::array::from_fn(|_| SplitData {
            dim,
            ..Default::default()
        });
        for (label, relative, f) in rows {
            let slot = match which_split(relative, self.validation_pct, self.testing_pct) {
                Split::Train => 0,
                Split::Validation => 1,
                Split::Test => 2,
            };
            splits[slot].push(f, *label);
        }
        splits
    }
}

/// A head trained without some classes, its temperature fitted on the validation split
/// of the classes it knows.
pub struct HeldOutHead {
    pub head: HeadWeights,
    pub temperature: f32,
    /// `known[c]`: class c's index in the head, `None` for a class left out.
    pub known: Vec<Option<usize>>,
    /// Classes the head knows.
    pub classes: usize,
    /// Its training rows (labels in the head's numbering).
    pub train: SplitData,
    pub train_images: usize,
    /// Its validation rows (labels in the head's numbering).
    pub validation: SplitData,
}

/// Trains a head on `splits` (labels `0..classes`) without the classes in `excluded`.
pub fn train_without(
    splits: &[SplitData; 3],
    classes: usize,
    excluded: &[usize],
    recipe: &HeadRecipe,
    seed: u64,
) -> Result<HeldOutHead> {
    // Known classes keep their order.
    let mut known = vec![None; classes];
    let mut next = 0;
    for (c, slot) in known.iter_mut().enumerate() {
        if !excluded.contains(&c) {
            *slot = Some(next);
            next += 1;
        }
    }
    let keep = |data: &SplitData| {
        let mut out = SplitData {
            dim: data.dim,
            ..Default::default()
        };
        for i in 0..data.len() {
            if let Some(k) = known.get(data.labels[i]).copied().flatten() {
                out.push(data.row(i), k);
            }
        }
        out
    };
    let (train, validation) = (keep(&splits[0]), keep(&splits[1]));
    let config = TrainConfig {
        seed,
        ..recipe.config.clone()
    };
    let head = train_head(
        &config,
        next,
        &train,
        &mut Originals,
        &validation,
        0,
        |_, _| Ok(()),
    )?
    .head;
    let logits: Vec<Vec<f32>> = (0..validation.len())
        .map(|i| head.logits(validation.row(i)))
        .collect();
    let temperature = crate::head::calibrate::fit_temperature(&logits, &validation.labels);
    Ok(HeldOutHead {
        head,
        temperature,
        known,
        classes: next,
        train_images: train.len(),
        train,
        validation,
    })
}

/// `--unknown-below` at training: a number, or `auto` ([`auto_threshold`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum UnknownBelow {
    At(f32),
    Auto,
}

/// Simulated new products per draw of [`auto_threshold`]: an eighth of the classes, as
/// 10 of the grocery photos' 81.
pub const AUTO_HELD_OUT_SHARE: usize = 8;
/// Draws of [`auto_threshold`]; the threshold is their median.
pub const AUTO_DRAWS: u64 = 3;

/// One draw of [`auto_threshold`].
#[derive(Debug, Clone, Serialize)]
pub struct AutoDraw {
    /// Classes that played the new products.
    pub held_out: Vec<String>,
    pub threshold: f32,
    /// Youden's J at the threshold: share of known photos answered minus share of
    /// new-product photos answered.
    pub youden: f64,
    /// AUROC of the calibrated max-softmax, known against new.
    pub auroc: f64,
}

/// The threshold `--unknown-below auto` picks, and its draws.
#[derive(Debug, Clone, Serialize)]
pub struct AutoThreshold {
    pub threshold: f32,
    pub draws: Vec<AutoDraw>,
}

/// `--unknown-below auto`: a threshold chosen from the training images alone. Each of
/// [`AUTO_DRAWS`] draws plays out new products among the classes of `pool`: an eighth of
/// them is left out, a head trained on the rest of `pool` ([`train_without`]), and the
/// calibrated max-softmax of the known classes' validation photos set against that of
/// every photo of the left-out classes; the draw's threshold is the score that best
/// separates the two (largest Youden's J: known answered minus new answered). The result
/// is the median of the draws. The known photos here come from the training sessions
/// and are easier than photos of other sessions will be, so at this threshold more known
/// photos are refused in service than in the draws (docs/taxonomy.md).
pub fn auto_threshold(
    splits: &[SplitData; 3],
    names: &[String],
    pool: &[usize],
    recipe: &HeadRecipe,
    seed: u64,
) -> Result<AutoThreshold> {
    let classes = names.len();
    let k = (pool.len() / AUTO_HELD_OUT_SHARE).max(1);
    if pool.len() < k + 2 {
        return Err(Error::Invalid(format!(
            "--unknown-below auto plays out new products by leaving classes out of training, \
             and needs at least 3 classes; there are {}: give a number P instead",
            pool.len()
        )));
    }
    let mut draws = Vec::new();
    for d in 0..AUTO_DRAWS {
        let mut order = pool.to_vec();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(
            seed.wrapping_mul(1000).wrapping_add(d + 1),
        ));
        let mut held = order[..k].to_vec();
        held.sort_unstable();
        let excluded: Vec<usize> = (0..classes)
            .filter(|c| !pool.contains(c) || held.contains(c))
            .collect();
        let trained = train_without(splits, classes, &excluded, recipe, seed + d)?;
        let score = |row: &[f32]| {
            let probs =
                crate::head::calibrate::softmax_at(&trained.head.logits(row), trained.temperature);
            f64::from(probs.iter().copied().fold(0.0f32, f32::max))
        };
        let known: Vec<f64> = (0..trained.validation.len())
            .map(|i| score(trained.validation.row(i)))
            .collect();
        let new: Vec<f64> = splits
            .iter()
            .flat_map(|s| {
                (0..s.len())
                    .filter(|&i| held.contains(&s.labels[i]))
                    .map(move |i| s.row(i))
            })
            .map(score)
            .collect();
        if known.is_empty() || new.is_empty() {
            continue;
        }
        let (threshold, youden) = youden_threshold(&known, &new);
        draws.push(AutoDraw {
            held_out: held.iter().map(|&c| names[c].clone()).collect(),
            threshold,
            youden,
            auroc: auroc(&known, &new),
        });
    }
    if draws.is_empty() {
        return Err(Error::Invalid(
            "--unknown-below auto: no class has validation images to measure known photos \
             by; raise --validation-percentage or give a number P"
                .into(),
        ));
    }
    let mut thresholds: Vec<f32> = draws.iter().map(|d| d.threshold).collect();
    thresholds.sort_by(f32::total_cmp);
    Ok(AutoThreshold {
        threshold: thresholds[thresholds.len() / 2],
        draws,
    })
}

/// The threshold P (a photo is answered when its score is at least P) that maximises the
/// share of `known` answered minus the share of `new` answered, with that difference;
/// among equal differences the lowest P (the most answered). Kept inside (0, 1), where
/// `--unknown-below` lives.
pub fn youden_threshold(known: &[f64], new: &[f64]) -> (f32, f64) {
    let mut all: Vec<(f64, bool)> = known
        .iter()
        .map(|&s| (s, true))
        .chain(new.iter().map(|&s| (s, false)))
        .collect();
    // Highest first: lowering P past a group of equal scores answers all of them.
    all.sort_by(|a, b| b.0.total_cmp(&a.0));
    let (nk, nn) = (known.len().max(1) as f64, new.len().max(1) as f64);
    let (mut answered_known, mut answered_new) = (0usize, 0usize);
    let mut best = (1.0f64, 0.0f64);
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j < all.len() && all[j].0 == all[i].0 {
            if all[j].1 {
                answered_known += 1;
            } else {
                answered_new += 1;
            }
            j += 1;
        }
        let youden = answered_known as f64 / nk - answered_new as f64 / nn;
        if youden >= best.1 {
            best = (all[i].0, youden);
        }
        i = j;
    }
    let p = (best.0 as f32).clamp(f32::MIN_POSITIVE, 1.0 - f32::EPSILON);
    (p, best.1)
}

/// Trains one head per seed on the training images of the classes not held out (the
/// bundle's training flags and split percentages, features from the cache), fits its
/// temperature on their validation split, and scores the evaluation images: photos of
/// the known classes against photos of the held-out ones.
pub fn open_set(
    predictor: &Predictor,
    evaluation: &ImageSource,
    options: &OpenSetOptions,
    progress: &dyn Progress,
) -> Result<OpenSetReport> {
    if predictor.bundle.manifest.fine_tune.is_some() {
        // The heads here train on the bundle's backbone features; a fine-tuned backbone
        // was trained on every class, the held-out ones too, so its features would
        // already know the products the experiment pretends are new.
        return Err(Error::Invalid(
            "--open-set-classes: the model's backbone was fine-tuned, on every class the \
             experiment would hold out, so its features have seen them; run it on a model \
             trained without --fine-tune on the same photos"
                .into(),
        ));
    }
    let train_set = options.train.load()?;
    let classes = train_set.classes.len();
    if options.held_out == 0 || options.held_out + 2 > classes {
        return Err(Error::Invalid(format!(
            "--open-set-classes {}: the training images have {classes} classes, and at least 2 \
             must stay known; give 1 to {}",
            options.held_out,
            classes.saturating_sub(2)
        )));
    }
    let eval_set = evaluation.load()?;
    let training = &predictor.bundle.manifest.training;
    let number = |key: &str, default: f64| {
        training
            .get(key)
            .and_then(|v| v.as_f64())
            .unwrap_or(default)
    };
    let steps = number("how_many_training_steps", 4000.0) as usize;
    let config = TrainConfig {
        steps,
        learning_rate: number("learning_rate", 0.001),
        train_batch_size: number("train_batch_size", 100.0) as usize,
        // Only the final head matters here.
        eval_step_interval: steps.max(1),
        validation_batch_size: -1,
        optimizer: training
            .get("optimizer")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or(Optimizer::Adam),
        weight_decay: number("weight_decay", 0.0),
        seed: 0,
    };
    let (validation_pct, testing_pct) = (
        number("validation_percentage", 10.0),
        number("testing_percentage", 10.0),
    );
    let recipe = HeadRecipe {
        config,
        validation_pct,
        testing_pct,
    };
    let train_rows = dataset_features(predictor, &train_set, options, progress)?;
    let eval_rows = dataset_features(predictor, &eval_set, options, progress)?;
    let dim = predictor.bundle.manifest.feature_dim;
    let splits = recipe.split(&train_rows, dim);
    let mut runs = Vec::new();
    for seed in 0..options.seeds {
        let mut order: Vec<usize> = (0..classes).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        let mut held: Vec<usize> = order[..options.held_out].to_vec();
        held.sort_unstable();
        let trained = train_without(&splits, classes, &held, &recipe, seed)?;
        progress.message(&format!(
            "open set, seed {seed}: trained on {} images of {} classes ({} held out)",
            trained.train_images,
            trained.classes,
            held.len()
        ));
        let (head, temperature, known) = (&trained.head, trained.temperature, &trained.known);
        let pool: Vec<usize> = (0..classes).filter(|c| known[*c].is_some()).collect();
        let auto = auto_threshold(&splits, &train_set.classes, &pool, &recipe, seed)?;
        let train_refs: Vec<&[f32]> = (0..trained.train.len())
            .map(|i| trained.train.row(i))
            .collect();
        let means = class_means(&train_refs, &trained.train.labels, trained.classes);

        let by_name = |name: &str| train_set.classes.iter().position(|c| c == name);
        let (mut known_photo_scores, mut unknown_scores) = (Vec::new(), Vec::new());
        let (mut known_conf, mut known_right) = (Vec::new(), Vec::new());
        for (label, _, f) in &eval_rows {
            let Some(class) = by_name(&eval_set.classes[*label]) else {
                continue;
            };
            let logits = head.logits(f);
            let scores = known_scores(&logits, temperature, f, &means);
            match known[class] {
                Some(k) => {
                    let probs = crate::head::calibrate::softmax_at(&logits, temperature);
                    let best = crate::predict::top_k(&probs, 1)
                        .first()
                        .map_or(usize::MAX, |b| b.0);
                    known_conf.push(scores.max_softmax as f32);
                    known_right.push(best == k);
                    known_photo_scores.push(scores);
                }
                None => unknown_scores.push(scores),
            }
        }
        let auc = |pick: fn(&KnownScores) -> f64| {
            auroc(
                &known_photo_scores.iter().map(pick).collect::<Vec<_>>(),
                &unknown_scores.iter().map(pick).collect::<Vec<_>>(),
            )
        };
        let at = at_threshold(&known_conf, &known_right, options.unknown_below);
        let at_auto = at_threshold(&known_conf, &known_right, auto.threshold);
        let everything = at_threshold(&known_conf, &known_right, 0.0);
        let rejected_below = |p: f32| {
            let n = unknown_scores
                .iter()
                .filter(|s| (s.max_softmax as f32) < p)
                .count();
            ratio(n, unknown_scores.len(), 0.0)
        };
        runs.push(OpenSetRun {
            seed,
            held_out: held.iter().map(|&c| train_set.classes[c].clone()).collect(),
            known_photos: known_photo_scores.len(),
            held_out_photos: unknown_scores.len(),
            auroc: ScoreAuroc {
                max_softmax: auc(|s| s.max_softmax),
                energy: auc(|s| s.energy),
                class_mean: auc(|s| s.class_mean),
            },
            temperature,
            known_accuracy: everything.answered_accuracy,
            known_answered_accuracy: at.answered_accuracy,
            known_coverage: at.coverage,
            held_out_rejected: rejected_below(options.unknown_below),
            auto: AutoRates {
                threshold: auto.threshold,
                known_answered_accuracy: at_auto.answered_accuracy,
                known_coverage: at_auto.coverage,
                held_out_rejected: rejected_below(auto.threshold),
                draws: auto.draws,
            },
        });
    }
    let n = runs.len().max(1) as f64;
    let mean = |pick: fn(&ScoreAuroc) -> f64| runs.iter().map(|r| pick(&r.auroc)).sum::<f64>() / n;
    let mean_auroc = ScoreAuroc {
        max_softmax: mean(|a| a.max_softmax),
        energy: mean(|a| a.energy),
        class_mean: mean(|a| a.class_mean),
    };
    let best_score = [
        ("max_softmax", mean_auroc.max_softmax),
        ("energy", mean_auroc.energy),
        ("class_mean", mean_auroc.class_mean),
    ]
    .into_iter()
    .fold(("max_softmax", f64::NEG_INFINITY), |best, s| {
        if s.1 > best.1 {
            s
        } else {
            best
        }
    })
    .0;
    Ok(OpenSetReport {
        unknown_below: options.unknown_below,
        runs,
        mean_auroc,
        best_score,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coverage_and_answered_accuracy_of_hand_made_scores() {
        let confidence = [0.9, 0.8, 0.4, 0.3];
        let correct = [true, false, true, false];
        let t = at_threshold(&confidence, &correct, 0.5);
        assert_eq!(t.answered, 2);
        assert_eq!(t.coverage, 0.5);
        assert_eq!(t.answered_accuracy, 0.5);
        let t = at_threshold(&confidence, &correct, 0.85);
        assert_eq!((t.coverage, t.answered_accuracy), (0.25, 1.0));
        let t = at_threshold(&confidence, &correct, 0.95);
        assert_eq!((t.answered, t.coverage, t.answered_accuracy), (0, 0.0, 1.0));
    }

    #[test]
    fn risk_coverage_answers_the_surest_first_and_keeps_ties_together() {
        let confidence = [0.4, 0.9, 0.7, 0.7];
        let correct = [false, true, false, true];
        let curve = risk_coverage(&confidence, &correct, 100);
        let pairs: Vec<(f64, f64)> = curve.iter().map(|p| (p.coverage, p.risk)).collect();
        assert_eq!(pairs, vec![(0.25, 0.0), (0.75, 1.0 / 3.0), (1.0, 0.5)]);
        assert_eq!(curve[1].threshold, 0.7);
    }

    #[test]
    fn auroc_of_hand_made_scores() {
        assert_eq!(auroc(&[0.9, 0.8], &[0.1, 0.2]), 1.0);
        assert_eq!(auroc(&[0.1, 0.2], &[0.9, 0.8]), 0.0);
        assert_eq!(auroc(&[0.5], &[0.5]), 0.5);
        // Pairs: (0.9 > 0.3), (0.9 > 0.6), (0.4 > 0.3), (0.4 < 0.6): 3 of 4.
        assert_eq!(auroc(&[0.9, 0.4], &[0.3, 0.6]), 0.75);
        assert_eq!(auroc(&[], &[0.3]), 0.5);
    }

    #[test]
    fn youden_threshold_of_hand_made_scores() {
        // Answering from 0.7 down takes both known above the new ones: J = 1 - 0.
        let (p, j) = youden_threshold(&[0.9, 0.7], &[0.5, 0.4]);
        assert_eq!((p, j), (0.7, 1.0));
        // Overlap: at 0.6 two of three known answered and none new (J 2/3); at 0.3 all
        // known and one new (J 1 - 1/2): 0.6 wins.
        let (p, j) = youden_threshold(&[0.9, 0.6, 0.3], &[0.5, 0.2]);
        assert_eq!(p, 0.6);
        assert!((j - 2.0 / 3.0).abs() < 1e-12);
        // Equal J: the lower threshold (more answered). At 0.8: 1/2 - 0; at 0.4: 1 - 1/2.
        assert_eq!(youden_threshold(&[0.8, 0.4], &[0.6, 0.1]).0, 0.4);
        // A top score of 1 stays a threshold --unknown-below accepts.
        let (p, _) = youden_threshold(&[1.0, 1.0], &[0.2]);
        assert!(p < 1.0 && p > 0.99);
    }

    /// Photos of class c lie near 3 * e_c in an 8-dimensional space: a class left out
    /// points where no known class does, so every known logit is about equal.
    fn clustered(classes: usize, per_class: usize) -> [SplitData; 3] {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut splits: [SplitData; 3] = std::array::from_fn(|_| SplitData {
            dim: classes,
            ..Default::default()
        });
        for c in 0..classes {
            for i in 0..per_class {
                let row: Vec<f32> = (0..classes)
                    .map(|d| {
                        let noise = rand::Rng::gen_range(&mut rng, -0.3f32..0.3);
                        if d == c {
                            3.0 + noise
                        } else {
                            noise
                        }
                    })
                    .collect();
                splits[i % 3].push(&row, c);
            }
        }
        splits
    }

    #[test]
    fn auto_threshold_sits_between_known_and_new_products() {
        let splits = clustered(8, 30);
        let recipe = HeadRecipe {
            config: TrainConfig {
                steps: 300,
                learning_rate: 0.05,
                train_batch_size: 32,
                eval_step_interval: 300,
                validation_batch_size: -1,
                optimizer: Optimizer::Adam,
                weight_decay: 0.0,
                seed: 0,
            },
            validation_pct: 10.0,
            testing_pct: 10.0,
        };
        let names: Vec<String> = (0..8).map(|c| format!("c{c}")).collect();
        let pool: Vec<usize> = (0..8).collect();
        let auto = auto_threshold(&splits, &names, &pool, &recipe, 0).unwrap();
        assert_eq!(auto.draws.len(), AUTO_DRAWS as usize);
        for d in &auto.draws {
            // An eighth of 8 classes: one left out per draw; well separated.
            assert_eq!(d.held_out.len(), 1, "{d:?}");
            assert!(d.youden > 0.9 && d.auroc > 0.95, "{d:?}");
            assert!(d.threshold > 1.0 / 7.0 && d.threshold < 1.0, "{d:?}");
        }
        let mut t: Vec<f32> = auto.draws.iter().map(|d| d.threshold).collect();
        t.sort_by(f32::total_cmp);
        assert_eq!(auto.threshold, t[1], "the median of the draws");
        // Classes outside the pool are never trained on nor played as new.
        let pool: Vec<usize> = (0..5).collect();
        let auto = auto_threshold(&splits, &names, &pool, &recipe, 1).unwrap();
        let outside = ["c5", "c6", "c7"];
        assert!(auto
            .draws
            .iter()
            .all(|d| d.held_out.iter().all(|c| !outside.contains(&c.as_str()))));
        let err = auto_threshold(&splits, &names, &[0, 1], &recipe, 0).unwrap_err();
        assert!(err.to_string().contains("at least 3 classes"), "{err}");
    }

    #[test]
    fn scores_rank_a_familiar_photo_above_a_strange_one() {
        let means = class_means(&[&[1.0, 0.0], &[0.0, 2.0]], &[0, 1], 2);
        let familiar = known_scores(&[5.0, 0.0], 1.0, &[3.0, 0.1], &means);
        let strange = known_scores(&[0.5, 0.4], 1.0, &[1.0, 1.0], &means);
        assert!(familiar.max_softmax > strange.max_softmax);
        assert!(familiar.energy > strange.energy);
        assert!(familiar.class_mean > strange.class_mean);
        assert!(
            (known_scores(&[0.0, 0.0], 1.0, &[1.0, 0.0], &means).max_softmax - 0.5).abs() < 1e-9
        );
    }
}
