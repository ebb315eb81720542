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
    /// Answer `unknown` when the calibrated top score is below P (between 0 and 1;
    /// default: the model's stored default, else always answer); the report shows
    /// coverage and accuracy of the answered at P and at 0.1 ... 0.9.
    #[arg(long, value_name = "P", value_parser = values::probability_open, allow_hyphen_values = true)]
    unknown_below: Option<f32>,
    /// Open-set check instead of the evaluation: train heads on --open-set-train with K
    /// random classes held out (features from the cache), and score how the photos of
    /// those classes in the evaluated set are refused (AUROC of max-softmax, energy and
    /// distance to class means; rates at --unknown-below, default 0.5).
    #[arg(long, value_name = "K", value_parser = values::count(), requires = "open_set_train")]
    open_set_classes: Option<usize>,
    /// The training images for --open-set-classes (class folders).
    #[arg(long, value_name = "DIR")]
    open_set_train: Option<PathBuf>,
    /// Runs of --open-set-classes, each holding out another random set (seeds 0, 1, ...).
    #[arg(long, default_value_t = 3, value_name = "N", value_parser = values::count())]
    open_set_seeds: usize,
    #[command(flatten)]
    precision: PrecisionArgs,
}

/// `--open-set-classes`: runs the experiment, prints it and writes openset.json.
fn run_open_set(args: &Args, k: usize) -> anyhow::Result<Outcome> {
    let bar = Bar::new();
    let predictor = graft::predict::Predictor::load(&args.bundle, &bar)?;
    let train = args.open_set_train.clone().unwrap_or_default();
    graft::retrain::require_exists(&train, "--open-set-train")?;
    let options = graft::openset::OpenSetOptions {
        train: graft::retrain::ImageSource::Folders(train),
        held_out: k,
        seeds: args.open_set_seeds as u64,
        unknown_below: predictor.unknown_below(args.unknown_below).unwrap_or(0.5),
        bottleneck_dir: args
            .bottleneck_dir
            .clone()
            .unwrap_or_else(default_bottleneck_dir),
        extract: graft::features::ExtractOptions {
            batch_size: args.batch_size,
            ..Default::default()
        },
    };
    let source = args.source.source()?;
    let report = graft::openset::open_set(&predictor, &source, &options, &bar)?;
    graft::output::prepare_folder(
        &args.output_dir,
        graft::output::Folder::Evaluation,
        "--output-dir",
    )?;
    let path = args.output_dir.join("openset.json");
    graft::fsx::write_atomic(&path, &serde_json::to_vec_pretty(&report)?)?;
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Format::Text => {
            println!(
                "open set: {k} classes held out, {} runs; rates at unknown below {}",
                report.runs.len(),
                report.unknown_below
            );
            println!(
                "  {:>4}  {:>7}  {:>7}  {:>7}  {:>8}  {:>8}  {:>9}  {:>9}",
                "seed", "AUROC", "AUROC", "AUROC", "known", "known", "known", "held-out"
            );
            println!(
                "  {:>4}  {:>7}  {:>7}  {:>7}  {:>8}  {:>8}  {:>9}  {:>9}",
                "", "softmax", "energy", "means", "accuracy", "answered", "acc. ans.", "rejected"
            );
            for r in &report.runs {
                println!(
                    "  {:>4}  {:>7.4}  {:>7.4}  {:>7.4}  {:>7.2}%  {:>7.2}%  {:>8.2}%  {:>8.2}%",
                    r.seed,
                    r.auroc.max_softmax,
                    r.auroc.energy,
                    r.auroc.class_mean,
                    r.known_accuracy * 100.0,
                    r.known_coverage * 100.0,
                    r.known_answered_accuracy * 100.0,
                    r.held_out_rejected * 100.0
                );
            }
            println!("at the threshold --unknown-below auto picks from each run's known classes:");
            println!(
                "  {:>4}  {:>9}  {:>8}  {:>9}  {:>9}",
                "seed", "P (auto)", "known", "known", "held-out"
            );
            println!(
                "  {:>4}  {:>9}  {:>8}  {:>9}  {:>9}",
                "", "", "answered", "acc. ans.", "rejected"
            );
            for r in &report.runs {
                println!(
                    "  {:>4}  {:>9.4}  {:>7.2}%  {:>8.2}%  {:>8.2}%",
                    r.seed,
                    r.auto.threshold,
                    r.auto.known_coverage * 100.0,
                    r.auto.known_answered_accuracy * 100.0,
                    r.auto.held_out_rejected * 100.0
                );
            }
            let m = &report.mean_auroc;
            println!(
                "mean AUROC: max-softmax {:.4}, energy {:.4}, distance to class means {:.4}; best: {}",
                m.max_softmax, m.energy, m.class_mean, report.best_score
            );
            println!("written to {}", path.display());
        }
    }
    Ok(Outcome::Done)
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    if let Some(k) = args.open_set_classes {
        return run_open_set(&args, k);
    }
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
        unknown_below: args.unknown_below,
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
            for level in &result.levels {
                println!("{}:\n{}", level.name, level.evaluation.per_class_table());
            }
            let c = &result.calibration;
            println!(
                "calibration: temperature {:.3}; expected calibration error {:.4} before, {:.4} after",
                c.temperature, c.ece_uncalibrated, c.ece_calibrated
            );
            let r = &result.rejection;
            println!("answering only above a threshold P (calibrated top score):");
            println!(
                "  {:>5}  {:>8}  {:>18}",
                "P", "coverage", "accuracy answered"
            );
            for t in r.at_chosen.iter().chain(&r.table) {
                println!(
                    "  {:>5.2}  {:>7.2}%  {:>17.2}%",
                    t.threshold,
                    t.coverage * 100.0,
                    t.answered_accuracy * 100.0
                );
            }
            if let Some(t) = &r.at_chosen {
                println!(
                    "unknown below {}: {} of {} photos answered ({:.2}%), {:.2}% of them right",
                    t.threshold,
                    t.answered,
                    e.samples,
                    t.coverage * 100.0,
                    t.answered_accuracy * 100.0
                );
            }
            for level in &result.levels {
                let l = &level.evaluation;
                println!(
                    "{} ({} groups): top-1 accuracy {:.2}% ({} of {}), top-{} accuracy {:.2}%",
                    level.name,
                    l.labels.len(),
                    l.top1_accuracy * 100.0,
                    l.correct,
                    l.samples,
                    l.top_k,
                    l.top5_accuracy * 100.0
                );
            }
            let fine = if result.levels.is_empty() {
                ""
            } else {
                "fine: "
            };
            println!(
                "{fine}top-1 accuracy {:.2}% ({} of {}), top-{} accuracy {:.2}%; reports in {}",
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
