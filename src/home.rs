//! Where graft keeps what it downloads and caches: `$GRAFT_HOME`, else the user's cache dir.

use std::path::PathBuf;

/// graft's home directory: `$GRAFT_HOME` if set, else `<user cache dir>/graft`.
pub fn graft_home() -> PathBuf {
    if let Some(dir) = std::env::var_os("GRAFT_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    dirs::cache_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("graft")
}

/// Directory holding converted backbone weights.
pub fn models_dir() -> PathBuf {
    graft_home().join("models")
}
