//! The confusion-matrix heatmap: which classes the model mixes up, readable even with a
//! hundred classes.
//!
//! Colour is normalised per row (the share of each true class that went to each
//! prediction), so a rare class's mistakes are as visible as a common one's. Classes
//! keep the order given, so the picture lines up with the CSV and the label file.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::curves::{register_font, render_png, FONT};
use crate::error::{Error, Result};

/// Labels longer than this many pixels are shortened with an ellipsis.
const MAX_LABEL_PX: u32 = 220;
const PAD: u32 = 16;
const TITLE: &str = "Confusion matrix (colour: share of each true class)";
const TITLE_SIZE: f64 = 20.0;
const TITLE_H: u32 = 48;
const AXIS_TITLE: u32 = 26;
const COLOR_BAR_W: u32 = 18;
const COLOR_BAR_RIGHT: u32 = 70;

/// matplotlib's "Blues" ramp: white for nothing, dark blue for the whole row.
const RAMP: [(f64, [u8; 3]); 5] = [
    (0.0, [247, 251, 255]),
    (0.25, [198, 219, 239]),
    (0.5, [107, 174, 214]),
    (0.75, [33, 113, 181]),
    (1.0, [8, 48, 107]),
];

/// Draws `counts[true][predicted]` as a heatmap with `labels` on both axes and writes
/// the PNG to `path` atomically.
///
/// Cells are 14 to 48 pixels (larger for few classes, with the counts written in them);
/// beyond 300 classes they shrink further to keep the picture a few thousand pixels wide,
/// and the labels are left out once a cell is too small to hold text.
/// Errors when `counts` is not a `labels.len()` square matrix, or has no classes.
pub fn confusion_png(path: &Path, labels: &[String], counts: &[Vec<u32>]) -> Result<()> {
    let n = labels.len();
    if n == 0 {
        return Err(Error::invalid_input(
            path,
            "no classes to draw a confusion matrix for",
        ));
    }
    if counts.len() != n || counts.iter().any(|row| row.len() != n) {
        return Err(Error::invalid_input(
            path,
            format!("the confusion matrix is not {n}x{n} like the {n} class labels"),
        ));
    }
    register_font()?;

    let cell = cell_size(n);
    let label_size = (f64::from(cell) * 0.8).clamp(8.0, 15.0);
    let show_labels = cell >= 9;
    let label_font = (FONT, label_size).into_font();
    let shown: Vec<String> = if show_labels {
        labels.iter().map(|l| shorten(&label_font, l)).collect()
    } else {
        Vec::new()
    };
    let label_w = shown
        .iter()
        .map(|l| {
            label_font
                .box_size(l)
                .map(|(w, _)| w)
                .unwrap_or(MAX_LABEL_PX)
        })
        .max()
        .unwrap_or(0)
        .min(MAX_LABEL_PX);
    let label_gap = if show_labels { label_w + 8 } else { 0 };

    let matrix = n as u32 * cell;
    let left = PAD + AXIS_TITLE + label_gap;
    let top = TITLE_H;
    // A handful of classes makes a narrow matrix; the title must still fit.
    let title_w = (FONT, TITLE_SIZE)
        .into_font()
        .box_size(TITLE)
        .map(|(w, _)| w)
        .unwrap_or(600);
    let width = (left + matrix + PAD + COLOR_BAR_W + COLOR_BAR_RIGHT).max(title_w + 2 * PAD);
    let height = top + matrix + label_gap + AXIS_TITLE + PAD;

    let fractions: Vec<Vec<f64>> = counts
        .iter()
        .map(|row| {
            let total: u64 = row.iter().map(|&c| u64::from(c)).sum();
            row.iter()
                .map(|&c| {
                    if total == 0 {
                        0.0
                    } else {
                        f64::from(c) / total as f64
                    }
                })
                .collect()
        })
        .collect();

    render_png(path, (width, height), |root| {
        let err = |e: DrawingAreaErrorKind<_>| e.to_string();
        let x0 = left as i32;
        let y0 = top as i32;
        let c = cell as i32;
        let m = matrix as i32;

        root.draw(&Text::new(
            TITLE,
            (PAD as i32, (TITLE_H / 2) as i32),
            (FONT, TITLE_SIZE)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Left, VPos::Center)),
        ))
        .map_err(err)?;

        let count_font = (FONT, (f64::from(cell) * 0.38).clamp(10.0, 16.0)).into_font();
        for (t, row) in counts.iter().enumerate() {
            for (p, &count) in row.iter().enumerate() {
                let share = fractions[t][p];
                let (cx, cy) = (x0 + p as i32 * c, y0 + t as i32 * c);
                root.draw(&Rectangle::new(
                    [(cx, cy), (cx + c, cy + c)],
                    ramp(share).filled(),
                ))
                .map_err(err)?;
                if cell >= 10 {
                    root.draw(&Rectangle::new(
                        [(cx, cy), (cx + c, cy + c)],
                        RGBColor(225, 225, 225).stroke_width(1),
                    ))
                    .map_err(err)?;
                }
                if cell >= 26 && count > 0 {
                    let ink = if share > 0.55 { WHITE } else { BLACK };
                    root.draw(&Text::new(
                        count.to_string(),
                        (cx + c / 2, cy + c / 2),
                        count_font
                            .color(&ink)
                            .pos(Pos::new(HPos::Center, VPos::Center)),
                    ))
                    .map_err(err)?;
                }
            }
        }
        root.draw(&Rectangle::new(
            [(x0, y0), (x0 + m, y0 + m)],
            BLACK.stroke_width(1),
        ))
        .map_err(err)?;

        let axis_font = (FONT, 16).into_font();
        for (i, label) in shown.iter().enumerate() {
            let middle = i as i32 * c + c / 2;
            // Row labels, right-aligned against the matrix.
            root.draw(&Text::new(
                label.as_str(),
                (x0 - 6, y0 + middle),
                label_font
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Right, VPos::Center)),
            ))
            .map_err(err)?;
            // Column labels under the matrix, reading upwards and ending at its edge.
            root.draw(&Text::new(
                label.as_str(),
                (x0 + middle, y0 + m + 6),
                label_font
                    .color(&BLACK)
                    .transform(FontTransform::Rotate270)
                    .pos(Pos::new(HPos::Right, VPos::Center)),
            ))
            .map_err(err)?;
        }
        root.draw(&Text::new(
            "predicted class",
            (
                x0 + m / 2,
                y0 + m + label_gap as i32 + AXIS_TITLE as i32 / 2,
            ),
            axis_font
                .color(&BLACK)
                .pos(Pos::new(HPos::Center, VPos::Center)),
        ))
        .map_err(err)?;
        root.draw(&Text::new(
            "true class",
            ((PAD + AXIS_TITLE / 2) as i32, y0 + m / 2),
            axis_font
                .color(&BLACK)
                .transform(FontTransform::Rotate270)
                .pos(Pos::new(HPos::Center, VPos::Center)),
        ))
        .map_err(err)?;

        // Colour bar: the matrix height, full row at the top.
        let bar_x = x0 + m + PAD as i32;
        let bar_h = m.max(60);
        for y in 0..bar_h {
            let share = 1.0 - f64::from(y) / f64::from(bar_h - 1);
            root.draw(&PathElement::new(
                [(bar_x, y0 + y), (bar_x + COLOR_BAR_W as i32, y0 + y)],
                ramp(share),
            ))
            .map_err(err)?;
        }
        root.draw(&Rectangle::new(
            [(bar_x, y0), (bar_x + COLOR_BAR_W as i32, y0 + bar_h)],
            BLACK.stroke_width(1),
        ))
        .map_err(err)?;
        let tick_font = (FONT, 13).into_font();
        for (share, text) in [(1.0, "100%"), (0.5, "50%"), (0.0, "0%")] {
            let y = y0 + ((1.0 - share) * f64::from(bar_h - 1)) as i32;
            root.draw(&Text::new(
                text,
                (bar_x + COLOR_BAR_W as i32 + 5, y),
                tick_font
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Left, VPos::Center)),
            ))
            .map_err(err)?;
        }
        Ok(())
    })
}

/// Pixels per class: generous for a handful of classes, 14 px (small but legible labels)
/// up to 300 classes, then whatever keeps the matrix about 4200 px wide.
fn cell_size(n: usize) -> u32 {
    if n <= 300 {
        (720 / n as u32).clamp(14, 48)
    } else {
        (4200 / n as u32).max(1)
    }
}

/// `label`, cut and ended with an ellipsis when wider than [`MAX_LABEL_PX`].
fn shorten(font: &FontDesc, label: &str) -> String {
    let fits = |text: &str| {
        font.box_size(text)
            .map(|(w, _)| w <= MAX_LABEL_PX)
            .unwrap_or(true)
    };
    if fits(label) {
        return label.to_string();
    }
    let mut chars: Vec<char> = label.chars().collect();
    while !chars.is_empty() {
        chars.pop();
        let candidate: String = chars.iter().collect::<String>() + "…";
        if fits(&candidate) {
            return candidate;
        }
    }
    "…".to_string()
}

/// The ramp colour for a share in 0..=1.
fn ramp(share: f64) -> RGBColor {
    let share = if share.is_finite() {
        share.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let upper = RAMP
        .iter()
        .position(|&(at, _)| at >= share)
        .unwrap_or(RAMP.len() - 1)
        .max(1);
    let (a_at, a) = RAMP[upper - 1];
    let (b_at, b) = RAMP[upper];
    let t = (share - a_at) / (b_at - a_at);
    let mix = |i: usize| (f64::from(a[i]) + (f64::from(b[i]) - f64::from(a[i])) * t).round() as u8;
    RGBColor(mix(0), mix(1), mix(2))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::curves::tests::assert_drawn_png;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("product_{i:03}")).collect()
    }

    /// Mostly-correct predictions with some confusion with the next class.
    fn counts(n: usize) -> Vec<Vec<u32>> {
        (0..n)
            .map(|t| {
                let mut row = vec![0u32; n];
                row[t] = 8 + (t % 5) as u32;
                row[(t + 1) % n] += (t % 3) as u32;
                row[(t * 7) % n] += 1;
                row
            })
            .collect()
    }

    #[test]
    fn small_matrix_png() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("confusion.png");
        let labels = vec!["milk".to_string(), "eggs".into(), "bread, white".into()];
        confusion_png(
            &path,
            &labels,
            &[vec![5, 1, 0], vec![2, 7, 1], vec![0, 0, 0]],
        )
        .unwrap();
        // 3 classes: 48 px cells.
        let img = assert_drawn_png(&path, 250..=700, 250..=700);
        // The class without samples is a row of the lightest colour, and 5 of 6 milk
        // photos right is a dark cell.
        assert!(img.pixels().any(|p| p.0 == RAMP[0].1));
        let dark = ramp(5.0 / 6.0);
        assert!(img.pixels().any(|p| p.0 == [dark.0, dark.1, dark.2]));
    }

    #[test]
    fn eighty_classes_scale_with_the_class_count() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("confusion80.png");
        confusion_png(&path, &names(80), &counts(80)).unwrap();
        // 80 x 14 px cells plus margins for labels.
        assert_drawn_png(&path, 1120..=1600, 1120..=1600);
    }

    #[test]
    fn many_classes_stay_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("confusion1000.png");
        confusion_png(&path, &names(1000), &counts(1000)).unwrap();
        assert_drawn_png(&path, 4000..=4500, 4000..=4500);
    }

    #[test]
    fn rejects_a_matrix_that_does_not_match_the_labels() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.png");
        let err = confusion_png(&path, &names(2), &[vec![1, 2]])
            .unwrap_err()
            .to_string();
        assert!(err.contains("bad.png") && err.contains("2x2"), "{err}");
        assert!(confusion_png(&path, &[], &[]).is_err());
        assert!(!path.exists());
    }

    #[test]
    fn ramp_ends_and_middle() {
        assert_eq!(ramp(0.0), RGBColor(247, 251, 255));
        assert_eq!(ramp(1.0), RGBColor(8, 48, 107));
        assert_eq!(ramp(0.5), RGBColor(107, 174, 214));
        assert_eq!(ramp(f64::NAN), ramp(0.0));
    }

    #[test]
    fn long_labels_are_shortened() {
        register_font().unwrap();
        let font = (FONT, 11.0).into_font();
        let long = "extra virgin olive oil, cold pressed, 750 ml glass bottle, organic";
        let short = shorten(&font, long);
        assert!(short.ends_with('…') && short.len() < long.len(), "{short}");
        assert!(font.box_size(&short).unwrap().0 <= MAX_LABEL_PX);
        assert_eq!(shorten(&font, "milk"), "milk");
    }
}
