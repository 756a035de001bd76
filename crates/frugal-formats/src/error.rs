//! Errors from reading and writing model files. Each names the offending field.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("file truncated while reading {field} at offset {offset} (file is {len} bytes)")]
    Truncated {
        field: String,
        offset: u64,
        len: u64,
    },
    #[error("invalid {field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("missing metadata key `{0}`")]
    MissingKey(String),
    #[error("metadata key `{key}` has type {found}, expected {expected}")]
    WrongKeyType {
        key: String,
        expected: String,
        found: String,
    },
    #[error("missing tensor `{0}`")]
    MissingTensor(String),
}

impl FormatError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> FormatError {
        FormatError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> FormatError {
        FormatError::Io {
            path: path.into(),
            source,
        }
    }
}
