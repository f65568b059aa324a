//! The vector index: every image's vectors, keyed by [`ImageId`], and search over them.
//!
//! # The contract (checked by [`crate::contract`] for every backend)
//!
//! - An image has one image vector and one or more caption vectors, all of the index's
//!   dimension, stored as given (callers normalise them; the index never rescales).
//! - [`VectorIndex::upsert`] and [`VectorIndex::remove`] are each atomic: after a crash the
//!   index holds all of a call's change or none of it. Upserting an existing id replaces it.
//! - [`VectorIndex::search`] scores every image as `capmatch_retrieval` defines it — by its
//!   best caption, its image, or both fused; with several query vectors, by the best one —
//!   keeps the images of the asked domain, and returns the `k` best in rank order (score
//!   descending, NaN last). An exact backend also returns every image tied with the `k`-th
//!   score (`VectorHit`s beyond `k`), so that the caller can order a tie by its own gallery
//!   order; an approximate backend returns its best effort, with exact scores.
//! - Each hit carries both components of its score and which caption matched.

use capmatch_retrieval::{ComponentScores, Target};
use serde::Serialize;

use crate::error::Result;
use crate::id::ImageId;

/// The vectors of one image.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorRecord {
    pub id: ImageId,
    /// Domain tag (searches can be restricted to one).
    pub domain: String,
    pub image: Vec<f32>,
    /// One row of `dim` floats per caption, in caption order.
    pub captions: Vec<f32>,
}

impl VectorRecord {
    pub fn caption_count(&self) -> usize {
        if self.image.is_empty() { 0 } else { self.captions.len() / self.image.len() }
    }
}

/// A search of the index.
#[derive(Debug, Clone)]
pub struct VectorQuery<'a> {
    /// One or more query vectors (rows of the index's dimension): the image scores by the
    /// best of them.
    pub vectors: &'a [f32],
    pub target: Target,
    pub k: usize,
    /// Only images of this domain.
    pub domain: Option<&'a str>,
}

/// One result of a search.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorHit {
    pub id: ImageId,
    pub score: f32,
    pub components: ComponentScores,
}

/// What `capmatch info` shows of the vector index.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IndexStats {
    /// "exact", "hnsw", "milvus"...
    pub backend: String,
    /// Where it is (a folder, a server address).
    pub location: String,
    pub dim: Option<usize>,
    pub images: u64,
    pub captions: u64,
    /// Bytes on disk (0 when not local).
    pub disk_bytes: u64,
    /// Space held by removed or replaced images, reclaimed by compaction.
    pub dead_images: u64,
}

/// The vectors of a gallery. See the module documentation for the contract.
pub trait VectorIndex: Send + Sync {
    /// The dimension, once known.
    fn dim(&self) -> Option<usize>;
    /// Images held.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Inserts or replaces images, atomically.
    fn upsert(&mut self, records: &[VectorRecord]) -> Result<()>;
    /// Removes images (unknown ids are ignored), atomically. Returns how many were removed.
    fn remove(&mut self, ids: &[ImageId]) -> Result<usize>;
    /// One image's vectors.
    fn get(&self, id: ImageId) -> Result<Option<VectorRecord>>;
    /// Searches; see the contract.
    fn search(&self, query: &VectorQuery<'_>) -> Result<Vec<VectorHit>>;
    /// Several searches at once (backends may batch them).
    fn search_many(&self, queries: &[VectorQuery<'_>]) -> Result<Vec<Vec<VectorHit>>> {
        queries.iter().map(|q| self.search(q)).collect()
    }
    /// Every image's id and domain.
    fn ids(&self) -> Result<Vec<(ImageId, String)>>;
    /// A number that changes with every committed change (for reconciling with the
    /// catalog after a crash).
    fn generation(&self) -> u64;
    /// Makes every committed change durable against a machine crash.
    fn flush(&mut self) -> Result<()>;
    /// Picks up changes committed by another process since this one opened or refreshed.
    fn refresh(&mut self) -> Result<()>;
    /// Reclaims the space of removed images, if the backend needs it. Returns whether it
    /// did anything.
    fn compact(&mut self) -> Result<bool> {
        Ok(false)
    }
    fn stats(&self) -> IndexStats;
}
