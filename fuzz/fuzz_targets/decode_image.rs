//! Any bytes through the image decoder graft uses for every file and upload, with a
//! small pixel limit so a header that claims a huge image is refused, not allocated.
#![no_main]

use std::path::Path;

use graft::image::{decode_rgb8_bytes, DecodeLimits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = DecodeLimits {
        max_pixels: 1 << 16,
    };
    if let Ok(rgb) = decode_rgb8_bytes(data, Path::new("fuzz.img"), limits) {
        let (w, h) = rgb.dimensions();
        assert!(u64::from(w) * u64::from(h) <= limits.max_pixels);
    }
});
