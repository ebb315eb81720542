//! `graft augment SRC --output DST --class-size 600`: Keras ImageDataGenerator-style
//! balancing, with the seed project's settings as defaults.

use std::path::PathBuf;

use graft::image::augment::{augment_folder, AugmentOptions, AugmentSettings, Fill};
use graft::image::DecodeLimits;

use super::render::Bar;
use super::values;
use super::Outcome;

#[derive(clap::Args)]
pub struct Args {
    /// Class-folder tree to balance (every folder that directly holds images is a class).
    src: PathBuf,
    /// Where the balanced copy goes (same folders; originals copied, augmented copies
    /// named <stem>_nohash_<k>.jpg). Must not be inside SRC.
    #[arg(long, short, value_name = "DST")]
    output: PathBuf,
    /// Images per class afterwards, exactly; larger classes are copied unchanged. (The
    /// seed made floor(600/count)-1 copies of each image, which misses the target.)
    #[arg(long, default_value_t = 600, value_parser = values::count_u64())]
    class_size: u64,
    /// Degrees of random rotation, either way.
    #[arg(long, default_value_t = 40.0, value_parser = values::degrees, allow_hyphen_values = true)]
    rotation_range: f64,
    /// Random shift as a fraction of the width (1 or more: pixels).
    #[arg(long, default_value_t = 0.2, value_parser = values::shift, allow_hyphen_values = true)]
    width_shift_range: f64,
    /// Random shift as a fraction of the height (1 or more: pixels).
    #[arg(long, default_value_t = 0.2, value_parser = values::shift, allow_hyphen_values = true)]
    height_shift_range: f64,
    /// Shear angle in degrees (as current Keras).
    #[arg(long, default_value_t = 0.2, value_parser = values::shear_degrees, allow_hyphen_values = true)]
    shear_range: f64,
    /// Zoom: factors drawn from [1 - z, 1 + z], separately for x and y (z from 0 to 0.95).
    #[arg(long, default_value_t = 0.2, value_parser = values::zoom, allow_hyphen_values = true)]
    zoom_range: f64,
    /// Flip half of the copies left-right. On by default, as in the seed;
    /// `--horizontal-flip=false` turns it off.
    #[arg(
        long,
        value_name = "BOOL",
        default_value_t = true,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        action = clap::ArgAction::Set
    )]
    horizontal_flip: bool,
    /// Flip half of the copies upside down.
    #[arg(
        long,
        value_name = "BOOL",
        default_value_t = false,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        action = clap::ArgAction::Set
    )]
    vertical_flip: bool,
    /// Random brightness factor range, such as 0.8,1.2.
    #[arg(long, value_name = "A,B", value_parser = values::brightness_pair, allow_hyphen_values = true)]
    brightness_range: Option<(f64, f64)>,
    /// How pixels pulled from outside the image are filled.
    #[arg(long, value_enum, default_value_t = FillMode::Nearest)]
    fill_mode: FillMode,
    /// Grey level (0-255) for --fill-mode constant.
    #[arg(long, default_value_t = 0.0, value_parser = values::grey_level, allow_hyphen_values = true)]
    cval: f64,
    /// Random seed: the same seed writes the same files, whatever the thread count.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// JPEG quality of the augmented copies, 1 to 100.
    #[arg(long, default_value_t = 95, value_parser = values::jpeg_quality())]
    quality: u8,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum FillMode {
    Nearest,
    Constant,
    Reflect,
    Wrap,
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    let settings = AugmentSettings {
        rotation_range: args.rotation_range,
        width_shift_range: args.width_shift_range,
        height_shift_range: args.height_shift_range,
        shear_range: args.shear_range,
        zoom_range: AugmentSettings::zoom(args.zoom_range),
        horizontal_flip: args.horizontal_flip,
        vertical_flip: args.vertical_flip,
        brightness_range: args.brightness_range,
        fill: match args.fill_mode {
            FillMode::Nearest => Fill::Nearest,
            FillMode::Constant => Fill::Constant(args.cval),
            FillMode::Reflect => Fill::Reflect,
            FillMode::Wrap => Fill::Wrap,
        },
    };
    let options = AugmentOptions {
        class_size: args.class_size,
        settings,
        seed: args.seed,
        jpeg_quality: args.quality,
        limits: DecodeLimits::default(),
    };
    let report = augment_folder(&args.src, &args.output, &options, &Bar::new())?;

    println!(
        "balanced {} classes into {}",
        report.classes.len(),
        args.output.display()
    );
    let width = report
        .classes
        .iter()
        .map(|c| c.folder.chars().count())
        .max()
        .unwrap_or(5)
        .max(5);
    println!("  {:<width$}  originals  augmented   total", "class");
    for class in &report.classes {
        println!(
            "  {:<width$}  {:>9}  {:>9}  {:>6}",
            class.folder,
            class.originals,
            class.augmented,
            class.originals + class.augmented
        );
    }
    println!(
        "written {}, already done {}, failed {}",
        report.written,
        report.already_done,
        report.failed.len()
    );
    if !report.unassigned.is_empty() {
        eprintln!(
            "note: {} image(s) directly in {} belong to no class folder and were left out",
            report.unassigned.len(),
            args.src.display()
        );
    }
    Ok(match report.failed.len() {
        0 => Outcome::Done,
        n => Outcome::Skipped(n as u64),
    })
}
