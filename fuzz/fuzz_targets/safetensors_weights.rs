//! Any bytes as the installed backbone weights file (`<backbone>.safetensors`).
#![no_main]

use std::sync::OnceLock;

use graft::weights::load_safetensors;
use libfuzzer_sys::fuzz_target;

fn dir() -> &'static tempfile::TempDir {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temp dir for the fuzz input"))
}

fuzz_target!(|data: &[u8]| {
    let path = dir().path().join("weights.safetensors");
    std::fs::write(&path, data).expect("write the fuzz input");
    let _ = load_safetensors(&path);
});
