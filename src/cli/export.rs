//! `graft export MODEL --output classifier.onnx` (the whole classifier as one ONNX file) and
//! `graft export MODEL --format web --output DIR` (a static offline web classifier).

use std::path::PathBuf;

use graft::bundle::Bundle;
use graft::engine::Precision;
use graft::export::{self, web};
use graft::features::calibration::{self, BackboneOptions};
use graft::output::{File, Folder};

use super::render::Bar;
use super::Outcome;

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    /// One ONNX file: uint8 pixels in, probabilities and features out.
    Onnx,
    /// A folder: index.html, model.onnx and onnxruntime-web's files.
    Web,
}

#[derive(clap::Args)]
pub struct Args {
    /// Model folder written by `graft train --output`.
    model: PathBuf,
    /// The ONNX file (`--format onnx`) or the folder (`--format web`) to write.
    #[arg(long, short)]
    output: PathBuf,
    #[arg(long, value_enum, default_value_t = Format::Onnx)]
    format: Format,
    /// onnxruntime-web's dist/ folder for `--format web` (default: installed once with
    /// npm into graft's home).
    #[arg(long, value_name = "DIR")]
    onnxruntime_web: Option<PathBuf>,
    /// Quantize the backbone: int8 (static QDQ, per-channel weights), calibrated on the
    /// model's training folder unless --calibration names another.
    #[arg(long, value_name = "PRECISION")]
    quantize: Option<Precision>,
    /// Folder of images to calibrate --quantize int8 on (default: the folder the model
    /// was trained from, as its manifest records).
    #[arg(long, value_name = "DIR", requires = "quantize")]
    calibration: Option<PathBuf>,
    /// How many of its images to calibrate on: a stable sample by path hash (default 200).
    #[arg(long, value_name = "N", requires = "quantize", value_parser = super::values::count())]
    calibration_images: Option<usize>,
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    let bundle = Bundle::load(&args.model)?;
    bundle.check_manifest(&args.model)?;
    // Every refusal comes before anything is fetched or written.
    match args.format {
        Format::Onnx => {
            anyhow::ensure!(
                args.onnxruntime_web.is_none(),
                "--onnxruntime-web is for --format web; leave it out for an ONNX file"
            );
            graft::output::check_file(&args.output, File::Onnx, "--output")?;
        }
        Format::Web => graft::output::check_folder(&args.output, Folder::WebExport, "--output")?,
    }
    if let Some(dir) = &args.onnxruntime_web {
        web::check_onnxruntime_web(dir, "--onnxruntime-web")?;
    }
    let int8 = match args.quantize {
        None | Some(Precision::Fp32) => None,
        Some(Precision::Int8) => {
            let options = BackboneOptions {
                precision: Precision::Int8,
                calibration: args.calibration.clone(),
                calibration_images: args.calibration_images,
                ..BackboneOptions::default()
            };
            let trained_on = bundle.manifest.training_image_dir();
            let dir = calibration::calibration_dir(&options, trained_on.as_deref())?;
            Some(calibration::calibration_set(
                dir,
                args.calibration_images
                    .unwrap_or(calibration::DEFAULT_CALIBRATION_IMAGES),
                bundle.manifest.preprocess,
            )?)
        }
    };
    let bar = Bar::new();
    let classifier = export::classifier_onnx(&bundle, int8, &bar)?;
    let m = &bundle.manifest;
    let (s, c, d) = (m.preprocess.size, m.labels.len(), m.feature_dim);
    match args.format {
        Format::Onnx => {
            graft::fsx::write_atomic(&args.output, &classifier)?;
            println!(
                "wrote {} ({} bytes): {} + head, {c} labels; input `pixels` uint8 [N, {s}, {s}, 3], \
                 outputs `probabilities` [N, {c}] and `features` [N, {d}]",
                args.output.display(),
                classifier.len(),
                m.backbone,
            );
        }
        Format::Web => {
            let runtime = match &args.onnxruntime_web {
                Some(dir) => dir.clone(),
                None => web::ensure_onnxruntime_web(&bar)?,
            };
            let page = web::PageModel {
                model_id: bundle.model_id(),
                labels: m.labels.clone(),
                size: s,
                crop_fraction: m.preprocess.crop_fraction,
            };
            web::write(&args.output, &classifier, &page, &runtime)?;
            println!(
                "wrote {}: {} (model {} bytes, {c} labels) and onnxruntime-web {}; serve the \
                 folder over HTTP (any static server) and open index.html",
                args.output.display(),
                web::PAGE_FILE,
                classifier.len(),
                web::ONNXRUNTIME_WEB_VERSION,
            );
        }
    }
    Ok(Outcome::Done)
}
