//! `graft extract DIR --backbone NAME --output FILE [--shard I/N]`

use std::path::PathBuf;

use anyhow::Context;

use graft::backbone::BackboneId;
use graft::dataset::scan_images;
use graft::dataset::shard::Shard;
use graft::engine::EngineChoice;
use graft::features::cache::FeatureCache;
use graft::features::calibration::load_backbone;
use graft::features::file::FeaturesFile;
use graft::features::parquet::{is_parquet_path, FeaturesWriter};
use graft::features::stream::features_in_chunks;
use graft::features::ExtractOptions;
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
    /// Where to write the features: Parquet for a name ending in `.parquet` (one row per
    /// image, see docs/distributed.md), safetensors otherwise.
    #[arg(long, short)]
    output: PathBuf,
    /// Extract only shard I of N (0 <= I < N): the images whose relative path hashes to I
    /// (docs/distributed.md), so N workers cover the folder exactly once.
    #[arg(long, value_name = "I/N", value_parser = values::shard)]
    shard: Option<Shard>,
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
    let parquet = is_parquet_path(&args.output);
    let kind = if parquet {
        graft::output::File::Parquet
    } else {
        graft::output::File::Safetensors
    };
    graft::output::check_file(&args.output, kind, "--output")?;
    let bar = Bar::new();
    let weights = graft::weights::ensure(id, &bar)?;
    let run = args.precision.options(args.engine);
    anyhow::ensure!(
        !(parquet && run.precision == graft::engine::Precision::Int8),
        "--precision int8 cannot write Parquet yet: its columns record the backbone and weights \
         but not the precision, so int8 rows would pass for fp32 ones in `graft train --features`; \
         write .safetensors, or extract at fp32"
    );
    let backbone = load_backbone(id, id.spec().preprocess.size, &weights, &run, None, &bar)?;
    let scan = scan_images(&args.dir)?;
    for warning in &scan.warnings {
        bar.message(&format!("warning: {warning}"));
    }
    for entry in &scan.skipped {
        bar.message(&format!("skipped {entry}"));
    }
    let found = scan.images.len();
    let shard = args.shard.unwrap_or(Shard::ALL);
    let entries: Vec<_> = scan
        .images
        .into_iter()
        .filter(|e| shard.contains(&e.relative))
        .collect();
    anyhow::ensure!(
        found > 0,
        "no images (JPEG, PNG, BMP, GIF, WebP, TIFF) found under {}",
        args.dir.display()
    );
    if args.shard.is_some() {
        eprintln!(
            "shard {shard}: {} of the {found} images under {}",
            entries.len(),
            args.dir.display()
        );
    }
    let paths: Vec<PathBuf> = entries.iter().map(|e| e.path.clone()).collect();
    let options = ExtractOptions {
        batch_size: args.batch_size,
        ..ExtractOptions::default()
    };
    let cache = if args.no_cache {
        None
    } else {
        Some(FeatureCache::open(
            &args
                .bottleneck_dir
                .clone()
                .unwrap_or_else(default_bottleneck_dir),
        )?)
    };
    let chunk = graft::features::parquet::ROW_GROUP_ROWS;
    let (report, rows) = if parquet {
        let mut writer = FeaturesWriter::create(&args.output, id, &backbone.weights_sha256)?;
        let report = features_in_chunks(
            &backbone,
            cache.as_ref(),
            &paths,
            options,
            chunk,
            &bar,
            |i, hash, features| writer.push(&entries[i].relative, hash, features),
        )?;
        let rows = writer.rows();
        writer
            .finish()
            .with_context(|| format!("writing {}", args.output.display()))?;
        (report, rows)
    } else {
        let mut file = FeaturesFile {
            backbone: id,
            weights_sha256: backbone.weights_sha256.clone(),
            paths: Vec::new(),
            dim: id.spec().feature_dim,
            features: Vec::new(),
        };
        let report = features_in_chunks(
            &backbone,
            cache.as_ref(),
            &paths,
            options,
            chunk,
            &bar,
            |i, _hash, features| {
                file.paths.push(entries[i].relative.clone());
                file.features.extend_from_slice(features);
                Ok(())
            },
        )?;
        file.save(&args.output)
            .with_context(|| format!("writing {}", args.output.display()))?;
        (report, file.paths.len())
    };
    if report.hits > 0 {
        eprintln!(
            "{} of {} images came from the feature cache",
            report.hits,
            paths.len()
        );
    }
    let seconds = report.extraction_seconds;
    println!(
        "extracted {} images with {} on {} (batch {}) in {:.1}s: {:.2} images/s; wrote {} ({} rows)",
        report.extracted,
        match backbone.precision() {
            graft::engine::Precision::Fp32 => id.to_string(),
            int8 => format!("{id} {int8}"),
        },
        backbone.engine(),
        options.batch_for(&backbone),
        seconds,
        report.extracted as f64 / seconds.max(1e-9),
        args.output.display(),
        rows
    );
    Ok(match report.skipped.len() + scan.skipped.len() {
        0 => Outcome::Done,
        n => Outcome::Skipped(n as u64),
    })
}
