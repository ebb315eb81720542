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
const FEATURES_VERSION: &str = "graft-features/3";

/// What a feature vector depends on, apart from the image.
#[derive(Debug, Clone)]
pub struct ModelFingerprint {
    digest: [u8; 32],
}

impl ModelFingerprint {
    pub fn new(backbone: BackboneId, weights_sha256: &str) -> ModelFingerprint {
        ModelFingerprint::with_variant(backbone, weights_sha256, "")
    }

    /// The fingerprint of a network that differs from the published one (see
    /// [`crate::engine::Backbone::variant`]); an empty `variant` is [`ModelFingerprint::new`]'s,
    /// so caches written before variants existed keep matching.
    pub fn with_variant(
        backbone: BackboneId,
        weights_sha256: &str,
        variant: &str,
    ) -> ModelFingerprint {
        let preprocess = serde_json::to_string(&backbone.spec().preprocess).unwrap_or_default();
        let mut h = Sha256::new();
        for part in [
            // 2: decoding honours EXIF orientation. A cache written before holds the
            // features of unturned pixels under the very same file hash, so those entries
            // must stop matching. 3: the resize runs its horizontal pass first, as PIL
            // does (src/image/preprocess.rs), so resampled pixels differ by a level.
            FEATURES_VERSION,
            backbone.name(),
            weights_sha256,
            &preprocess,
        ] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        if !variant.is_empty() {
            h.update((variant.len() as u64).to_le_bytes());
            h.update(variant.as_bytes());
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
    /// A run was interrupted while it had the file open; looking repaired it (as the
    /// next train or extract would have: the entries are kept).
    Repaired(CacheStats),
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

/// Why a call into redb failed. Only damage justifies setting the file aside: a cache
/// can be many GB of work, and a full disk or a permission error says nothing about
/// its contents (and would fail just the same on a new file).
#[derive(Debug)]
enum StoreFailure {
    /// redb panicked: it met bytes it did not write.
    Panicked(String),
    /// redb says the file is not a database it can read: damaged, truncated, foreign
    /// or of a format this redb does not read.
    Corrupted(String),
    /// Another process holds the file.
    InUse,
    /// Anything else (disk full, I/O error, permissions): the file is kept.
    Other(redb::Error),
}

impl From<redb::Error> for StoreFailure {
    fn from(e: redb::Error) -> StoreFailure {
        use redb::Error as E;
        match e {
            E::DatabaseAlreadyOpen => StoreFailure::InUse,
            E::Corrupted(_)
            | E::RepairAborted
            | E::UpgradeRequired(_)
            | E::TableTypeMismatch { .. }
            | E::TableIsMultimap(_)
            | E::TableIsNotMultimap(_) => StoreFailure::Corrupted(e.to_string()),
            // redb's answer to a file that does not start with its magic number, or that
            // is shorter than its header says.
            E::Io(ref io) if io.kind() == std::io::ErrorKind::InvalidData => {
                StoreFailure::Corrupted(e.to_string())
            }
            other => StoreFailure::Other(other),
        }
    }
}

impl StoreFailure {
    /// The error for a failure that recovery cannot or must not handle.
    fn into_error(self, path: &Path) -> Error {
        match self {
            StoreFailure::InUse => in_use(path),
            StoreFailure::Other(e) => Error::invalid_input(
                path,
                format!(
                    "the feature cache cannot be read or written ({e}); the file is kept: \
                     check free disk space and the permissions of the file and its folder, \
                     or pass --bottleneck-dir to use another cache"
                ),
            ),
            StoreFailure::Panicked(reason) | StoreFailure::Corrupted(reason) => {
                Error::invalid_input(
                    path,
                    format!(
                        "cannot create a new feature cache: {reason}; check the folder \
                         or pass --bottleneck-dir to use another one"
                    ),
                )
            }
        }
    }
}

/// Runs one call into redb, turning a panic into an error. redb trusts its file: on
/// bytes that are not what it wrote (a truncated or overwritten cache) it panics on
/// assertions and slice bounds, at open and in the middle of transactions alike. A
/// cache is disposable, so such a panic must become an error the caller recovers from.
fn guarded<T>(
    f: impl FnOnce() -> std::result::Result<T, StoreFailure>,
) -> std::result::Result<T, StoreFailure> {
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
            Err(StoreFailure::Panicked(format!(
                "the store failed on damaged data ({text})"
            )))
        }
    }
}

/// Runs `op` on `db` inside [`guarded`].
fn run_op<T>(
    db: &Database,
    op: impl FnOnce(&Database) -> std::result::Result<T, redb::Error>,
) -> std::result::Result<T, StoreFailure> {
    guarded(|| op(db).map_err(StoreFailure::from))
}

/// Drops a database redb may have found damaged: that may panic too.
fn close(db: Database) {
    let _ = guarded(|| {
        drop(db);
        Ok(())
    });
}

/// redb's page cache (its default is 1 GiB). A run reads each entry once and keeps what it
/// read, so a large cache would only hold a second copy of the same bytes: up to 1 GiB
/// more for a fine-tune whose activations at the cut pass through it.
const CACHE_MEMORY_BYTES: usize = 64 << 20;

/// Opens (or creates) `path` and reads it through once (the table and its length), so
/// a file that redb cannot make sense of is found here rather than halfway through a run.
fn open_db(path: &Path) -> std::result::Result<Database, StoreFailure> {
    let db = guarded(|| {
        Database::builder()
            .set_cache_size(CACHE_MEMORY_BYTES)
            .create(path)
            .map_err(|e| redb::Error::from(e).into())
    })?;
    let checked = run_op(&db, |db| {
        let txn = db.begin_write()?;
        {
            let table = txn.open_table(TABLE)?;
            table.len()?;
        }
        txn.commit()?;
        Ok(())
    });
    match checked {
        Ok(()) => Ok(db),
        Err(failure) => {
            close(db);
            Err(failure)
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
    /// Opens (or creates) the cache file `dir/features.redb`. A file redb finds damaged
    /// is moved aside (`features.redb.corrupt-<time>`, with a warning) and a new cache
    /// is started: it only ever holds what can be recomputed. Other failures (I/O,
    /// permissions) are errors and leave the file alone.
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
            Err(StoreFailure::Panicked(reason) | StoreFailure::Corrupted(reason)) => {
                set_aside(path, &reason)?;
                open_db(path).map_err(|f| f.into_error(path))
            }
            Err(failure) => Err(failure.into_error(path)),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `op` on the database; when it fails because the file is damaged (a
    /// corruption error or a panic inside redb), the file is moved aside, a new cache
    /// started and `op` run once more on it. Any other failure is returned as it is.
    fn with_db<T>(
        &self,
        op: impl Fn(&Database) -> std::result::Result<T, redb::Error>,
    ) -> Result<T> {
        let mut slot = self.db.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(db) = slot.as_ref() {
            match run_op(db, &op) {
                Ok(value) => return Ok(value),
                Err(StoreFailure::Panicked(reason) | StoreFailure::Corrupted(reason)) => {
                    if let Some(db) = slot.take() {
                        close(db);
                    }
                    if self.path.exists() {
                        set_aside(&self.path, &reason)?;
                    }
                }
                Err(failure) => return Err(failure.into_error(&self.path)),
            }
        }
        // Empty here after a set-aside, or when an earlier replacement could not open.
        let db = slot.insert(Self::open_or_replace(&self.path)?);
        run_op(db, &op).map_err(|f| f.into_error(&self.path))
    }

    pub fn get(&self, key: &[u8; 32]) -> Result<Lookup> {
        self.with_db(|db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(TABLE)?;
            let found = table.get(key.as_slice())?;
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
            let txn = db.begin_write()?;
            {
                let mut table = txn.open_table(TABLE)?;
                for (key, features) in entries {
                    table.insert(key.as_slice(), encode(features).as_slice())?;
                }
            }
            Ok(txn.commit()?)
        })
    }

    /// Overwrites an entry's bytes as they are (tests use it to simulate corruption).
    #[doc(hidden)]
    pub fn put_raw(&self, key: &[u8; 32], bytes: &[u8]) -> Result<()> {
        self.with_db(|db| {
            let txn = db.begin_write()?;
            {
                let mut table = txn.open_table(TABLE)?;
                table.insert(key.as_slice(), bytes)?;
            }
            Ok(txn.commit()?)
        })
    }

    pub fn stats(&self) -> Result<CacheStats> {
        let entries = self.with_db(|db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(TABLE)?;
            Ok(table.len()?)
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
            let txn = db.begin_write()?;
            let removed = {
                let mut table = txn.open_table(TABLE)?;
                let n = table.len()?;
                table.retain(|_, _| false)?;
                n
            };
            txn.commit()?;
            Ok(removed)
        })
    }
}

/// Opens an existing `path` to look at it; `None` when it was not closed cleanly.
/// redb 2 has no read-only open (`ReadOnlyDatabase` came with redb 3), so this is as
/// close as it gets: `Builder::open` never creates or initialises a file, repair
/// (which rewrites the allocator state) is refused, and only read transactions follow.
/// redb still flips its "in use" flag in the header while the file is open.
fn open_to_look(path: &Path) -> std::result::Result<Option<Database>, StoreFailure> {
    guarded(|| {
        let mut builder = Database::builder();
        builder.set_repair_callback(|session| session.abort());
        match builder.open(path) {
            Ok(db) => Ok(Some(db)),
            Err(redb::DatabaseError::RepairAborted) => Ok(None),
            Err(e) => Err(redb::Error::from(e).into()),
        }
    })
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
    if file_bytes == 0 {
        // redb starts a new database in an empty file: nothing is cached yet.
        return Ok(Inspection::Healthy(CacheStats {
            entries: 0,
            file_bytes,
        }));
    }
    // A file a killed run left open is repaired, as the next run would do anyway: it is
    // graft's own file and the repair keeps its entries. Nothing else is ever written.
    let (db, repaired) = match open_to_look(&path) {
        Ok(Some(db)) => (db, false),
        Ok(None) => match guarded(|| {
            Database::builder()
                .open(&path)
                .map_err(|e| redb::Error::from(e).into())
        }) {
            Ok(db) => (db, true),
            Err(StoreFailure::Panicked(reason) | StoreFailure::Corrupted(reason)) => {
                return Ok(Inspection::Damaged { file_bytes, reason })
            }
            Err(failure) => return Err(failure.into_error(&path)),
        },
        Err(StoreFailure::Panicked(reason) | StoreFailure::Corrupted(reason)) => {
            return Ok(Inspection::Damaged { file_bytes, reason })
        }
        Err(failure) => return Err(failure.into_error(&path)),
    };
    let read = run_op(&db, |db| {
        let txn = db.begin_read()?;
        let table = match txn.open_table(TABLE) {
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
            table => table?,
        };
        let mut entries = 0u64;
        for item in table.iter()? {
            let (_, value) = item?;
            std::hint::black_box(value.value().len());
            entries += 1;
        }
        Ok(entries)
    });
    close(db);
    let file_bytes = std::fs::metadata(&path)
        .map(|m| m.len())
        .unwrap_or(file_bytes);
    Ok(match read {
        Ok(entries) if repaired => Inspection::Repaired(CacheStats {
            entries,
            file_bytes,
        }),
        Ok(entries) => Inspection::Healthy(CacheStats {
            entries,
            file_bytes,
        }),
        Err(StoreFailure::Panicked(reason) | StoreFailure::Corrupted(reason)) => {
            Inspection::Damaged { file_bytes, reason }
        }
        Err(failure) => return Err(failure.into_error(&path)),
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
            Err(StoreFailure::Panicked(reason) | StoreFailure::Corrupted(reason)) => {
                std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
                out.removed_files.push((path.clone(), Some(reason)));
            }
            Err(failure) => return Err(failure.into_error(&path)),
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

    fn set_aside_files(dir: &Path) -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().contains(CORRUPT_INFIX))
            .collect()
    }

    #[test]
    fn only_damage_is_a_reason_to_set_a_cache_aside() {
        let damaged = |e: redb::Error| {
            matches!(
                StoreFailure::from(e),
                StoreFailure::Corrupted(_) | StoreFailure::Panicked(_)
            )
        };
        assert!(damaged(redb::Error::Corrupted("bad page".into())));
        assert!(damaged(redb::Error::RepairAborted));
        assert!(damaged(redb::Error::UpgradeRequired(9)));
        assert!(damaged(redb::Error::Io(
            std::io::ErrorKind::InvalidData.into()
        )));
        // ENOSPC, EACCES, EIO: the file may be fine, and a new one would fail the same way.
        for errno in [28, 13, 5] {
            let e = redb::Error::Io(std::io::Error::from_raw_os_error(errno));
            assert!(matches!(StoreFailure::from(e), StoreFailure::Other(_)));
        }
        assert!(!damaged(redb::Error::PreviousIo));
        assert!(matches!(
            StoreFailure::from(redb::Error::DatabaseAlreadyOpen),
            StoreFailure::InUse
        ));
    }

    #[test]
    fn an_io_failure_keeps_the_cache_and_its_entries() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FeatureCache::open(dir.path()).unwrap();
        let k = ModelFingerprint::new(BackboneId::EfficientNetLite0, "w").key(&[1; 32], "");
        cache.put_many(&[(k, vec![0.5, 1.5])]).unwrap();
        let disk_full = cache
            .with_db(|_| -> std::result::Result<(), redb::Error> {
                Err(redb::Error::Io(std::io::Error::from_raw_os_error(28)))
            })
            .unwrap_err()
            .to_string();
        assert!(disk_full.contains(FILE_NAME), "{disk_full}");
        assert!(disk_full.contains("--bottleneck-dir"), "{disk_full}");
        assert!(set_aside_files(dir.path()).is_empty());
        assert!(matches!(cache.get(&k).unwrap(), Lookup::Hit(v) if v == vec![0.5, 1.5]));

        // Damage, by contrast, sets the file aside and starts a new cache.
        let damaged = cache.with_db(|_| -> std::result::Result<(), redb::Error> {
            Err(redb::Error::Corrupted("bad page".into()))
        });
        assert!(damaged.is_err());
        assert_eq!(set_aside_files(dir.path()).len(), 1);
        assert!(matches!(cache.get(&k).unwrap(), Lookup::Miss));
    }

    #[test]
    fn inspect_does_not_turn_files_into_caches_or_repair_them() {
        let empty = tempfile::tempdir().unwrap();
        std::fs::write(empty.path().join(FILE_NAME), b"").unwrap();
        assert!(matches!(
            inspect(empty.path()).unwrap(),
            Inspection::Healthy(CacheStats { entries: 0, .. })
        ));
        assert_eq!(std::fs::read(empty.path().join(FILE_NAME)).unwrap(), b"");

        // A copy taken while the cache is open is what a killed run leaves behind.
        let live = tempfile::tempdir().unwrap();
        let cache = FeatureCache::open(live.path()).unwrap();
        let k = ModelFingerprint::new(BackboneId::EfficientNetLite0, "w").key(&[4; 32], "");
        cache.put_many(&[(k, vec![2.0])]).unwrap();
        let killed = tempfile::tempdir().unwrap();
        let file = killed.path().join(FILE_NAME);
        std::fs::copy(cache.path(), &file).unwrap();
        drop(cache);
        assert!(matches!(
            inspect(killed.path()).unwrap(),
            Inspection::Repaired(CacheStats { entries: 1, .. })
        ));
        let repaired = FeatureCache::open(killed.path()).unwrap();
        assert!(matches!(repaired.get(&k).unwrap(), Lookup::Hit(v) if v == vec![2.0]));
        drop(repaired);
        assert!(matches!(
            inspect(killed.path()).unwrap(),
            Inspection::Healthy(CacheStats { entries: 1, .. })
        ));
    }

    #[test]
    fn entries_from_older_preprocessing_do_not_match() {
        // The fingerprints graft wrote before decoding honoured EXIF orientation (1) and
        // before the resize ran its passes in PIL's order (2): their entries hold other
        // pixels' features under the same file hashes.
        let backbone = BackboneId::EfficientNetLite0;
        let preprocess = serde_json::to_string(&backbone.spec().preprocess).unwrap();
        let new = ModelFingerprint::new(backbone, "w");
        for version in ["graft-features/1", "graft-features/2"] {
            let mut h = Sha256::new();
            for part in [version, backbone.name(), "w", &preprocess] {
                h.update((part.len() as u64).to_le_bytes());
                h.update(part.as_bytes());
            }
            let old = ModelFingerprint {
                digest: h.finalize().into(),
            };
            assert_ne!(old.key(&[3; 32], ""), new.key(&[3; 32], ""), "{version}");
        }
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
        // int8 features are another model's: their own keys; fp32 keys are unchanged.
        let int8 = ModelFingerprint::with_variant(BackboneId::EfficientNetLite0, "w1", "int8:k");
        let fp32 = ModelFingerprint::with_variant(BackboneId::EfficientNetLite0, "w1", "");
        assert_ne!(a.key(&img, ""), int8.key(&img, ""));
        assert_eq!(a.key(&img, ""), fp32.key(&img, ""));
    }
}
