//! Any bytes as a labels CSV, read both ways graft reads one: `organize`'s
//! `image_id,label` reader (and its name checks) and `train/evaluate --labels`.
#![no_main]

use std::sync::OnceLock;

use graft::dataset::classes::Dataset;
use graft::dataset::organize::{name_problem, read_labels_csv};
use libfuzzer_sys::fuzz_target;

fn dir() -> &'static tempfile::TempDir {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temp dir for the fuzz input"))
}

fuzz_target!(|data: &[u8]| {
    let path = dir().path().join("labels.csv");
    std::fs::write(&path, data).expect("write the fuzz input");
    if let Ok(csv) = read_labels_csv(&path) {
        for row in &csv.rows {
            let _ = name_problem("label", &row.label);
            let _ = name_problem("image id", &row.image_id);
        }
    }
    let _ = Dataset::from_labels_csv(&path, Some(dir().path()));
});
