//! Walking a folder for images. Paths are sorted so that every index derived from them
//! (labels, batches, outputs) never depends on directory order.
//!
//! The rules, for every command that reads a folder (train, evaluate, predict, extract,
//! stats, augment):
//! - Links are followed, and a file reachable by several paths is listed once, under its
//!   first path in sorted order.
//! - A link whose target lies inside the folder being walked is not followed: the target
//!   is listed under its own path (so a class folder linked from inside another, such as
//!   `A/toB -> ../B`, stays class `B`), and a warning names the link.
//! - An entry that cannot be read (a dangling link, a link that loops onto itself, a
//!   folder that cannot be listed) or whose name is not UTF-8 is skipped with its reason;
//!   the walk goes on and the command ends with exit code 3. Names that are not UTF-8
//!   are refused rather than converted, since a lossy conversion gives two different
//!   files the same name in every output. Entries whose name says they are not images
//!   (another extension) are ignored, readable or not, as the files themselves would be.
//!
//! Only the root itself failing is an error. The class of an image (see
//! `classes.rs`) is the folder it is listed under, so a link to a folder outside the
//! tree makes a class named after the link.

use std::collections::HashSet;
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

/// An entry under the root that the walk left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedEntry {
    pub path: PathBuf,
    /// What is wrong and what to do about it.
    pub reason: String,
}

impl std::fmt::Display for SkippedEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", escaped(&self.path), self.reason)
    }
}

/// What a walk found.
#[derive(Debug, Clone, Default)]
pub struct Scan {
    /// Sorted by relative path.
    pub images: Vec<ImageEntry>,
    /// Sorted by path.
    pub skipped: Vec<SkippedEntry>,
    /// Links that were not followed, each naming the link.
    pub warnings: Vec<String>,
}

/// All supported image files under `root` (recursively), sorted by relative path, with
/// the entries that were skipped and why (see the module's rules).
pub fn scan_images(root: &Path) -> Result<Scan> {
    let meta = std::fs::metadata(root).map_err(|e| Error::io(root, e))?;
    if !meta.is_dir() {
        return Err(Error::invalid_input(
            root,
            "is not a folder; pass a folder of images",
        ));
    }
    let inside = std::fs::canonicalize(root).map_err(|e| Error::io(root, e))?;
    let mut scan = Scan::default();
    let mut refused = Vec::new();
    let mut links_inside = Vec::new();
    let mut seen = HashSet::new();
    let walk = walkdir::WalkDir::new(root)
        .follow_links(true)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|entry| admit(entry, &inside, &mut refused, &mut links_inside));
    for entry in walk {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                let path = e.path().unwrap_or(root).to_path_buf();
                if e.depth() == 0 {
                    return Err(Error::io(path, e.into()));
                }
                if let Some(ancestor) = e.loop_ancestor() {
                    scan.warnings.push(format!(
                        "not following the link {}: it leads back to {}, which holds it",
                        escaped(&path),
                        escaped(ancestor)
                    ));
                    continue;
                }
                if let Some(skipped) = unreadable(path, e) {
                    scan.skipped.push(skipped);
                }
                continue;
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
        scan.images.push(ImageEntry {
            relative: relative_slash_path(root, entry.path()),
            path: entry.path().to_path_buf(),
        });
    }
    scan.images.sort();
    scan.skipped.extend(refused);
    scan.skipped.sort_by(|a, b| a.path.cmp(&b.path));
    for (link, target) in links_inside {
        scan.warnings.push(format!(
            "not following the link {} to {}: that is inside {} and is listed under its \
             own path",
            escaped(&link),
            escaped(&target),
            escaped(root)
        ));
    }
    Ok(scan)
}

/// Whether the walk takes `entry` (and, for a folder, goes into it).
fn admit(
    entry: &walkdir::DirEntry,
    inside: &Path,
    refused: &mut Vec<SkippedEntry>,
    links_inside: &mut Vec<(PathBuf, PathBuf)>,
) -> bool {
    if entry.depth() == 0 {
        return true;
    }
    let is_dir = entry.file_type().is_dir();
    if entry.file_name().to_str().is_none() {
        if is_dir || is_supported_image(entry.path()) {
            refused.push(SkippedEntry {
                path: entry.path().to_path_buf(),
                reason: "its name is not valid UTF-8 (shown with \\x escapes); rename it"
                    .to_string(),
            });
        }
        return false;
    }
    if entry.path_is_symlink() {
        if let Ok(target) = std::fs::canonicalize(entry.path()) {
            if target.starts_with(inside) {
                links_inside.push((entry.path().to_path_buf(), target));
                return false;
            }
        }
    }
    true
}

/// The skip record for an entry the walk could not read, or None where its name says it
/// is no image anyway.
fn unreadable(path: PathBuf, error: walkdir::Error) -> Option<SkippedEntry> {
    let io = error.io_error();
    let link = std::fs::symlink_metadata(&path)
        .map(|m| m.file_type().is_symlink())
        .unwrap_or(false);
    let is_dir = !link
        && std::fs::metadata(&path)
            .map(|m| m.is_dir())
            .unwrap_or(false);
    let named_other = path.extension().is_some() && !is_supported_image(&path);
    if !is_dir && named_other {
        return None;
    }
    let why = io
        .map(ToString::to_string)
        .unwrap_or_else(|| error.to_string());
    let reason = if link {
        let target = std::fs::read_link(&path)
            .map(|t| escaped(&t))
            .unwrap_or_default();
        match io.map(std::io::Error::kind) {
            Some(std::io::ErrorKind::NotFound) => {
                format!("is a link to {target}, which does not exist; fix or remove the link")
            }
            _ if io.and_then(std::io::Error::raw_os_error) == Some(ELOOP) => {
                format!("is a link to {target} that loops back onto itself; fix or remove the link")
            }
            _ => format!("is a link to {target} that cannot be followed ({why}); fix or remove it"),
        }
    } else if is_dir {
        format!("is a folder that cannot be listed ({why}); make it readable or move it out")
    } else {
        format!("cannot be read ({why}); make it readable or move it out")
    };
    Some(SkippedEntry { path, reason })
}

/// The "too many levels of symbolic links" error number: `io::ErrorKind` has no stable
/// name for it yet.
#[cfg(target_os = "linux")]
const ELOOP: i32 = 40;
#[cfg(not(target_os = "linux"))]
const ELOOP: i32 = 62; // macOS and the BSDs

/// `path` for messages: as is where it is UTF-8, with each byte that is not shown as
/// `\xNN`, so two names that differ only there still read differently.
pub fn escaped(path: &Path) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let mut out = String::new();
        for chunk in path.as_os_str().as_bytes().utf8_chunks() {
            out.push_str(chunk.valid());
            for byte in chunk.invalid() {
                out.push_str(&format!("\\x{byte:02X}"));
            }
        }
        out
    }
    #[cfg(not(unix))]
    {
        path.display().to_string()
    }
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
            .images
            .into_iter()
            .map(|e| e.relative)
            .collect();
        assert_eq!(found, vec!["a.jpeg", "b/a.png", "b/c/y.TIFF", "b/c/z.JPG"]);
    }

    #[cfg(unix)]
    #[test]
    fn links_inside_the_root_are_not_followed_and_outside_ones_are() {
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
        std::os::unix::fs::symlink(other.path(), dir.path().join("ext1")).unwrap();
        std::os::unix::fs::symlink(other.path(), dir.path().join("ext2")).unwrap();
        let scan = scan_images(dir.path()).unwrap();
        let found: Vec<_> = scan.images.into_iter().map(|e| e.relative).collect();
        // `alias` and `real/loop` point inside: their targets are listed as themselves.
        // `outside.jpg` is reached three times from outside: listed once, first path.
        assert_eq!(
            found,
            vec!["elsewhere.jpg", "ext1/outside.jpg", "real/a.jpg"]
        );
        assert_eq!(scan.warnings.len(), 2, "{:?}", scan.warnings);
        for link in ["alias", "real/loop"] {
            let named =
                |w: &&String| w.contains(&format!("link {}", dir.path().join(link).display()));
            assert!(
                scan.warnings.iter().any(|w| named(&w)),
                "{link}: {:?}",
                scan.warnings
            );
        }
        assert!(scan.skipped.is_empty(), "{:?}", scan.skipped);
    }

    #[cfg(unix)]
    #[test]
    fn names_are_escaped_losslessly_for_messages() {
        use std::os::unix::ffi::OsStrExt;
        let a = Path::new(std::ffi::OsStr::from_bytes(b"A/caf\xe9.jpg"));
        let b = Path::new(std::ffi::OsStr::from_bytes(b"A/caf\xff.jpg"));
        assert_eq!(escaped(a), "A/caf\\xE9.jpg");
        assert_ne!(escaped(a), escaped(b));
        assert_eq!(escaped(Path::new("A/café.jpg")), "A/café.jpg");
    }

    #[test]
    fn missing_folder_names_the_path() {
        let err = scan_images(Path::new("/no/such/folder")).unwrap_err();
        assert!(err.to_string().contains("/no/such/folder"), "{err}");
    }
}
