//! Answering "unknown": what refusing low-confidence photos costs and buys
//! (coverage, accuracy of what is answered, the risk-coverage curve), how well a score
//! separates photos of classes the model knows from photos of classes it never saw
//! (AUROC), and the rejection scores compared for that.

use serde::Serialize;

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
