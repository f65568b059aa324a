//! capmatch-engine: the operations every front end needs, in one library.
//!
//! An [`Engine`] owns a gallery — its catalog and its vector index (`capmatch-store`) — and
//! the models (`capmatch-core`), loaded lazily, once, and shared across threads. It offers:
//!
//! - indexing folders ([`Engine::index_folders`]) and image bytes ([`Engine::index_uploads`]);
//! - search by text, image bytes, image path, vector or indexed image, in every mode
//!   ([`Engine::search`]), each hit explained (both component scores, the matched caption);
//! - what the gallery holds ([`Engine::info`]), and its images and vectors by id;
//! - the neighbour graph of the gallery ([`Engine::neighbours`]: every image's nearest
//!   images in image or caption space) and the scores of given pairs
//!   ([`Engine::score_pairs`]), for the inspection report;
//! - the approximate index that searches use past a million images: built, kept up to date
//!   and tuned for a measured recall ([`ann`]);
//! - dynamic batching of concurrent searches ([`SearchBatcher`], for servers);
//! - one error type, [`EngineError`], whose [`ErrorKind`] a CLI maps to an exit code and a
//!   server to an HTTP status.
//!
//! The CLI, the server and the inspection report are thin layers over this crate; how a
//! query is scored is `capmatch-retrieval`'s, how vectors are stored is `capmatch-store`'s.
//!
//! ```text
//! index:  folder ─► walk ─► hash ─► plan (unchanged / reused / new) ─► decode ─► caption + embed
//!                                                       └──────────────► commit: vectors, then catalog
//! search: query ─► embed (CLIP) ─► vector index: top k by the retrieval order ─► catalog: paths, captions
//! ```

#![forbid(unsafe_code)]

pub mod ann;
pub mod batching;
pub mod check;
pub mod error;
pub mod indexing;
pub mod info;
pub mod migrate;
pub mod models;
pub mod search;
mod storage;
pub mod vector_store;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use capmatch_core::image_io::DecodeLimits;
use capmatch_core::Device;
pub use capmatch_store::{ImageEntry, ImageId, ModelIdentity, VectorRecord};
use capmatch_store::Catalog;

pub use capmatch_retrieval::{self as retrieval, Mode};
pub use capmatch_store::{self as store, Among, CatalogSummary, GraphProgress, IndexStats, NeighbourQuery, Neighbours, NoProgress};
pub use ann::{AnnState, AnnStatus};
pub use batching::{BatchConfig, BatchStats, SearchBatcher};
pub use check::{CheckReport, Problem};
pub use error::{EngineError, ErrorKind, Result};
pub use indexing::uploads::{uploads_dir, Upload, UploadOutcome};
pub use indexing::{IndexObserver, IndexOptions, IndexReport, NoObserver};
pub use info::Info;
pub use migrate::{MigrateReport, VerifyReport};
pub use models::{Dtype, GalleryModels, ModelConfig, Models};
pub use search::{ComponentScores, Hit, Query, SearchRequest, SearchResponse};

use storage::Storage;
pub use vector_store::{Shard, VectorStore};

/// How a reader finds the models to embed its queries with: the ones the index records,
/// with these local overrides.
#[derive(Debug, Clone, Default)]
pub struct QueryModels {
    /// Where the index's CLIP is now, if not where the index recorded it (its config must
    /// be the recorded one).
    pub clip: Option<String>,
    pub dtype: Option<Dtype>,
    pub device: Option<Device>,
}

/// Where the models come from: given (a writer), or found from the index when first needed
/// (a reader: searches by vector or by id never load a model).
enum ModelSource {
    Given(Arc<dyn GalleryModels>),
    FromIndex { identity: Option<ModelIdentity>, overrides: QueryModels, loaded: OnceLock<std::result::Result<Arc<dyn GalleryModels>, String>> },
}

/// A gallery and its models. See the crate documentation.
pub struct Engine {
    storage: Storage,
    models: ModelSource,
    limits: DecodeLimits,
}

impl Engine {
    /// Opens the gallery at `db` for indexing (and searching) with `models`, creating it if
    /// needed. Only one writer at a time: with `wait`, a second one waits for the first
    /// (after calling `on_wait`), else it gets [`EngineError::Busy`].
    pub fn open_writer(db: &Path, models: Arc<dyn GalleryModels>, wait: bool, on_wait: &dyn Fn(&Path)) -> Result<Self> {
        Self::open_writer_in(db, &VectorStore::Local, Shard::ALL, models, wait, on_wait)
    }

    /// Like [`Engine::open_writer`], with the vectors in `store`, indexing only the files of
    /// `shard` (see [`Shard`]): the writers of a sharded run each keep their own catalog
    /// (`db`) and write into one shared store.
    pub fn open_writer_in(
        db: &Path,
        store: &VectorStore,
        shard: Shard,
        models: Arc<dyn GalleryModels>,
        wait: bool,
        on_wait: &dyn Fn(&Path),
    ) -> Result<Self> {
        let storage = Storage::open_writer(db, store, shard, &models.identity(), wait, on_wait)?;
        Ok(Self { storage, models: ModelSource::Given(models), limits: DecodeLimits::default() })
    }

    /// Opens an existing gallery for upkeep that needs no model (building or tuning the
    /// approximate index): a writer, bound to the models the gallery records. Waits for
    /// another writer as [`Engine::open_writer`] does.
    pub fn open_maintainer(db: &Path, wait: bool, on_wait: &dyn Fn(&Path)) -> Result<Self> {
        let identity = capmatch_store::SqliteCatalog::open_read_only(db)?
            .models()?
            .ok_or_else(|| EngineError::EmptyIndex(db.display().to_string()))?;
        // The approximate index is ours, beside a local store only.
        let storage = Storage::open_writer(db, &VectorStore::Local, Shard::ALL, &identity, wait, on_wait)?;
        Ok(Self {
            storage,
            models: ModelSource::FromIndex { identity: Some(identity), overrides: QueryModels::default(), loaded: OnceLock::new() },
            limits: DecodeLimits::default(),
        })
    }

    /// Opens an existing gallery for searching. Its CLIP is resolved and loaded only when a
    /// query needs it.
    pub fn open_reader(db: &Path, models: QueryModels) -> Result<Self> {
        Self::open_reader_in(db, &VectorStore::Local, models)
    }

    /// Like [`Engine::open_reader`], with the vectors in `store`.
    pub fn open_reader_in(db: &Path, store: &VectorStore, models: QueryModels) -> Result<Self> {
        let (storage, identity) = Storage::open_reader(db, store)?;
        Ok(Self {
            storage,
            models: ModelSource::FromIndex { identity, overrides: models, loaded: OnceLock::new() },
            limits: DecodeLimits::default(),
        })
    }

    /// Limits applied to every image the engine decodes (queries, uploads).
    pub fn with_limits(mut self, limits: DecodeLimits) -> Self {
        self.limits = limits;
        self
    }

    pub fn limits(&self) -> &DecodeLimits {
        &self.limits
    }

    /// The catalog file.
    pub fn db(&self) -> &Path {
        self.storage.db()
    }

    /// Where the vectors are.
    pub fn store(&self) -> &VectorStore {
        self.storage.store()
    }

    pub fn is_writer(&self) -> bool {
        self.storage.writable()
    }

    /// The models (resolving and, on use, loading them).
    pub fn models(&self) -> Result<Arc<dyn GalleryModels>> {
        match &self.models {
            ModelSource::Given(m) => Ok(m.clone()),
            ModelSource::FromIndex { identity, overrides, loaded } => loaded
                .get_or_init(|| {
                    let identity = identity.as_ref().ok_or_else(|| format!("the index {} is empty", self.db().display()))?;
                    let device = overrides.device.clone().unwrap_or(Device::Cpu);
                    Models::of_index(identity, overrides.clip.as_deref(), overrides.dtype, &device)
                        .map(|m| Arc::new(m) as Arc<dyn GalleryModels>)
                        .map_err(|e| e.to_string())
                })
                .clone()
                .map_err(|e| EngineError::Model(anyhow::anyhow!(e))),
        }
    }

    /// The models the gallery's vectors were made with.
    pub fn identity(&self) -> Result<Option<ModelIdentity>> {
        Ok(self.storage.catalog().models()?)
    }

    /// Images in the gallery.
    pub fn len(&self) -> Result<usize> {
        self.storage.follow_writer()?;
        Ok(self.storage.index().len())
    }

    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// The domains with their image counts.
    pub fn summary(&self) -> Result<CatalogSummary> {
        Ok(self.storage.catalog().summary()?)
    }

    /// An indexed image.
    pub fn entry(&self, id: ImageId) -> Result<ImageEntry> {
        self.storage
            .entries(&[id])?
            .pop()
            .flatten()
            .ok_or_else(|| EngineError::NotFound(format!("no image with id {id} in the gallery")))
    }

    /// The indexed image at `path` (absolute, as indexed).
    pub fn entry_by_path(&self, path: &str) -> Result<Option<ImageEntry>> {
        Ok(self.storage.catalog().entry_by_path(path)?)
    }

    /// Several images at once (`None` for unknown ids).
    pub fn entries(&self, ids: &[ImageId]) -> Result<Vec<Option<ImageEntry>>> {
        self.storage.entries(ids)
    }

    /// Every indexed image's id and domain.
    pub fn ids(&self) -> Result<Vec<(ImageId, String)>> {
        if self.storage.store().is_local() {
            Ok(self.storage.catalog().ids()?)
        } else {
            // A shared store holds other writers' images too (a writer's own are its
            // catalog's; a reader sees every writer's).
            self.storage.follow_writer()?;
            Ok(self.storage.index().ids()?)
        }
    }

    /// An image's vectors.
    pub fn vectors(&self, id: ImageId) -> Result<VectorRecord> {
        self.storage.index().get(id)?.ok_or_else(|| EngineError::NotFound(format!("no vectors for image {id}")))
    }

    /// A number that changes with every committed change of the vectors (so that a result
    /// derived from them, like an inspection's neighbour graph, knows when it is stale).
    pub fn vector_generation(&self) -> Result<u64> {
        self.storage.follow_writer()?;
        Ok(self.storage.index().generation())
    }

    /// The neighbour graph: for each asked image, its `k` nearest other images among the
    /// candidates, its own image vector as the query (see
    /// `capmatch_store::VectorIndex::neighbours`). Computed by the vector index (blockwise
    /// on the exact index).
    pub fn neighbours(&self, query: &NeighbourQuery<'_>, progress: &dyn GraphProgress) -> Result<Vec<Neighbours>> {
        if query.k == 0 || query.k > search::MAX_K {
            return Err(EngineError::invalid(format!("k must be between 1 and {}, not {}", search::MAX_K, query.k)));
        }
        self.storage.follow_writer()?;
        Ok(self.storage.index().neighbours(query, progress)?)
    }

    /// Both components of `b`'s score for `a`'s image vector, for each pair `(a, b)`
    /// (`None` where an id is not in the gallery).
    pub fn score_pairs(&self, pairs: &[(ImageId, ImageId)]) -> Result<Vec<Option<capmatch_retrieval::ComponentScores>>> {
        self.storage.follow_writer()?;
        Ok(self.storage.index().score_pairs(pairs)?)
    }

    pub(crate) fn require_writer(&self) -> Result<()> {
        if !self.storage.writable() {
            return Err(EngineError::invalid(format!("{} is open for searching only", self.db().display())));
        }
        Ok(())
    }

    /// Indexes folders into the gallery. See [`indexing`].
    pub fn index_folders(&self, options: &IndexOptions, observer: &dyn IndexObserver) -> Result<IndexReport> {
        self.require_writer()?;
        let models = self.models()?;
        let report = indexing::index_folders(&self.storage, models.as_ref(), options, observer)?;
        // The run's new images go into the approximate index's graphs now, once, rather than
        // being scanned exactly by every search until enough of them wait.
        self.storage.flush()?;
        Ok(report)
    }

    /// Adds image bytes to the gallery (kept in [`uploads_dir`]); one outcome per upload,
    /// in order. A bad image is reported in its outcome, never an error of the call.
    pub fn index_uploads(&self, uploads: &[Upload], batch_size: usize, observer: &dyn IndexObserver) -> Result<Vec<UploadOutcome>> {
        self.require_writer()?;
        let models = self.models()?;
        let stored = indexing::uploads::store_uploads(self.db(), uploads, &self.limits)?;
        let mut candidates: Vec<_> = stored.iter().filter_map(|s| s.as_ref().ok().cloned()).collect();
        // The same bytes uploaded twice are one stored file.
        candidates.sort_by(|a, b| a.path.cmp(&b.path));
        candidates.dedup_by(|a, b| a.path == b.path);
        let mut options = IndexOptions::new(Vec::new());
        options.batch_size = batch_size.max(1);
        options.limits = self.limits;
        indexing::index_candidates(&self.storage, models.as_ref(), &candidates, &options, observer)?;
        let mut out = Vec::with_capacity(uploads.len());
        for (upload, stored) in uploads.iter().zip(stored) {
            out.push(match stored {
                Err(e) => {
                    UploadOutcome { name: upload.name.clone(), id: None, error: Some(e.to_string()), error_kind: Some(e.kind()) }
                }
                Ok(c) => {
                    let catalog = self.storage.catalog();
                    match catalog.entry_by_path(&c.path)? {
                        Some(e) => UploadOutcome { name: upload.name.clone(), id: Some(e.id), error: None, error_kind: None },
                        None => {
                            let reason = catalog
                                .tracked_files()?
                                .into_iter()
                                .find(|t| t.path == c.path)
                                .and_then(|t| t.skipped)
                                .unwrap_or_else(|| "not indexed".into());
                            UploadOutcome { name: upload.name.clone(), id: None, error: Some(reason), error_kind: None }
                        }
                    }
                }
            });
        }
        Ok(out)
    }
}

/// The catalog file a `--db` flag names, made absolute (the engine records absolute paths).
pub fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}
