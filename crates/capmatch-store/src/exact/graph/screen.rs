//! The screened graph (see the parent module): a matrix product finds the few candidates
//! that can be in a query's top k, and the retrieval kernel scores only those.

use std::sync::atomic::{AtomicUsize, Ordering};

use capmatch_retrieval::{components, ComponentScores, GalleryVectors, QueryVectors, Ranked, Target, TopK};
use rayon::prelude::*;

use super::GraphQuery;
use crate::vector_index::GraphProgress;

/// Query rows per product: large enough for the product's packing to pay, small enough to
/// give every core many blocks.
const QUERY_BLOCK: usize = 128;
/// Candidate images per product.
const CANDIDATE_CHUNK: usize = 2048;

/// How far a product score can be from the kernel's score of the same pair.
pub(super) struct Bound {
    /// `γ_n` for the dimension.
    gamma: f64,
    /// The largest norm of a candidate vector of the target (image or caption vectors).
    max_norm: f64,
}

impl Bound {
    /// The bound for scoring `queries` against `candidates` under `target`; `None` when no
    /// bound holds (a fused target, a vector with a NaN or an infinity, or norms so large that a
    /// score could overflow).
    pub(super) fn of(candidates: &GalleryVectors<'_>, queries: &[GraphQuery<'_>], target: Target) -> Option<Bound> {
        let dim = candidates.dim;
        let rows: &[f32] = match target {
            Target::Image => candidates.images,
            Target::Captions => {
                let (c0, c1) = (candidates.caption_offsets[0] as usize, *candidates.caption_offsets.last()? as usize);
                &candidates.captions[c0 * dim..c1 * dim]
            }
            Target::Fused { .. } => return None,
        };
        let mut max_norm = 0f64;
        for row in rows.chunks_exact(dim) {
            let norm = norm(row);
            if !norm.is_finite() {
                return None;
            }
            max_norm = max_norm.max(norm);
        }
        let mut max_query = 0f64;
        for q in queries {
            let norm = norm(q.vector);
            if !norm.is_finite() {
                return None;
            }
            max_query = max_query.max(norm);
        }
        // A dot product is at most the product of the norms: past f32's range a score
        // could overflow to an infinity, and the margin arithmetic with it.
        if !(max_query * max_norm < f64::from(f32::MAX) / 4.0) {
            return None;
        }
        let nu = dim as f64 * f64::from(f32::EPSILON) / 2.0;
        Some(Bound { gamma: nu / (1.0 - nu), max_norm })
    }

    /// How far below its k-th best product score a candidate of a query of norm `q` may
    /// still be in the true top k: twice the largest difference between a product score and
    /// a kernel score (each is within `γ_n |q| |g|` of the true value), doubled again so
    /// that the rounding of this computation cannot matter.
    fn margin(&self, q: f64) -> f32 {
        (8.0 * self.gamma * q * self.max_norm) as f32 + f32::MIN_POSITIVE
    }
}

fn norm(v: &[f32]) -> f64 {
    v.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt()
}

/// A query's candidates by product score: every one within the margin of the k-th best
/// seen so far (the k-th best only rises, so nothing that can end in the top k is dropped).
struct Pool {
    k: usize,
    items: Vec<(f32, u32)>,
    /// The k-th best product score at the last compaction (−∞ before).
    cut: f32,
    compact_at: usize,
}

impl Pool {
    fn new(k: usize) -> Self {
        Self { k, items: Vec::new(), cut: f32::NEG_INFINITY, compact_at: 2 * k.max(256) }
    }

    #[inline]
    fn push(&mut self, score: f32, position: u32, margin: f32) {
        self.items.push((score, position));
        if self.items.len() >= self.compact_at {
            self.compact(margin);
        }
    }

    fn compact(&mut self, margin: f32) {
        if self.items.len() > self.k {
            self.items.select_nth_unstable_by(self.k - 1, |a, b| b.0.total_cmp(&a.0));
            self.cut = self.items[self.k - 1].0;
            let floor = self.cut - margin;
            self.items.retain(|x| x.0 >= floor);
        }
        // Many candidates within the margin (copies of one image): compact less often.
        self.compact_at = self.compact_at.max(2 * self.items.len());
    }
}

/// See [`super::top_k_blockwise`].
pub(super) fn top_k(
    candidates: &GalleryVectors<'_>,
    keep: &[bool],
    queries: &[GraphQuery<'_>],
    target: Target,
    k: usize,
    bound: &Bound,
    progress: &dyn GraphProgress,
) -> Vec<Vec<(Ranked, ComponentScores)>> {
    if k == 0 {
        return queries.iter().map(|_| Vec::new()).collect();
    }
    let dim = candidates.dim;
    let n = candidates.len();
    let total = queries.len();
    let done = AtomicUsize::new(0);
    queries
        .par_chunks(QUERY_BLOCK)
        .flat_map_iter(|block| {
            let m = block.len();
            let mut vectors = Vec::with_capacity(m * dim);
            for q in block {
                vectors.extend_from_slice(q.vector);
            }
            let margins: Vec<f32> = block.iter().map(|q| bound.margin(norm(q.vector))).collect();
            let mut pools: Vec<Pool> = block.iter().map(|_| Pool::new(k)).collect();
            let (mut product, mut best) = (Vec::new(), Vec::new());
            for start in (0..n).step_by(CANDIDATE_CHUNK) {
                let chunk = start..(start + CANDIDATE_CHUNK).min(n);
                if !keep[chunk.clone()].contains(&true) {
                    continue;
                }
                let width = chunk.len();
                let scores: &[f32] = match target {
                    Target::Image => {
                        product.resize(m * width, 0.0);
                        matmul(&vectors, &candidates.images[chunk.start * dim..chunk.end * dim], dim, &mut product);
                        &product
                    }
                    _ => {
                        // Each image by its best caption (−∞ without one).
                        let offsets = &candidates.caption_offsets[chunk.start..=chunk.end];
                        let (c0, c1) = (offsets[0] as usize, offsets[width] as usize);
                        product.resize(m * (c1 - c0), 0.0);
                        matmul(&vectors, &candidates.captions[c0 * dim..c1 * dim], dim, &mut product);
                        best.clear();
                        for q in 0..m {
                            let row = &product[q * (c1 - c0)..(q + 1) * (c1 - c0)];
                            best.extend(offsets.windows(2).map(|w| {
                                row[w[0] as usize - c0..w[1] as usize - c0].iter().copied().fold(f32::NEG_INFINITY, f32::max)
                            }));
                        }
                        &best
                    }
                };
                for (q, pool) in pools.iter_mut().enumerate() {
                    let (itself, margin) = (block[q].itself, margins[q]);
                    for (i, &s) in chunk.clone().zip(&scores[q * width..(q + 1) * width]) {
                        if s < pool.cut - margin || !keep[i] || itself == Some(i) {
                            continue;
                        }
                        pool.push(s, i as u32, margin);
                    }
                }
            }
            let finished = done.fetch_add(m, Ordering::Relaxed) + m;
            progress.progressed(finished, total);
            // The kept few, scored by the kernel and ranked by that score.
            let results: Vec<Vec<(Ranked, ComponentScores)>> = pools
                .into_iter()
                .zip(block)
                .zip(&margins)
                .map(|((mut pool, q), &margin)| {
                    pool.compact(margin);
                    let one = QueryVectors::one(dim, q.vector);
                    let mut top = TopK::new(k, true);
                    let mut explained: Vec<(u32, ComponentScores)> = Vec::with_capacity(pool.items.len());
                    for &(_, position) in &pool.items {
                        let c = components(candidates, &one, position as usize);
                        top.push(target.combine(c.caption, c.image), position);
                        explained.push((position, c));
                    }
                    explained.sort_unstable_by_key(|e| e.0);
                    top.finish()
                        .into_iter()
                        .map(|r| {
                            let at = explained.binary_search_by_key(&r.position, |e| e.0).expect("a kept candidate");
                            (r, explained[at].1)
                        })
                        .collect()
                })
                .collect();
            results
        })
        .collect()
}

/// `out[i × n + j] = queries_i · rows_j` (`m` query rows, `n` rows), by `gemm`.
fn matmul(queries: &[f32], rows: &[f32], dim: usize, out: &mut [f32]) {
    let (m, n) = (queries.len() / dim, rows.len() / dim);
    assert!(queries.len() == m * dim && rows.len() == n * dim && out.len() == m * n, "matrix shapes");
    if m == 0 || n == 0 {
        return;
    }
    #[allow(unsafe_code)]
    // SAFETY: the slices hold exactly the matrices the dimensions and strides describe
    // (checked above): queries m × dim row-major, rows n × dim row-major read as the
    // dim × n right operand, out m × n row-major; `out` is borrowed mutably, so it aliases
    // neither input. `read_dst` is false: `out` is only written.
    unsafe {
        gemm::gemm(
            m,
            n,
            dim,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            queries.as_ptr(),
            1,
            dim as isize,
            rows.as_ptr(),
            dim as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vector_index::NoProgress;

    /// Long enough for the pools to compact mid-stream, with 600 copies of one vector (600
    /// candidates within the margin of each other) and rows without captions: the screened
    /// graph is the kernel-only graph, bit for bit.
    #[test]
    fn screening_gives_the_direct_graph() {
        let dim = 24;
        let mut state = 11u64;
        let mut unit = || -> Vec<f32> {
            let mut v: Vec<f32> = (0..dim)
                .map(|_| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
                })
                .collect();
            capmatch_retrieval::normalize(&mut v).unwrap();
            v
        };
        let n = 5000;
        let copy = unit();
        let (mut images, mut captions, mut offsets) = (Vec::new(), Vec::new(), vec![0u32]);
        for i in 0..n {
            images.extend(if i % 8 == 0 { copy.clone() } else { unit() });
            for _ in 0..(i % 3) {
                captions.extend(if i % 8 == 0 { copy.clone() } else { unit() });
            }
            offsets.push((captions.len() / dim) as u32);
        }
        let gallery = GalleryVectors::new(dim, &images, &captions, &offsets).unwrap();
        let keep: Vec<bool> = (0..n).map(|i| i % 11 != 3).collect();
        let queries: Vec<GraphQuery<'_>> = (0..n).step_by(37).map(|i| GraphQuery { vector: gallery.image(i), itself: Some(i) }).collect();
        for target in [Target::Image, Target::Captions] {
            for k in [1, 5, 40] {
                let bound = Bound::of(&gallery, &queries, target).unwrap();
                let screened = top_k(&gallery, &keep, &queries, target, k, &bound, &NoProgress);
                let direct = super::super::direct(&gallery, &keep, &queries, target, k, &NoProgress);
                assert_eq!(screened, direct, "{target:?} k={k}");
            }
        }
    }

    /// NaN, infinite or overflowing vectors and the fused target take the direct path.
    #[test]
    fn no_bound_where_scores_can_leave_the_finite_range() {
        let dim = 4;
        let offsets = [0u32, 1, 2];
        let bound_for = |images: &[f32], query: &[f32], target: Target| {
            let gallery = GalleryVectors::new(dim, images, images, &offsets).unwrap();
            Bound::of(&gallery, &[GraphQuery { vector: query, itself: None }], target).is_some()
        };
        let fine = [1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0];
        assert!(bound_for(&fine, &fine[..4], Target::Image));
        assert!(bound_for(&fine, &fine[..4], Target::Captions));
        assert!(!bound_for(&fine, &fine[..4], Target::Fused { caption_weight: 0.5 }));
        assert!(!bound_for(&fine, &[f32::NAN, 0.0, 0.0, 0.0], Target::Image));
        assert!(!bound_for(&[1.0, 0.0, 0.0, f32::INFINITY, 0.0, 1.0, 0.0, 0.0], &fine[..4], Target::Image));
        assert!(!bound_for(&[3e19, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0], &[3e19, 0.0, 0.0, 0.0], Target::Image));
    }

    #[test]
    fn the_product_is_within_the_bound_of_the_kernel() {
        let mut state = 7u64;
        let mut rng = |dim: usize| -> Vec<f32> {
            let mut v: Vec<f32> = (0..dim)
                .map(|_| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
                })
                .collect();
            capmatch_retrieval::normalize(&mut v).unwrap();
            v
        };
        for dim in [3, 16, 37, 512] {
            let q: Vec<f32> = (0..5).flat_map(|_| rng(dim)).collect();
            let r: Vec<f32> = (0..300).flat_map(|_| rng(dim)).collect();
            let mut product = vec![0.0; 5 * 300];
            matmul(&q, &r, dim, &mut product);
            let mut kernel = vec![0.0; 5 * 300];
            capmatch_retrieval::dots(&q, &r, dim, &mut kernel);
            let nu = dim as f64 * f64::from(f32::EPSILON) / 2.0;
            let eps = 2.0 * nu / (1.0 - nu); // unit vectors
            for (a, b) in product.iter().zip(&kernel) {
                assert!(f64::from((a - b).abs()) <= eps, "dim {dim}: {a} vs {b}");
            }
        }
    }
}
