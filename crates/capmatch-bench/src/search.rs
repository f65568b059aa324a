//! Our side of the search workload: one query per call through capmatch-index's
//! [`Gallery::search`] (the interactive case), or batches of queries through the batched
//! scorer (the eval and inspect case), reached through [`BatchScorer`] so that it can be
//! pointed at the shared retrieval module when that lands.

use anyhow::{bail, Context, Result};
use capmatch_eval::scoring::{score_pair, DomainMatrix, ScoreOptions};
use capmatch_eval::Mode;
use capmatch_index::{Gallery, Scoring};
use serde_json::{json, Value};

use crate::agreement::Outputs;
use crate::npy::{self, Matrix};
use crate::worker::{rss_kb, Call, CallFn, WorkerArgs};

/// Queries whose results are written for the comparison with faiss (the first ones of the
/// first call; more would add seconds per 1M-row case).
const CHECKED_QUERIES: usize = 64;

/// Every gallery vector is both the image embedding and the single caption embedding of one
/// entry, and queries are scored in the default `caption` mode.
pub fn worker(args: &WorkerArgs) -> Result<(Value, CallFn)> {
    let (rss_before, _) = rss_kb();
    let vectors = npy::read(args.gallery.as_deref().context("--gallery")?)?;
    let queries = npy::read(args.queries.as_deref().context("--queries")?)?;
    let (n, dim, k) = (vectors.rows, vectors.cols, args.k);
    if queries.cols != dim {
        bail!("queries of dimension {} for a gallery of dimension {dim}", queries.cols);
    }
    let per_call = args.queries_per_call.max(1);
    let checked = CHECKED_QUERIES.min(queries.rows).min(if per_call == 1 { args.queries_per_round } else { per_call });
    let gallery = gallery_of(&vectors)?;
    // Gallery::search is what the one-query rows time, and the results the others are
    // checked against.
    let expected = (0..checked).map(|q| top_k(&gallery, queries.row(q), k)).collect::<Result<Vec<_>>>()?;
    let mut info = json!({"n": n, "dim": dim, "k": k, "scoring": "caption", "queries_per_call": per_call});
    let call: CallFn = if per_call == 1 {
        drop(vectors);
        let per_round = args.queries_per_round.max(1);
        let mut next = 0usize;
        let mut first = Some(expected);
        Box::new(move || {
            for _ in 0..per_round {
                let q = queries.row(next % queries.rows);
                next += 1;
                std::hint::black_box(gallery.search(q, Scoring::Caption, k, None)?);
            }
            let rows = first.take().unwrap_or_default();
            Ok(Call { items: per_round, outputs: Outputs::Topk(rows) })
        })
    } else {
        drop(gallery);
        let mut scorer = EvalScorer::new(&vectors, k)?;
        drop(vectors);
        // The scorer does not return the best k, only the ranks of given items: it is
        // checked by handing it Gallery's top k as the relevant items, which must then rank
        // exactly 0..k. A query where it does not is written with no results, so the row
        // shows a disagreement.
        let agreeing = scorer.agrees_with(&queries.data[..checked * dim], &expected, k)?;
        info["scorer_agrees_with_gallery"] = json!(format!("{}/{}", agreeing.iter().filter(|a| **a).count(), checked));
        let mut first: Option<Vec<Vec<u32>>> =
            Some(expected.into_iter().zip(agreeing).map(|(ids, ok)| if ok { ids } else { Vec::new() }).collect());
        let mut next = 0usize;
        Box::new(move || {
            let start = (next * per_call) % queries.rows;
            next += 1;
            let batch = batch_rows(&queries, start, per_call);
            std::hint::black_box(scorer.search_batch(&batch, k)?);
            Ok(Call { items: per_call, outputs: Outputs::Topk(first.take().unwrap_or_default()) })
        })
    };
    let (rss_after, _) = rss_kb();
    info["rss_before_load_kb"] = json!(rss_before);
    info["rss_after_build_kb"] = json!(rss_after);
    Ok((info, call))
}

fn gallery_of(m: &Matrix) -> Result<Gallery> {
    let mut gallery = Gallery::new(m.cols);
    for i in 0..m.rows {
        let row = m.row(i);
        gallery.push(&format!("gallery/{i:07}.jpg"), "bench", vec![format!("caption {i}")], row, row)?;
    }
    Ok(gallery)
}

fn top_k(gallery: &Gallery, query: &[f32], k: usize) -> Result<Vec<u32>> {
    Ok(gallery.search(query, Scoring::Caption, k, None)?.iter().map(|h| h.entry as u32).collect())
}

/// `count` query rows from `start`, wrapping around the query file.
fn batch_rows(queries: &Matrix, start: usize, count: usize) -> Vec<f32> {
    (0..count).flat_map(|i| queries.row((start + i) % queries.rows).iter().copied()).collect()
}

/// A batched exact search: many queries scored against the gallery at once.
pub trait BatchScorer {
    /// Scores `queries` (row-major, `dim` wide) against the gallery, doing the work of a
    /// top-`k` search for each.
    fn search_batch(&self, queries: &[f32], k: usize) -> Result<()>;
}

/// The batched scorer we have today: capmatch-eval's blockwise gemm scorer (`score_pair`).
/// It ranks given relevant items rather than returning the best k, so a search is timed as
/// scoring every query against the whole gallery and ranking `k` items per query (the
/// gallery is labelled in classes of `k` items, query i asks for class i mod classes): the
/// same products and one pass over each score row, as a top-k selection does.
pub struct EvalScorer {
    gallery: DomainMatrix,
    dim: usize,
    classes: u32,
}

impl EvalScorer {
    pub fn new(vectors: &Matrix, k: usize) -> Result<Self> {
        let (n, dim) = (vectors.rows, vectors.cols);
        let classes = (n / k.max(1)).max(1) as u32;
        let captions: Vec<[Vec<f32>; 1]> = (0..n).map(|i| [vectors.row(i).to_vec()]).collect();
        let rows = (0..n).map(|i| (i as u32 % classes, vectors.row(i), &captions[i][..]));
        let gallery = DomainMatrix::new(dim, rows, false).map_err(anyhow::Error::msg)?;
        Ok(Self { gallery, dim, classes })
    }

    /// Block size: the scorer's own cap for a gallery of this size (about 16 MiB per score
    /// buffer), but small enough that a small batch still gives every thread a block (the
    /// scorer's default would put a 64-query batch against 10k vectors in one block, on one
    /// thread).
    fn options(&self, queries: usize) -> ScoreOptions {
        let by_memory = ((4usize << 20) / self.gallery.len().max(1)).clamp(8, 256);
        let by_threads = queries.div_ceil(rayon::current_num_threads().max(1));
        ScoreOptions { block_rows: Some(by_memory.min(by_threads).max(1)), ..ScoreOptions::default() }
    }

    fn queries(&self, queries: &[f32], classes: impl IntoIterator<Item = u32>) -> Result<DomainMatrix> {
        let rows = queries.chunks(self.dim).zip(classes).map(|(q, c)| (c, q, &[][..]));
        DomainMatrix::new(self.dim, rows, false).map_err(anyhow::Error::msg)
    }

    /// Σ hits and Σ considered of P@k over `queries` (classes as given).
    fn precision(&self, queries: &DomainMatrix, k: usize) -> (usize, usize) {
        let acc = score_pair(queries, &self.gallery, &[Mode::Caption], &[k], &self.options(queries.len()), &|_| {});
        (acc[0].precision[0].hits, acc[0].precision[0].considered)
    }

    /// For each query, whether the scorer puts exactly the `k` items of `expected` (its best
    /// k by another method) in the first k places, i.e. P@k = 100 % with those items as the
    /// only relevant ones. Queries whose expected items do not overlap are checked together
    /// (each its own class); a group that fails is checked query by query.
    pub fn agrees_with(&mut self, queries: &[f32], expected: &[Vec<u32>], k: usize) -> Result<Vec<bool>> {
        let timing_classes = std::mem::take(&mut self.gallery.classes);
        let mut agrees = vec![false; expected.len()];
        let mut left: Vec<usize> = (0..expected.len()).filter(|&q| expected[q].len() == k).collect();
        while !left.is_empty() {
            let mut taken = std::collections::HashSet::new();
            let mut group = Vec::new();
            left.retain(|&q| {
                if expected[q].iter().any(|id| taken.contains(id)) {
                    return true;
                }
                taken.extend(expected[q].iter().copied());
                group.push(q);
                false
            });
            self.gallery.classes = vec![0; timing_classes.len()];
            for (c, &q) in group.iter().enumerate() {
                for &id in &expected[q] {
                    self.gallery.classes[id as usize] = c as u32 + 1;
                }
            }
            let rows: Vec<f32> = group.iter().flat_map(|&q| queries[q * self.dim..(q + 1) * self.dim].iter().copied()).collect();
            let (hits, considered) = self.precision(&self.queries(&rows, 1..=group.len() as u32)?, k);
            if hits == considered {
                group.iter().for_each(|&q| agrees[q] = true);
                continue;
            }
            for (c, &q) in group.iter().enumerate() {
                let (hits, considered) = self.precision(&self.queries(&rows[c * self.dim..(c + 1) * self.dim], [c as u32 + 1])?, k);
                agrees[q] = hits == considered;
            }
        }
        self.gallery.classes = timing_classes;
        Ok(agrees)
    }
}

impl BatchScorer for EvalScorer {
    fn search_batch(&self, queries: &[f32], k: usize) -> Result<()> {
        let rows = queries.len() / self.dim;
        let batch = self.queries(queries, (0..rows as u32).map(|i| i % self.classes))?;
        std::hint::black_box(self.precision(&batch, k));
        Ok(())
    }
}
