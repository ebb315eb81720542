//! Atomic file writes: write to a temporary file beside the target, then rename, so a
//! crash or a kill never leaves a half-written file under the final name.
//!
//! A kill -9 between the two steps leaves the temporary file behind. Its name,
//! `.graft-<pid>-<random>.tmp`, carries the writer's process id, so a later run can tell
//! an abandoned temporary file (its writer is gone and it has not changed for ten
//! minutes) from one a concurrent run is still filling, and [`clean_stale_temps`]
//! removes only the former.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Writes `bytes` to `path` atomically, creating parent folders.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |file| file.write_all(bytes))
}

/// Runs `fill` on a temporary file beside `path`, syncs it, then renames it over `path`.
pub fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> Result<()> {
    let mut file = AtomicFile::create(path)?;
    fill(file.tmp.as_file_mut()).map_err(|e| Error::io(path, e))?;
    file.commit()
}

/// A file written bit by bit under a temporary name beside its target, for outputs too
/// big to hold in memory (Parquet features): [`AtomicFile::commit`] syncs it and renames
/// it over the target; dropped uncommitted (an error, a panic), it is removed.
pub struct AtomicFile {
    tmp: tempfile::NamedTempFile,
    path: PathBuf,
}

impl AtomicFile {
    /// Starts the temporary file beside `path`, creating parent folders.
    pub fn create(path: &Path) -> Result<AtomicFile> {
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        let tmp = tempfile::Builder::new()
            .prefix(&temp_prefix())
            .suffix(TEMP_SUFFIX)
            .tempfile_in(parent)
            .map_err(|e| Error::io(parent, e))?;
        Ok(AtomicFile {
            tmp,
            path: path.to_path_buf(),
        })
    }

    /// The target path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Syncs the temporary file and renames it over the target.
    pub fn commit(self) -> Result<()> {
        let AtomicFile { tmp, path } = self;
        // Temporary files are created owner-only; what graft writes is ordinary output.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let perms = std::fs::Permissions::from_mode(0o644);
            tmp.as_file()
                .set_permissions(perms)
                .map_err(|e| Error::io(&path, e))?;
        }
        tmp.as_file().sync_all().map_err(|e| Error::io(&path, e))?;
        tmp.persist(&path).map_err(|e| Error::io(&path, e.error))?;
        Ok(())
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tmp.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.tmp.flush()
    }
}

const TEMP_PREFIX: &str = ".graft-";
const TEMP_SUFFIX: &str = ".tmp";

/// Prefix of this process's temporary names: `.graft-<pid>-`.
pub(crate) fn temp_prefix() -> String {
    format!("{TEMP_PREFIX}{}-", std::process::id())
}

/// How old an entry of a dead process must be before it counts as abandoned. A process
/// table only shows this PID namespace: a writer in another container sharing the
/// folder looks dead, so a fresh entry is never taken for abandoned on the pid alone.
const ABANDONED_AFTER: std::time::Duration = std::time::Duration::from_secs(10 * 60);
/// How old an entry without a process to ask about must be (an old-style name without
/// a pid, or no process table outside Linux).
const ABANDONED_WITHOUT_PID_AFTER: std::time::Duration = std::time::Duration::from_secs(3600);

/// Whether the process that made a temporary entry named with `pid` may still be
/// writing it. An entry counts as abandoned only when its writer is gone and it has not
/// changed for [`ABANDONED_AFTER`]; without a process table to ask (an old-style name,
/// or outside Linux), only once it is an hour old. An entry whose age cannot be read
/// is kept.
pub(crate) fn writer_may_be_alive(pid: Option<u32>, path: &Path) -> bool {
    if pid == Some(std::process::id()) {
        return true;
    }
    let age = std::fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok());
    let Some(age) = age else {
        return true;
    };
    #[cfg(target_os = "linux")]
    if let Some(pid) = pid {
        return age < ABANDONED_AFTER || Path::new("/proc").join(pid.to_string()).exists();
    }
    age < ABANDONED_WITHOUT_PID_AFTER
}

/// The writer's process id in a name made by `prefix` + `<pid>-<random>`, if it has one.
/// Names of graft versions before the process id was added (`.graft-<random>.tmp`) have
/// none.
pub(crate) fn pid_in(name: &str, prefix: &str) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?;
    let (pid, _) = rest.split_once('-')?;
    pid.parse().ok()
}

/// Whether `name` is a temporary file name [`write_atomic`] makes (or made, before the
/// process id was part of it).
pub fn is_temp_name(name: &str) -> bool {
    name.len() > TEMP_PREFIX.len() + TEMP_SUFFIX.len()
        && name.starts_with(TEMP_PREFIX)
        && name.ends_with(TEMP_SUFFIX)
        && !name.contains('/')
}

/// Removes the temporary files that interrupted graft runs left directly in `dir`: plain
/// files named as [`write_atomic`] names them whose writer is gone. Nothing else is
/// touched; a folder that does not exist has nothing to clean. Returns how many were
/// removed.
pub fn clean_stale_temps(dir: &Path) -> Result<usize> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let path = entry.path();
        let is_file = entry.file_type().map(|t| t.is_file()).unwrap_or(false);
        if !is_file || !is_temp_name(&name) {
            continue;
        }
        if writer_may_be_alive(pid_in(&name, TEMP_PREFIX), &path) {
            continue;
        }
        // A leftover that cannot be removed is harmless beside the output; it must not
        // stop the run that writes the output.
        match std::fs::remove_file(&path) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(
                "cannot remove {}, a temporary file an interrupted graft run left: {e}; \
                 remove it by hand",
                path.display()
            ),
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_replaces_leaving_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("sub/out.bin");
        write_atomic(&target, b"one").unwrap();
        write_atomic(&target, b"two").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path().join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec!["out.bin"]);
    }

    /// Sets `path`'s modification time `secs` seconds into the past.
    pub(crate) fn age(path: &Path, secs: u64) {
        let when = std::time::SystemTime::now() - std::time::Duration::from_secs(secs);
        std::fs::File::open(path)
            .unwrap()
            .set_modified(when)
            .unwrap();
    }

    #[test]
    fn stale_temps_of_dead_writers_go_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let dead = std::process::Command::new("true").spawn().unwrap();
        let dead_pid = dead.id();
        let mut dead = dead;
        dead.wait().unwrap();
        let own = format!(".graft-{}-abc.tmp", std::process::id());
        let stale = format!(".graft-{dead_pid}-abc.tmp");
        // A dead pid's fresh file may be a live writer's in another PID namespace.
        let fresh = format!(".graft-{dead_pid}-new.tmp");
        // Old-style names carry no pid: removed only after an hour.
        let legacy_old = ".graft-oldstyle.tmp".to_string();
        let legacy_recent = ".graft-recent.tmp".to_string();
        for name in [
            own.as_str(),
            stale.as_str(),
            fresh.as_str(),
            legacy_old.as_str(),
            legacy_recent.as_str(),
            "photo.tmp",
            ".graft-notes.txt",
        ] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
            age(&dir.path().join(name), 2 * 3600);
        }
        age(&dir.path().join(&fresh), 60);
        age(&dir.path().join(&legacy_recent), 30 * 60);
        assert_eq!(clean_stale_temps(dir.path()).unwrap(), 2);
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        let mut expected = vec![
            own,
            fresh,
            legacy_recent,
            ".graft-notes.txt".to_string(),
            "photo.tmp".to_string(),
        ];
        expected.sort();
        assert_eq!(names, expected);
        assert_eq!(clean_stale_temps(&dir.path().join("absent")).unwrap(), 0);
    }

    #[test]
    fn a_dead_writers_entry_is_abandoned_only_after_ten_minutes() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let path = dir.path().join("entry");
        std::fs::write(&path, b"x").unwrap();
        assert!(writer_may_be_alive(Some(pid), &path));
        age(&path, 9 * 60);
        assert!(writer_may_be_alive(Some(pid), &path));
        age(&path, 11 * 60);
        assert!(!writer_may_be_alive(Some(pid), &path));
        // A live process's entry is never abandoned, however old.
        let me = std::process::id();
        assert!(writer_may_be_alive(Some(me), &path));
        assert!(writer_may_be_alive(Some(1), &path));
    }
}
