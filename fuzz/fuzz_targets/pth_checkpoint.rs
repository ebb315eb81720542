//! Any bytes through the PyTorch checkpoint reader (zip or legacy pickle).
#![no_main]

use std::path::Path;

use graft::weights::pth::read_pth_bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = read_pth_bytes(Path::new("fuzz.pth"), data);
});
