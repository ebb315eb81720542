//! `graft imagenet IMAGE...`: the top-5 ImageNet classes of each image, to check that
//! a backbone sees like its reference.

use std::path::PathBuf;

use graft::backbone::imagenet::{top_k, IMAGENET_CLASSES};
use graft::backbone::BackboneId;
use graft::engine::Backbone;
use graft::features::{extract, ExtractOptions};

use super::render::Bar;
use super::Outcome;

#[derive(clap::Args)]
pub struct Args {
    /// Image files.
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// Backbone network.
    #[arg(long, default_value_t = BackboneId::DEFAULT.name().to_string())]
    backbone: String,
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    let id: BackboneId = args.backbone.parse()?;
    let bar = Bar::new();
    let backbone = Backbone::load(id, &bar)?;
    let report = extract(
        &backbone,
        &args.images,
        ExtractOptions::default(),
        &graft::progress::Silent,
        |out| {
            println!("{}", args.images[out.index].display());
            for (class, p) in top_k(out.logits, 5) {
                println!("  {p:>7.4}  {}", IMAGENET_CLASSES[class]);
            }
            Ok(())
        },
    )?;
    for skipped in &report.skipped {
        eprintln!("skipped {}: {}", skipped.path.display(), skipped.reason);
    }
    Ok(match report.skipped.len() {
        0 => Outcome::Done,
        n => Outcome::Skipped(n as u64),
    })
}
