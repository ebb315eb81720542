//! Class balance: how many images each class has, from a class-folder tree or from a
//! labels CSV, and the figures that say whether the classes need balancing.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use crate::dataset::organize::read_labels_csv;
use crate::dataset::{scan_images, SkippedEntry};
use crate::error::{Error, Result};

/// Classes with fewer images than this are flagged: too few to learn from or to
/// measure on (the seed project balanced every class up to 600).
pub const SMALL_CLASS: u64 = 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassCount {
    pub label: String,
    pub count: u64,
}

/// Image counts per class, largest first (ties by label), so the table and the chart
/// read the same whatever the order the images were found in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassStats {
    /// The folder or CSV the counts come from.
    pub source: PathBuf,
    pub classes: Vec<ClassCount>,
    /// Images directly in the root folder: in no class, so not counted (training
    /// ignores them too).
    pub unassigned: u64,
    /// Entries of the folder walk that could not be read, each with its reason.
    pub skipped: Vec<SkippedEntry>,
    /// What the folder walk noticed without skipping anything (links not followed).
    pub warnings: Vec<String>,
}

impl ClassStats {
    pub fn new(
        source: impl Into<PathBuf>,
        counts: impl IntoIterator<Item = (String, u64)>,
    ) -> Self {
        let mut classes: Vec<ClassCount> = counts
            .into_iter()
            .map(|(label, count)| ClassCount { label, count })
            .collect();
        classes.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.label.cmp(&b.label)));
        ClassStats {
            source: source.into(),
            classes,
            unassigned: 0,
            skipped: Vec::new(),
            warnings: Vec::new(),
        }
    }

    pub fn total(&self) -> u64 {
        self.classes.iter().map(|c| c.count).sum()
    }

    /// `count` as a fraction of all images (0 when there are none).
    pub fn share(&self, count: u64) -> f64 {
        match self.total() {
            0 => 0.0,
            total => count as f64 / total as f64,
        }
    }

    /// Largest class over smallest; `None` without classes, infinite if one is empty.
    pub fn imbalance_ratio(&self) -> Option<f64> {
        let largest = self.classes.first()?;
        let smallest = self.classes.last()?;
        Some(largest.count as f64 / smallest.count as f64)
    }

    /// Classes with fewer than `threshold` images, smallest first.
    pub fn below(&self, threshold: u64) -> Vec<&ClassCount> {
        self.classes
            .iter()
            .rev()
            .filter(|c| c.count < threshold)
            .collect()
    }
}

/// Counts images per class folder under `root`. A class is a folder that directly
/// holds images, and its label is the folder's name, as training reads the tree;
/// images directly in `root` belong to no class and are only counted in
/// [`ClassStats::unassigned`]. Where two folders share a name (`Fruit/Mixed`,
/// `Vegetables/Mixed`), their paths relative to `root` are shown instead, so that
/// no two classes merge in the table.
pub fn class_folder_counts(root: &Path) -> Result<ClassStats> {
    let mut per_folder: BTreeMap<String, u64> = BTreeMap::new();
    let mut unassigned = 0;
    let scan = scan_images(root)?;
    for entry in scan.images {
        match entry.relative.rsplit_once('/') {
            Some((folder, _)) => *per_folder.entry(folder.to_string()).or_default() += 1,
            None => unassigned += 1,
        }
    }
    if per_folder.is_empty() {
        return Err(Error::invalid_input(
            root,
            "holds no class folders with images; expected one folder per class with the \
             images inside",
        ));
    }
    let name_of = |folder: &str| folder.rsplit('/').next().unwrap_or(folder).to_string();
    let mut uses: HashMap<String, usize> = HashMap::new();
    for folder in per_folder.keys() {
        *uses.entry(name_of(folder)).or_default() += 1;
    }
    let counts = per_folder.into_iter().map(|(folder, count)| {
        let name = name_of(&folder);
        let label = if uses.get(&name).copied().unwrap_or(0) > 1 {
            folder
        } else {
            name
        };
        (label, count)
    });
    let mut stats = ClassStats::new(root, counts);
    stats.unassigned = unassigned;
    stats.skipped = scan.skipped;
    stats.warnings = scan.warnings;
    Ok(stats)
}

/// Counts the label column of a labels CSV (see [`read_labels_csv`] for the format).
pub fn labels_csv_counts(csv: &Path) -> Result<ClassStats> {
    let labels = read_labels_csv(csv)?;
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for row in labels.rows {
        *counts.entry(row.label).or_default() += 1;
    }
    Ok(ClassStats::new(csv, counts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_largest_first_with_shares_ratio_and_small_classes() {
        let stats = ClassStats::new(
            "x",
            [
                ("b".to_string(), 10),
                ("a".to_string(), 30),
                ("c".to_string(), 10),
            ],
        );
        let labels: Vec<_> = stats.classes.iter().map(|c| c.label.as_str()).collect();
        assert_eq!(labels, ["a", "b", "c"]);
        assert_eq!(stats.total(), 50);
        assert!((stats.share(30) - 0.6).abs() < 1e-12);
        assert_eq!(stats.imbalance_ratio(), Some(3.0));
        let small: Vec<_> = stats.below(20).iter().map(|c| c.label.as_str()).collect();
        assert_eq!(small, ["c", "b"]);
    }

    #[test]
    fn folders_that_hold_images_are_classes_and_shared_names_stay_apart() {
        let dir = tempfile::tempdir().unwrap();
        for p in [
            "Fruit/Apple/a.jpg",
            "Fruit/Apple/b.jpg",
            "Fruit/Mixed/c.png",
            "Veg/Mixed/d.png",
            "Veg/Leek/e.JPG",
            "Veg/Leek/notes.txt",
            "loose.jpg",
        ] {
            let path = dir.path().join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, b"x").unwrap();
        }
        let stats = class_folder_counts(dir.path()).unwrap();
        let got: Vec<_> = stats
            .classes
            .iter()
            .map(|c| (c.label.as_str(), c.count))
            .collect();
        assert_eq!(
            got,
            [
                ("Apple", 2),
                ("Fruit/Mixed", 1),
                ("Leek", 1),
                ("Veg/Mixed", 1)
            ]
        );
        assert_eq!(stats.unassigned, 1, "loose.jpg is in no class");
    }

    #[test]
    fn an_empty_tree_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let err = class_folder_counts(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains(&dir.path().display().to_string()) && err.contains("no class folders")
        );
    }
}
