//! clip-retrieval compatibility: `POST /knn-service`, `POST /metadata` and
//! `GET /indices-list` as clip-back answers them, so that clip-retrieval's `ClipClient`
//! and clip-front work against capmatch unchanged.
//!
//! clip-back's `modality` names the index searched: `"image"` the image vectors, `"text"`
//! the caption vectors (capmatch's `image`/`text` and `caption` modes). Its other options
//! (deduplication, safety and violence filters, aesthetic weighting, multilingual CLIP)
//! have no counterpart here and are accepted and ignored; `image_url` is refused, since a
//! server that fetches URLs for anyone is a way into the network it sits in.
//!
//! `ClipClient` posts JSON without a `Content-Type`, so the body is read as JSON whatever
//! the header says.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::HOST;
use axum::http::HeaderMap;
use axum::Json;
use base64::Engine as _;
use capmatch_engine::{ImageId, Mode, Query, SearchRequest};
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ApiResult};
use crate::images::image_url;
use crate::search::{batched, MAX_K};
use crate::state::AppState;

#[derive(Debug, Deserialize)]
struct KnnRequest {
    text: Option<String>,
    /// Base64 of an image file (a `data:` URL is accepted too).
    image: Option<String>,
    image_url: Option<String>,
    embedding_input: Option<Vec<f32>>,
    modality: Option<String>,
    num_images: Option<usize>,
    // The rest of clip-back's fields (indice_name, num_result_ids, deduplicate,
    // use_safety_model, use_violence_detector, use_mclip, aesthetic_score,
    // aesthetic_weight) are accepted and ignored.
}

#[derive(Debug, Serialize, PartialEq)]
pub struct KnnHit {
    pub id: u64,
    pub similarity: f32,
    pub url: String,
    pub caption: String,
}

/// Absolute URLs: clip-front shows `url` as it is, from its own origin.
fn base_url(headers: &HeaderMap) -> String {
    let host = headers.get(HOST).and_then(|h| h.to_str().ok()).filter(|h| !h.is_empty()).unwrap_or("localhost");
    format!("http://{host}")
}

pub async fn knn_service(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> ApiResult<Json<Vec<KnnHit>>> {
    let ready = state.ready()?;
    let request: KnnRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("the knn-service body is not valid: {e}")))?;
    let image_index = match request.modality.as_deref().unwrap_or("image") {
        "image" => true,
        "text" => false,
        other => return Err(ApiError::invalid(format!("modality must be \"image\" or \"text\", not {other:?}"))),
    };
    let text = request.text.filter(|t| !t.is_empty());
    let image = request.image.filter(|i| !i.is_empty());
    let query = if let Some(text) = text {
        Query::Text(text)
    } else if let Some(b64) = image {
        let data = b64.split_once(";base64,").map_or(b64.as_str(), |(_, d)| d);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .map_err(|e| ApiError::invalid(format!("image is not valid base64: {e}")))?;
        Query::ImageBytes { name: "image".into(), bytes }
    } else if request.image_url.is_some_and(|u| !u.is_empty()) {
        return Err(ApiError::invalid("image_url is not supported: send the image itself, base64-encoded, as \"image\""));
    } else if let Some(v) = request.embedding_input {
        Query::Vector(v)
    } else {
        return Err(ApiError::invalid("give text, image or embedding_input"));
    };
    let mode = match (image_index, &query) {
        (true, Query::Text(_)) => Mode::Text,
        (true, _) => Mode::Image,
        (false, _) => Mode::Caption,
    };
    let k = request.num_images.unwrap_or(40).clamp(1, MAX_K);
    let response = batched(&ready, SearchRequest::new(query, mode, k)).await?;
    let base = base_url(&headers);
    Ok(Json(
        response
            .hits
            .into_iter()
            .map(|h| KnnHit { id: h.id.0, similarity: h.score, url: format!("{base}{}", image_url(h.id)), caption: h.caption })
            .collect(),
    ))
}

#[derive(Debug, Deserialize)]
struct MetadataRequest {
    ids: Vec<u64>,
}

/// clip-back's `/metadata`: `[{"id", "metadata": {"url", "caption"}}]`, `null` metadata
/// for unknown ids.
pub async fn metadata(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> ApiResult<Json<serde_json::Value>> {
    let engine = state.ready()?.engine.clone();
    let request: MetadataRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("the metadata body is not valid: {e}")))?;
    if request.ids.len() > MAX_K {
        return Err(ApiError::invalid(format!("at most {MAX_K} ids at a time")));
    }
    let ids: Vec<ImageId> = request.ids.iter().map(|&i| ImageId(i)).collect();
    let entries = tokio::task::spawn_blocking(move || engine.entries(&ids)).await??;
    let base = base_url(&headers);
    let out: Vec<serde_json::Value> = request
        .ids
        .iter()
        .zip(entries)
        .map(|(id, e)| {
            let metadata = e.map(|e| {
                serde_json::json!({
                    "url": format!("{base}{}", image_url(e.id)),
                    "caption": e.captions.first().cloned().unwrap_or_default(),
                })
            });
            serde_json::json!({ "id": id, "metadata": metadata })
        })
        .collect();
    Ok(Json(serde_json::Value::Array(out)))
}

/// The name clients pass as `indice_name`: the gallery file's name without extension.
pub fn index_name(state: &AppState) -> String {
    state.settings().db.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "capmatch".into())
}

pub async fn indices_list(State(state): State<AppState>) -> Json<Vec<String>> {
    Json(vec![index_name(&state)])
}
