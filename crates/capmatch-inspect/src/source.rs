//! What an inspection needs of a gallery, as a trait: the engine in production, an index and
//! a list of images in tests.

use capmatch_engine::{Engine, GraphProgress, NeighbourQuery, Neighbours};
use capmatch_retrieval::ComponentScores;
use capmatch_store::ImageId;
use serde::Serialize;

use crate::error::Result;

/// An indexed image, as the report shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Image {
    pub id: ImageId,
    pub path: String,
    pub domain: String,
    /// blake3 of the file's bytes: equal hashes are identical files.
    pub hash: String,
    pub captions: Vec<String>,
}

/// A gallery to inspect.
pub trait Source {
    /// Every image, in a stable order (the report's order of ties).
    fn images(&self) -> Result<Vec<Image>>;
    /// Changes with every change of the vectors (see `Engine::vector_generation`).
    fn generation(&self) -> Result<u64>;
    /// See `capmatch_store::VectorIndex::neighbours`.
    fn neighbours(&self, query: &NeighbourQuery<'_>, progress: &dyn GraphProgress) -> Result<Vec<Neighbours>>;
    /// See `capmatch_store::VectorIndex::score_pairs`.
    fn score_pairs(&self, pairs: &[(ImageId, ImageId)]) -> Result<Vec<Option<ComponentScores>>>;
}

/// Catalog rows fetched per call (one prepared statement per id underneath).
const ENTRY_BATCH: usize = 4096;

impl Source for Engine {
    fn images(&self) -> Result<Vec<Image>> {
        let ids: Vec<ImageId> = self.ids()?.into_iter().map(|(id, _)| id).collect();
        let mut images = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(ENTRY_BATCH) {
            images.extend(self.entries(chunk)?.into_iter().flatten().map(|e| Image {
                id: e.id,
                path: e.path,
                domain: e.domain,
                hash: e.hash,
                captions: e.captions,
            }));
        }
        images.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(images)
    }

    fn generation(&self) -> Result<u64> {
        Ok(self.vector_generation()?)
    }

    fn neighbours(&self, query: &NeighbourQuery<'_>, progress: &dyn GraphProgress) -> Result<Vec<Neighbours>> {
        Ok(Engine::neighbours(self, query, progress)?)
    }

    fn score_pairs(&self, pairs: &[(ImageId, ImageId)]) -> Result<Vec<Option<ComponentScores>>> {
        Ok(Engine::score_pairs(self, pairs)?)
    }
}
