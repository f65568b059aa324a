//! The errors of storage, each saying what to do about it.

use std::path::PathBuf;

use crate::identity::ModelIdentity;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no index at {0} (run `capmatch index` first)")]
    Missing(PathBuf),
    #[error("{0} is not a capmatch index")]
    NotAnIndex(PathBuf),
    #[error("{path} has schema version {found}; this capmatch reads versions {min} to {max}{hint}")]
    SchemaVersion { path: PathBuf, found: i64, min: i64, max: i64, hint: &'static str },
    #[error(
        "refusing to mix vectors of different models in {path}:\n  the index holds: {stored}\n  this run uses:   {requested}\n\
         use another --db, or the models and prompt the index was built with"
    )]
    ModelMismatch { path: PathBuf, stored: Box<ModelIdentity>, requested: Box<ModelIdentity> },
    #[error("vector dimension {found} does not match the index's dimension {expected}")]
    Dimension { expected: usize, found: usize },
    #[error("corrupt index {path}: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("{path} is locked by another capmatch process that is writing to it")]
    Locked { path: PathBuf },
    #[error("{0}")]
    InvalidInput(String),
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// A remote backend's failure (connection, server error), with its address.
    #[error("{0}")]
    Backend(String),
}

impl StoreError {
    pub fn corrupt(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Corrupt { path: path.into(), message: message.into() }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
