//! `graft stats (DIR | --labels FILE.csv) [--plot counts.png]`

use std::path::PathBuf;

use graft::dataset::stats::{class_folder_counts, labels_csv_counts, SMALL_CLASS};
use graft::report::{class_counts_chart, class_table};

use super::Outcome;

#[derive(clap::Args)]
#[command(group = clap::ArgGroup::new("source").required(true).args(["dir", "labels"]))]
pub struct Args {
    /// A class-folder tree: every folder that directly holds images is a class.
    dir: Option<PathBuf>,
    /// Count the label column of an image_id,label CSV instead.
    #[arg(long, value_name = "FILE.csv")]
    labels: Option<PathBuf>,
    /// Also draw the counts as a bar chart (PNG).
    #[arg(long, value_name = "FILE.png")]
    plot: Option<PathBuf>,
    /// Warn about classes with fewer images than this.
    #[arg(long, default_value_t = SMALL_CLASS)]
    warn_below: u64,
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    let stats = match (&args.dir, &args.labels) {
        (_, Some(csv)) => labels_csv_counts(csv)?,
        (Some(dir), None) => class_folder_counts(dir)?,
        (None, None) => anyhow::bail!("pass a class-folder tree DIR or --labels FILE.csv"),
    };
    for warning in &stats.warnings {
        eprintln!("warning: {warning}");
    }
    for entry in &stats.skipped {
        eprintln!("skipped {entry}");
    }
    print!("{}", class_table(&stats));
    if let (Some(ratio), Some(largest), Some(smallest)) = (
        stats.imbalance_ratio(),
        stats.classes.first(),
        stats.classes.last(),
    ) {
        println!(
            "{} classes; imbalance ratio {ratio:.2} (largest {} {}, smallest {} {})",
            stats.classes.len(),
            largest.label,
            largest.count,
            smallest.label,
            smallest.count
        );
    }
    if let Some(plot) = &args.plot {
        class_counts_chart(&stats, plot)?;
        println!("wrote {}", plot.display());
    }
    if stats.unassigned > 0 {
        eprintln!(
            "note: {} image(s) directly in {} belong to no class folder and are not counted",
            stats.unassigned,
            stats.source.display()
        );
    }
    let small = stats.below(args.warn_below);
    if !small.is_empty() {
        let names: Vec<String> = small
            .iter()
            .map(|c| format!("{} ({})", c.label, c.count))
            .collect();
        eprintln!(
            "warning: {} class(es) have fewer than {} images: {}; collect more photos or \
             balance them with graft augment",
            small.len(),
            args.warn_below,
            names.join(", ")
        );
    }
    Ok(match stats.skipped.len() {
        0 => Outcome::Done,
        n => Outcome::Skipped(n as u64),
    })
}
