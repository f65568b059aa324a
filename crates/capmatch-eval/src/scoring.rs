//! Blockwise scoring of a (query domain, gallery domain) pair.
//!
//! Queries are processed in blocks of rows: for a block, the score rows against the whole
//! gallery are one matrix product (`gemm`, f32), reduced to one score per gallery image
//! (max over its captions), and each row is turned into the ranks of its relevant gallery
//! items without sorting the gallery (see [`RankScratch`]). Blocks run in parallel (rayon);
//! memory is a few `block × gallery` f32 buffers per thread, never a queries × gallery matrix.
//!
//! Ranking order: score descending, ties broken by gallery order (lower index first). NaN
//! scores rank as −∞; a gallery image without captions scores −∞ in the caption modes.

use std::ops::Range;

use rayon::prelude::*;

use crate::metrics::Accumulator;
use crate::protocol::Mode;

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
                let norm = v.iter().map(|x| (*x as f64) * (*x as f64)).sum::<f64>().sqrt();
                if norm > 0.0 {
                    for x in &mut dst[start..] {
                        *x = (*x as f64 / norm) as f32;
                    }
                }
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

/// `dst (m × n) = a (m × k) · bᵀ` with `b` given as `n × k`, all row-major.
fn matmul_abt(a: &[f32], b: &[f32], m: usize, n: usize, k: usize, dst: &mut [f32]) {
    assert_eq!(a.len(), m * k);
    assert_eq!(b.len(), n * k);
    assert_eq!(dst.len(), m * n);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        dst.fill(0.0);
        return;
    }
    // SAFETY: the slices have the asserted sizes; strides describe row-major a (m×k),
    // bᵀ (k×n, i.e. b read column-wise) and dst (m×n); dst is not read (read_dst = false).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            k as isize,
            1,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Reduces `raw` (`rows × cols`) to `out` (`groups_r × groups_c`): max over the rows of each
/// row group and the columns of each column group; −∞ for empty groups.
fn max_reduce(raw: &[f32], cols: usize, row_groups: &[Range<usize>], col_groups: &[Range<usize>], out: &mut [f32]) {
    let gc = col_groups.len();
    for (gi, rg) in row_groups.iter().enumerate() {
        let dst = &mut out[gi * gc..(gi + 1) * gc];
        dst.fill(f32::NEG_INFINITY);
        for r in rg.clone() {
            let row = &raw[r * cols..(r + 1) * cols];
            for (d, cg) in dst.iter_mut().zip(col_groups) {
                for &v in &row[cg.clone()] {
                    // NaN never wins a max here (comparison is false).
                    if v > *d {
                        *d = v;
                    }
                }
            }
        }
    }
}

/// Sort key of a gallery item: smaller = ranked earlier (score descending, then index).
#[inline]
pub fn rank_key(score: f32, index: u32) -> u64 {
    let s = if score.is_nan() { f32::NEG_INFINITY } else { score + 0.0 }; // -0.0 -> 0.0
    let bits = s.to_bits();
    let ascending = if bits & 0x8000_0000 != 0 { !bits } else { bits | 0x8000_0000 };
    ((!ascending as u64) << 32) | index as u64
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
            || (empty(), RankScratch::default(), Vec::<f32>::new(), Vec::<f32>::new(), Vec::<f32>::new(), Vec::<f32>::new()),
            |(mut accs, mut scratch, mut img, mut cap, mut text, mut raw), q0| {
                let q1 = (q0 + block).min(n_queries);
                let rows = q1 - q0;
                let q_img = &queries.images[q0 * dim..q1 * dim];
                if need_image {
                    img.resize(rows * n_gallery, 0.0);
                    matmul_abt(q_img, &gallery.images, rows, n_gallery, dim, &mut img);
                }
                if need_caption {
                    raw.resize(rows * n_cap, 0.0);
                    matmul_abt(q_img, &gallery.captions, rows, n_cap, dim, &mut raw);
                    cap.resize(rows * n_gallery, 0.0);
                    let own: Vec<Range<usize>> = (0..rows).map(|r| r..r + 1).collect();
                    max_reduce(&raw, n_cap, &own, &gallery.caption_rows, &mut cap);
                }
                if need_text {
                    let r0 = queries.caption_rows[q0].start;
                    let r1 = queries.caption_rows[q1 - 1].end;
                    let q_cap = &queries.captions[r0 * dim..r1 * dim];
                    raw.resize((r1 - r0) * n_cap, 0.0);
                    matmul_abt(q_cap, &gallery.captions, r1 - r0, n_cap, dim, &mut raw);
                    let groups: Vec<Range<usize>> =
                        queries.caption_rows[q0..q1].iter().map(|r| r.start - r0..r.end - r0).collect();
                    text.resize(rows * n_gallery, 0.0);
                    max_reduce(&raw, n_cap, &groups, &gallery.caption_rows, &mut text);
                }
                let w = options.weight;
                let mut fused = Vec::new();
                for r in 0..rows {
                    let class = queries.classes[q0 + r];
                    let relevant: &[u32] = by_class.get(class as usize).map(Vec::as_slice).unwrap_or(&[]);
                    for (mi, mode) in modes.iter().enumerate() {
                        let scores: &[f32] = match mode {
                            Mode::Image => &img[r * n_gallery..(r + 1) * n_gallery],
                            Mode::Caption => &cap[r * n_gallery..(r + 1) * n_gallery],
                            Mode::CaptionText => &text[r * n_gallery..(r + 1) * n_gallery],
                            Mode::Fused => {
                                fused.clear();
                                fused.extend_from_slice(&cap[r * n_gallery..(r + 1) * n_gallery]);
                                for (f, &i) in fused.iter_mut().zip(&img[r * n_gallery..(r + 1) * n_gallery]) {
                                    *f = w * *f + (1.0 - w) * i;
                                }
                                &fused
                            }
                        };
                        scratch.rank_relevant(scores, relevant);
                        accs[mi].add_ranks(&scratch.ranks);
                    }
                }
                progress(rows);
                (accs, scratch, img, cap, text, raw)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_key_orders_scores_descending_then_index() {
        let mut v = [
            (0.5f32, 3u32),
            (0.5, 1),
            (-0.0, 0),
            (0.0, 2),
            (f32::NAN, 4),
            (f32::NEG_INFINITY, 5),
            (-1.0, 6),
            (f32::INFINITY, 7),
        ];
        v.sort_by_key(|&(s, i)| rank_key(s, i));
        let order: Vec<u32> = v.iter().map(|&(_, i)| i).collect();
        // +inf, 0.5 (idx 1 before 3), 0.0 == -0.0 (idx 0 before 2), -1, then -inf and NaN by index.
        assert_eq!(order, [7, 1, 3, 0, 2, 6, 4, 5]);
    }

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

    #[test]
    fn max_reduce_groups() {
        // 2 rows × 5 cols; columns grouped {0,1}, {}, {2,3,4}.
        let raw = [1.0, 5.0, 2.0, 0.0, 3.0, 4.0, 0.0, 9.0, 1.0, 1.0];
        let mut out = [0.0; 6];
        max_reduce(&raw, 5, &[0..1, 1..2], &[0..2, 2..2, 2..5], &mut out);
        assert_eq!(out, [5.0, f32::NEG_INFINITY, 3.0, 4.0, f32::NEG_INFINITY, 9.0]);
        let mut out = [0.0; 3];
        max_reduce(&raw, 5, std::slice::from_ref(&(0..2)), &[0..2, 2..2, 2..5], &mut out);
        assert_eq!(out, [5.0, f32::NEG_INFINITY, 9.0]);
    }

    #[test]
    fn matmul_matches_naive() {
        let (m, n, k) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 - 3.0).collect();
        let b: Vec<f32> = (0..n * k).map(|i| (i % 5) as f32 - 2.0).collect();
        let mut d = vec![0.0; m * n];
        matmul_abt(&a, &b, m, n, k, &mut d);
        for i in 0..m {
            for j in 0..n {
                let want: f32 = (0..k).map(|t| a[i * k + t] * b[j * k + t]).sum();
                assert_eq!(d[i * n + j], want);
            }
        }
    }
}
