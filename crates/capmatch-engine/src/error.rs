//! One error type for every operation of the engine, with the kind a front end maps to an
//! exit code or an HTTP status.

use capmatch_core::image_io::DecodeError;
use capmatch_store::StoreError;

/// What went wrong, by whose fault and what to do.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The request itself is wrong (a bad parameter, an impossible combination).
    #[error("{0}")]
    InvalidRequest(String),
    /// An id, a path or a domain that the gallery does not have.
    #[error("{0}")]
    NotFound(String),
    /// The query image cannot be decoded (not an image, truncated, too large...).
    #[error("cannot read the image{}: {source}", name.as_deref().map(|n| format!(" {n}")).unwrap_or_default())]
    Image { name: Option<String>, source: DecodeError },
    /// The gallery has nothing to search yet.
    #[error("the index {0} holds no image (run `capmatch index` first)")]
    EmptyIndex(String),
    /// The models asked for are not the ones the index was built with.
    #[error("{0}")]
    ModelMismatch(String),
    /// Another process holds the gallery's writer lock and the caller did not wait.
    #[error("{0} is being written by another capmatch process")]
    Busy(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A model failed to load or run.
    #[error("{0:#}")]
    Model(anyhow::Error),
    #[error("{0:#}")]
    Other(anyhow::Error),
}

/// The class of an [`EngineError`], for front ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The caller's request is wrong: fix it (HTTP 400/422).
    InvalidRequest,
    /// Unknown id, path or domain (HTTP 404).
    NotFound,
    /// The input is not a usable image (HTTP 415 for not an image, 422 for a damaged one).
    NotAnImage,
    DamagedImage,
    /// The image is over a size limit (HTTP 413).
    TooLarge,
    /// The gallery or the models are not in a state to answer (HTTP 409/503).
    Conflict,
    /// A failure of the machine, the files or the models (HTTP 500).
    Internal,
}

impl EngineError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            EngineError::InvalidRequest(_) => ErrorKind::InvalidRequest,
            EngineError::NotFound(_) => ErrorKind::NotFound,
            EngineError::Image { source, .. } => match source {
                DecodeError::UnknownFormat | DecodeError::UnsupportedFormat(_) | DecodeError::Empty => ErrorKind::NotAnImage,
                DecodeError::TooLarge { .. } | DecodeError::FileTooLarge { .. } | DecodeError::AllocLimit { .. } => {
                    ErrorKind::TooLarge
                }
                DecodeError::Io { .. } | DecodeError::NotAFile { .. } => ErrorKind::NotFound,
                _ => ErrorKind::DamagedImage,
            },
            EngineError::EmptyIndex(_) | EngineError::ModelMismatch(_) | EngineError::Busy(_) => ErrorKind::Conflict,
            EngineError::Store(StoreError::Dimension { .. }) => ErrorKind::InvalidRequest,
            EngineError::Store(StoreError::Missing(_)) => ErrorKind::NotFound,
            EngineError::Store(StoreError::ModelMismatch { .. }) => ErrorKind::Conflict,
            EngineError::Store(StoreError::Locked { .. }) => ErrorKind::Conflict,
            EngineError::Store(_) | EngineError::Model(_) | EngineError::Other(_) => ErrorKind::Internal,
        }
    }

    pub(crate) fn model(e: impl std::fmt::Display) -> Self {
        EngineError::Model(anyhow::anyhow!("{e}"))
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        EngineError::InvalidRequest(message.into())
    }
}

impl From<anyhow::Error> for EngineError {
    fn from(e: anyhow::Error) -> Self {
        EngineError::Other(e)
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
