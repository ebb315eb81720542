//! `graft evaluate BUNDLE (DIR | --labels FILE.csv)`: accuracy, per-class metrics,
//! confusion matrix and the misclassified images of a labelled set.

use std::path::PathBuf;

use graft::evaluate::{evaluate_bundle, EvaluateOptions};
use graft::retrain::default_bottleneck_dir;

use super::precision::PrecisionArgs;
use super::render::Bar;
use super::source::SourceArgs;
use super::values;
use super::Outcome;

#[derive(Clone, Copy, clap::ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(clap::Args)]
pub struct Args {
    /// Model folder written by `graft train --output`.
    bundle: PathBuf,
    #[command(flatten)]
    source: SourceArgs,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Where confusion.csv, confusion.png, misclassified.csv, metrics.json and report.html go.
    #[arg(long, default_value = "graft-evaluation")]
    output_dir: PathBuf,
    /// Write the HTML report here instead of <output-dir>/report.html.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Feature cache folder (default: <graft home>/bottlenecks).
    #[arg(long)]
    bottleneck_dir: Option<PathBuf>,
    /// Images per backbone forward pass (default: the fastest measured for the backbone
    /// on its engine; 1 for the EfficientNet-Lite models).
    #[arg(long, value_parser = values::batch_size())]
    batch_size: Option<usize>,
    /// Test-time augmentation: average the softmax over N views of each image (1 = off;
    /// up to 10: original, mirror, four 90% corner crops and their mirrors).
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = values::tta)]
    tta: usize,
    #[command(flatten)]
    precision: PrecisionArgs,
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    let source = args.source.source()?;
    let bar = Bar::new();
    let options = EvaluateOptions {
        bundle: args.bundle.clone(),
        source,
        bottleneck_dir: args
            .bottleneck_dir
            .clone()
            .unwrap_or_else(default_bottleneck_dir),
        batch_size: args.batch_size,
        tta: args.tta,
        output_dir: args.output_dir.clone(),
        report: args.report.clone(),
        backbone: args.precision.options(graft::engine::EngineChoice::Auto),
    };
    let result = evaluate_bundle(&options, &bar)?;
    let e = &result.evaluation;
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&result.json())?),
        Format::Text => {
            println!("{}", e.per_class_table());
            if !e.misclassified.is_empty() {
                println!(
                    "misclassified ({}), most confident first:",
                    e.misclassified.len()
                );
                for m in &e.misclassified {
                    println!(
                        "  {}  true {}  predicted {} ({:.2})",
                        result.paths[m.index],
                        e.labels[m.truth],
                        e.labels[m.predicted],
                        m.predicted_probability
                    );
                }
            }
            println!(
                "top-1 accuracy {:.2}% ({} of {}), top-{} accuracy {:.2}%; reports in {}",
                e.top1_accuracy * 100.0,
                e.correct,
                e.samples,
                e.top_k,
                e.top5_accuracy * 100.0,
                args.output_dir.display()
            );
            let report = args
                .report
                .clone()
                .unwrap_or_else(|| args.output_dir.join("report.html"));
            println!("HTML report: {}", report.display());
        }
    }
    Ok(match result.skipped.len() {
        0 => Outcome::Done,
        n => Outcome::Skipped(n as u64),
    })
}
