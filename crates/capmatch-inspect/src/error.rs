//! The inspection's one error type.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error(transparent)]
    Engine(#[from] capmatch_engine::EngineError),
    #[error(transparent)]
    Store(#[from] capmatch_store::StoreError),
    #[error("{0}")]
    Invalid(String),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot draw {}: {message}", path.display())]
    Plot { path: PathBuf, message: String },
}

impl InspectError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid(message.into())
    }
}

pub type Result<T, E = InspectError> = std::result::Result<T, E>;
