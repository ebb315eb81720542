//! `graft extract DIR --backbone NAME --output FILE`

use std::path::PathBuf;

use anyhow::Context;

use graft::backbone::BackboneId;
use graft::dataset::scan_images;
use graft::engine::EngineChoice;
use graft::features::cache::FeatureCache;
use graft::features::cached::cached_features;
use graft::features::calibration::load_backbone;
use graft::features::file::FeaturesFile;
use graft::features::{extract, ExtractOptions};
use graft::progress::Progress;
use graft::retrain::default_bottleneck_dir;

use super::precision::PrecisionArgs;
use super::render::Bar;
use super::values;
use super::Outcome;

#[derive(clap::Args)]
pub struct Args {
    /// Folder of images (searched recursively).
    dir: PathBuf,
    /// Backbone network.
    #[arg(long, default_value_t = BackboneId::DEFAULT.name().to_string())]
    backbone: String,
    /// Where to write the features (safetensors).
    #[arg(long, short)]
    output: PathBuf,
    /// Images per backbone forward pass (default: the fastest measured for the backbone
    /// on its engine; 1 for the EfficientNet-Lite models).
    #[arg(long, value_parser = values::batch_size())]
    batch_size: Option<usize>,
    /// Feature cache folder (default: <graft home>/bottlenecks).
    #[arg(long)]
    bottleneck_dir: Option<PathBuf>,
    /// Compute every vector afresh, neither reading nor filling the cache (for timing).
    #[arg(long)]
    no_cache: bool,
    /// What runs the network: auto (onnxruntime when it can be loaded, else burn),
    /// burn (pure Rust) or onnxruntime (fetched with pip on first use, or $ORT_DYLIB_PATH).
    #[arg(long, default_value = "auto")]
    engine: EngineChoice,
    #[command(flatten)]
    precision: PrecisionArgs,
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    let id: BackboneId = args.backbone.parse()?;
    graft::output::check_file(&args.output, graft::output::File::Safetensors, "--output")?;
    let bar = Bar::new();
    let weights = graft::weights::ensure(id, &bar)?;
    let backbone = load_backbone(
        id,
        &weights,
        &args.precision.options(args.engine),
        None,
        &bar,
    )?;
    let scan = scan_images(&args.dir)?;
    for warning in &scan.warnings {
        bar.message(&format!("warning: {warning}"));
    }
    for entry in &scan.skipped {
        bar.message(&format!("skipped {entry}"));
    }
    let entries = scan.images;
    anyhow::ensure!(
        !entries.is_empty(),
        "no images (JPEG, PNG, BMP, GIF, WebP, TIFF) found under {}",
        args.dir.display()
    );
    let paths: Vec<PathBuf> = entries.iter().map(|e| e.path.clone()).collect();
    let dim = id.spec().feature_dim;
    let options = ExtractOptions {
        batch_size: args.batch_size,
        ..ExtractOptions::default()
    };
    let (rows, processed, seconds, skipped): (Vec<(usize, Vec<f32>)>, usize, f64, usize) =
        if args.no_cache {
            let mut rows = Vec::with_capacity(paths.len());
            let report = extract(&backbone, &paths, options, &bar, |out| {
                rows.push((out.index, out.features.to_vec()));
                Ok(())
            })?;
            (
                rows,
                report.processed,
                report.elapsed.as_secs_f64(),
                report.skipped.len(),
            )
        } else {
            let cache = FeatureCache::open(
                &args
                    .bottleneck_dir
                    .clone()
                    .unwrap_or_else(default_bottleneck_dir),
            )?;
            let cached = cached_features(&backbone, &cache, &paths, options, &bar)?;
            if cached.hits > 0 {
                eprintln!(
                    "{} of {} images came from the feature cache",
                    cached.hits,
                    paths.len()
                );
            }
            let rows = cached
                .features
                .into_iter()
                .enumerate()
                .filter_map(|(i, f)| f.map(|f| (i, f)))
                .collect();
            (
                rows,
                cached.extracted,
                cached.extraction_seconds,
                cached.skipped.len(),
            )
        };
    let file = FeaturesFile {
        backbone: id,
        weights_sha256: backbone.weights_sha256.clone(),
        paths: rows
            .iter()
            .map(|(i, _)| entries[*i].relative.clone())
            .collect(),
        dim,
        features: rows.into_iter().flat_map(|(_, f)| f).collect(),
    };
    file.save(&args.output)
        .with_context(|| format!("writing {}", args.output.display()))?;
    println!(
        "extracted {} images with {} on {} (batch {}) in {:.1}s: {:.2} images/s; wrote {} ({} rows)",
        processed,
        match backbone.precision() {
            graft::engine::Precision::Fp32 => id.to_string(),
            int8 => format!("{id} {int8}"),
        },
        backbone.engine(),
        options.batch_for(&backbone),
        seconds,
        processed as f64 / seconds.max(1e-9),
        args.output.display(),
        file.paths.len()
    );
    Ok(match skipped + scan.skipped.len() {
        0 => Outcome::Done,
        n => Outcome::Skipped(n as u64),
    })
}
