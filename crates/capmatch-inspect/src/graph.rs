//! The neighbour graphs an inspection reads, computed by the gallery's vector index and kept
//! up to date incrementally between runs.
//!
//! A graph lists, for every query image, its `k` nearest other images among the candidates,
//! in one space: **image** space (image vector against image vectors, the pixels' view) or
//! **caption** space (image vector against the candidates' caption vectors, the paper's
//! score). The queries are every image and the candidates every image, or for a graph
//! `among` a reference domain, the images outside it against the images in it.
//!
//! # Incremental runs
//!
//! The graph is stored beside the catalog ([`crate::cache`]) with the images it was
//! computed over. On the next run, with `new` the images added or changed since (a changed
//! file has a new content hash or domain) and `gone` those removed or changed:
//!
//! - rows of new query images are computed;
//! - rows that listed a gone image are computed again (their k-th neighbour is unknown);
//! - every other row is kept and only searched among the new candidates, the two lists
//!   merged: a new image enters a row's top k exactly when it beats the row's k-th.
//!
//! Each step is exact, so the result equals a graph computed from scratch.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use capmatch_engine::{Among, GraphProgress, NeighbourQuery};
use capmatch_retrieval::{rank_key, Target};
use capmatch_store::{keep_top_k_with_ties, ImageId, VectorHit};

use crate::cache::{self, Cached, Member};
use crate::error::Result;
use crate::source::{Image, Source};

/// What the query images are compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Space {
    /// The candidates' image vectors.
    Image,
    /// The candidates' caption vectors (an image scores by its best caption).
    Caption,
}

impl Space {
    pub fn target(self) -> Target {
        match self {
            Space::Image => Target::Image,
            Space::Caption => Target::Captions,
        }
    }
}

/// Which graph.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GraphSpec {
    pub space: Space,
    pub k: usize,
    /// `None`: every image among every image; `Some(domain)`: the images outside the domain
    /// among the images in it.
    pub among: Option<String>,
}

impl GraphSpec {
    fn is_query(&self, image: &Image) -> bool {
        self.among.as_deref().is_none_or(|d| image.domain != d)
    }

    fn is_candidate(&self, domain: &str) -> bool {
        self.among.as_deref().is_none_or(|d| domain == d)
    }
}

/// A computed graph: each query image's neighbours, best first.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    pub rows: HashMap<ImageId, Vec<VectorHit>>,
}

impl Graph {
    pub fn row(&self, id: ImageId) -> &[VectorHit] {
        self.rows.get(&id).map(Vec::as_slice).unwrap_or(&[])
    }
}

/// How much of a graph this run computed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct GraphWork {
    /// Rows taken from the previous run unchanged.
    pub reused: usize,
    /// Rows computed against every candidate.
    pub computed: usize,
    /// Kept rows searched among the new candidates only.
    pub updated: usize,
    /// New candidates those rows were searched among.
    pub new_candidates: usize,
}

/// The graph of `spec` over `images`, from the cache in `cache_dir` where it can be, which
/// is then updated.
pub fn build(
    source: &dyn Source,
    images: &[Image],
    spec: &GraphSpec,
    cache_dir: Option<&Path>,
    progress: &dyn GraphProgress,
) -> Result<(Graph, GraphWork)> {
    let generation = source.generation()?;
    let members: Vec<Member> =
        images.iter().map(|i| Member { id: i.id, hash: i.hash.clone(), domain: i.domain.clone() }).collect();
    let queries: Vec<ImageId> = images.iter().filter(|i| spec.is_query(i)).map(|i| i.id).collect();
    let among = match &spec.among {
        Some(d) => Among::Domain(d),
        None => Among::All,
    };
    let cached = cache_dir.and_then(|dir| cache::load(dir, spec));
    let mut work = GraphWork::default();
    let graph = match cached {
        Some(c) if c.generation == generation && c.members == members => {
            work.reused = c.rows.len();
            Graph { rows: c.rows.into_iter().collect() }
        }
        Some(c) => update(source, spec, c, &members, &queries, among, progress, &mut work)?,
        None => {
            work.computed = queries.len();
            let rows = source.neighbours(&query(spec, Some(&queries), among), progress)?;
            Graph { rows: rows.into_iter().map(|n| (n.id, n.hits)).collect() }
        }
    };
    if let Some(dir) = cache_dir {
        let mut rows: Vec<(ImageId, Vec<VectorHit>)> = graph.rows.iter().map(|(id, h)| (*id, h.clone())).collect();
        rows.sort_by_key(|r| r.0);
        let stored = Cached { spec: spec.clone(), generation, members, rows };
        if let Err(e) = cache::save(dir, &stored) {
            // The report does not depend on it: the next run just computes more.
            tracing::warn!("cannot keep the neighbour graph for the next run: {e}");
        }
    }
    Ok((graph, work))
}

fn query<'a>(spec: &GraphSpec, of: Option<&'a [ImageId]>, among: Among<'a>) -> NeighbourQuery<'a> {
    NeighbourQuery { target: spec.space.target(), k: spec.k, of, among }
}

/// The incremental update (see the module documentation).
#[allow(clippy::too_many_arguments)]
fn update(
    source: &dyn Source,
    spec: &GraphSpec,
    cached: Cached,
    members: &[Member],
    queries: &[ImageId],
    among: Among<'_>,
    progress: &dyn GraphProgress,
    work: &mut GraphWork,
) -> Result<Graph> {
    let before: HashSet<&Member> = cached.members.iter().collect();
    let now: HashSet<&Member> = members.iter().collect();
    let gone: HashSet<ImageId> = cached.members.iter().filter(|m| !now.contains(m)).map(|m| m.id).collect();
    let new: Vec<&Member> = members.iter().filter(|m| !before.contains(m)).collect();
    let new_ids: HashSet<ImageId> = new.iter().map(|m| m.id).collect();
    let new_candidates: Vec<ImageId> = new.iter().filter(|m| spec.is_candidate(&m.domain)).map(|m| m.id).collect();

    let mut old: HashMap<ImageId, Vec<VectorHit>> = cached.rows.into_iter().collect();
    let mut recompute = Vec::new();
    let mut keep = Vec::new();
    for &id in queries {
        match old.get(&id) {
            Some(hits) if !new_ids.contains(&id) && !hits.iter().any(|h| gone.contains(&h.id)) => keep.push(id),
            _ => recompute.push(id),
        }
    }
    let mut rows: HashMap<ImageId, Vec<VectorHit>> = HashMap::with_capacity(queries.len());
    if !recompute.is_empty() {
        for n in source.neighbours(&query(spec, Some(&recompute), among), progress)? {
            rows.insert(n.id, n.hits);
        }
    }
    work.computed = recompute.len();
    if new_candidates.is_empty() {
        work.reused = keep.len();
        for id in keep {
            rows.insert(id, old.remove(&id).unwrap_or_default());
        }
    } else {
        work.updated = keep.len();
        work.new_candidates = new_candidates.len();
        let fresh = source.neighbours(&query(spec, Some(&keep), Among::Ids(&new_candidates)), progress)?;
        let mut fresh: HashMap<ImageId, Vec<VectorHit>> = fresh.into_iter().map(|n| (n.id, n.hits)).collect();
        for id in keep {
            let mut hits = old.remove(&id).unwrap_or_default();
            hits.extend(fresh.remove(&id).unwrap_or_default());
            hits.sort_by_key(|h| (rank_key(h.score, 0), h.id));
            keep_top_k_with_ties(&mut hits, spec.k);
            rows.insert(id, hits);
        }
    }
    Ok(Graph { rows })
}
