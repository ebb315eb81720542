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
/// Each file is listed once: symbolic links are not followed, so no file is reached twice.
pub fn scan_images(root: &Path) -> Result<Vec<ImageEntry>> {
    let meta = std::fs::metadata(root).map_err(|e| Error::io(root, e))?;
    if !meta.is_dir() {
        return Err(Error::invalid_input(root, "is not a folder; pass a folder of images"));
    }
    let mut entries = Vec::new();
    for entry in walkdir::WalkDir::new(root).follow_links(false) {
        let entry = entry.map_err(|e| {
            let path = e.path().unwrap_or(root).to_path_buf();
            Error::io(path, e.into())
        })?;
        if !entry.file_type().is_file() || !is_supported_image(entry.path()) {
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

    #[test]
    fn missing_folder_names_the_path() {
        let err = scan_images(Path::new("/no/such/folder")).unwrap_err();
        assert!(err.to_string().contains("/no/such/folder"), "{err}");
    }
}
