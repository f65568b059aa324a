//! Search: a query in any form, in any mode, against the gallery.

use std::path::PathBuf;

use capmatch_core::image_io::{decode_bytes, decode_file};
use capmatch_core::RgbImage;
use capmatch_retrieval::{normalized, rank_key, Mode};
use capmatch_store::{ImageId, VectorHit, VectorQuery};
use serde::Serialize;

use crate::error::{EngineError, Result};
use crate::Engine;

/// Most results one search returns.
pub const MAX_K: usize = 10_000;

/// What to search with.
#[derive(Debug, Clone)]
pub enum Query {
    /// A text (embedded with CLIP's text tower).
    Text(String),
    /// An image file's bytes (an upload), with a name for messages.
    ImageBytes { name: String, bytes: Vec<u8> },
    /// An image file on this machine.
    ImagePath(PathBuf),
    /// An image already decoded.
    Image(RgbImage),
    /// A vector of the index's dimension (normalised here).
    Vector(Vec<f32>),
    /// An image of the gallery ("more like this").
    ImageId(ImageId),
}

impl Query {
    fn is_text(&self) -> bool {
        matches!(self, Query::Text(_))
    }
}

/// A search.
#[derive(Debug, Clone)]
pub struct SearchRequest {
    pub query: Query,
    pub mode: Mode,
    /// How many results (ties at the cut are ordered by path).
    pub k: usize,
    /// Weight of the caption score in `fused` mode, in [0, 1].
    pub weight: f32,
    /// Only images of this domain.
    pub domain: Option<String>,
    /// Only results scoring at least this.
    pub min_score: Option<f32>,
    /// Scan every image even where the approximate index could answer.
    pub exact: bool,
}

impl SearchRequest {
    pub fn new(query: Query, mode: Mode, k: usize) -> Self {
        Self { query, mode, k, weight: 0.5, domain: None, min_score: None, exact: false }
    }
}

/// The two components of a hit's score: what the captions and what the pixels say.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ComponentScores {
    /// Best query-to-caption cosine.
    pub caption: Option<f32>,
    /// Query-to-image cosine.
    pub image: Option<f32>,
}

/// One result, with what a front end needs to show why it matched.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hit {
    /// 1-based.
    pub rank: usize,
    pub score: f32,
    pub id: ImageId,
    pub path: String,
    pub domain: String,
    /// The caption that best matches the query.
    pub caption: String,
    /// All the image's captions.
    pub captions: Vec<String>,
    /// Which of `captions` matched (0-based).
    pub matched_caption: Option<usize>,
    pub scores: ComponentScores,
}

/// The results of a search.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SearchResponse {
    pub mode: Mode,
    pub hits: Vec<Hit>,
}

fn finite(x: f32) -> Option<f32> {
    x.is_finite().then_some(x)
}

impl Engine {
    /// Searches the gallery. See [`SearchRequest`].
    pub fn search(&self, request: &SearchRequest) -> Result<SearchResponse> {
        Ok(self.search_many(std::slice::from_ref(request))?.pop().expect("one response per request"))
    }

    /// Several searches (their queries are embedded together where they can be).
    pub fn search_many(&self, requests: &[SearchRequest]) -> Result<Vec<SearchResponse>> {
        for r in requests {
            validate(r)?;
        }
        self.storage.follow_writer()?;
        let vectors = self.query_vectors(requests)?;
        let index = self.storage.index();
        let queries: Vec<VectorQuery<'_>> = requests
            .iter()
            .zip(&vectors)
            .map(|(r, v)| VectorQuery { vectors: v, target: r.mode.target(r.weight), k: r.k, domain: r.domain.as_deref() })
            .collect();
        // The approximate index where it is usable, the exact scan where asked for.
        let (exact, approximate): (Vec<usize>, Vec<usize>) = (0..requests.len()).partition(|&i| requests[i].exact);
        let pick = |which: &[usize]| which.iter().map(|&i| queries[i].clone()).collect::<Vec<_>>();
        let mut found: Vec<Vec<VectorHit>> = vec![Vec::new(); requests.len()];
        for (i, hits) in exact.iter().zip(index.search_many_exact(&pick(&exact))?) {
            found[*i] = hits;
        }
        for (i, hits) in approximate.iter().zip(index.search_many(&pick(&approximate))?) {
            found[*i] = hits;
        }
        drop(index);
        let mut out = Vec::with_capacity(requests.len());
        for (request, hits) in requests.iter().zip(found) {
            let ids: Vec<ImageId> = hits.iter().map(|h| h.id).collect();
            let entries = self.storage.entries(&ids)?;
            let mut resolved: Vec<Hit> = hits
                .into_iter()
                .zip(entries)
                // A hit without an entry is a writer's uncommitted or orphaned vector (see
                // storage): never shown. (In a shared store, other writers' images have
                // their entries in the store.)
                .filter_map(|(h, entry)| entry.map(|e| (h, e)))
                .map(|(h, e)| {
                    let matched = h.components.best_caption;
                    Hit {
                        rank: 0,
                        score: h.score,
                        id: h.id,
                        caption: matched.and_then(|i| e.captions.get(i)).cloned().unwrap_or_default(),
                        captions: e.captions,
                        path: e.path,
                        domain: e.domain,
                        matched_caption: matched,
                        scores: ComponentScores { caption: finite(h.components.caption), image: finite(h.components.image) },
                    }
                })
                .collect();
            // The retrieval order; equal scores in gallery (path) order.
            resolved.sort_by(|a, b| rank_key(a.score, 0).cmp(&rank_key(b.score, 0)).then_with(|| a.path.cmp(&b.path)));
            resolved.truncate(request.k);
            if let Some(min) = request.min_score {
                resolved.retain(|h| h.score >= min);
            }
            for (i, h) in resolved.iter_mut().enumerate() {
                h.rank = i + 1;
            }
            out.push(SearchResponse { mode: request.mode, hits: resolved });
        }
        Ok(out)
    }

    /// Checks a request and decodes its query image, if any (to [`Query::Image`]): what can
    /// fail because of one request alone, done before it joins a batch (see `batching`).
    pub(crate) fn prepared(&self, mut request: SearchRequest) -> Result<SearchRequest> {
        validate(&request)?;
        if let Some(image) = self.decoded(&request.query)? {
            request.query = Query::Image(image);
        }
        Ok(request)
    }

    /// The image of a query given as an encoded file (bytes or a path); `None` for others.
    fn decoded(&self, query: &Query) -> Result<Option<RgbImage>> {
        Ok(Some(match query {
            Query::ImageBytes { name, bytes } => {
                decode_bytes(bytes, &self.limits).map_err(|e| EngineError::Image { name: Some(name.clone()), source: e })?
            }
            Query::ImagePath(p) => {
                decode_file(p, &self.limits).map_err(|e| EngineError::Image { name: Some(p.display().to_string()), source: e })?
            }
            _ => return Ok(None),
        }))
    }

    /// The query vectors of each request (one or more rows), normalised. Texts are embedded
    /// in one batch and images in another.
    fn query_vectors(&self, requests: &[SearchRequest]) -> Result<Vec<Vec<f32>>> {
        let dim = self.storage.index().dim();
        let mut out: Vec<Option<Vec<f32>>> = vec![None; requests.len()];
        let mut texts: Vec<(usize, &str)> = Vec::new();
        let mut images: Vec<(usize, RgbImage)> = Vec::new();
        for (i, r) in requests.iter().enumerate() {
            match &r.query {
                Query::Text(t) => texts.push((i, t.as_str())),
                Query::ImageBytes { .. } | Query::ImagePath(_) => {
                    images.push((i, self.decoded(&r.query)?.expect("an encoded image query")))
                }
                Query::Image(img) => images.push((i, img.clone())),
                Query::Vector(v) => {
                    let d = dim.ok_or_else(|| EngineError::EmptyIndex(self.storage.db().display().to_string()))?;
                    let v = normalized(v, d).map_err(|e| EngineError::invalid(format!("query vector: {e}")))?;
                    out[i] = Some(v);
                }
                Query::ImageId(id) => {
                    let record = self
                        .storage
                        .index()
                        .get(*id)?
                        .ok_or_else(|| EngineError::NotFound(format!("no image with id {id} in the gallery")))?;
                    out[i] = Some(if r.mode.queries_with_captions() { record.captions } else { record.image });
                }
            }
        }
        if !texts.is_empty() {
            let models = self.models()?;
            let strs: Vec<&str> = texts.iter().map(|(_, t)| *t).collect();
            let vectors = models.embed_texts(&strs).map_err(EngineError::Model)?;
            for ((i, _), v) in texts.iter().zip(vectors) {
                out[*i] = Some(self.checked(v, dim)?);
            }
        }
        if !images.is_empty() {
            let models = self.models()?;
            let (with_captions, plain): (Vec<_>, Vec<_>) =
                images.into_iter().partition(|(i, _)| requests[*i].mode.queries_with_captions());
            if !plain.is_empty() {
                let imgs: Vec<RgbImage> = plain.iter().map(|(_, img)| img.clone()).collect();
                let vectors = models.embed_images(&imgs).map_err(EngineError::Model)?;
                for ((i, _), v) in plain.iter().zip(vectors) {
                    out[*i] = Some(self.checked(v, dim)?);
                }
            }
            if !with_captions.is_empty() {
                // caption-text: the query image is captioned, its captions are the query.
                let imgs: Vec<RgbImage> = with_captions.iter().map(|(_, img)| img.clone()).collect();
                let captions = models.caption(&imgs).map_err(EngineError::Model)?;
                for ((i, _), caps) in with_captions.iter().zip(captions) {
                    let refs: Vec<&str> = caps.iter().map(String::as_str).collect();
                    let vectors = models.embed_texts(&refs).map_err(EngineError::Model)?;
                    let mut rows = Vec::new();
                    for v in vectors {
                        rows.extend(self.checked(v, dim)?);
                    }
                    out[*i] = Some(rows);
                }
            }
        }
        Ok(out.into_iter().map(|v| v.expect("every query embedded")).collect())
    }

    fn checked(&self, v: Vec<f32>, dim: Option<usize>) -> Result<Vec<f32>> {
        let d = dim.unwrap_or(v.len());
        normalized(&v, d).map_err(|e| {
            EngineError::ModelMismatch(format!("the query's vector does not fit the index ({e}): was the index built with this CLIP?"))
        })
    }
}

fn validate(r: &SearchRequest) -> Result<()> {
    if r.k == 0 || r.k > MAX_K {
        return Err(EngineError::invalid(format!("k must be between 1 and {MAX_K}, not {}", r.k)));
    }
    if !(0.0..=1.0).contains(&r.weight) {
        return Err(EngineError::invalid(format!("the fused weight must be between 0 and 1, not {}", r.weight)));
    }
    if r.min_score.is_some_and(|m| !m.is_finite()) {
        return Err(EngineError::invalid("min_score must be a number"));
    }
    match (&r.query, r.mode) {
        (q, Mode::Text) if !q.is_text() && !matches!(q, Query::Vector(_)) => {
            Err(EngineError::invalid("mode text needs a text query"))
        }
        (Query::Vector(_), Mode::CaptionText) => Err(EngineError::invalid("mode caption-text needs an image or a text, not a vector")),
        _ => Ok(()),
    }
}
