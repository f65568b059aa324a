//! Exact search over the whole gallery, held in memory.
//!
//! Vectors live in two contiguous row-major `f32` matrices (one row per gallery image, one
//! row per caption); a query is one dot product per row, parallel over rows with rayon, with
//! a kernel written so that LLVM vectorises it (independent accumulator lanes). Top-k is a
//! partial selection (`select_nth_unstable_by`) followed by a sort of the k survivors.
//! Equal scores are ranked by gallery order (path order), so results are deterministic.

use std::collections::HashMap;

use anyhow::{bail, Context};
use rayon::prelude::*;

use crate::store::{GalleryRow, Store, StoreError};

/// How a gallery image is scored against a query vector (all scores are cosines).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scoring {
    /// Against the image's captions; an image with several captions scores the best one.
    Caption,
    /// Against the image embedding.
    Image,
    /// `caption_weight * caption score + (1 - caption_weight) * image score`.
    Fused { caption_weight: f32 },
}

/// One search result.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Hit {
    /// 1-based.
    pub rank: usize,
    pub score: f32,
    pub path: String,
    pub domain: String,
    /// The image's caption that best matches the query.
    pub caption: String,
    /// Position of the image in the gallery.
    #[serde(skip)]
    pub entry: usize,
}

/// The searchable gallery: every indexed file with its vectors.
#[derive(Clone, Debug, Default)]
pub struct Gallery {
    dim: usize,
    paths: Vec<String>,
    domain_of: Vec<u32>,
    domain_names: Vec<String>,
    /// All captions, grouped by image: captions of image i are
    /// `caption_start[i]..caption_start[i + 1]`.
    captions: Vec<String>,
    caption_start: Vec<usize>,
    /// `len() × dim`, row-major.
    image_matrix: Vec<f32>,
    /// `captions.len() × dim`, row-major.
    caption_matrix: Vec<f32>,
    /// Rows announced by the store before loading (allocation hint only).
    expected_rows: usize,
}

/// Dot product written for auto-vectorisation: 16 independent lanes let LLVM keep them in
/// SIMD registers (a single running sum would serialise on the floating-point adds).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut lanes = [0.0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            lanes[i] += x[i] * y[i];
        }
    }
    let mut sum = 0.0;
    for l in lanes {
        sum += l;
    }
    for (x, y) in ra.iter().zip(rb) {
        sum += x * y;
    }
    sum
}

impl Gallery {
    pub fn new(dim: usize) -> Self {
        Self { dim, caption_start: vec![0], ..Default::default() }
    }

    /// Loads every indexed file (optionally only one domain) of `store`.
    pub fn load(store: &dyn Store, domain: Option<&str>) -> anyhow::Result<Self> {
        let mut gallery = Gallery::new(0);
        gallery.expected_rows = store.gallery_len_hint(domain)?.unwrap_or(1024);
        store.scan_gallery(domain, &mut |row| gallery.push_row(row).map_err(|e| StoreError::Corrupt(format!("{e:#}"))))?;
        Ok(gallery)
    }

    fn push_row(&mut self, row: GalleryRow<'_>) -> anyhow::Result<()> {
        let dim = row.image_embedding.len_f32();
        if self.paths.is_empty() && self.dim == 0 {
            self.dim = dim;
        }
        if dim != self.dim || dim == 0 {
            bail!("{}: image embedding of dimension {dim}, expected {}", row.path, self.dim);
        }
        if row.captions.is_empty() || row.caption_embeddings.len_f32() != row.captions.len() * dim {
            bail!("{}: {} caption floats for {} captions", row.path, row.caption_embeddings.len_f32(), row.captions.len());
        }
        if self.paths.is_empty() {
            // Allocate once on the first row (most galleries have one caption per image):
            // growing a 200 MB matrix by doubling would copy it several times.
            let rows = self.expected_rows.max(1);
            self.image_matrix.reserve_exact(rows * dim);
            self.caption_matrix.reserve(rows * dim * row.captions.len());
            self.paths.reserve(rows);
            self.domain_of.reserve(rows);
            self.caption_start.reserve(rows);
            self.captions.reserve(rows * row.captions.len());
        }
        row.image_embedding.extend_into(&mut self.image_matrix);
        row.caption_embeddings.extend_into(&mut self.caption_matrix);
        self.push_meta(row.path.to_owned(), row.domain, row.captions);
        Ok(())
    }

    fn push_meta(&mut self, path: String, domain: &str, captions: Vec<String>) {
        let domain_id = match self.domain_names.iter().position(|d| d == domain) {
            Some(i) => i,
            None => {
                self.domain_names.push(domain.to_owned());
                self.domain_names.len() - 1
            }
        };
        self.paths.push(path);
        self.domain_of.push(domain_id as u32);
        self.captions.extend(captions);
        self.caption_start.push(self.captions.len());
    }

    /// Appends an image (for tests, benchmarks and callers that do not use a store).
    /// `caption_embeddings` holds one row of `dim` floats per caption.
    pub fn push(
        &mut self,
        path: &str,
        domain: &str,
        captions: Vec<String>,
        image_embedding: &[f32],
        caption_embeddings: &[f32],
    ) -> anyhow::Result<()> {
        if image_embedding.len() != self.dim || captions.is_empty() || caption_embeddings.len() != captions.len() * self.dim
        {
            bail!("{path}: vectors do not match dimension {} and {} captions", self.dim, captions.len());
        }
        self.image_matrix.extend_from_slice(image_embedding);
        self.caption_matrix.extend_from_slice(caption_embeddings);
        self.push_meta(path.to_owned(), domain, captions);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.paths.len()
    }
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }
    pub fn dim(&self) -> usize {
        self.dim
    }
    pub fn path(&self, entry: usize) -> &str {
        &self.paths[entry]
    }
    pub fn domain(&self, entry: usize) -> &str {
        &self.domain_names[self.domain_of[entry] as usize]
    }
    pub fn captions(&self, entry: usize) -> &[String] {
        &self.captions[self.caption_start[entry]..self.caption_start[entry + 1]]
    }
    pub fn image_embedding(&self, entry: usize) -> &[f32] {
        &self.image_matrix[entry * self.dim..(entry + 1) * self.dim]
    }
    pub fn domains(&self) -> &[String] {
        &self.domain_names
    }

    fn caption_row(&self, caption: usize) -> &[f32] {
        &self.caption_matrix[caption * self.dim..(caption + 1) * self.dim]
    }

    /// Best caption of `entry` for `query`: (caption index, score); first wins ties.
    fn best_caption(&self, entry: usize, query: &[f32]) -> (usize, f32) {
        let mut best = (self.caption_start[entry], f32::NEG_INFINITY);
        for c in self.caption_start[entry]..self.caption_start[entry + 1] {
            let s = dot(self.caption_row(c), query);
            if s > best.1 {
                best = (c, s);
            }
        }
        best
    }

    fn score(&self, entry: usize, query: &[f32], scoring: Scoring) -> f32 {
        match scoring {
            Scoring::Caption => self.best_caption(entry, query).1,
            Scoring::Image => dot(self.image_embedding(entry), query),
            Scoring::Fused { caption_weight } => {
                caption_weight * self.best_caption(entry, query).1
                    + (1.0 - caption_weight) * dot(self.image_embedding(entry), query)
            }
        }
    }

    /// Scores of every gallery image (in gallery order) for `query`, which is L2-normalised
    /// here. Useful for evaluation, where every rank matters.
    pub fn scores(&self, query: &[f32], scoring: Scoring) -> anyhow::Result<Vec<f32>> {
        let query = self.normalised_query(query)?;
        Ok((0..self.len()).into_par_iter().with_min_len(256).map(|i| self.score(i, &query, scoring)).collect())
    }

    fn normalised_query(&self, query: &[f32]) -> anyhow::Result<Vec<f32>> {
        if query.len() != self.dim {
            bail!("query vector of dimension {} but the gallery's is {}", query.len(), self.dim);
        }
        let norm = query.iter().map(|x| x * x).sum::<f32>().sqrt();
        if !norm.is_finite() || norm == 0.0 {
            bail!("query vector is zero or not finite");
        }
        Ok(query.iter().map(|x| x / norm).collect())
    }

    /// The `k` best gallery images for `query`, optionally only those of `domain`.
    pub fn search(&self, query: &[f32], scoring: Scoring, k: usize, domain: Option<&str>) -> anyhow::Result<Vec<Hit>> {
        if self.is_empty() || k == 0 {
            return Ok(Vec::new());
        }
        let query = self.normalised_query(query).context("cannot search")?;
        let domain_id = match domain {
            None => None,
            Some(d) => match self.domain_names.iter().position(|n| n == d) {
                Some(i) => Some(i as u32),
                None => return Ok(Vec::new()),
            },
        };
        let mut scored: Vec<(f32, u32)> = (0..self.len() as u32)
            .into_par_iter()
            .with_min_len(256)
            .filter(|&i| domain_id.is_none_or(|d| self.domain_of[i as usize] == d))
            .map(|i| (self.score(i as usize, &query, scoring), i))
            .collect();
        // Higher score first; equal scores in gallery order. total_cmp keeps this a total
        // order even if a NaN slipped in (it sorts above +inf and is never silently lost).
        let order = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        if k < scored.len() {
            scored.select_nth_unstable_by(k - 1, order);
            scored.truncate(k);
        }
        scored.sort_unstable_by(order);
        Ok(scored
            .into_iter()
            .enumerate()
            .map(|(rank, (score, i))| {
                let entry = i as usize;
                let (caption, _) = self.best_caption(entry, &query);
                Hit {
                    rank: rank + 1,
                    score,
                    path: self.paths[entry].clone(),
                    domain: self.domain(entry).to_owned(),
                    caption: self.captions[caption].clone(),
                    entry,
                }
            })
            .collect())
    }
}

/// Domain counts of a gallery (for callers that want them without a store).
pub fn domain_counts(gallery: &Gallery) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for i in 0..gallery.len() {
        *counts.entry(gallery.domain(i).to_owned()).or_insert(0) += 1;
    }
    counts
}
