//! The fuzz targets of fuzz/ as proptest properties, for machines without a fuzzing
//! build (cargo-fuzz rebuilds every dependency with coverage instrumentation). The
//! inputs are the seeds `scripts/bad_inputs.py` writes, mutated: bits flipped, bytes
//! overwritten, cut short, spliced. The property is the same as the fuzzers': the
//! parser answers (Ok or Err) and never panics.
//!
//! Few cases by default so the suite stays quick; for a longer local run:
//! `PROPTEST_CASES=20000 cargo test --release --test fuzz_props`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use proptest::prelude::*;
use tempfile::TempDir;

use graft::bundle::Bundle;
use graft::dataset::classes::Dataset;
use graft::dataset::organize::{name_problem, read_labels_csv};
use graft::image::{decode_rgb8_bytes, DecodeLimits};
use graft::weights::load_safetensors;
use graft::weights::pth::read_pth_bytes;

/// 64 cases per property unless `PROPTEST_CASES` says otherwise (proptest's own default,
/// 256, makes this file the slowest of the suite).
fn cases() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    ProptestConfig::with_cases(cases)
}

/// The hostile corpus, written once per test binary.
fn corpus() -> &'static Path {
    static DIR: OnceLock<(TempDir, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("c");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/bad_inputs.py");
        let out = Command::new("python3")
            .arg(&script)
            .arg("--output")
            .arg(&root)
            .args(["--seed", "11", "--no-symlinks"])
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run python3 ({e}): this test needs python3 on PATH to write its seeds \
                     with {}",
                    script.display()
                )
            });
        assert!(
            out.status.success(),
            "{} failed:\n{}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        (dir, root)
    })
    .1
}

/// The regular files under `sub` (recursively) of at most 64 KiB, as seeds.
fn seeds(sub: &str, ext: &[&str]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut stack = vec![corpus().join(sub)];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file()
                && meta.len() <= 64 * 1024
                && (ext.is_empty()
                    || path
                        .extension()
                        .is_some_and(|e| ext.iter().any(|x| e == *x)))
            {
                out.push(std::fs::read(&path).unwrap());
            }
        }
    }
    out.sort();
    assert!(out.len() >= 5, "too few seeds under {sub}: {}", out.len());
    out
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Set(usize, u8),
    Truncate(usize),
    Insert(usize, Vec<u8>),
    Repeat(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, v)| Mutation::Set(i, v)),
        any::<usize>().prop_map(Mutation::Truncate),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..16)
        )
            .prop_map(|(i, v)| Mutation::Insert(i, v)),
        (any::<usize>(), 1usize..64).prop_map(|(i, n)| Mutation::Repeat(i, n)),
    ]
}

fn apply(mut data: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let len = data.len().max(1);
        match m {
            Mutation::Flip(i, bit) if !data.is_empty() => data[i % len] ^= 1 << bit,
            Mutation::Set(i, v) if !data.is_empty() => data[i % len] = *v,
            Mutation::Truncate(i) => data.truncate(i % len),
            Mutation::Insert(i, bytes) => {
                let at = i % (data.len() + 1);
                data.splice(at..at, bytes.iter().copied());
            }
            Mutation::Repeat(i, n) if !data.is_empty() => {
                let at = i % len;
                let end = (at + n).min(data.len());
                let copy = data[at..end].to_vec();
                data.splice(at..at, copy);
            }
            _ => {}
        }
    }
    data
}

/// A seed from `pool`, mutated 0 to 8 times.
fn input(pool: &'static [Vec<u8>]) -> impl Strategy<Value = Vec<u8>> {
    (0..pool.len(), proptest::collection::vec(mutation(), 0..8))
        .prop_map(move |(i, ms)| apply(pool[i].clone(), &ms))
}

fn pool(cell: &'static OnceLock<Vec<Vec<u8>>>, sub: &str, ext: &[&str]) -> &'static [Vec<u8>] {
    cell.get_or_init(|| seeds(sub, ext))
}

proptest! {
    #![proptest_config(cases())]
    #[test]
    fn decoding_any_image_bytes_never_panics(
        data in input(pool({ static P: OnceLock<Vec<Vec<u8>>> = OnceLock::new(); &P }, "images", &[]))
    ) {
        let limits = DecodeLimits { max_pixels: 1 << 16 };
        if let Ok(rgb) = decode_rgb8_bytes(&data, Path::new("p.img"), limits) {
            let (w, h) = rgb.dimensions();
            prop_assert!(u64::from(w) * u64::from(h) <= limits.max_pixels);
        }
    }

    #[test]
    fn reading_any_labels_csv_never_panics(
        data in input(pool({ static P: OnceLock<Vec<Vec<u8>>> = OnceLock::new(); &P }, "labels", &[]))
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("labels.csv");
        std::fs::write(&path, &data).unwrap();
        if let Ok(csv) = read_labels_csv(&path) {
            for row in &csv.rows {
                let _ = name_problem("label", &row.label);
                let _ = name_problem("image id", &row.image_id);
            }
        }
        let _ = Dataset::from_labels_csv(&path, Some(dir.path()));
    }

    #[test]
    fn loading_any_pth_checkpoint_never_panics(
        data in input(pool({ static P: OnceLock<Vec<Vec<u8>>> = OnceLock::new(); &P }, "weights", &["pth"]))
    ) {
        let _ = read_pth_bytes(Path::new("p.pth"), &data);
    }

    #[test]
    fn loading_any_safetensors_never_panics(
        data in input(pool({ static P: OnceLock<Vec<Vec<u8>>> = OnceLock::new(); &P }, "weights", &["safetensors"]))
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        std::fs::write(&path, &data).unwrap();
        let _ = load_safetensors(&path);
    }

    #[test]
    fn loading_any_tampered_bundle_never_panics(
        manifest in input(pool({ static P: OnceLock<Vec<Vec<u8>>> = OnceLock::new(); &P }, "bundles", &["json"])),
        head in input(pool({ static P: OnceLock<Vec<Vec<u8>>> = OnceLock::new(); &P }, "bundles", &["safetensors"])),
    ) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("manifest.json"), &manifest).unwrap();
        std::fs::write(dir.path().join("head.safetensors"), &head).unwrap();
        if let Ok(bundle) = Bundle::load(dir.path()) {
            let _ = bundle.check_manifest(dir.path());
        }
    }
}

/// What the classify route does before the network, as fuzz/fuzz_targets/classify_request.rs.
fn classify_request(multipart: bool, query: &str, body: Vec<u8>) {
    use axum::body::Bytes;
    use axum::http::{header, Request};
    use graft::image::preprocess::preprocess;
    use graft::serve::routes::{check_format, parse_top_k, split_uploads};
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    let rt = RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    });
    let _ = parse_top_k(Some(query), 3);
    let mut request = Request::post("/v1/classify");
    if multipart {
        request = request.header(header::CONTENT_TYPE, "multipart/form-data; boundary=X");
    }
    let (parts, ()) = request.body(()).unwrap().into_parts();
    let Ok(uploads) = rt.block_on(split_uploads(parts, Bytes::from(body))) else {
        return;
    };
    let spec = graft::backbone::BackboneId::EfficientNetLite0
        .spec()
        .preprocess;
    for upload in uploads {
        if check_format(&upload).is_ok() {
            let limits = DecodeLimits {
                max_pixels: 1 << 16,
            };
            if let Ok(rgb) = decode_rgb8_bytes(&upload.bytes, Path::new(&upload.name), limits) {
                let _ = preprocess(&rgb, &spec);
            }
        }
    }
}

proptest! {
    #![proptest_config(cases())]
    #[test]
    fn any_classify_request_body_never_panics(
        image in input(pool({ static P: OnceLock<Vec<Vec<u8>>> = OnceLock::new(); &P }, "images", &[])),
        multipart in any::<bool>(),
        query in "(top_k=[0-9a-z-]{0,4}&?){0,2}",
        cut in any::<usize>(),
    ) {
        let body = if multipart {
            let mut b = b"--X\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.jpg\"\r\n\r\n".to_vec();
            b.extend_from_slice(&image);
            b.extend_from_slice(b"\r\n--X--\r\n");
            let keep = b.len() - cut % (b.len() / 4 + 1);
            b.truncate(keep);
            b
        } else {
            image
        };
        classify_request(multipart, &query, body);
    }
}
