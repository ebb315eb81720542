//! `graft._native`: the graft library as a CPython extension (abi3). It owns the crossing
//! between Python and the library: turning arguments into graft's options, running the work
//! with the GIL released, and graft's errors into `graft.GraftError` carrying the message
//! the command line prints. `python/graft/__init__.py` is the documented API over it.
//!
//! Written by hand on PyO3: no crate binds an existing Rust library to Python for us.

use std::path::{Path, PathBuf};

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::PyByteArray;
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use graft::backbone::BackboneId;
use graft::dataset::scan_images;
use graft::engine::{Backbone, EngineChoice};
use graft::features::cache::{FeatureCache, Lookup, ModelFingerprint};
use graft::features::cached::cached_features;
use graft::features::{extract, ExtractOptions, Skipped};
use graft::head::{Optimizer, TrainConfig};
use graft::image::decode_rgb8_bytes;
use graft::image::distort::{prepare, Distortions, View};
use graft::predict::{expand_inputs, top_k, Predictor};
use graft::progress::Progress;
use graft::retrain::{default_bottleneck_dir, retrain, DistortionMode, ImageSource};
use graft::retrain::{RetrainEvent, RetrainOptions};

create_exception!(
    _native,
    GraftError,
    PyException,
    "An error graft reports: the message names the file and says what to do, as the CLI's does."
);

/// The error and its causes on one line, leaving out a cause the message already holds:
/// the text `graft` prints after `error: `.
fn error_text(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        let c_text = c.to_string();
        if !text.contains(&c_text) {
            text.push_str(": ");
            text.push_str(&c_text);
        }
        cause = c.source();
    }
    text.trim_end().to_string()
}

fn py_err(err: graft::Error) -> PyErr {
    GraftError::new_err(error_text(&err))
}

fn invalid(text: String) -> PyErr {
    GraftError::new_err(text)
}

/// Progress for a Python caller: no bars, but the messages the CLI prints (skipped files,
/// warnings) still reach standard error, where a notebook shows them.
struct Messages;

impl Progress for Messages {
    fn begin(&self, _stage: &str, _total: u64) {}
    fn advance(&self, _n: u64) {}
    fn message(&self, text: &str) {
        eprintln!("{text}");
    }
    fn finish(&self) {}
}

type SkippedList = Vec<(String, String)>;

fn skipped_list(skipped: Vec<Skipped>) -> SkippedList {
    skipped
        .into_iter()
        .map(|s| (s.path.display().to_string(), s.reason))
        .collect()
}

/// The reason shown for an image that cannot be used, as the extraction pipeline words it.
fn skip_reason(err: &graft::Error) -> String {
    match err {
        graft::Error::Decode { reason, .. } => reason.trim().to_string(),
        graft::Error::Io { source, .. } => source.to_string(),
        other => other.to_string(),
    }
}

/// A row-major `[N, dim]` float32 matrix as native-endian bytes: the Python side views it
/// with `numpy.frombuffer` without another copy. (The `numpy` crate would do this too, but it
/// turns on `num-complex/std`, which recompiles gemm and burn with a second feature set.)
fn matrix<'py>(py: Python<'py>, rows: &[f32]) -> Bound<'py, PyByteArray> {
    let bytes: Vec<u8> = rows.iter().flat_map(|v| v.to_ne_bytes()).collect();
    PyByteArray::new(py, &bytes)
}

/// Features of in-memory encoded images: the extraction pipeline's decode, preprocessing
/// and batching, over bytes instead of files (`features::extract` reads files by path).
/// `names` name the images in skip reasons. With `cache`, vectors are looked up and stored
/// under the image bytes' SHA-256, the key the CLI uses for the same file.
fn extract_encoded(
    backbone: &Backbone,
    images: &[Vec<u8>],
    names: &[PathBuf],
    options: ExtractOptions,
    cache: Option<&FeatureCache>,
) -> graft::Result<(Vec<Option<Vec<f32>>>, Vec<Skipped>)> {
    let fingerprint = ModelFingerprint::new(backbone.id, &backbone.weights_sha256);
    let mut features: Vec<Option<Vec<f32>>> = vec![None; images.len()];
    let keys: Vec<[u8; 32]> = images
        .par_iter()
        .map(|bytes| fingerprint.key(&Sha256::digest(bytes).into(), ""))
        .collect();
    let mut todo = Vec::with_capacity(images.len());
    for (i, key) in keys.iter().enumerate() {
        match cache.map(|c| c.get(key)).transpose()? {
            Some(Lookup::Hit(f)) => features[i] = Some(f),
            _ => todo.push(i),
        }
    }
    let spec = backbone.preprocess;
    let batch = options.batch_for(backbone);
    let mut skipped = Vec::new();
    // One batch decoded at a time: memory stays bounded by one batch of pixels.
    for chunk in todo.chunks(batch.max(rayon::current_num_threads())) {
        let prepared: Vec<(usize, std::result::Result<Vec<f32>, String>)> = chunk
            .par_iter()
            .map(|&i| {
                let pixels = decode_rgb8_bytes(&images[i], &names[i], options.limits)
                    .and_then(|rgb| prepare(&rgb, &spec, &View::ORIGINAL))
                    .map_err(|e| skip_reason(&e));
                (i, pixels)
            })
            .collect();
        let mut ready = Vec::with_capacity(prepared.len());
        for (i, pixels) in prepared {
            match pixels {
                Ok(p) => ready.push((i, p)),
                Err(reason) => {
                    eprintln!("skipped {}: {reason}", names[i].display());
                    skipped.push(Skipped {
                        path: names[i].clone(),
                        reason,
                    });
                }
            }
        }
        let mut stored = Vec::new();
        for group in ready.chunks(batch) {
            let pixels: Vec<f32> = group.iter().flat_map(|(_, p)| p.iter().copied()).collect();
            let outputs = backbone.run(pixels, group.len())?;
            let dim = outputs.features.len() / group.len();
            for (row, (i, _)) in group.iter().enumerate() {
                let f = outputs.features[row * dim..(row + 1) * dim].to_vec();
                if cache.is_some() {
                    stored.push((keys[*i], f.clone()));
                }
                features[*i] = Some(f);
            }
        }
        if let Some(cache) = cache {
            cache.put_many(&stored)?;
        }
    }
    Ok((features, skipped))
}

fn options(batch_size: Option<usize>) -> PyResult<ExtractOptions> {
    if batch_size == Some(0) {
        return Err(invalid(
            "batch_size 0: give at least 1 image per forward pass".into(),
        ));
    }
    Ok(ExtractOptions {
        batch_size,
        ..ExtractOptions::default()
    })
}

fn open_cache(cache: bool, bottleneck_dir: Option<PathBuf>) -> graft::Result<Option<FeatureCache>> {
    if !cache {
        return Ok(None);
    }
    let dir = bottleneck_dir.unwrap_or_else(default_bottleneck_dir);
    FeatureCache::open(&dir).map(Some)
}

/// A backbone loaded once, to extract many batches with (a Ray actor holds one).
#[pyclass(module = "graft._native", frozen)]
struct Extractor {
    backbone: Backbone,
    options: ExtractOptions,
}

#[pymethods]
impl Extractor {
    #[new]
    #[pyo3(signature = (backbone = BackboneId::DEFAULT.name().to_string(), engine = "auto".to_string(), batch_size = None))]
    fn new(
        py: Python<'_>,
        backbone: String,
        engine: String,
        batch_size: Option<usize>,
    ) -> PyResult<Extractor> {
        let options = options(batch_size)?;
        let id: BackboneId = backbone.parse().map_err(py_err)?;
        let choice: EngineChoice = engine.parse().map_err(py_err)?;
        let backbone = py
            .allow_threads(|| Backbone::load_with(id, choice, &Messages))
            .map_err(py_err)?;
        Ok(Extractor { backbone, options })
    }

    /// The backbone id as graft prints it.
    #[getter]
    fn backbone(&self) -> String {
        self.backbone.id.to_string()
    }

    /// SHA-256 of the published weights the backbone was built from (as bundles record it).
    #[getter]
    fn weights_sha256(&self) -> String {
        self.backbone.weights_sha256.clone()
    }

    #[getter]
    fn feature_dim(&self) -> usize {
        self.backbone.spec().feature_dim
    }

    #[getter]
    fn engine(&self) -> String {
        self.backbone.engine().to_string()
    }

    /// Features of image files: every image under `folder` (paths returned relative to it,
    /// as `graft extract` writes them), or the files in `paths` as given.
    #[pyo3(signature = (folder = None, paths = None, cache = true, bottleneck_dir = None))]
    fn extract_files<'py>(
        &self,
        py: Python<'py>,
        folder: Option<PathBuf>,
        paths: Option<Vec<PathBuf>>,
        cache: bool,
        bottleneck_dir: Option<PathBuf>,
    ) -> PyResult<(Bound<'py, PyByteArray>, Vec<String>, SkippedList)> {
        let (rows, names, skipped) = py
            .allow_threads(|| self.files(folder, paths, cache, bottleneck_dir))
            .map_err(|e| match e {
                Failure::Graft(e) => py_err(e),
                Failure::Text(t) => invalid(t),
            })?;
        Ok((matrix(py, &rows), names, skipped))
    }

    /// Features of encoded images held in memory; `names` name them in skip reasons
    /// (default: `image-<index>`).
    #[pyo3(signature = (images, names = None, cache = true, bottleneck_dir = None))]
    fn extract_bytes<'py>(
        &self,
        py: Python<'py>,
        images: Vec<Vec<u8>>,
        names: Option<Vec<String>>,
        cache: bool,
        bottleneck_dir: Option<PathBuf>,
    ) -> PyResult<(Bound<'py, PyByteArray>, Vec<String>, SkippedList)> {
        let names: Vec<String> = match names {
            Some(n) if n.len() == images.len() => n,
            Some(n) => {
                return Err(invalid(format!(
                    "{} names for {} images; give one name per image",
                    n.len(),
                    images.len()
                )))
            }
            None => (0..images.len()).map(|i| format!("image-{i}")).collect(),
        };
        let dim = self.backbone.spec().feature_dim;
        let (rows, kept, skipped) = py
            .allow_threads(|| -> graft::Result<_> {
                let cache = open_cache(cache, bottleneck_dir)?;
                let origins: Vec<PathBuf> = names.iter().map(PathBuf::from).collect();
                let (features, skipped) = extract_encoded(
                    &self.backbone,
                    &images,
                    &origins,
                    self.options,
                    cache.as_ref(),
                )?;
                let mut rows = Vec::with_capacity(features.len() * dim);
                let mut kept = Vec::with_capacity(features.len());
                for (f, name) in features.into_iter().zip(names) {
                    if let Some(f) = f {
                        rows.extend(f);
                        kept.push(name);
                    }
                }
                Ok((rows, kept, skipped_list(skipped)))
            })
            .map_err(py_err)?;
        Ok((matrix(py, &rows), kept, skipped))
    }
}

enum Failure {
    Graft(graft::Error),
    Text(String),
}

impl From<graft::Error> for Failure {
    fn from(e: graft::Error) -> Failure {
        Failure::Graft(e)
    }
}

impl Extractor {
    fn files(
        &self,
        folder: Option<PathBuf>,
        paths: Option<Vec<PathBuf>>,
        cache: bool,
        bottleneck_dir: Option<PathBuf>,
    ) -> std::result::Result<(Vec<f32>, Vec<String>, SkippedList), Failure> {
        let mut skipped: Vec<Skipped> = Vec::new();
        let (paths, names): (Vec<PathBuf>, Vec<String>) = match (folder, paths) {
            (Some(folder), None) => {
                let scan = scan_images(&folder)?;
                for warning in &scan.warnings {
                    eprintln!("warning: {warning}");
                }
                for entry in &scan.skipped {
                    eprintln!("skipped {entry}");
                }
                skipped.extend(scan.skipped.into_iter().map(Skipped::from));
                if scan.images.is_empty() {
                    return Err(Failure::Text(format!(
                        "no images (JPEG, PNG, BMP, GIF, WebP, TIFF) found under {}",
                        folder.display()
                    )));
                }
                scan.images
                    .into_iter()
                    .map(|e| (e.path, e.relative))
                    .unzip()
            }
            (None, Some(paths)) => {
                let names = paths.iter().map(|p| p.display().to_string()).collect();
                (paths, names)
            }
            _ => {
                return Err(Failure::Text(
                    "give either a folder or a list of image paths".into(),
                ))
            }
        };
        let features: Vec<Option<Vec<f32>>> = match open_cache(cache, bottleneck_dir)? {
            Some(cache) => {
                let cached =
                    cached_features(&self.backbone, &cache, &paths, self.options, &Messages)?;
                skipped.extend(cached.skipped);
                cached.features
            }
            None => {
                let mut features = vec![None; paths.len()];
                let report = extract(&self.backbone, &paths, self.options, &Messages, |out| {
                    features[out.index] = Some(out.features.to_vec());
                    Ok(())
                })?;
                skipped.extend(report.skipped);
                features
            }
        };
        let dim = self.backbone.spec().feature_dim;
        let mut rows = Vec::with_capacity(features.len() * dim);
        let mut kept = Vec::with_capacity(features.len());
        for (f, name) in features.into_iter().zip(names) {
            if let Some(f) = f {
                rows.extend(f);
                kept.push(name);
            }
        }
        Ok((rows, kept, skipped_list(skipped)))
    }
}

/// A trained bundle with its backbone, ready to classify.
#[pyclass(module = "graft._native", frozen)]
struct Model {
    predictor: Predictor,
}

#[pymethods]
impl Model {
    #[staticmethod]
    fn load(py: Python<'_>, bundle: PathBuf) -> PyResult<Model> {
        let predictor = py
            .allow_threads(|| Predictor::load(&bundle, &Messages))
            .map_err(py_err)?;
        Ok(Model { predictor })
    }

    /// Class names; index = class id.
    #[getter]
    fn labels(&self) -> Vec<String> {
        self.predictor.bundle.manifest.labels.clone()
    }

    #[getter]
    fn backbone(&self) -> String {
        self.predictor.bundle.manifest.backbone.to_string()
    }

    /// Top-`k` (labels, scores) of each image file, in input order. An image that cannot
    /// be decoded raises GraftError naming it.
    #[pyo3(signature = (paths, k = 5, batch_size = None))]
    fn predict_files(
        &self,
        py: Python<'_>,
        paths: Vec<PathBuf>,
        k: usize,
        batch_size: Option<usize>,
    ) -> PyResult<Vec<(Vec<String>, Vec<f32>)>> {
        let options = options(batch_size)?;
        let k = check_k(k)?;
        let (predictions, skipped) = py
            .allow_threads(|| {
                self.predictor.predict_paths(
                    &paths,
                    k,
                    1,
                    self.predictor.unknown_below(None),
                    options,
                    &Messages,
                )
            })
            .map_err(py_err)?;
        if let Some(s) = skipped.first() {
            return Err(undecodable(&s.path, &s.reason));
        }
        Ok(predictions
            .into_iter()
            .map(|p| p.top.into_iter().map(|s| (s.label, s.score)).unzip())
            .collect())
    }

    /// Top-`k` (labels, scores) of each encoded image held in memory.
    #[pyo3(signature = (images, k = 5, batch_size = None))]
    fn predict_bytes(
        &self,
        py: Python<'_>,
        images: Vec<Vec<u8>>,
        k: usize,
        batch_size: Option<usize>,
    ) -> PyResult<Vec<(Vec<String>, Vec<f32>)>> {
        let options = options(batch_size)?;
        let k = self.predictor.effective_k(check_k(k)?);
        let names: Vec<PathBuf> = (0..images.len())
            .map(|i| PathBuf::from(format!("image-{i}")))
            .collect();
        let (features, skipped) = py
            .allow_threads(|| {
                extract_encoded(&self.predictor.backbone, &images, &names, options, None)
            })
            .map_err(py_err)?;
        if let Some(s) = skipped.first() {
            return Err(undecodable(&s.path, &s.reason));
        }
        let labels = &self.predictor.bundle.manifest.labels;
        Ok(features
            .into_iter()
            .flatten()
            .map(|f| {
                top_k(&self.predictor.probabilities(&f), k)
                    .into_iter()
                    .map(|(i, score)| (labels[i].clone(), score))
                    .unzip()
            })
            .collect())
    }
}

fn check_k(k: usize) -> PyResult<usize> {
    if k == 0 {
        return Err(invalid("k 0: ask for at least 1 label per image".into()));
    }
    Ok(k)
}

fn undecodable(path: &Path, reason: &str) -> PyErr {
    py_err(graft::Error::Decode {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    })
}

/// `graft train`: the CLI's flags as keyword arguments, with its defaults (the Python
/// wrapper documents them). Returns the bundle's manifest as JSON.
#[pyfunction]
#[pyo3(signature = (
    image_dir = None, output = PathBuf::from("graft-model"), *, labels = None, images = None,
    backbone = BackboneId::DEFAULT.name().to_string(), bottleneck_dir = None,
    how_many_training_steps = 4000, learning_rate = 0.001, train_batch_size = 100,
    eval_step_interval = 10, validation_batch_size = 100, test_batch_size = -1,
    validation_percentage = 10.0, testing_percentage = 10.0, optimizer = "adam".to_string(),
    weight_decay = 0.0, seed = 0, summaries_dir = None, intermediate_store_frequency = 0,
    intermediate_output_dir = None, batch_size = None, flip_left_right = false,
    random_crop = 0.0, random_scale = 0.0, random_brightness = 0.0,
    distortion_mode = "cached".to_string(), distorted_variants = 16
))]
#[allow(clippy::too_many_arguments)]
fn train(
    py: Python<'_>,
    image_dir: Option<PathBuf>,
    output: PathBuf,
    labels: Option<PathBuf>,
    images: Option<PathBuf>,
    backbone: String,
    bottleneck_dir: Option<PathBuf>,
    how_many_training_steps: usize,
    learning_rate: f64,
    train_batch_size: usize,
    eval_step_interval: usize,
    validation_batch_size: i64,
    test_batch_size: i64,
    validation_percentage: f64,
    testing_percentage: f64,
    optimizer: String,
    weight_decay: f64,
    seed: u64,
    summaries_dir: Option<PathBuf>,
    intermediate_store_frequency: usize,
    intermediate_output_dir: Option<PathBuf>,
    batch_size: Option<usize>,
    flip_left_right: bool,
    random_crop: f32,
    random_scale: f32,
    random_brightness: f32,
    distortion_mode: String,
    distorted_variants: usize,
) -> PyResult<(String, f64, SkippedList)> {
    for (name, v) in [
        ("how_many_training_steps", how_many_training_steps),
        ("train_batch_size", train_batch_size),
        ("eval_step_interval", eval_step_interval),
    ] {
        if v == 0 {
            return Err(invalid(format!("{name} 0: give at least 1")));
        }
    }
    for (name, v) in [
        ("validation_percentage", validation_percentage),
        ("testing_percentage", testing_percentage),
    ] {
        if !(0.0..=100.0).contains(&v) {
            return Err(invalid(format!(
                "{name} {v}: give a percentage from 0 to 100"
            )));
        }
    }
    if validation_percentage + testing_percentage >= 100.0 {
        return Err(invalid(format!(
            "--validation-percentage {validation_percentage} and --testing-percentage \
             {testing_percentage} leave no images to train on; keep their sum below 100"
        )));
    }
    if !(learning_rate.is_finite() && learning_rate > 0.0) {
        return Err(invalid(format!(
            "learning_rate {learning_rate}: give a positive number"
        )));
    }
    let optimizer = match optimizer.to_ascii_lowercase().as_str() {
        "adam" => Optimizer::Adam,
        "sgd" => Optimizer::Sgd,
        other => {
            return Err(invalid(format!(
                "unknown optimizer '{other}'; use adam or sgd"
            )))
        }
    };
    let distortion_mode = match distortion_mode.to_ascii_lowercase().as_str() {
        "cached" => DistortionMode::Cached,
        "online" => DistortionMode::Online,
        other => {
            return Err(invalid(format!(
                "unknown distortion_mode '{other}'; use cached or online"
            )))
        }
    };
    let source = match (image_dir, labels) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "give an image folder or labels=FILE.csv, not both".into(),
            ))
        }
        (_, Some(labels)) => ImageSource::Csv { labels, images },
        (Some(dir), None) => {
            graft::retrain::require_exists(&dir, "this image folder").map_err(py_err)?;
            ImageSource::Folders(dir)
        }
        (None, None) => return Err(invalid("pass an image folder or labels=FILE.csv".into())),
    };
    let intermediate_dir = intermediate_output_dir.unwrap_or_else(|| {
        let mut name = output.file_name().unwrap_or_default().to_os_string();
        name.push("-intermediate");
        output.with_file_name(name)
    });
    let options = RetrainOptions {
        source,
        backbone: backbone.parse().map_err(py_err)?,
        image_size: None,
        bottleneck_dir: bottleneck_dir.unwrap_or_else(default_bottleneck_dir),
        validation_percentage,
        testing_percentage,
        train: TrainConfig {
            steps: how_many_training_steps,
            learning_rate,
            train_batch_size,
            eval_step_interval,
            validation_batch_size,
            optimizer,
            weight_decay,
            seed,
        },
        test_batch_size,
        extract: self::options(batch_size)?,
        summaries_dir,
        output,
        intermediate_store_frequency,
        intermediate_dir,
        distortions: Distortions {
            flip_left_right,
            random_crop,
            random_scale,
            random_brightness,
            random_contrast: 0.0,
            random_saturation: 0.0,
        },
        distortion_mode,
        distorted_variants,
        // The Python API has no --unknown-below or --fine-tune yet (docs/python.md).
        unknown_below: None,
        fine_tune: None,
        // fp32 on the engine graft picks, as the CLI without --precision.
        backbone_run: Default::default(),
    };
    let outcome = py
        .allow_threads(|| {
            retrain(&options, &Messages, |event| {
                if let RetrainEvent::Warning(w) = event {
                    eprintln!("warning: {w}");
                }
            })
        })
        .map_err(py_err)?;
    let manifest = serde_json::to_string(&outcome.bundle.manifest)
        .map_err(|e| invalid(format!("cannot render the bundle manifest: {e}")))?;
    Ok((
        manifest,
        // The module never fine-tunes, so the frozen head always trains.
        outcome.head_seconds.unwrap_or_default(),
        skipped_list(outcome.skipped),
    ))
}

/// The images under `folder` in graft's walk order (recursive, sorted), as `graft predict`
/// expands a folder argument; entries that cannot be used are reported on standard error.
#[pyfunction]
fn folder_images(py: Python<'_>, folder: PathBuf) -> PyResult<Vec<PathBuf>> {
    let inputs = py
        .allow_threads(|| expand_inputs(std::slice::from_ref(&folder)))
        .map_err(py_err)?;
    for warning in &inputs.warnings {
        eprintln!("warning: {warning}");
    }
    for entry in &inputs.skipped {
        eprintln!("skipped {entry}");
    }
    if inputs.paths.is_empty() {
        return Err(invalid("no images found in the given paths".into()));
    }
    Ok(inputs.paths)
}

#[pyfunction]
fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("GraftError", m.py().get_type::<GraftError>())?;
    m.add_class::<Extractor>()?;
    m.add_class::<Model>()?;
    m.add_function(wrap_pyfunction!(train, m)?)?;
    m.add_function(wrap_pyfunction!(folder_images, m)?)?;
    m.add_function(wrap_pyfunction!(version, m)?)?;
    Ok(())
}
