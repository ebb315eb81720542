//! `report.html`: one self-contained page per training or evaluation run, for the people
//! who decide whether a model is good enough — a category manager, not only the engineer.
//!
//! Everything is inline: CSS, a few lines of JavaScript (table sorting, heatmap zoom),
//! charts as SVG drawn here, thumbnails as base64 JPEG data URIs. The page opens from
//! a mail attachment or a shared drive with no network and no other file beside it.
//!
//! Sections, top to bottom: headline numbers, run summary, class distribution, training
//! curves, confusion heatmap with the most confused pairs, per-class precision / recall /
//! F1 (sortable), and the misclassified photos, most confidently wrong first.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::fsx;
use crate::head::calibrate::{CalibrationReport, ReliabilityBin};
use crate::image::decode::{decode_rgb8, DecodeLimits};
use crate::metrics::Evaluation;
use crate::openset::Rejection;
use crate::report::curves::CurvePoint;

/// Misclassified photos shown at most; each thumbnail costs a few kilobytes, and the
/// worst mistakes come first, so the rest add little.
pub const GALLERY_LIMIT: usize = 60;
/// Longest side of a gallery thumbnail, in pixels.
pub const THUMBNAIL_PX: u32 = 112;
const THUMBNAIL_QUALITY: u8 = 80;
/// Rows of the "most confused pairs" list beside the heatmap.
const CONFUSED_PAIRS: usize = 15;
/// Axis labels longer than this are cut with an ellipsis (the full name is in the tooltip).
const LABEL_CHARS: usize = 30;

const TRAIN_COLOR: &str = "#1f77b4";
const VALIDATION_COLOR: &str = "#ff7f0e";

/// What a report shows. Every field but `title` may be empty; its section is then left out.
pub struct ReportInput<'a> {
    /// Page heading, e.g. "Training report — grocery-model".
    pub title: String,
    /// One line under the heading saying what the numbers were measured on.
    pub subtitle: String,
    /// The run summary as (name, value) rows: backbone, split sizes, accuracies, timings.
    pub summary: Vec<(String, String)>,
    /// The settings of the run as command-line flags, e.g. `--learning-rate 0.001`.
    pub flags: Vec<String>,
    /// Images per class of the data the run used, in any order (drawn largest first).
    pub class_counts: Vec<(String, u64)>,
    /// Heading of the class distribution section, e.g. "Images per class in train/".
    pub class_counts_caption: String,
    /// Classes with fewer images than this are drawn in red as too small to learn from
    /// (0: none; an evaluation set is small by design).
    pub small_class: u64,
    /// Training curve points; empty for an evaluation.
    pub curve: &'a [CurvePoint],
    /// A ready-made training-curves PNG shown when `curve` is empty (an evaluation shows
    /// the one saved in the model bundle).
    pub curve_png: Option<Vec<u8>>,
    pub evaluation: Option<&'a Evaluation>,
    /// Image file of each evaluated sample, index-aligned with the evaluation's samples;
    /// the gallery's thumbnails are made from them.
    pub image_paths: &'a [PathBuf],
    /// The class tree's levels above the classes, top first, as (name, evaluation);
    /// shown side by side with the classes, each with its heatmap.
    pub levels: Vec<(String, &'a Evaluation)>,
    pub calibration: Option<&'a CalibrationReport>,
    pub rejection: Option<&'a Rejection>,
}

/// Renders the report and writes it to `path` atomically.
pub fn write_report(path: &Path, input: &ReportInput) -> Result<()> {
    let html = render(input);
    fsx::write_atomic(path, html.as_bytes()).map_err(|e| match e {
        Error::Io { path, source } => Error::invalid_input(
            &path,
            format!("cannot write the HTML report: {source}; check the folder is writable or pick another path"),
        ),
        other => other,
    })
}

/// The whole page as a string. Photos that cannot be read get a placeholder with the
/// reason instead of failing the report.
pub fn render(input: &ReportInput) -> String {
    let mut body = String::new();
    body += &header(input);
    if let Some(e) = input.evaluation {
        body += &headline(e);
    }
    if !input.summary.is_empty() || !input.flags.is_empty() {
        body += &summary_section(&input.summary, &input.flags);
    }
    if !input.class_counts.is_empty() {
        body += &class_counts_section(
            &input.class_counts_caption,
            &input.class_counts,
            input.small_class,
        );
    }
    if !input.curve.is_empty() {
        body += &curves_section(input.curve);
    } else if let Some(png) = &input.curve_png {
        body += &section(
            "curves",
            "Training curves",
            "Saved with the model when it was trained.",
            &format!(
                r#"<img class="curves-png" alt="training curves" src="data:image/png;base64,{}">"#,
                base64(png)
            ),
        );
    }
    if let Some(e) = input.evaluation {
        if !input.levels.is_empty() {
            body += &levels_section(e, &input.levels);
        }
        body += &confusion_section(e);
        body += &per_class_section(e);
        if let Some(c) = input.calibration {
            body += &calibration_section(c);
        }
        if let Some(r) = input.rejection {
            body += &rejection_section(r);
        }
        body += &gallery_section(e, input.image_paths);
    }
    page(&input.title, &body)
}

/// The last component of `path` for a heading (`model`, not `/home/me/work/model`), or
/// the whole path when it has none (`.`, `/`).
pub fn short_name(path: &Path) -> String {
    match path.file_name() {
        Some(name) => name.to_string_lossy().into_owned(),
        None => path.display().to_string(),
    }
}

/// Escapes text for HTML element content and quoted attribute values alike.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out += "&amp;",
            '<' => out += "&lt;",
            '>' => out += "&gt;",
            '"' => out += "&quot;",
            '\'' => out += "&#39;",
            _ => out.push(c),
        }
    }
    out
}

fn page(title: &str, body: &str) -> String {
    format!(
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
{generator}
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<script>window.addEventListener('error',function(e){{document.documentElement.setAttribute('data-js-error',String(e.message))}});</script>
<style>{STYLE}</style>
</head>
<body>
<main>
{body}
<footer>Written by graft {version}. This file is self-contained: it needs no network and no other file.</footer>
</main>
<script>{SCRIPT}</script>
</body>
</html>
"#,
        title = escape(title),
        version = env!("CARGO_PKG_VERSION"),
        generator = crate::output::html_generator_tag(),
    )
}

const STYLE: &str = r#"
:root{--ink:#1d2433;--muted:#5b6576;--line:#e3e7ee;--bg:#f5f7fa;--card:#fff;--blue:#1f77b4;--red:#c62828;--green:#2e7d32}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif}
main{max-width:1280px;margin:0 auto;padding:28px 24px 40px}
h1{font-size:26px;margin:0 0 4px}
h2{font-size:19px;margin:0 0 4px}
.sub,.note{color:var(--muted);margin:0 0 14px}
section{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:20px 22px;margin:18px 0;box-shadow:0 1px 2px rgba(20,30,50,.04)}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(200px,1fr));gap:14px;margin:18px 0}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:14px 18px}
.card .v{font-size:30px;font-weight:650;letter-spacing:-.5px}
.card .k{color:var(--muted);font-size:13px;text-transform:uppercase;letter-spacing:.04em}
.card .d{color:var(--muted);font-size:13px}
.good{color:var(--green)}.fair{color:#b26a00}.poor{color:var(--red)}
table{border-collapse:collapse;width:100%;font-size:14px}
th,td{padding:5px 10px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
th{background:#f0f3f8;font-weight:600;white-space:nowrap}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.kv{display:grid;grid-template-columns:repeat(auto-fit,minmax(360px,1fr));gap:0 28px}
.kv table td:first-child{color:var(--muted);width:42%}
.kv td{word-break:break-word}
table.sortable th{cursor:pointer;user-select:none}
table.sortable th::after{content:" \2195";color:#aab}
table.sortable th[aria-sort=ascending]::after{content:" \25B2";color:var(--ink)}
table.sortable th[aria-sort=descending]::after{content:" \25BC";color:var(--ink)}
.scroll{max-height:640px;overflow:auto;border:1px solid var(--line);border-radius:6px}
.scroll thead th{position:sticky;top:0;z-index:1}
td.bar{background-image:linear-gradient(90deg,#d6e6f5 var(--w),transparent var(--w));background-repeat:no-repeat}
td.bar.low{background-image:linear-gradient(90deg,#f8d0cc var(--w),transparent var(--w))}
.chart{width:100%;height:auto;display:block}
.bars{max-width:100%;height:auto;display:block}
.flags{margin:14px 0 0;line-height:2}
.flags .k{color:var(--muted);margin-right:8px}
.flags code{white-space:nowrap;background:#f0f3f8;border:1px solid var(--line);border-radius:4px;padding:1px 6px;margin:0 6px 0 0;font-size:12.5px}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:18px}
svg text{font-family:system-ui,"DejaVu Sans",sans-serif;fill:var(--ink)}
svg .axis{stroke:#9aa3b2;stroke-width:1}
svg .grid{stroke:#eceff4;stroke-width:1}
svg .tick{font-size:11px;fill:var(--muted)}
.heat{display:flex;flex-wrap:wrap;gap:20px;align-items:flex-start}
.heat-view{flex:0 1 auto;min-width:0;max-width:100%}
.heat-box{overflow:auto;max-height:1400px;border:1px solid var(--line);border-radius:6px;background:#fff}
.heat-side{flex:1 1 340px}
.heat-side h3{font-size:16px;margin:0 0 8px}
.zoom{margin:0 0 8px;display:flex;gap:6px;align-items:center;color:var(--muted);font-size:13px}
.zoom button{font:inherit;border:1px solid var(--line);background:#fff;border-radius:5px;padding:2px 10px;cursor:pointer}
#confusion-heatmap rect.c:hover{stroke:#111;stroke-width:1.5}
.legend{display:inline-block;width:12px;height:12px;border-radius:2px;vertical-align:-1px;margin:0 4px 0 10px}
#gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:12px}
figure{margin:0;border:1px solid var(--line);border-radius:8px;padding:8px;background:#fff;font-size:12.5px}
figure img,figure .missing{display:block;margin:0 auto 6px;width:112px;height:112px;object-fit:contain;border-radius:4px;background:#f0f3f8}
figure .missing{display:flex;align-items:center;justify-content:center;text-align:center;color:var(--muted);font-size:11px;padding:4px}
figcaption b{font-weight:600}
.pred{color:var(--red)}
.path{color:var(--muted);font-size:11px;word-break:break-all}
.curves-png{max-width:min(100%,860px);height:auto}
footer{color:var(--muted);font-size:12px;text-align:center;margin-top:24px}
"#;

/// Table sorting (click a header; numbers sort by `data-v`) and heatmap zoom, then a
/// marker that the script ran to the end (checked by the browser test).
const SCRIPT: &str = r#"
document.querySelectorAll('table.sortable').forEach(function(table){
  var heads=table.tHead.rows[0].cells;
  Array.prototype.forEach.call(heads,function(th,col){
    th.addEventListener('click',function(){
      var asc=th.getAttribute('aria-sort')!=='ascending';
      Array.prototype.forEach.call(heads,function(h){h.removeAttribute('aria-sort')});
      th.setAttribute('aria-sort',asc?'ascending':'descending');
      var body=table.tBodies[0],rows=Array.prototype.slice.call(body.rows);
      var key=function(r){var c=r.cells[col];return c.hasAttribute('data-v')?parseFloat(c.getAttribute('data-v')):c.textContent.toLowerCase()};
      rows.sort(function(a,b){var x=key(a),y=key(b);var o=typeof x==='number'?x-y:String(x).localeCompare(String(y));return asc?o:-o});
      rows.forEach(function(r){body.appendChild(r)});
    });
  });
});
(function(){
  var svg=document.getElementById('confusion-heatmap');if(!svg)return;
  var w0=+svg.getAttribute('width'),h0=+svg.getAttribute('height'),z=1,label=document.getElementById('zoom-level');
  var set=function(v){z=Math.max(0.2,Math.min(6,v));svg.setAttribute('width',Math.round(w0*z));svg.setAttribute('height',Math.round(h0*z));if(label)label.textContent=Math.round(z*100)+'%'};
  document.querySelectorAll('[data-zoom]').forEach(function(b){b.addEventListener('click',function(){
    var a=b.getAttribute('data-zoom');set(a==='fit'?(svg.parentNode.clientWidth-4)/w0:a==='in'?z*1.25:a==='out'?z/1.25:1)})});
})();
document.documentElement.setAttribute('data-report-ready','yes');
"#;

fn section(id: &str, title: &str, note: &str, content: &str) -> String {
    let note = if note.is_empty() {
        String::new()
    } else {
        format!(r#"<p class="note">{}</p>"#, escape(note))
    };
    format!(
        "<section id=\"{id}\">\n<h2>{}</h2>\n{note}\n{content}\n</section>\n",
        escape(title)
    )
}

fn header(input: &ReportInput) -> String {
    let sub = if input.subtitle.is_empty() {
        String::new()
    } else {
        format!(r#"<p class="sub">{}</p>"#, escape(&input.subtitle))
    };
    format!(
        "<header>\n<h1>{}</h1>\n{sub}\n</header>\n",
        escape(&input.title)
    )
}

fn percent(fraction: f64) -> String {
    format!("{:.1}%", fraction * 100.0)
}

/// A colour class for an accuracy-like score, so the eye finds the weak spots.
fn grade(score: f64) -> &'static str {
    if score >= 0.9 {
        "good"
    } else if score >= 0.7 {
        "fair"
    } else {
        "poor"
    }
}

fn headline(e: &Evaluation) -> String {
    let classes_present = e.per_class.iter().filter(|c| c.support > 0).count();
    let card = |key: &str, value: String, class: &str, detail: String| {
        format!(
            r#"<div class="card"><div class="k">{}</div><div class="v {class}">{}</div><div class="d">{}</div></div>"#,
            escape(key),
            escape(&value),
            escape(&detail)
        )
    };
    let cards = [
        card(
            "Top-1 accuracy",
            percent(e.top1_accuracy),
            grade(e.top1_accuracy),
            format!("{} of {} photos labelled right", e.correct, e.samples),
        ),
        card(
            &format!("Top-{} accuracy", e.top_k),
            percent(e.top5_accuracy),
            grade(e.top5_accuracy),
            format!("right label among the first {} guesses", e.top_k),
        ),
        card(
            "Macro F1",
            format!("{:.3}", e.macro_f1),
            grade(e.macro_f1),
            format!(
                "mean over classes; precision {:.3}, recall {:.3}",
                e.macro_precision, e.macro_recall
            ),
        ),
        card(
            "Photos evaluated",
            e.samples.to_string(),
            "",
            format!(
                "{classes_present} of {} classes present; {} mistakes",
                e.labels.len(),
                e.misclassified.len()
            ),
        ),
    ];
    format!(
        "<div class=\"cards\" id=\"headline\">\n{}\n</div>\n",
        cards.join("\n")
    )
}

fn summary_section(rows: &[(String, String)], flags: &[String]) -> String {
    // Two balanced columns read better than one long list.
    let half = rows.len().div_ceil(2);
    let table = |rows: &[(String, String)]| {
        let mut t = String::from("<table><tbody>");
        for (name, value) in rows {
            let _ = write!(
                t,
                "<tr><td>{}</td><td>{}</td></tr>",
                escape(name),
                escape(value)
            );
        }
        t + "</tbody></table>"
    };
    let mut content = format!(
        r#"<div class="kv">{}{}</div>"#,
        table(&rows[..half]),
        table(&rows[half..])
    );
    if !flags.is_empty() {
        content += r#"<p class="flags"><span class="k">Flags</span>"#;
        for flag in flags {
            let _ = write!(content, "<code>{}</code> ", escape(flag));
        }
        content += "</p>";
    }
    section("summary", "Run summary", "", &content)
}

/// Label shortened for an axis; the full one goes in a tooltip.
fn short(label: &str) -> String {
    super::shorten(label, LABEL_CHARS)
}

/// Round numbers for axis ticks: about `target` steps of 1, 2, 2.5 or 5 times a power of ten
/// covering `lo..=hi`.
fn nice_ticks(lo: f64, hi: f64, target: usize) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite()) || hi <= lo || target == 0 {
        return vec![lo];
    }
    let raw = (hi - lo) / target as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step + 1e-9).floor() as i64;
    (first..=last).map(|i| i as f64 * step).collect()
}

fn tick_text(value: f64) -> String {
    if value.fract().abs() < 1e-9 {
        format!("{value:.0}")
    } else if (value * 10.0).fract().abs() < 1e-9 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

fn class_counts_section(caption: &str, counts: &[(String, u64)], small: u64) -> String {
    let mut sorted: Vec<&(String, u64)> = counts.iter().collect();
    sorted.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let total: u64 = sorted.iter().map(|c| c.1).sum();
    let largest = sorted.first().map(|c| c.1).unwrap_or(0);
    let smallest = sorted.last().map(|c| c.1).unwrap_or(0);
    let below = sorted.iter().filter(|c| c.1 < small).count();

    let n = sorted.len();
    let slot = if n <= 20 {
        (600.0 / n.max(1) as f64).clamp(28.0, 60.0)
    } else {
        (1180.0 / n as f64).clamp(6.0, 16.0)
    };
    let font = (slot * 0.75).clamp(7.0, 12.0);
    let longest = sorted
        .iter()
        .map(|c| short(&c.0).chars().count())
        .max()
        .unwrap_or(1);
    let label_h = longest as f64 * font * 0.6 + 12.0;
    let (left, top, plot_h) = (52.0, 14.0, 220.0);
    let width = left + n as f64 * slot + 16.0;
    let height = top + plot_h + label_h;
    let y_max = (largest as f64 * 1.08).max(1.0);
    let y = |v: f64| top + plot_h - v / y_max * plot_h;

    let mut svg = format!(
        r#"<svg id="class-counts" class="bars" viewBox="0 0 {width:.0} {height:.0}" width="{width:.0}" height="{height:.0}" role="img" aria-label="images per class">"#
    );
    for t in nice_ticks(0.0, y_max, 5) {
        let yy = y(t);
        let _ = write!(
            svg,
            r#"<line class="grid" x1="{left}" x2="{:.1}" y1="{yy:.1}" y2="{yy:.1}"/><text class="tick" x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            width - 16.0,
            left - 6.0,
            yy + 4.0,
            tick_text(t),
        );
    }
    for (i, (label, count)) in sorted.iter().enumerate() {
        let x = left + i as f64 * slot;
        let fill = if *count < small { "#e07b6a" } else { "#4c72b0" };
        let _ = write!(
            svg,
            r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{fill}"><title>{}: {count} images</title></rect>"#,
            x + slot * 0.12,
            y(*count as f64),
            slot * 0.76,
            top + plot_h - y(*count as f64),
            escape(label)
        );
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" font-size="{font:.1}" text-anchor="end" transform="rotate(-90 {:.1} {:.1})" dy="0.32em">{}</text>"#,
            x + slot / 2.0,
            top + plot_h + 6.0,
            x + slot / 2.0,
            top + plot_h + 6.0,
            escape(&short(label))
        );
    }
    let _ = write!(
        svg,
        r#"<line class="axis" x1="{left}" x2="{:.1}" y1="{:.1}" y2="{:.1}"/><text class="tick" x="12" y="{:.1}" transform="rotate(-90 12 {:.1})" text-anchor="middle">images</text></svg>"#,
        width - 16.0,
        top + plot_h,
        top + plot_h,
        top + plot_h / 2.0,
        top + plot_h / 2.0
    );
    let ratio = if smallest == 0 {
        "an empty class".to_string()
    } else {
        format!("{:.1}×", largest as f64 / smallest as f64)
    };
    let mut note =
        format!("{total} images in {n} classes, largest first; largest/smallest class: {ratio}.");
    if below > 0 {
        let _ = write!(
            note,
            " {below} class(es) in red have fewer than {small} images: too few to learn or measure reliably."
        );
    }
    let caption = if caption.is_empty() {
        "Images per class"
    } else {
        caption
    };
    section("class-distribution", caption, &note, &svg)
}

struct Series<'a> {
    name: &'a str,
    color: &'a str,
    points: Vec<(f64, f64)>,
}

fn curve_series(
    points: &[CurvePoint],
    value: impl Fn(&CurvePoint) -> Option<f32>,
) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64)> = points
        .iter()
        .filter_map(|p| value(p).map(|v| (p.step as f64, f64::from(v))))
        .filter(|(_, v)| v.is_finite())
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// A line chart of `series` against the training step. `percent` shows the y axis as
/// percentages of a 0..1 range.
fn line_chart(
    id: &str,
    title: &str,
    series: &[Series],
    y_range: (f64, f64),
    percent: bool,
) -> String {
    let (width, height) = (560.0, 320.0);
    let (left, right, top, bottom) = (58.0, 18.0, 34.0, 42.0);
    let steps = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let x_lo = steps.clone().fold(f64::INFINITY, f64::min);
    let x_hi = steps.fold(f64::NEG_INFINITY, f64::max);
    let (x_lo, x_hi) = if x_lo.is_finite() {
        (x_lo, x_hi.max(x_lo + 1.0))
    } else {
        (0.0, 1.0)
    };
    let (y_lo, y_hi) = y_range;
    let pw = width - left - right;
    let ph = height - top - bottom;
    let x = |v: f64| left + (v - x_lo) / (x_hi - x_lo) * pw;
    let y = |v: f64| top + ph - (v - y_lo) / (y_hi - y_lo) * ph;

    let mut svg = format!(
        r#"<svg id="{id}" class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="{t}"><text x="{left}" y="20" font-size="15" font-weight="600">{t}</text>"#,
        t = escape(title)
    );
    for t in nice_ticks(y_lo, y_hi, 5) {
        let label = if percent {
            format!("{:.0}%", t * 100.0)
        } else {
            tick_text(t)
        };
        let _ = write!(
            svg,
            r#"<line class="grid" x1="{left}" x2="{:.1}" y1="{yy:.1}" y2="{yy:.1}"/><text class="tick" x="{:.1}" y="{:.1}" text-anchor="end">{label}</text>"#,
            width - right,
            left - 6.0,
            y(t) + 4.0,
            yy = y(t)
        );
    }
    for t in nice_ticks(x_lo, x_hi, 6) {
        let _ = write!(
            svg,
            r#"<line class="axis" x1="{xx:.1}" x2="{xx:.1}" y1="{:.1}" y2="{:.1}"/><text class="tick" x="{xx:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            top + ph,
            top + ph + 4.0,
            top + ph + 17.0,
            tick_text(t),
            xx = x(t)
        );
    }
    let _ = write!(
        svg,
        r#"<line class="axis" x1="{left}" x2="{:.1}" y1="{:.1}" y2="{:.1}"/><text class="tick" x="{:.1}" y="{:.1}" text-anchor="middle">step</text>"#,
        width - right,
        top + ph,
        top + ph,
        left + pw / 2.0,
        height - 6.0
    );
    for (i, s) in series.iter().enumerate() {
        if s.points.is_empty() {
            continue;
        }
        let mut path = String::new();
        for (j, &(px, py)) in s.points.iter().enumerate() {
            let py = py.clamp(y_lo, y_hi);
            let _ = write!(
                path,
                "{}{:.1},{:.1}",
                if j == 0 { "M" } else { " L" },
                x(px),
                y(py)
            );
        }
        let _ = write!(
            svg,
            r#"<path d="{path}" fill="none" stroke="{c}" stroke-width="2" stroke-linejoin="round"/>"#,
            c = s.color
        );
        if s.points.len() == 1 {
            let (px, py) = s.points[0];
            let _ = write!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"/>"#,
                x(px),
                y(py),
                s.color
            );
        }
        // Legend in the top-right corner, one entry per series.
        let lx = width - right - 170.0 + i as f64 * 88.0;
        let _ = write!(
            svg,
            r#"<line x1="{lx:.1}" x2="{:.1}" y1="16" y2="16" stroke="{c}" stroke-width="3"/><text x="{:.1}" y="20" font-size="12">{}</text>"#,
            lx + 18.0,
            lx + 22.0,
            escape(s.name),
            c = s.color
        );
    }
    svg + "</svg>"
}

fn curves_section(points: &[CurvePoint]) -> String {
    let series = |train: Vec<(f64, f64)>, validation: Vec<(f64, f64)>| {
        vec![
            Series {
                name: "train",
                color: TRAIN_COLOR,
                points: train,
            },
            Series {
                name: "validation",
                color: VALIDATION_COLOR,
                points: validation,
            },
        ]
    };
    let accuracy = series(
        curve_series(points, |p| Some(p.train_accuracy)),
        curve_series(points, |p| p.validation_accuracy),
    );
    let loss = series(
        curve_series(points, |p| Some(p.train_cross_entropy)),
        curve_series(points, |p| p.validation_cross_entropy),
    );
    let loss_max = loss
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0f64, f64::max);
    let loss_top = if loss_max > 0.0 { loss_max * 1.05 } else { 1.0 };
    let last = points.iter().max_by_key(|p| p.step);
    let mut note = String::from(
        "Train: the batch the step learned from. Validation: photos the head never trains on. \
         A validation line far below the train line means the head memorises instead of generalising.",
    );
    if let Some(p) = last {
        let _ = write!(
            note,
            " At step {}: train accuracy {}",
            p.step,
            percent(f64::from(p.train_accuracy))
        );
        if let Some(v) = p.validation_accuracy {
            let _ = write!(note, ", validation accuracy {}", percent(f64::from(v)));
        }
        note.push('.');
    }
    let content = format!(
        r#"<div class="charts">{}{}</div>"#,
        line_chart("accuracy-curve", "Accuracy", &accuracy, (0.0, 1.0), true),
        line_chart("loss-curve", "Cross-entropy", &loss, (0.0, loss_top), false)
    );
    section("curves", "Training curves", &note, &content)
}

/// Interpolates a colour ramp at `t` in 0..=1.
fn ramp(stops: &[[u8; 3]], t: f64) -> String {
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let scaled = t * (stops.len() - 1) as f64;
    let i = (scaled.floor() as usize).min(stops.len() - 2);
    let f = scaled - i as f64;
    let mix = |k: usize| {
        (f64::from(stops[i][k]) + (f64::from(stops[i + 1][k]) - f64::from(stops[i][k])) * f).round()
            as u8
    };
    format!("#{:02x}{:02x}{:02x}", mix(0), mix(1), mix(2))
}

/// Correct predictions (the diagonal) in blues, mistakes in reds, so confusions stand out.
const BLUES: [[u8; 3]; 5] = [
    [239, 246, 252],
    [198, 219, 239],
    [107, 174, 214],
    [33, 113, 181],
    [8, 48, 107],
];
const REDS: [[u8; 3]; 5] = [
    [254, 229, 217],
    [252, 187, 161],
    [251, 106, 74],
    [203, 24, 29],
    [103, 0, 13],
];

/// Classes with a photo in the evaluated set or predicted at least once, in label order.
/// The others would be blank rows and columns: a model of 81 classes evaluated on a
/// folder of 60 would spend a quarter of the heatmap on nothing.
fn classes_in_play(e: &Evaluation) -> Vec<usize> {
    (0..e.labels.len())
        .filter(|&c| {
            e.confusion[c].iter().any(|&n| n > 0) || e.confusion.iter().any(|row| row[c] > 0)
        })
        .collect()
}

/// Every level of the class tree side by side, then one heatmap per level above the
/// classes (the classes' own heatmap is the next section).
fn levels_section(fine: &Evaluation, levels: &[(String, &Evaluation)]) -> String {
    let all: Vec<(&str, &Evaluation)> = levels
        .iter()
        .map(|(n, e)| (n.as_str(), *e))
        .chain([("fine (classes)", fine)])
        .collect();
    let mut table = String::from(
        r#"<table id="levels-table"><thead><tr><th>level</th><th class="n">groups</th><th class="n">top-1</th><th class="n">top-5</th><th class="n">macro F1</th></tr></thead><tbody>"#,
    );
    for (name, e) in &all {
        let _ = write!(
            table,
            r#"<tr><td>{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{} <span class="note">(top-{})</span></td><td class="n">{:.3}</td></tr>"#,
            escape(name),
            e.labels.len(),
            percent(e.top1_accuracy),
            percent(e.top5_accuracy),
            e.top_k,
            e.macro_f1
        );
    }
    table += "</tbody></table>";
    for (i, (name, e)) in levels.iter().enumerate() {
        let shown = classes_in_play(e);
        let _ = write!(
            table,
            r#"<h3>{} ({} groups)</h3><div class="heat-box">{}</div>"#,
            escape(name),
            e.labels.len(),
            heatmap_svg(e, &shown, &format!("level-heatmap-{}", i + 1))
        );
    }
    section(
        "levels",
        "Accuracy at every level of the class tree",
        "A prediction counts at a level when its ancestor there is the true one (Granny-Smith taken for Pink-Lady is right at Fruit/Apple); top-5 at a level: the true group is among the five best distinct groups.",
        &table,
    )
}

/// An SVG chart with both axes 0..1: `bars` drawn as columns over `[lower, upper)`,
/// `lines` as polylines, and the diagonal when `diagonal`.
fn unit_chart(
    id: &str,
    title: &str,
    x_label: &str,
    y_label: &str,
    bars: &[(&str, &str, Vec<(f64, f64, f64)>)],
    lines: &[(&str, &str, Vec<(f64, f64)>)],
    diagonal: bool,
) -> String {
    let (width, height) = (520.0, 360.0);
    let (left, right, top, bottom) = (58.0, 18.0, 34.0, 46.0);
    let pw: f64 = width - left - right;
    let ph: f64 = height - top - bottom;
    let x = |v: f64| left + v.clamp(0.0, 1.0) * pw;
    let y = |v: f64| top + ph - v.clamp(0.0, 1.0) * ph;
    let mut svg = format!(
        r#"<svg id="{id}" class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="{t}"><text x="{left}" y="20" font-size="15" font-weight="600">{t}</text>"#,
        t = escape(title)
    );
    for i in 0..=5 {
        let t = i as f64 / 5.0;
        let _ = write!(
            svg,
            r#"<line class="grid" x1="{left}" x2="{:.1}" y1="{yy:.1}" y2="{yy:.1}"/><text class="tick" x="{:.1}" y="{:.1}" text-anchor="end">{:.0}%</text><text class="tick" x="{:.1}" y="{:.1}" text-anchor="middle">{:.0}%</text>"#,
            width - right,
            left - 6.0,
            y(t) + 4.0,
            t * 100.0,
            x(t),
            top + ph + 17.0,
            t * 100.0,
            yy = y(t)
        );
    }
    let _ = write!(
        svg,
        r#"<text class="tick" x="{:.1}" y="{:.1}" text-anchor="middle">{}</text><text class="tick" x="14" y="{:.1}" text-anchor="middle" transform="rotate(-90 14 {:.1})">{}</text>"#,
        left + pw / 2.0,
        height - 8.0,
        escape(x_label),
        top + ph / 2.0,
        top + ph / 2.0,
        escape(y_label)
    );
    if diagonal {
        let _ = write!(
            svg,
            r##"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#888" stroke-dasharray="4 3"/>"##,
            x(0.0),
            y(0.0),
            x(1.0),
            y(1.0)
        );
    }
    let series = bars.len().max(1) as f64;
    for (k, (name, color, columns)) in bars.iter().enumerate() {
        for &(lower, upper, value) in columns {
            let w = (x(upper) - x(lower)) / series;
            let _ = write!(
                svg,
                r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{color}" fill-opacity="0.75"><title>{}: {:.0}–{:.0}%: {}</title></rect>"#,
                x(lower) + k as f64 * w,
                y(value),
                (w - 1.0).max(0.5),
                (y(0.0) - y(value)).max(0.0),
                escape(name),
                lower * 100.0,
                upper * 100.0,
                percent(value)
            );
        }
    }
    let legend: Vec<(&str, &str)> = bars
        .iter()
        .map(|(n, c, _)| (*n, *c))
        .chain(lines.iter().map(|(n, c, _)| (*n, *c)))
        .collect();
    for (name, color, points) in lines {
        let mut path = String::new();
        for (j, &(px, py)) in points.iter().enumerate() {
            let _ = write!(
                path,
                "{}{:.1},{:.1}",
                if j == 0 { "M" } else { " L" },
                x(px),
                y(py)
            );
        }
        let _ = write!(
            svg,
            r#"<path d="{path}" fill="none" stroke="{color}" stroke-width="2"><title>{}</title></path>"#,
            escape(name)
        );
    }
    for (i, (name, color)) in legend.iter().enumerate() {
        let ly = top + 14.0 + i as f64 * 16.0;
        let _ = write!(
            svg,
            r#"<rect x="{:.1}" y="{:.1}" width="12" height="10" fill="{color}"/><text x="{:.1}" y="{:.1}" font-size="12">{}</text>"#,
            left + 10.0,
            ly - 9.0,
            left + 27.0,
            ly,
            escape(name)
        );
    }
    svg + "</svg>"
}

/// The reliability diagram before and after the temperature, with the expected
/// calibration errors.
fn calibration_section(c: &CalibrationReport) -> String {
    let columns = |bins: &[ReliabilityBin]| -> Vec<(f64, f64, f64)> {
        bins.iter()
            .filter(|b| b.count > 0)
            .map(|b| (b.lower, b.upper, b.accuracy))
            .collect()
    };
    let chart = unit_chart(
        "reliability-diagram",
        "Reliability: accuracy per confidence bin",
        "top score (confidence)",
        "accuracy",
        &[
            (
                "uncalibrated",
                "#ff7f0e",
                columns(&c.reliability_uncalibrated),
            ),
            (
                "calibrated",
                TRAIN_COLOR,
                columns(&c.reliability_calibrated),
            ),
        ],
        &[],
        true,
    );
    let mut rows = String::from(
        r#"<table id="calibration-table"><thead><tr><th>scores</th><th class="n">expected calibration error</th></tr></thead><tbody>"#,
    );
    let _ = write!(
        rows,
        r#"<tr><td>uncalibrated (T = 1)</td><td class="n">{:.4}</td></tr><tr><td>calibrated (T = {:.3})</td><td class="n">{:.4}</td></tr></tbody></table>"#,
        c.ece_uncalibrated, c.temperature, c.ece_calibrated
    );
    section(
        "calibration",
        "Calibration",
        "Bars at the dashed diagonal mean a score of 80% is right 80% of the time. The temperature was fitted on the training run's validation split; these photos were not used for it.",
        &format!(r#"<div class="heat">{chart}{rows}</div>"#),
    )
}

/// The risk-coverage curve and the table of thresholds.
fn rejection_section(r: &Rejection) -> String {
    let curve: Vec<(f64, f64)> = r
        .risk_coverage
        .iter()
        .map(|p| (p.coverage, p.risk))
        .collect();
    let chart = unit_chart(
        "risk-coverage",
        "Risk-coverage: mistakes among the answered",
        "coverage (share of photos answered, surest first)",
        "risk (share of answers wrong)",
        &[],
        &[("risk", "#d62728", curve)],
        false,
    );
    let mut table = String::from(
        r#"<table id="threshold-table"><thead><tr><th class="n">unknown below P</th><th class="n">coverage</th><th class="n">accuracy of answered</th></tr></thead><tbody>"#,
    );
    for t in r.at_chosen.iter().chain(&r.table) {
        let chosen = if r.at_chosen.as_ref() == Some(t) {
            " class=\"chosen\""
        } else {
            ""
        };
        let _ = write!(
            table,
            r#"<tr{chosen}><td class="n">{:.2}</td><td class="n">{}</td><td class="n">{}</td></tr>"#,
            t.threshold,
            percent(t.coverage),
            percent(t.answered_accuracy)
        );
    }
    table += "</tbody></table>";
    let note = match r.unknown_below {
        Some(p) => format!("Photos whose calibrated top score is below P are answered `unknown`; in force here: P = {p} (first row)."),
        None => "What answering `unknown` below a threshold P (graft's --unknown-below) would do on these photos.".to_string(),
    };
    section(
        "rejection",
        "Answering only when sure",
        &note,
        &format!(r#"<div class="heat">{chart}{table}</div>"#),
    )
}

/// The confusion heatmap of the classes `shown` as an SVG element with id `id`.
fn heatmap_svg(e: &Evaluation, shown: &[usize], id: &str) -> String {
    let n = shown.len();
    let row_totals: Vec<u64> = e
        .confusion
        .iter()
        .map(|r| r.iter().map(|&c| u64::from(c)).sum())
        .collect();
    let share = |t: usize, count: u32| {
        if row_totals[t] == 0 {
            0.0
        } else {
            f64::from(count) / row_totals[t] as f64
        }
    };
    let cell = (760.0 / n.max(1) as f64).clamp(11.0, 40.0);
    let font = (cell * 0.8).clamp(9.0, 13.0);
    let longest = shown
        .iter()
        .map(|&c| short(&e.labels[c]).chars().count())
        .max()
        .unwrap_or(1);
    let label_w = longest as f64 * font * 0.6 + 10.0;
    let (left, top) = (label_w + 24.0, label_w + 24.0);
    let matrix = n as f64 * cell;
    let width = (left + matrix + 12.0).ceil();
    let height = (top + matrix + 12.0).ceil();

    let mut svg = format!(
        r#"<svg id="{id}" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" aria-label="confusion matrix">"#
    );
    let _ = write!(
        svg,
        r##"<rect x="{left:.1}" y="{top:.1}" width="{matrix:.1}" height="{matrix:.1}" fill="#fff" stroke="#9aa3b2"/>"##
    );
    // Faint bands every other row and column help follow a line across 80 classes.
    for i in (1..n).step_by(2) {
        let o = i as f64 * cell;
        let _ = write!(
            svg,
            r##"<rect x="{left:.1}" y="{:.1}" width="{matrix:.1}" height="{cell:.1}" fill="#f4f6f9"/><rect x="{:.1}" y="{top:.1}" width="{cell:.1}" height="{matrix:.1}" fill="#f4f6f9" fill-opacity="0.6"/>"##,
            top + o,
            left + o
        );
    }
    // Every non-zero count is in a shown row and column, by the choice of `shown`.
    for (row_at, &t) in shown.iter().enumerate() {
        for (col_at, &p) in shown.iter().enumerate() {
            let count = e.confusion[t][p];
            if count == 0 {
                continue;
            }
            let s = share(t, count);
            // A single mistake in a large class must still be visible.
            let fill = if t == p {
                ramp(&BLUES, 0.15 + 0.85 * s)
            } else {
                ramp(&REDS, 0.25 + 0.75 * s)
            };
            let (cx, cy) = (left + col_at as f64 * cell, top + row_at as f64 * cell);
            let _ = write!(
                svg,
                r#"<rect class="c" x="{cx:.1}" y="{cy:.1}" width="{cell:.1}" height="{cell:.1}" fill="{fill}"><title>true {} → predicted {}: {count} ({})</title></rect>"#,
                escape(&e.labels[t]),
                escape(&e.labels[p]),
                percent(s)
            );
            if cell >= 22.0 {
                let ink = if s > 0.5 { "#fff" } else { "#1d2433" };
                let _ = write!(
                    svg,
                    r#"<text x="{:.1}" y="{:.1}" font-size="{:.0}" text-anchor="middle" dy="0.35em" style="fill:{ink};pointer-events:none">{count}</text>"#,
                    cx + cell / 2.0,
                    cy + cell / 2.0,
                    (cell * 0.36).clamp(10.0, 14.0)
                );
            }
        }
    }
    for (i, label) in shown.iter().map(|&c| &e.labels[c]).enumerate() {
        let mid = i as f64 * cell + cell / 2.0;
        let full = escape(label);
        let text = escape(&short(label));
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" font-size="{font:.1}" text-anchor="end" dy="0.32em"><title>{full}</title>{text}</text>"#,
            left - 5.0,
            top + mid
        );
        let (cx, cy) = (left + mid, top - 5.0);
        let _ = write!(
            svg,
            r#"<text x="{cx:.1}" y="{cy:.1}" font-size="{font:.1}" dy="0.32em" transform="rotate(-90 {cx:.1} {cy:.1})"><title>{full}</title>{text}</text>"#
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{:.1}" y="14" font-size="13" text-anchor="middle" font-weight="600">predicted class →</text><text x="14" y="{:.1}" font-size="13" text-anchor="middle" font-weight="600" transform="rotate(-90 14 {:.1})">← true class</text></svg>"#,
        left + matrix / 2.0,
        top + matrix / 2.0,
        top + matrix / 2.0
    );

    svg
}

fn confusion_section(e: &Evaluation) -> String {
    let shown = classes_in_play(e);
    let n = shown.len();
    let svg = heatmap_svg(e, &shown, "confusion-heatmap");
    let row_totals: Vec<u64> = e
        .confusion
        .iter()
        .map(|r| r.iter().map(|&c| u64::from(c)).sum())
        .collect();
    let share = |t: usize, count: u32| {
        if row_totals[t] == 0 {
            0.0
        } else {
            f64::from(count) / row_totals[t] as f64
        }
    };

    let pairs = e.top_confused_pairs(CONFUSED_PAIRS);
    let mut side = String::from(r#"<div class="heat-side"><h3>Most confused pairs</h3>"#);
    if pairs.is_empty() {
        side += r#"<p class="note">No mistakes: every photo got its true label.</p>"#;
    } else {
        side += r#"<table id="confused-pairs"><thead><tr><th>true class</th><th>predicted as</th><th class="n">photos</th></tr></thead><tbody>"#;
        for (t, p, count) in pairs {
            let _ = write!(
                side,
                r#"<tr><td>{}</td><td class="pred">{}</td><td class="n" title="{} of the true class">{count}</td></tr>"#,
                escape(&e.labels[t]),
                escape(&e.labels[p]),
                percent(share(t, count))
            );
        }
        side += "</tbody></table>";
    }
    side += "</div>";

    let content = format!(
        r##"<div class="heat"><div class="heat-view"><div class="zoom">zoom <button type="button" data-zoom="out">−</button><button type="button" data-zoom="in">+</button><button type="button" data-zoom="reset">100%</button><button type="button" data-zoom="fit">fit</button><span id="zoom-level">100%</span><span><span class="legend" style="background:#2171b5"></span>right<span class="legend" style="background:#fb6a4a"></span>mistake</span></div><div class="heat-box">{svg}</div></div>{side}</div>"##
    );
    let mut note = String::from(
        "Rows: the true class; columns: what the model said. Colour: share of the true class's photos (hover a cell for the count). \
         Classes are in label order, so products of one brand or family sit together and their mix-ups cluster near the diagonal.",
    );
    let hidden = e.labels.len() - n;
    if hidden > 0 {
        let _ = write!(
            note,
            " {hidden} of the model's {} classes have no photo here and were never predicted; they are left out.",
            e.labels.len()
        );
    }
    section("confusion", "Confusion matrix", &note, &content)
}

fn per_class_section(e: &Evaluation) -> String {
    // Worst first: the classes that need more or better photos lead the table.
    let mut order = classes_in_play(e);
    order.sort_by(|&a, &b| {
        let (ca, cb) = (&e.per_class[a], &e.per_class[b]);
        (cb.support > 0)
            .cmp(&(ca.support > 0))
            .then(ca.f1.total_cmp(&cb.f1))
            .then(ca.label.cmp(&cb.label))
    });
    let mut table = String::from(
        r#"<div class="scroll"><table id="per-class" class="sortable"><thead><tr><th>class</th><th class="n">photos</th><th class="n">precision</th><th class="n">recall</th><th class="n">F1</th><th>most often mistaken for</th></tr></thead><tbody>"#,
    );
    for &class in &order {
        let c = &e.per_class[class];
        let metric = |v: f64| {
            let low = if v < 0.7 { " low" } else { "" };
            format!(
                r#"<td class="n bar{low}" style="--w:{:.1}%" data-v="{v:.6}">{v:.3}</td>"#,
                v * 100.0
            )
        };
        let confused = e.confusion[class]
            .iter()
            .enumerate()
            .filter(|&(p, &count)| p != class && count > 0)
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(&a.0)))
            .map(|(p, &count)| format!("{} ({count})", e.labels[p]))
            .unwrap_or_else(|| "—".to_string());
        let _ = write!(
            table,
            r#"<tr><td>{}</td><td class="n" data-v="{}">{}</td>{}{}{}<td>{}</td></tr>"#,
            escape(&c.label),
            c.support,
            c.support,
            metric(c.precision),
            metric(c.recall),
            metric(c.f1),
            escape(&confused)
        );
    }
    table += "</tbody></table></div>";
    let mut note = String::from(
        "Precision: of the photos labelled as the class, the share that are. Recall: of the class's photos, the share found. \
         Worst F1 first; click a column heading to sort.",
    );
    let hidden = e.labels.len() - order.len();
    if hidden > 0 {
        let _ = write!(
            note,
            " {hidden} classes with no photo here that were never predicted are left out."
        );
    }
    section(
        "per-class-metrics",
        "Per-class precision, recall and F1",
        &note,
        &table,
    )
}

/// A thumbnail of the image at `path` as a `data:image/jpeg;base64,...` URI.
pub fn thumbnail_data_uri(path: &Path) -> Result<String> {
    let image = decode_rgb8(path, DecodeLimits::default())?;
    let (w, h) = image.dimensions();
    let scale = f64::from(THUMBNAIL_PX) / f64::from(w.max(h).max(1));
    let small = if scale < 1.0 {
        let tw = ((f64::from(w) * scale).round() as u32).max(1);
        let th = ((f64::from(h) * scale).round() as u32).max(1);
        ::image::imageops::thumbnail(&image, tw, th)
    } else {
        image
    };
    let mut jpeg = Vec::new();
    ::image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, THUMBNAIL_QUALITY)
        .encode_image(&small)
        .map_err(|e| Error::invalid_input(path, format!("cannot encode a thumbnail: {e}")))?;
    Ok(format!("data:image/jpeg;base64,{}", base64(&jpeg)))
}

fn gallery_section(e: &Evaluation, image_paths: &[PathBuf]) -> String {
    if e.misclassified.is_empty() {
        return section(
            "misclassified",
            "Misclassified photos",
            "",
            r#"<div id="gallery"><p class="note">None: every photo got its true label.</p></div>"#,
        );
    }
    let shown = &e.misclassified[..e.misclassified.len().min(GALLERY_LIMIT)];
    let figures: Vec<String> = shown
        .par_iter()
        .map(|m| {
            let path = image_paths.get(m.index);
            let picture = match path.map(|p| thumbnail_data_uri(p)) {
                Some(Ok(uri)) => format!(r#"<img alt="{}" src="{uri}">"#, escape(&e.labels[m.truth])),
                Some(Err(err)) => format!(r#"<div class="missing" title="{}">photo unavailable</div>"#, escape(&err.to_string())),
                None => r#"<div class="missing">no photo path</div>"#.to_string(),
            };
            let name = path
                .map(|p| {
                    let file = p.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
                    (file, p.display().to_string())
                })
                .unwrap_or_default();
            format!(
                r#"<figure>{picture}<figcaption><div>true <b>{}</b> <span title="probability of the true class">({})</span></div><div class="pred">predicted <b>{}</b> ({})</div><div class="path" title="{}">{}</div></figcaption></figure>"#,
                escape(&e.labels[m.truth]),
                percent(f64::from(m.true_probability)),
                escape(&e.labels[m.predicted]),
                percent(f64::from(m.predicted_probability)),
                escape(&name.1),
                escape(&name.0)
            )
        })
        .collect();
    let note = if shown.len() < e.misclassified.len() {
        format!(
            "The {} most confidently wrong of {} mistakes, worst first. A confident mistake is often a mislabelled photo worth checking.",
            shown.len(),
            e.misclassified.len()
        )
    } else {
        format!(
            "All {} mistakes, most confidently wrong first. A confident mistake is often a mislabelled photo worth checking.",
            shown.len()
        )
    };
    section(
        "misclassified",
        "Misclassified photos",
        &note,
        &format!("<div id=\"gallery\">\n{}\n</div>", figures.join("\n")),
    )
}

/// Standard base64 with padding (RFC 4648), for data URIs.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> shift) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::evaluate;

    fn labels(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    /// 3 classes, 6 samples, 3 of them wrong; one label needs escaping.
    fn example() -> Evaluation {
        let probs = vec![
            vec![0.8, 0.1, 0.1],
            vec![0.2, 0.7, 0.1],
            vec![0.1, 0.8, 0.1],
            vec![0.1, 0.3, 0.6],
            vec![0.1, 0.1, 0.8],
            vec![0.5, 0.1, 0.4],
        ];
        evaluate(
            &labels(&["Milk & <b>Cream</b>", "eggs", "bread \"white\""]),
            &[0, 0, 1, 1, 2, 2],
            &probs,
        )
        .unwrap()
    }

    fn input<'a>(
        e: Option<&'a Evaluation>,
        curve: &'a [CurvePoint],
        paths: &'a [PathBuf],
    ) -> ReportInput<'a> {
        ReportInput {
            title: "Report <script>alert(1)</script>".into(),
            subtitle: "measured on val/".into(),
            flags: vec!["--learning-rate 0.001".into(), "--seed <0>".into()],
            summary: vec![
                ("backbone".into(), "efficientnet-lite0".into()),
                ("data".into(), "/tmp/a&b".into()),
            ],
            class_counts: vec![("Milk & <b>Cream</b>".into(), 30), ("eggs".into(), 5)],
            class_counts_caption: String::new(),
            small_class: 20,
            curve,
            curve_png: None,
            evaluation: e,
            image_paths: paths,
            levels: Vec::new(),
            calibration: None,
            rejection: None,
        }
    }

    fn curve() -> Vec<CurvePoint> {
        (0..=10)
            .map(|i| CurvePoint {
                step: i * 10,
                train_accuracy: 0.5 + i as f32 * 0.04,
                train_cross_entropy: 2.0 - i as f32 * 0.1,
                validation_accuracy: (i % 2 == 0).then_some(0.4 + i as f32 * 0.03),
                validation_cross_entropy: (i % 2 == 0).then_some(2.1 - i as f32 * 0.08),
            })
            .collect()
    }

    #[test]
    fn escapes_every_special_character() {
        assert_eq!(
            escape(r#"<a href="x">Tom's & Jerry's</a>"#),
            "&lt;a href=&quot;x&quot;&gt;Tom&#39;s &amp; Jerry&#39;s&lt;/a&gt;"
        );
        assert_eq!(escape("plain – ümlaut"), "plain – ümlaut");
    }

    #[test]
    fn labels_titles_and_paths_are_escaped_everywhere() {
        let e = example();
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<PathBuf> = (0..6)
            .map(|i| dir.path().join(format!("<img{i}>.jpg")))
            .collect();
        let html = render(&input(Some(&e), &curve(), &paths));
        assert!(!html.contains("<script>alert"), "title not escaped");
        assert!(!html.contains("<b>Cream"), "label not escaped");
        assert!(!html.contains("<img0>"), "path not escaped");
        assert!(html.contains("Milk &amp; &lt;b&gt;Cream&lt;/b&gt;"));
        assert!(html.contains("bread &quot;white&quot;"));
        assert!(html.contains("/tmp/a&amp;b"));
        assert!(html.contains("<code>--seed &lt;0&gt;</code>"));
        // The only scripts are graft's two.
        assert_eq!(html.matches("<script>").count(), 2);
    }

    #[test]
    fn page_has_every_section_and_nothing_remote() {
        let e = example();
        let html = render(&input(Some(&e), &curve(), &[]));
        for id in [
            "id=\"headline\"",
            "id=\"summary\"",
            "id=\"class-counts\"",
            "id=\"accuracy-curve\"",
            "id=\"loss-curve\"",
            "id=\"confusion-heatmap\"",
            "id=\"confused-pairs\"",
            "id=\"per-class\"",
            "id=\"gallery\"",
        ] {
            assert!(html.contains(id), "missing {id}");
        }
        assert!(html.starts_with("<!DOCTYPE html>") && html.trim_end().ends_with("</html>"));
        assert!(
            !html.contains("http:") && !html.contains("https:") && !html.contains("//cdn"),
            "page refers to the network"
        );
        // One heatmap cell per non-zero count: the example has 6 (3 right, 3 wrong).
        assert_eq!(html.matches("<rect class=\"c\"").count(), 6);
        // One table row per class, worst F1 first (all equal here: label order).
        let table = &html[html.find("id=\"per-class\"").unwrap()..];
        assert_eq!(
            table[..table.find("</table>").unwrap()]
                .matches("<tr>")
                .count(),
            1 + 3
        );
        // Three mistakes, none with a readable photo: placeholders, not a failure.
        let gallery = &html[html.find("id=\"gallery\"").unwrap()..];
        assert_eq!(gallery.matches("<figure>").count(), 3);
        assert!(gallery.contains("no photo path"));
        assert!(html.contains("50.0%"), "top-1 accuracy shown");
    }

    #[test]
    fn classes_without_photos_or_predictions_are_left_out() {
        // 4 classes; "unused" has no photo and is never predicted.
        let probs = vec![
            vec![0.7, 0.1, 0.1, 0.1],
            vec![0.1, 0.1, 0.7, 0.1],
            vec![0.1, 0.1, 0.7, 0.1],
        ];
        let e = evaluate(&labels(&["a", "unused", "c", "d"]), &[0, 2, 3], &probs).unwrap();
        assert_eq!(classes_in_play(&e), vec![0, 2, 3]);
        let html = render(&input(Some(&e), &[], &[]));
        let heatmap = &html[html.find("id=\"confusion-heatmap\"").unwrap()..];
        let heatmap = &heatmap[..heatmap.find("</svg>").unwrap()];
        assert!(!heatmap.contains(">unused<") && heatmap.contains(">d<"));
        assert!(html.contains("1 of the model&#39;s 4 classes have no photo here"));
        let table = &html[html.find("id=\"per-class\"").unwrap()..];
        let table = &table[..table.find("</table>").unwrap()];
        assert_eq!(table.matches("<tr>").count(), 1 + 3);
        assert!(!table.contains("unused"));
        // d is never predicted right: F1 0, first in the table; its mistake is named.
        let first_row = &table[table.find("<tbody>").unwrap()..];
        assert!(
            first_row.starts_with("<tbody><tr><td>d</td>"),
            "{first_row}"
        );
        assert!(first_row.contains("c (1)"));
    }

    #[test]
    fn evaluation_only_report_leaves_out_curves_and_embeds_a_given_png() {
        let e = example();
        let mut report = input(Some(&e), &[], &[]);
        assert!(!render(&report).contains("id=\"curves\""));
        report.curve_png = Some(vec![0x89, b'P', b'N', b'G']);
        let html = render(&report);
        assert!(html.contains("id=\"curves\"") && html.contains("data:image/png;base64,iVBORw=="));
        let empty = ReportInput {
            evaluation: None,
            flags: Vec::new(),
            class_counts: Vec::new(),
            summary: Vec::new(),
            ..input(None, &[], &[])
        };
        let html = render(&empty);
        assert!(!html.contains("id=\"gallery\"") && !html.contains("id=\"summary\""));
    }

    #[test]
    fn gallery_embeds_thumbnails_worst_first_and_caps_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let photo = dir.path().join("photo.png");
        ::image::RgbImage::from_fn(400, 300, |x, y| {
            ::image::Rgb([(x % 256) as u8, (y % 256) as u8, 90])
        })
        .save(&photo)
        .unwrap();
        let broken = dir.path().join("broken.jpg");
        std::fs::write(&broken, b"not a jpeg").unwrap();
        // 70 samples of class 0, all predicted as class 1 with rising confidence.
        let n = GALLERY_LIMIT + 10;
        let probs: Vec<Vec<f32>> = (0..n)
            .map(|i| {
                let p = 0.55 + i as f32 / (4.0 * n as f32);
                vec![1.0 - p, p]
            })
            .collect();
        let e = evaluate(&labels(&["a", "b"]), &vec![0; n], &probs).unwrap();
        let mut paths = vec![photo.clone(); n];
        paths[n - 1] = broken;
        let html = render(&input(Some(&e), &[], &paths));
        let gallery = &html[html.find("id=\"gallery\"").unwrap()..];
        assert_eq!(gallery.matches("<figure>").count(), GALLERY_LIMIT);
        assert_eq!(
            gallery.matches("data:image/jpeg;base64,").count(),
            GALLERY_LIMIT - 1
        );
        // The most confident mistake (the last sample, unreadable) comes first.
        let first = &gallery[..gallery.find("</figure>").unwrap()];
        assert!(
            first.contains("photo unavailable") && first.contains("broken.jpg"),
            "{first}"
        );
        assert!(html.contains(&format!(
            "The {GALLERY_LIMIT} most confidently wrong of {n} mistakes"
        )));
    }

    #[test]
    fn thumbnails_are_small_jpegs() {
        let dir = tempfile::tempdir().unwrap();
        let photo = dir.path().join("photo.png");
        ::image::RgbImage::from_fn(640, 320, |x, _| ::image::Rgb([(x % 256) as u8, 40, 200]))
            .save(&photo)
            .unwrap();
        let uri = thumbnail_data_uri(&photo).unwrap();
        let b64 = uri.strip_prefix("data:image/jpeg;base64,").unwrap();
        assert!(b64.len() < 12_000, "{} bytes", b64.len());
        let missing = dir.path().join("missing.jpg");
        assert!(thumbnail_data_uri(&missing)
            .unwrap_err()
            .to_string()
            .contains("missing.jpg"));
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), want);
        }
    }

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        let ticks = nice_ticks(0.0, 1.0, 5);
        let want = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0];
        assert_eq!(ticks.len(), want.len(), "{ticks:?}");
        assert!(
            ticks.iter().zip(want).all(|(t, w)| (t - w).abs() < 1e-9),
            "{ticks:?}"
        );
        assert_eq!(
            nice_ticks(0.0, 4000.0, 6),
            vec![0.0, 1000.0, 2000.0, 3000.0, 4000.0]
        );
        assert_eq!(nice_ticks(0.0, 0.0, 5), vec![0.0]);
        assert_eq!(nice_ticks(f64::NAN, 1.0, 5).len(), 1);
    }

    #[test]
    fn writes_atomically_and_names_an_unwritable_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out/report.html");
        write_report(&path, &input(None, &curve(), &[])).unwrap();
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .contains("id=\"accuracy-curve\""));
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, b"x").unwrap();
        let err = write_report(&blocker.join("report.html"), &input(None, &[], &[]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("file") && err.contains("cannot write the HTML report"),
            "{err}"
        );
    }
}
