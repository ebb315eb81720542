//! The class tree: each class's path from the top of the taxonomy down to it
//! (`Fruit/Apple/Granny-Smith`), and the levels a prediction is scored at.
//!
//! The leaf is the class, as everywhere in graft; a path only adds the groups above
//! it. Level `L` groups the classes by the first `L` parts of their paths, so for the
//! grocery photos level 1 is Fruit / Packages / Vegetables and level 2 is the dataset's
//! 43 "coarse" classes (Fruit/Apple, Fruit/Banana, Packages/Juice). A class whose path
//! is shorter than `L` is its own group there (Fruit/Banana at level 3). The deepest
//! level is the classes themselves ("fine").

use crate::error::{Error, Result};
use crate::metrics::{evaluate, Evaluation};

/// The class paths of a model, index-aligned with its labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Taxonomy {
    paths: Vec<String>,
}

/// One level of the tree: its groups (sorted) and the group of every class.
#[derive(Debug, Clone, PartialEq)]
pub struct Level {
    /// `level 1`, `level 2`, ..., and `fine` for the classes themselves.
    pub name: String,
    pub groups: Vec<String>,
    /// Index into `groups`, per class.
    pub of_class: Vec<usize>,
}

/// The first `level` parts of a `/`-separated path (the whole path when it is shorter).
pub fn ancestor(path: &str, level: usize) -> &str {
    match path.match_indices('/').nth(level.saturating_sub(1)) {
        Some((at, _)) if level > 0 => &path[..at],
        _ => path,
    }
}

/// The last part of a path: the class name.
pub fn leaf(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

impl Taxonomy {
    /// `paths[i]` is the path of class `i`; its last part must be the class's label.
    pub fn new(labels: &[String], paths: Vec<String>) -> Result<Taxonomy> {
        if paths.len() != labels.len() {
            return Err(Error::Invalid(format!(
                "{} class paths for {} labels",
                paths.len(),
                labels.len()
            )));
        }
        for (label, path) in labels.iter().zip(&paths) {
            if leaf(path) != label || path.split('/').any(str::is_empty) {
                return Err(Error::Invalid(format!(
                    "class path '{path}' does not end in its label '{label}'"
                )));
            }
        }
        Ok(Taxonomy { paths })
    }

    /// A model without a tree: every class is its own path.
    pub fn flat(labels: &[String]) -> Taxonomy {
        Taxonomy {
            paths: labels.to_vec(),
        }
    }

    pub fn paths(&self) -> &[String] {
        &self.paths
    }

    pub fn path(&self, class: usize) -> &str {
        self.paths.get(class).map(String::as_str).unwrap_or("")
    }

    /// Parts in the longest path (1 for a flat model).
    pub fn depth(&self) -> usize {
        self.paths
            .iter()
            .map(|p| p.split('/').count())
            .max()
            .unwrap_or(1)
    }

    /// The levels to score, top first, ending with `fine`. Level `depth` is left out:
    /// every class is its own group there, the same as fine.
    pub fn levels(&self) -> Vec<Level> {
        let mut levels: Vec<Level> = (1..self.depth())
            .map(|level| {
                let mut groups: Vec<String> = self
                    .paths
                    .iter()
                    .map(|p| ancestor(p, level).to_string())
                    .collect();
                groups.sort();
                groups.dedup();
                let of_class = self
                    .paths
                    .iter()
                    .map(|p| {
                        groups
                            .binary_search(&ancestor(p, level).to_string())
                            .unwrap_or(0)
                    })
                    .collect();
                Level {
                    name: format!("level {level}"),
                    groups,
                    of_class,
                }
            })
            .collect();
        let fine: Vec<String> = self.paths.iter().map(|p| leaf(p).to_string()).collect();
        levels.push(Level {
            name: "fine".to_string(),
            of_class: (0..fine.len()).collect(),
            groups: fine,
        });
        levels
    }
}

impl Level {
    /// A class-probability row seen at this level: each group scores as its most
    /// probable class, so the level's top-1 is the group of the fine top-1 (a prediction
    /// counts at a level when its ancestor there is right) and its top-5 are the five
    /// best distinct groups.
    pub fn pool(&self, probs: &[f32]) -> Vec<f32> {
        let mut out = vec![f32::NEG_INFINITY; self.groups.len()];
        for (class, &p) in probs.iter().enumerate() {
            if let Some(&g) = self.of_class.get(class) {
                if p > out[g] || out[g].is_nan() {
                    out[g] = p;
                }
            }
        }
        out
    }

    /// The metrics at this level of fine `truth` / `probs` (as [`evaluate`] takes them).
    pub fn evaluate(&self, truth: &[usize], probs: &[Vec<f32>]) -> Result<Evaluation> {
        let truth: Vec<usize> = truth
            .iter()
            .map(|&t| self.of_class.get(t).copied().unwrap_or(usize::MAX))
            .collect();
        let pooled: Vec<Vec<f32>> = probs.iter().map(|row| self.pool(row)).collect();
        evaluate(&self.groups, &truth, &pooled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grocery() -> Taxonomy {
        let paths = [
            "Fruit/Apple/Granny-Smith",
            "Fruit/Apple/Pink-Lady",
            "Fruit/Banana",
            "Packages/Juice/Orange-Juice",
        ];
        let labels: Vec<String> = paths.iter().map(|p| leaf(p).to_string()).collect();
        Taxonomy::new(&labels, paths.iter().map(|p| p.to_string()).collect()).unwrap()
    }

    #[test]
    fn ancestors_stop_at_the_leaf() {
        assert_eq!(ancestor("Fruit/Apple/Granny-Smith", 1), "Fruit");
        assert_eq!(ancestor("Fruit/Apple/Granny-Smith", 2), "Fruit/Apple");
        assert_eq!(ancestor("Fruit/Banana", 2), "Fruit/Banana");
        assert_eq!(ancestor("Fruit/Banana", 3), "Fruit/Banana");
        assert_eq!(ancestor("Milk", 1), "Milk");
    }

    #[test]
    fn levels_group_by_path_prefix_and_end_with_fine() {
        let levels = grocery().levels();
        assert_eq!(levels.len(), 3);
        assert_eq!(levels[0].groups, vec!["Fruit", "Packages"]);
        assert_eq!(levels[0].of_class, vec![0, 0, 0, 1]);
        assert_eq!(
            levels[1].groups,
            vec!["Fruit/Apple", "Fruit/Banana", "Packages/Juice"]
        );
        assert_eq!(levels[1].of_class, vec![0, 0, 1, 2]);
        assert_eq!(levels[2].name, "fine");
        assert_eq!(levels[2].of_class, vec![0, 1, 2, 3]);
        assert_eq!(Taxonomy::flat(&["a".into(), "b".into()]).levels().len(), 1);
    }

    #[test]
    fn a_wrong_fine_answer_counts_at_the_level_where_its_ancestor_is_right() {
        let levels = grocery().levels();
        // Truth Granny-Smith: predicted Pink-Lady (same apple), then Banana (same fruit),
        // then Orange-Juice (wrong everywhere).
        let truth = vec![0, 0, 0];
        let probs = vec![
            vec![0.3, 0.6, 0.05, 0.05],
            vec![0.2, 0.1, 0.6, 0.1],
            vec![0.1, 0.1, 0.1, 0.7],
        ];
        let top1: Vec<f64> = levels
            .iter()
            .map(|l| l.evaluate(&truth, &probs).unwrap().top1_accuracy)
            .collect();
        assert!((top1[0] - 2.0 / 3.0).abs() < 1e-9, "{top1:?}");
        assert!((top1[1] - 1.0 / 3.0).abs() < 1e-9, "{top1:?}");
        assert_eq!(top1[2], 0.0);
        let e = levels[1].evaluate(&truth, &probs).unwrap();
        assert_eq!(e.top_k, 3);
        assert_eq!(e.confusion[0], vec![1, 1, 1]);
    }

    #[test]
    fn a_path_that_does_not_end_in_its_label_is_refused() {
        let err = Taxonomy::new(&["B".into()], vec!["A/C".into()]).unwrap_err();
        assert!(err.to_string().contains("'A/C'"), "{err}");
    }
}
