//! Scoring queries against a gallery's vectors.
//!
//! A gallery is two row-major matrices — one vector per image, and every caption vector
//! grouped by image — whatever stores them (RAM, a memory-mapped file, an evaluation's
//! domain). A query is one or more vectors: an image's or a text's own vector, or for
//! `caption-text` the query image's caption vectors, scoring by its best one.
//!
//! An image's score under a [`Target`] is computed from two components: the caption score
//! (the best dot product between a query vector and one of the image's captions, −∞ for an
//! image without captions) and the image score (the best dot product between a query vector
//! and the image vector), combined by [`Target::combine`]. All dot products are the
//! [`crate::kernel`]'s, so the scores do not depend on batching.

use std::ops::Range;

use rayon::prelude::*;

use crate::kernel::dots;
use crate::mode::Target;
use crate::rank::{Ranked, TopK};

/// A gallery's vectors, borrowed.
#[derive(Debug, Clone, Copy)]
pub struct GalleryVectors<'a> {
    pub dim: usize,
    /// `n × dim`: image `i`'s vector is row `i`.
    pub images: &'a [f32],
    /// Every caption vector, `c × dim`, grouped by image.
    pub captions: &'a [f32],
    /// `n + 1` ascending offsets: image `i`'s captions are rows
    /// `caption_offsets[i]..caption_offsets[i + 1]` of `captions` (possibly none).
    pub caption_offsets: &'a [u32],
}

impl<'a> GalleryVectors<'a> {
    /// Checks the shapes. `caption_offsets` may start above 0 (a window on a larger
    /// caption matrix): offsets index `captions` as given.
    pub fn new(dim: usize, images: &'a [f32], captions: &'a [f32], caption_offsets: &'a [u32]) -> Result<Self, String> {
        if caption_offsets.windows(2).any(|w| w[0] > w[1]) {
            return Err("caption offsets are not ascending within the caption matrix".into());
        }
        Self::with_ascending_offsets(dim, images, captions, caption_offsets)
    }

    /// [`GalleryVectors::new`] for offsets the caller has already found ascending (a store
    /// checks its offsets once when it opens them): only the O(1) checks. The O(n) scan of
    /// `new` cost about 0.7 ms per call at a million images, a sixth of an approximate
    /// search. Offsets that are not ascending after all give wrong
    /// caption ranges or a panic on an out-of-range row, never a read out of bounds.
    pub fn with_ascending_offsets(dim: usize, images: &'a [f32], captions: &'a [f32], caption_offsets: &'a [u32]) -> Result<Self, String> {
        if dim == 0 {
            return Err("dimension 0".into());
        }
        if images.len() % dim != 0 || captions.len() % dim != 0 {
            return Err(format!("matrices are not rows of {dim} floats"));
        }
        let n = images.len() / dim;
        if caption_offsets.len() != n + 1 || caption_offsets[n] as usize > captions.len() / dim {
            return Err(format!("{} caption offsets for {n} images and {} captions", caption_offsets.len(), captions.len() / dim));
        }
        Ok(Self { dim, images, captions, caption_offsets })
    }

    pub fn len(&self) -> usize {
        self.images.len() / self.dim
    }

    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    pub fn image(&self, i: usize) -> &'a [f32] {
        &self.images[i * self.dim..(i + 1) * self.dim]
    }

    /// Caption rows of image `i`.
    pub fn caption_rows(&self, i: usize) -> Range<usize> {
        self.caption_offsets[i] as usize..self.caption_offsets[i + 1] as usize
    }

    pub fn caption(&self, row: usize) -> &'a [f32] {
        &self.captions[row * self.dim..(row + 1) * self.dim]
    }
}

/// One or more queries, each one or more vectors.
#[derive(Debug, Clone)]
pub struct QueryVectors<'a> {
    pub dim: usize,
    /// Every query vector, row-major.
    pub vectors: &'a [f32],
    /// Rows of `vectors` belonging to each query (non-empty, ascending, contiguous).
    pub groups: Vec<Range<usize>>,
}

impl<'a> QueryVectors<'a> {
    /// Each row of `vectors` is one query.
    pub fn rows(dim: usize, vectors: &'a [f32]) -> Self {
        let n = vectors.len() / dim.max(1);
        Self { dim, vectors, groups: (0..n).map(|i| i..i + 1).collect() }
    }

    /// One query made of every row of `vectors` (it scores by its best vector).
    pub fn one(dim: usize, vectors: &'a [f32]) -> Self {
        let n = vectors.len() / dim.max(1);
        Self { dim, vectors, groups: vec![0..n] }
    }

    pub fn len(&self) -> usize {
        self.groups.len()
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// The queries `range`, as their own `QueryVectors`.
    pub fn slice(&self, range: Range<usize>) -> QueryVectors<'a> {
        let groups = &self.groups[range];
        let (first, last) = match (groups.first(), groups.last()) {
            (Some(f), Some(l)) => (f.start, l.end),
            _ => (0, 0),
        };
        QueryVectors {
            dim: self.dim,
            vectors: &self.vectors[first * self.dim..last * self.dim],
            groups: groups.iter().map(|g| g.start - first..g.end - first).collect(),
        }
    }
}

/// The two components of one image's score for one query.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ComponentScores {
    /// Best (query vector, caption) dot product; −∞ without captions.
    pub caption: f32,
    /// Which of the image's captions gave it (0-based); `None` without captions.
    pub best_caption: Option<usize>,
    /// Best (query vector, image vector) dot product.
    pub image: f32,
}

/// Per-thread buffers of [`score_chunk`].
#[derive(Default)]
pub struct ScoreBlock {
    raw: Vec<f32>,
    images: Vec<f32>,
    captions: Vec<f32>,
}

/// Scores `queries` against the images `images` of `gallery` under `target`, into `out`
/// (`queries.len() × images.len()`, row-major). Single-threaded: callers parallelise over
/// queries or images.
pub fn score_chunk(
    gallery: &GalleryVectors<'_>,
    queries: &QueryVectors<'_>,
    target: Target,
    images: Range<usize>,
    scratch: &mut ScoreBlock,
    out: &mut [f32],
) {
    let dim = gallery.dim;
    assert_eq!(queries.dim, dim, "query and gallery dimensions differ");
    let (nq, ni) = (queries.len(), images.len());
    assert_eq!(out.len(), nq * ni);
    if nq == 0 || ni == 0 {
        return;
    }
    let nv = queries.vectors.len() / dim;
    if target.needs_images() {
        scratch.raw.resize(nv * ni, 0.0);
        dots(queries.vectors, &gallery.images[images.start * dim..images.end * dim], dim, &mut scratch.raw);
        scratch.images.resize(nq * ni, 0.0);
        max_over_query_groups(&scratch.raw, ni, &queries.groups, &mut scratch.images);
    }
    if target.needs_captions() {
        let c0 = gallery.caption_offsets[images.start] as usize;
        let c1 = gallery.caption_offsets[images.end] as usize;
        let nc = c1 - c0;
        scratch.raw.resize(nv * nc, 0.0);
        dots(queries.vectors, &gallery.captions[c0 * dim..c1 * dim], dim, &mut scratch.raw);
        scratch.captions.resize(nq * ni, 0.0);
        let offsets = &gallery.caption_offsets[images.start..=images.end];
        for (q, group) in queries.groups.iter().enumerate() {
            let dst = &mut scratch.captions[q * ni..(q + 1) * ni];
            dst.fill(f32::NEG_INFINITY);
            for v in group.clone() {
                let row = &scratch.raw[v * nc..(v + 1) * nc];
                for (i, d) in dst.iter_mut().enumerate() {
                    let caps = &row[offsets[i] as usize - c0..offsets[i + 1] as usize - c0];
                    *d = caps.iter().copied().fold(*d, max_score);
                }
            }
        }
    }
    match target {
        Target::Image => out.copy_from_slice(&scratch.images[..nq * ni]),
        Target::Captions => out.copy_from_slice(&scratch.captions[..nq * ni]),
        Target::Fused { .. } => {
            for (o, idx) in out.iter_mut().zip(0..) {
                let cap = if target.needs_captions() { scratch.captions[idx] } else { f32::NEG_INFINITY };
                let img = if target.needs_images() { scratch.images[idx] } else { f32::NEG_INFINITY };
                *o = target.combine(cap, img);
            }
        }
    }
}

/// The larger score; NaN never wins (it ranks as −∞).
#[inline]
fn max_score(best: f32, s: f32) -> f32 {
    if s > best { s } else { best }
}

/// `out[q][j]` = max over the rows `v` of group `q` of `raw[v][j]`.
fn max_over_query_groups(raw: &[f32], cols: usize, groups: &[Range<usize>], out: &mut [f32]) {
    for (q, group) in groups.iter().enumerate() {
        let dst = &mut out[q * cols..(q + 1) * cols];
        dst.fill(f32::NEG_INFINITY);
        for v in group.clone() {
            for (d, &s) in dst.iter_mut().zip(&raw[v * cols..(v + 1) * cols]) {
                *d = max_score(*d, s);
            }
        }
    }
}

/// Images per parallel work item of [`top_k`]: large enough to amortise the per-chunk
/// top-k, small enough to spread a gallery over the cores and keep buffers in cache.
const CHUNK_IMAGES: usize = 4096;

/// The best `k` images for each query, in rank order (positions are image indices).
/// `keep(i)` excludes images (removed rows, another domain); `with_ties` also returns every
/// image tied with the k-th (see [`crate::rank::top_k_with_ties`]). Parallel over images.
pub fn top_k(
    gallery: &GalleryVectors<'_>,
    queries: &QueryVectors<'_>,
    target: Target,
    k: usize,
    with_ties: bool,
    keep: &(dyn Fn(usize) -> bool + Sync),
) -> Vec<Vec<Ranked>> {
    let n = gallery.len();
    let nq = queries.len();
    if nq == 0 {
        return Vec::new();
    }
    let chunks: Vec<Range<usize>> = (0..n).step_by(CHUNK_IMAGES).map(|s| s..(s + CHUNK_IMAGES).min(n)).collect();
    let empty = || (0..nq).map(|_| TopK::new(k, with_ties)).collect::<Vec<_>>();
    let merged = chunks
        .into_par_iter()
        .fold(
            || (empty(), ScoreBlock::default(), Vec::new()),
            |(mut tops, mut scratch, mut out), chunk| {
                out.resize(nq * chunk.len(), 0.0);
                score_chunk(gallery, queries, target, chunk.clone(), &mut scratch, &mut out);
                for (q, top) in tops.iter_mut().enumerate() {
                    let row = &out[q * chunk.len()..(q + 1) * chunk.len()];
                    for (i, &s) in chunk.clone().zip(row) {
                        if keep(i) {
                            top.push(s, i as u32);
                        }
                    }
                }
                (tops, scratch, out)
            },
        )
        .map(|(tops, ..)| tops)
        .reduce(empty, |mut a, b| {
            for (x, y) in a.iter_mut().zip(b) {
                x.merge(y);
            }
            a
        });
    merged.into_iter().map(TopK::finish).collect()
}

/// Both components of image `i`'s score for one query (for explaining a hit).
pub fn components(gallery: &GalleryVectors<'_>, query: &QueryVectors<'_>, i: usize) -> ComponentScores {
    assert_eq!(query.len(), 1, "components of one query");
    let mut image = f32::NEG_INFINITY;
    let mut caption = f32::NEG_INFINITY;
    let mut best_caption = None;
    let rows = gallery.caption_rows(i);
    let nc = rows.len();
    let nv = query.vectors.len() / gallery.dim;
    let mut raw = vec![0.0f32; nv.max(1) * (nc + 1)];
    // One call: the image row and the caption rows, against every query vector.
    let mut targets = Vec::with_capacity((nc + 1) * gallery.dim);
    targets.extend_from_slice(gallery.image(i));
    targets.extend_from_slice(&gallery.captions[rows.start * gallery.dim..rows.end * gallery.dim]);
    dots(query.vectors, &targets, gallery.dim, &mut raw[..nv * (nc + 1)]);
    for v in 0..nv {
        let row = &raw[v * (nc + 1)..(v + 1) * (nc + 1)];
        image = max_score(image, row[0]);
        for (c, &s) in row[1..].iter().enumerate() {
            // Strictly greater: the first of equally good captions wins.
            if s > caption {
                caption = s;
                best_caption = Some(c);
            }
        }
    }
    if best_caption.is_none() && nc > 0 {
        best_caption = Some(0); // every caption scored NaN or −∞
    }
    ComponentScores { caption, best_caption, image }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::dot;
    use crate::rank::top_k as top_k_of_scores;

    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            self.0 >> 33
        }
        fn unit(&mut self, dim: usize) -> Vec<f32> {
            let mut v: Vec<f32> = (0..dim).map(|_| (self.next() % 2001) as f32 / 1000.0 - 1.0).collect();
            crate::normalize(&mut v).unwrap();
            v
        }
    }

    struct Owned {
        dim: usize,
        images: Vec<f32>,
        captions: Vec<f32>,
        offsets: Vec<u32>,
    }

    impl Owned {
        fn random(n: usize, dim: usize, rng: &mut Lcg) -> Self {
            let mut g = Owned { dim, images: Vec::new(), captions: Vec::new(), offsets: vec![0] };
            for i in 0..n {
                g.images.extend(rng.unit(dim));
                for _ in 0..(i % 4) {
                    g.captions.extend(rng.unit(dim)); // image 0, 4, 8... has no caption
                }
                g.offsets.push((g.captions.len() / dim) as u32);
            }
            g
        }
        fn view(&self) -> GalleryVectors<'_> {
            GalleryVectors::new(self.dim, &self.images, &self.captions, &self.offsets).unwrap()
        }
    }

    /// Scores by the definition, one pair at a time.
    fn naive(g: &GalleryVectors<'_>, q: &[Vec<f32>], target: Target, i: usize) -> f32 {
        let image = q.iter().map(|v| dot(v, g.image(i))).fold(f32::NEG_INFINITY, f32::max);
        let caption = q
            .iter()
            .flat_map(|v| g.caption_rows(i).map(move |c| (v, c)))
            .map(|(v, c)| dot(v, g.caption(c)))
            .fold(f32::NEG_INFINITY, f32::max);
        target.combine(caption, image)
    }

    #[test]
    fn chunks_and_top_k_match_the_definition() {
        let mut rng = Lcg(3);
        let dim = 24;
        let owned = Owned::random(300, dim, &mut rng);
        let g = owned.view();
        let queries: Vec<Vec<Vec<f32>>> = (0..5).map(|q| (0..1 + q % 3).map(|_| rng.unit(dim)).collect()).collect();
        let flat: Vec<f32> = queries.iter().flatten().flatten().copied().collect();
        let mut groups = Vec::new();
        let mut at = 0;
        for q in &queries {
            groups.push(at..at + q.len());
            at += q.len();
        }
        let qv = QueryVectors { dim, vectors: &flat, groups };
        for target in [Target::Captions, Target::Image, Target::Fused { caption_weight: 0.3 }, Target::Fused { caption_weight: 0.0 }]
        {
            let mut out = vec![0.0; qv.len() * 100];
            score_chunk(&g, &qv, target, 100..200, &mut ScoreBlock::default(), &mut out);
            for (q, query) in queries.iter().enumerate() {
                for i in 100..200 {
                    assert_eq!(out[q * 100 + i - 100].to_bits(), naive(&g, query, target, i).to_bits(), "{target:?} {q} {i}");
                }
            }
            let keep = |i: usize| i % 5 != 1;
            let tops = top_k(&g, &qv, target, 7, false, &keep);
            for (q, query) in queries.iter().enumerate() {
                let all: Vec<f32> =
                    (0..g.len()).map(|i| if keep(i) { naive(&g, query, target, i) } else { f32::NAN }).collect();
                let want: Vec<u32> = top_k_of_scores(&all, 7).iter().map(|r| r.position).collect();
                let got: Vec<u32> = tops[q].iter().map(|r| r.position).collect();
                assert_eq!(got, want, "{target:?} query {q}");
                assert!(got.iter().all(|&p| keep(p as usize)));
            }
        }
    }

    #[test]
    fn fused_at_weight_zero_ranks_images_without_captions_by_their_image() {
        let dim = 2;
        let images = [1.0, 0.0, 0.0, 1.0];
        let captions: [f32; 0] = [];
        let offsets = [0, 0, 0];
        let g = GalleryVectors::new(dim, &images, &captions, &offsets).unwrap();
        let q = [0.0, 1.0];
        let tops = top_k(&g, &QueryVectors::rows(dim, &q), Target::Fused { caption_weight: 0.0 }, 2, false, &|_| true);
        assert_eq!(tops[0].iter().map(|r| (r.position, r.score)).collect::<Vec<_>>(), [(1, 1.0), (0, 0.0)]);
    }

    #[test]
    fn components_name_the_best_caption() {
        let mut rng = Lcg(9);
        let dim = 8;
        let owned = Owned::random(20, dim, &mut rng);
        let g = owned.view();
        let q = rng.unit(dim);
        let qv = QueryVectors::rows(dim, &q);
        for i in 0..g.len() {
            let c = components(&g, &qv, i);
            assert_eq!(c.image.to_bits(), dot(&q, g.image(i)).to_bits());
            match c.best_caption {
                None => assert!(g.caption_rows(i).is_empty() && c.caption == f32::NEG_INFINITY),
                Some(b) => {
                    let rows = g.caption_rows(i);
                    assert_eq!(c.caption.to_bits(), dot(&q, g.caption(rows.start + b)).to_bits());
                    assert!(rows.clone().all(|r| dot(&q, g.caption(r)) <= c.caption));
                    // First of equal best captions wins.
                    assert!(rows.clone().take(b).all(|r| dot(&q, g.caption(r)) < c.caption));
                }
            }
        }
    }

    /// The constructor for pre-checked offsets keeps the O(1) checks: a wrong count, a last
    /// offset past the caption matrix and a zero dimension are still refused.
    #[test]
    fn ascending_offsets_constructor_keeps_the_cheap_checks() {
        let (images, captions) = (vec![0.5f32; 2 * 4], vec![0.25f32; 3 * 4]);
        let ok = GalleryVectors::with_ascending_offsets(4, &images, &captions, &[0, 1, 3]).unwrap();
        assert_eq!((ok.len(), ok.caption_rows(1)), (2, 1..3));
        assert!(GalleryVectors::with_ascending_offsets(4, &images, &captions, &[0, 3]).is_err());
        assert!(GalleryVectors::with_ascending_offsets(4, &images, &captions, &[0, 1, 4]).is_err());
        assert!(GalleryVectors::with_ascending_offsets(0, &images, &captions, &[0, 1, 3]).is_err());
        assert!(GalleryVectors::with_ascending_offsets(3, &images, &captions, &[0, 1, 3]).is_err());
    }
}
