//! The neighbour graph of the exact index, blockwise.
//!
//! A search scores one query against every row; a graph has as many queries as rows, so it
//! is computed the way a matrix product is: blocks of query rows against chunks of
//! candidate rows, query blocks in parallel, each keeping its own top-k per query.
//!
//! **Screened (image and caption targets, finite vectors).** The bulk of the arithmetic is
//! a general matrix product (`gemm`, packed and cache-blocked like BLAS), whose sums run in
//! another order than the retrieval kernel's and so differ from its scores by rounding.
//! Both are within `γ_n · |q| · |g|` of the true dot product (`γ_n = n·u / (1 − n·u)`, the
//! classic bound for any order of summation, `u = 2⁻²⁴`), so they differ by at most twice
//! that, `ε`. Every candidate whose product score is within `2ε` of the query's k-th best
//! product score is kept, which provably includes the true top k and every tie at its cut;
//! the kept few are then scored with the retrieval kernel and ranked by those scores. The
//! graph is therefore exactly the one a search per image gives, bit for bit, at the speed
//! of a matrix product.
//!
//! **Direct (fused targets, a vector with a NaN or an infinity, or norms large enough to
//! overflow: where no bound holds).**
//! Every score is the kernel's, through `capmatch_retrieval::score_chunk` (batch-invariant:
//! a block gives the scores a single search gives); a score below the query's current k-th
//! costs one comparison ([`TopK::floor`]).

use std::sync::atomic::{AtomicUsize, Ordering};

use capmatch_retrieval::{components, score_chunk, ComponentScores, GalleryVectors, QueryVectors, Ranked, ScoreBlock, Target, TopK};
use rayon::prelude::*;

use crate::vector_index::GraphProgress;

mod screen;

/// Query rows scored together: enough to reuse each candidate chunk many times while it is
/// in cache, few enough to give every core many blocks.
const QUERY_BLOCK: usize = 64;
/// Candidate images per chunk: 256 vectors of 512 floats are 512 KiB, which stays in a
/// core's L2 cache while the query block streams through it.
const CANDIDATE_CHUNK: usize = 256;

/// One row of the graph: the query's position among the candidates (if it is one, so that
/// it is never its own neighbour) and its image vector.
pub(super) struct GraphQuery<'a> {
    pub vector: &'a [f32],
    pub itself: Option<usize>,
}

/// For each query, the `k` best candidates `i` with `keep[i]` (and the ties at the cut), in
/// rank order, as (position, score, components).
pub(super) fn top_k_blockwise(
    candidates: &GalleryVectors<'_>,
    keep: &[bool],
    queries: &[GraphQuery<'_>],
    target: Target,
    k: usize,
    progress: &dyn GraphProgress,
) -> Vec<Vec<(Ranked, ComponentScores)>> {
    match screen::Bound::of(candidates, queries, target) {
        Some(bound) => screen::top_k(candidates, keep, queries, target, k, &bound, progress),
        None => direct(candidates, keep, queries, target, k, progress),
    }
}

/// Every score by the kernel (see the module documentation).
fn direct(
    candidates: &GalleryVectors<'_>,
    keep: &[bool],
    queries: &[GraphQuery<'_>],
    target: Target,
    k: usize,
    progress: &dyn GraphProgress,
) -> Vec<Vec<(Ranked, ComponentScores)>> {
    let dim = candidates.dim;
    let n = candidates.len();
    let total = queries.len();
    let done = AtomicUsize::new(0);
    queries
        .par_chunks(QUERY_BLOCK)
        .flat_map_iter(|block| {
            let mut vectors = Vec::with_capacity(block.len() * dim);
            for q in block {
                vectors.extend_from_slice(q.vector);
            }
            let qv = QueryVectors::rows(dim, &vectors);
            let mut tops: Vec<TopK> = block.iter().map(|_| TopK::new(k, true)).collect();
            let mut scratch = ScoreBlock::default();
            let mut out = Vec::new();
            for start in (0..n).step_by(CANDIDATE_CHUNK) {
                let chunk = start..(start + CANDIDATE_CHUNK).min(n);
                if !keep[chunk.clone()].contains(&true) {
                    continue;
                }
                out.resize(block.len() * chunk.len(), 0.0);
                score_chunk(candidates, &qv, target, chunk.clone(), &mut scratch, &mut out);
                for (q, top) in tops.iter_mut().enumerate() {
                    let itself = block[q].itself;
                    let mut floor = top.floor();
                    for (i, &s) in chunk.clone().zip(&out[q * chunk.len()..(q + 1) * chunk.len()]) {
                        // `s < floor` is false for NaN, which `push` ranks last.
                        if s < floor || !keep[i] || itself == Some(i) {
                            continue;
                        }
                        top.push(s, i as u32);
                        floor = top.floor();
                    }
                }
            }
            let finished = done.fetch_add(block.len(), Ordering::Relaxed) + block.len();
            progress.progressed(finished, total);
            let results: Vec<_> = tops
                .into_iter()
                .zip(block)
                .map(|(top, q)| {
                    let one = QueryVectors::one(dim, q.vector);
                    top.finish().into_iter().map(|r| (r, components(candidates, &one, r.position as usize))).collect::<Vec<_>>()
                })
                .collect();
            results
        })
        .collect()
}
