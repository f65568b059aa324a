//! `GET /api/images/{id}` (the original file) and `GET /api/images/{id}/thumb` (a cached
//! JPEG thumbnail).
//!
//! A request names an image by its id, never by a path: the file served is the one the
//! catalog records for that id, so nothing outside the gallery can be reached. The
//! content type comes from the bytes (the extension of a gallery file may lie). Both
//! answers forbid the browser to sniff or to run anything in them (an SVG opened directly
//! would otherwise run its scripts with the page's origin).
//!
//! Thumbnails are cached in `<db>.thumbs/`, named by the image's content hash and size,
//! so a changed file gets a new thumbnail and identical files share one.

use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use capmatch_core::image_io::{decode_file, DecodeLimits};
use capmatch_engine::{Engine, ImageId};
use serde::Deserialize;
use tower::ServiceExt;

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Largest thumbnail side a request may ask for.
pub const MAX_THUMB: u32 = 512;
pub const DEFAULT_THUMB: u32 = 256;

/// Images cannot run anything, even when opened directly.
const IMAGE_CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; sandbox";

/// An id from a URL: the decimal number of an indexed image, nothing else.
pub fn parse_id(raw: &str) -> ApiResult<ImageId> {
    let unknown = || ApiError::not_found(format!("no image with id {raw:?} in the gallery"));
    if raw.is_empty() || raw.len() > 16 || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return Err(unknown());
    }
    let id: u64 = raw.parse().map_err(|_| unknown())?;
    if id == 0 || id > ImageId::MAX {
        return Err(unknown());
    }
    Ok(ImageId(id))
}

pub fn image_url(id: ImageId) -> String {
    format!("/api/images/{id}")
}

pub fn thumb_url(id: ImageId) -> String {
    format!("/api/images/{id}/thumb")
}

/// The MIME type of an image file's first bytes.
fn content_type(head: &[u8], path: &Path) -> &'static str {
    if let Ok(format) = image::guess_format(head) {
        return format.to_mime_type();
    }
    let svg_named = path.extension().and_then(|e| e.to_str()).is_some_and(|e| e.eq_ignore_ascii_case("svg"));
    let svg_content = head.windows(4).any(|w| w.eq_ignore_ascii_case(b"<svg"));
    if svg_named || svg_content {
        "image/svg+xml"
    } else {
        "application/octet-stream"
    }
}

fn locked_down(headers: &mut HeaderMap) {
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(IMAGE_CSP));
}

async fn entry_path(state: &AppState, raw_id: &str) -> ApiResult<PathBuf> {
    let id = parse_id(raw_id)?;
    let engine = state.ready()?.engine.clone();
    let entry = tokio::task::spawn_blocking(move || engine.entry(id)).await??;
    Ok(PathBuf::from(entry.path))
}

/// The original file, with range requests and `Last-Modified` (tower-http's `ServeFile`),
/// and the content type of its bytes.
pub async fn original(State(state): State<AppState>, UrlPath(raw_id): UrlPath<String>, request: Request) -> ApiResult<Response> {
    let path = entry_path(&state, &raw_id).await?;
    let head = read_head(&path).await.map_err(|e| {
        tracing::warn!("{}: {e}", path.display());
        ApiError::not_found(format!("the file of image {raw_id} is no longer readable"))
    })?;
    let kind = content_type(&head, &path);
    let mut response = tower_http::services::ServeFile::new(&path)
        .oneshot(request)
        .await
        .map_err(|e| ApiError::internal(format!("cannot serve the file: {e}")))?
        .map(Body::new);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(kind));
    locked_down(headers);
    Ok(response)
}

async fn read_head(path: &Path) -> std::io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut file = tokio::fs::File::open(path).await?;
    let mut head = vec![0u8; 1024];
    let mut filled = 0;
    while filled < head.len() {
        let n = file.read(&mut head[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    head.truncate(filled);
    Ok(head)
}

#[derive(Deserialize)]
pub struct ThumbParams {
    size: Option<String>,
}

/// A thumbnail at most `size` pixels on its longer side (never enlarged), as JPEG.
pub async fn thumbnail(
    State(state): State<AppState>,
    UrlPath(raw_id): UrlPath<String>,
    Query(params): Query<ThumbParams>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let size = match params.size.as_deref() {
        None => DEFAULT_THUMB,
        Some(s) => match s.trim().parse::<u32>() {
            Ok(n) if (1..=MAX_THUMB).contains(&n) => n,
            _ => return Err(ApiError::invalid(format!("size must be a whole number from 1 to {MAX_THUMB}, not {s:?}"))),
        },
    };
    let id = parse_id(&raw_id)?;
    let engine = state.ready()?.engine.clone();
    let limits = state.settings().limits;
    let (etag, bytes) = tokio::task::spawn_blocking(move || cached_thumbnail(&engine, id, size, &limits)).await??;
    let etag_value = HeaderValue::from_str(&format!("\"{etag}\"")).expect("hex is a valid header");
    let mut response = if headers.get(IF_NONE_MATCH).is_some_and(|v| v.as_bytes() == etag_value.as_bytes()) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(CONTENT_TYPE, HeaderValue::from_static("image/jpeg"))], bytes).into_response()
    };
    let h = response.headers_mut();
    h.insert(ETAG, etag_value);
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    locked_down(h);
    Ok(response)
}

/// The folder thumbnails of the gallery at `db` are cached in.
pub fn thumbs_dir(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".thumbs");
    PathBuf::from(name)
}

/// The thumbnail of `id` at `size`, from the cache or made now (and cached). Returns its
/// ETag and bytes.
fn cached_thumbnail(engine: &Engine, id: ImageId, size: u32, limits: &DecodeLimits) -> Result<(String, Vec<u8>), ApiError> {
    let entry = engine.entry(id)?;
    let key = format!("{}-{size}", entry.hash);
    let dir = thumbs_dir(engine.db());
    let cached = dir.join(format!("{key}.jpg"));
    if let Ok(bytes) = std::fs::read(&cached) {
        return Ok((key, bytes));
    }
    let image = decode_file(Path::new(&entry.path), limits).map_err(|e| {
        ApiError::not_found(format!("the file of image {id} cannot be read any more: {e}"))
    })?;
    let (w, h) = image.dimensions();
    let scale = (size as f64 / w.max(h) as f64).min(1.0);
    let (tw, th) = (((w as f64 * scale).round() as u32).max(1), ((h as f64 * scale).round() as u32).max(1));
    let small = if (tw, th) == (w, h) { image } else { image::imageops::resize(&image, tw, th, image::imageops::FilterType::Triangle) };
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 85)
        .encode_image(&small)
        .map_err(|e| ApiError::internal(format!("cannot encode the thumbnail: {e}")))?;
    // Best effort: a read-only gallery folder only costs the cache.
    if let Err(e) = write_atomically(&dir, &cached, &bytes) {
        tracing::debug!("thumbnail not cached in {}: {e}", dir.display());
    }
    Ok((key, bytes))
}

/// Writes under a unique temporary name, then renames: concurrent requests for the same
/// thumbnail never see half a file.
fn write_atomically(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, bytes)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_decimal_numbers_of_53_bits_and_nothing_else() {
        assert_eq!(parse_id("42").unwrap(), ImageId(42));
        for bad in ["", "0", "-1", "+1", " 1", "1 ", "../../etc/passwd", "..%2Fetc", "0x10", "9007199254740992", "99999999999999999999"] {
            assert_eq!(parse_id(bad).unwrap_err().status, StatusCode::NOT_FOUND, "{bad:?}");
        }
        assert!(parse_id("9007199254740991").is_ok());
    }

    #[test]
    fn content_types_come_from_the_bytes() {
        assert_eq!(content_type(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", Path::new("x.jpg")), "image/png");
        assert_eq!(content_type(b"\xff\xd8\xff\xe0\0\x10JFIF", Path::new("x.png")), "image/jpeg");
        assert_eq!(content_type(b"<?xml version='1.0'?><svg xmlns=''/>", Path::new("x")), "image/svg+xml");
        assert_eq!(content_type(b"#!/bin/sh", Path::new("x.sh")), "application/octet-stream");
    }
}
