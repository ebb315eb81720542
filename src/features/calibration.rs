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

/// The backbone `id` as `options` ask: fp32 on the chosen engine, or int8 on onnxruntime
/// calibrated on `options.calibration` (else `default_calibration`, the bundle's own
/// training images where the manifest names them).
pub fn load_backbone(
    id: BackboneId,
    options: &BackboneOptions,
    default_calibration: Option<&Path>,
    progress: &dyn Progress,
) -> Result<Backbone> {
    match options.precision {
        Precision::Fp32 => Backbone::load_with(id, options.engine, progress),
        Precision::Int8 => {
            if options.engine == EngineChoice::Burn {
                return Err(Error::Invalid(
                    "--precision int8 runs on onnxruntime only; drop --engine burn or use \
                     --precision fp32"
                        .into(),
                ));
            }
            let dir = options
                .calibration
                .as_deref()
                .or(default_calibration)
                .ok_or_else(|| {
                    Error::Invalid(
                        "--precision int8 needs calibration images: pass --calibration DIR \
                         (a folder of training images)"
                            .into(),
                    )
                })?;
            let limit = options
                .calibration_images
                .unwrap_or(DEFAULT_CALIBRATION_IMAGES)
                .max(1);
            let paths = calibration_images(dir, limit)?;
            let mut digest = Sha256::new();
            for path in &paths {
                digest.update(crate::features::cache::hash_file(path)?);
            }
            let count = paths.len();
            let spec = id.spec().preprocess;
            let batches = move || -> Box<dyn Iterator<Item = Result<(Vec<f32>, usize)>>> {
                let chunks: Vec<Vec<PathBuf>> =
                    paths.chunks(CALIBRATION_BATCH).map(<[_]>::to_vec).collect();
                Box::new(chunks.into_iter().map(move |chunk| {
                    let prepared: Vec<Result<Vec<f32>>> = chunk
                        .par_iter()
                        .map(|path| {
                            let rgb = decode_rgb8(path, DecodeLimits::default())?;
                            prepare(&rgb, &spec, &View::ORIGINAL)
                        })
                        .collect();
                    let mut pixels = Vec::new();
                    let mut n = 0;
                    // An image that cannot be decoded is left out of calibration; the
                    // commands that read it report it themselves.
                    for p in prepared.into_iter().flatten() {
                        pixels.extend_from_slice(&p);
                        n += 1;
                    }
                    Ok((pixels, n))
                }))
            };
            Backbone::load_int8(
                id,
                CalibrationSet {
                    digest: hex::encode(digest.finalize()),
                    images: count,
                    batches: Box::new(batches),
                },
                progress,
            )
        }
    }
}
