//! Class trees, calibration, `--unknown-below` and the open-set check, end to end
//! through the real binary on real grocery photos in nested folders
//! (`Fruit/Apple/Granny-Smith/`), with EfficientNet-Lite0.
//!
//! The backbone weights come from `GRAFT_HOME` (scripts/test.sh sets it to
//! target/graft-home; `graft models fetch efficientnet-lite0` installs them there).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use serde_json::Value;
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

    fn ok(self) -> Run {
        assert_eq!(self.code, Some(0), "{}", self.both());
        self
    }

    fn fails(&self, code: i32, needles: &[&str]) {
        assert_eq!(self.code, Some(code), "{}", self.both());
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

/// GRAFT_HOME with the Lite0 weights: the environment's, else target/graft-home.
fn home() -> &'static Path {
    static HOME: OnceLock<PathBuf> = OnceLock::new();
    HOME.get_or_init(|| {
        let dir = std::env::var_os("GRAFT_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/graft-home"));
        assert!(
            dir.join(format!("models/{BACKBONE}.safetensors")).is_file(),
            "{} lacks the {BACKBONE} weights: run `GRAFT_HOME={} graft models fetch {BACKBONE}` \
             (or scripts/test.sh, which does)",
            dir.display(),
            dir.display()
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

fn photos_root() -> PathBuf {
    let root =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/grocery-store/dataset/train");
    assert!(
        root.is_dir(),
        "{} is missing: these tests need the GroceryStore dataset's photos there",
        root.display()
    );
    root
}

/// Four classes at three depths: two apples, a banana (a leaf at depth 2), carrots.
const TREE: [&str; 4] = [
    "Fruit/Apple/Granny-Smith",
    "Fruit/Apple/Pink-Lady",
    "Fruit/Banana",
    "Vegetables/Carrots",
];

/// Copies the first `n` photos of each class path of `TREE` into `root/<path>/`.
fn tree_folders(root: &Path, n: usize) {
    for class in TREE {
        let from = photos_root().join(class);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&from)
            .unwrap_or_else(|e| panic!("{}: {e}", from.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
            .collect();
        files.sort();
        assert!(files.len() >= n, "{} has too few photos", from.display());
        let to = root.join(class);
        std::fs::create_dir_all(&to).unwrap();
        for f in files.iter().take(n) {
            std::fs::copy(f, to.join(f.file_name().unwrap())).unwrap();
        }
    }
}

/// One model trained on the tree, shared by the tests that only read it.
struct Shared {
    dir: TempDir,
    data: PathBuf,
    model: PathBuf,
    bottlenecks: PathBuf,
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        tree_folders(&data, 10);
        let model = dir.path().join("model");
        let bottlenecks = dir.path().join("bottlenecks");
        graft(
            dir.path(),
            &[
                "train",
                s(&data),
                "--backbone",
                BACKBONE,
                "--bottleneck-dir",
                s(&bottlenecks),
                "-o",
                s(&model),
                "--how-many-training-steps",
                "60",
                "--validation-percentage",
                "25",
                "--testing-percentage",
                "25",
                "--unknown-below",
                "0.3",
            ],
        )
        .ok();
        Shared {
            dir,
            data,
            model,
            bottlenecks,
        }
    })
}

/// The DOM of `page` after headless Chromium (offline, fresh profile) ran its scripts,
/// failing unless they finished without error. $GRAFT_CHROMIUM, else `chromium`.
fn rendered_in_chromium(page: &Path) -> String {
    let browser = std::env::var_os("GRAFT_CHROMIUM").unwrap_or_else(|| "chromium".into());
    let profile = tempfile::tempdir().unwrap();
    let mut user_data = std::ffi::OsString::from("--user-data-dir=");
    user_data.push(profile.path());
    let out = Command::new(&browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--enable-logging=stderr",
            "--v=0",
            "--dump-dom",
        ])
        .arg(user_data)
        .arg(page)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {browser:?} for the browser check of report.html ({e}): install \
                 Debian's chromium (`apt-get install chromium`) or set GRAFT_CHROMIUM"
            )
        });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "chromium failed:\n{stderr}");
    for line in stderr.lines() {
        assert!(
            !line.contains("Uncaught") && !line.contains(":CONSOLE"),
            "the page logged to the console: {line}"
        );
    }
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    let root = &dom[dom.find("<html").expect("an <html> element")..];
    let root = &root[..root.find('>').unwrap_or(0)];
    assert!(
        root.contains("data-report-ready=\"yes\"") && !root.contains("data-js-error"),
        "the page's script did not finish cleanly: {root}"
    );
    dom
}

/// The shared model's feature cache takes an exclusive lock: its users take turns.
fn cache_turn() -> std::sync::MutexGuard<'static, ()> {
    static CACHE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    CACHE.lock().unwrap_or_else(|e| e.into_inner())
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn the_bundle_knows_the_tree_its_temperature_and_default_threshold() {
    let f = shared();
    let manifest = read_json(&f.model.join("manifest.json"));
    assert_eq!(
        manifest["labels"],
        serde_json::json!(["Banana", "Carrots", "Granny-Smith", "Pink-Lady"])
    );
    assert_eq!(
        manifest["class_paths"],
        serde_json::json!([
            "Fruit/Banana",
            "Vegetables/Carrots",
            "Fruit/Apple/Granny-Smith",
            "Fruit/Apple/Pink-Lady"
        ])
    );
    // The fit itself is checked by the unit tests; here, that it is stored twice alike.
    let t = manifest["temperature"].as_f64().unwrap();
    let recorded = manifest["metrics"]["temperature"].as_f64().unwrap();
    assert!(t > 0.0 && (t - recorded).abs() < 1e-6, "{manifest}");
    assert!((manifest["unknown_below"].as_f64().unwrap() - 0.3).abs() < 1e-6);
    for key in ["test_ece_uncalibrated", "test_ece_calibrated"] {
        let ece = manifest["metrics"][key].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&ece), "{key}: {manifest}");
    }
}

#[test]
fn evaluate_scores_every_level_and_writes_predictions_a_script_can_check() {
    let f = shared();
    let out = f.dir.path().join("eval-levels");
    let turn = cache_turn();
    let run = graft(
        f.dir.path(),
        &[
            "evaluate",
            s(&f.model),
            s(&f.data),
            "--bottleneck-dir",
            s(&f.bottlenecks),
            "--output-dir",
            s(&out),
        ],
    )
    .ok();
    drop(turn);
    assert!(
        run.stdout.contains("level 1 (2 groups): top-1 accuracy"),
        "{}",
        run.both()
    );
    assert!(run.stdout.contains("level 2 (3 groups): top-1 accuracy"));
    assert!(run.stdout.contains("fine: top-1 accuracy"));
    assert!(run.stdout.contains("calibration: temperature"));
    let metrics = read_json(&out.join("metrics.json"));
    let levels = metrics["levels"].as_array().unwrap();
    assert_eq!(levels.len(), 2);
    assert_eq!(
        levels[0]["labels"],
        serde_json::json!(["Fruit", "Vegetables"])
    );
    assert_eq!(
        levels[1]["labels"],
        serde_json::json!(["Fruit/Apple", "Fruit/Banana", "Vegetables/Carrots"])
    );
    // Recompute every level's top-1 from predictions.csv: an answer counts at a level
    // when its ancestor there is right.
    let text = std::fs::read_to_string(out.join("predictions.csv")).unwrap();
    let mut rows = text.lines();
    assert_eq!(
        rows.next(),
        Some("path,true,predicted,score,answer,true_path,predicted_path")
    );
    let rows: Vec<Vec<&str>> = rows.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 40);
    let prefix = |p: &str, level: usize| p.split('/').take(level).collect::<Vec<_>>().join("/");
    for (level, json) in [(1, &levels[0]), (2, &levels[1])] {
        let right = rows
            .iter()
            .filter(|r| prefix(r[5], level) == prefix(r[6], level))
            .count();
        let top1 = json["top1_accuracy"].as_f64().unwrap();
        assert!((top1 - right as f64 / 40.0).abs() < 1e-9, "level {level}");
    }
    let fine = rows.iter().filter(|r| r[1] == r[2]).count();
    assert!((metrics["top1_accuracy"].as_f64().unwrap() - fine as f64 / 40.0).abs() < 1e-9);
    // The stored default threshold is in force: below it the answer is `unknown`.
    assert_eq!(
        metrics["rejection"]["unknown_below"]
            .as_f64()
            .map(|p| (p * 10.0).round()),
        Some(3.0)
    );
    for r in &rows {
        let score: f64 = r[3].parse().unwrap();
        assert_eq!(r[4] == "unknown", score < 0.3, "{r:?}");
    }
    let c = &metrics["calibration"];
    assert!(c["ece_calibrated"].as_f64().unwrap() >= 0.0);
    assert_eq!(c["reliability_calibrated"].as_array().unwrap().len(), 15);
    assert_eq!(metrics["rejection"]["table"].as_array().unwrap().len(), 9);
    let html = rendered_in_chromium(&out.join("report.html"));
    for id in [
        "id=\"levels-table\"",
        "id=\"level-heatmap-1\"",
        "id=\"level-heatmap-2\"",
        "id=\"confusion-heatmap\"",
        "id=\"reliability-diagram\"",
        "id=\"risk-coverage\"",
        "id=\"threshold-table\"",
    ] {
        assert!(html.contains(id), "report.html lacks {id}");
    }
}

#[test]
fn predict_returns_class_paths_and_unknown_below_the_threshold() {
    let f = shared();
    let photo = f.data.join("Fruit/Apple/Granny-Smith");
    let run = graft(
        f.dir.path(),
        &[
            "predict",
            s(&f.model),
            s(&photo),
            "--format",
            "json",
            "--top-k",
            "2",
        ],
    )
    .ok();
    let json: Value = serde_json::from_str(&run.stdout).unwrap();
    let first = &json[0];
    let label = first["top"][0]["label"].as_str().unwrap();
    let path = first["top"][0]["class_path"].as_str().unwrap();
    assert!(TREE.contains(&path) && path.ends_with(label), "{first}");
    // At a threshold between the lowest and highest top score, exactly the photos
    // scoring below it are answered `unknown`, in every output.
    let run = graft(
        f.dir.path(),
        &["predict", s(&f.model), s(&photo), "--format", "json"],
    )
    .ok();
    let json: Value = serde_json::from_str(&run.stdout).unwrap();
    let mut scores: Vec<f64> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["top"][0]["score"].as_f64().unwrap())
        .collect();
    scores.sort_by(f64::total_cmp);
    assert!(scores[0] < scores[9], "all top scores equal: {scores:?}");
    let p = (scores[4] + scores[5]) / 2.0;
    let p = if p > scores[4] { p } else { scores[5] };
    let run = graft(
        f.dir.path(),
        &[
            "predict",
            s(&f.model),
            s(&photo),
            "--format",
            "csv",
            "--top-k",
            "2",
            "--unknown-below",
            &p.to_string(),
        ],
    )
    .ok();
    let mut lines = run.stdout.lines();
    assert_eq!(
        lines.next(),
        Some("image_id,label,class_path,score,label_2,score_2")
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 10);
    let mut refused = 0;
    for r in &rows {
        let score: f64 = r[3].parse().unwrap();
        let unknown = r[1] == "unknown";
        assert_eq!(unknown, score < p, "P {p}: {r:?}");
        assert_eq!(unknown, r[2] == "unknown", "{r:?}");
        refused += usize::from(unknown);
    }
    assert!(refused > 0 && refused < 10, "P {p}: {rows:?}");
}

#[test]
fn unknown_below_outside_zero_one_is_refused_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    for value in ["0", "1", "1.5", "-0.2", "nan", "x"] {
        for command in ["predict", "evaluate", "serve"] {
            let mut args = vec![command, "model"];
            if command != "serve" {
                args.push("photos");
            }
            args.extend(["--unknown-below", value]);
            let why = if value == "x" {
                "not a number"
            } else {
                "above 0 and below 1"
            };
            graft(dir.path(), &args).fails(2, &["--unknown-below", why]);
        }
        graft(dir.path(), &["train", "photos", "--unknown-below", value])
            .fails(2, &["--unknown-below"]);
    }
    // A value inside (0, 1) passes the command line: what fails is the missing model.
    graft(
        dir.path(),
        &["predict", "model", "photos", "--unknown-below", "0.5"],
    )
    .fails(1, &["model"]);
}

#[test]
fn a_labels_csv_that_puts_a_class_at_two_paths_names_both_lines() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("labels.csv");
    std::fs::write(&csv, "path,label\n1.jpg,A/B\n2.jpg,A/C\n3.jpg,C/B\n").unwrap();
    graft(
        dir.path(),
        &["train", "--labels", s(&csv), "--backbone", BACKBONE],
    )
    .fails(
        1,
        &[
            "labels.csv",
            "line 2",
            "line 4",
            "'A/B'",
            "'C/B'",
            "same path",
        ],
    );
}

#[test]
fn train_picks_unknown_below_auto_from_the_training_photos_and_stores_it() {
    let f = shared();
    let dir = f.dir.path();
    let model = dir.join("model-auto");
    let _turn = cache_turn();
    let run = graft(
        dir,
        &[
            "train",
            s(&f.data),
            "--backbone",
            BACKBONE,
            "--bottleneck-dir",
            s(&f.bottlenecks),
            "-o",
            s(&model),
            "--how-many-training-steps",
            "60",
            "--validation-percentage",
            "25",
            "--testing-percentage",
            "25",
            "--unknown-below",
            "auto",
        ],
    )
    .ok();
    let manifest = read_json(&model.join("manifest.json"));
    let p = manifest["unknown_below"].as_f64().unwrap();
    let draws = manifest["training"]["unknown_below_auto"]
        .as_array()
        .unwrap();
    let mut thresholds: Vec<f64> = draws
        .iter()
        .map(|d| d["threshold"].as_f64().unwrap())
        .collect();
    thresholds.sort_by(f64::total_cmp);
    assert_eq!(thresholds.len(), 3, "{manifest}");
    assert_eq!(
        p as f32, thresholds[1] as f32,
        "the stored P is the median draw"
    );
    assert!(p > 0.0 && p < 1.0);
    assert!(
        run.both().contains("--unknown-below auto: "),
        "{}",
        run.both()
    );
    // Every consumer answers with it by default.
    let eval = graft(
        dir,
        &[
            "evaluate",
            s(&model),
            s(&f.data),
            "--bottleneck-dir",
            s(&f.bottlenecks),
            "--output-dir",
            s(&dir.join("eval-auto")),
        ],
    )
    .ok();
    assert!(
        eval.stdout.contains(&format!("unknown below {}", p as f32)),
        "{}",
        eval.both()
    );

    // Two classes cannot play out a new product and keep two known.
    let two = dir.join("two");
    for class in &TREE[..2] {
        let to = two.join(class);
        std::fs::create_dir_all(&to).unwrap();
        for e in std::fs::read_dir(f.data.join(class)).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
    graft(
        dir,
        &[
            "train",
            s(&two),
            "--backbone",
            BACKBONE,
            "--bottleneck-dir",
            s(&f.bottlenecks),
            "-o",
            s(&dir.join("model-two")),
            "--how-many-training-steps",
            "20",
            "--unknown-below",
            "auto",
        ],
    )
    .fails(
        1,
        &[
            "--unknown-below auto",
            "at least 3 classes",
            "give a number P",
        ],
    );
    assert!(
        !dir.join("model-two").exists(),
        "nothing written on refusal"
    );
}

#[test]
fn open_set_holds_classes_out_and_scores_their_rejection() {
    let f = shared();
    let out = f.dir.path().join("eval-open");
    let _turn = cache_turn();
    let base = [
        "evaluate",
        s(&f.model),
        s(&f.data),
        "--bottleneck-dir",
        s(&f.bottlenecks),
        "--output-dir",
        s(&out),
        "--open-set-train",
        s(&f.data),
    ];
    let mut args = base.to_vec();
    args.extend(["--open-set-classes", "1", "--open-set-seeds", "2"]);
    let run = graft(f.dir.path(), &args).ok();
    assert!(
        run.stdout.contains("mean AUROC: max-softmax"),
        "{}",
        run.both()
    );
    let report = read_json(&out.join("openset.json"));
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    for r in runs {
        assert_eq!(r["held_out"].as_array().unwrap().len(), 1);
        assert_eq!(r["held_out_photos"], 10);
        assert_eq!(r["known_photos"], 30);
        for score in ["max_softmax", "energy", "class_mean"] {
            let auc = r["auroc"][score].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&auc), "{r}");
        }
        // The automatic threshold comes from the run's three known classes alone: each
        // of its draws leaves one of them out, never the class the run held out.
        let auto = &r["auto"];
        let p = auto["threshold"].as_f64().unwrap();
        assert!(p > 0.0 && p < 1.0, "{auto}");
        let held = &r["held_out"][0];
        let draws = auto["draws"].as_array().unwrap();
        assert_eq!(draws.len(), 3, "{auto}");
        for d in draws {
            let left_out = d["held_out"].as_array().unwrap();
            assert_eq!(left_out.len(), 1, "{auto}");
            assert_ne!(&left_out[0], held, "{r}");
        }
    }
    assert!(
        run.stdout.contains("--unknown-below auto picks"),
        "{}",
        run.both()
    );
    // Four classes: at most two can be held out, two must stay known.
    let mut args = base.to_vec();
    args.extend(["--open-set-classes", "3"]);
    graft(f.dir.path(), &args).fails(1, &["--open-set-classes 3", "4 classes", "give 1 to 2"]);
}
