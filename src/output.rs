//! What graft-owned output looks like, and the checks every command runs on its output
//! path before writing anything, so that graft never replaces or deletes what it did
//! not write and never writes its output where it will read it back as input.
//!
//! graft recognises its own output by what it puts in it:
//! - a model folder (`train --output`, the intermediate `step-N` folders) by its
//!   `manifest.json`, and by holding nothing but the files a bundle is made of;
//! - a folder in which graft replaces files of fixed names (`evaluate --output-dir`,
//!   `export --format web --output`) by the marker file [`MARKER`] it writes there first;
//! - a single file by graft's own metadata in it: the `format` entry of a features
//!   file's safetensors metadata, an ONNX model's `producer_name`, the `Software` text
//!   chunk of a PNG, the `generator` meta tag of an HTML report.
//!
//! A path that does not exist yet, and an empty folder, may always be used. Folders that
//! graft only adds to (`organize --output`, `augment --output`, `--summaries-dir`, the
//! intermediate models' folder) may hold anything: graft never replaces a file there
//! (an image already at a target name counts as done) and never writes through a
//! symbolic link inside them ([`refuse_links_inside`]). Anything else is refused with a
//! message that names the path and what to do. The recognisers
//! are hand-written because each needs a few bytes of one format's header, not a parser.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The marker file in a folder that graft fills with files (see [`Folder`]).
pub const MARKER: &str = ".graft-output.json";
/// Written into PNG `tEXt` chunks and HTML `generator` tags, and looked for there.
pub const SOFTWARE: &str = "graft";

/// Output folders, by how graft writes into them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Folder {
    /// A model bundle: the whole folder is replaced.
    Bundle,
    /// `evaluate --output-dir`: files of fixed names are replaced.
    Evaluation,
    /// `export --format web --output`: files of fixed names are replaced.
    WebExport,
    /// Folders where graft only adds entries and replaces none: organize's and
    /// augment's class folders, TensorBoard summaries, the folder of intermediate
    /// bundles (each of which is a [`Folder::Bundle`]).
    AppendOnly,
}

impl Folder {
    fn kind(self) -> &'static str {
        match self {
            Folder::Bundle => "model",
            Folder::Evaluation => "evaluation",
            Folder::WebExport => "web-export",
            Folder::AppendOnly => "append-only",
        }
    }

    fn command(self) -> &'static str {
        match self {
            Folder::Bundle => "graft train",
            Folder::Evaluation => "graft evaluate",
            Folder::WebExport => "graft export --format web",
            Folder::AppendOnly => "graft",
        }
    }
}

/// Single output files, by what graft writes in them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum File {
    /// safetensors whose metadata `format` starts with `graft-` (`graft extract`).
    Safetensors,
    /// ONNX with `producer_name` "graft" (`graft export`, `graft export-onnx`).
    Onnx,
    /// PNG with a `Software: graft` text chunk (charts).
    Png,
    /// HTML with `<meta name="generator" content="graft">` (reports).
    Html,
}

impl File {
    fn what(self) -> &'static str {
        match self {
            File::Safetensors => "a features file written by `graft extract`",
            File::Onnx => "an ONNX model written by `graft export` or `graft export-onnx`",
            File::Png => "a chart graft drew",
            File::Html => "a report graft wrote",
        }
    }
}

/// The files a bundle folder holds, all written by graft (`Bundle::save`, then the
/// training curves and the report beside them).
pub(crate) const BUNDLE_FILES: &[&str] = &[
    "manifest.json",
    "head.safetensors",
    "labels.txt",
    "training_curves.png",
    "report.html",
];

/// `path` made absolute with every symbolic link resolved, even where its last
/// components do not exist yet (the nearest existing ancestor is resolved and the rest
/// appended), so two paths can be compared for nesting.
pub fn resolve(path: &Path) -> PathBuf {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(path))
            .unwrap_or_else(|_| path.to_path_buf())
    };
    let mut probe = absolute.clone();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = std::fs::canonicalize(&probe) {
            return rest.iter().rev().fold(real, |acc: PathBuf, c| acc.join(c));
        }
        match (probe.file_name(), probe.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name.to_os_string());
                probe = parent.to_path_buf();
            }
            _ => return absolute,
        }
    }
}

/// Refuses an output folder inside the input folder being read, or the input inside the
/// output: either way the next run would read graft's output as input (a class named
/// after the output folder), or replacing the output would take the input with it.
/// `output_flag` and `input_what` name both in the message, such as `--output` and
/// "the dataset folder".
pub fn refuse_nested(
    output: &Path,
    output_flag: &str,
    input: &Path,
    input_what: &str,
) -> Result<()> {
    let out = resolve(output);
    let inp = resolve(input);
    let fix = format!(
        "choose an {output_flag} outside {} (such as a sibling folder)",
        input.display()
    );
    if out.starts_with(&inp) {
        return Err(Error::invalid_input(
            output,
            format!(
                "{output_flag} is inside {input_what} {}, so graft would read its own output \
                 as input next time; {fix}",
                input.display()
            ),
        ));
    }
    if inp.starts_with(&out) {
        return Err(Error::invalid_input(
            output,
            format!(
                "{output_flag} contains {input_what} {}, which writing the output could \
                 replace or mix with; {fix}",
                input.display()
            ),
        ));
    }
    Ok(())
}

fn describe_entries(names: &[String]) -> String {
    const AT_MOST: usize = 5;
    let mut shown: Vec<String> = names.iter().take(AT_MOST).cloned().collect();
    if names.len() > AT_MOST {
        shown.push(format!("... and {} more", names.len() - AT_MOST));
    }
    shown.join(", ")
}

fn entry_names(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

/// Why `dir` (an existing folder) is not a bundle graft may replace, if it is not: it
/// must hold a bundle manifest and nothing but a bundle's files (and graft's abandoned
/// temporary files).
pub(crate) fn bundle_problem(dir: &Path) -> Result<Option<String>> {
    let names = entry_names(dir)?;
    if names.is_empty() {
        return Ok(None);
    }
    let manifest = dir.join("manifest.json");
    let is_manifest = std::fs::read(&manifest)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .is_some_and(|v| {
            v.get("format_version").is_some_and(|f| f.is_u64())
                && v.get("graft_version").is_some_and(|f| f.is_string())
                && v.get("labels").is_some_and(|f| f.is_array())
        });
    if !is_manifest {
        return Ok(Some(format!(
            "is a folder that is not a model graft wrote (no graft manifest.json in it; it \
             holds {})",
            describe_entries(&names)
        )));
    }
    let foreign: Vec<String> = names
        .into_iter()
        .filter(|n| !BUNDLE_FILES.contains(&n.as_str()) && !crate::fsx::is_temp_name(n))
        .collect();
    if !foreign.is_empty() {
        return Ok(Some(format!(
            "is a model folder, but it also holds files graft did not write there ({}), \
             which replacing the model would delete",
            describe_entries(&foreign)
        )));
    }
    Ok(None)
}

fn read_marker(dir: &Path) -> Option<String> {
    let bytes = std::fs::read(dir.join(MARKER)).ok()?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    Some(value.get("kind")?.as_str()?.to_string())
}

/// Checks that graft may write `kind` output into the folder `dir`, writing nothing.
pub fn check_folder(dir: &Path, kind: Folder, flag: &str) -> Result<()> {
    let meta = match std::fs::metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let refuse = |problem: String| {
        Error::invalid_input(
            dir,
            format!(
                "{flag} {problem}; graft only replaces or adds to output it wrote itself: \
                 choose a path that does not exist yet or an empty folder, or move the \
                 contents away yourself"
            ),
        )
    };
    if !meta.is_dir() {
        return Err(refuse("is a file, not a folder".into()));
    }
    match kind {
        Folder::AppendOnly => Ok(()),
        Folder::Bundle => match bundle_problem(dir)? {
            None => Ok(()),
            Some(problem) => Err(refuse(problem)),
        },
        Folder::Evaluation | Folder::WebExport => {
            let names = entry_names(dir)?;
            if names.is_empty() {
                return Ok(());
            }
            match read_marker(dir) {
                Some(k) if k == kind.kind() => Ok(()),
                Some(k) => Err(refuse(format!(
                    "is a folder graft wrote for another command ({k}), not for `{}`",
                    kind.command()
                ))),
                None => Err(refuse(format!(
                    "is a folder graft did not write (no {MARKER} in it; it holds {})",
                    describe_entries(&names)
                ))),
            }
        }
    }
}

/// [`check_folder`], then creates the folder, marks it as graft's (for the kinds that
/// carry a marker) and removes the temporary files interrupted runs left in it.
pub fn prepare_folder(dir: &Path, kind: Folder, flag: &str) -> Result<()> {
    check_folder(dir, kind, flag)?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    if matches!(kind, Folder::Evaluation | Folder::WebExport) && read_marker(dir).is_none() {
        let marker = serde_json::json!({
            "kind": kind.kind(),
            "written_by": format!("{} {}", kind.command(), env!("CARGO_PKG_VERSION")),
            "note": "graft adds to or replaces files in this folder on later runs",
        });
        let bytes =
            serde_json::to_vec_pretty(&marker).map_err(|e| Error::Invalid(e.to_string()))?;
        crate::fsx::write_atomic(&dir.join(MARKER), &bytes)?;
    }
    crate::fsx::clean_stale_temps(dir)?;
    Ok(())
}

/// Refuses the folders under `root` graft is about to write into (`dirs`, each inside
/// `root`) where one of them, or a folder between it and `root`, is a symbolic link:
/// writing through it would put files outside `root`. `root` itself may be a link (the
/// user chose it). Lists every such link at once.
pub fn refuse_links_inside<'a>(
    root: &Path,
    dirs: impl IntoIterator<Item = &'a Path>,
    flag: &str,
) -> Result<()> {
    let mut links: Vec<PathBuf> = Vec::new();
    for dir in dirs {
        let Ok(rest) = dir.strip_prefix(root) else {
            continue;
        };
        let mut probe = root.to_path_buf();
        for part in rest.components() {
            probe.push(part);
            match std::fs::symlink_metadata(&probe) {
                Ok(m) if m.file_type().is_symlink() => {
                    if !links.contains(&probe) {
                        links.push(probe.clone());
                    }
                    break;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
    if links.is_empty() {
        return Ok(());
    }
    links.sort();
    let names: Vec<String> = links
        .iter()
        .map(|l| match std::fs::read_link(l) {
            Ok(to) => format!("{} -> {}", l.display(), to.display()),
            Err(_) => l.display().to_string(),
        })
        .collect();
    Err(Error::invalid_input(
        root,
        format!(
            "{flag} holds symbolic links where graft would write class folders ({}); writing \
             through them would put files outside {}: replace each link with a real folder, \
             or choose another {flag}",
            describe_entries(&names),
            root.display()
        ),
    ))
}

/// Checks that graft may write the single file `path` as `kind`: it does not exist, or
/// it is a file graft wrote (see [`File`]). Writes nothing.
pub fn check_file(path: &Path, kind: File, flag: &str) -> Result<()> {
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(path, e)),
    };
    if meta.is_dir() {
        return Err(Error::invalid_input(
            path,
            format!(
                "{flag} is a folder; pass the path of the file to write, such as {}",
                {
                    let name = match kind {
                        File::Safetensors => "features.safetensors",
                        File::Onnx => "model.onnx",
                        File::Png => "chart.png",
                        File::Html => "report.html",
                    };
                    path.join(name).display().to_string()
                }
            ),
        ));
    }
    let head = read_head(path, 64 * 1024)?;
    let ours = match kind {
        File::Safetensors => safetensors_is_ours(path, &head)?,
        File::Onnx => onnx_producer(&head).as_deref() == Some(SOFTWARE),
        File::Png => png_software(&head).as_deref() == Some(SOFTWARE),
        File::Html => html_is_ours(&head),
    };
    if ours {
        return Ok(());
    }
    Err(Error::invalid_input(
        path,
        format!(
            "{flag} names an existing file that is not {}, so graft will not overwrite it; \
             pass a path that does not exist yet, or remove the file yourself",
            kind.what()
        ),
    ))
}

fn read_head(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut head = Vec::new();
    file.take(limit)
        .read_to_end(&mut head)
        .map_err(|e| Error::io(path, e))?;
    Ok(head)
}

/// safetensors starts with the header's length (u64, little-endian), then the JSON
/// header whose `__metadata__` carries graft's `format`.
fn safetensors_is_ours(path: &Path, head: &[u8]) -> Result<bool> {
    let Some(len) = head.get(..8) else {
        return Ok(false);
    };
    let mut n = [0u8; 8];
    n.copy_from_slice(len);
    let len = u64::from_le_bytes(n);
    if len > 100 * 1024 * 1024 {
        return Ok(false);
    }
    let header = if 8 + len <= head.len() as u64 {
        head[8..8 + len as usize].to_vec()
    } else {
        let all = read_head(path, 8 + len)?;
        match all.get(8..) {
            Some(h) if h.len() as u64 == len => h.to_vec(),
            _ => return Ok(false),
        }
    };
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(&header) else {
        return Ok(false);
    };
    Ok(value
        .get("__metadata__")
        .and_then(|m| m.get("format"))
        .and_then(|f| f.as_str())
        .is_some_and(|f| f.starts_with("graft-")))
}

fn varint(bytes: &[u8], pos: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*pos)?;
        *pos += 1;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// The `producer_name` (field 2) of an ONNX `ModelProto`, read from the top-level
/// fields that precede the graph.
fn onnx_producer(bytes: &[u8]) -> Option<String> {
    let mut pos = 0;
    while pos < bytes.len() {
        let key = varint(bytes, &mut pos)?;
        let (field, wire) = (key >> 3, key & 7);
        match wire {
            0 => {
                varint(bytes, &mut pos)?;
            }
            2 => {
                let len = usize::try_from(varint(bytes, &mut pos)?).ok()?;
                let end = pos.checked_add(len)?;
                if field == 2 {
                    return String::from_utf8(bytes.get(pos..end)?.to_vec()).ok();
                }
                pos = end;
            }
            _ => return None,
        }
    }
    None
}

const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

/// The `Software` text of a PNG's `tEXt` chunks before its image data.
fn png_software(bytes: &[u8]) -> Option<String> {
    let mut pos = PNG_SIGNATURE.len();
    if bytes.get(..pos)? != PNG_SIGNATURE {
        return None;
    }
    loop {
        let len = u32::from_be_bytes(bytes.get(pos..pos + 4)?.try_into().ok()?) as usize;
        let kind = bytes.get(pos + 4..pos + 8)?;
        let data = bytes.get(pos + 8..pos + 8 + len)?;
        if kind == b"IDAT" || kind == b"IEND" {
            return None;
        }
        if kind == b"tEXt" {
            if let Some(text) = data.strip_prefix(b"Software\0") {
                return String::from_utf8(text.to_vec()).ok();
            }
        }
        pos += 12 + len;
    }
}

/// `png` with a `tEXt` chunk `Software: graft` inserted after its `IHDR`, so the file
/// can later be recognised as graft's.
pub(crate) fn mark_png(png: &[u8]) -> Vec<u8> {
    const IHDR_END: usize = 8 + 4 + 4 + 13 + 4;
    if png.len() < IHDR_END || &png[..8] != PNG_SIGNATURE || &png[12..16] != b"IHDR" {
        return png.to_vec();
    }
    let mut chunk = Vec::new();
    chunk.extend_from_slice(b"tEXt");
    chunk.extend_from_slice(b"Software\0");
    chunk.extend_from_slice(SOFTWARE.as_bytes());
    let crc = crc32fast::hash(&chunk);
    let mut out = Vec::with_capacity(png.len() + chunk.len() + 8);
    out.extend_from_slice(&png[..IHDR_END]);
    out.extend_from_slice(&((chunk.len() - 4) as u32).to_be_bytes());
    out.extend_from_slice(&chunk);
    out.extend_from_slice(&crc.to_be_bytes());
    out.extend_from_slice(&png[IHDR_END..]);
    out
}

/// The tag [`File::Html`] output carries in its `<head>`.
pub(crate) fn html_generator_tag() -> String {
    format!("<meta name=\"generator\" content=\"{SOFTWARE}\">")
}

fn html_is_ours(head: &[u8]) -> bool {
    let text = String::from_utf8_lossy(&head[..head.len().min(4096)]);
    text.contains(&html_generator_tag())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marked_pngs_are_recognised_and_still_decode() {
        let mut png = Vec::new();
        ::image::RgbImage::new(3, 2)
            .write_to(
                &mut std::io::Cursor::new(&mut png),
                ::image::ImageFormat::Png,
            )
            .unwrap();
        assert_eq!(png_software(&png), None);
        let marked = mark_png(&png);
        assert_eq!(png_software(&marked).as_deref(), Some("graft"));
        let decoded = ::image::load_from_memory(&marked).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (3, 2));
    }

    #[test]
    fn onnx_producer_is_read_from_the_first_fields() {
        // ir_version = 8, producer_name = "graft"
        let bytes = [
            0x08, 0x08, 0x12, 5, b'g', b'r', b'a', b'f', b't', 0x3a, 0x00,
        ];
        assert_eq!(onnx_producer(&bytes).as_deref(), Some("graft"));
        assert_eq!(onnx_producer(b"hello world"), None);
    }

    #[test]
    fn resolve_follows_the_existing_part_of_a_path() {
        let dir = tempfile::tempdir().unwrap();
        let real = std::fs::canonicalize(dir.path()).unwrap();
        assert_eq!(resolve(&dir.path().join("a/b")), real.join("a/b"));
    }

    #[test]
    fn nesting_is_refused_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let ds = dir.path().join("ds");
        std::fs::create_dir(&ds).unwrap();
        assert!(refuse_nested(&ds.join("model"), "--output", &ds, "the dataset folder").is_err());
        assert!(refuse_nested(dir.path(), "--output", &ds, "the dataset folder").is_err());
        assert!(refuse_nested(&dir.path().join("model"), "--output", &ds, "x").is_ok());
        // A sibling whose name starts the same is not inside.
        assert!(refuse_nested(&dir.path().join("ds2"), "--output", &ds, "x").is_ok());
    }
}
