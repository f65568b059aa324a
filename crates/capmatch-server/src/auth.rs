//! The bearer token that guards the write endpoints (uploads, index jobs).
//!
//! The token lives in a file (`--token-file`), never on the command line where `ps` shows
//! it. Without one the server is read-only: write endpoints answer 403 whatever the
//! request carries. Tokens are compared through their blake3 hashes, whose equality is
//! constant-time, so the comparison leaks nothing about the token through timing.

use std::path::Path;

use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

#[derive(Clone)]
pub struct Auth {
    token: Option<blake3::Hash>,
}

/// Why a write request is refused.
#[derive(Debug)]
pub enum Refusal {
    /// The server has no token file: nothing can be written through it.
    ReadOnly,
    /// No `Authorization: Bearer` header (401, with `WWW-Authenticate`).
    Missing,
    /// A token that is not the server's (403).
    Wrong,
}

impl Auth {
    /// A server without write endpoints.
    pub fn read_only() -> Self {
        Self { token: None }
    }

    pub fn with_token(token: &str) -> Self {
        Self { token: Some(blake3::hash(token.as_bytes())) }
    }

    /// Reads the token from `path` (surrounding whitespace, such as the final newline, is
    /// not part of it).
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read the token file {}: {e}", path.display()))?;
        let token = text.trim();
        if token.is_empty() {
            anyhow::bail!("the token file {} is empty", path.display());
        }
        if token.len() < 16 {
            tracing::warn!("the token in {} is short ({} characters): anyone who can reach the server may guess it", path.display(), token.len());
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0) {
                tracing::warn!("the token file {} is readable by other users (chmod 600 it)", path.display());
            }
        }
        Ok(Self::with_token(token))
    }

    pub fn writable(&self) -> bool {
        self.token.is_some()
    }

    /// Checks a write request's `Authorization` header.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        let expected = self.token.as_ref().ok_or(Refusal::ReadOnly)?;
        let given = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .ok_or(Refusal::Missing)?;
        if blake3::hash(given.as_bytes()) == *expected {
            Ok(())
        } else {
            Err(Refusal::Wrong)
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::ReadOnly => ApiError::forbidden(
                "this server is read-only: start it with --token-file to enable uploads and indexing",
            )
            .into_response(),
            Refusal::Missing => {
                let mut response =
                    ApiError::new(StatusCode::UNAUTHORIZED, "this endpoint needs an Authorization: Bearer <token> header")
                        .into_response();
                response.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                response
            }
            Refusal::Wrong => ApiError::forbidden("wrong token").into_response(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn the_three_refusals_and_the_one_acceptance() {
        let auth = Auth::with_token("s3cret-s3cret-s3cret");
        assert!(auth.check(&bearer("Bearer s3cret-s3cret-s3cret")).is_ok());
        assert!(matches!(auth.check(&HeaderMap::new()), Err(Refusal::Missing)));
        assert!(matches!(auth.check(&bearer("Basic czNjcmV0")), Err(Refusal::Missing)));
        assert!(matches!(auth.check(&bearer("Bearer s3cret")), Err(Refusal::Wrong)));
        assert!(matches!(auth.check(&bearer("Bearer ")), Err(Refusal::Wrong)));
        let read_only = Auth::read_only();
        assert!(matches!(read_only.check(&bearer("Bearer s3cret-s3cret-s3cret")), Err(Refusal::ReadOnly)));
    }

    #[test]
    fn an_empty_token_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "  \n").unwrap();
        assert!(Auth::from_file(&path).is_err());
        std::fs::write(&path, "abcdefghijklmnopqrstuvwxyz\n").unwrap();
        assert!(Auth::from_file(&path).unwrap().check(&bearer("Bearer abcdefghijklmnopqrstuvwxyz")).is_ok());
    }
}
