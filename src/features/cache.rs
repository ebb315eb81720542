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

use std::path::{Path, PathBuf};

use redb::{Database, ReadableTableMetadata, TableDefinition};
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
    db: Database,
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

impl FeatureCache {
    /// Opens (or creates) the cache file `dir/features.redb`.
    pub fn open(dir: &Path) -> Result<FeatureCache> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join("features.redb");
        let db = Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => Error::invalid_input(
                &path,
                "the feature cache is in use by another graft process; wait for it to finish, \
                 or pass --bottleneck-dir to use another cache",
            ),
            e => Error::invalid_input(
                &path,
                format!("cannot open the feature cache: {e}; if it is damaged, delete the file (or run `graft cache clear`)"),
            ),
        })?;
        let cache = FeatureCache { db, path };
        // Create the table so that readers never see it missing.
        cache.put_many(&[])?;
        Ok(cache)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, e: impl std::fmt::Display) -> Error {
        Error::invalid_input(&self.path, format!("feature cache: {e}"))
    }

    pub fn get(&self, key: &[u8; 32]) -> Result<Lookup> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(TABLE).map_err(|e| self.err(e))?;
        let found = table.get(key.as_slice()).map_err(|e| self.err(e))?;
        Ok(match found {
            None => Lookup::Miss,
            Some(v) => match decode(v.value()) {
                Some(f) => Lookup::Hit(f),
                None => Lookup::Corrupt,
            },
        })
    }

    /// Stores all entries in one durable transaction: all or nothing.
    pub fn put_many(&self, entries: &[([u8; 32], Vec<f32>)]) -> Result<()> {
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut table = txn.open_table(TABLE).map_err(|e| self.err(e))?;
            for (key, features) in entries {
                table
                    .insert(key.as_slice(), encode(features).as_slice())
                    .map_err(|e| self.err(e))?;
            }
        }
        txn.commit().map_err(|e| self.err(e))
    }

    /// Overwrites an entry's bytes as they are (tests use it to simulate corruption).
    #[doc(hidden)]
    pub fn put_raw(&self, key: &[u8; 32], bytes: &[u8]) -> Result<()> {
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut table = txn.open_table(TABLE).map_err(|e| self.err(e))?;
            table
                .insert(key.as_slice(), bytes)
                .map_err(|e| self.err(e))?;
        }
        txn.commit().map_err(|e| self.err(e))
    }

    pub fn stats(&self) -> Result<CacheStats> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(TABLE).map_err(|e| self.err(e))?;
        let entries = table.len().map_err(|e| self.err(e))?;
        let file_bytes = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        Ok(CacheStats {
            entries,
            file_bytes,
        })
    }

    /// Removes every entry.
    pub fn clear(&self) -> Result<u64> {
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        let removed = {
            let mut table = txn.open_table(TABLE).map_err(|e| self.err(e))?;
            let n = table.len().map_err(|e| self.err(e))?;
            table.retain(|_, _| false).map_err(|e| self.err(e))?;
            n
        };
        txn.commit().map_err(|e| self.err(e))?;
        Ok(removed)
    }
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
