//! `extract --shard I/N`: which of N workers extracts an image.
//!
//! An image belongs to shard `u64::from_be_bytes(SHA-256(relative path)[..8]) mod N`,
//! where the relative path is the `/`-separated path under the extracted folder (the
//! one the Parquet `path` column holds). The relative path, not the file's content hash:
//! every worker decides from the folder listing alone, without reading a single image
//! first (on shared storage, reading every photo on every worker would cost N times
//! the extraction's own reads), and it is the same on every machine and operating
//! system that sees the same tree, wherever it is mounted. Two copies of one photo
//! under different names are two images, as everywhere else in graft.
//!
//! N workers with I = 0..N-1 therefore cover the folder exactly once, and a worker that
//! is run again (a retried Job pod, a requeued array task) takes exactly the same images.

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// One worker's part of the images: shard `index` of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u64,
    pub count: u64,
}

impl Shard {
    /// Every image: shard 0 of 1.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// Whether the image at `relative` (its path under the extracted folder) is this
    /// shard's.
    pub fn contains(&self, relative: &str) -> bool {
        shard_of(relative, self.count) == self.index
    }
}

/// The shard (0..count) of the image at `relative`; `count` is at least 1.
pub fn shard_of(relative: &str, count: u64) -> u64 {
    let digest = Sha256::digest(relative.as_bytes());
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(head) % count.max(1)
}

impl std::str::FromStr for Shard {
    type Err = Error;

    /// `I/N` with 0 <= I < N.
    fn from_str(text: &str) -> Result<Shard> {
        let bad = |why: &str| {
            Error::Invalid(format!(
                "{text:?} {why}: give I/N with N at least 1 and I from 0 to N-1, such as 0/4"
            ))
        };
        let (i, n) = text
            .trim()
            .split_once('/')
            .ok_or_else(|| bad("is not of the form I/N"))?;
        let index: u64 = i.trim().parse().map_err(|_| bad("has no whole number I"))?;
        let count: u64 = n.trim().parse().map_err(|_| bad("has no whole number N"))?;
        if count == 0 {
            return Err(bad("has N = 0"));
        }
        if index >= count {
            return Err(bad("has I not below N"));
        }
        Ok(Shard { index, count })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        assert_eq!(
            "2/7".parse::<Shard>().unwrap(),
            Shard { index: 2, count: 7 }
        );
        for bad in ["7/7", "0/0", "1", "a/2", "-1/2", "1/2/3", ""] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
    }

    #[test]
    fn shards_partition_and_do_not_move() {
        let paths: Vec<String> = (0..500)
            .map(|i| format!("class{}/{i}.jpg", i % 3))
            .collect();
        for n in [1u64, 2, 7] {
            let mut counts = vec![0usize; n as usize];
            for p in &paths {
                let owners: Vec<u64> = (0..n)
                    .filter(|&i| Shard { index: i, count: n }.contains(p))
                    .collect();
                assert_eq!(owners.len(), 1, "{p} in shards {owners:?} of {n}");
                counts[owners[0] as usize] += 1;
            }
            // Roughly even: no shard under half its share.
            assert!(
                counts.iter().all(|&c| c * 2 * n as usize >= paths.len()),
                "{counts:?}"
            );
        }
        // Pinned to values Python's hashlib gives for the documented rule
        // (`int.from_bytes(sha256(p).digest()[:8], "big") % n`), so a change of rule,
        // which would re-shard every deployment, fails here.
        assert_eq!(shard_of("Fruit/Apple/Golden-Delicious/0001.jpg", 7), 1);
        assert_eq!(shard_of("a.jpg", 1000), 26);
    }
}
