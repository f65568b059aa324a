//! Retrieval metrics of one query, and their aggregation over the queries of a domain pair.
//!
//! A query's result is represented by its *ranking*: gallery relevance in ranked order
//! (`ranking[r]` is true when the item at rank `r`, 0-based, is relevant), or equivalently
//! by the sorted 0-based ranks of its relevant items (what the scorer computes, without
//! sorting the gallery). Functions come in both forms; the `_from_ranks` ones take the
//! ascending ranks of *all* relevant items.
//!
//! Definitions (n = number of relevant gallery items of the query):
//! - P@k, as UCDIR's released evaluation (`retrieval_precision_cal` in conghuihu/UCDIR
//!   main.py) computes it: with m = min(k, n), a query contributes `hits` = relevant items
//!   among its top m and `considered` = m; the pair's P@k is `100 × Σ hits / Σ considered`.
//!   A query with n = 0 contributes 0 / 0, i.e. nothing.
//! - AP: `(1/n) Σ_i i / rank_i` over the relevant items (ranks 1-based), over the full
//!   ranking. Undefined (`None`) when n = 0; mAP averages over queries with n > 0.
//! - R@k: whether a relevant item is in the top k. Undefined (`None`) when n = 0; the
//!   pair's R@k is the percentage of queries with n > 0 that have a hit.

use serde::{Deserialize, Serialize};

/// One query's P@k terms: `hits` relevant among the top `considered = min(k, n)`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrecisionAtK {
    pub hits: usize,
    pub considered: usize,
}

impl PrecisionAtK {
    /// `hits / considered` in percent; `None` for a query with no relevant items.
    pub fn percent(&self) -> Option<f64> {
        (self.considered > 0).then(|| 100.0 * self.hits as f64 / self.considered as f64)
    }
}

/// Ascending 0-based ranks of the relevant items of a ranking.
pub fn relevant_ranks(ranking: &[bool]) -> Vec<usize> {
    ranking.iter().enumerate().filter(|(_, &r)| r).map(|(i, _)| i).collect()
}

/// UCDIR's P@k terms of one ranking (see the module docs).
pub fn precision_at_k(ranking: &[bool], k: usize) -> PrecisionAtK {
    precision_at_k_from_ranks(&relevant_ranks(ranking), k)
}

/// Average precision of one ranking over all its items; `None` without relevant items.
pub fn average_precision(ranking: &[bool]) -> Option<f64> {
    average_precision_from_ranks(&relevant_ranks(ranking))
}

/// Whether a relevant item is in the top k; `None` without relevant items.
pub fn recall_at_k(ranking: &[bool], k: usize) -> Option<bool> {
    recall_at_k_from_ranks(&relevant_ranks(ranking), k)
}

/// P@k terms from the ascending ranks of all relevant items.
pub fn precision_at_k_from_ranks(ranks: &[usize], k: usize) -> PrecisionAtK {
    let considered = k.min(ranks.len());
    // Ranks are ascending: the hits are a prefix.
    let hits = ranks.iter().take_while(|&&r| r < considered).count();
    PrecisionAtK { hits, considered }
}

/// AP from the ascending ranks of all relevant items.
pub fn average_precision_from_ranks(ranks: &[usize]) -> Option<f64> {
    if ranks.is_empty() {
        return None;
    }
    let sum: f64 = ranks.iter().enumerate().map(|(i, &r)| (i + 1) as f64 / (r + 1) as f64).sum();
    Some(sum / ranks.len() as f64)
}

/// R@k from the ascending ranks of all relevant items.
pub fn recall_at_k_from_ranks(ranks: &[usize], k: usize) -> Option<bool> {
    ranks.first().map(|&r| r < k)
}

/// Sums of the per-query terms over the queries of one (pair, mode).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Accumulator {
    pub ks: Vec<usize>,
    pub n_queries: usize,
    /// Queries with at least one relevant gallery item.
    pub n_with_relevant: usize,
    /// Per k: Σ hits, Σ considered.
    pub precision: Vec<PrecisionAtK>,
    pub ap_sum: f64,
    /// Per k: queries with a relevant item in the top k.
    pub recall_hits: Vec<usize>,
}

impl Accumulator {
    pub fn new(ks: &[usize]) -> Self {
        Self {
            ks: ks.to_vec(),
            n_queries: 0,
            n_with_relevant: 0,
            precision: vec![PrecisionAtK::default(); ks.len()],
            ap_sum: 0.0,
            recall_hits: vec![0; ks.len()],
        }
    }

    /// Adds one query, given the ascending ranks of all its relevant gallery items.
    pub fn add_ranks(&mut self, ranks: &[usize]) {
        self.n_queries += 1;
        for (j, &k) in self.ks.iter().enumerate() {
            let p = precision_at_k_from_ranks(ranks, k);
            self.precision[j].hits += p.hits;
            self.precision[j].considered += p.considered;
            if recall_at_k_from_ranks(ranks, k) == Some(true) {
                self.recall_hits[j] += 1;
            }
        }
        if let Some(ap) = average_precision_from_ranks(ranks) {
            self.n_with_relevant += 1;
            self.ap_sum += ap;
        }
    }

    /// Adds one query given its ranking.
    pub fn add_ranking(&mut self, ranking: &[bool]) {
        self.add_ranks(&relevant_ranks(ranking));
    }

    /// Merges another accumulator over the same ks.
    pub fn merge(&mut self, other: &Accumulator) {
        assert_eq!(self.ks, other.ks, "accumulators over different k");
        self.n_queries += other.n_queries;
        self.n_with_relevant += other.n_with_relevant;
        self.ap_sum += other.ap_sum;
        for j in 0..self.ks.len() {
            self.precision[j].hits += other.precision[j].hits;
            self.precision[j].considered += other.precision[j].considered;
            self.recall_hits[j] += other.recall_hits[j];
        }
    }

    /// Final figures, in percent; NaN where no query had a relevant item.
    pub fn finish(&self) -> Metrics {
        let pct = |num: f64, den: f64| if den > 0.0 { 100.0 * num / den } else { f64::NAN };
        Metrics {
            precision: self.precision.iter().map(|p| pct(p.hits as f64, p.considered as f64)).collect(),
            map: pct(self.ap_sum, self.n_with_relevant as f64),
            recall: self.recall_hits.iter().map(|&h| pct(h as f64, self.n_with_relevant as f64)).collect(),
        }
    }
}

/// A (pair, mode)'s figures in percent, in the order of the ks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub precision: Vec<f64>,
    pub map: f64,
    pub recall: Vec<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: bool = true;
    const F: bool = false;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }

    #[test]
    fn several_relevant_items() {
        // Relevant at ranks 1, 3, 4 (1-based) of 6; n = 3.
        let r = [T, F, T, T, F, F];
        assert_eq!(relevant_ranks(&r), [0, 2, 3]);
        assert_eq!(precision_at_k(&r, 1), PrecisionAtK { hits: 1, considered: 1 });
        // k = 2: m = 2, top-2 = [T, F].
        assert_eq!(precision_at_k(&r, 2), PrecisionAtK { hits: 1, considered: 2 });
        // k = 3: m = 3, top-3 = [T, F, T].
        assert_eq!(precision_at_k(&r, 3), PrecisionAtK { hits: 2, considered: 3 });
        // AP = (1/1 + 2/3 + 3/4) / 3.
        close(average_precision(&r).unwrap(), (1.0 + 2.0 / 3.0 + 0.75) / 3.0);
        assert_eq!(recall_at_k(&r, 1), Some(true));
    }

    #[test]
    fn fewer_relevant_items_than_k() {
        // n = 2 < k = 5: UCDIR looks at the top min(k, n) = 2 only.
        let r = [F, T, F, F, T, F, F];
        assert_eq!(precision_at_k(&r, 5), PrecisionAtK { hits: 1, considered: 2 });
        assert_eq!(precision_at_k(&r, 5).percent(), Some(50.0));
        // Both relevant at the top: 100 %, even though k = 5 > 2.
        let r2 = [T, T, F, F, F];
        assert_eq!(precision_at_k(&r2, 5).percent(), Some(100.0));
        close(average_precision(&r).unwrap(), (1.0 / 2.0 + 2.0 / 5.0) / 2.0);
        assert_eq!(recall_at_k(&r, 1), Some(false));
        assert_eq!(recall_at_k(&r, 2), Some(true));
        // k beyond the gallery size.
        assert_eq!(precision_at_k(&r, 100), PrecisionAtK { hits: 1, considered: 2 });
    }

    #[test]
    fn ucdir_aggregation_weights_queries_by_min_k_n() {
        // q1: n = 1, hit at top -> 1/1; q2: n = 4, k = 3 -> top-3 has 1 relevant -> 1/3.
        // UCDIR: (1 + 1) / (1 + 3) = 50 %, not the mean of per-query precisions (66.7 %).
        let mut acc = Accumulator::new(&[3]);
        acc.add_ranking(&[T, F, F, F]);
        acc.add_ranking(&[F, T, F, T, T, T]);
        let m = acc.finish();
        close(m.precision[0], 50.0);
    }

    #[test]
    fn class_absent_from_gallery() {
        let r = [F, F, F];
        assert_eq!(precision_at_k(&r, 2), PrecisionAtK { hits: 0, considered: 0 });
        assert_eq!(precision_at_k(&r, 2).percent(), None);
        assert_eq!(average_precision(&r), None);
        assert_eq!(recall_at_k(&r, 2), None);
        // Such a query adds nothing to P@k's sums and is left out of mAP and R@k.
        let mut acc = Accumulator::new(&[1, 2]);
        acc.add_ranking(&r);
        acc.add_ranking(&[F, T, F]);
        assert_eq!(acc.n_queries, 2);
        assert_eq!(acc.n_with_relevant, 1);
        let m = acc.finish();
        close(m.precision[0], 0.0);
        close(m.precision[1], 0.0); // m = min(2, 1) = 1: top-1 is not relevant
        close(m.map, 50.0);
        close(m.recall[0], 0.0);
        close(m.recall[1], 100.0);
        // Nothing relevant at all: NaN, not 0.
        let mut acc = Accumulator::new(&[1]);
        acc.add_ranking(&r);
        assert!(acc.finish().precision[0].is_nan());
        assert!(acc.finish().map.is_nan());
    }

    #[test]
    fn ties_are_resolved_before_the_metrics() {
        // The metrics see a ranking; ties were broken by gallery order when it was built
        // (scoring.rs). Two equal scores [relevant idx 1, other idx 0] rank idx 0 first.
        let r = [F, T];
        assert_eq!(precision_at_k(&r, 1).hits, 0);
        close(average_precision(&r).unwrap(), 0.5);
    }

    #[test]
    fn merge_equals_sequential() {
        let rankings: [&[bool]; 4] = [&[T, F, T], &[F, F, F], &[F, T, T, F], &[T]];
        let mut all = Accumulator::new(&[1, 2]);
        let mut a = Accumulator::new(&[1, 2]);
        let mut b = Accumulator::new(&[1, 2]);
        for (i, r) in rankings.iter().enumerate() {
            all.add_ranking(r);
            if i % 2 == 0 { a.add_ranking(r) } else { b.add_ranking(r) }
        }
        a.merge(&b);
        assert_eq!(a, all);
    }
}
