//! Organizing a labelled CSV into class folders: the seed project's `train.csv`
//! (`image_id,label`) plus a flat folder of `<image_id>.<ext>` images becomes
//! `output/<label>/<image_id>.jpg`, the layout every later stage reads.
//!
//! Every row is checked before anything is written, and all problems are listed at
//! once. Labels and ids become folder and file names, so any that could climb out of
//! the output folder (`/`, `\`, `..`, a leading `.`, control characters) are refused:
//! nothing is ever written outside the output folder.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::io::Cursor;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use rayon::prelude::*;

use crate::dataset::scan_images;
use crate::error::{Error, Result};
use crate::image::{decode_rgb8_bytes, is_supported_image, DecodeLimits, SUPPORTED_EXTENSIONS};
use crate::progress::Progress;

/// One data row of a labels CSV.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelRow {
    /// Line number in the file (1-based, counting the header), for messages.
    pub line: u64,
    pub image_id: String,
    pub label: String,
}

/// A labels CSV as read: which columns were used and the rows.
#[derive(Debug, Clone)]
pub struct LabelsCsv {
    pub path: PathBuf,
    /// Whether the first line was taken as a header.
    pub header: bool,
    /// With a header: the names of the id and the label column, as the header spells them.
    pub columns: Option<(String, String)>,
    pub rows: Vec<LabelRow>,
}

/// Header names recognised for the id and label columns (compared without case).
const ID_COLUMNS: &[&str] = &[
    "image_id",
    "imageid",
    "image",
    "id",
    "filename",
    "file",
    "file_name",
    "image_name",
    "name",
    "path",
];
const LABEL_COLUMNS: &[&str] = &[
    "label",
    "labels",
    "class",
    "class_name",
    "category",
    "target",
    "y",
    "label_name",
];

/// Reads `image_id,label` rows. UTF-8 with or without a byte-order mark, quoted fields,
/// CRLF or LF line ends. The first line is a header when one of its fields names an
/// id or a label column (`image_id`, `id`, `filename`, ... / `label`, `class`,
/// `category`, ...); a header may put those columns anywhere, otherwise the first two
/// columns are used.
/// Fields are trimmed; blank lines are skipped.
pub fn read_labels_csv(path: &Path) -> Result<LabelsCsv> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let body = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(body);
    let mut records = Vec::new();
    for record in reader.byte_records() {
        let record = record.map_err(|e| {
            let line = e.position().map(|p| line_at(body, p.byte())).unwrap_or(0);
            Error::invalid_input(
                path,
                format!("line {line}: not valid CSV ({e}); fix that line"),
            )
        })?;
        // Counted from the byte offset: csv's own line counter does not count CRLF
        // line ends the way an editor shows them.
        let line = record
            .position()
            .map(|p| line_at(body, p.byte()))
            .unwrap_or(0);
        // An all-blank line (such as a trailing ",") is not a row.
        if record.iter().all(|f| f.is_empty()) {
            continue;
        }
        let mut fields = Vec::with_capacity(record.len());
        for field in record.iter() {
            let text = std::str::from_utf8(field).map_err(|_| {
                Error::invalid_input(
                    path,
                    format!("line {line}: not UTF-8 text; save the file as UTF-8 and run again"),
                )
            })?;
            fields.push(text.to_string());
        }
        records.push((line, fields));
    }
    let Some((_, first)) = records.first() else {
        return Err(Error::invalid_input(
            path,
            "has no rows; expected lines of image_id,label",
        ));
    };
    let is_named =
        |field: &str, names: &[&str]| names.iter().any(|n| n.eq_ignore_ascii_case(field));
    let header = first
        .iter()
        .any(|f| is_named(f, ID_COLUMNS) || is_named(f, LABEL_COLUMNS));
    let (id_col, label_col) = if header {
        let find = |names: &[&str], fallback| {
            first
                .iter()
                .position(|f| is_named(f, names))
                .unwrap_or(fallback)
        };
        (find(ID_COLUMNS, 0), find(LABEL_COLUMNS, 1))
    } else {
        (0, 1)
    };
    let columns = header.then(|| {
        let name = |col: usize| first.get(col).cloned().unwrap_or_default();
        (name(id_col), name(label_col))
    });
    let mut rows = Vec::with_capacity(records.len());
    for (line, fields) in records.into_iter().skip(usize::from(header)) {
        let (Some(image_id), Some(label)) = (fields.get(id_col), fields.get(label_col)) else {
            return Err(Error::invalid_input(
                path,
                format!(
                    "line {line}: has {} field(s), expected image_id and label; \
                     write it as image_id,label",
                    fields.len()
                ),
            ));
        };
        rows.push(LabelRow {
            line,
            image_id: image_id.clone(),
            label: label.clone(),
        });
    }
    Ok(LabelsCsv {
        path: path.to_path_buf(),
        header,
        columns,
        rows,
    })
}

/// The 1-based line of the record that starts at byte `offset` of `body`. The csv
/// reader may place a record's start on the line end before it (the `\n` of a CRLF,
/// or blank lines it skipped), so those are stepped over first.
fn line_at(body: &[u8], offset: u64) -> u64 {
    let mut start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(body.len());
    while matches!(body.get(start), Some(b'\r' | b'\n')) {
        start += 1;
    }
    1 + body[..start].iter().filter(|&&b| b == b'\n').count() as u64
}

/// The longest file or folder name (in bytes) common file systems accept.
const MAX_NAME_BYTES: usize = 255;

/// Why `name` cannot be a folder or file name inside the output, if it cannot.
/// `what` is "label" or "image id".
pub fn name_problem(what: &str, name: &str) -> Option<String> {
    let problem = if name.is_empty() {
        format!("the {what} is empty")
    } else if name.contains('/') {
        format!("the {what} contains '/'")
    } else if name.contains('\\') {
        format!("the {what} contains '\\'")
    } else if name.contains("..") {
        format!("the {what} contains '..'")
    } else if name.contains('\0') {
        format!("the {what} contains a NUL character")
    } else if name.chars().any(char::is_control) {
        format!("the {what} contains a control character")
    } else if name.starts_with('.') {
        format!("the {what} starts with '.'")
    } else if name.len() > MAX_NAME_BYTES {
        format!(
            "the {what} is {} bytes long, more than the {MAX_NAME_BYTES} a file or folder name \
             may have",
            name.len()
        )
    } else {
        return None;
    };
    Some(problem)
}

/// How organized images are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// 8-bit RGB JPEG at this quality (1..=100).
    Jpeg { quality: u8 },
    /// 8-bit RGB PNG (lossless).
    Png,
    /// The source file's bytes, unchanged, under its own extension (still decoded
    /// once, so a broken file is caught here rather than at training time).
    Keep,
}

#[derive(Debug, Clone, Copy)]
pub struct OrganizeOptions {
    pub format: OutputFormat,
    /// Leave out rows whose image file is missing instead of refusing the CSV.
    pub skip_missing: bool,
    pub limits: DecodeLimits,
}

/// One image to place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrganizeJob {
    pub line: u64,
    pub image_id: String,
    pub label: String,
    pub source: PathBuf,
    pub target: PathBuf,
}

/// Everything [`organize`] will do, checked.
#[derive(Debug, Clone)]
pub struct OrganizePlan {
    pub labels_csv: PathBuf,
    pub output: PathBuf,
    pub jobs: Vec<OrganizeJob>,
    /// Rows left out because their image is missing (only with `skip_missing`).
    pub missing: Vec<LabelRow>,
    /// Images in the folder that no row names; they are left out.
    pub unlabelled: Vec<PathBuf>,
}

/// How many problems are listed before "... and N more".
const LIST_AT_MOST: usize = 20;

/// Reads the CSV, matches each row to its image, and checks every row; refuses with
/// one error listing each offending row (line, value, what to do) if any is bad.
pub fn plan_organize(
    labels_csv: &Path,
    images: &Path,
    output: &Path,
    options: &OrganizeOptions,
) -> Result<OrganizePlan> {
    let csv = read_labels_csv(labels_csv)?;
    let by_stem = images_by_stem(images)?;

    // (line, what is wrong and what to do)
    let mut problems: Vec<(u64, String)> = Vec::new();
    let mut first_line: HashMap<&str, u64> = HashMap::new();
    let mut jobs = Vec::with_capacity(csv.rows.len());
    let mut missing = Vec::new();
    let mut used: HashSet<&Path> = HashSet::new();
    for row in &csv.rows {
        let mut bad = false;
        if let Some(p) = name_problem("label", &row.label) {
            problems.push((
                row.line,
                format!(
                    "line {}: label {:?}: {p}; a label becomes a folder name, so use \
                 letters, digits, spaces, '-' or '_'",
                    row.line, row.label
                ),
            ));
            bad = true;
        }
        if let Some(p) = name_problem("image id", &row.image_id) {
            problems.push((
                row.line,
                format!(
                    "line {}: image id {:?}: {p}; an id is a file name without its extension",
                    row.line, row.image_id
                ),
            ));
            bad = true;
        }
        if let Some(first) = first_line.get(row.image_id.as_str()) {
            problems.push((
                row.line,
                format!(
                    "line {}: image id {:?} is also on line {first}; each image takes one \
                 label, so delete one of the two rows",
                    row.line, row.image_id
                ),
            ));
            continue;
        }
        first_line.insert(&row.image_id, row.line);
        if bad {
            continue;
        }
        let files = by_stem
            .get(row.image_id.as_str())
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let source = match files {
            [] if options.skip_missing => {
                missing.push(row.clone());
                continue;
            }
            [] => {
                problems.push((
                    row.line,
                    format!(
                        "line {}: image id {:?}: no file {}.<ext> in {} ({}); add the \
                     image, correct the id, or pass --skip-missing to leave the row out",
                        row.line,
                        row.image_id,
                        row.image_id,
                        images.display(),
                        SUPPORTED_EXTENSIONS.join(", "),
                    ),
                ));
                continue;
            }
            [one] => one,
            many => {
                let names: Vec<String> = many.iter().map(|p| p.display().to_string()).collect();
                problems.push((
                    row.line,
                    format!(
                        "line {}: image id {:?} matches {} files: {}; keep only one of them",
                        row.line,
                        row.image_id,
                        many.len(),
                        names.join(", ")
                    ),
                ));
                continue;
            }
        };
        used.insert(source);
        let file_name = match options.format {
            OutputFormat::Jpeg { .. } => format!("{}.jpg", row.image_id),
            OutputFormat::Png => format!("{}.png", row.image_id),
            OutputFormat::Keep => {
                let ext = source.extension().and_then(|e| e.to_str()).unwrap_or("jpg");
                format!("{}.{ext}", row.image_id)
            }
        };
        jobs.push(OrganizeJob {
            line: row.line,
            image_id: row.image_id.clone(),
            label: row.label.clone(),
            source: source.clone(),
            target: output.join(&row.label).join(file_name),
        });
    }
    if !problems.is_empty() {
        return Err(Error::invalid_input(labels_csv, problem_list(&problems)));
    }
    if jobs.is_empty() {
        return Err(Error::invalid_input(
            labels_csv,
            format!(
                "no row matches an image in {}; check that the images are named \
                 <image_id>.<ext>",
                images.display()
            ),
        ));
    }
    // Belt and braces: the checks above keep every target two plain components
    // below `output`; make that a hard guarantee rather than a consequence.
    for job in &jobs {
        let inside = job
            .target
            .strip_prefix(output)
            .map(|rest| {
                rest.components().count() == 2
                    && rest.components().all(|c| matches!(c, Component::Normal(_)))
            })
            .unwrap_or(false);
        if !inside {
            return Err(Error::invalid_input(
                labels_csv,
                format!(
                    "line {}: would write {} outside {}; fix the label and id",
                    job.line,
                    job.target.display(),
                    output.display()
                ),
            ));
        }
    }
    // The output must be a folder (graft only adds to it), and no class folder in it
    // may be a link that would carry the images somewhere else.
    crate::output::check_folder(output, crate::output::Folder::AppendOnly, "--output")?;
    let class_dirs: Vec<PathBuf> = jobs
        .iter()
        .map(|j| output.join(&j.label))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    crate::output::refuse_links_inside(
        output,
        class_dirs.iter().map(PathBuf::as_path),
        "--output",
    )?;
    let mut unlabelled: Vec<PathBuf> = by_stem
        .values()
        .flatten()
        .filter(|p| !used.contains(p.as_path()))
        .cloned()
        .collect();
    unlabelled.sort();
    Ok(OrganizePlan {
        labels_csv: labels_csv.to_path_buf(),
        output: output.to_path_buf(),
        jobs,
        missing,
        unlabelled,
    })
}

fn problem_list(problems: &[(u64, String)]) -> String {
    let rows: HashSet<u64> = problems.iter().map(|(line, _)| *line).collect();
    let mut text = format!(
        "{} row(s) cannot be organized, so nothing was written:",
        rows.len()
    );
    for (_, p) in problems.iter().take(LIST_AT_MOST) {
        let _ = write!(text, "\n  {p}");
    }
    if problems.len() > LIST_AT_MOST {
        let _ = write!(text, "\n  ... and {} more", problems.len() - LIST_AT_MOST);
    }
    text.push_str("\nfix the rows above and run again");
    text
}

/// The supported images directly in `images`, keyed by file name without extension.
fn images_by_stem(images: &Path) -> Result<HashMap<String, Vec<PathBuf>>> {
    let meta = std::fs::metadata(images).map_err(|e| Error::io(images, e))?;
    if !meta.is_dir() {
        return Err(Error::invalid_input(
            images,
            "is not a folder; pass the folder that holds <image_id>.<ext> files",
        ));
    }
    let mut by_stem: HashMap<String, Vec<PathBuf>> = HashMap::new();
    for entry in std::fs::read_dir(images).map_err(|e| Error::io(images, e))? {
        let entry = entry.map_err(|e| Error::io(images, e))?;
        let path = entry.path();
        // Follows symbolic links: datasets are often assembled from linked files, and
        // reading through a link never writes anywhere.
        let is_file = std::fs::metadata(&path)
            .map(|m| m.is_file())
            .unwrap_or(false);
        if !is_file || !is_supported_image(&path) {
            continue;
        }
        // A name that is not UTF-8 cannot equal an id read from a UTF-8 CSV.
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        by_stem.entry(stem.to_string()).or_default().push(path);
    }
    for paths in by_stem.values_mut() {
        paths.sort();
    }
    Ok(by_stem)
}

/// An image that could not be organized; the run went on without it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub line: u64,
    pub path: PathBuf,
    pub reason: String,
}

#[derive(Debug, Clone, Default)]
pub struct OrganizeReport {
    /// Images in place per label (written now or earlier), sorted by label.
    pub per_class: Vec<(String, u64)>,
    pub written: u64,
    /// Targets an earlier run had already written (left as they were).
    pub already_done: u64,
    /// Rows left out because their image is missing.
    pub missing: u64,
    pub failed: Vec<Failure>,
    /// Images under the output folder that this CSV does not produce, such as those
    /// of an earlier run with other labels. They are left alone but would be trained on.
    pub stale: Vec<PathBuf>,
}

/// Carries out `plan` in parallel. Each file is written atomically; a target that
/// exists is skipped, so rerunning finishes an interrupted run. An image that cannot
/// be decoded is reported and left out; the run goes on.
pub fn organize(
    plan: &OrganizePlan,
    options: &OrganizeOptions,
    progress: &dyn Progress,
) -> Result<OrganizeReport> {
    if let OutputFormat::Jpeg { quality } = options.format {
        if !(1..=100).contains(&quality) {
            return Err(Error::Invalid(format!(
                "--quality {quality} must be from 1 to 100"
            )));
        }
    }
    crate::output::prepare_folder(&plan.output, crate::output::Folder::AppendOnly, "--output")?;
    let class_dirs: HashSet<PathBuf> = plan
        .jobs
        .iter()
        .filter_map(|j| j.target.parent().map(Path::to_path_buf))
        .collect();
    // Temporary files a killed run left among the images would otherwise stay forever.
    for dir in &class_dirs {
        crate::fsx::clean_stale_temps(dir)?;
    }
    progress.begin("organize", plan.jobs.len() as u64);
    let written = AtomicU64::new(0);
    let already = AtomicU64::new(0);
    let failed = Mutex::new(Vec::new());
    let result = plan.jobs.par_iter().try_for_each(|job| {
        if job.target.is_file() {
            already.fetch_add(1, Ordering::Relaxed);
        } else {
            match place(job, options) {
                Ok(()) => {
                    written.fetch_add(1, Ordering::Relaxed);
                }
                Err(Placed::Skip(reason)) => {
                    progress.message(&format!(
                        "skipped {} (line {}): {reason}",
                        job.source.display(),
                        job.line
                    ));
                    if let Ok(mut list) = failed.lock() {
                        list.push(Failure {
                            line: job.line,
                            path: job.source.clone(),
                            reason,
                        });
                    }
                }
                Err(Placed::Fatal(err)) => return Err(err),
            }
        }
        progress.advance(1);
        Ok(())
    });
    progress.finish();
    result?;

    let mut failed = failed.into_inner().unwrap_or_default();
    failed.sort_by_key(|f| f.line);
    let failed_lines: HashSet<u64> = failed.iter().map(|f| f.line).collect();
    let mut per_class: BTreeMap<String, u64> = BTreeMap::new();
    for job in plan.jobs.iter().filter(|j| !failed_lines.contains(&j.line)) {
        *per_class.entry(job.label.clone()).or_default() += 1;
    }
    let targets: HashSet<&Path> = plan.jobs.iter().map(|j| j.target.as_path()).collect();
    let stale = scan_images(&plan.output)?
        .images
        .into_iter()
        .map(|e| e.path)
        .filter(|p| !targets.contains(p.as_path()))
        .collect();
    Ok(OrganizeReport {
        per_class: per_class.into_iter().collect(),
        written: written.into_inner(),
        already_done: already.into_inner(),
        missing: plan.missing.len() as u64,
        failed,
        stale,
    })
}

enum Placed {
    /// This image is unusable; report it and go on.
    Skip(String),
    /// The output cannot be written; stop.
    Fatal(Error),
}

fn place(job: &OrganizeJob, options: &OrganizeOptions) -> std::result::Result<(), Placed> {
    let bytes = std::fs::read(&job.source).map_err(|e| Placed::Fatal(Error::io(&job.source, e)))?;
    let image = decode_rgb8_bytes(&bytes, &job.source, options.limits)
        .map_err(|e| Placed::Skip(e.to_string()))?;
    let encoded = match options.format {
        OutputFormat::Keep => bytes,
        OutputFormat::Jpeg { quality } => encode(&job.target, |out| {
            ::image::codecs::jpeg::JpegEncoder::new_with_quality(out, quality).encode_image(&image)
        })?,
        OutputFormat::Png => encode(&job.target, |out| {
            image.write_to(out, ::image::ImageFormat::Png)
        })?,
    };
    crate::fsx::write_atomic(&job.target, &encoded).map_err(Placed::Fatal)
}

fn encode(
    target: &Path,
    write: impl FnOnce(&mut Cursor<&mut Vec<u8>>) -> ::image::ImageResult<()>,
) -> std::result::Result<Vec<u8>, Placed> {
    let mut bytes = Vec::new();
    write(&mut Cursor::new(&mut bytes))
        .map_err(|e| Placed::Skip(format!("cannot encode {}: {e}", target.display())))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csv_file(dir: &Path, bytes: &[u8]) -> PathBuf {
        let path = dir.join("labels.csv");
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn reads_bom_crlf_quotes_and_detects_the_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = csv_file(
            dir.path(),
            b"\xEF\xBB\xBFimage_id,label\r\n\"0001\",\"Milk, whole\"\r\n0002 , juice\r\n\r\n",
        );
        let csv = read_labels_csv(&path).unwrap();
        assert!(csv.header);
        assert_eq!(
            csv.rows,
            vec![
                LabelRow {
                    line: 2,
                    image_id: "0001".into(),
                    label: "Milk, whole".into()
                },
                LabelRow {
                    line: 3,
                    image_id: "0002".into(),
                    label: "juice".into()
                },
            ]
        );
    }

    #[test]
    fn line_numbers_match_an_editor_with_crlf_and_blank_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = csv_file(dir.path(), b"id,label\r\n\r\na,x\r\n\"b\nc\",y\r\nd,z\r\n");
        let lines: Vec<u64> = read_labels_csv(&path)
            .unwrap()
            .rows
            .iter()
            .map(|r| r.line)
            .collect();
        assert_eq!(lines, vec![3, 4, 6]);
    }

    #[test]
    fn headerless_files_keep_their_first_row_and_headers_pick_columns() {
        let dir = tempfile::tempdir().unwrap();
        let path = csv_file(dir.path(), b"0001,milk\n0002,juice\n");
        let csv = read_labels_csv(&path).unwrap();
        assert!(!csv.header);
        assert_eq!(csv.rows.len(), 2);
        assert_eq!(csv.rows[0].line, 1);

        let path = csv_file(dir.path(), b"Label,notes,Image_ID\nmilk,x,0001\n");
        let csv = read_labels_csv(&path).unwrap();
        assert_eq!(csv.rows[0].image_id, "0001");
        assert_eq!(csv.rows[0].label, "milk");
    }

    #[test]
    fn short_rows_and_non_utf8_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = csv_file(dir.path(), b"image_id,label\n0001,milk\n0002\n");
        let err = read_labels_csv(&path).unwrap_err().to_string();
        assert!(
            err.contains("line 3") && err.contains("image_id,label"),
            "{err}"
        );
        let path = csv_file(dir.path(), b"image_id,label\n0001,caf\xE9\n");
        let err = read_labels_csv(&path).unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("UTF-8"), "{err}");
    }

    #[test]
    fn names_that_could_escape_the_output_are_refused() {
        for bad in [
            "", "a/b", "a\\b", "..", "x..y", "a\0b", "a\tb", "a\u{7f}", ".hidden",
        ] {
            assert!(name_problem("label", bad).is_some(), "{bad:?}");
        }
        assert!(name_problem("label", &"x".repeat(256)).is_some());
        assert!(
            name_problem("label", &"ä".repeat(128)).is_some(),
            "counted in bytes"
        );
        assert_eq!(name_problem("label", &"x".repeat(255)), None);
        for good in ["milk", "Granny-Smith", "Oat milk 1L", "ägg", "a.b"] {
            assert_eq!(name_problem("label", good), None, "{good:?}");
        }
    }
}
