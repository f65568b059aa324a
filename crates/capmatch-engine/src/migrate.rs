//! Moving a gallery's vectors between stores (`capmatch migrate`) and checking a store
//! against the exact local one (`capmatch verify`).
//!
//! Migration copies what the local store holds, with each image's catalog entry, into
//! another store (a Milvus collection). It is resumable: an image the destination already
//! holds is not sent again (a destination image row is complete by the store's commit
//! protocol), so a run killed halfway is simply run again. Images the destination holds and
//! the gallery no longer has are removed, so the destination ends as a copy.

use std::collections::HashSet;

use capmatch_retrieval::Target;
use capmatch_store::exact::Access;
use capmatch_store::{ImageId, VectorHit, VectorQuery};
use serde::Serialize;

use crate::error::{EngineError, Result};
use crate::vector_store::{Shard, VectorStore};
use crate::Engine;

/// What a migration did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MigrateReport {
    /// Images in the gallery.
    pub images: usize,
    /// Images sent in this run.
    pub copied: usize,
    /// Images the destination already held (an earlier, interrupted run).
    pub already: usize,
    /// Images the destination held that the gallery does not (removed from it).
    pub removed: usize,
}

/// What `capmatch verify` found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VerifyReport {
    /// Where the checked vectors are.
    pub store: String,
    /// Files in the catalog, and images in the checked store.
    pub catalog_images: usize,
    pub store_images: usize,
    /// Catalog files whose vectors the store lacks (at most 20 listed, all counted).
    pub missing: usize,
    pub missing_examples: Vec<String>,
    /// Whether the exact local store was there to compare searches with.
    pub compared: bool,
    /// Gallery images used as queries, and results per query.
    pub queries: usize,
    pub k: usize,
    /// Mean recall@k of the store's answers against the exact local store's, per target.
    pub recall_caption: f64,
    pub recall_image: f64,
    /// The largest difference between the two stores' scores of one image for one query.
    pub max_score_difference: f32,
}

impl VerifyReport {
    /// Counts agree and every compared search found at least `min_recall` of the truth.
    pub fn passes(&self, min_recall: f64) -> bool {
        self.missing == 0 && (!self.compared || (self.recall_caption >= min_recall && self.recall_image >= min_recall))
    }
}

impl Engine {
    /// Copies this gallery's vectors, with each image's catalog entry, into `to` (see the
    /// module documentation). `progress` is told (done, total) after each batch.
    pub fn migrate_to(&self, to: &VectorStore, batch: usize, progress: &dyn Fn(usize, usize)) -> Result<MigrateReport> {
        if to.is_local() {
            return Err(EngineError::invalid("migrate copies the local vectors to another store: name it with --to milvus://..."));
        }
        let identity = self.identity()?.ok_or_else(|| EngineError::EmptyIndex(self.db().display().to_string()))?;
        let mut dest = to.open(self.db(), Access::ReadWrite, Some(&identity.vector_fingerprint()), Shard::ALL)?;
        self.storage.follow_writer()?;
        let ids: Vec<ImageId> = self.storage.catalog().ids()?.into_iter().map(|(id, _)| id).collect();
        let wanted: HashSet<ImageId> = ids.iter().copied().collect();
        let held: HashSet<ImageId> = dest.ids()?.into_iter().map(|(id, _)| id).collect();
        let mut report = MigrateReport { images: ids.len(), ..Default::default() };
        let stale: Vec<ImageId> = held.iter().filter(|id| !wanted.contains(id)).copied().collect();
        if !stale.is_empty() {
            report.removed = dest.remove(&stale)?;
        }
        let todo: Vec<ImageId> = ids.iter().filter(|id| !held.contains(id)).copied().collect();
        report.already = ids.len() - todo.len();
        progress(report.already, ids.len());
        for chunk in todo.chunks(batch.max(1)) {
            let mut records = Vec::with_capacity(chunk.len());
            {
                let index = self.storage.index();
                for &id in chunk {
                    // A file without vectors is the local store's problem (`capmatch info`
                    // reports it); it is not copied.
                    records.extend(index.get(id)?);
                }
            }
            let entries = self.storage.entries(chunk)?.into_iter().flatten().collect::<Vec<_>>();
            dest.upsert_with_entries(&records, &entries)?;
            report.copied += records.len();
            progress(report.already + report.copied, ids.len());
        }
        dest.flush()?;
        Ok(report)
    }

    /// Checks this gallery's store: every catalog file has vectors there, and searches for
    /// `queries` of the gallery's own images (spread over it) find what the exact local
    /// store finds (recall@`k`, caption and image targets). Without local vectors beside
    /// the catalog, only the counts are checked.
    pub fn verify_store(&self, queries: usize, k: usize) -> Result<VerifyReport> {
        self.storage.follow_writer()?;
        let ids: Vec<ImageId> = {
            let mut ids: Vec<ImageId> = self.storage.catalog().ids()?.into_iter().map(|(id, _)| id).collect();
            ids.sort();
            ids
        };
        let index = self.storage.index();
        let store_images = index.len();
        let held: HashSet<ImageId> = index.ids()?.into_iter().map(|(id, _)| id).collect();
        let missing: Vec<ImageId> = ids.iter().filter(|id| !held.contains(id)).copied().collect();
        let missing_examples: Vec<String> =
            self.storage.catalog().entries(&missing[..missing.len().min(20)])?.into_iter().flatten().map(|e| e.path).collect();
        let mut report = VerifyReport {
            store: self.store().to_string(),
            catalog_images: ids.len(),
            store_images,
            missing: missing.len(),
            missing_examples,
            compared: false,
            queries: 0,
            k,
            recall_caption: f64::NAN,
            recall_image: f64::NAN,
            max_score_difference: 0.0,
        };
        let identity = self.identity()?;
        let local = match VectorStore::Local.open(self.db(), Access::ReadOnly, identity.as_ref().map(|i| i.vector_fingerprint()).as_deref(), Shard::ALL) {
            Ok(local) if !local.is_empty() => local,
            _ => return Ok(report),
        };
        let step = (ids.len() / queries.max(1)).max(1);
        let sample: Vec<ImageId> = ids.iter().step_by(step).take(queries).copied().collect();
        let (mut recall_caption, mut recall_image, mut asked) = (0.0, 0.0, 0usize);
        for id in sample {
            let Some(record) = local.get(id)? else { continue };
            for target in [Target::Captions, Target::Image] {
                let query = VectorQuery { vectors: &record.image, target, k, domain: None };
                let truth = local.search_many_exact(std::slice::from_ref(&query))?.pop().unwrap_or_default();
                let got = index.search_many_exact(std::slice::from_ref(&query))?.pop().unwrap_or_default();
                let recall = recall_at(&truth, &got, k);
                report.max_score_difference = report.max_score_difference.max(score_difference(&truth, &got));
                match target {
                    Target::Captions => recall_caption += recall,
                    _ => recall_image += recall,
                }
            }
            asked += 1;
        }
        if asked > 0 {
            report.compared = true;
            report.queries = asked;
            report.recall_caption = recall_caption / asked as f64;
            report.recall_image = recall_image / asked as f64;
        }
        Ok(report)
    }
}

/// The share of the truth's top `k` ids that `got`'s top `k` holds; an answer shorter than
/// `k` because the gallery is smaller is judged on what there is.
fn recall_at(truth: &[VectorHit], got: &[VectorHit], k: usize) -> f64 {
    let want: HashSet<ImageId> = truth.iter().take(k).map(|h| h.id).collect();
    if want.is_empty() {
        return 1.0;
    }
    let found = got.iter().take(k).filter(|h| want.contains(&h.id)).count();
    found as f64 / want.len() as f64
}

/// The largest score difference of an image both answers hold.
fn score_difference(truth: &[VectorHit], got: &[VectorHit]) -> f32 {
    let mut worst = 0.0f32;
    for t in truth {
        if let Some(g) = got.iter().find(|g| g.id == t.id) {
            if t.score.is_finite() && g.score.is_finite() {
                worst = worst.max((t.score - g.score).abs());
            }
        }
    }
    worst
}

#[cfg(test)]
mod tests {
    use super::*;
    use capmatch_retrieval::ComponentScores;

    fn hit(id: u64, score: f32) -> VectorHit {
        VectorHit { id: ImageId(id), score, components: ComponentScores { caption: score, image: score, best_caption: Some(0) } }
    }

    #[test]
    fn recall_counts_the_truths_ids_in_the_answer() {
        let truth = [hit(1, 0.9), hit(2, 0.8), hit(3, 0.7), hit(4, 0.6)];
        assert_eq!(recall_at(&truth, &truth, 4), 1.0);
        assert_eq!(recall_at(&truth, &[hit(1, 0.9), hit(3, 0.7), hit(9, 0.65), hit(2, 0.8)], 4), 0.75);
        assert_eq!(recall_at(&truth[..2], &[hit(2, 0.8)], 10), 0.5, "a small gallery is judged on what there is");
        assert_eq!(recall_at(&[], &[], 10), 1.0);
        assert!((score_difference(&truth, &[hit(2, 0.8005)]) - 0.0005).abs() < 1e-6);
    }
}
