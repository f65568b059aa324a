//! Blockwise scoring of a (query domain, gallery domain) pair.
//!
//! Queries are processed in blocks of rows: for a block, the scores against the whole
//! gallery come from `capmatch_retrieval`'s scorer — the same kernel, the same "best
//! caption", fused formula and order a search uses, so an evaluation ranks exactly as a
//! search of the same gallery — and each row is turned into the ranks of its relevant
//! gallery items without sorting the gallery (see [`RankScratch`]). Blocks run in parallel
//! (rayon); memory is a few `block × gallery` f32 buffers per thread, never a queries ×
//! gallery matrix.
//!
//! Ranking order (`capmatch_retrieval::rank`): score descending, ties broken by gallery
//! order (lower index first), NaN as −∞; a gallery image without captions scores −∞ in the
//! caption modes.

use std::ops::Range;

use capmatch_retrieval::{fuse, score_chunk, GalleryVectors, QueryVectors, ScoreBlock, Target};
use rayon::prelude::*;

use crate::metrics::Accumulator;
use crate::protocol::Mode;

pub use capmatch_retrieval::rank_key;

/// Embeddings of the images of one domain, ready for scoring.
#[derive(Debug, Clone)]
pub struct DomainMatrix {
    pub dim: usize,
    /// Class id of each image.
    pub classes: Vec<u32>,
    /// `n × dim` image embeddings, row-major.
    pub images: Vec<f32>,
    /// All caption embeddings, `c × dim`, row-major, grouped by image.
    pub captions: Vec<f32>,
    /// Rows of `captions` belonging to each image (possibly empty).
    pub caption_rows: Vec<Range<usize>>,
}

impl DomainMatrix {
    pub fn len(&self) -> usize {
        self.classes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.classes.is_empty()
    }

    /// `n + 1` caption offsets (the caption rows are consecutive, image by image).
    fn caption_offsets(&self) -> Vec<u32> {
        let mut offsets = Vec::with_capacity(self.len() + 1);
        offsets.push(0);
        offsets.extend(self.caption_rows.iter().map(|r| r.end as u32));
        offsets
    }

    fn vectors<'a>(&'a self, offsets: &'a [u32]) -> GalleryVectors<'a> {
        GalleryVectors::new(self.dim.max(1), &self.images, &self.captions, offsets).expect("shapes checked at construction")
    }

    /// Builds the matrices of one domain from per-image vectors. With `normalize`, every
    /// vector is scaled to unit L2 norm (so scores are cosines); zero vectors stay zero.
    /// Errors when a vector's length is not `dim`.
    pub fn new<'a, I>(dim: usize, items: I, normalize: bool) -> Result<Self, String>
    where
        I: IntoIterator<Item = (u32, &'a [f32], &'a [Vec<f32>])>,
    {
        let mut m = DomainMatrix { dim, classes: Vec::new(), images: Vec::new(), captions: Vec::new(), caption_rows: Vec::new() };
        let push = |dst: &mut Vec<f32>, v: &[f32], what: &str| -> Result<(), String> {
            if v.len() != dim {
                return Err(format!("{what} has {} dimensions, expected {dim}", v.len()));
            }
            let start = dst.len();
            dst.extend_from_slice(v);
            if normalize {
                // The one normalisation; a zero vector has no direction and stays zero.
                let _ = capmatch_retrieval::normalize(&mut dst[start..]);
            }
            Ok(())
        };
        for (class, image, captions) in items {
            m.classes.push(class);
            push(&mut m.images, image, "an image embedding")?;
            let start = m.captions.len() / dim.max(1);
            for c in captions {
                push(&mut m.captions, c, "a caption embedding")?;
            }
            m.caption_rows.push(start..start + captions.len());
        }
        Ok(m)
    }
}

/// Tuning of the scorer.
#[derive(Debug, Clone, Copy)]
pub struct ScoreOptions {
    /// Weight of the caption score in `fused` mode.
    pub weight: f32,
    /// Queries per block; `None` picks it from the gallery size (about 16 MiB per buffer).
    pub block_rows: Option<usize>,
}

impl Default for ScoreOptions {
    fn default() -> Self {
        Self { weight: 0.5, block_rows: None }
    }
}

/// Per-thread buffers that turn a score row into the ranks of its relevant items.
///
/// Only the relevant items are sorted; every gallery item is then located among them (a
/// bucket table over the sort keys, then a count inside one bucket, branch-light) and
/// counted, so a row costs O(M + n log n) for M gallery items of which n are relevant.
#[derive(Default)]
pub struct RankScratch {
    keys: Vec<u64>,
    starts: Vec<u32>,
    hist: Vec<u32>,
    pub ranks: Vec<usize>,
}

impl RankScratch {
    /// Fills `self.ranks` with the ascending 0-based ranks of the relevant items of `scores`,
    /// whose indices `relevant` lists (each once).
    pub fn rank_relevant(&mut self, scores: &[f32], relevant: &[u32]) {
        let n = relevant.len();
        self.ranks.clear();
        if n == 0 {
            return;
        }
        self.keys.clear();
        self.keys.extend(relevant.iter().map(|&j| rank_key(scores[j as usize], j)));
        self.keys.sort_unstable();
        let keys = &self.keys;

        // Buckets over score values, linear between the highest and lowest finite relevant
        // scores: bucket(score) is non-increasing in the score, so bucket order never
        // contradicts key order. Scores above / below that range fall into the first / last
        // bucket (−∞ and NaN included), where the in-bucket count settles them.
        let (mut top, mut bottom) = (f32::NEG_INFINITY, f32::INFINITY);
        for &k in keys.iter() {
            let s = scores[(k & 0xffff_ffff) as usize];
            if s.is_finite() {
                top = top.max(s);
                bottom = bottom.min(s);
            }
        }
        let n_buckets = 2 * n;
        let last_bucket = n_buckets - 1;
        let scale = if top > bottom { last_bucket as f32 / (top - bottom) } else { 0.0 };
        let bucket = |s: f32| -> usize {
            let s = if s.is_nan() { f32::NEG_INFINITY } else { s };
            // Float subtraction and scaling are monotone; `as` saturates (NaN -> 0).
            (((top - s) * scale) as usize).min(last_bucket)
        };
        self.starts.clear();
        self.starts.resize(n_buckets + 1, n as u32);
        let mut widest = 0usize;
        {
            let mut b_next = 0usize;
            let mut run_start = 0usize;
            for (i, &k) in keys.iter().enumerate() {
                let b = bucket(scores[(k & 0xffff_ffff) as usize]);
                if b_next <= b {
                    widest = widest.max(i - run_start);
                    run_start = i;
                }
                while b_next <= b {
                    self.starts[b_next] = i as u32;
                    b_next += 1;
                }
            }
            widest = widest.max(n - run_start);
        }
        // hist[p]: gallery items with exactly p relevant keys before them. Every item is
        // counted, relevant ones included (branch-free); relevant item i has exactly i
        // relevant keys before it, which is taken off below.
        // Keys of later buckets belong to strictly lower scores, so they are never below an
        // item's key: counting over a fixed window from the bucket's start is exact as long
        // as the window covers the widest bucket (sentinels pad the end). Fixed width, no
        // branches.
        const WINDOW: usize = 8;
        if widest <= WINDOW {
            self.keys.extend([u64::MAX; WINDOW]);
            let keys = &self.keys;
            fill_hist(scores, n, &self.starts, &mut self.hist, bucket, |a, k| {
                let w: &[u64; WINDOW] = keys[a..a + WINDOW].try_into().unwrap();
                w.iter().map(|&x| (x < k) as usize).sum()
            });
        } else {
            // Crowded buckets (many equal scores): binary search over the rest of the keys,
            // which are ascending.
            let keys = &self.keys;
            fill_hist(scores, n, &self.starts, &mut self.hist, bucket, |a, k| keys[a..n].partition_point(|&x| x < k));
        }
        for h in &mut self.hist[..n] {
            *h -= 1;
        }
        // Relevant item i (in key order) has i relevant and Σ_{p ≤ i} hist[p] others before it.
        let mut before = 0usize;
        for i in 0..n {
            before += self.hist[i] as usize;
            self.ranks.push(i + before);
        }
    }
}

/// `hist[p] += 1` for every gallery item, `p` = relevant keys before the item's key: its
/// bucket's start `a` plus `below_from(a, key)`, the keys of that bucket below it.
#[inline]
fn fill_hist(
    scores: &[f32],
    n: usize,
    starts: &[u32],
    hist: &mut Vec<u32>,
    bucket: impl Fn(f32) -> usize,
    below_from: impl Fn(usize, u64) -> usize,
) {
    hist.clear();
    hist.resize(n + 1, 0);
    for (j, &s) in scores.iter().enumerate() {
        let a = starts[bucket(s)] as usize;
        hist[a + below_from(a, rank_key(s, j as u32))] += 1;
    }
}

/// Scores every query of `queries` against `gallery` in each mode; one accumulator per mode,
/// in the order of `modes`. `progress` is called with the number of queries of each finished
/// block.
pub fn score_pair(
    queries: &DomainMatrix,
    gallery: &DomainMatrix,
    modes: &[Mode],
    ks: &[usize],
    options: &ScoreOptions,
    progress: &(dyn Fn(usize) + Sync),
) -> Vec<Accumulator> {
    assert_eq!(queries.dim, gallery.dim, "query and gallery embeddings differ in dimension");
    let dim = queries.dim;
    let n_gallery = gallery.len();
    let need_image = modes.iter().any(|m| matches!(m, Mode::Image | Mode::Fused));
    let need_caption = modes.iter().any(|m| matches!(m, Mode::Caption | Mode::Fused));
    let need_text = modes.contains(&Mode::CaptionText);
    let n_cap = gallery.captions.len() / dim.max(1);
    let gallery_offsets = gallery.caption_offsets();
    let gallery_vectors = gallery.vectors(&gallery_offsets);
    let query_offsets = queries.caption_offsets();

    // Relevant gallery indices per class.
    let n_classes = gallery.classes.iter().chain(&queries.classes).map(|&c| c as usize + 1).max().unwrap_or(0);
    let mut by_class: Vec<Vec<u32>> = vec![Vec::new(); n_classes];
    for (j, &c) in gallery.classes.iter().enumerate() {
        by_class[c as usize].push(j as u32);
    }

    let block = options.block_rows.unwrap_or_else(|| {
        let widest = n_gallery.max(n_cap).max(1);
        ((4usize << 20) / widest).clamp(8, 256)
    });
    let block = block.max(1);
    let n_queries = queries.len();
    let starts: Vec<usize> = (0..n_queries).step_by(block).collect();

    let empty = || modes.iter().map(|_| Accumulator::new(ks)).collect::<Vec<_>>();
    starts
        .into_par_iter()
        .fold(
            || (empty(), RankScratch::default(), ScoreBlock::default(), Vec::<f32>::new(), Vec::<f32>::new(), Vec::<f32>::new()),
            |(mut accs, mut scratch, mut block_scratch, mut img, mut cap, mut text), q0| {
                let q1 = (q0 + block).min(n_queries);
                let rows = q1 - q0;
                let own = QueryVectors::rows(dim.max(1), &queries.images[q0 * dim..q1 * dim]);
                let mut score = |queries: &QueryVectors<'_>, target: Target, out: &mut Vec<f32>| {
                    out.resize(rows * n_gallery, 0.0);
                    score_chunk(&gallery_vectors, queries, target, 0..n_gallery, &mut block_scratch, out);
                };
                if need_image {
                    score(&own, Target::Image, &mut img);
                }
                if need_caption {
                    score(&own, Target::Captions, &mut cap);
                }
                if need_text {
                    // caption-text: each query is its own caption vectors (an image without
                    // captions is a query with no vector: it scores −∞ everywhere).
                    let r0 = query_offsets[q0] as usize;
                    let r1 = query_offsets[q1] as usize;
                    let groups = (q0..q1).map(|q| query_offsets[q] as usize - r0..query_offsets[q + 1] as usize - r0).collect();
                    let own_captions = QueryVectors { dim: dim.max(1), vectors: &queries.captions[r0 * dim..r1 * dim], groups };
                    score(&own_captions, Target::Captions, &mut text);
                }
                let w = options.weight;
                let mut fused = Vec::new();
                for r in 0..rows {
                    let class = queries.classes[q0 + r];
                    let relevant: &[u32] = by_class.get(class as usize).map(Vec::as_slice).unwrap_or(&[]);
                    for (mi, mode) in modes.iter().enumerate() {
                        let row = r * n_gallery..(r + 1) * n_gallery;
                        let scores: &[f32] = match mode {
                            Mode::Image | Mode::Text => &img[row],
                            Mode::Caption => &cap[row],
                            Mode::CaptionText => &text[row],
                            Mode::Fused => {
                                fused.clear();
                                fused.extend(cap[row.clone()].iter().zip(&img[row]).map(|(&c, &i)| fuse(w, c, i)));
                                &fused
                            }
                        };
                        scratch.rank_relevant(scores, relevant);
                        accs[mi].add_ranks(&scratch.ranks);
                    }
                }
                progress(rows);
                (accs, scratch, block_scratch, img, cap, text)
            },
        )
        .map(|(accs, ..)| accs)
        .reduce(empty, |mut a, b| {
            for (x, y) in a.iter_mut().zip(&b) {
                x.merge(y);
            }
            a
        })
}

/// The ascending 0-based ranks of each query's relevant gallery items, for one mode: what
/// the metrics are computed from (for checks that an evaluation ranks as a search does).
pub fn relevant_ranks(queries: &DomainMatrix, gallery: &DomainMatrix, mode: Mode, weight: f32) -> Vec<Vec<usize>> {
    (0..queries.len())
        .map(|q| {
            let caps = queries.caption_rows[q].clone();
            let one = DomainMatrix {
                dim: queries.dim,
                classes: vec![queries.classes[q]],
                images: queries.images[q * queries.dim..(q + 1) * queries.dim].to_vec(),
                captions: queries.captions[caps.start * queries.dim..caps.end * queries.dim].to_vec(),
                caption_rows: vec![0..caps.len()],
            };
            rank_one(&one, gallery, mode, weight)
        })
        .collect()
}

fn rank_one(query: &DomainMatrix, gallery: &DomainMatrix, mode: Mode, weight: f32) -> Vec<usize> {
    let offsets = gallery.caption_offsets();
    let g = gallery.vectors(&offsets);
    let dim = query.dim.max(1);
    let n = gallery.len();
    let mut block = ScoreBlock::default();
    let mut scores = vec![0.0; n];
    let own = QueryVectors::rows(dim, &query.images);
    match mode {
        Mode::CaptionText => {
            let caps = QueryVectors::one(dim, &query.captions);
            score_chunk(&g, &caps, Target::Captions, 0..n, &mut block, &mut scores);
        }
        _ => score_chunk(&g, &own, mode.target(weight), 0..n, &mut block, &mut scores),
    }
    let relevant: Vec<u32> = (0..n as u32).filter(|&j| gallery.classes[j as usize] == query.classes[0]).collect();
    let mut scratch = RankScratch::default();
    scratch.rank_relevant(&scores, &relevant);
    scratch.ranks
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ranks of the relevant items by a full sort with the tie rule.
    fn naive_ranks(scores: &[f32], relevant: &[u32]) -> Vec<usize> {
        let mut order: Vec<u32> = (0..scores.len() as u32).collect();
        order.sort_by_key(|&j| rank_key(scores[j as usize], j));
        order.iter().enumerate().filter(|(_, j)| relevant.contains(j)).map(|(r, _)| r).collect()
    }

    #[test]
    fn relevant_ranks_match_a_full_sort() {
        let mut state = 42u64;
        let mut next = move |n: u64| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 33) % n
        };
        let mut scratch = RankScratch::default();
        for case in 0..400 {
            let m = 1 + next(300) as usize;
            // Few distinct values (many ties) in some cases, many in others, and specials.
            let distinct = [1, 2, 5, 1000, 1 << 20][case % 5];
            let scores: Vec<f32> = (0..m)
                .map(|_| match next(40) {
                    0 => f32::NAN,
                    1 => f32::NEG_INFINITY,
                    2 => f32::INFINITY,
                    3 => -0.0,
                    _ => next(distinct) as f32 / distinct as f32 - 0.5,
                })
                .collect();
            let mut relevant: Vec<u32> = (0..m as u32).filter(|_| next(4) == 0).collect();
            if case % 7 == 0 {
                relevant = (0..m as u32).collect();
            }
            scratch.rank_relevant(&scores, &relevant);
            assert_eq!(scratch.ranks, naive_ranks(&scores, &relevant), "case {case}: {scores:?} {relevant:?}");
        }
    }

    #[test]
    fn all_equal_scores_rank_by_gallery_order() {
        let scores = vec![0.25f32; 1000];
        let relevant: Vec<u32> = (0..1000).filter(|j| j % 3 == 0).collect();
        let mut scratch = RankScratch::default();
        scratch.rank_relevant(&scores, &relevant);
        let want: Vec<usize> = relevant.iter().map(|&j| j as usize).collect();
        assert_eq!(scratch.ranks, want);
    }

}
