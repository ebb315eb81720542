//! A labelled dataset: images with class labels, from class folders or a labels CSV.
//! Class names are sorted, so label indices never depend on directory order.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::organize::{read_labels_csv, LabelsCsv};
use super::scan::{relative_slash_path, scan_images, ImageEntry, SkippedEntry};
use crate::error::{Error, Result};
use crate::image::{is_supported_image, SUPPORTED_EXTENSIONS};

/// Fewer images than this in a class draws a warning (retrain.py's threshold).
pub const MIN_IMAGES_PER_CLASS: usize = 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabeledImage {
    /// Path relative to the dataset root, `/`-separated: the image's identity for the
    /// split rule and in reports.
    pub relative: String,
    pub path: PathBuf,
    /// Index into [`Dataset::classes`].
    pub label: usize,
}

#[derive(Debug, Clone)]
pub struct Dataset {
    pub root: PathBuf,
    /// Sorted class names.
    pub classes: Vec<String>,
    /// Each class's path in the taxonomy (`Fruit/Apple/Granny-Smith`), index-aligned
    /// with `classes`: its folder relative to the root, or its label in a labels CSV.
    pub class_paths: Vec<String>,
    /// Sorted by relative path.
    pub images: Vec<LabeledImage>,
    /// Entries of the folder walk that could not be read, each with its reason.
    pub skipped: Vec<SkippedEntry>,
    /// What the folder walk noticed without skipping anything (links not followed).
    pub scan_warnings: Vec<String>,
}

/// The id and label column names of a labels CSV meant for `train`/`evaluate`, refusing
/// a file without a header: its first row would otherwise be taken for an image.
pub fn labels_csv_columns(csv: &LabelsCsv) -> Result<(String, String)> {
    match &csv.columns {
        Some(columns) => Ok(columns.clone()),
        None => {
            let first = csv
                .rows
                .first()
                .map(|r| format!("{},{}", r.image_id, r.label))
                .unwrap_or_default();
            Err(Error::invalid_input(
                &csv.path,
                format!(
                    "the first line `{first}` is not a header; start the file with a header \
                     line `path,label` or `image_id,label`"
                ),
            ))
        }
    }
}

/// The file a CSV row names: the path as given, or `<id>.<ext>` for an id without an
/// image extension (the first supported extension found, in any letter case).
fn resolve_image(root: &Path, id: &str) -> PathBuf {
    let given = root.join(id);
    if given.is_file() || is_supported_image(&given) {
        return given;
    }
    for ext in SUPPORTED_EXTENSIONS {
        for ext in [ext.to_string(), ext.to_ascii_uppercase()] {
            let candidate = root.join(format!("{id}.{ext}"));
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    given
}

impl Dataset {
    /// Every folder that directly holds images is a class, named after the folder, so
    /// nested trees like `train/Fruit/Apple/Granny-Smith/` work. Images directly in the
    /// root belong to no class and are ignored. The class of an image is the folder it
    /// is listed under; how links are walked is [`scan_images`]'s rule.
    pub fn from_class_folders(root: &Path) -> Result<Dataset> {
        let scan = scan_images(root)?;
        let mut dataset = Dataset::labelled_by_folder(root, scan.images)?;
        dataset.skipped = scan.skipped;
        dataset.scan_warnings = scan.warnings;
        Ok(dataset)
    }

    /// The class-folder rule of [`Dataset::from_class_folders`] applied to a listing
    /// (sorted by relative path) made elsewhere, such as the `path` column of Parquet
    /// features: `root` only names the source in messages.
    pub fn labelled_by_folder(root: &Path, entries: Vec<ImageEntry>) -> Result<Dataset> {
        // class name -> folder (relative) that defines it
        let mut folders: BTreeMap<String, String> = BTreeMap::new();
        let mut per_image = Vec::with_capacity(entries.len());
        for entry in entries {
            let Some((folder, _file)) = entry.relative.rsplit_once('/') else {
                continue;
            };
            let name = folder.rsplit('/').next().unwrap_or(folder).to_string();
            match folders.get(&name) {
                Some(existing) if existing != folder => {
                    return Err(Error::invalid_input(
                        root,
                        format!(
                            "two class folders are both named '{name}': '{existing}' and '{folder}'; \
                             rename one so every class has its own name"
                        ),
                    ));
                }
                Some(_) => {}
                None => {
                    folders.insert(name.clone(), folder.to_string());
                }
            }
            per_image.push((entry, name));
        }
        let (classes, class_paths): (Vec<String>, Vec<String>) = folders.into_iter().unzip();
        let images = per_image
            .into_iter()
            .map(|(entry, name)| LabeledImage {
                label: classes.binary_search(&name).unwrap_or(0),
                relative: entry.relative,
                path: entry.path,
            })
            .collect();
        let mut dataset = Dataset::new(root, classes, images)?;
        dataset.class_paths = class_paths;
        Ok(dataset)
    }

    /// Rows of a labels CSV with a header naming its columns: `path,label` or
    /// `image_id,label` as `organize` reads (and the other names it knows). Paths are
    /// relative to `images_root` (default: the CSV's folder); an id without an image
    /// extension names the file `<id>.<ext>` there, as in `organize`'s input.
    pub fn from_labels_csv(csv_path: &Path, images_root: Option<&Path>) -> Result<Dataset> {
        let root = match images_root {
            Some(r) => r.to_path_buf(),
            None => csv_path.parent().map(Path::to_path_buf).unwrap_or_default(),
        };
        let csv = read_labels_csv(csv_path)?;
        labels_csv_columns(&csv)?;
        let mut rows: Vec<(String, String)> = Vec::with_capacity(csv.rows.len());
        // A label may be a path in the taxonomy (`Fruit/Apple/Granny-Smith`): its last
        // part is the class, and every row of that class must give the same path.
        // class -> (path, first line giving it)
        let mut paths: BTreeMap<String, (String, u64)> = BTreeMap::new();
        for row in csv.rows {
            if row.label.is_empty() {
                return Err(Error::invalid_input(
                    csv_path,
                    format!("line {}: empty label for '{}'", row.line, row.image_id),
                ));
            }
            let path = row.label.trim_matches('/').to_string();
            if path.split('/').any(|part| part.trim().is_empty()) {
                return Err(Error::invalid_input(
                    csv_path,
                    format!(
                        "line {}: label '{}' has an empty part; write class paths as                          `Group/Subgroup/Class`",
                        row.line, row.label
                    ),
                ));
            }
            let class = crate::taxonomy::leaf(&path).to_string();
            match paths.get(&class) {
                Some((first, line)) if *first != path => {
                    return Err(Error::invalid_input(
                        csv_path,
                        format!(
                            "line {line} puts class '{class}' at '{first}' but line {} puts it                              at '{path}'; give every row of a class the same path (or rename                              one of the classes)",
                            row.line
                        ),
                    ));
                }
                Some(_) => {}
                None => {
                    paths.insert(class.clone(), (path, row.line));
                }
            }
            rows.push((row.image_id, class));
        }
        let rows: Vec<(PathBuf, String)> = rows
            .into_iter()
            .map(|(id, label)| (resolve_image(&root, &id), label))
            .collect();
        let mut classes: Vec<String> = rows.iter().map(|(_, l)| l.clone()).collect();
        classes.sort();
        classes.dedup();
        let mut images: Vec<LabeledImage> = rows
            .into_iter()
            .map(|(full, label)| LabeledImage {
                relative: relative_slash_path(&root, &full),
                path: full,
                label: classes.binary_search(&label).unwrap_or(0),
            })
            .collect();
        images.sort_by(|a, b| a.relative.cmp(&b.relative));
        let class_paths = paths.into_values().map(|(path, _)| path).collect();
        for pair in images.windows(2) {
            if pair[0].relative == pair[1].relative {
                return Err(Error::invalid_input(
                    csv_path,
                    format!(
                        "'{}' is listed twice; keep one row per image",
                        pair[0].relative
                    ),
                ));
            }
        }
        let mut dataset = Dataset::new(&root, classes, images)?;
        dataset.class_paths = class_paths;
        Ok(dataset)
    }

    fn new(root: &Path, classes: Vec<String>, images: Vec<LabeledImage>) -> Result<Dataset> {
        if classes.is_empty() {
            return Err(Error::invalid_input(
                root,
                "found no class folder with images; put each class's images in a sub-folder named after the class",
            ));
        }
        Ok(Dataset {
            root: root.to_path_buf(),
            class_paths: classes.clone(),
            classes,
            images,
            skipped: Vec::new(),
            scan_warnings: Vec::new(),
        })
    }

    /// Training needs at least two classes (evaluating a model on one class's photos
    /// does not).
    pub fn require_trainable(&self) -> Result<()> {
        if self.classes.len() < 2 {
            return Err(Error::invalid_input(
                &self.root,
                format!(
                    "found {} class with images ('{}'); a classifier needs at least 2 \
                     (one sub-folder of images per class)",
                    self.classes.len(),
                    self.classes.join("")
                ),
            ));
        }
        Ok(())
    }

    /// Images per class, in class order.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes.len()];
        for image in &self.images {
            counts[image.label] += 1;
        }
        counts
    }

    /// The folder walk's warnings, then classes with fewer than [`MIN_IMAGES_PER_CLASS`]
    /// images.
    pub fn warnings(&self) -> Vec<String> {
        let counts = self.class_counts();
        let small = counts
            .iter()
            .zip(&self.classes)
            .filter(|(n, _)| **n < MIN_IMAGES_PER_CLASS)
            .map(|(n, name)| {
                format!("class '{name}' has only {n} image(s); {MIN_IMAGES_PER_CLASS} or more give a more reliable classifier")
            });
        self.scan_warnings.iter().cloned().chain(small).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(root: &Path, rel: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"x").unwrap();
    }

    #[test]
    fn nested_class_folders_are_found_and_sorted() {
        let dir = tempfile::tempdir().unwrap();
        touch(dir.path(), "Fruit/Apple/Granny-Smith/1.jpg");
        touch(dir.path(), "Fruit/Banana/2.JPG");
        touch(dir.path(), "Fruit/Banana/1.png");
        touch(dir.path(), "loose.jpg");
        let ds = Dataset::from_class_folders(dir.path()).unwrap();
        assert_eq!(ds.classes, vec!["Banana", "Granny-Smith"]);
        assert_eq!(ds.images.len(), 3);
        assert_eq!(ds.class_counts(), vec![2, 1]);
        assert_eq!(ds.images[2].relative, "Fruit/Banana/2.JPG");
        assert_eq!(ds.images[2].label, 0);
        assert_eq!(ds.warnings().len(), 2);
    }

    #[cfg(unix)]
    #[test]
    fn a_class_folder_linked_from_another_keeps_its_name() {
        let dir = tempfile::tempdir().unwrap();
        touch(dir.path(), "A/1.jpg");
        touch(dir.path(), "B/2.jpg");
        std::os::unix::fs::symlink("../B", dir.path().join("A/toB")).unwrap();
        let ds = Dataset::from_class_folders(dir.path()).unwrap();
        assert_eq!(ds.classes, vec!["A", "B"]);
        assert_eq!(ds.class_counts(), vec![1, 1]);
        assert!(ds.warnings()[0].contains("A/toB"), "{:?}", ds.warnings());
    }

    #[test]
    fn duplicate_class_names_name_both_folders() {
        let dir = tempfile::tempdir().unwrap();
        touch(dir.path(), "a/Apple/1.jpg");
        touch(dir.path(), "b/Apple/1.jpg");
        touch(dir.path(), "c/Pear/1.jpg");
        let err = Dataset::from_class_folders(dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("a/Apple") && err.contains("b/Apple"), "{err}");
    }

    #[test]
    fn one_class_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        touch(dir.path(), "Apple/1.jpg");
        let ds = Dataset::from_class_folders(dir.path()).unwrap();
        let err = ds.require_trainable().unwrap_err().to_string();
        assert!(err.contains("at least 2") && err.contains("Apple"), "{err}");
    }

    #[test]
    fn class_paths_come_from_folders_and_from_path_labels() {
        let dir = tempfile::tempdir().unwrap();
        touch(dir.path(), "Fruit/Apple/Granny-Smith/1.jpg");
        touch(dir.path(), "Fruit/Banana/1.jpg");
        let ds = Dataset::from_class_folders(dir.path()).unwrap();
        assert_eq!(ds.classes, vec!["Banana", "Granny-Smith"]);
        assert_eq!(
            ds.class_paths,
            vec!["Fruit/Banana", "Fruit/Apple/Granny-Smith"]
        );
        let csv = dir.path().join("labels.csv");
        std::fs::write(
            &csv,
            "path,label\n1.jpg,Fruit/Apple/Granny-Smith\n2.jpg,Fruit/Banana\n3.jpg,Fruit/Banana\n",
        )
        .unwrap();
        let ds = Dataset::from_labels_csv(&csv, None).unwrap();
        assert_eq!(ds.classes, vec!["Banana", "Granny-Smith"]);
        assert_eq!(
            ds.class_paths,
            vec!["Fruit/Banana", "Fruit/Apple/Granny-Smith"]
        );
        assert_eq!(ds.images[1].label, 0);
    }

    #[test]
    fn a_class_at_two_paths_names_both_lines() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("labels.csv");
        std::fs::write(&csv, "path,label\n1.jpg,A/B\n2.jpg,x\n3.jpg,C/B\n").unwrap();
        let err = Dataset::from_labels_csv(&csv, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 2")
                && err.contains("line 4")
                && err.contains("'A/B'")
                && err.contains("'C/B'"),
            "{err}"
        );
        std::fs::write(&csv, "path,label\n1.jpg,A//B\n").unwrap();
        let err = Dataset::from_labels_csv(&csv, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 2") && err.contains("empty part"),
            "{err}"
        );
    }

    #[test]
    fn labels_csv_with_header_and_bom() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("labels.csv");
        std::fs::write(
            &csv,
            "\u{feff}path,label\r\nimg/1.jpg,cat\r\nimg/2.jpg,dog\r\n",
        )
        .unwrap();
        let ds = Dataset::from_labels_csv(&csv, None).unwrap();
        assert_eq!(ds.classes, vec!["cat", "dog"]);
        assert_eq!(ds.images[1].relative, "img/2.jpg");
        assert_eq!(ds.images[1].label, 1);
        std::fs::write(&csv, "image_id,label\nimg/1.jpg,cat\nimg/1.jpg,dog\n").unwrap();
        let err = Dataset::from_labels_csv(&csv, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("listed twice"), "{err}");
        std::fs::write(&csv, "img/1.jpg,cat\nimg/2.jpg,dog\n").unwrap();
        let err = Dataset::from_labels_csv(&csv, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`img/1.jpg,cat` is not a header") && err.contains("image_id,label"),
            "{err}"
        );
    }
}
