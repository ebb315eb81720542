//! The class-balance chart: images per class as bars, like the seed's seaborn
//! `countplot`. Drawing plumbing (embedded font, in-memory canvas, atomic PNG write)
//! is shared with the other charts through [`super::curves::render_png`].

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::curves::{render_png, FONT};
use crate::dataset::stats::ClassStats;
use crate::error::Result;

/// Seaborn's first default colour, as in the seed's plot.
const BAR: RGBColor = RGBColor(76, 114, 176);
/// Labels longer than this are cut (with an ellipsis) so the chart keeps its shape.
const LABEL_CHARS: usize = 40;
const LABEL_FONT: f64 = 13.0;
/// Widest chart drawn; beyond ~400 classes the bars get narrower instead.
const MAX_WIDTH: u32 = 12_000;

/// A bar chart of images per class, largest first, with the class names written
/// vertically under the bars (the seed's `countplot` with `xticks(rotation=90)`),
/// saved as a PNG at `path`.
pub fn class_counts_chart(stats: &ClassStats, path: &Path) -> Result<()> {
    let labels: Vec<String> = stats
        .classes
        .iter()
        .map(|c| short_label(&c.label))
        .collect();
    let n = labels.len().max(1) as u32;
    let slot = (MAX_WIDTH / n).clamp(3, 28);
    let longest = labels.iter().map(|l| l.chars().count()).max().unwrap_or(1) as u32;
    // About 7 px per character at 13 px: room for the longest name, hanging down.
    let label_area = 16 + longest * 7;
    let size = ((110 + n * slot).max(640), 460 + label_area);
    render_png(path, size, |root| {
        draw_bars(root, stats, &labels, label_area).map_err(|e| e.to_string())
    })
}

fn short_label(label: &str) -> String {
    super::shorten(label, LABEL_CHARS)
}

fn draw_bars(
    root: &DrawingArea<BitMapBackend<'_>, Shift>,
    stats: &ClassStats,
    labels: &[String],
    label_area: u32,
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let n = labels.len() as u32;
    let top = stats.classes.first().map(|c| c.count).unwrap_or(0);
    let y_max = (top + top / 10).max(1);
    let caption = format!(
        "Images per class: {} images in {} classes",
        stats.total(),
        stats.classes.len()
    );
    let mut chart = ChartBuilder::on(root)
        .caption(caption, (FONT, 20.0))
        .margin(12)
        .x_label_area_size(label_area)
        .y_label_area_size(64)
        // An integer range is inclusive in plotters: 0..n-1 gives exactly n slots.
        .build_cartesian_2d((0u32..n.saturating_sub(1)).into_segmented(), 0u64..y_max)?;
    // The mesh draws the ticks; the names are drawn below by hand, because the mesh
    // centres every label on its tick, which for turned text puts half of it above
    // the axis.
    chart
        .configure_mesh()
        .disable_x_mesh()
        .label_style((FONT, 13.0))
        .x_labels(labels.len())
        .x_label_formatter(&|_| String::new())
        .y_desc("images")
        .axis_desc_style((FONT, 15.0))
        .draw()?;
    // Turned a quarter counter-clockwise and anchored at its end, each name reads
    // upwards and ends just under its bar, as with matplotlib's rotation=90.
    let name_style = TextStyle::from((FONT, LABEL_FONT).into_font())
        .transform(FontTransform::Rotate270)
        .pos(Pos::new(HPos::Right, VPos::Center));
    for (i, label) in labels.iter().enumerate() {
        let (x, y) = chart.backend_coord(&(SegmentValue::CenterOf(i as u32), 0));
        root.draw(&Text::new(label.as_str(), (x, y + 8), name_style.clone()))?;
    }
    chart.draw_series(
        Histogram::vertical(&chart)
            .style(BAR.filled())
            .margin(2)
            .data(
                stats
                    .classes
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (i as u32, c.count)),
            ),
    )?;
    Ok(())
}
