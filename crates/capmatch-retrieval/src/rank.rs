//! The order of results, and top-k selection under it.
//!
//! Results are ordered by score, highest first. Equal scores (`-0.0` equals `0.0`) are
//! ordered by gallery position, lowest first: the gallery order is the caller's (path order
//! for a search, dataset order for an evaluation). NaN ranks as −∞, so a broken vector never
//! outranks a real match and never hides one.

/// A result: its score and its gallery position.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ranked {
    pub score: f32,
    pub position: u32,
}

/// The sort key of a result: smaller means ranked earlier (score descending under the
/// rules above, then position ascending).
#[inline]
pub fn rank_key(score: f32, position: u32) -> u64 {
    let bits = score_order_bits(score);
    ((!bits as u64) << 32) | position as u64
}

/// Bits that order scores ascending as unsigned integers (NaN as −∞, −0 as 0).
#[inline]
fn score_order_bits(score: f32) -> u32 {
    let s = if score.is_nan() { f32::NEG_INFINITY } else { score + 0.0 }; // -0.0 + 0.0 = 0.0
    let bits = s.to_bits();
    if bits & 0x8000_0000 != 0 { !bits } else { bits | 0x8000_0000 }
}

/// Whether two scores are equal under the ranking rules (so their order is positional).
#[inline]
pub fn same_rank_score(a: f32, b: f32) -> bool {
    score_order_bits(a) == score_order_bits(b)
}

/// The best `k` of `scores` (indexed by position), in rank order.
pub fn top_k(scores: &[f32], k: usize) -> Vec<Ranked> {
    top_k_of(scores.iter().enumerate().map(|(i, &s)| (s, i as u32)), k, false)
}

/// Like [`top_k`], plus every result whose score equals the k-th one, so that a caller
/// with another gallery order can order the tie at the cut itself.
pub fn top_k_with_ties(scores: &[f32], k: usize) -> Vec<Ranked> {
    top_k_of(scores.iter().enumerate().map(|(i, &s)| (s, i as u32)), k, true)
}

/// Top-k over `(score, position)` pairs (positions unique); see [`top_k_with_ties`] for
/// `with_ties`.
pub fn top_k_of(items: impl IntoIterator<Item = (f32, u32)>, k: usize, with_ties: bool) -> Vec<Ranked> {
    let mut top = TopK::new(k, with_ties);
    for (score, position) in items {
        top.push(score, position);
    }
    top.finish()
}

/// A bounded collection of the best results seen so far, for streaming over a gallery
/// without materialising every score. Merging several (one per thread) gives the same
/// result as one over the whole stream.
#[derive(Debug, Clone)]
pub struct TopK {
    k: usize,
    with_ties: bool,
    /// Candidates as (key, score); pruned back to `k` (plus the cut's ties) when it grows.
    candidates: Vec<(u64, f32)>,
    /// Key of the k-th candidate after the last prune: anything ranked after it (after its
    /// score, with ties) can never enter the result.
    cut: Option<u64>,
    /// The score of `cut` (see [`TopK::floor`]).
    floor: f32,
}

impl TopK {
    pub fn new(k: usize, with_ties: bool) -> Self {
        Self { k, with_ties, candidates: Vec::new(), cut: None, floor: f32::NEG_INFINITY }
    }

    /// A score below which nothing can enter any more (−∞ until `k` results were kept).
    /// A scan over many scores tests `!(score < floor)` first, so that the common case — a
    /// score too low to matter — costs one comparison instead of a key and a push (NaN
    /// passes the test and is ranked by [`TopK::push`]).
    #[inline]
    pub fn floor(&self) -> f32 {
        self.floor
    }

    #[inline]
    pub fn push(&mut self, score: f32, position: u32) {
        if self.k == 0 {
            return;
        }
        let key = rank_key(score, position);
        if let Some(cut) = self.cut {
            let excluded = if self.with_ties { key >> 32 > cut >> 32 } else { key > cut };
            if excluded {
                return;
            }
        }
        self.candidates.push((key, score));
        if self.candidates.len() >= 2 * self.k.max(512) {
            self.prune();
        }
    }

    fn prune(&mut self) {
        let k = self.k;
        if self.candidates.len() <= k {
            return;
        }
        self.candidates.select_nth_unstable_by_key(k - 1, |c| c.0);
        let cut = self.candidates[k - 1].0;
        if self.with_ties {
            let (head, tail) = self.candidates.split_at_mut(k);
            let mut kept = head.len();
            for i in 0..tail.len() {
                if tail[i].0 >> 32 == cut >> 32 {
                    tail.swap(i, kept - head.len());
                    kept += 1;
                }
            }
            self.candidates.truncate(kept);
        } else {
            self.candidates.truncate(k);
        }
        self.cut = Some(cut);
        let score = self.candidates[k - 1].1;
        self.floor = if score.is_nan() { f32::NEG_INFINITY } else { score };
    }

    pub fn merge(&mut self, other: TopK) {
        for (key, score) in other.candidates {
            self.push(score, (key & 0xffff_ffff) as u32);
        }
    }

    /// The results in rank order.
    pub fn finish(mut self) -> Vec<Ranked> {
        self.prune();
        self.candidates.sort_unstable_by_key(|c| c.0);
        self.candidates
            .into_iter()
            .map(|(key, score)| Ranked { score, position: (key & 0xffff_ffff) as u32 })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_order_scores_descending_nan_last_then_position() {
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
        // +inf, 0.5 (1 before 3), 0.0 == -0.0 (0 before 2), -1, then -inf and NaN by position.
        assert_eq!(order, [7, 1, 3, 0, 2, 6, 4, 5]);
    }

    fn naive(scores: &[f32], k: usize) -> Vec<u32> {
        let mut order: Vec<u32> = (0..scores.len() as u32).collect();
        order.sort_by_key(|&j| rank_key(scores[j as usize], j));
        order.truncate(k);
        order
    }

    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self, n: u64) -> u64 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (self.0 >> 33) % n
        }
    }

    fn random_scores(rng: &mut Lcg, case: usize) -> Vec<f32> {
        let m = 1 + rng.next(300) as usize;
        let distinct = [1, 2, 5, 1000, 1 << 20][case % 5];
        (0..m)
            .map(|_| match rng.next(40) {
                0 => f32::NAN,
                1 => f32::NEG_INFINITY,
                2 => -0.0,
                _ => rng.next(distinct) as f32 / distinct as f32 - 0.5,
            })
            .collect()
    }

    #[test]
    fn top_k_matches_a_full_sort_and_streaming_agrees() {
        let mut rng = Lcg(7);
        for case in 0..500 {
            let scores = random_scores(&mut rng, case);
            let k = 1 + rng.next(40) as usize;
            let want = naive(&scores, k);
            let got: Vec<u32> = top_k(&scores, k).iter().map(|r| r.position).collect();
            assert_eq!(got, want, "case {case}");
            // Streamed in two halves, merged.
            let half = scores.len() / 2;
            let mut a = TopK::new(k, false);
            let mut b = TopK::new(k, false);
            for (i, &s) in scores.iter().enumerate() {
                if i < half { a.push(s, i as u32) } else { b.push(s, i as u32) }
            }
            a.merge(b);
            let streamed: Vec<u32> = a.finish().iter().map(|r| r.position).collect();
            assert_eq!(streamed, want, "streamed, case {case}");
        }
    }

    #[test]
    fn nothing_below_the_floor_can_enter() {
        let mut rng = Lcg(11);
        for case in 0..40 {
            // Long enough that the candidates are pruned (and the floor raised) mid-stream.
            let mut scores = Vec::new();
            while scores.len() < 3000 {
                scores.extend(random_scores(&mut rng, case));
            }
            let k = 1 + rng.next(20) as usize;
            for with_ties in [false, true] {
                let mut top = TopK::new(k, with_ties);
                let mut skipped = TopK::new(k, with_ties);
                for (i, &s) in scores.iter().enumerate() {
                    top.push(s, i as u32);
                    if !(s < skipped.floor()) {
                        skipped.push(s, i as u32);
                    }
                }
                assert!(skipped.floor() > f32::NEG_INFINITY || scores.iter().filter(|s| **s > f32::NEG_INFINITY).count() < k);
                assert_eq!(skipped.finish(), top.finish(), "case {case}, ties {with_ties}");
            }
        }
    }

    #[test]
    fn with_ties_returns_the_whole_tie_at_the_cut() {
        let scores = [0.9, 0.5, 0.5, 0.1, 0.5, 0.7];
        let got: Vec<u32> = top_k_with_ties(&scores, 3).iter().map(|r| r.position).collect();
        assert_eq!(got, [0, 5, 1, 2, 4]);
        let got: Vec<u32> = top_k(&scores, 3).iter().map(|r| r.position).collect();
        assert_eq!(got, [0, 5, 1]);
        let mut t = TopK::new(3, true);
        for (i, &s) in scores.iter().enumerate() {
            t.push(s, i as u32);
        }
        assert_eq!(t.finish().iter().map(|r| r.position).collect::<Vec<_>>(), [0, 5, 1, 2, 4]);
    }
}
