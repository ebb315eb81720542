//! The images an int8 backbone is calibrated on, and loading a backbone in the precision
//! a command asks for: the one place extract, predict, evaluate and serve get an int8
//! backbone from.
//!
//! The calibration images are a stable sample of a folder: the `limit` images whose
//! relative paths hash lowest, so the same folder gives the same sample wherever it lives
//! and whatever order the file system lists it in, spread over every class.

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::backbone::BackboneId;
use crate::dataset::scan_images;
use crate::engine::{Backbone, CalibrationSet, EngineChoice, Precision};
use crate::error::{Error, Result};
use crate::image::distort::{prepare, View};
use crate::image::{decode_rgb8, DecodeLimits};
use crate::progress::Progress;
use crate::weights::LoadedWeights;

/// Calibration images used when the user does not say: enough for stable ranges (see
/// docs/int8.md), a few seconds of float inference.
pub const DEFAULT_CALIBRATION_IMAGES: usize = 200;

/// Images per calibration forward pass: every intermediate tensor comes back, so batches
/// stay small.
const CALIBRATION_BATCH: usize = 8;

/// How a command wants its backbone run.
#[derive(Clone, Debug, Default)]
pub struct BackboneOptions {
    pub engine: EngineChoice,
    pub precision: Precision,
    /// Folder of calibration images for int8.
    pub calibration: Option<PathBuf>,
    /// How many of its images to calibrate on.
    pub calibration_images: Option<usize>,
}

/// The `limit` images of `dir` whose relative paths hash lowest, in path order.
pub fn calibration_images(dir: &Path, limit: usize) -> Result<Vec<PathBuf>> {
    let scan = scan_images(dir)?;
    let mut ranked: Vec<([u8; 32], PathBuf)> = scan
        .images
        .into_iter()
        .map(|e| (Sha256::digest(e.relative.as_bytes()).into(), e.path))
        .collect();
    ranked.sort();
    ranked.truncate(limit);
    let mut paths: Vec<PathBuf> = ranked.into_iter().map(|(_, p)| p).collect();
    paths.sort();
    if paths.is_empty() {
        return Err(Error::InvalidInput {
            path: dir.to_path_buf(),
            reason: "holds no images to calibrate int8 on; pass --calibration with a folder \
                     of training images"
                .into(),
        });
    }
    Ok(paths)
}

/// A stable sample of `limit` images of `dir` ([`calibration_images`]), preprocessed as
/// `preprocess` says, in batches drawn only when the quantized model is not cached yet.
pub fn calibration_set(
    dir: &Path,
    limit: usize,
    preprocess: crate::backbone::Preprocess,
) -> Result<CalibrationSet<'static>> {
    let paths = calibration_images(dir, limit.max(1))?;
    let mut digest = Sha256::new();
    for path in &paths {
        digest.update(crate::features::cache::hash_file(path)?);
    }
    let images = paths.len();
    let batches = move || -> Box<dyn Iterator<Item = Result<(Vec<f32>, usize)>>> {
        let chunks: Vec<Vec<PathBuf>> =
            paths.chunks(CALIBRATION_BATCH).map(<[_]>::to_vec).collect();
        Box::new(chunks.into_iter().map(move |chunk| {
            let prepared: Vec<Result<Vec<f32>>> = chunk
                .par_iter()
                .map(|path| {
                    let rgb = decode_rgb8(path, DecodeLimits::default())?;
                    prepare(&rgb, &preprocess, &View::ORIGINAL)
                })
                .collect();
            let mut pixels = Vec::new();
            let mut n = 0;
            // An image that cannot be decoded is left out of calibration; the commands
            // that read it report it themselves.
            for p in prepared.into_iter().flatten() {
                pixels.extend_from_slice(&p);
                n += 1;
            }
            Ok((pixels, n))
        }))
    };
    Ok(CalibrationSet {
        digest: hex::encode(digest.finalize()),
        images,
        batches: Box::new(batches),
    })
}

/// The calibration folder `options` name, else `default_calibration`; refuses int8 on
/// burn and int8 without calibration images.
pub fn calibration_dir<'a>(
    options: &'a BackboneOptions,
    default_calibration: Option<&'a Path>,
) -> Result<&'a Path> {
    if options.engine == EngineChoice::Burn {
        return Err(Error::Invalid(
            "--precision int8 runs on onnxruntime only; drop --engine burn or use \
             --precision fp32"
                .into(),
        ));
    }
    options
        .calibration
        .as_deref()
        .or(default_calibration)
        .ok_or_else(|| {
            Error::Invalid(
                "--precision int8 needs calibration images: pass --calibration DIR \
                 (a folder of training images)"
                    .into(),
            )
        })
}

/// The backbone `id` at input size `size` with `weights` as `options` ask: fp32 on the
/// chosen engine, or int8 on onnxruntime calibrated on `options.calibration` (else
/// `default_calibration`, the bundle's own training folder where the manifest names it).
pub fn load_backbone(
    id: BackboneId,
    size: u32,
    weights: &LoadedWeights,
    options: &BackboneOptions,
    default_calibration: Option<&Path>,
    progress: &dyn Progress,
) -> Result<Backbone> {
    match options.precision {
        Precision::Fp32 => Backbone::from_tensors_at(
            id,
            size,
            &weights.tensors,
            (
                weights.source_sha256.clone(),
                &weights.path.display().to_string(),
            ),
            options.engine,
            progress,
        ),
        Precision::Int8 => {
            let dir = calibration_dir(options, default_calibration)?;
            let limit = options
                .calibration_images
                .unwrap_or(DEFAULT_CALIBRATION_IMAGES);
            let set = calibration_set(dir, limit, id.spec().preprocess_at(size)?)?;
            Backbone::load_int8(id, size, weights, set, progress)
        }
    }
}
