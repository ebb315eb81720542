//! Joint training of the top blocks and a softmax head on cached activations at the cut.
//!
//! The recipe of fastai's `fine_tune` and the Keras transfer-learning guide: a new head
//! (or, for a warm start, the frozen head), batch norm stays in inference mode, AdamW with a
//! lower learning rate for the backbone than for the head, a linear warm-up then a cosine
//! decay, dropout before the head, label-smoothed cross-entropy, and the weights of the
//! epoch with the best validation accuracy are kept, or ([`Keep::Average`]) the mean of
//! the second half's epochs: stochastic weight averaging, written here because it is a
//! few sums over tensors graft already holds.
//!
//! Same seed, same data: the same weights, bit for bit, on one machine. Shuffling, the
//! view of each sample and the dropout masks all come from one seeded ChaCha stream.

use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Tensor, TensorData as BurnData};
use half::f16;
use half::slice::HalfFloatSliceExt;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::top::{TopLayout, TopParams};
use super::Cut;
use crate::error::{Error, Result};
use crate::head::model::SoftmaxHead;
use crate::head::HeadWeights;
use crate::weights::TensorMap;

/// The fine-tuning flags.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FineTuneConfig {
    pub blocks: usize,
    pub epochs: usize,
    pub batch_size: usize,
    /// Peak learning rates: backbone blocks, head.
    pub backbone_learning_rate: f64,
    pub head_learning_rate: f64,
    /// AdamW's decoupled weight decay.
    pub weight_decay: f64,
    /// Fraction of the steps spent warming up linearly (then cosine to zero).
    pub warmup: f64,
    /// How the learning rates change over the steps.
    #[serde(default)]
    pub schedule: Schedule,
    /// Dropout probability on the pooled features.
    pub dropout: f64,
    pub label_smoothing: f64,
    pub seed: u64,
    /// Start the head from the frozen head (else [`new_head`]).
    #[serde(default)]
    pub warm_start: bool,
    /// Which weights training hands back.
    #[serde(default)]
    pub keep: Keep,
}

/// The weights fine-tuning keeps (`--fine-tune-keep`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Keep {
    /// The epoch with the best validation accuracy (then the lowest cross-entropy).
    #[default]
    Best,
    /// The mean of the weights at the end of each epoch of the second half of training
    /// (stochastic weight averaging; BatchNorm's statistics are frozen, so the mean needs
    /// none recomputed).
    Average,
}

impl Keep {
    /// The first epoch (1-based) that [`Keep::Average`] averages over `epochs`.
    pub fn first_averaged(epochs: usize) -> usize {
        epochs / 2 + 1
    }
}

/// Running sum of the tuned tensors and the head over the epochs [`Keep::Average`] averages.
struct WeightSum {
    tensors: TensorMap,
    head: HeadWeights,
    epochs: usize,
}

impl WeightSum {
    fn add(sum: &mut Option<WeightSum>, tensors: TensorMap, head: HeadWeights) {
        let Some(acc) = sum else {
            *sum = Some(WeightSum {
                tensors,
                head,
                epochs: 1,
            });
            return;
        };
        for (key, tensor) in tensors {
            if let Some(total) = acc.tensors.get_mut(&key) {
                total
                    .data
                    .iter_mut()
                    .zip(&tensor.data)
                    .for_each(|(a, b)| *a += b);
            }
        }
        let (total, head) = (&mut acc.head, &head);
        total
            .weight
            .iter_mut()
            .zip(&head.weight)
            .for_each(|(a, b)| *a += b);
        total
            .bias
            .iter_mut()
            .zip(&head.bias)
            .for_each(|(a, b)| *a += b);
        acc.epochs += 1;
    }

    /// The mean of what was added.
    fn mean(mut self) -> (TensorMap, HeadWeights) {
        let scale = 1.0 / self.epochs as f32;
        let values = self.tensors.values_mut().flat_map(|t| t.data.iter_mut());
        let head = self.head.weight.iter_mut().chain(self.head.bias.iter_mut());
        values.chain(head).for_each(|v| *v *= scale);
        (self.tensors, self.head)
    }
}

/// The learning-rate schedule of fine-tuning (`--fine-tune-schedule`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// A linear warm-up over [`FineTuneConfig::warmup`] of the steps, then a half cosine
    /// down to zero (timm's and fastai's shape).
    #[default]
    Cosine,
    /// The peak learning rates throughout, no warm-up: what the ingredient table compares.
    Constant,
}

impl Schedule {
    /// Learning-rate factor at `step` of `total`, `warmup` of them warming up.
    pub fn factor(self, step: usize, warmup: usize, total: usize) -> f64 {
        match self {
            Schedule::Cosine => schedule(step, warmup, total),
            Schedule::Constant => 1.0,
        }
    }
}

impl FineTuneConfig {
    /// AdamW's weight decay (PyTorch's default).
    pub const DEFAULT_WEIGHT_DECAY: f64 = 0.01;
    /// A tenth of the steps.
    pub const DEFAULT_WARMUP: f64 = 0.1;
    /// AdamW's epsilon, PyTorch's default.
    pub const ADAM_EPSILON: f32 = 1e-8;
}

/// Activations at the cut of one split: per image, its views `[C * H * W]` each (view 0
/// the centre view; training images may have augmented ones after it).
///
/// Kept as f16 (the issue allows 16-bit storage): half the memory of f32, the largest
/// allocation of a run (10,955 views of Lite2's `[120, 17, 17]` at `--fine-tune 6` are
/// 0.76 GB as f16), and a relative rounding of at most 2^-11, well below the spread of
/// the augmented views themselves. [`CutData::keep`] is the one conversion.
pub struct CutData {
    /// `[C, H, W]` of one activation.
    pub shape: [usize; 3],
    pub views: Vec<Vec<Vec<f16>>>,
    pub labels: Vec<usize>,
}

impl CutData {
    fn len(&self) -> usize {
        self.labels.len()
    }

    /// One activation as training keeps it (rounded to the nearest f16).
    pub fn keep(activation: Vec<f32>) -> Vec<f16> {
        let mut out = vec![f16::ZERO; activation.len()];
        out.convert_from_f32_slice(&activation);
        out
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct EpochEvent {
    /// 1-based.
    pub epoch: usize,
    pub epochs: usize,
    pub train_loss: f32,
    pub train_accuracy: f32,
    pub validation_accuracy: f32,
    pub validation_cross_entropy: f32,
    pub seconds: f64,
}

pub struct FineTuned {
    /// The tensors training changed, by checkpoint key (best epoch).
    pub tensors: TensorMap,
    pub head: HeadWeights,
    /// 1-based.
    pub best_epoch: usize,
    pub best_validation_accuracy: f32,
    pub history: Vec<EpochEvent>,
}

/// A new head as PyTorch's `nn.Linear` starts: weights and bias uniform in
/// `±1 / sqrt(dim)`, drawn from `seed`.
///
/// Fine-tuning starts from this rather than from the frozen head: on the grocery photos
/// (Lite2, top 6 blocks, 4 views, 10 epochs, seed 0) 84.80% on `val/` against 80.07%
/// warm-started (docs/fine-tuning.md). A warm head already fits the training images
/// (97% right before the first step), so the blocks get little gradient to learn from.
pub fn new_head(dim: usize, classes: usize, seed: u64) -> HeadWeights {
    let bound = 1.0 / (dim.max(1) as f32).sqrt();
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x4ead_5eed);
    let mut draw =
        |n: usize| -> Vec<f32> { (0..n).map(|_| rng.gen_range(-bound..=bound)).collect() };
    let weight = draw(dim * classes);
    let bias = draw(classes);
    HeadWeights {
        dim,
        classes,
        weight,
        bias,
    }
}

/// Learning-rate factor at `step` of `total`: linear warm-up over `warmup` steps, then a
/// half cosine down to zero.
pub fn schedule(step: usize, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        return (step + 1) as f64 / warmup as f64;
    }
    let span = (total - warmup).max(1) as f64;
    let t = (step - warmup) as f64 / span;
    0.5 * (1.0 + (std::f64::consts::PI * t).cos())
}

fn batch_tensor(data: &CutData, rows: &[(usize, usize)], device: &Device) -> Tensor<4> {
    let [c, h, w] = data.shape;
    let len = c * h * w;
    let mut values = vec![0f32; rows.len() * len];
    for (out, &(image, view)) in values.chunks_exact_mut(len).zip(rows) {
        data.views[image][view].convert_to_f32_slice(out);
    }
    Tensor::from_data(BurnData::new(values, [rows.len(), c, h, w]), device)
}

fn to_vec<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    t.into_data()
        .try_to_vec::<f32>()
        .map_err(|e| Error::Engine(format!("{e:?}")))
}

/// Index of the largest value; ties go to the lower index.
fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(&a.0)))
        .map_or(0, |(k, _)| k)
}

/// Mean cross-entropy of `logits` `[n, classes]` against `labels` smoothed by `smooth`
/// (PyTorch's `cross_entropy(..., label_smoothing=smooth)`), and the log-probabilities.
fn smoothed_cross_entropy(
    logits: Tensor<2>,
    labels: &[usize],
    smooth: f32,
    device: &Device,
) -> (Tensor<1>, Tensor<2>) {
    let [n, classes] = logits.dims();
    let mut target = vec![smooth / classes as f32; n * classes];
    for (r, &label) in labels.iter().enumerate() {
        target[r * classes + label] += 1.0 - smooth;
    }
    let target = Tensor::<2>::from_data(BurnData::new(target, [n, classes]), device);
    let logp = log_softmax(logits, 1);
    ((logp.clone() * target).sum().neg() / n as f32, logp)
}

/// One forward and backward pass of the top and `head` on activations `input` at the cut
/// (`[n, C, H, W]` row-major), without dropout: the loss, the logits and every gradient
/// by checkpoint key (plus `input`, `head.weight`, `head.bias`). What the golden test
/// checks against PyTorch.
pub fn gradients(
    cut: &Cut,
    base: &TensorMap,
    head: &HeadWeights,
    input: &[f32],
    labels: &[usize],
    smooth: f32,
) -> Result<(f32, Vec<f32>, TensorMap)> {
    let device = Device::flex().autodiff();
    let (layout, top) = TopLayout::new(cut, base, &device)?;
    let model_head = SoftmaxHead::from_weights(head, &device);
    let shape = match cut.graph.shape(cut.at) {
        crate::backbone::graph::Shape::Map {
            channels,
            height,
            width,
        } => [labels.len(), *channels, *height, *width],
        _ => return Err(Error::Engine("the cut is not a feature map".into())),
    };
    let x = Tensor::<4>::from_data(BurnData::new(input.to_vec(), shape), &device).require_grad();
    let logits = model_head.forward(layout.forward(&top, x.clone())?);
    let (loss, _) = smoothed_cross_entropy(logits.clone(), labels, smooth, &device);
    let loss_value = to_vec(loss.clone())?[0];
    let logits = to_vec(logits.detach())?;
    let grads = loss.backward();
    let mut out = TensorMap::new();
    let mut put = |key: String, shape: Vec<usize>, data: Vec<f32>| {
        out.insert(key, crate::weights::TensorData { shape, data });
    };
    let grad_of = |t: &Tensor<4>| t.grad(&grads).map(to_vec).transpose();
    if let Some(g) = grad_of(&x)? {
        put("input".into(), shape.to_vec(), g);
    }
    for (key, p) in layout.keys().zip(top.convs.iter().map(|p| p.val())) {
        if let Some(g) = grad_of(&p)? {
            put(key.clone(), p.dims().to_vec(), g);
        }
    }
    for (key, p) in layout.norm_keys().zip(top.norms.iter().map(|p| p.val())) {
        if let Some(g) = p.grad(&grads) {
            put(key.clone(), p.dims().to_vec(), to_vec(g)?);
        }
    }
    if let Some(g) = model_head.weight.val().grad(&grads) {
        put(
            "head.weight".into(),
            vec![head.dim, head.classes],
            to_vec(g)?,
        );
    }
    if let Some(g) = model_head.bias.val().grad(&grads) {
        put("head.bias".into(), vec![head.classes], to_vec(g)?);
    }
    Ok((loss_value, logits, out))
}

/// Accuracy and mean cross-entropy on the centre views of `data`.
fn score(
    layout: &TopLayout,
    top: &TopParams,
    head: &SoftmaxHead,
    data: &CutData,
    batch: usize,
    device: &Device,
) -> Result<(f32, f32)> {
    // Untracked copies: through the tracked parameters, every forward records its graph
    // for a backward pass that never comes. Scoring that way held about a gigabyte more
    // through the rest of training (59 validation photos, Lite2, `--fine-tune 6`: peak
    // RSS 2.1 GB, 1.1 GB with these; the same weights, bit for bit).
    let (top, head) = (&top.clone().no_grad(), &head.clone().no_grad());
    let mut correct = 0usize;
    let mut loss = 0f64;
    let rows: Vec<(usize, usize)> = (0..data.len()).map(|i| (i, 0)).collect();
    for chunk in rows.chunks(batch.max(1)) {
        let x = batch_tensor(data, chunk, device).detach();
        let logits = head.forward(layout.forward(top, x)?);
        let classes = logits.dims()[1];
        let logp = to_vec(log_softmax(logits, 1))?;
        for (row, &(i, _)) in logp.chunks_exact(classes).zip(chunk) {
            let label = data.labels[i];
            correct += usize::from(argmax(row) == label);
            loss -= f64::from(row[label]);
        }
    }
    let n = data.len().max(1) as f64;
    Ok(((correct as f64 / n) as f32, (loss / n) as f32))
}

/// Fine-tunes the top of `cut` (initial weights `base`) and the head (starting from
/// `head`: the frozen head for a warm start, else [`new_head`]; the caller decides) on
/// `train`, keeping the epoch with the best accuracy on `validation`.
pub fn fine_tune(
    config: &FineTuneConfig,
    cut: &Cut,
    base: &TensorMap,
    head: &HeadWeights,
    train: &CutData,
    validation: &CutData,
    mut on_epoch: impl FnMut(&EpochEvent) -> Result<()>,
) -> Result<FineTuned> {
    if train.len() == 0 || validation.len() == 0 {
        return Err(Error::Invalid(
            "--fine-tune keeps the epoch with the best validation accuracy, but the validation \
             split is empty: raise --validation-percentage or add images"
                .into(),
        ));
    }
    let device = Device::flex().autodiff();
    let (layout, mut top) = TopLayout::new(cut, base, &device)?;
    let mut model_head = SoftmaxHead::from_weights(head, &device);
    let classes = head.classes;
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed ^ 0xf1e7_0e5e);
    // PyTorch's epsilon (burn's default is 1e-5).
    let adam = || {
        AdamWConfig::new()
            .with_epsilon(FineTuneConfig::ADAM_EPSILON)
            .with_weight_decay(config.weight_decay as f32)
            .init()
    };
    let (mut top_optim, mut head_optim) = (adam(), adam());
    let batch = config.batch_size.max(1);
    let steps_per_epoch = train.len().div_ceil(batch);
    let total = steps_per_epoch * config.epochs;
    let warmup = ((total as f64 * config.warmup).round() as usize).clamp(1, total.max(1));
    let smooth = config.label_smoothing as f32;
    let keep = 1.0 - config.dropout as f32;

    // (accuracy, cross-entropy, epoch, tensors, head) of the best epoch so far.
    let mut best: Option<(f32, f32, usize, TensorMap, HeadWeights)> = None;
    let mut sum: Option<WeightSum> = None;
    let mut history = Vec::new();
    let mut step = 0usize;
    let mut order: Vec<usize> = (0..train.len()).collect();
    for epoch in 1..=config.epochs {
        let started = std::time::Instant::now();
        order.shuffle(&mut rng);
        let (mut loss_sum, mut correct) = (0f64, 0usize);
        for chunk in order.chunks(batch) {
            let rows: Vec<(usize, usize)> = chunk
                .iter()
                .map(|&i| (i, rng.gen_range(0..train.views[i].len())))
                .collect();
            let n = rows.len();
            let x = batch_tensor(train, &rows, &device);
            let features = layout.forward(&top, x)?;
            let dim = features.dims()[1];
            let features = if keep < 1.0 {
                let mask: Vec<f32> = (0..n * dim)
                    .map(|_| {
                        if rng.gen::<f32>() < keep {
                            1.0 / keep
                        } else {
                            0.0
                        }
                    })
                    .collect();
                features * Tensor::<2>::from_data(BurnData::new(mask, [n, dim]), &device)
            } else {
                features
            };
            let logits = model_head.forward(features);
            let labels: Vec<usize> = rows.iter().map(|&(i, _)| train.labels[i]).collect();
            let (loss, logp) = smoothed_cross_entropy(logits, &labels, smooth, &device);
            let value = to_vec(loss.clone())?;
            if value.iter().any(|v| !v.is_finite()) {
                return Err(Error::Invalid(format!(
                    "fine-tuning diverged at epoch {epoch}: the loss is no longer a finite \
                     number; lower --fine-tune-learning-rate and train again"
                )));
            }
            loss_sum += f64::from(value[0]) * n as f64;
            let logp = to_vec(logp.detach())?;
            for (row, &(i, _)) in logp.chunks_exact(classes).zip(&rows) {
                correct += usize::from(argmax(row) == train.labels[i]);
            }
            let mut grads = loss.backward();
            let top_grads = GradientsParams::from_module(&mut grads, &top);
            let head_grads = GradientsParams::from_module(&mut grads, &model_head);
            let factor = config.schedule.factor(step, warmup, total);
            top = top_optim.step(config.backbone_learning_rate * factor, top, top_grads);
            model_head =
                head_optim.step(config.head_learning_rate * factor, model_head, head_grads);
            step += 1;
        }
        let (validation_accuracy, validation_cross_entropy) =
            score(&layout, &top, &model_head, validation, batch, &device)?;
        let event = EpochEvent {
            epoch,
            epochs: config.epochs,
            train_loss: (loss_sum / train.len() as f64) as f32,
            train_accuracy: correct as f32 / train.len() as f32,
            validation_accuracy,
            validation_cross_entropy,
            seconds: started.elapsed().as_secs_f64(),
        };
        // Higher accuracy wins; at equal accuracy, the lower cross-entropy (a small
        // validation split ties often).
        let better = best.as_ref().is_none_or(|(acc, ce, ..)| {
            validation_accuracy > *acc
                || (validation_accuracy == *acc && validation_cross_entropy < *ce)
        });
        if better {
            best = Some((
                validation_accuracy,
                validation_cross_entropy,
                epoch,
                layout.tensors(&top)?,
                model_head.to_weights()?,
            ));
        }
        if config.keep == Keep::Average && epoch >= Keep::first_averaged(config.epochs) {
            WeightSum::add(&mut sum, layout.tensors(&top)?, model_head.to_weights()?);
        }
        on_epoch(&event)?;
        history.push(event);
    }
    if let Some(sum) = sum {
        // The mean replaces the best epoch, scored on the validation split as an epoch is;
        // the last epoch averaged stands for it.
        let (tensors, head) = sum.mean();
        let mut weights = base.clone();
        weights.extend(tensors.iter().map(|(k, t)| (k.clone(), t.clone())));
        let (mean_layout, mean_top) = TopLayout::new(cut, &weights, &device)?;
        let mean_head = SoftmaxHead::from_weights(&head, &device);
        let (accuracy, cross_entropy) = score(
            &mean_layout,
            &mean_top,
            &mean_head,
            validation,
            batch,
            &device,
        )?;
        best = Some((accuracy, cross_entropy, config.epochs, tensors, head));
    }
    let Some((best_acc, _, best_epoch, tensors, head)) = best else {
        return Err(Error::Invalid(
            "--fine-tune-epochs must be at least 1".into(),
        ));
    };
    if !head.is_finite()
        || tensors
            .values()
            .any(|t| t.data.iter().any(|v| !v.is_finite()))
    {
        return Err(Error::Invalid(
            "fine-tuning diverged: the weights are no longer finite numbers; lower \
             --fine-tune-learning-rate and train again"
                .into(),
        ));
    }
    Ok(FineTuned {
        tensors,
        head,
        best_epoch,
        best_validation_accuracy: best_acc,
        history,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_holds_the_kept_views_within_f16_rounding() {
        let activation: Vec<f32> = (0..2 * 3 * 3).map(|i| (i as f32 - 7.3) * 0.731).collect();
        let other: Vec<f32> = activation.iter().map(|v| -2.0 * v).collect();
        let data = CutData {
            shape: [2, 3, 3],
            views: vec![vec![
                CutData::keep(activation.clone()),
                CutData::keep(other.clone()),
            ]],
            labels: vec![0],
        };
        let device = Device::flex();
        let batch = to_vec(batch_tensor(&data, &[(0, 1), (0, 0)], &device)).unwrap();
        let expected: Vec<f32> = other.iter().chain(&activation).copied().collect();
        assert_eq!(batch.len(), expected.len());
        for (got, want) in batch.iter().zip(&expected) {
            // f16 keeps 11 significant bits.
            assert!(
                (got - want).abs() <= want.abs() * 2f32.powi(-11),
                "{got} vs {want}"
            );
        }
        assert!(
            batch.iter().zip(&expected).any(|(g, w)| g != w),
            "rounding happened"
        );
    }

    #[test]
    fn a_new_head_is_drawn_from_the_seed_within_pytorchs_bound() {
        let a = new_head(64, 5, 7);
        assert_eq!(
            (a.dim, a.classes, a.weight.len(), a.bias.len()),
            (64, 5, 320, 5)
        );
        let bound = 1.0 / 8.0;
        assert!(a.weight.iter().chain(&a.bias).all(|v| v.abs() <= bound));
        // Spread over the whole interval, not a constant.
        let max = a.weight.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(max > 0.9 * bound, "{max}");
        assert_eq!(new_head(64, 5, 7).weight, a.weight);
        assert_ne!(new_head(64, 5, 8).weight, a.weight);
    }

    #[test]
    fn averaging_keeps_the_mean_of_the_second_half_of_the_epochs() {
        let epoch = |v: f32| {
            let tensors = TensorMap::from([(
                "w".to_string(),
                crate::weights::TensorData {
                    shape: vec![2],
                    data: vec![v, -2.0 * v],
                },
            )]);
            let head = HeadWeights {
                dim: 1,
                classes: 2,
                weight: vec![v, 1.0],
                bias: vec![3.0 * v, 0.0],
            };
            (tensors, head)
        };
        let mut sum = None;
        for v in [1.0, 2.0, 6.0] {
            let (tensors, head) = epoch(v);
            WeightSum::add(&mut sum, tensors, head);
        }
        let (tensors, head) = sum.unwrap().mean();
        assert_eq!(tensors["w"].data, vec![3.0, -6.0]);
        assert_eq!(tensors["w"].shape, vec![2]);
        assert_eq!((head.weight, head.bias), (vec![3.0, 1.0], vec![9.0, 0.0]));
        // 7 epochs: 4-7 are averaged; 1 epoch: that one.
        assert_eq!(Keep::first_averaged(7), 4);
        assert_eq!(Keep::first_averaged(10), 6);
        assert_eq!(Keep::first_averaged(1), 1);
    }

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        assert!((schedule(0, 4, 20) - 0.25).abs() < 1e-12);
        assert!((schedule(3, 4, 20) - 1.0).abs() < 1e-12);
        assert!((schedule(4, 4, 20) - 1.0).abs() < 1e-12);
        assert!(schedule(12, 4, 20) < schedule(8, 4, 20));
        assert!(schedule(19, 4, 20) < 0.02);
        assert_eq!(Schedule::Cosine.factor(12, 4, 20), schedule(12, 4, 20));
        assert!((0..20).all(|step| Schedule::Constant.factor(step, 4, 20) == 1.0));
    }
}
