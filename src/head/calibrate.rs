//! Temperature scaling (Guo et al. 2017): one number `T` that the head's logits are
//! divided by before the softmax, fitted after training so that the scores mean what
//! they say, and the calibration error it is judged by.
//!
//! `T` leaves the ranking of the classes (hence accuracy) untouched; it only sharpens
//! (`T < 1`) or softens (`T > 1`) every answer. It is fitted by minimising the negative
//! log-likelihood of the validation split's logits: a 1-D smooth problem, solved by
//! golden-section search on `ln T` (no crate needed for forty lines of it).

use serde::Serialize;

/// Bins of the expected calibration error and of the reliability diagram (the
/// customary 15 of Guo et al.).
pub const ECE_BINS: usize = 15;

/// The temperatures searched: wide enough for any head graft trains.
const LN_T_RANGE: (f64, f64) = (-3.0, 3.0);

/// Softmax of `logits / temperature`.
pub fn softmax_at(logits: &[f32], temperature: f32) -> Vec<f32> {
    let t = if temperature > 0.0 && temperature.is_finite() {
        temperature
    } else {
        1.0
    };
    let scaled: Vec<f32> = logits.iter().map(|v| v / t).collect();
    crate::backbone::imagenet::softmax(&scaled)
}

/// Mean negative log-likelihood of the true classes at temperature `t`, in f64 so the
/// search sees a smooth curve.
pub fn nll(logits: &[Vec<f32>], truth: &[usize], t: f64) -> f64 {
    let mut total = 0.0;
    for (row, &class) in logits.iter().zip(truth) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let sum: f64 = row.iter().map(|&v| ((v as f64 - max) / t).exp()).sum();
        let true_logit = row.get(class).copied().unwrap_or(f32::NEG_INFINITY) as f64;
        total -= (true_logit - max) / t - sum.ln();
    }
    total / logits.len().max(1) as f64
}

/// The temperature minimising [`nll`] on `logits` / `truth`; 1 when there is nothing
/// to fit on, the likelihood is not finite (a broken row), or every row is already
/// right: then the likelihood only grows as `T` shrinks, and the "fit" would make every
/// later answer certain on the evidence of a validation split too easy to tell.
pub fn fit_temperature(logits: &[Vec<f32>], truth: &[usize]) -> f32 {
    let all_right = logits.iter().zip(truth).all(|(row, &class)| {
        crate::predict::top_k(row, 1)
            .first()
            .is_some_and(|&(best, _)| best == class)
    });
    if logits.is_empty() || all_right || !nll(logits, truth, 1.0).is_finite() {
        return 1.0;
    }
    let f = |ln_t: f64| nll(logits, truth, ln_t.exp());
    let ratio = (5f64.sqrt() - 1.0) / 2.0;
    let (mut lo, mut hi) = LN_T_RANGE;
    let mut a = hi - ratio * (hi - lo);
    let mut b = lo + ratio * (hi - lo);
    let (mut fa, mut fb) = (f(a), f(b));
    // 60 steps shrink the interval by 0.618^60: far below f32's resolution.
    for _ in 0..60 {
        if fa < fb {
            hi = b;
            b = a;
            fb = fa;
            a = hi - ratio * (hi - lo);
            fa = f(a);
        } else {
            lo = a;
            a = b;
            fa = fb;
            b = lo + ratio * (hi - lo);
            fb = f(b);
        }
    }
    ((lo + hi) / 2.0).exp() as f32
}

/// How well the scores mean what they say on the evaluated photos, before and after
/// the bundle's temperature.
#[derive(Debug, Clone, Serialize)]
pub struct CalibrationReport {
    pub temperature: f32,
    pub ece_uncalibrated: f64,
    pub ece_calibrated: f64,
    pub reliability_uncalibrated: Vec<ReliabilityBin>,
    pub reliability_calibrated: Vec<ReliabilityBin>,
}

/// One bin of a reliability diagram: the answers whose top score fell in
/// `[lower, upper)` (the last bin includes 1).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReliabilityBin {
    pub lower: f64,
    pub upper: f64,
    pub count: usize,
    /// Mean top score of the bin's answers (0 when empty).
    pub confidence: f64,
    /// Fraction of them that were right (0 when empty).
    pub accuracy: f64,
}

/// The reliability diagram of `probs` against `truth` in `bins` equal-width bins of the
/// top score.
pub fn reliability(probs: &[Vec<f32>], truth: &[usize], bins: usize) -> Vec<ReliabilityBin> {
    let bins = bins.max(1);
    let mut count = vec![0usize; bins];
    let mut confidence = vec![0f64; bins];
    let mut right = vec![0usize; bins];
    for (row, &class) in probs.iter().zip(truth) {
        let (best, score) = crate::predict::top_k(row, 1)
            .first()
            .copied()
            .unwrap_or((usize::MAX, 0.0));
        let score = if score.is_finite() { score as f64 } else { 0.0 };
        let bin = ((score * bins as f64) as usize).min(bins - 1);
        count[bin] += 1;
        confidence[bin] += score;
        right[bin] += usize::from(best == class);
    }
    (0..bins)
        .map(|b| {
            let n = count[b].max(1) as f64;
            ReliabilityBin {
                lower: b as f64 / bins as f64,
                upper: (b + 1) as f64 / bins as f64,
                count: count[b],
                confidence: confidence[b] / n,
                accuracy: right[b] as f64 / n,
            }
        })
        .collect()
}

/// Expected calibration error: the gap between confidence and accuracy per bin,
/// weighted by the bin's share of the answers.
pub fn ece(probs: &[Vec<f32>], truth: &[usize], bins: usize) -> f64 {
    let total = probs.len().max(1) as f64;
    reliability(probs, truth, bins)
        .iter()
        .map(|b| b.count as f64 / total * (b.confidence - b.accuracy).abs())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ece_of_hand_made_scores() {
        // Two answers at 0.95 (one right), two at 0.6 (both right), 2 bins.
        let probs = vec![
            vec![0.95, 0.05],
            vec![0.95, 0.05],
            vec![0.4, 0.6],
            vec![0.4, 0.6],
        ];
        let truth = vec![0, 1, 1, 1];
        let bins = reliability(&probs, &truth, 2);
        assert_eq!(bins[1].count, 4);
        assert!((bins[1].confidence - 0.775).abs() < 1e-6);
        assert!((bins[1].accuracy - 0.75).abs() < 1e-9);
        assert!((ece(&probs, &truth, 2) - 0.025).abs() < 1e-6);
        let bins = reliability(&probs, &truth, 10);
        // |0.95 - 0.5| * 1/2 + |0.6 - 1| * 1/2
        assert_eq!(bins[9].count, 2);
        assert!((ece(&probs, &truth, 10) - 0.425).abs() < 1e-6);
        // Always right at full confidence: no error.
        assert!(ece(&[vec![1.0, 0.0]], &[0], 15).abs() < 1e-9);
    }

    #[test]
    fn the_fitted_temperature_undoes_a_known_scaling() {
        // Logits drawn as a calibrated model's, then sharpened 3x: T ≈ 3 undoes it.
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut logits = Vec::new();
        let mut truth = Vec::new();
        for _ in 0..4000 {
            let row: Vec<f32> = (0..4).map(|_| rng.gen_range(-2.0..2.0)).collect();
            let p = softmax_at(&row, 1.0);
            let u: f32 = rng.gen();
            let mut acc = 0.0;
            let class = p
                .iter()
                .position(|&q| {
                    acc += q;
                    u < acc
                })
                .unwrap_or(3);
            logits.push(row.iter().map(|v| v * 3.0).collect());
            truth.push(class);
        }
        let t = fit_temperature(&logits, &truth);
        assert!((t - 3.0).abs() < 0.3, "{t}");
        assert!(nll(&logits, &truth, t as f64) < nll(&logits, &truth, 1.0));
        assert_eq!(fit_temperature(&[], &[]), 1.0);
        // Every row right: no finite optimum, the logits are kept as they are.
        assert_eq!(
            fit_temperature(&[vec![2.0, 0.0], vec![0.0, 1.0]], &[0, 1]),
            1.0
        );
    }

    #[test]
    fn temperature_keeps_the_ranking() {
        let p = softmax_at(&[2.0, 1.0, 0.0], 2.0);
        assert!(p[0] > p[1] && p[1] > p[2]);
        assert!(p[0] < softmax_at(&[2.0, 1.0, 0.0], 1.0)[0]);
    }
}
