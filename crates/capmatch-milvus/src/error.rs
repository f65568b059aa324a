//! The backend's errors, each naming the server.

use capmatch_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum MilvusError {
    #[error("cannot reach Milvus at {address}: {reason}")]
    Unreachable { address: String, reason: String },
    #[error("Milvus at {address}: {what}: connection lost: {reason}")]
    Transport { address: String, what: String, reason: String },
    #[error("Milvus at {address}: {what} failed: {reason}")]
    Server { address: String, what: String, reason: String, retryable: bool },
    #[error("{0}")]
    Invalid(String),
}

impl MilvusError {
    pub(crate) fn is_retryable(&self) -> bool {
        match self {
            Self::Transport { .. } => true,
            Self::Server { retryable, .. } => *retryable,
            _ => false,
        }
    }
}

impl From<MilvusError> for StoreError {
    fn from(e: MilvusError) -> Self {
        match e {
            MilvusError::Invalid(m) => StoreError::InvalidInput(m),
            other => StoreError::Backend(other.to_string()),
        }
    }
}
