//! The content-addressed feature cache (retrain.py's "bottlenecks").
//!
//! Store: [redb](https://docs.rs/redb), an embedded, pure-Rust, copy-on-write B-tree
//! with ACID transactions. Why it fits: a committed transaction survives `kill -9` and
//! power loss (it is fsynced before commit returns), an interrupted one leaves no trace,
//! one file holds millions of small entries without a file per image, and reads do not
//! block the single writer. SQLite would do too, but needs a C library.
//!
//! Keys hash everything that determines a feature vector: the backbone, the checksum
//! of its weights, its preprocessing, the image's content hash and a variant tag (for
//! distorted copies). A renamed image hits; an edited image misses — and so does one
//! whose EXIF orientation tag alone changed, since the tag is part of the hashed bytes.
//! Each value carries
//! a SHA-256 of its own bytes, so a corrupted entry is detected and recomputed.

use std::cell::Cell;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use sha2::{Digest, Sha256};

use crate::backbone::BackboneId;
use crate::error::{Error, Result};

const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("features-v1");

/// The version of how an image file becomes a feature vector (decoding, preprocessing);
/// bumping it retires every entry computed the old way.
const FEATURES_VERSION: &str = "graft-features/2";

/// What a feature vector depends on, apart from the image.
#[derive(Debug, Clone)]
pub struct ModelFingerprint {
    digest: [u8; 32],
}

impl ModelFingerprint {
    pub fn new(backbone: BackboneId, weights_sha256: &str) -> ModelFingerprint {
        let preprocess = serde_json::to_string(&backbone.spec().preprocess).unwrap_or_default();
        let mut h = Sha256::new();
        for part in [
            // 2: decoding honours EXIF orientation. A cache written before holds the
            // features of unturned pixels under the very same file hash, so those entries
            // must stop matching.
            FEATURES_VERSION,
            backbone.name(),
            weights_sha256,
            &preprocess,
        ] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        ModelFingerprint {
            digest: h.finalize().into(),
        }
    }

    /// The cache key of `variant` (empty for the undistorted image) of the image whose
    /// content hashes to `image_sha256`.
    pub fn key(&self, image_sha256: &[u8; 32], variant: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.digest);
        h.update(image_sha256);
        h.update(variant.as_bytes());
        h.finalize().into()
    }
}

/// SHA-256 of a file's bytes.
pub fn hash_file(path: &Path) -> Result<[u8; 32]> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    Ok(Sha256::digest(&bytes).into())
}

fn encode(features: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + features.len() * 4 + 32);
    out.extend_from_slice(&(features.len() as u32).to_le_bytes());
    for v in features {
        out.extend_from_slice(&v.to_le_bytes());
    }
    let check = Sha256::digest(&out);
    out.extend_from_slice(&check);
    out
}

fn decode(bytes: &[u8]) -> Option<Vec<f32>> {
    if bytes.len() < 36 {
        return None;
    }
    let (body, check) = bytes.split_at(bytes.len() - 32);
    if Sha256::digest(body).as_slice() != check {
        return None;
    }
    let dim = u32::from_le_bytes(body[..4].try_into().ok()?) as usize;
    if body.len() != 4 + dim * 4 {
        return None;
    }
    Some(
        body[4..]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    )
}

pub struct FeatureCache {
    /// `None` only for the moment a damaged file is being swapped for a new one.
    db: Mutex<Option<Database>>,
    path: PathBuf,
}

/// Result of a lookup.
pub enum Lookup {
    Hit(Vec<f32>),
    Miss,
    /// Present but failed its checksum: to be recomputed and overwritten.
    Corrupt,
}

#[derive(Debug, Clone, Copy)]
pub struct CacheStats {
    pub entries: u64,
    pub file_bytes: u64,
}

/// What `graft cache stats` finds in a cache folder.
#[derive(Debug, Clone)]
pub enum Inspection {
    /// No cache file yet.
    Absent,
    Healthy(CacheStats),
    /// The file cannot be opened or read; the reason.
    Damaged {
        file_bytes: u64,
        reason: String,
    },
}

/// What `graft cache clear` did.
#[derive(Debug, Clone, Default)]
pub struct Cleared {
    /// Entries removed from a readable cache.
    pub entries: u64,
    /// Damaged cache files removed (the cache file itself when it could not be opened,
    /// and copies set aside by earlier runs), each with why it was damaged where known.
    pub removed_files: Vec<(PathBuf, Option<String>)>,
}

/// The cache file's name in its folder.
pub const FILE_NAME: &str = "features.redb";
/// Damaged cache files are renamed `features.redb.corrupt-<unix seconds>`.
const CORRUPT_INFIX: &str = ".corrupt-";

thread_local! {
    /// Set while redb runs inside [`guarded`], so its panics are not printed as crashes.
    static IN_STORE: Cell<bool> = const { Cell::new(false) };
}

/// Runs one call into redb, turning a panic into an error. redb trusts its file: on
/// bytes that are not what it wrote (a truncated or overwritten cache) it panics on
/// assertions and slice bounds, at open and in the middle of transactions alike. A
/// cache is disposable, so such a panic must become an error the caller recovers from.
fn guarded<T>(
    f: impl FnOnce() -> std::result::Result<T, String>,
) -> std::result::Result<T, String> {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !IN_STORE.with(Cell::get) {
                previous(info);
            }
        }));
    });
    let was = IN_STORE.with(|s| s.replace(true));
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(f));
    IN_STORE.with(|s| s.set(was));
    match outcome {
        Ok(result) => result,
        Err(payload) => {
            let text = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown failure".into());
            Err(format!("the store failed on damaged data ({text})"))
        }
    }
}

/// Why a cache file cannot serve: in use elsewhere (leave it alone) or damaged (replace it).
enum OpenError {
    InUse,
    Damaged(String),
}

/// Opens `path` and reads it through once (the table and its length), so a file that
/// redb cannot make sense of is found here rather than halfway through a run.
fn open_db(path: &Path) -> std::result::Result<Database, OpenError> {
    let db = guarded(|| match Database::create(path) {
        Ok(db) => Ok(Ok(db)),
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => Ok(Err(OpenError::InUse)),
        Err(e) => Err(e.to_string()),
    })
    .map_err(OpenError::Damaged)??;
    let checked = guarded(|| {
        let txn = db.begin_write().map_err(|e| e.to_string())?;
        {
            let table = txn.open_table(TABLE).map_err(|e| e.to_string())?;
            table.len().map_err(|e| e.to_string())?;
        }
        txn.commit().map_err(|e| e.to_string())
    });
    match checked {
        Ok(()) => Ok(db),
        Err(reason) => {
            // Dropping a database redb found damaged may panic too.
            let _ = guarded(|| {
                drop(db);
                Ok(())
            });
            Err(OpenError::Damaged(reason))
        }
    }
}

fn in_use(path: &Path) -> Error {
    Error::invalid_input(
        path,
        "the feature cache is in use by another graft process; wait for it to finish, \
         or pass --bottleneck-dir to use another cache",
    )
}

/// Renames a damaged cache file aside, where nothing reads it again, and says where.
fn set_aside(path: &Path, reason: &str) -> Result<PathBuf> {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // Two recoveries within one second must not overwrite the first copy.
    let aside = (seconds..)
        .map(|t| {
            let mut name = path.as_os_str().to_os_string();
            name.push(format!("{CORRUPT_INFIX}{t}"));
            PathBuf::from(name)
        })
        .find(|p| !p.exists())
        .unwrap_or_else(|| path.with_extension("redb.corrupt"));
    std::fs::rename(path, &aside).map_err(|e| {
        Error::invalid_input(
            path,
            format!(
                "the feature cache is damaged ({reason}) and cannot be moved aside ({e}); \
                 delete the file (it holds only cached features) and run again"
            ),
        )
    })?;
    tracing::warn!(
        "the feature cache {} is damaged ({reason}); moved it to {} and started a new one \
         (features are recomputed; `graft cache clear` deletes the damaged copy)",
        path.display(),
        aside.display()
    );
    Ok(aside)
}

impl FeatureCache {
    /// Opens (or creates) the cache file `dir/features.redb`. A file that cannot be
    /// opened or read is moved aside (`features.redb.corrupt-<time>`, with a warning)
    /// and a new cache is started: it only ever holds what can be recomputed.
    pub fn open(dir: &Path) -> Result<FeatureCache> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(FILE_NAME);
        let db = Self::open_or_replace(&path)?;
        Ok(FeatureCache {
            db: Mutex::new(Some(db)),
            path,
        })
    }

    fn open_or_replace(path: &Path) -> Result<Database> {
        match open_db(path) {
            Ok(db) => Ok(db),
            Err(OpenError::InUse) => Err(in_use(path)),
            Err(OpenError::Damaged(reason)) => {
                set_aside(path, &reason)?;
                match open_db(path) {
                    Ok(db) => Ok(db),
                    Err(OpenError::InUse) => Err(in_use(path)),
                    Err(OpenError::Damaged(reason)) => Err(Error::invalid_input(
                        path,
                        format!(
                            "cannot create a new feature cache: {reason}; check the folder \
                             or pass --bottleneck-dir to use another one"
                        ),
                    )),
                }
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `op` on the database; when it fails because the file is damaged (an error
    /// or a panic inside redb), the file is moved aside, a new cache started and `op`
    /// run once more on it.
    fn with_db<T>(&self, op: impl Fn(&Database) -> std::result::Result<T, String>) -> Result<T> {
        let mut slot = self.db.lock().unwrap_or_else(|p| p.into_inner());
        let first = match slot.as_ref() {
            Some(db) => guarded(|| op(db)),
            None => Err("the cache was being replaced".into()),
        };
        let reason = match first {
            Ok(value) => return Ok(value),
            Err(reason) => reason,
        };
        if let Some(db) = slot.take() {
            let _ = guarded(|| {
                drop(db);
                Ok(())
            });
        }
        if self.path.exists() {
            set_aside(&self.path, &reason)?;
        }
        let db = match open_db(&self.path) {
            Ok(db) => db,
            Err(OpenError::InUse) => return Err(in_use(&self.path)),
            Err(OpenError::Damaged(reason)) => {
                return Err(Error::invalid_input(
                    &self.path,
                    format!("cannot create a new feature cache: {reason}"),
                ))
            }
        };
        let db = slot.insert(db);
        guarded(|| op(db))
            .map_err(|e| Error::invalid_input(&self.path, format!("feature cache: {e}")))
    }

    pub fn get(&self, key: &[u8; 32]) -> Result<Lookup> {
        self.with_db(|db| {
            let txn = db.begin_read().map_err(|e| e.to_string())?;
            let table = txn.open_table(TABLE).map_err(|e| e.to_string())?;
            let found = table.get(key.as_slice()).map_err(|e| e.to_string())?;
            Ok(match found {
                None => Lookup::Miss,
                Some(v) => match decode(v.value()) {
                    Some(f) => Lookup::Hit(f),
                    None => Lookup::Corrupt,
                },
            })
        })
    }

    /// Stores all entries in one durable transaction: all or nothing.
    pub fn put_many(&self, entries: &[([u8; 32], Vec<f32>)]) -> Result<()> {
        self.with_db(|db| {
            let txn = db.begin_write().map_err(|e| e.to_string())?;
            {
                let mut table = txn.open_table(TABLE).map_err(|e| e.to_string())?;
                for (key, features) in entries {
                    table
                        .insert(key.as_slice(), encode(features).as_slice())
                        .map_err(|e| e.to_string())?;
                }
            }
            txn.commit().map_err(|e| e.to_string())
        })
    }

    /// Overwrites an entry's bytes as they are (tests use it to simulate corruption).
    #[doc(hidden)]
    pub fn put_raw(&self, key: &[u8; 32], bytes: &[u8]) -> Result<()> {
        self.with_db(|db| {
            let txn = db.begin_write().map_err(|e| e.to_string())?;
            {
                let mut table = txn.open_table(TABLE).map_err(|e| e.to_string())?;
                table
                    .insert(key.as_slice(), bytes)
                    .map_err(|e| e.to_string())?;
            }
            txn.commit().map_err(|e| e.to_string())
        })
    }

    pub fn stats(&self) -> Result<CacheStats> {
        let entries = self.with_db(|db| {
            let txn = db.begin_read().map_err(|e| e.to_string())?;
            let table = txn.open_table(TABLE).map_err(|e| e.to_string())?;
            table.len().map_err(|e| e.to_string())
        })?;
        let file_bytes = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        Ok(CacheStats {
            entries,
            file_bytes,
        })
    }

    /// Removes every entry.
    pub fn clear(&self) -> Result<u64> {
        self.with_db(|db| {
            let txn = db.begin_write().map_err(|e| e.to_string())?;
            let removed = {
                let mut table = txn.open_table(TABLE).map_err(|e| e.to_string())?;
                let n = table.len().map_err(|e| e.to_string())?;
                table.retain(|_, _| false).map_err(|e| e.to_string())?;
                n
            };
            txn.commit().map_err(|e| e.to_string())?;
            Ok(removed)
        })
    }
}

/// `graft cache stats`: looks at the cache in `dir` without changing a damaged file.
/// Every entry is read once, so damage anywhere in the file is found.
pub fn inspect(dir: &Path) -> Result<Inspection> {
    let path = dir.join(FILE_NAME);
    let file_bytes = match std::fs::metadata(&path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Inspection::Absent),
        Err(e) => return Err(Error::io(&path, e)),
    };
    let db = match open_db(&path) {
        Ok(db) => db,
        Err(OpenError::InUse) => return Err(in_use(&path)),
        Err(OpenError::Damaged(reason)) => return Ok(Inspection::Damaged { file_bytes, reason }),
    };
    let read = guarded(|| {
        let txn = db.begin_read().map_err(|e| e.to_string())?;
        let table = txn.open_table(TABLE).map_err(|e| e.to_string())?;
        let mut entries = 0u64;
        for item in table.iter().map_err(|e| e.to_string())? {
            let (_, value) = item.map_err(|e| e.to_string())?;
            std::hint::black_box(value.value().len());
            entries += 1;
        }
        Ok(entries)
    });
    let _ = guarded(|| {
        drop(db);
        Ok(())
    });
    let file_bytes = std::fs::metadata(&path)
        .map(|m| m.len())
        .unwrap_or(file_bytes);
    Ok(match read {
        Ok(entries) => Inspection::Healthy(CacheStats {
            entries,
            file_bytes,
        }),
        Err(reason) => Inspection::Damaged { file_bytes, reason },
    })
}

/// `graft cache clear`: empties the cache in `dir`. A cache file that cannot be opened
/// is deleted instead, and so are the damaged copies earlier runs moved aside: all are
/// graft's own files (`features.redb`, `features.redb.corrupt-<time>`), holding only
/// features that can be recomputed.
pub fn clear_dir(dir: &Path) -> Result<Cleared> {
    let mut out = Cleared::default();
    let path = dir.join(FILE_NAME);
    if path.exists() {
        match open_db(&path) {
            Ok(db) => {
                let cache = FeatureCache {
                    db: Mutex::new(Some(db)),
                    path: path.clone(),
                };
                out.entries = cache.clear()?;
            }
            Err(OpenError::InUse) => return Err(in_use(&path)),
            Err(OpenError::Damaged(reason)) => {
                std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
                out.removed_files.push((path.clone(), Some(reason)));
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        let prefix = format!("{FILE_NAME}{CORRUPT_INFIX}");
        let mut aside: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name().to_str().is_some_and(|n| {
                    n.strip_prefix(&prefix)
                        .is_some_and(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
                }) && e.file_type().is_ok_and(|t| t.is_file())
            })
            .map(|e| e.path())
            .collect();
        aside.sort();
        for file in aside {
            std::fs::remove_file(&file).map_err(|e| Error::io(&file, e))?;
            out.removed_files.push((file, None));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FeatureCache::open(dir.path()).unwrap();
        let fp = ModelFingerprint::new(BackboneId::EfficientNetLite0, "abc");
        let k = fp.key(&[7; 32], "");
        assert!(matches!(cache.get(&k).unwrap(), Lookup::Miss));
        cache.put_many(&[(k, vec![1.0, -2.5, 3.25])]).unwrap();
        match cache.get(&k).unwrap() {
            Lookup::Hit(v) => assert_eq!(v, vec![1.0, -2.5, 3.25]),
            _ => panic!("expected a hit"),
        }
        let mut bytes = encode(&[1.0, 2.0]);
        bytes[5] ^= 0xff;
        cache.put_raw(&k, &bytes).unwrap();
        assert!(matches!(cache.get(&k).unwrap(), Lookup::Corrupt));
        assert_eq!(cache.stats().unwrap().entries, 1);
        assert_eq!(cache.clear().unwrap(), 1);
        assert_eq!(cache.stats().unwrap().entries, 0);
    }

    #[test]
    fn entries_from_before_exif_orientation_do_not_match() {
        // The fingerprint graft wrote before decoding honoured EXIF orientation: its
        // entries hold unturned features under the same file hashes.
        let backbone = BackboneId::EfficientNetLite0;
        let preprocess = serde_json::to_string(&backbone.spec().preprocess).unwrap();
        let mut h = Sha256::new();
        for part in ["graft-features/1", backbone.name(), "w", &preprocess] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        let old = ModelFingerprint {
            digest: h.finalize().into(),
        };
        let new = ModelFingerprint::new(backbone, "w");
        assert_ne!(old.key(&[3; 32], ""), new.key(&[3; 32], ""));
    }

    #[test]
    fn keys_depend_on_everything_that_changes_features() {
        let a = ModelFingerprint::new(BackboneId::EfficientNetLite0, "w1");
        let b = ModelFingerprint::new(BackboneId::EfficientNetLite0, "w2");
        let c = ModelFingerprint::new(BackboneId::EfficientNetLite2, "w1");
        let img = [1u8; 32];
        assert_ne!(a.key(&img, ""), b.key(&img, ""));
        assert_ne!(a.key(&img, ""), c.key(&img, ""));
        assert_ne!(a.key(&img, ""), a.key(&img, "flip"));
        assert_ne!(a.key(&img, ""), a.key(&[2u8; 32], ""));
        assert_eq!(a.key(&img, ""), a.key(&img, ""));
    }
}
