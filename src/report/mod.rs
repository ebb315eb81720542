//! Reports people look at: charts and tables rendered from results.

pub mod chart;
pub mod confusion;
pub mod curves;
pub mod html;
pub mod tensorboard;

use std::fmt::Write as _;

use crate::dataset::stats::ClassStats;

pub use chart::class_counts_chart;

/// Widest a text table's label column is padded to: longer labels overflow it (std's
/// format width is a u16, so padding to a 1 MB label panics).
pub const MAX_LABEL_COLUMN: usize = 60;

/// The class distribution as a text table, largest class first:
///
/// ```text
/// class          images   share
/// Granny-Smith       59   49.2%
/// Lime               61   50.8%
/// total             120  100.0%
/// ```
pub fn class_table(stats: &ClassStats) -> String {
    let shown = |label: &str| {
        if label.is_empty() {
            "(empty label)".to_string()
        } else {
            label.to_string()
        }
    };
    let width = stats
        .classes
        .iter()
        .map(|c| shown(&c.label).chars().count())
        .chain(["class".len(), "total".len()])
        .max()
        .unwrap_or(5)
        // Labels come from user files: a label longer than this overflows its column
        // rather than padding every row to its length (and std's format width, a u16,
        // panics on a label of 64 KiB).
        .min(MAX_LABEL_COLUMN);
    let total = stats.total();
    let count_width = total.to_string().len().max("images".len());
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<width$}  {:>count_width$}  {:>6}",
        "class", "images", "share"
    );
    for class in &stats.classes {
        let _ = writeln!(
            out,
            "{:<width$}  {:>count_width$}  {:>5.1}%",
            shown(&class.label),
            class.count,
            100.0 * stats.share(class.count)
        );
    }
    let share = if total == 0 { 0.0 } else { 100.0 };
    let _ = writeln!(
        out,
        "{:<width$}  {total:>count_width$}  {share:>5.1}%",
        "total"
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_lists_largest_first_with_shares_and_total() {
        let stats = ClassStats::new(
            "x",
            [("lime".to_string(), 1), ("Granny-Smith".to_string(), 3)],
        );
        let table = class_table(&stats);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "class         images   share");
        assert_eq!(lines[1], "Granny-Smith       3   75.0%");
        assert_eq!(lines[2], "lime               1   25.0%");
        assert_eq!(lines[3], "total              4  100.0%");
    }

    #[test]
    fn a_label_of_70000_characters_overflows_its_column_without_panicking() {
        let long = "y".repeat(70_000);
        let stats = ClassStats::new("x", [(long.clone(), 2), ("lime".to_string(), 1)]);
        let table = class_table(&stats);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[1], format!("{long}       2   66.7%"));
        assert_eq!(lines[2].find('1'), Some(MAX_LABEL_COLUMN + 7));
    }

    #[test]
    fn chart_is_a_png_of_a_sensible_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("counts.png");
        let stats = ClassStats::new(
            "x",
            (0..30).map(|i| (format!("class number {i}"), 5 + i as u64 * 3)),
        );
        class_counts_chart(&stats, &path).unwrap();
        let img = ::image::open(&path).unwrap();
        assert!(img.width() >= 640 && img.height() > 460);
    }
}

/// A label cut to at most `max_chars` characters (an ellipsis marks the cut) for axes
/// and tables; an empty label is shown as such rather than as nothing.
pub(crate) fn shorten(label: &str, max_chars: usize) -> String {
    let shown = if label.is_empty() {
        "(empty label)"
    } else {
        label
    };
    if shown.chars().count() <= max_chars {
        shown.to_string()
    } else {
        let cut: String = shown.chars().take(max_chars.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}
