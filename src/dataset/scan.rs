//! Walking a folder for images. Paths are sorted so that every index derived from them
//! (labels, batches, outputs) never depends on directory order.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::image::is_supported_image;

/// One image file found under a root folder.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ImageEntry {
    /// Path relative to the scanned root, with `/` separators.
    pub relative: String,
    /// Full path to open.
    pub path: PathBuf,
}

/// All supported image files under `root` (recursively), sorted by relative path.
/// Each file is listed once, even when links make it reachable by several paths.
pub fn scan_images(root: &Path) -> Result<Vec<ImageEntry>> {
    let meta = std::fs::metadata(root).map_err(|e| Error::io(root, e))?;
    if !meta.is_dir() {
        return Err(Error::invalid_input(
            root,
            "is not a folder; pass a folder of images",
        ));
    }
    let mut entries = Vec::new();
    // Datasets are often assembled from linked files and folders: links are followed, and
    // a file reached twice (through a link, say) is listed once, under its first path.
    let mut seen = std::collections::HashSet::new();
    for entry in walkdir::WalkDir::new(root)
        .follow_links(true)
        .sort_by_file_name()
    {
        let entry = match entry {
            Ok(entry) => entry,
            // A link back to an ancestor folder: its files are listed already.
            Err(e) if e.loop_ancestor().is_some() => continue,
            Err(e) => {
                let path = e.path().unwrap_or(root).to_path_buf();
                return Err(Error::io(path, e.into()));
            }
        };
        if !entry.file_type().is_file() || !is_supported_image(entry.path()) {
            continue;
        }
        let identity =
            std::fs::canonicalize(entry.path()).unwrap_or_else(|_| entry.path().to_path_buf());
        if !seen.insert(identity) {
            continue;
        }
        entries.push(ImageEntry {
            relative: relative_slash_path(root, entry.path()),
            path: entry.path().to_path_buf(),
        });
    }
    entries.sort();
    Ok(entries)
}

/// `path` relative to `root`, joined with `/` whatever the platform.
pub fn relative_slash_path(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_each_image_once_sorted_case_insensitive() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("b/c")).unwrap();
        for p in ["b/c/z.JPG", "b/a.png", "a.jpeg", "notes.txt", "b/c/y.TIFF"] {
            std::fs::write(dir.path().join(p), b"x").unwrap();
        }
        let found: Vec<_> = scan_images(dir.path())
            .unwrap()
            .into_iter()
            .map(|e| e.relative)
            .collect();
        assert_eq!(found, vec!["a.jpeg", "b/a.png", "b/c/y.TIFF", "b/c/z.JPG"]);
    }

    #[cfg(unix)]
    #[test]
    fn linked_files_count_once_and_linked_loops_end() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("real")).unwrap();
        std::fs::write(dir.path().join("real/a.jpg"), b"x").unwrap();
        std::fs::write(dir.path().join("elsewhere.jpg"), b"x").unwrap();
        std::os::unix::fs::symlink(dir.path().join("real"), dir.path().join("alias")).unwrap();
        std::os::unix::fs::symlink(dir.path(), dir.path().join("real/loop")).unwrap();
        let other = tempfile::tempdir().unwrap();
        std::fs::write(other.path().join("outside.jpg"), b"x").unwrap();
        std::os::unix::fs::symlink(
            other.path().join("outside.jpg"),
            dir.path().join("real/linked.jpg"),
        )
        .unwrap();
        let found: Vec<_> = scan_images(dir.path())
            .unwrap()
            .into_iter()
            .map(|e| e.relative)
            .collect();
        assert_eq!(
            found,
            vec!["alias/a.jpg", "alias/linked.jpg", "elsewhere.jpg"]
        );
    }

    #[test]
    fn missing_folder_names_the_path() {
        let err = scan_images(Path::new("/no/such/folder")).unwrap_err();
        assert!(err.to_string().contains("/no/such/folder"), "{err}");
    }
}
