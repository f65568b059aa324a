//! Errors as HTTP answers: a status and `{"error": "..."}`.
//!
//! The engine classifies its own errors ([`ErrorKind`]); this module only maps each class
//! to a status, as the CLI maps it to an exit code.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use capmatch_engine::{EngineError, ErrorKind};

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }

    /// A body that cannot be parsed at all.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// A well-formed request with values that make no sense.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

/// The status of each class of engine error.
pub fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::InvalidRequest => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::NotAnImage => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ErrorKind::DamagedImage => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let status = status_of(e.kind());
        if status.is_server_error() {
            tracing::error!("{e:#}");
        }
        Self::new(status, format!("{e:#}"))
    }
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(e: tokio::task::JoinError) -> Self {
        tracing::error!("a request's task failed: {e}");
        Self::internal("the request's task failed")
    }
}

/// axum's own rejections (a body over the limit, a malformed multipart body...) keep their
/// status but answer in JSON like every other error.
macro_rules! from_rejection {
    ($($t:ty),* $(,)?) => {$(
        impl From<$t> for ApiError {
            fn from(r: $t) -> Self {
                Self::new(r.status(), r.body_text())
            }
        }
    )*};
}
from_rejection!(
    axum::extract::rejection::BytesRejection,
    axum::extract::rejection::JsonRejection,
    axum::extract::rejection::QueryRejection,
    axum::extract::multipart::MultipartRejection,
    axum::extract::multipart::MultipartError,
);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(serde_json::json!({ "error": self.message }))).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
