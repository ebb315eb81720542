//! Evaluation metrics computed from a classifier's predictions: accuracy, the confusion
//! matrix, per-class precision / recall / F1 and the list of misclassified samples.
//!
//! Everything here is pure arithmetic on (true class, probabilities) pairs, so it is the
//! same whether the predictions come from `train`'s test split or from `evaluate`.

use serde::Serialize;

use crate::error::{Error, Result};

/// How many classes "top-5" accuracy looks at; clipped to the number of classes.
const TOP_K: usize = 5;

/// The metrics of one evaluation run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evaluation {
    /// Class names; index = class id.
    pub labels: Vec<String>,
    /// Number of samples evaluated.
    pub samples: usize,
    /// Samples whose highest-probability class is the true class.
    pub correct: usize,
    /// `correct / samples`.
    pub top1_accuracy: f64,
    /// The `k` used for `top5_accuracy`: 5, or the number of classes when there are fewer.
    pub top_k: usize,
    /// Fraction of samples whose true class is among the `top_k` most probable ones.
    pub top5_accuracy: f64,
    /// `confusion[true][predicted]` = number of samples.
    pub confusion: Vec<Vec<u32>>,
    /// One entry per class, in class-id order.
    pub per_class: Vec<ClassMetrics>,
    /// Unweighted means over the classes that have at least one sample (see [`evaluate`]).
    pub macro_precision: f64,
    pub macro_recall: f64,
    pub macro_f1: f64,
    /// Misclassified samples, most confidently wrong first (ties by sample index).
    pub misclassified: Vec<Misclassified>,
}

/// Precision, recall and F1 of one class.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassMetrics {
    pub label: String,
    /// Of the samples predicted as this class, the fraction that are; 0 when the class
    /// was never predicted.
    pub precision: f64,
    /// Of the samples of this class, the fraction predicted as it; 0 when it has none.
    pub recall: f64,
    /// Harmonic mean of precision and recall; 0 when both are 0.
    pub f1: f64,
    /// Number of samples whose true class is this one.
    pub support: u32,
}

/// One sample the classifier got wrong.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Misclassified {
    /// Position of the sample in the input slices.
    pub index: usize,
    /// True class id.
    pub truth: usize,
    /// Predicted (highest-probability) class id.
    pub predicted: usize,
    /// Probability given to the predicted class.
    pub predicted_probability: f32,
    /// Probability given to the true class.
    pub true_probability: f32,
}

/// Computes the metrics of `probs` against `truth`.
///
/// - `labels`: class names, index = class id.
/// - `truth`: the true class id of each sample.
/// - `probs`: per sample, the softmax over all classes (`labels.len()` values).
///
/// The prediction is the class with the highest probability, ties going to the lower
/// class id (the same rule decides top-k membership). NaN probabilities rank below
/// every number, so a broken row counts as wrong rather than crashing the run.
///
/// Conventions for empty denominators: the precision of a class never predicted is 0,
/// the recall of a class with no samples is 0, and F1 is 0 when precision + recall = 0.
/// The macro averages only include classes with at least one sample, so a class that is
/// missing from the evaluation set does not drag the averages down.
///
/// Errors when there are no samples or no classes, when `truth` and `probs` differ in
/// length, when a row of `probs` does not have one value per class, or when a true class
/// id is out of range.
pub fn evaluate(labels: &[String], truth: &[usize], probs: &[Vec<f32>]) -> Result<Evaluation> {
    let classes = labels.len();
    if classes == 0 {
        return Err(Error::Invalid(
            "cannot evaluate: the model has no classes".into(),
        ));
    }
    if truth.is_empty() {
        return Err(Error::Invalid(
            "cannot evaluate: there are no samples; check that the image folder has images of the model's classes".into(),
        ));
    }
    if truth.len() != probs.len() {
        return Err(Error::Invalid(format!(
            "cannot evaluate: {} true labels but {} predictions",
            truth.len(),
            probs.len()
        )));
    }

    let top_k = TOP_K.min(classes);
    let mut confusion = vec![vec![0u32; classes]; classes];
    let mut correct = 0usize;
    let mut in_top_k = 0usize;
    let mut misclassified = Vec::new();

    for (index, (&true_class, row)) in truth.iter().zip(probs).enumerate() {
        if row.len() != classes {
            return Err(Error::Invalid(format!(
                "cannot evaluate: prediction {index} has {} probabilities for {classes} classes",
                row.len()
            )));
        }
        if true_class >= classes {
            return Err(Error::Invalid(format!(
                "cannot evaluate: sample {index} has class id {true_class}, but there are only {classes} classes"
            )));
        }
        let predicted = argmax(row);
        confusion[true_class][predicted] += 1;
        if rank_of(row, true_class) < top_k {
            in_top_k += 1;
        }
        if predicted == true_class {
            correct += 1;
        } else {
            misclassified.push(Misclassified {
                index,
                truth: true_class,
                predicted,
                predicted_probability: row[predicted],
                true_probability: row[true_class],
            });
        }
    }

    // Most confidently wrong first: those are the ones worth looking at (often a
    // mislabelled photo). total_cmp keeps the order total even with NaN.
    misclassified.sort_by(|a, b| {
        b.predicted_probability
            .total_cmp(&a.predicted_probability)
            .then(a.index.cmp(&b.index))
    });

    let per_class: Vec<ClassMetrics> = (0..classes)
        .map(|class| {
            let true_positives = confusion[class][class];
            let support: u32 = confusion[class].iter().sum();
            let predicted: u32 = confusion.iter().map(|row| row[class]).sum();
            let precision = ratio(true_positives, predicted);
            let recall = ratio(true_positives, support);
            let f1 = if precision + recall > 0.0 {
                2.0 * precision * recall / (precision + recall)
            } else {
                0.0
            };
            ClassMetrics {
                label: labels[class].clone(),
                precision,
                recall,
                f1,
                support,
            }
        })
        .collect();

    let present: Vec<&ClassMetrics> = per_class.iter().filter(|c| c.support > 0).collect();
    let mean = |field: fn(&ClassMetrics) -> f64| -> f64 {
        // `present` is never empty: there is at least one sample, hence one class with support.
        present.iter().map(|c| field(c)).sum::<f64>() / present.len().max(1) as f64
    };
    let macro_precision = mean(|c| c.precision);
    let macro_recall = mean(|c| c.recall);
    let macro_f1 = mean(|c| c.f1);

    let samples = truth.len();
    Ok(Evaluation {
        labels: labels.to_vec(),
        samples,
        correct,
        top1_accuracy: correct as f64 / samples as f64,
        top_k,
        top5_accuracy: in_top_k as f64 / samples as f64,
        confusion,
        per_class,
        macro_precision,
        macro_recall,
        macro_f1,
        misclassified,
    })
}

fn ratio(numerator: u32, denominator: u32) -> f64 {
    if denominator == 0 {
        0.0
    } else {
        f64::from(numerator) / f64::from(denominator)
    }
}

/// `true` when class `a` (probability `pa`) ranks above class `b` (probability `pb`):
/// higher probability first, then lower class id; NaN below everything.
fn ranks_above(pa: f32, a: usize, pb: f32, b: usize) -> bool {
    match (pa.is_nan(), pb.is_nan()) {
        (false, true) => true,
        (true, false) => false,
        (true, true) => a < b,
        (false, false) => pa > pb || (pa == pb && a < b),
    }
}

/// The top-ranked class of a non-empty row.
fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (class, &p) in row.iter().enumerate().skip(1) {
        if ranks_above(p, class, row[best], best) {
            best = class;
        }
    }
    best
}

/// How many classes rank above `class` (0 = it is the prediction).
fn rank_of(row: &[f32], class: usize) -> usize {
    let p = row[class];
    row.iter()
        .enumerate()
        .filter(|&(other, &q)| other != class && ranks_above(q, other, p, class))
        .count()
}

impl Evaluation {
    /// The confusion matrix as CSV: a header `true\pred,<labels...>`, then one row per
    /// true class starting with its label. Labels are quoted as CSV requires.
    pub fn confusion_csv(&self) -> String {
        let mut writer = csv::Writer::from_writer(Vec::new());
        let header = std::iter::once("true\\pred").chain(self.labels.iter().map(String::as_str));
        // Writing CSV into a Vec<u8> cannot fail: there is no I/O, and every record has
        // the same number of fields. Fall back to an empty string rather than panic.
        let mut ok = writer.write_record(header).is_ok();
        for (label, row) in self.labels.iter().zip(&self.confusion) {
            let record =
                std::iter::once(label.clone()).chain(row.iter().map(|count| count.to_string()));
            ok &= writer.write_record(record).is_ok();
        }
        match writer.into_inner() {
            Ok(bytes) if ok => String::from_utf8(bytes).unwrap_or_default(),
            _ => String::new(),
        }
    }

    /// Per-class precision / recall / F1 / support as an aligned text table, followed by
    /// the macro averages and the accuracies.
    pub fn per_class_table(&self) -> String {
        const MACRO: &str = "macro average";
        let width = self
            .labels
            .iter()
            .map(|label| label.chars().count())
            .chain([MACRO.len(), "class".len()])
            .max()
            .unwrap_or(0)
            // A longer label overflows its column instead of padding every row (std's
            // format width is a u16 and panics past it).
            .min(60);
        let mut out = format!(
            "{:<width$}  {:>9}  {:>6}  {:>6}  {:>7}\n",
            "class", "precision", "recall", "f1", "support"
        );
        for class in &self.per_class {
            out += &format!(
                "{:<width$}  {:>9.4}  {:>6.4}  {:>6.4}  {:>7}\n",
                class.label, class.precision, class.recall, class.f1, class.support
            );
        }
        out += &format!(
            "{:<width$}  {:>9.4}  {:>6.4}  {:>6.4}  {:>7}\n",
            MACRO, self.macro_precision, self.macro_recall, self.macro_f1, self.samples
        );
        out += &format!(
            "\ntop-1 accuracy {:.2}% ({} of {}), top-{} accuracy {:.2}%\n",
            self.top1_accuracy * 100.0,
            self.correct,
            self.samples,
            self.top_k,
            self.top5_accuracy * 100.0
        );
        out
    }

    /// The `n` most frequent confusions as `(true class, predicted class, count)`,
    /// largest count first, ties by true then predicted class id. Only off-diagonal
    /// cells with a non-zero count appear.
    pub fn top_confused_pairs(&self, n: usize) -> Vec<(usize, usize, u32)> {
        let mut pairs: Vec<(usize, usize, u32)> = self
            .confusion
            .iter()
            .enumerate()
            .flat_map(|(truth, row)| {
                row.iter()
                    .enumerate()
                    .filter(move |&(predicted, &count)| predicted != truth && count > 0)
                    .map(move |(predicted, &count)| (truth, predicted, count))
            })
            .collect();
        pairs.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)).then(a.1.cmp(&b.1)));
        pairs.truncate(n);
        pairs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    /// 3 classes, 6 samples. Predictions (argmax):
    ///   0: true a, pred a          3: true b, pred c (0.6)
    ///   1: true a, pred b (0.7)    4: true c, pred c
    ///   2: true b, pred b          5: true c, pred a (0.5)
    fn three_class_example() -> Evaluation {
        let probs = vec![
            vec![0.8, 0.1, 0.1],
            vec![0.2, 0.7, 0.1],
            vec![0.1, 0.8, 0.1],
            vec![0.1, 0.3, 0.6],
            vec![0.1, 0.1, 0.8],
            vec![0.5, 0.1, 0.4],
        ];
        evaluate(&labels(&["a", "b", "c"]), &[0, 0, 1, 1, 2, 2], &probs).unwrap()
    }

    #[test]
    fn hand_computed_three_class_metrics() {
        let e = three_class_example();
        assert_eq!(e.samples, 6);
        assert_eq!(e.correct, 3);
        assert!(close(e.top1_accuracy, 0.5));
        // k is clipped to 3 classes, so every sample is in the top 3.
        assert_eq!(e.top_k, 3);
        assert!(close(e.top5_accuracy, 1.0));
        assert_eq!(
            e.confusion,
            vec![vec![1, 1, 0], vec![0, 1, 1], vec![1, 0, 1]]
        );

        // Each class: TP 1, predicted 2, support 2 -> P = R = F1 = 0.5.
        for class in &e.per_class {
            assert!(close(class.precision, 0.5), "{class:?}");
            assert!(close(class.recall, 0.5), "{class:?}");
            assert!(close(class.f1, 0.5), "{class:?}");
            assert_eq!(class.support, 2);
        }
        assert!(close(e.macro_precision, 0.5));
        assert!(close(e.macro_f1, 0.5));

        let order: Vec<(usize, usize, usize)> = e
            .misclassified
            .iter()
            .map(|m| (m.index, m.truth, m.predicted))
            .collect();
        assert_eq!(order, vec![(1, 0, 1), (3, 1, 2), (5, 2, 0)]);
        assert_eq!(e.misclassified[0].predicted_probability, 0.7);
        assert_eq!(e.misclassified[0].true_probability, 0.2);
        assert_eq!(e.misclassified[2].true_probability, 0.4);
    }

    #[test]
    fn unbalanced_precision_recall_and_never_predicted_class() {
        // truth:     a a a b b c
        // predicted: a a b a b a   (c is never predicted)
        let probs = vec![
            vec![0.9, 0.05, 0.05],
            vec![0.6, 0.3, 0.1],
            vec![0.3, 0.6, 0.1],
            vec![0.7, 0.2, 0.1],
            vec![0.1, 0.8, 0.1],
            vec![0.4, 0.35, 0.25],
        ];
        let e = evaluate(&labels(&["a", "b", "c"]), &[0, 0, 0, 1, 1, 2], &probs).unwrap();
        assert_eq!(
            e.confusion,
            vec![vec![2, 1, 0], vec![1, 1, 0], vec![1, 0, 0]]
        );
        // a: TP 2, predicted 4, support 3 -> P 0.5, R 2/3, F1 = 2*(1/3)/(7/6) = 4/7
        let a = &e.per_class[0];
        assert!(close(a.precision, 0.5));
        assert!(close(a.recall, 2.0 / 3.0));
        assert!(close(a.f1, 4.0 / 7.0));
        // b: TP 1, predicted 2, support 2 -> 0.5 / 0.5 / 0.5
        let b = &e.per_class[1];
        assert!(close(b.precision, 0.5) && close(b.recall, 0.5) && close(b.f1, 0.5));
        // c: never predicted -> precision 0, recall 0, F1 0 (not NaN)
        let c = &e.per_class[2];
        assert_eq!((c.precision, c.recall, c.f1, c.support), (0.0, 0.0, 0.0, 1));
        assert!(close(e.macro_precision, 1.0 / 3.0));
        assert!(close(e.macro_recall, (2.0 / 3.0 + 0.5) / 3.0));
        assert!(close(e.macro_f1, (4.0 / 7.0 + 0.5) / 3.0));
        assert!(close(e.top1_accuracy, 0.5));
        // Most confident mistake first: sample 3 (0.7), then 2 (0.6), then 5 (0.4).
        let order: Vec<usize> = e.misclassified.iter().map(|m| m.index).collect();
        assert_eq!(order, vec![3, 2, 5]);
    }

    #[test]
    fn top5_with_more_classes_and_ties_going_to_lower_index() {
        // 7 classes. Sample 0: true class 6 ranked 6th -> out of top 5.
        // Sample 1: all equal, true class 4 -> rank 4 (ties by lower index) -> in top 5,
        // and the prediction is class 0.
        // Sample 2: all equal, true class 5 -> rank 5 -> out of top 5.
        let names = labels(&["c0", "c1", "c2", "c3", "c4", "c5", "c6"]);
        let probs = vec![
            vec![0.30, 0.20, 0.15, 0.12, 0.10, 0.08, 0.05],
            vec![1.0 / 7.0; 7],
            vec![1.0 / 7.0; 7],
        ];
        let e = evaluate(&names, &[6, 4, 5], &probs).unwrap();
        assert_eq!(e.top_k, 5);
        assert!(close(e.top5_accuracy, 1.0 / 3.0));
        assert_eq!(e.correct, 0);
        assert_eq!(e.confusion[4][0], 1);
        assert_eq!(e.confusion[5][0], 1);
        // Equal confidence 1/7 for samples 1 and 2: ties by index.
        let order: Vec<usize> = e.misclassified.iter().map(|m| m.index).collect();
        assert_eq!(order, vec![0, 1, 2]);
        // c6 has support 1 but the others without support are left out of the macro mean.
        assert!(close(e.macro_recall, 0.0));
    }

    #[test]
    fn nan_probabilities_rank_last_instead_of_panicking() {
        let probs = vec![vec![f32::NAN, 0.2, 0.1], vec![f32::NAN, f32::NAN, f32::NAN]];
        let e = evaluate(&labels(&["a", "b", "c"]), &[0, 2], &probs).unwrap();
        assert_eq!(e.confusion[0][1], 1);
        // An all-NaN row predicts class 0 (ties by lower index).
        assert_eq!(e.confusion[2][0], 1);
        assert_eq!(e.correct, 0);
    }

    #[test]
    fn rejects_inconsistent_inputs() {
        let names = labels(&["a", "b"]);
        let row = vec![0.5, 0.5];
        let err = |r: Result<Evaluation>| r.unwrap_err().to_string();
        assert!(err(evaluate(&names, &[], &[])).contains("no samples"));
        assert!(err(evaluate(&[], &[0], &[vec![1.0]])).contains("no classes"));
        assert!(err(evaluate(&names, &[0, 1], std::slice::from_ref(&row)))
            .contains("2 true labels but 1"));
        assert!(err(evaluate(&names, &[0], &[vec![1.0]])).contains("1 probabilities for 2"));
        assert!(err(evaluate(&names, &[2], &[row])).contains("class id 2"));
    }

    #[test]
    fn confusion_csv_quotes_labels() {
        let probs = vec![vec![0.9, 0.1], vec![0.8, 0.2]];
        let e = evaluate(&labels(&["milk, 1l", "eggs"]), &[0, 1], &probs).unwrap();
        assert_eq!(
            e.confusion_csv(),
            "true\\pred,\"milk, 1l\",eggs\n\"milk, 1l\",1,0\neggs,1,0\n"
        );
    }

    #[test]
    fn a_label_of_70000_characters_does_not_panic_the_table() {
        let long = "z".repeat(70_000);
        let probs = vec![vec![0.9, 0.1], vec![0.2, 0.8]];
        let e = evaluate(&[long.clone(), "b".to_string()], &[0, 1], &probs).unwrap();
        let table = e.per_class_table();
        assert!(
            table.lines().nth(1).unwrap().starts_with(&long),
            "{table:.200}"
        );
        assert!(table
            .lines()
            .nth(2)
            .unwrap()
            .starts_with(&format!("{:<60}  ", "b")));
    }

    #[test]
    fn per_class_table_is_aligned() {
        let e = three_class_example();
        let table = e.per_class_table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "class          precision  recall      f1  support"
        );
        assert_eq!(
            lines[1],
            "a                 0.5000  0.5000  0.5000        2"
        );
        assert_eq!(
            lines[4],
            "macro average     0.5000  0.5000  0.5000        6"
        );
        assert_eq!(
            lines[6],
            "top-1 accuracy 50.00% (3 of 6), top-3 accuracy 100.00%"
        );
        let widths: Vec<usize> = lines[..5].iter().map(|l| l.chars().count()).collect();
        assert!(widths.iter().all(|&w| w == widths[0]), "{table}");
    }

    #[test]
    fn top_confused_pairs_sorted_by_count_then_ids() {
        // truth a a a b b c c ; predicted b b c a a a c
        let p = |class: usize| {
            let mut row = vec![0.1f32; 3];
            row[class] = 0.8;
            row
        };
        let truth = [0, 0, 0, 1, 1, 2, 2];
        let predicted = [1, 1, 2, 0, 0, 0, 2];
        let probs: Vec<Vec<f32>> = predicted.iter().map(|&c| p(c)).collect();
        let e = evaluate(&labels(&["a", "b", "c"]), &truth, &probs).unwrap();
        assert_eq!(
            e.top_confused_pairs(10),
            vec![(0, 1, 2), (1, 0, 2), (0, 2, 1), (2, 0, 1)]
        );
        assert_eq!(e.top_confused_pairs(1), vec![(0, 1, 2)]);
    }

    #[test]
    fn serializes_to_json() {
        let json = serde_json::to_value(three_class_example()).unwrap();
        assert_eq!(json["top1_accuracy"], 0.5);
        assert_eq!(json["confusion"][0], serde_json::json!([1, 1, 0]));
        assert_eq!(json["per_class"][2]["label"], "c");
        assert_eq!(json["misclassified"][0]["index"], 1);
    }
}
