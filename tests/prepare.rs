//! Preparing a dataset: `graft organize`, `graft stats`, `graft augment`, driven
//! through the real binary in temporary folders, plus the Keras parity of the
//! augmentation transform against fixtures written by `scripts/keras_parity.py`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use graft::image::augment::{apply_transform, Fill, TransformParams};
use image::{Rgb, RgbImage, Rgba, RgbaImage};

const BIN: &str = env!("CARGO_BIN_EXE_graft");

fn graft(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("GRAFT_LOG")
        .output()
        .expect("the graft binary runs")
}

fn graft_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("the graft binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn stdout(out: &Output) -> String {
    text(&out.stdout)
}

fn stderr(out: &Output) -> String {
    text(&out.stderr)
}

fn s(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

/// Every file under `root`, relative, with its bytes: a snapshot to prove that a run
/// wrote nothing (or nothing outside one folder).
fn snapshot(root: &Path) -> BTreeMap<String, Vec<u8>> {
    walkdir::WalkDir::new(root)
        .into_iter()
        .map(|e| e.expect("walk the temp dir"))
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            let rel = e
                .path()
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            (rel, std::fs::read(e.path()).unwrap())
        })
        .collect()
}

/// Images per class folder (relative folder -> file names), sorted.
fn class_files(root: &Path) -> BTreeMap<String, Vec<String>> {
    let mut classes: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for entry in graft::dataset::scan_images(root).unwrap().images {
        let (folder, name) = entry
            .relative
            .rsplit_once('/')
            .unwrap_or(("", &entry.relative));
        classes
            .entry(folder.to_string())
            .or_default()
            .push(name.to_string());
    }
    classes
}

fn png(path: &Path, image: &RgbImage) {
    image
        .save_with_format(path, image::ImageFormat::Png)
        .unwrap();
}

fn small_image(seed: u8) -> RgbImage {
    RgbImage::from_fn(12, 9, |x, y| {
        Rgb([seed.wrapping_mul(37), (x * 20) as u8, (y * 25) as u8])
    })
}

// ---------------------------------------------------------------------------------
// Keras parity

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keras")
}

fn params_from(json: &serde_json::Value) -> TransformParams {
    let num = |k: &str| {
        json[k]
            .as_f64()
            .unwrap_or_else(|| panic!("cases.json: params.{k} is not a number"))
    };
    TransformParams {
        theta: num("theta"),
        tx: num("tx"),
        ty: num("ty"),
        shear: num("shear"),
        zx: num("zx"),
        zy: num("zy"),
        flip_horizontal: json["flip_horizontal"].as_bool().unwrap(),
        flip_vertical: json["flip_vertical"].as_bool().unwrap(),
        brightness: json["brightness"].as_f64(),
    }
}

/// graft's transform against Keras 3's `ImageDataGenerator.apply_transform` with the
/// same parameters. The fill modes are reproduced too, so no edge pixels are excluded:
/// the whole image must agree within 1 grey level on average (the bar), and in
/// practice nearly every value matches exactly.
#[test]
fn keras_parity() {
    let dir = fixtures();
    let cases_path = dir.join("cases.json");
    let cases: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cases_path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; the Keras fixtures are committed with the repo, regenerate them \
             with scripts/keras_parity.py",
                cases_path.display()
            )
        }))
        .unwrap();
    let cases = cases["cases"]
        .as_array()
        .expect("cases.json has a cases list");
    assert!(
        cases.len() >= 20,
        "expected the full fixture set, found {}",
        cases.len()
    );
    let (mut values, mut differing) = (0usize, 0usize);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let input = image::open(dir.join(case["input"].as_str().unwrap()))
            .unwrap()
            .to_rgb8();
        let expected = image::open(dir.join(case["expected"].as_str().unwrap()))
            .unwrap()
            .to_rgb8();
        let cval = case["cval"].as_f64().unwrap();
        let fill = match case["fill_mode"].as_str().unwrap() {
            "nearest" => Fill::Nearest,
            "constant" => Fill::Constant(cval),
            "reflect" => Fill::Reflect,
            "wrap" => Fill::Wrap,
            other => panic!("{name}: unknown fill mode {other}"),
        };
        let params = params_from(&case["params"]);
        let got = apply_transform(&input, &params, fill);
        assert_eq!(got.dimensions(), expected.dimensions(), "{name}");
        let diffs: Vec<u8> = got
            .iter()
            .zip(expected.iter())
            .map(|(a, b)| a.abs_diff(*b))
            .collect();
        let mean = diffs.iter().map(|&d| f64::from(d)).sum::<f64>() / diffs.len() as f64;
        let off_by_more = diffs.iter().filter(|&&d| d > 1).count();
        assert!(
            mean <= 1.0,
            "{name}: mean difference from Keras {mean:.3} grey levels (limit 1)"
        );
        // Tighter than the bar, to catch a convention slip that averages out.
        assert!(
            off_by_more * 100 <= diffs.len(),
            "{name}: {off_by_more} of {} values differ from Keras by more than 1",
            diffs.len()
        );
        values += diffs.len();
        differing += diffs.iter().filter(|&&d| d > 0).count();
    }
    eprintln!(
        "keras parity: {} cases, {differing} of {values} values differ from Keras",
        cases.len()
    );
}

// ---------------------------------------------------------------------------------
// End to end on real photos, in the seed's layout

/// The Grocery Store photos beside the project (see ../shared/README.md).
fn grocery_train() -> PathBuf {
    let root =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/grocery-store/dataset/train");
    assert!(
        root.is_dir(),
        "{} is missing: this test needs the Grocery Store dataset checked out at \
         ../shared/data/grocery-store beside the project (see ../shared/README.md)",
        root.display()
    );
    root
}

/// Builds the seed's layout from a few real classes: a flat folder of PNGs named by
/// id, and train.csv with image_id,label. Returns (csv, images folder, count per label).
fn seed_layout(work: &Path) -> (PathBuf, PathBuf, BTreeMap<String, usize>) {
    let train = grocery_train();
    let picks = [
        ("Fruit/Apple/Granny-Smith", 14),
        ("Fruit/Lime", 5),
        ("Vegetables/Asparagus", 3),
    ];
    let images = work.join("train_img");
    std::fs::create_dir_all(&images).unwrap();
    let mut csv = String::from("image_id,label\n");
    let mut counts = BTreeMap::new();
    let mut id = 0;
    for (folder, take) in picks {
        let dir = train.join(folder);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}; the dataset looks incomplete", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert!(
            files.len() >= take,
            "{} has fewer than {take} images",
            dir.display()
        );
        let label = folder.rsplit('/').next().unwrap();
        for file in &files[..take] {
            id += 1;
            let rgb = image::open(file).unwrap().to_rgb8();
            let target = images.join(format!("{id:04}.png"));
            if id == 2 {
                // One with an alpha channel, as exported PNGs often have.
                let rgba = RgbaImage::from_fn(rgb.width(), rgb.height(), |x, y| {
                    let p = rgb.get_pixel(x, y).0;
                    Rgba([p[0], p[1], p[2], 128])
                });
                rgba.save_with_format(&target, image::ImageFormat::Png)
                    .unwrap();
            } else {
                png(&target, &rgb);
            }
            csv.push_str(&format!("{id:04},{label}\n"));
        }
        counts.insert(label.to_string(), take);
    }
    let csv_path = work.join("train.csv");
    std::fs::write(&csv_path, csv).unwrap();
    (csv_path, images, counts)
}

#[test]
fn organize_stats_augment_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    let (csv, images, counts) = seed_layout(work);
    let train = work.join("train");

    // organize: one folder per label, every image an RGB JPEG.
    let out = graft(&[
        "organize",
        "--labels",
        s(&csv),
        "--images",
        s(&images),
        "--output",
        s(&train),
    ]);
    assert!(out.status.success(), "organize failed: {}", stderr(&out));
    assert!(
        stdout(&out).contains("22 images in 3 classes"),
        "{}",
        stdout(&out)
    );
    let organized = class_files(&train);
    for (label, n) in &counts {
        let files = &organized[label.as_str()];
        assert_eq!(files.len(), *n, "{label}: {files:?}");
        assert!(files.iter().all(|f| f.ends_with(".jpg")), "{files:?}");
    }
    let sample = image::open(train.join("Granny-Smith/0002.jpg")).unwrap();
    assert_eq!(sample.color(), image::ColorType::Rgb8, "alpha dropped");

    // stats on the folders and on the CSV agree; the chart is written.
    let plot = work.join("counts.png");
    let out = graft(&["stats", s(&train), "--plot", s(&plot)]);
    assert!(out.status.success(), "stats failed: {}", stderr(&out));
    let table = stdout(&out);
    assert!(table.contains("Granny-Smith      14   63.6%"), "{table}");
    assert!(table.contains("Lime               5   22.7%"), "{table}");
    assert!(table.contains("Asparagus          3   13.6%"), "{table}");
    assert!(table.contains("imbalance ratio 4.67"), "{table}");
    assert!(
        stderr(&out).contains("fewer than 20 images"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("Asparagus (3)") && stderr(&out).contains("Lime (5)"));
    let chart = image::open(&plot).expect("the chart is a PNG");
    assert!(chart.width() >= 640 && chart.height() >= 400);
    let out = graft(&["stats", "--labels", s(&csv)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let csv_table = stdout(&out);
    assert_eq!(
        csv_table.lines().take(5).collect::<Vec<_>>(),
        table.lines().take(5).collect::<Vec<_>>()
    );

    // augment: every class filled to exactly --class-size, larger ones left as they are.
    let balanced = work.join("balanced");
    let args = [
        "augment",
        s(&train),
        "--output",
        s(&balanced),
        "--class-size",
        "12",
        "--seed",
        "7",
    ];
    let out = graft_env(&args, &[("RAYON_NUM_THREADS", "2")]);
    assert!(out.status.success(), "augment failed: {}", stderr(&out));
    let after = class_files(&balanced);
    assert_eq!(
        after["Granny-Smith"].len(),
        14,
        "larger than class-size: unchanged"
    );
    assert_eq!(after["Lime"].len(), 12);
    assert_eq!(after["Asparagus"].len(), 12);
    assert!(
        after["Asparagus"].contains(&"0020_nohash_0.jpg".to_string()),
        "{:?}",
        after["Asparagus"]
    );
    assert!(
        after["Asparagus"].contains(&"0022_nohash_2.jpg".to_string()),
        "{:?}",
        after["Asparagus"]
    );
    assert_eq!(
        std::fs::read(balanced.join("Lime/0015.jpg")).unwrap(),
        std::fs::read(train.join("Lime/0015.jpg")).unwrap(),
        "originals are copied byte for byte"
    );
    let copy = image::open(balanced.join("Lime/0015_nohash_0.jpg"))
        .unwrap()
        .to_rgb8();
    let original = image::open(train.join("Lime/0015.jpg")).unwrap().to_rgb8();
    assert_eq!(copy.dimensions(), original.dimensions());
    assert_ne!(
        copy, original,
        "an augmented copy differs from its original"
    );

    // Same seed, one thread instead of two: identical files.
    let again = work.join("balanced-1-thread");
    let args_again = [
        "augment",
        s(&train),
        "--output",
        s(&again),
        "--class-size",
        "12",
        "--seed",
        "7",
    ];
    let out = graft_env(&args_again, &[("RAYON_NUM_THREADS", "1")]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        snapshot(&balanced) == snapshot(&again),
        "outputs depend on the thread count"
    );

    // Rerunning finds everything done and changes nothing.
    let before = snapshot(&balanced);
    let out = graft(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("written 0, already done 38"),
        "{}",
        stdout(&out)
    );
    assert!(snapshot(&balanced) == before);

    // A different seed gives different copies.
    let other = work.join("balanced-seed-8");
    let out = graft(&[
        "augment",
        s(&train),
        "--output",
        s(&other),
        "--class-size",
        "12",
        "--seed",
        "8",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_ne!(
        std::fs::read(other.join("Lime/0015_nohash_0.jpg")).unwrap(),
        std::fs::read(balanced.join("Lime/0015_nohash_0.jpg")).unwrap()
    );

    // Next in the seed's pipeline: `graft train` accepts the balanced folders, and the
    // augmented copies stay in their original's split (no leak into validation/test).
    let home = work.join("graft-home");
    let model = work.join("model");
    let out = graft_env(
        &[
            "train",
            s(&balanced),
            "--backbone",
            "efficientnet-lite0",
            "--how-many-training-steps",
            "20",
            "--output",
            s(&model),
            "--bottleneck-dir",
            s(&work.join("cache")),
        ],
        &[("GRAFT_HOME", s(&home))],
    );
    assert!(
        out.status.success(),
        "train on augmented folders failed: {}",
        stderr(&out)
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(model.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(
        manifest["labels"],
        serde_json::json!(["Asparagus", "Granny-Smith", "Lime"])
    );
    let sizes = &manifest["split_sizes"];
    let total: u64 = ["train", "validation", "test"]
        .iter()
        .map(|k| sizes[k].as_u64().unwrap())
        .sum();
    assert_eq!(total, 14 + 12 + 12);
    for name in after["Asparagus"].iter().chain(&after["Lime"]) {
        let original = name
            .split("_nohash_")
            .next()
            .unwrap()
            .trim_end_matches(".jpg");
        let split = |n: &str| graft::dataset::split::which_split(n, 10.0, 10.0);
        assert_eq!(
            split(&format!("Asparagus/{name}")),
            split(&format!("Asparagus/{original}.jpg")),
            "{name} must share its original's split"
        );
    }
}

// ---------------------------------------------------------------------------------
// organize: reading the CSV and converting images

#[test]
fn organize_reads_bom_crlf_quotes_and_converts_any_image_to_rgb() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("imgs");
    std::fs::create_dir_all(&images).unwrap();
    // RGBA: alpha is dropped, not composited (PIL's convert('RGB')).
    RgbaImage::from_pixel(4, 3, Rgba([10, 20, 30, 0]))
        .save_with_format(images.join("a.PNG"), image::ImageFormat::Png)
        .unwrap();
    // 16-bit RGB: scaled to 8 bits.
    image::ImageBuffer::<Rgb<u16>, _>::from_pixel(4, 3, Rgb([0xFFFF, 0x8080, 0]))
        .save_with_format(images.join("b.png"), image::ImageFormat::Png)
        .unwrap();
    // Palette (GIF) with an upper-case extension.
    RgbaImage::from_pixel(4, 3, Rgba([200, 100, 50, 255]))
        .save_with_format(images.join("c.GIF"), image::ImageFormat::Gif)
        .unwrap();
    png(&images.join("d.png"), &small_image(4));
    let csv = tmp.path().join("labels.csv");
    std::fs::write(
        &csv,
        b"\xEF\xBB\xBFimage_id,label\r\n\"a\",\"Milk, whole\"\r\nb,juice\r\n\"c\",juice\r\nd , juice \r\n",
    )
    .unwrap();
    let out_dir = tmp.path().join("out");
    let out = graft(&[
        "organize",
        "--labels",
        s(&csv),
        "--images",
        s(&images),
        "--output",
        s(&out_dir),
        "--format",
        "png",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let pixel = |rel: &str| {
        let img = image::open(out_dir.join(rel)).unwrap();
        assert_eq!(img.color(), image::ColorType::Rgb8, "{rel}");
        img.to_rgb8().get_pixel(1, 1).0
    };
    assert_eq!(pixel("Milk, whole/a.png"), [10, 20, 30]);
    assert_eq!(pixel("juice/b.png"), [255, 128, 0]);
    assert_eq!(pixel("juice/c.png"), [200, 100, 50]);
    assert_eq!(pixel("juice/d.png"), small_image(4).get_pixel(1, 1).0);
}

#[test]
fn organize_reruns_skip_done_work_and_flag_stale_files() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("imgs");
    std::fs::create_dir_all(&images).unwrap();
    for i in 1..=4u8 {
        png(&images.join(format!("{i:04}.png")), &small_image(i));
    }
    let csv = tmp.path().join("train.csv");
    std::fs::write(
        &csv,
        "image_id,label\n0001,milk\n0002,milk\n0003,juice\n0004,juice\n",
    )
    .unwrap();
    let out_dir = tmp.path().join("out");
    let args = [
        "organize",
        "--labels",
        s(&csv),
        "--images",
        s(&images),
        "--output",
        s(&out_dir),
    ];
    let first = graft(&args);
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(
        stdout(&first).contains("written 4, already done 0"),
        "{}",
        stdout(&first)
    );
    let written = snapshot(&out_dir);
    assert_eq!(
        written.len(),
        4,
        "no temporary files left behind: {:?}",
        written.keys()
    );

    let again = graft(&args);
    assert!(again.status.success());
    assert!(
        stdout(&again).contains("written 0, already done 4"),
        "{}",
        stdout(&again)
    );
    assert!(snapshot(&out_dir) == written);

    // A relabelled image leaves its old copy behind: say so.
    std::fs::write(
        &csv,
        "image_id,label\n0001,milk\n0002,juice\n0003,juice\n0004,juice\n",
    )
    .unwrap();
    let relabelled = graft(&args);
    assert!(relabelled.status.success());
    let err = stderr(&relabelled);
    assert!(
        err.contains("1 image(s)") && err.contains("milk/0002.jpg"),
        "{err}"
    );
}

#[test]
fn organize_skips_an_undecodable_image_and_exits_3() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("imgs");
    std::fs::create_dir_all(&images).unwrap();
    png(&images.join("0001.png"), &small_image(1));
    std::fs::write(images.join("0002.png"), b"not a png at all").unwrap();
    let csv = tmp.path().join("train.csv");
    std::fs::write(&csv, "image_id,label\n0001,milk\n0002,milk\n").unwrap();
    let out_dir = tmp.path().join("out");
    let out = graft(&[
        "organize",
        "--labels",
        s(&csv),
        "--images",
        s(&images),
        "--output",
        s(&out_dir),
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("0002.png") && stderr(&out).contains("line 3"),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).contains("failed 1"), "{}", stdout(&out));
    assert!(out_dir.join("milk/0001.jpg").is_file());
    assert!(!out_dir.join("milk/0002.jpg").exists());
}

// ---------------------------------------------------------------------------------
// organize: refusals. Each names the row or file, and nothing is written at all.

struct Refusal {
    what: &'static str,
    csv: &'static [u8],
    /// Extra files in the images folder.
    extra_files: &'static [&'static str],
    /// Each must appear in the error.
    expect: &'static [&'static str],
}

const REFUSALS: &[Refusal] = &[
    Refusal {
        what: "empty label",
        csv: b"image_id,label\n0001,milk\n0002,\n",
        extra_files: &[],
        expect: &["line 3", "label \"\"", "empty"],
    },
    Refusal {
        what: "slash",
        csv: b"image_id,label\n0001,milk\n0002,a/b\n",
        extra_files: &[],
        expect: &["line 3", "\"a/b\"", "'/'"],
    },
    Refusal {
        what: "climbing out",
        csv: b"image_id,label\n0001,../../escape\n",
        extra_files: &[],
        expect: &["line 2", "../../escape"],
    },
    Refusal {
        what: "backslash",
        csv: b"image_id,label\n0001,milk\n0002,a\\b\n",
        extra_files: &[],
        expect: &["line 3", "'\\'"],
    },
    Refusal {
        what: "dot dot",
        csv: b"image_id,label\n0001,..\n",
        extra_files: &[],
        expect: &["line 2", "'..'"],
    },
    Refusal {
        what: "NUL",
        csv: b"image_id,label\n0001,mi\0lk\n",
        extra_files: &[],
        expect: &["line 2", "NUL"],
    },
    Refusal {
        what: "control character",
        csv: b"image_id,label\n0001,mi\x07lk\n",
        extra_files: &[],
        expect: &["line 2", "control character"],
    },
    Refusal {
        what: "leading dot",
        csv: b"image_id,label\n0001,.milk\n",
        extra_files: &[],
        expect: &["line 2", "\".milk\"", "starts with '.'"],
    },
    Refusal {
        what: "id climbing out",
        csv: b"image_id,label\n../0001,milk\n",
        extra_files: &[],
        expect: &["line 2", "image id \"../0001\""],
    },
    Refusal {
        what: "duplicate id",
        csv: b"image_id,label\n0001,milk\n0002,milk\n0001,juice\n",
        extra_files: &[],
        expect: &["line 4", "\"0001\"", "also on line 2"],
    },
    Refusal {
        what: "missing file",
        csv: b"image_id,label\n0001,milk\n0099,milk\n",
        extra_files: &[],
        expect: &["line 3", "\"0099\"", "--skip-missing"],
    },
    Refusal {
        what: "two files",
        csv: b"image_id,label\n0001,milk\n0003,milk\n",
        extra_files: &["0003.png", "0003.JPG"],
        expect: &[
            "line 3",
            "\"0003\"",
            "matches 2 files",
            "0003.JPG",
            "0003.png",
        ],
    },
];

#[test]
fn organize_refuses_bad_rows_naming_them_and_writes_nothing() {
    for case in REFUSALS {
        let tmp = tempfile::tempdir().unwrap();
        let images = tmp.path().join("imgs");
        std::fs::create_dir_all(&images).unwrap();
        for i in 1..=2u8 {
            png(&images.join(format!("{i:04}.png")), &small_image(i));
        }
        for name in case.extra_files {
            png(&images.join(name), &small_image(9));
        }
        let csv = tmp.path().join("train.csv");
        std::fs::write(&csv, case.csv).unwrap();
        // The output sits two levels down, so "../../escape" would land inside tmp.
        let out_dir = tmp.path().join("a/b/out");
        let before = snapshot(tmp.path());
        let out = graft(&[
            "organize",
            "--labels",
            s(&csv),
            "--images",
            s(&images),
            "--output",
            s(&out_dir),
        ]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{}: {err}", case.what);
        assert!(
            err.contains(s(&csv)),
            "{}: the error names the CSV: {err}",
            case.what
        );
        for needle in case.expect {
            assert!(
                err.contains(needle),
                "{}: expected {needle:?} in: {err}",
                case.what
            );
        }
        assert!(err.contains("nothing was written"), "{}: {err}", case.what);
        assert!(
            snapshot(tmp.path()) == before,
            "{}: something was written",
            case.what
        );
        assert!(
            !tmp.path().join("a").exists(),
            "{}: the output was created",
            case.what
        );
    }
}

#[test]
fn organize_lists_every_bad_row_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("imgs");
    std::fs::create_dir_all(&images).unwrap();
    png(&images.join("0001.png"), &small_image(1));
    let csv = tmp.path().join("train.csv");
    std::fs::write(&csv, "image_id,label\n0001,a/b\n0002,milk\n0001,milk\n").unwrap();
    let out = graft(&[
        "organize",
        "--labels",
        s(&csv),
        "--images",
        s(&images),
        "--output",
        s(&tmp.path().join("out")),
    ]);
    let err = stderr(&out);
    assert!(err.contains("3 row(s)"), "{err}");
    assert!(
        err.contains("line 2") && err.contains("line 3") && err.contains("line 4"),
        "{err}"
    );
}

#[test]
fn organize_skip_missing_leaves_rows_out_and_exits_3() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("imgs");
    std::fs::create_dir_all(&images).unwrap();
    png(&images.join("0001.png"), &small_image(1));
    let csv = tmp.path().join("train.csv");
    std::fs::write(&csv, "image_id,label\n0001,milk\n0099,milk\n").unwrap();
    let out_dir = tmp.path().join("out");
    let before = snapshot(tmp.path());
    let out = graft(&[
        "organize",
        "--labels",
        s(&csv),
        "--images",
        s(&images),
        "--output",
        s(&out_dir),
        "--skip-missing",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("line 3") && stderr(&out).contains("0099"),
        "{}",
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("skipped (missing) 1"),
        "{}",
        stdout(&out)
    );
    let mut after = snapshot(tmp.path());
    after.retain(|k, _| !k.starts_with("out"));
    assert!(after == before, "only the output folder changed");
    assert_eq!(class_files(&out_dir)["milk"], vec!["0001.jpg"]);
}

// ---------------------------------------------------------------------------------
// stats and augment: bad input

#[test]
fn stats_needs_a_source_and_names_a_missing_one() {
    let out = graft(&["stats"]);
    assert_eq!(out.status.code(), Some(2), "a usage error");
    let out = graft(&["stats", "/no/such/folder"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("/no/such/folder"), "{}", stderr(&out));
}

fn class_tree(root: &Path, files: &[&str]) {
    for (i, rel) in files.iter().enumerate() {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        png(&path, &small_image(i as u8));
    }
}

#[test]
fn augment_refuses_bad_settings_and_colliding_names() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("train");
    class_tree(&src, &["milk/a.png", "milk/b.png", "juice/c.png"]);
    let dst = tmp.path().join("balanced");

    let out = graft(&[
        "augment",
        s(&src),
        "--output",
        s(&dst),
        "--zoom-range",
        "1.5",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--zoom-range"), "{}", stderr(&out));
    let out = graft(&[
        "augment",
        s(&src),
        "--output",
        s(&dst),
        "--brightness-range",
        "0.8",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("0.8,1.2"), "{}", stderr(&out));
    let out = graft(&["augment", s(&src), "--output", s(&src.join("milk/more"))]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("inside the source folder"),
        "{}",
        stderr(&out)
    );
    assert!(!dst.exists() && !src.join("milk/more").exists());

    // a.png and a.jpg would both make a_nohash_0.jpg.
    class_tree(&src, &["milk/a.jpg"]);
    let out = graft(&["augment", s(&src), "--output", s(&dst), "--class-size", "5"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("milk/a.jpg") && err.contains("milk/a.png"),
        "{err}"
    );
    assert!(!dst.exists(), "nothing written");
}

#[test]
fn augment_flags_mirror_keras_and_turn_off() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("train");
    class_tree(&src, &["milk/a.png", "juice/b.png", "juice/c.png"]);
    let zero_ranges = [
        "--class-size",
        "9",
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
        "--fill-mode",
        "constant",
        "--cval",
        "255",
        "--quality",
        "100",
    ];
    let original = small_image(0);
    let mut upside_down = original.clone();
    image::imageops::flip_vertical_in_place(&mut upside_down);
    let close =
        |a: &RgbImage, b: &RgbImage| a.iter().zip(b.iter()).all(|(x, y)| x.abs_diff(*y) <= 12);
    let copies = |dst: &Path| -> Vec<RgbImage> {
        (0..8)
            .map(|k| {
                image::open(dst.join(format!("milk/a_nohash_{k}.jpg")))
                    .unwrap()
                    .to_rgb8()
            })
            .collect()
    };

    // All ranges zero and the seed's horizontal flip turned off: every copy is the
    // original, re-encoded.
    let plain = tmp.path().join("plain");
    let mut args = vec![
        "augment",
        s(&src),
        "--output",
        s(&plain),
        "--horizontal-flip=false",
    ];
    args.extend(zero_ranges);
    let out = graft(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        copies(&plain).iter().all(|c| close(c, &original)),
        "no change but JPEG loss"
    );
    assert_eq!(class_files(&plain)["juice"].len(), 9);

    // The bare flag (before SRC, so it must not swallow it) turns vertical flips on:
    // each copy is the original or upside down, and both occur in eight copies.
    let flipped = tmp.path().join("flipped");
    let mut args = vec![
        "augment",
        "--vertical-flip",
        "--horizontal-flip=false",
        s(&src),
        "--output",
        s(&flipped),
    ];
    args.extend(zero_ranges);
    let out = graft(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let copies = copies(&flipped);
    assert!(copies
        .iter()
        .all(|c| close(c, &original) || close(c, &upside_down)));
    assert!(
        copies.iter().any(|c| close(c, &upside_down)),
        "some copies are flipped"
    );
    assert!(copies.iter().any(|c| close(c, &original)), "some are not");
}

#[test]
fn augment_reports_an_undecodable_original_and_finishes_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("train");
    class_tree(&src, &["milk/a.png", "juice/b.png"]);
    std::fs::write(src.join("milk/broken.png"), b"truncated").unwrap();
    let dst = tmp.path().join("balanced");
    let out = graft(&["augment", s(&src), "--output", s(&dst), "--class-size", "4"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("broken.png"), "{}", stderr(&out));
    assert!(stdout(&out).contains("failed 1"), "{}", stdout(&out));
    let files = class_files(&dst);
    assert_eq!(files["juice"].len(), 4);
    // broken.png is neither copied nor counted: a.png's copies fill milk up to 4.
    assert_eq!(
        files["milk"],
        vec![
            "a.png",
            "a_nohash_0.jpg",
            "a_nohash_1.jpg",
            "a_nohash_2.jpg"
        ]
    );
}

#[test]
fn loose_images_in_the_root_are_in_no_class() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("train");
    class_tree(&src, &["milk/a.png", "juice/b.png", "loose.png"]);
    let out = graft(&["stats", s(&src)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("total       2  100.0%"),
        "{}",
        stdout(&out)
    );
    assert!(
        stderr(&out).contains("1 image(s) directly in"),
        "{}",
        stderr(&out)
    );
    let dst = tmp.path().join("balanced");
    let out = graft(&["augment", s(&src), "--output", s(&dst), "--class-size", "2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("1 image(s) directly in"),
        "{}",
        stderr(&out)
    );
    assert!(!dst.join("loose.png").exists());
    assert_eq!(class_files(&dst).len(), 2);
}
