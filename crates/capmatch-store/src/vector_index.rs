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
//! - [`VectorIndex::neighbours`] is the neighbour graph: for each asked image, with its own
//!   image vector as the query, the `k` best *other* images among the candidates, exactly as
//!   a search would rank them (an exact backend again with the whole tie at the cut).
//! - [`VectorIndex::score_pairs`] explains one image's score for another's image vector.

use std::collections::HashSet;

use crate::error::StoreError;

use capmatch_retrieval::{components, same_rank_score, ComponentScores, GalleryVectors, QueryVectors, Target};
use serde::Serialize;

use crate::catalog::ImageEntry;
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

/// Which images a neighbour graph is computed among.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Among<'a> {
    /// Every image.
    All,
    /// The images of one domain.
    Domain(&'a str),
    /// These images (unknown ids are ignored).
    Ids(&'a [ImageId]),
}

/// A neighbour graph: every asked image's image vector searched against the candidates.
#[derive(Debug, Clone, Copy)]
pub struct NeighbourQuery<'a> {
    /// What of the candidates the query images are scored against: `Target::Image` is
    /// image space, `Target::Captions` is the paper's score (an image against the others'
    /// captions).
    pub target: Target,
    /// Neighbours per image (besides the ties at the cut an exact backend adds).
    pub k: usize,
    /// Whose neighbours: these images (unknown ids are left out of the answer); `None`:
    /// every image.
    pub of: Option<&'a [ImageId]>,
    pub among: Among<'a>,
}

/// One image's neighbours, best first; never the image itself.
#[derive(Debug, Clone, PartialEq)]
pub struct Neighbours {
    pub id: ImageId,
    pub hits: Vec<VectorHit>,
}

/// Told how many of a neighbour graph's images are done (called from any thread, in
/// increasing order of `done`, not necessarily for each image).
pub trait GraphProgress: Sync {
    fn progressed(&self, done: usize, total: usize);
}

/// A [`GraphProgress`] that ignores progress.
pub struct NoProgress;

impl GraphProgress for NoProgress {
    fn progressed(&self, _done: usize, _total: usize) {}
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
    /// Images per writer shard and domain, for a store that sharded writers fill (empty
    /// for a local index).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shards: Vec<ShardCount>,
}

/// Images one shard of a sharded run wrote, in one domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShardCount {
    /// The writer's shard, "I/N".
    pub shard: String,
    pub domain: String,
    pub images: u64,
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
    /// Several images' vectors, in the order asked (`None` for an unknown id). A backend
    /// whose every read is a round trip fetches them together.
    fn get_many(&self, ids: &[ImageId]) -> Result<Vec<Option<VectorRecord>>> {
        ids.iter().map(|&id| self.get(id)).collect()
    }
    /// Searches; see the contract.
    fn search(&self, query: &VectorQuery<'_>) -> Result<Vec<VectorHit>>;
    /// Several searches at once (backends may batch them).
    fn search_many(&self, queries: &[VectorQuery<'_>]) -> Result<Vec<Vec<VectorHit>>> {
        queries.iter().map(|q| self.search(q)).collect()
    }
    /// The neighbour graph (see the module documentation), one entry per asked image that
    /// the index holds, in the order asked (index order for `of: None`).
    ///
    /// The default runs one search per image, sent [`NEIGHBOUR_BATCH`] at a time through
    /// [`VectorIndex::search_many`] (or scores the listed candidates exactly for
    /// [`Among::Ids`]); a backend overrides it with something faster that gives the same
    /// answer.
    fn neighbours(&self, query: &NeighbourQuery<'_>, progress: &dyn GraphProgress) -> Result<Vec<Neighbours>> {
        neighbours_by_search(self, query, progress)
    }
    /// Both components of `b`'s score with `a`'s image vector as the query (the two scores
    /// of the pair as a search from `a` sees them), `None` where an id is unknown.
    fn score_pairs(&self, pairs: &[(ImageId, ImageId)]) -> Result<Vec<Option<ComponentScores>>> {
        let ids: Vec<ImageId> = pairs.iter().flat_map(|&(a, b)| [a, b]).collect::<HashSet<_>>().into_iter().collect();
        let records: std::collections::HashMap<ImageId, VectorRecord> =
            self.get_many(&ids)?.into_iter().flatten().map(|r| (r.id, r)).collect();
        pairs
            .iter()
            .map(|(a, b)| {
                let (Some(a), Some(b)) = (records.get(a), records.get(b)) else { return Ok(None) };
                let offsets = [0, b.caption_count() as u32];
                let gallery = GalleryVectors::new(b.image.len(), &b.image, &b.captions, &offsets)
                    .map_err(crate::error::StoreError::InvalidInput)?;
                Ok(Some(components(&gallery, &QueryVectors::one(a.image.len(), &a.image), 0)))
            })
            .collect()
    }
    /// Upserts `records` with what the catalog knows of their files (`entries`, matched by
    /// id), for a store that keeps it: one that writers with separate catalogs share, where
    /// a searcher's catalog lacks the other writers' files (see
    /// [`VectorIndex::stored_entries`]). The default keeps the vectors only.
    fn upsert_with_entries(&mut self, records: &[VectorRecord], entries: &[ImageEntry]) -> Result<()> {
        let _ = entries;
        self.upsert(records)
    }
    /// The entries stored by [`VectorIndex::upsert_with_entries`], in the order asked;
    /// `None` for an id without one, and for every id of a store that keeps none.
    fn stored_entries(&self, ids: &[ImageId]) -> Result<Vec<Option<ImageEntry>>> {
        Ok(vec![None; ids.len()])
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

/// The checks every backend makes before an upsert: one image vector of the index's
/// dimension (`dim`, or the first record's for an empty index, never 0), one or more caption
/// vectors of it, and no id twice. Returns the dimension. Non-empty `records` only.
pub fn check_records(records: &[VectorRecord], dim: Option<usize>) -> Result<usize> {
    let dim = dim.unwrap_or_else(|| records.first().map_or(0, |r| r.image.len()));
    if dim == 0 {
        return Err(StoreError::InvalidInput("an image vector of dimension 0".into()));
    }
    let mut seen = HashSet::new();
    for r in records {
        if r.image.len() != dim {
            return Err(StoreError::Dimension { expected: dim, found: r.image.len() });
        }
        if r.captions.is_empty() || r.captions.len() % dim != 0 {
            return Err(StoreError::InvalidInput(format!(
                "image {}: {} caption floats are not one or more vectors of {dim}",
                r.id,
                r.captions.len()
            )));
        }
        if !seen.insert(r.id) {
            return Err(StoreError::InvalidInput(format!("image {} appears twice in one upsert", r.id)));
        }
    }
    Ok(dim)
}

/// Keeps the `k` best of `hits` (in rank order) and every hit tied with the `k`-th.
pub fn keep_top_k_with_ties(hits: &mut Vec<VectorHit>, k: usize) {
    if hits.len() > k {
        if k == 0 {
            hits.clear();
            return;
        }
        let cut = hits[k - 1].score;
        let end = k + hits[k..].iter().take_while(|h| same_rank_score(h.score, cut)).count();
        hits.truncate(end);
    }
}

/// [`VectorIndex::neighbours`] by the definition: a search of `k + 1` per image (its own
/// image is usually its best match), the image removed; for [`Among::Ids`], the listed
/// images scored exactly.
fn neighbours_by_search<I: VectorIndex + ?Sized>(
    index: &I,
    query: &NeighbourQuery<'_>,
    progress: &dyn GraphProgress,
) -> Result<Vec<Neighbours>> {
    let of: Vec<ImageId> = match query.of {
        Some(ids) => ids.to_vec(),
        None => index.ids()?.into_iter().map(|(id, _)| id).collect(),
    };
    let candidates: Option<Vec<VectorRecord>> = match query.among {
        Among::Ids(ids) => {
            let unique: Vec<ImageId> = ids.iter().copied().collect::<HashSet<_>>().into_iter().collect();
            Some(index.get_many(&unique)?.into_iter().flatten().collect())
        }
        _ => None,
    };
    let domain = match query.among {
        Among::Domain(d) => Some(d),
        _ => None,
    };
    let mut out = Vec::with_capacity(of.len());
    let mut done = 0;
    for chunk in of.chunks(NEIGHBOUR_BATCH) {
        let records: Vec<VectorRecord> = index.get_many(chunk)?.into_iter().flatten().collect();
        let found = match &candidates {
            Some(listed) => records.iter().map(|r| exact_hits(listed, &r.image, query.target)).collect(),
            None => {
                let searches: Vec<VectorQuery<'_>> = records
                    .iter()
                    .map(|r| VectorQuery { vectors: &r.image, target: query.target, k: query.k + 1, domain })
                    .collect();
                index.search_many(&searches)?
            }
        };
        for (record, mut hits) in records.iter().zip(found) {
            hits.retain(|h| h.id != record.id);
            keep_top_k_with_ties(&mut hits, query.k);
            out.push(Neighbours { id: record.id, hits });
        }
        done += chunk.len();
        progress.progressed(done, of.len());
    }
    Ok(out)
}

/// Images whose searches the default neighbour graph sends together: one round trip for
/// a remote backend, small enough that progress moves.
pub const NEIGHBOUR_BATCH: usize = 256;

/// Every record scored for `query` under `target`, in rank order (equal scores by id).
fn exact_hits(records: &[VectorRecord], query: &[f32], target: Target) -> Vec<VectorHit> {
    let mut hits: Vec<VectorHit> = records
        .iter()
        .map(|r| {
            let offsets = [0, r.caption_count() as u32];
            let gallery = GalleryVectors::new(r.image.len(), &r.image, &r.captions, &offsets).expect("a stored record is well formed");
            let c = components(&gallery, &QueryVectors::one(query.len(), query), 0);
            VectorHit { id: r.id, score: target.combine(c.caption, c.image), components: c }
        })
        .collect();
    hits.sort_by_key(|h| (capmatch_retrieval::rank_key(h.score, 0), h.id));
    hits
}
