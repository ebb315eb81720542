//! Any bytes through the PyTorch checkpoint reader (zip or legacy pickle).
#![no_main]

use std::path::Path;

use graft::backbone::pth::{float_tensors, read_pth_bytes};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(tensors) = read_pth_bytes(Path::new("fuzz.pth"), data) {
        let _ = float_tensors(tensors);
    }
});
