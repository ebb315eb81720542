//! Training the softmax head on cached features, following retrain.py's loop: each
//! step draws a class-balanced random batch (a random class, then a random image of
//! it), takes one optimizer step on the cross-entropy, and every `eval_step_interval`
//! steps (and at the last) reports train accuracy and cross-entropy on that batch and
//! accuracy on a random validation batch.
//!
//! Same seed, same data: the same head, bit for bit, on one machine. All randomness
//! comes from one seeded ChaCha stream, and the initial weights are drawn from it too.

use burn::optim::decay::WeightDecayConfig;
use burn::optim::{AdamConfig, GradientsParams, SgdConfig};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Tensor, TensorData as BurnData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::model::{HeadWeights, SoftmaxHead};
use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Optimizer {
    Sgd,
    Adam,
}

/// retrain.py's flags, plus the optimizer, weight decay and seed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainConfig {
    pub steps: usize,
    pub learning_rate: f64,
    pub train_batch_size: usize,
    pub eval_step_interval: usize,
    /// `-1`: the whole validation set.
    pub validation_batch_size: i64,
    pub optimizer: Optimizer,
    /// L2 penalty on the weights (0 = none, as retrain.py).
    pub weight_decay: f64,
    pub seed: u64,
}

/// Feature vectors of one split with their labels.
#[derive(Clone, Debug, Default)]
pub struct SplitData {
    pub dim: usize,
    /// `[n, dim]` row-major.
    pub features: Vec<f32>,
    pub labels: Vec<usize>,
}

impl SplitData {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.features[i * self.dim..(i + 1) * self.dim]
    }

    pub fn push(&mut self, features: &[f32], label: usize) {
        self.features.extend_from_slice(features);
        self.labels.push(label);
    }
}

/// What the training loop reports as it goes; the CLI renders it.
#[derive(Clone, Debug, Serialize)]
pub enum TrainEvent {
    Evaluation {
        step: usize,
        train_accuracy: f32,
        cross_entropy: f32,
        validation_accuracy: Option<f32>,
        validation_cross_entropy: Option<f32>,
    },
    /// A snapshot of the head every `--intermediate-store-frequency` steps.
    Intermediate { step: usize },
}

pub struct TrainResult {
    pub head: HeadWeights,
    pub history: Vec<TrainEvent>,
}

/// Class-balanced random batch: indices into `data`.
fn balanced_batch(rng: &mut ChaCha8Rng, by_class: &[Vec<usize>], size: usize) -> Vec<usize> {
    let non_empty: Vec<&Vec<usize>> = by_class.iter().filter(|c| !c.is_empty()).collect();
    (0..size)
        .map(|_| {
            let class = non_empty[rng.gen_range(0..non_empty.len())];
            class[rng.gen_range(0..class.len())]
        })
        .collect()
}

fn group_by_class(data: &SplitData, classes: usize) -> Vec<Vec<usize>> {
    let mut by_class = vec![Vec::new(); classes];
    for (i, &label) in data.labels.iter().enumerate() {
        by_class[label].push(i);
    }
    by_class
}

/// Accuracy and mean cross-entropy of `head` on rows `indices` of `data`.
pub fn score(head: &HeadWeights, data: &SplitData, indices: &[usize]) -> (f32, f32) {
    let rows: Vec<&[f32]> = indices.iter().map(|&i| data.row(i)).collect();
    let labels: Vec<usize> = indices.iter().map(|&i| data.labels[i]).collect();
    score_rows(head, &rows, &labels)
}

/// Accuracy and mean cross-entropy of `head` on feature `rows` with their `labels`.
pub fn score_rows(head: &HeadWeights, rows: &[&[f32]], labels: &[usize]) -> (f32, f32) {
    if rows.is_empty() {
        return (0.0, 0.0);
    }
    let mut correct = 0usize;
    let mut loss = 0f64;
    for (row, &label) in rows.iter().zip(labels) {
        let probs = head.probabilities(row);
        let best = probs
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(&a.0)))
            .map(|(k, _)| k)
            .unwrap_or(0);
        correct += usize::from(best == label);
        loss -= f64::from(probs[label].max(1e-30)).ln();
    }
    (
        correct as f32 / rows.len() as f32,
        (loss / rows.len() as f64) as f32,
    )
}

/// Where the feature rows of a training batch come from.
pub trait TrainFeatures {
    /// Rows `[batch.len(), dim]` (row-major) for training images `batch` (indices into
    /// the train split). `rng` is the training loop's stream, for implementations that
    /// choose among stored variants.
    fn rows(
        &mut self,
        train: &SplitData,
        batch: &[usize],
        rng: &mut ChaCha8Rng,
    ) -> Result<Vec<f32>>;
}

/// The cached features of the original images: retrain.py without distortions.
pub struct Originals;

impl TrainFeatures for Originals {
    fn rows(
        &mut self,
        train: &SplitData,
        batch: &[usize],
        _rng: &mut ChaCha8Rng,
    ) -> Result<Vec<f32>> {
        let mut x = Vec::with_capacity(batch.len() * train.dim);
        for &i in batch {
            x.extend_from_slice(train.row(i));
        }
        Ok(x)
    }
}

/// Cached distorted variants: each sample is the original image or one of its `K`
/// variants, uniformly.
pub struct CachedVariants {
    /// Per training image, its variants' rows `[K_i, dim]` (fewer where some could not be made).
    pub variants: Vec<Vec<f32>>,
}

impl TrainFeatures for CachedVariants {
    fn rows(
        &mut self,
        train: &SplitData,
        batch: &[usize],
        rng: &mut ChaCha8Rng,
    ) -> Result<Vec<f32>> {
        let dim = train.dim;
        let mut x = Vec::with_capacity(batch.len() * dim);
        for &i in batch {
            let stored = self.variants.get(i).map_or(0, |v| v.len() / dim);
            match rng.gen_range(0..=stored) {
                0 => x.extend_from_slice(train.row(i)),
                k => x.extend_from_slice(&self.variants[i][(k - 1) * dim..k * dim]),
            }
        }
        Ok(x)
    }
}

/// retrain.py's initial weights: truncated normal (stddev 0.001, cut at 2 stddev), zero bias.
fn initial_weights(rng: &mut ChaCha8Rng, dim: usize, classes: usize) -> HeadWeights {
    let weight = (0..dim * classes)
        .map(|_| loop {
            // Box-Muller from two uniforms; resample outside +-2 sigma.
            let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
            let u2: f64 = rng.gen();
            let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
            if z.abs() <= 2.0 {
                break (z * 0.001) as f32;
            }
        })
        .collect();
    HeadWeights {
        dim,
        classes,
        weight,
        bias: vec![0.0; classes],
    }
}

/// Trains a head on `train`, reporting on `validation`, calling `on_event` at each
/// evaluation; `classes` is the number of labels.
pub fn train_head(
    config: &TrainConfig,
    classes: usize,
    train: &SplitData,
    features: &mut dyn TrainFeatures,
    validation: &SplitData,
    intermediate_every: usize,
    mut on_event: impl FnMut(&TrainEvent, &HeadWeights) -> Result<()>,
) -> Result<TrainResult> {
    if train.is_empty() {
        return Err(Error::Invalid(
            "no training images: every image fell into the validation or test split; lower \
             --validation-percentage / --testing-percentage or add images"
                .into(),
        ));
    }
    if config.train_batch_size == 0 || config.steps == 0 {
        return Err(Error::Invalid(
            "--train-batch-size and --how-many-training-steps must be at least 1".into(),
        ));
    }
    let dim = train.dim;
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let device = Device::flex().autodiff();
    let mut head = SoftmaxHead::from_weights(&initial_weights(&mut rng, dim, classes), &device);
    let decay = (config.weight_decay > 0.0).then(|| WeightDecayConfig {
        penalty: config.weight_decay as f32,
    });
    let mut optim = match config.optimizer {
        Optimizer::Sgd => SgdConfig::new().with_weight_decay(decay).init(),
        Optimizer::Adam => AdamConfig::new().with_weight_decay(decay).init(),
    };
    let train_by_class = group_by_class(train, classes);
    let validation_by_class = group_by_class(validation, classes);
    let all_validation: Vec<usize> = (0..validation.len()).collect();
    let mut history = Vec::new();
    let interval = config.eval_step_interval.max(1);

    for step in 0..config.steps {
        let batch = balanced_batch(&mut rng, &train_by_class, config.train_batch_size);
        let rows = features.rows(train, &batch, &mut rng)?;
        let mut onehot = vec![0f32; batch.len() * classes];
        for (row, &i) in batch.iter().enumerate() {
            onehot[row * classes + train.labels[i]] = 1.0;
        }
        let n = batch.len();
        let x = Tensor::<2>::from_data(BurnData::new(rows.clone(), [n, dim]), &device);
        let y = Tensor::<2>::from_data(BurnData::new(onehot, [n, classes]), &device);
        let loss = (log_softmax(head.forward(x), 1) * y).sum().neg() / n as f32;
        let value = loss
            .clone()
            .into_data()
            .try_to_vec::<f32>()
            .map_err(|e| Error::Engine(format!("{e:?}")))?;
        if value.iter().any(|v| !v.is_finite()) {
            return Err(diverged(step + 1, config));
        }
        let grads = GradientsParams::from_grads(loss.backward(), &head);
        head = optim.step(config.learning_rate, head, grads);

        let last = step + 1 == config.steps;
        if step % interval == 0 || last {
            let weights = head.to_weights()?;
            // On the rows the step trained on (distorted ones, where distortions are on).
            let batch_rows: Vec<&[f32]> = rows.chunks_exact(dim).collect();
            let batch_labels: Vec<usize> = batch.iter().map(|&i| train.labels[i]).collect();
            let (train_accuracy, cross_entropy) = score_rows(&weights, &batch_rows, &batch_labels);
            let validation_indices = if validation.is_empty() {
                Vec::new()
            } else if config.validation_batch_size < 0 {
                all_validation.clone()
            } else {
                balanced_batch(
                    &mut rng,
                    &validation_by_class,
                    config.validation_batch_size as usize,
                )
            };
            let (validation_accuracy, validation_cross_entropy) = if validation_indices.is_empty() {
                (None, None)
            } else {
                let (a, l) = score(&weights, validation, &validation_indices);
                (Some(a), Some(l))
            };
            let event = TrainEvent::Evaluation {
                step: step + 1,
                train_accuracy,
                cross_entropy,
                validation_accuracy,
                validation_cross_entropy,
            };
            on_event(&event, &weights)?;
            history.push(event);
        }
        if intermediate_every > 0 && (step + 1) % intermediate_every == 0 && !last {
            let event = TrainEvent::Intermediate { step: step + 1 };
            on_event(&event, &head.to_weights()?)?;
        }
    }
    let head = head.to_weights()?;
    if !head.is_finite() {
        return Err(diverged(config.steps, config));
    }
    Ok(TrainResult { head, history })
}

/// Training stopped because the loss (or the weights) stopped being numbers.
fn diverged(step: usize, config: &TrainConfig) -> Error {
    Error::Invalid(format!(
        "training diverged at step {step}: the loss is no longer a finite number (learning \
         rate {}, weight decay {}); lower --learning-rate and train again",
        config.learning_rate, config.weight_decay
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two well-separated Gaussian-ish blobs per class in 4-d.
    fn blobs(n: usize, seed: u64) -> SplitData {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut data = SplitData {
            dim: 4,
            ..Default::default()
        };
        for i in 0..n {
            let label = i % 3;
            let mut f = [0f32; 4];
            f[label] = 3.0;
            for v in &mut f {
                *v += rng.gen_range(-0.5..0.5);
            }
            data.push(&f, label);
        }
        data
    }

    fn config(seed: u64) -> TrainConfig {
        TrainConfig {
            steps: 200,
            learning_rate: 0.1,
            train_batch_size: 16,
            eval_step_interval: 50,
            validation_batch_size: -1,
            optimizer: Optimizer::Sgd,
            weight_decay: 0.0,
            seed,
        }
    }

    #[test]
    fn learns_separable_classes() {
        let train = blobs(90, 1);
        let validation = blobs(30, 2);
        let result = train_head(
            &config(7),
            3,
            &train,
            &mut Originals,
            &validation,
            0,
            |_, _| Ok(()),
        )
        .unwrap();
        let all: Vec<usize> = (0..validation.len()).collect();
        let (acc, _) = score(&result.head, &validation, &all);
        assert_eq!(acc, 1.0);
        // Evaluations at steps 1, 51, 101, 151 and the last (200).
        assert_eq!(result.history.len(), 5);
    }

    #[test]
    fn d07_a_loss_that_stops_being_finite_stops_training() {
        let train = blobs(30, 5);
        for learning_rate in [f64::NAN, f64::INFINITY, 1e300] {
            let config = TrainConfig {
                learning_rate,
                ..config(1)
            };
            let err = train_head(&config, 3, &train, &mut Originals, &train, 0, |_, _| Ok(()))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                err.contains("training diverged at step 2") && err.contains("--learning-rate"),
                "{learning_rate}: {err}"
            );
        }
    }

    #[test]
    fn same_seed_same_weights_bit_for_bit() {
        let train = blobs(60, 3);
        let validation = blobs(12, 4);
        let train_seed = |seed| {
            train_head(
                &config(seed),
                3,
                &train,
                &mut Originals,
                &validation,
                0,
                |_, _| Ok(()),
            )
            .unwrap()
        };
        let (a, b, c) = (train_seed(11), train_seed(11), train_seed(12));
        let bits = |h: &HeadWeights| {
            h.weight
                .iter()
                .chain(&h.bias)
                .map(|v| v.to_bits())
                .collect::<Vec<_>>()
        };
        assert_eq!(bits(&a.head), bits(&b.head));
        assert_ne!(bits(&a.head), bits(&c.head));
    }

    #[test]
    fn balanced_batches_draw_every_class_evenly() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        // Class 0 has 100 images, class 1 has 2: both are drawn about equally.
        let by_class = vec![(0..100).collect::<Vec<_>>(), vec![100, 101]];
        let batch = balanced_batch(&mut rng, &by_class, 2000);
        let from_small = batch.iter().filter(|&&i| i >= 100).count();
        assert!((800..1200).contains(&from_small), "{from_small}");
    }

    #[test]
    fn cached_variants_sample_the_original_and_every_variant() {
        let mut train = SplitData {
            dim: 1,
            ..Default::default()
        };
        train.push(&[0.0], 0);
        // Image 0 has variants 1.0 and 2.0.
        let mut variants = CachedVariants {
            variants: vec![vec![1.0, 2.0]],
        };
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let rows = variants.rows(&train, &[0; 3000], &mut rng).unwrap();
        for v in [0.0, 1.0, 2.0] {
            let n = rows.iter().filter(|&&r| r == v).count();
            assert!((800..1200).contains(&n), "{v}: {n} of 3000");
        }
    }
}
