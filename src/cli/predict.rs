//! `graft predict BUNDLE PATH...`: label unseen images, top-k with scores.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;

use graft::engine::EngineChoice;
use graft::features::ExtractOptions;
use graft::predict::{duplicate_ids, expand_inputs, Prediction, Predictor};
use graft::progress::Progress;

use super::precision::PrecisionArgs;
use super::render::Bar;
use super::values;
use super::Outcome;

#[derive(Clone, Copy, clap::ValueEnum)]
enum Format {
    Table,
    Csv,
    Json,
}

#[derive(clap::Args)]
pub struct Args {
    /// Model folder written by `graft train --output`.
    bundle: PathBuf,
    /// Image files or folders (walked recursively).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Labels per image (at most the model's class count are shown).
    #[arg(long, default_value_t = 1, value_parser = values::count())]
    top_k: usize,
    /// `csv` writes the submission format `image_id,label` (plus score columns when
    /// --top-k > 1).
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Write here instead of standard output.
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// Images per backbone forward pass (default: the fastest measured for the backbone
    /// on its engine; 1 for the EfficientNet-Lite models).
    #[arg(long, value_parser = values::batch_size())]
    batch_size: Option<usize>,
    /// Test-time augmentation: average the softmax over N views of each image (1 = off;
    /// up to 10: original, mirror, four 90% corner crops and their mirrors).
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = values::tta)]
    tta: usize,
    /// Answer `unknown` when the calibrated top score is below P (between 0 and 1;
    /// default: the model's stored default, else always answer).
    #[arg(long, value_name = "P", value_parser = values::probability_open, allow_hyphen_values = true)]
    unknown_below: Option<f32>,
    #[command(flatten)]
    precision: PrecisionArgs,
}

/// `tree`: the model has a class tree, so CSV rows also carry the answer's class path.
fn render(
    predictions: &[Prediction],
    format: Format,
    top_k: usize,
    tree: bool,
) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    match format {
        Format::Table => {
            for p in predictions {
                let labels: Vec<String> = p
                    .top
                    .iter()
                    .map(|s| format!("{} ({:.3})", s.class_path, s.score))
                    .collect();
                let unknown = if p.unknown {
                    "unknown; best guesses "
                } else {
                    ""
                };
                writeln!(out, "{}\t{unknown}{}", p.path.display(), labels.join(", "))?;
            }
        }
        Format::Csv => {
            let mut w = csv::Writer::from_writer(&mut out);
            let mut header = vec!["image_id".to_string(), "label".to_string()];
            if tree {
                header.push("class_path".into());
            }
            if top_k > 1 {
                header.push("score".into());
                for k in 2..=top_k {
                    header.push(format!("label_{k}"));
                    header.push(format!("score_{k}"));
                }
            }
            w.write_record(&header)?;
            for p in predictions {
                let mut row = vec![p.image_id.clone()];
                for (k, s) in p.top.iter().enumerate() {
                    // The first label is the answer, `unknown` when it is refused.
                    match k {
                        0 if p.unknown => row.push(p.answer().to_string()),
                        _ => row.push(s.label.clone()),
                    }
                    if k == 0 && tree {
                        row.push(match p.unknown {
                            true => p.answer().to_string(),
                            false => s.class_path.clone(),
                        });
                    }
                    if top_k > 1 || k > 0 {
                        row.push(format!("{:.6}", s.score));
                    }
                }
                w.write_record(&row)?;
            }
            w.flush()?;
        }
        Format::Json => {
            serde_json::to_writer_pretty(&mut out, predictions)?;
            out.push(b'\n');
        }
    }
    Ok(out)
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    let bar = Bar::new();
    let predictor = Predictor::load_with(
        &args.bundle,
        &args.precision.options(EngineChoice::Auto),
        &bar,
    )?;
    let inputs = expand_inputs(&args.paths)?;
    for warning in &inputs.warnings {
        bar.message(&format!("warning: {warning}"));
    }
    for entry in &inputs.skipped {
        bar.message(&format!("skipped {entry}"));
    }
    let paths = inputs.paths;
    anyhow::ensure!(!paths.is_empty(), "no images found in the given paths");
    let options = ExtractOptions {
        batch_size: args.batch_size,
        ..ExtractOptions::default()
    };
    let (mut predictions, skipped) = predictor.predict_paths(
        &paths,
        args.top_k,
        args.tta,
        predictor.unknown_below(args.unknown_below),
        options,
        &bar,
    )?;
    if matches!(args.format, Format::Csv) {
        // Submission rows in a stable order, whatever order the files were given in.
        predictions.sort_by(|a, b| a.image_id.cmp(&b.image_id).then(a.path.cmp(&b.path)));
        // Ids stay the file stems the submission format asks for; a clash is said, not
        // renamed away, so that the user decides which file the id means.
        for (first, other) in duplicate_ids(&predictions) {
            eprintln!(
                "warning: image_id '{}' is written twice: for {} (label {}) and for {} (label {}); \
                 rename one of the files so every id names one image",
                first.image_id,
                first.path.display(),
                first.answer(),
                other.path.display(),
                other.answer()
            );
        }
    }
    let tree = predictor.bundle.taxonomy().depth() > 1;
    let text = render(
        &predictions,
        args.format,
        predictor.effective_k(args.top_k),
        tree,
    )?;
    match &args.output {
        Some(path) => {
            graft::fsx::write_atomic(path, &text)
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!(
                "wrote {} predictions to {}",
                predictions.len(),
                path.display()
            );
        }
        None => std::io::stdout().write_all(&text)?,
    }
    Ok(match skipped.len() + inputs.skipped.len() {
        0 => Outcome::Done,
        n => Outcome::Skipped(n as u64),
    })
}
