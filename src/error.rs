//! The library's error type. Every variant that concerns a file names it and says what to do.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot decode image {path}: {reason}; remove or replace the file")]
    Decode { path: PathBuf, reason: String },

    #[error(
        "image {path} is {width}x{height} pixels, more than the limit of {limit} pixels; \
         downscale it or raise the limit"
    )]
    ImageTooLarge {
        path: PathBuf,
        width: u32,
        height: u32,
        limit: u64,
    },

    #[error("{path}: checksum mismatch (expected SHA-256 {expected}, got {actual}); the file is corrupt or not the published one: delete it and fetch again")]
    Checksum {
        path: PathBuf,
        expected: String,
        actual: String,
    },

    #[error("weights file {path}: {reason}")]
    Weights { path: PathBuf, reason: String },

    #[error("weights for {backbone} are not installed: {hint}")]
    MissingWeights { backbone: String, hint: String },

    #[error("{path}: {reason}")]
    InvalidInput { path: PathBuf, reason: String },

    #[error("{0}")]
    Invalid(String),

    #[error("engine error: {0}")]
    Engine(String),
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub fn invalid_input(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::InvalidInput {
            path: path.into(),
            reason: reason.into(),
        }
    }
}
