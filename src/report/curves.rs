//! The training-curves chart: accuracy and cross-entropy per step, train and validation,
//! as one PNG a person can glance at without starting TensorBoard.
//!
//! Also owns the drawing plumbing the report charts share: the embedded font and
//! "draw into memory, encode PNG, write atomically".

use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::error::{Error, Result};
use crate::fsx;

/// The font every chart uses, embedded so rendering never depends on system fonts.
const FONT_BYTES: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

/// The family name charts ask for; [`register_font`] binds it to the embedded font.
pub(crate) const FONT: &str = "sans-serif";

const WIDTH: u32 = 1000;
const HEIGHT: u32 = 900;
const TRAIN_COLOR: RGBColor = RGBColor(31, 119, 180);
const VALIDATION_COLOR: RGBColor = RGBColor(255, 127, 14);

/// One evaluation point of a training run.
#[derive(Debug, Clone, PartialEq)]
pub struct CurvePoint {
    pub step: u64,
    /// Accuracy on the training batch, as a fraction in 0..=1.
    pub train_accuracy: f32,
    pub train_cross_entropy: f32,
    /// Accuracy on the validation set, when it was measured at this step.
    pub validation_accuracy: Option<f32>,
    pub validation_cross_entropy: Option<f32>,
}

/// Draws accuracy (top) and cross-entropy (bottom) against the training step, train and
/// validation lines in each, and writes the PNG to `path` atomically.
///
/// Non-finite values (a diverged loss) are left out of the lines rather than breaking
/// the axes. Errors when `points` is empty: there is nothing to draw.
pub fn training_curves_png(path: &Path, points: &[CurvePoint]) -> Result<()> {
    let (Some(first), Some(last)) = (
        points.iter().map(|p| p.step).min(),
        points.iter().map(|p| p.step).max(),
    ) else {
        return Err(Error::invalid_input(
            path,
            "no training steps to plot; train for at least one step",
        ));
    };
    // A single point still needs a non-empty x range.
    let steps = first as f64..(last.max(first + 1)) as f64;

    let train_accuracy = series(points, |p| Some(p.train_accuracy));
    let validation_accuracy = series(points, |p| p.validation_accuracy);
    let train_loss = series(points, |p| Some(p.train_cross_entropy));
    let validation_loss = series(points, |p| p.validation_cross_entropy);

    let loss_max = train_loss
        .iter()
        .chain(&validation_loss)
        .map(|&(_, v)| v)
        .fold(0.0f64, f64::max);
    let loss_top = if loss_max > 0.0 { loss_max * 1.05 } else { 1.0 };

    render_png(path, (WIDTH, HEIGHT), |root| {
        let (top, bottom) = root.split_vertically(HEIGHT / 2);
        draw_panel(
            &top,
            Panel {
                title: "Accuracy",
                y_desc: "accuracy",
                steps: steps.clone(),
                y_range: 0.0..1.0,
                percent: true,
                legend: SeriesLabelPosition::LowerRight,
                train: &train_accuracy,
                validation: &validation_accuracy,
            },
        )?;
        draw_panel(
            &bottom,
            Panel {
                title: "Cross-entropy",
                y_desc: "cross-entropy",
                steps,
                y_range: 0.0..loss_top,
                percent: false,
                legend: SeriesLabelPosition::UpperRight,
                train: &train_loss,
                validation: &validation_loss,
            },
        )
    })
}

/// The finite `(step, value)` pairs `value` picks from `points`.
fn series(points: &[CurvePoint], value: impl Fn(&CurvePoint) -> Option<f32>) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64)> = points
        .iter()
        .filter_map(|p| value(p).map(|v| (p.step as f64, f64::from(v))))
        .filter(|(_, v)| v.is_finite())
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

struct Panel<'a> {
    title: &'a str,
    y_desc: &'a str,
    steps: std::ops::Range<f64>,
    y_range: std::ops::Range<f64>,
    percent: bool,
    legend: SeriesLabelPosition,
    train: &'a [(f64, f64)],
    validation: &'a [(f64, f64)],
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

fn draw_panel(area: &Area, panel: Panel) -> std::result::Result<(), String> {
    let mut chart = ChartBuilder::on(area)
        .caption(panel.title, (FONT, 22))
        .margin(12)
        // Room for the last x tick label, which is centred on the right edge.
        .margin_right(32)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(panel.steps, panel.y_range)
        .map_err(|e| e.to_string())?;
    let percent = panel.percent;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc(panel.y_desc)
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 16))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| {
            if percent {
                format!("{:.0}%", y * 100.0)
            } else {
                format!("{y:.2}")
            }
        })
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(|e| e.to_string())?;

    for (name, color, data) in [
        ("train", TRAIN_COLOR, panel.train),
        ("validation", VALIDATION_COLOR, panel.validation),
    ] {
        if data.is_empty() {
            continue;
        }
        chart
            .draw_series(LineSeries::new(data.iter().copied(), color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 24, y)], color.stroke_width(2)));
        // A lone point draws no line; a dot keeps it visible.
        if data.len() == 1 {
            chart
                .draw_series(data.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(|e| e.to_string())?;
        }
    }
    chart
        .configure_series_labels()
        .position(panel.legend)
        .label_font((FONT, 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Binds [`FONT`] to the embedded DejaVu Sans, once per process.
pub(crate) fn register_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(
            "the chart font embedded in graft cannot be loaded; this build is broken, please report it".into(),
        ))
    }
}

/// Draws a `width` x `height` picture on a white in-memory canvas with `draw`, encodes it
/// as PNG and writes it to `path` atomically. Drawing errors are reported against `path`.
pub(crate) fn render_png(
    path: &Path,
    (width, height): (u32, u32),
    draw: impl FnOnce(&Area) -> std::result::Result<(), String>,
) -> Result<()> {
    register_font()?;
    let cannot_draw =
        |reason: String| Error::invalid_input(path, format!("cannot draw the chart: {reason}"));
    let mut pixels = vec![255u8; width as usize * height as usize * 3];
    {
        let backend = BitMapBackend::with_buffer_and_format(&mut pixels, (width, height))
            .map_err(|e| cannot_draw(e.to_string()))?;
        let root = backend.into_drawing_area();
        root.fill(&WHITE).map_err(|e| cannot_draw(e.to_string()))?;
        draw(&root).map_err(cannot_draw)?;
        root.present().map_err(|e| cannot_draw(e.to_string()))?;
    }
    let mut png = Vec::new();
    ::image::ImageEncoder::write_image(
        ::image::codecs::png::PngEncoder::new(&mut png),
        &pixels,
        width,
        height,
        ::image::ExtendedColorType::Rgb8,
    )
    .map_err(|e| Error::invalid_input(path, format!("cannot encode the PNG: {e}")))?;
    // Marked as graft's, so a later run may replace it (see crate::output).
    fsx::write_atomic(path, &crate::output::mark_png(&png))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Decodes the PNG at `path` and checks it is `width` x `height` and not one flat colour.
    pub(crate) fn assert_drawn_png(
        path: &Path,
        width: std::ops::RangeInclusive<u32>,
        height: std::ops::RangeInclusive<u32>,
    ) -> ::image::RgbImage {
        let img = ::image::open(path)
            .unwrap_or_else(|e| panic!("{} does not decode: {e}", path.display()))
            .to_rgb8();
        assert!(
            width.contains(&img.width()),
            "width {} not in {width:?}",
            img.width()
        );
        assert!(
            height.contains(&img.height()),
            "height {} not in {height:?}",
            img.height()
        );
        let n = img.as_raw().len() as f64;
        let mean = img.as_raw().iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let variance = img
            .as_raw()
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n;
        assert!(variance > 0.0, "{} is blank", path.display());
        img
    }

    fn example_points() -> Vec<CurvePoint> {
        (0..=40)
            .map(|i| {
                let t = i as f32 / 40.0;
                CurvePoint {
                    step: i * 100,
                    train_accuracy: 0.3 + 0.65 * (1.0 - (-5.0 * t).exp()),
                    train_cross_entropy: 2.2 * (-3.0 * t).exp() + 0.1,
                    validation_accuracy: (i % 4 == 0)
                        .then(|| 0.25 + 0.6 * (1.0 - (-4.0 * t).exp())),
                    validation_cross_entropy: (i % 4 == 0).then(|| 2.3 * (-2.5 * t).exp() + 0.25),
                }
            })
            .collect()
    }

    #[test]
    fn writes_a_decodable_non_blank_png() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("curves.png");
        training_curves_png(&path, &example_points()).unwrap();
        let img = assert_drawn_png(&path, WIDTH..=WIDTH, HEIGHT..=HEIGHT);
        // Both line colours made it onto the canvas.
        let has = |c: RGBColor| img.pixels().any(|p| p.0 == [c.0, c.1, c.2]);
        assert!(has(TRAIN_COLOR) && has(VALIDATION_COLOR));
        // No temporary file is left beside it.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn single_point_and_diverged_loss_still_draw() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("one.png");
        let point = CurvePoint {
            step: 0,
            train_accuracy: 0.5,
            train_cross_entropy: f32::NAN,
            validation_accuracy: None,
            validation_cross_entropy: Some(f32::INFINITY),
        };
        training_curves_png(&path, &[point]).unwrap();
        assert_drawn_png(&path, WIDTH..=WIDTH, HEIGHT..=HEIGHT);
    }

    #[test]
    fn no_points_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.png");
        let err = training_curves_png(&path, &[]).unwrap_err().to_string();
        assert!(
            err.contains("empty.png") && err.contains("no training steps"),
            "{err}"
        );
        assert!(!path.exists());
    }
}
