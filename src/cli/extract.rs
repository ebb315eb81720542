//! `graft extract DIR --backbone NAME --output FILE`

use std::path::PathBuf;

use anyhow::Context;

use graft::backbone::{Backbone, BackboneId};
use graft::dataset::scan_images;
use graft::features::file::FeaturesFile;
use graft::features::{extract, ExtractOptions};

use super::render::Bar;
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
    /// Images per forward pass.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    let id: BackboneId = args.backbone.parse()?;
    let bar = Bar::new();
    let backbone = Backbone::load(id, &bar)?;
    let entries = scan_images(&args.dir)?;
    anyhow::ensure!(
        !entries.is_empty(),
        "no images (JPEG, PNG, BMP, GIF, WebP, TIFF) found under {}",
        args.dir.display()
    );
    let paths: Vec<PathBuf> = entries.iter().map(|e| e.path.clone()).collect();
    let dim = id.spec().feature_dim;
    let mut rows: Vec<(usize, Vec<f32>)> = Vec::with_capacity(paths.len());
    let options = ExtractOptions {
        batch_size: args.batch_size,
        ..ExtractOptions::default()
    };
    let report = extract(&backbone, &paths, options, &bar, |out| {
        rows.push((out.index, out.features.to_vec()));
        Ok(())
    })?;
    let file = FeaturesFile {
        backbone: id,
        weights_sha256: backbone.weights_sha256.clone(),
        paths: rows.iter().map(|(i, _)| entries[*i].relative.clone()).collect(),
        dim,
        features: rows.into_iter().flat_map(|(_, f)| f).collect(),
    };
    file.save(&args.output)
        .with_context(|| format!("writing {}", args.output.display()))?;
    println!(
        "extracted {} images with {} in {:.1}s: {:.2} images/s; wrote {}",
        report.processed,
        id,
        report.elapsed.as_secs_f64(),
        report.images_per_second(),
        args.output.display()
    );
    Ok(match report.skipped.len() {
        0 => Outcome::Done,
        n => Outcome::Skipped(n as u64),
    })
}
