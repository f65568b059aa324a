//! The routes, and the handlers too small for a module of their own. Handlers parse,
//! call the engine (off the async threads when it blocks) and format; the work is the
//! engine's.

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Path as UrlPath, Request, State};
use axum::http::header::{CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use capmatch_engine::{Info, NoObserver, Upload, UploadOutcome};
use serde::{Deserialize, Serialize};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::TimeoutLayer;

use crate::error::{status_of, ApiError, ApiResult};
use crate::jobs::{JobSpec, JobStatus};
use crate::state::AppState;
use crate::{assets, clip_retrieval, images, metrics, search};

/// Most images one upload request may carry.
pub const MAX_UPLOAD_FILES: usize = 256;
/// Domain of uploads that name none.
pub const UPLOAD_DOMAIN: &str = "uploads";

/// Router options that are not the handlers' business.
#[derive(Debug, Clone)]
pub struct RouterOptions {
    /// Longest a request may take (an upload runs the captioner).
    pub request_timeout: Duration,
    /// Origins allowed to call the API from a browser; empty: CORS off.
    pub cors_origins: Vec<HeaderValue>,
}

impl Default for RouterOptions {
    fn default() -> Self {
        Self { request_timeout: Duration::from_secs(120), cors_origins: Vec::new() }
    }
}

/// Every route of the server over `state`.
pub fn router(state: AppState, options: &RouterOptions) -> Router {
    let mut app = Router::new()
        .route("/", get(assets::page))
        .route("/assets/{file}", get(assets::asset))
        .route("/favicon.svg", get(assets::favicon))
        .route("/healthz", get(healthz))
        .route("/api/info", get(info))
        .route("/api/search", post(search::search))
        .route("/api/images", post(upload))
        .route("/api/images/{id}", get(images::original))
        .route("/api/images/{id}/thumb", get(images::thumbnail))
        .route("/api/index", post(index))
        .route("/api/jobs/{id}", get(job))
        .route("/metrics", get(metrics_text))
        .route("/knn-service", post(clip_retrieval::knn_service))
        .route("/metadata", post(clip_retrieval::metadata))
        .route("/indices-list", get(clip_retrieval::indices_list));
    app = match &state.settings().inspect_dir {
        Some(dir) => app.nest_service("/inspect", tower_http::services::ServeDir::new(dir).append_index_html_on_directories(true)),
        None => app.route("/inspect", get(no_inspect)).route("/inspect/{*rest}", get(no_inspect)),
    };
    let mut app = app
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(state.settings().max_upload_bytes, refuse_oversized))
        .layer(axum::middleware::from_fn_with_state(state.clone(), metrics::record))
        .layer(DefaultBodyLimit::max(state.settings().max_upload_bytes))
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, options.request_timeout))
        .layer(SetResponseHeaderLayer::if_not_present(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")));
    if !options.cors_origins.is_empty() {
        app = app.layer(
            CorsLayer::new()
                .allow_origin(AllowOrigin::list(options.cors_origins.clone()))
                .allow_methods([Method::GET, Method::POST])
                .allow_headers([CONTENT_TYPE, axum::http::header::AUTHORIZATION]),
        );
    }
    app.with_state(state)
}

/// Largest oversized body read to its end before the 413 is sent.
const DRAIN_AT_MOST: u64 = 64 << 20;

/// Answers 413 to a request whose declared length is over the upload limit, before any
/// handler runs, and reads the body it will not use first (up to [`DRAIN_AT_MOST`]). A
/// server that answers and closes while the client is still sending makes the client's
/// next write fail (a broken pipe, or a reset that discards the answer), so a user
/// uploading a too-large photo would see a connection error instead of the reason.
/// Larger bodies are not read: the answer says to close the connection. Bodies of no
/// declared length are cut by `DefaultBodyLimit` as they are read.
async fn refuse_oversized(State(limit): State<usize>, request: Request, next: axum::middleware::Next) -> Response {
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let Some(length) = declared.filter(|&n| n > limit as u64) else {
        return next.run(request).await;
    };
    let error = ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the request body is {length} bytes, over this server's limit of {limit} bytes (--max-upload-mb)"),
    );
    if length > DRAIN_AT_MOST {
        let mut response = error.into_response();
        response.headers_mut().insert(axum::http::header::CONNECTION, HeaderValue::from_static("close"));
        return response;
    }
    let mut body = request.into_body();
    use http_body_util::BodyExt;
    let mut read = 0u64;
    while let Some(Ok(frame)) = body.frame().await {
        read += frame.data_ref().map_or(0, |d| d.len() as u64);
        if read > DRAIN_AT_MOST {
            break;
        }
    }
    error.into_response()
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint")
}

async fn no_inspect() -> ApiError {
    ApiError::not_found("no inspection report: start the server with --inspect-dir DIR")
}

async fn healthz(State(state): State<AppState>) -> Response {
    match state.ready() {
        Ok(_) => (StatusCode::OK, "ok").into_response(),
        Err(e) => e.into_response(),
    }
}

/// The engine's info, and what this server allows.
#[derive(Serialize)]
struct InfoAnswer {
    #[serde(flatten)]
    info: Info,
    server: ServerInfo,
}

#[derive(Serialize)]
struct ServerInfo {
    version: &'static str,
    /// Uploads and index jobs are enabled (a token file was given).
    writable: bool,
    max_upload_bytes: usize,
    max_k: usize,
    /// `indice_name` for clip-retrieval clients.
    index_name: String,
    inspect: bool,
}

async fn info(State(state): State<AppState>) -> ApiResult<Json<InfoAnswer>> {
    let engine = state.ready()?.engine.clone();
    let info = tokio::task::spawn_blocking(move || engine.info()).await??;
    let settings = state.settings();
    Ok(Json(InfoAnswer {
        info,
        server: ServerInfo {
            version: env!("CARGO_PKG_VERSION"),
            writable: settings.auth.writable(),
            max_upload_bytes: settings.max_upload_bytes,
            max_k: search::MAX_K,
            index_name: clip_retrieval::index_name(&state),
            inspect: settings.inspect_dir.is_some(),
        },
    }))
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    let metrics = state.metrics();
    if let Ok(ready) = state.ready() {
        let engine = ready.engine.clone();
        if let Ok(Ok(n)) = tokio::task::spawn_blocking(move || engine.len()).await {
            metrics.gallery_images.set(n as i64);
        }
    }
    for (job_state, n) in state.jobs().counts() {
        metrics.jobs.with_label_values(&[job_state.as_str()]).set(n as i64);
    }
    ([(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"))], metrics.render()).into_response()
}

#[derive(Serialize)]
struct UploadAnswer {
    images: Vec<UploadOutcome>,
    indexed: usize,
}

/// `POST /api/images`: multipart `image` parts (one or more) and an optional `domain`.
async fn upload(State(state): State<AppState>, request: Request) -> Result<Response, Response> {
    state.settings().auth.check(request.headers()).map_err(IntoResponse::into_response)?;
    upload_checked(state, request).await.map_err(IntoResponse::into_response)
}

async fn upload_checked(state: AppState, request: Request) -> ApiResult<Response> {
    let engine = state.ready()?.engine.clone();
    let mut form = Multipart::from_request(request, &state).await?;
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut domain: Option<String> = None;
    while let Some(field) = form.next_field().await? {
        match field.name().unwrap_or_default() {
            "image" => {
                if files.len() == MAX_UPLOAD_FILES {
                    return Err(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("at most {MAX_UPLOAD_FILES} images per upload")));
                }
                let name = field.file_name().map(str::to_owned).unwrap_or_else(|| format!("upload-{}", files.len() + 1));
                files.push((name, field.bytes().await?.to_vec()));
            }
            "domain" => domain = Some(valid_domain(&field.text().await?)?),
            other => return Err(ApiError::invalid(format!("unknown field {other:?} (expected image parts and a domain)"))),
        }
    }
    if files.is_empty() {
        return Err(ApiError::invalid("no image: send the files as multipart parts named \"image\""));
    }
    let domain = domain.unwrap_or_else(|| UPLOAD_DOMAIN.into());
    let uploads: Vec<Upload> = files.into_iter().map(|(name, bytes)| Upload { name, domain: domain.clone(), bytes }).collect();
    let batch = state.settings().index_batch_size;
    let outcomes = tokio::task::spawn_blocking(move || engine.index_uploads(&uploads, batch, &NoObserver)).await??;
    let indexed = outcomes.iter().filter(|o| o.id.is_some()).count();
    let metrics = state.metrics();
    metrics.uploads.with_label_values(&["indexed"]).inc_by(indexed as u64);
    metrics.uploads.with_label_values(&["refused"]).inc_by((outcomes.len() - indexed) as u64);
    // Nothing indexed, all for the same reason: that reason's status (415 for files that
    // are not images, 413 for images over the limits). Otherwise 200 and each file's fate.
    let status = match outcomes.first().and_then(|o| o.error_kind) {
        Some(kind) if indexed == 0 && outcomes.iter().all(|o| o.error_kind == Some(kind)) => status_of(kind),
        _ if indexed == 0 => StatusCode::UNPROCESSABLE_ENTITY,
        _ => StatusCode::OK,
    };
    if status != StatusCode::OK {
        let reasons: Vec<String> = outcomes.iter().map(|o| format!("{}: {}", o.name, o.error.as_deref().unwrap_or("?"))).collect();
        return Err(ApiError::new(status, reasons.join("; ")));
    }
    Ok(Json(UploadAnswer { images: outcomes, indexed }).into_response())
}

fn valid_domain(raw: &str) -> ApiResult<String> {
    let d = raw.trim();
    if d.is_empty() || d.chars().count() > 100 || d.chars().any(char::is_control) {
        return Err(ApiError::invalid("a domain is a name of 1 to 100 printable characters"));
    }
    Ok(d.to_owned())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IndexBody {
    path: String,
    domain: Option<String>,
    #[serde(default)]
    prune: bool,
}

/// `POST /api/index` `{"path": DIR}`: queues an index job over a folder under an allowed
/// root; answers 202 with the job.
async fn index(State(state): State<AppState>, headers: HeaderMap, body: axum::body::Bytes) -> Result<Response, Response> {
    state.settings().auth.check(&headers).map_err(IntoResponse::into_response)?;
    index_checked(state, body).await.map_err(IntoResponse::into_response)
}

async fn index_checked(state: AppState, body: axum::body::Bytes) -> ApiResult<Response> {
    state.ready()?;
    let body: IndexBody = serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("the index body is not valid: {e}")))?;
    let path = allowed_folder(&state.settings().allowed_roots, Path::new(&body.path))?;
    let domain = body.domain.as_deref().map(valid_domain).transpose()?;
    let status = state
        .jobs()
        .submit(JobSpec { path, domain, prune: body.prune })
        .ok_or_else(|| ApiError::unavailable("index jobs are not running (the server is shutting down)"))?;
    Ok((StatusCode::ACCEPTED, Json(status)).into_response())
}

/// The canonical form of `requested` if it is a folder under one of `roots` (canonical).
fn allowed_folder(roots: &[PathBuf], requested: &Path) -> ApiResult<PathBuf> {
    if roots.is_empty() {
        return Err(ApiError::forbidden("indexing folders is disabled: start the server with --allow-index-root DIR"));
    }
    if !requested.is_absolute() {
        return Err(ApiError::invalid("path must be absolute"));
    }
    // Canonical: no `..`, no symbolic link leads out of the roots unseen.
    let canonical = requested
        .canonicalize()
        .map_err(|_| ApiError::not_found(format!("no folder {}", requested.display())))?;
    if !roots.iter().any(|root| canonical.starts_with(root)) {
        return Err(ApiError::forbidden(format!("{} is not under an allowed index root", requested.display())));
    }
    if !canonical.is_dir() {
        return Err(ApiError::invalid(format!("{} is not a folder", requested.display())));
    }
    Ok(canonical)
}

async fn job(State(state): State<AppState>, headers: HeaderMap, UrlPath(raw): UrlPath<String>) -> Result<Json<JobStatus>, Response> {
    state.settings().auth.check(&headers).map_err(IntoResponse::into_response)?;
    raw.parse::<u64>()
        .ok()
        .and_then(|id| state.jobs().get(id))
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no job {raw:?}")).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_folders_under_an_allowed_root_may_be_indexed() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("allowed");
        let inside = root.join("a");
        let outside = tmp.path().join("other");
        std::fs::create_dir_all(&inside).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(inside.join("f.png"), b"x").unwrap();
        let roots = vec![root.canonicalize().unwrap()];
        assert_eq!(allowed_folder(&roots, &inside).unwrap(), inside.canonicalize().unwrap());
        let status = |p: &Path| allowed_folder(&roots, p).unwrap_err().status;
        assert_eq!(status(&inside.join("../../other")), StatusCode::FORBIDDEN);
        assert_eq!(status(&outside), StatusCode::FORBIDDEN);
        assert_eq!(status(&inside.join("f.png")), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(status(&root.join("missing")), StatusCode::NOT_FOUND);
        assert_eq!(status(Path::new("relative/a")), StatusCode::UNPROCESSABLE_ENTITY);
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(&outside, inside.join("escape")).unwrap();
            assert_eq!(status(&inside.join("escape")), StatusCode::FORBIDDEN);
        }
        assert_eq!(allowed_folder(&[], &inside).unwrap_err().status, StatusCode::FORBIDDEN);
        assert_eq!(valid_domain(" photo ").unwrap(), "photo");
        assert!(valid_domain("a\nb").is_err() && valid_domain("").is_err());
    }
}
