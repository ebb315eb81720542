//! retrain.py's stable train/validation/test split.
//!
//! Each image goes to a split by a hash of its name, so the split never changes when
//! images are added or the dataset moves, and images stay in their split between runs.
//! As in retrain.py: SHA-1 of the name with any `_nohash_...` suffix removed, mod 2^27,
//! scaled to a percentage and compared with the validation and testing percentages.
//!
//! Two deliberate differences, both so the rule does what retrain.py meant:
//! - The name hashed is the path relative to the dataset root (not the bare file name),
//!   so two classes' `0001.jpg` do not share a fate, and moving the root changes nothing.
//! - The extension is dropped before hashing, so `apple_12.jpg` and its augmented copies
//!   `apple_12_nohash_0.jpg`, ... (as `graft augment` names them) share a split. retrain.py
//!   hashes `apple_12.jpg` and `apple_12`, which can land in different splits and leak
//!   near-duplicates of training images into validation and test.

use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};

/// retrain.py's `MAX_NUM_IMAGES_PER_CLASS`: 2^27 - 1.
const MAX_NUM_IMAGES_PER_CLASS: u64 = (1 << 27) - 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Validation,
    Test,
}

impl Split {
    pub const ALL: [Split; 3] = [Split::Train, Split::Validation, Split::Test];

    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Validation => "validation",
            Split::Test => "test",
        }
    }
}

/// The name that decides an image's split: its relative path without extension and
/// without any `_nohash_...` suffix.
pub fn split_key(relative: &str) -> &str {
    let (dir_len, file) = match relative.rfind('/') {
        Some(i) => (i + 1, &relative[i + 1..]),
        None => (0, relative),
    };
    let stem_len = match file.find("_nohash_") {
        Some(i) => i,
        None => file.rfind('.').filter(|&i| i > 0).unwrap_or(file.len()),
    };
    &relative[..dir_len + stem_len]
}

/// retrain.py's `percentage_hash` of a split key, in [0, 100].
pub fn percentage_hash(key: &str) -> f64 {
    let digest = Sha1::digest(key.as_bytes());
    // int(hexdigest, 16) % 2^27 only depends on the last 27 bits of the digest.
    let tail = u32::from_be_bytes([digest[16], digest[17], digest[18], digest[19]]);
    let bucket = u64::from(tail) % (MAX_NUM_IMAGES_PER_CLASS + 1);
    bucket as f64 * (100.0 / MAX_NUM_IMAGES_PER_CLASS as f64)
}

/// The split of the image at `relative` (path relative to the dataset root).
pub fn which_split(relative: &str, validation_percentage: f64, testing_percentage: f64) -> Split {
    let p = percentage_hash(split_key(relative));
    if p < validation_percentage {
        Split::Validation
    } else if p < validation_percentage + testing_percentage {
        Split::Test
    } else {
        Split::Train
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn key_drops_extension_and_nohash_suffix() {
        assert_eq!(split_key("Banana/Banana_001.jpg"), "Banana/Banana_001");
        assert_eq!(
            split_key("Banana/Banana_001_nohash_3.jpg"),
            "Banana/Banana_001"
        );
        assert_eq!(split_key("a/b/.hidden"), "a/b/.hidden");
        assert_eq!(split_key("noext"), "noext");
    }

    #[test]
    fn percentage_hash_matches_python() {
        // python3 -c "import hashlib; h=int(hashlib.sha1(KEY.encode()).hexdigest(),16);
        //   print(repr((h % (2**27)) * (100.0 / (2**27 - 1))))"
        assert_eq!(percentage_hash("Banana/Banana_001"), 96.64999095089726);
        assert_eq!(
            percentage_hash("Fruit/Apple/Granny-Smith/Granny-Smith_012"),
            43.991784334121526
        );
    }

    #[test]
    fn roughly_the_requested_shares() {
        let n = 20_000;
        let mut counts = [0usize; 3];
        for i in 0..n {
            match which_split(&format!("class/img_{i}.jpg"), 10.0, 10.0) {
                Split::Train => counts[0] += 1,
                Split::Validation => counts[1] += 1,
                Split::Test => counts[2] += 1,
            }
        }
        assert!(
            (counts[1] as f64 / n as f64 - 0.10).abs() < 0.01,
            "{counts:?}"
        );
        assert!(
            (counts[2] as f64 / n as f64 - 0.10).abs() < 0.01,
            "{counts:?}"
        );
    }

    proptest! {
        #[test]
        fn augmented_copies_share_their_original_split(stem in "[a-zA-Z0-9_-]{1,20}", k in 0u32..1000) {
            prop_assume!(!stem.contains("_nohash_"));
            let original = format!("cls/{stem}.jpg");
            let copy = format!("cls/{stem}_nohash_{k}.jpg");
            prop_assert_eq!(which_split(&original, 10.0, 10.0), which_split(&copy, 10.0, 10.0));
        }

        #[test]
        fn split_is_deterministic(path in "[a-z]{1,8}/[a-z0-9]{1,12}\\.jpg") {
            prop_assert_eq!(which_split(&path, 15.0, 5.0), which_split(&path, 15.0, 5.0));
        }
    }
}
