//! `--precision`, `--calibration` and `--calibration-images`, shared by every command that
//! runs a backbone.

use std::path::PathBuf;

use graft::engine::{EngineChoice, Precision};
use graft::features::calibration::BackboneOptions;

use super::values;

#[derive(clap::Args, Clone, Debug)]
pub struct PrecisionArgs {
    /// Arithmetic of the backbone: fp32, or int8 (static QDQ quantization on onnxruntime,
    /// calibrated once and cached in <graft home>/quantized; features cached apart).
    #[arg(long, default_value = "fp32")]
    precision: Precision,
    /// Folder of images to calibrate int8 on (default: the folder the model was trained
    /// from, as its manifest records).
    #[arg(long, value_name = "DIR")]
    calibration: Option<PathBuf>,
    /// How many of its images to calibrate on: a stable sample by path hash (default 200).
    #[arg(long, value_name = "N", value_parser = values::count())]
    calibration_images: Option<usize>,
}

impl PrecisionArgs {
    pub fn options(&self, engine: EngineChoice) -> BackboneOptions {
        BackboneOptions {
            engine,
            precision: self.precision,
            calibration: self.calibration.clone(),
            calibration_images: self.calibration_images,
        }
    }
}
