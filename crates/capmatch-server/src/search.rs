//! `POST /api/search`: a query as JSON or as a multipart form with an image file, to an
//! engine [`SearchRequest`]; the engine's hits, with the URLs of their images.

use std::collections::HashMap;
use std::time::Instant;

use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::Json;
use capmatch_engine::{Hit, ImageId, Mode, Query, SearchRequest, SearchResponse};
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ApiResult};
use crate::images::{image_url, thumb_url};
use crate::state::{AppState, Ready};

/// Most results one request may ask for.
pub const MAX_K: usize = 1000;
pub const DEFAULT_K: usize = 20;

/// An image id in JSON: a number, or a string of digits (what a URL or a form gives).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum IdParam {
    Number(u64),
    Text(String),
}

/// The JSON body (and, as strings, the form fields) of a search.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchBody {
    text: Option<String>,
    image_id: Option<IdParam>,
    vector: Option<Vec<f32>>,
    mode: Option<String>,
    k: Option<usize>,
    weight: Option<f32>,
    domain: Option<String>,
    min_score: Option<f32>,
}

/// One hit as the API shows it.
#[derive(Debug, Serialize)]
pub struct HitView {
    #[serde(flatten)]
    pub hit: Hit,
    pub image_url: String,
    pub thumb_url: String,
}

#[derive(Debug, Serialize)]
pub struct SearchAnswer {
    pub mode: Mode,
    pub hits: Vec<HitView>,
    /// Time spent on the server, queueing and batching included.
    pub took_ms: f64,
}

/// Runs a search through the batcher (concurrent requests are embedded together).
pub async fn batched(ready: &Ready, request: SearchRequest) -> ApiResult<SearchResponse> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    ready.batcher.submit(request, move |answer| {
        // The client may have gone (a time-out): nobody to tell.
        let _ = tx.send(answer);
    });
    Ok(rx.await.map_err(|_| ApiError::internal("the search stopped without an answer"))??)
}

pub async fn search(State(state): State<AppState>, request: Request) -> ApiResult<Json<SearchAnswer>> {
    let started = Instant::now();
    let ready = state.ready()?;
    let is_multipart = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("multipart/form-data"));
    let request = if is_multipart {
        from_form(Multipart::from_request(request, &state).await?).await?
    } else {
        let bytes = axum::body::Bytes::from_request(request, &state).await?;
        let body: SearchBody = serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_request(format!("the search body is not valid JSON for a search: {e}")))?;
        to_request(body, None)?
    };
    let response = batched(&ready, request).await?;
    Ok(Json(SearchAnswer {
        mode: response.mode,
        hits: response
            .hits
            .into_iter()
            .map(|hit| HitView { image_url: image_url(hit.id), thumb_url: thumb_url(hit.id), hit })
            .collect(),
        took_ms: started.elapsed().as_secs_f64() * 1e3,
    }))
}

/// A multipart search: an `image` file part and the options as text fields.
async fn from_form(mut form: Multipart) -> ApiResult<SearchRequest> {
    let mut image: Option<(String, Vec<u8>)> = None;
    let mut fields: HashMap<String, String> = HashMap::new();
    while let Some(field) = form.next_field().await? {
        let name = field.name().unwrap_or_default().to_owned();
        if name == "image" {
            if image.is_some() {
                return Err(ApiError::invalid("a search takes one image"));
            }
            let file_name = field.file_name().unwrap_or("query").to_owned();
            image = Some((file_name, field.bytes().await?.to_vec()));
        } else {
            let value = field.text().await?;
            if fields.insert(name.clone(), value).is_some() {
                return Err(ApiError::invalid(format!("the field {name:?} is given twice")));
            }
        }
    }
    let body = body_of_fields(fields)?;
    to_request(body, image)
}

fn body_of_fields(mut fields: HashMap<String, String>) -> ApiResult<SearchBody> {
    fn number<T: std::str::FromStr>(fields: &mut HashMap<String, String>, name: &str) -> ApiResult<Option<T>> {
        match fields.remove(name) {
            None => Ok(None),
            Some(v) if v.trim().is_empty() => Ok(None),
            Some(v) => v.trim().parse().map(Some).map_err(|_| ApiError::invalid(format!("{name} must be a number, not {v:?}"))),
        }
    }
    let vector = match fields.remove("vector") {
        None => None,
        Some(v) => Some(serde_json::from_str(&v).map_err(|_| ApiError::invalid("vector must be a JSON array of numbers"))?),
    };
    let body = SearchBody {
        k: number(&mut fields, "k")?,
        weight: number(&mut fields, "weight")?,
        min_score: number(&mut fields, "min_score")?,
        image_id: fields.remove("image_id").map(IdParam::Text),
        text: fields.remove("text"),
        mode: fields.remove("mode"),
        domain: fields.remove("domain"),
        vector,
    };
    if let Some(name) = fields.keys().next() {
        return Err(ApiError::invalid(format!("unknown field {name:?}")));
    }
    Ok(body)
}

fn to_request(body: SearchBody, image: Option<(String, Vec<u8>)>) -> ApiResult<SearchRequest> {
    let text = body.text.filter(|t| !t.trim().is_empty());
    let given = [text.is_some(), body.image_id.is_some(), body.vector.is_some(), image.is_some()].iter().filter(|g| **g).count();
    if given != 1 {
        return Err(ApiError::invalid(format!(
            "a search needs exactly one query: \"text\", \"image_id\", \"vector\" or an image file (got {given})"
        )));
    }
    let query = if let Some(text) = text {
        Query::Text(text)
    } else if let Some(id) = body.image_id {
        Query::ImageId(parse_image_id(id)?)
    } else if let Some(vector) = body.vector {
        Query::Vector(vector)
    } else {
        let (name, bytes) = image.expect("one query is given");
        Query::ImageBytes { name, bytes }
    };
    let mode = match body.mode.as_deref().map(str::trim).filter(|m| !m.is_empty()) {
        None => Mode::Caption,
        Some(m) => m.parse::<Mode>().map_err(|e| ApiError::invalid(e.to_string()))?,
    };
    let k = body.k.unwrap_or(DEFAULT_K);
    if k == 0 || k > MAX_K {
        return Err(ApiError::invalid(format!("k must be between 1 and {MAX_K}, not {k}")));
    }
    let mut request = SearchRequest::new(query, mode, k);
    if let Some(w) = body.weight {
        request.weight = w;
    }
    request.domain = body.domain.filter(|d| !d.trim().is_empty());
    request.min_score = body.min_score;
    Ok(request)
}

fn parse_image_id(id: IdParam) -> ApiResult<ImageId> {
    let n = match id {
        IdParam::Number(n) => Some(n),
        IdParam::Text(s) => s.trim().parse::<u64>().ok(),
    };
    match n {
        Some(n) if (1..=ImageId::MAX).contains(&n) => Ok(ImageId(n)),
        _ => Err(ApiError::invalid("image_id must be the number of an indexed image")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(v: serde_json::Value) -> ApiResult<SearchRequest> {
        to_request(serde_json::from_value(v).map_err(|e| ApiError::bad_request(e.to_string()))?, None)
    }

    #[test]
    fn json_bodies_become_engine_requests() {
        let r = json(serde_json::json!({"text": "a lemon"})).unwrap();
        assert!(matches!(r.query, Query::Text(ref t) if t == "a lemon"));
        assert_eq!((r.mode, r.k, r.weight, r.domain, r.min_score), (Mode::Caption, DEFAULT_K, 0.5, None, None));
        let r = json(serde_json::json!({"image_id": "42", "mode": "fused", "k": 7, "weight": 0.2, "domain": "photo", "min_score": 0.1}))
            .unwrap();
        assert!(matches!(r.query, Query::ImageId(ImageId(42))));
        assert_eq!((r.mode, r.k, r.weight, r.domain.as_deref(), r.min_score), (Mode::Fused, 7, 0.2, Some("photo"), Some(0.1)));
        assert!(matches!(json(serde_json::json!({"image_id": 9})).unwrap().query, Query::ImageId(ImageId(9))));
        assert!(matches!(json(serde_json::json!({"vector": [1.0, 0.0], "mode": "caption-text"})).unwrap().query, Query::Vector(_)));
    }

    #[test]
    fn bad_parameters_are_422_and_bad_shapes_400() {
        for bad in [
            serde_json::json!({}),
            serde_json::json!({"text": "  "}),
            serde_json::json!({"text": "a", "image_id": 3}),
            serde_json::json!({"text": "a", "k": 0}),
            serde_json::json!({"text": "a", "k": 1001}),
            serde_json::json!({"text": "a", "mode": "colour"}),
            serde_json::json!({"image_id": "../etc"}),
            serde_json::json!({"image_id": 0}),
        ] {
            assert_eq!(json(bad.clone()).unwrap_err().status, axum::http::StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
        }
        for bad in [serde_json::json!({"text": 3}), serde_json::json!({"txt": "a"}), serde_json::json!({"text": "a", "k": -1})] {
            assert_eq!(json(bad.clone()).unwrap_err().status, axum::http::StatusCode::BAD_REQUEST, "{bad}");
        }
    }

    #[test]
    fn form_fields_are_parsed_like_json() {
        let fields: HashMap<String, String> =
            [("k", "5"), ("mode", "image"), ("domain", ""), ("weight", "0.3")].iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        let r = to_request(body_of_fields(fields).unwrap(), Some(("q.png".into(), vec![1, 2]))).unwrap();
        assert!(matches!(r.query, Query::ImageBytes { .. }));
        assert_eq!((r.mode, r.k, r.weight, r.domain), (Mode::Image, 5, 0.3, None));
        let fields: HashMap<String, String> = [("k", "many")].iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        assert_eq!(body_of_fields(fields).unwrap_err().status, axum::http::StatusCode::UNPROCESSABLE_ENTITY);
        let fields: HashMap<String, String> = [("colour", "red")].iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        assert!(body_of_fields(fields).is_err());
    }
}
