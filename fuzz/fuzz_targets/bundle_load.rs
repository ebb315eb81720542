//! A tampered model folder: the input is `manifest.json` (length-prefixed, u16 little
//! endian), then `head.safetensors`; both are written to a folder and `Bundle::load`ed,
//! then checked as `predict` and `serve` check a bundle before using it.
#![no_main]

use std::sync::OnceLock;

use graft::bundle::Bundle;
use libfuzzer_sys::fuzz_target;

fn dir() -> &'static tempfile::TempDir {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temp dir for the fuzz input"))
}

fuzz_target!(|data: &[u8]| {
    let Some((len, rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let len = usize::from(u16::from_le_bytes(*len)).min(rest.len());
    let (manifest, head) = rest.split_at(len);
    let folder = dir().path();
    std::fs::write(folder.join("manifest.json"), manifest).expect("write manifest.json");
    std::fs::write(folder.join("head.safetensors"), head).expect("write head.safetensors");
    if let Ok(bundle) = Bundle::load(folder) {
        let _ = bundle.check_manifest(folder);
    }
});
