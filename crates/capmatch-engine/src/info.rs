//! What a gallery holds, as one serialisable struct.

use capmatch_store::{AnnStatus, CatalogSummary, IndexStats};
use serde::Serialize;

use crate::error::Result;
use crate::Engine;

/// What `capmatch info` shows and a server's `/api/info` returns.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Info {
    #[serde(flatten)]
    pub catalog: CatalogSummary,
    /// The catalog file.
    pub db: String,
    /// Bytes on disk: the catalog and the vector index.
    pub db_bytes: u64,
    pub vectors: IndexStats,
    /// The approximate index, if any, and whether searches use it.
    pub ann: AnnStatus,
}

impl Engine {
    pub fn info(&self) -> Result<Info> {
        self.storage.follow_writer()?;
        let (catalog, catalog_bytes) = {
            let c = self.storage.catalog();
            (c.summary()?, c.disk_size())
        };
        let (vectors, ann) = {
            let index = self.storage.index();
            (index.stats(), index.ann_status())
        };
        Ok(Info {
            catalog,
            db: self.storage.db().display().to_string(),
            db_bytes: catalog_bytes + vectors.disk_bytes + ann.disk_bytes,
            vectors,
            ann,
        })
    }
}
