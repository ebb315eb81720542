//! `graft organize --labels train.csv --images train_img/ --output train/`

use std::path::PathBuf;

use graft::dataset::organize::{organize, plan_organize, OrganizeOptions, OutputFormat};
use graft::image::DecodeLimits;
use graft::progress::Progress;

use super::render::Bar;
use super::values;
use super::Outcome;

/// How many stale or unlabelled files are named before "... and N more".
const NAME_AT_MOST: usize = 5;

#[derive(clap::Args)]
pub struct Args {
    /// CSV of image_id,label rows (a header line is detected; UTF-8, with or without BOM).
    #[arg(long, value_name = "FILE.csv")]
    labels: PathBuf,
    /// Folder holding the images, named <image_id>.<ext>.
    #[arg(long, value_name = "DIR")]
    images: PathBuf,
    /// Where the class folders go: OUTPUT/<label>/<image_id>.jpg. Nothing is written
    /// outside it.
    #[arg(long, short, value_name = "DIR")]
    output: PathBuf,
    /// jpg and png convert to 8-bit RGB; keep copies each file unchanged.
    #[arg(long, value_enum, default_value_t = Format::Jpg)]
    format: Format,
    /// JPEG quality, 1 to 100 (with --format jpg).
    #[arg(long, default_value_t = 95, value_parser = values::jpeg_quality())]
    quality: u8,
    /// Leave out rows whose image file is missing, instead of refusing the CSV.
    #[arg(long)]
    skip_missing: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Format {
    Jpg,
    Png,
    Keep,
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    let options = OrganizeOptions {
        format: match args.format {
            Format::Jpg => OutputFormat::Jpeg {
                quality: args.quality,
            },
            Format::Png => OutputFormat::Png,
            Format::Keep => OutputFormat::Keep,
        },
        skip_missing: args.skip_missing,
        limits: DecodeLimits::default(),
    };
    let plan = plan_organize(&args.labels, &args.images, &args.output, &options)?;
    let bar = Bar::new();
    for row in &plan.missing {
        bar.message(&format!(
            "skipped line {}: no image for id {:?} in {}",
            row.line,
            row.image_id,
            args.images.display()
        ));
    }
    let report = organize(&plan, &options, &bar)?;

    let placed: u64 = report.per_class.iter().map(|(_, n)| n).sum();
    println!(
        "{placed} images in {} classes under {}",
        report.per_class.len(),
        args.output.display()
    );
    let width = report
        .per_class
        .iter()
        .map(|(label, _)| label.chars().count())
        .max()
        .unwrap_or(5)
        .max(5);
    println!("  {:<width$}  images", "class");
    for (label, count) in &report.per_class {
        println!("  {label:<width$}  {count:>6}");
    }
    println!(
        "written {}, already done {}, skipped (missing) {}, failed {}",
        report.written,
        report.already_done,
        report.missing,
        report.failed.len()
    );
    if !plan.unlabelled.is_empty() {
        eprintln!(
            "note: {} image(s) in {} have no row in {} and were left out: {}",
            plan.unlabelled.len(),
            args.images.display(),
            args.labels.display(),
            name_some(&plan.unlabelled)
        );
    }
    if !report.stale.is_empty() {
        eprintln!(
            "warning: {} image(s) under {} do not come from {} (an earlier run with other \
             labels?) and would be trained on: {}; delete them if the labels changed",
            report.stale.len(),
            args.output.display(),
            args.labels.display(),
            name_some(&report.stale)
        );
    }
    Ok(match report.missing + report.failed.len() as u64 {
        0 => Outcome::Done,
        n => Outcome::Skipped(n),
    })
}

fn name_some(paths: &[PathBuf]) -> String {
    let mut names: Vec<String> = paths
        .iter()
        .take(NAME_AT_MOST)
        .map(|p| p.display().to_string())
        .collect();
    if paths.len() > NAME_AT_MOST {
        names.push(format!("... and {} more", paths.len() - NAME_AT_MOST));
    }
    names.join(", ")
}
