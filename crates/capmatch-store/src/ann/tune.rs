//! Measuring the approximate index's recall against the exact index, and choosing the search
//! breadth that reaches a target.
//!
//! The queries are a sample of the gallery's own images (their image vectors, evenly spread
//! over the rows), so the measurement follows the gallery as it grows: run it again after
//! the gallery has grown, and the breadth follows. Each query's own image is left out of both
//! rankings (it would be found trivially in image mode). A result counts as found when the
//! exact top k holds it, or when it ties the exact k-th score. The target is checked against
//! the lower end of the measured recall's 95% confidence interval, not the measurement
//! itself: the breadth must reach it for the gallery's other images too, not just for the
//! sample.

use std::collections::HashSet;

use capmatch_retrieval::{same_rank_score, Target};
use serde::Serialize;

use super::{now_secs, AnnIndex, Graphs, Tuning};
use crate::error::{Result, StoreError};
use crate::id::ImageId;
use crate::vector_index::{VectorHit, VectorIndex, VectorQuery};

/// The breadths (efSearch) tried, in order; the first whose recall floor reaches the target
/// is kept.
const BREADTHS: [usize; 13] = [16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024];

/// What `capmatch ann tune` asks for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TuneOptions {
    /// Recall@k to reach, in both caption and image mode.
    pub target_recall: f64,
    /// Gallery images used as queries.
    pub sample: usize,
    pub k: usize,
}

impl Default for TuneOptions {
    fn default() -> Self {
        Self { target_recall: 0.98, sample: 200, k: 10 }
    }
}

/// Recall measured at one breadth.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TunePoint {
    pub breadth: usize,
    pub caption_recall: f64,
    pub image_recall: f64,
}

/// The outcome: the tuning recorded, and every breadth measured on the way.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TuneReport {
    pub tuning: Tuning,
    pub curve: Vec<TunePoint>,
}

/// One sampled query's exact answer in one mode.
struct Truth {
    ids: HashSet<ImageId>,
    cut: f32,
}

/// The `k` best hits other than `own`.
fn others(hits: Vec<VectorHit>, own: ImageId, k: usize) -> Vec<VectorHit> {
    hits.into_iter().filter(|h| h.id != own).take(k).collect()
}

fn ratio((found, wanted): (usize, usize)) -> f64 {
    if wanted == 0 { 1.0 } else { found as f64 / wanted as f64 }
}

/// The lower end of the 95% Wilson score interval of `found` successes in `wanted` trials:
/// a recall measured on a sample, discounted for the sample's size (0.98 measured on 1,000
/// results is only known to be above 0.969).
fn wilson_floor((found, wanted): (usize, usize)) -> f64 {
    if wanted == 0 {
        return 1.0;
    }
    const Z: f64 = 1.96;
    let n = wanted as f64;
    let p = found as f64 / n;
    let z2 = Z * Z;
    ((p + z2 / (2.0 * n) - Z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt()) / (1.0 + z2 / n)).max(0.0)
}

pub(super) fn measure(ann: &AnnIndex, g: &Graphs, options: &TuneOptions) -> Result<TuneReport> {
    if !(0.0..=1.0).contains(&options.target_recall) || options.k == 0 || options.sample == 0 {
        return Err(StoreError::InvalidInput(format!(
            "a target recall between 0 and 1, k ≥ 1 and a sample ≥ 1 are needed (got {}, {}, {})",
            options.target_recall, options.k, options.sample
        )));
    }
    let s = ann.exact.snapshot();
    let live: Vec<usize> = (0..s.rows()).filter(|&r| s.is_live(r)).collect();
    let n = options.sample.min(live.len());
    let queries: Vec<(ImageId, Vec<f32>)> = (0..n)
        .map(|i| live[i * live.len() / n])
        .map(|row| s.record(row))
        .filter(|r| r.image.iter().all(|x| x.is_finite()))
        .map(|r| (r.id, r.image))
        .collect();
    if queries.is_empty() {
        return Err(StoreError::InvalidInput("the gallery has no image to measure recall with".into()));
    }
    let k = options.k;
    let targets = [Target::Captions, Target::Image];
    // One more than k: the query's own image is dropped from both rankings.
    fn query(v: &[f32], target: Target, k: usize) -> VectorQuery<'_> {
        VectorQuery { vectors: v, target, k: k + 1, domain: None }
    }
    let mut truths: Vec<Vec<Truth>> = Vec::new();
    for &target in &targets {
        let mut per_query = Vec::with_capacity(queries.len());
        for (own, v) in &queries {
            let exact = others(ann.exact.search(&query(v, target, k))?, *own, k);
            let cut = exact.last().map_or(f32::NEG_INFINITY, |h| h.score);
            per_query.push(Truth { ids: exact.iter().map(|h| h.id).collect(), cut });
        }
        truths.push(per_query);
    }
    // (found, wanted) over the sample, in one mode.
    let count = |target_index: usize| -> Result<(usize, usize)> {
        let mut found = 0usize;
        let mut wanted = 0usize;
        for ((own, v), truth) in queries.iter().zip(&truths[target_index]) {
            let approx = others(ann.search_graphs(g, &query(v, targets[target_index], k))?, *own, k);
            wanted += truth.ids.len();
            found += approx.iter().filter(|h| truth.ids.contains(&h.id) || same_rank_score(h.score, truth.cut)).count();
        }
        Ok((found, wanted))
    };
    let mut curve = Vec::new();
    let mut floor = 0.0;
    for breadth in BREADTHS {
        g.images.set_breadth(breadth);
        g.captions.set_breadth(breadth);
        let (captions, images) = (count(0)?, count(1)?);
        let point = TunePoint { breadth, caption_recall: ratio(captions), image_recall: ratio(images) };
        floor = wilson_floor(captions).min(wilson_floor(images));
        tracing::debug!(
            "breadth {breadth}: recall@{k} caption {:.4}, image {:.4}, floor {floor:.4}",
            point.caption_recall,
            point.image_recall
        );
        curve.push(point);
        if floor >= options.target_recall {
            break;
        }
    }
    // Searches keep the recorded breadth until the caller records the new one.
    g.images.set_breadth(g.manifest.breadth);
    g.captions.set_breadth(g.manifest.breadth);
    let chosen = *curve.last().expect("at least one breadth");
    Ok(TuneReport {
        tuning: Tuning {
            target_recall: options.target_recall,
            k,
            breadth: chosen.breadth,
            caption_recall: chosen.caption_recall,
            image_recall: chosen.image_recall,
            recall_floor: floor,
            sample: queries.len(),
            images: live.len() as u64,
            measured_at: now_secs(),
        },
        curve,
    })
}

#[cfg(test)]
mod tests {
    use super::wilson_floor;

    #[test]
    fn the_floor_discounts_small_samples() {
        // Reference values of the Wilson score interval's lower end (z = 1.96).
        assert!((wilson_floor((980, 1000)) - 0.96931).abs() < 1e-4);
        assert!((wilson_floor((10, 10)) - 0.72246).abs() < 1e-4);
        assert!((wilson_floor((1990, 2000)) - 0.99082).abs() < 1e-4);
        assert_eq!(wilson_floor((0, 0)), 1.0);
        assert!(wilson_floor((0, 50)).abs() < 1e-12);
    }
}
