//! The gallery's two stores, kept consistent: the catalog (source of truth) and the vector
//! index, with the writer lock and the recovery after a crash.
//!
//! # Writing
//!
//! Each batch is one [`Storage::commit`]: the new vectors are written to the index first
//! (an atomic commit of the index), then the catalog's transaction, which records the
//! index's generation; vectors of files the catalog dropped are removed last, and the
//! generation recorded again. A crash between two of those steps leaves the two stores'
//! generations different, and the next writer to open the gallery reconciles them
//! ([`Storage::reconcile`]): vectors of ids the catalog does not know are removed, files
//! whose vectors are missing are forgotten (so the next run over their folder indexes them
//! again), and a domain that changed is rewritten. Ids are derived from paths, so writing
//! the same file again after a crash writes the same id: nothing is duplicated.
//!
//! # One writer
//!
//! A writer holds an exclusive lock on `<db>.lock` for as long as it is open. A second
//! writer waits for it (the caller is told, so that a user sees why nothing happens);
//! readers never wait.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::SystemTime;

use capmatch_store::catalog::sqlite::SCHEMA_VERSION_V1;
use capmatch_store::exact::Access;
use capmatch_store::ann::{GraphParams, TuneOptions, TuneReport};
use capmatch_store::{
    AnnIndex, AnnStatus, Catalog, CatalogBatch, ContentRecord, ExactIndex, ImageEntry, ImageId, ModelIdentity, SqliteCatalog,
    VectorIndex, VectorRecord,
};

use crate::error::{EngineError, Result};
use crate::vector_store::{GalleryIndex, Shard, VectorStore};

/// The exclusive writer lock of a gallery.
pub(crate) struct WriterLock {
    _file: File,
}

impl WriterLock {
    pub(crate) fn path_for(db: &Path) -> PathBuf {
        let mut name = db.as_os_str().to_owned();
        name.push(".lock");
        PathBuf::from(name)
    }

    /// Takes the lock, waiting for another writer if `wait` (after telling `on_wait`).
    pub(crate) fn acquire(db: &Path, wait: bool, on_wait: &dyn Fn(&Path)) -> Result<Self> {
        let path = Self::path_for(db);
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| capmatch_store::StoreError::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                if !wait {
                    return Err(EngineError::Busy(db.display().to_string()));
                }
                on_wait(db);
                file.lock().map_err(|e| capmatch_store::StoreError::io(&path, e))?;
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(capmatch_store::StoreError::io(&path, e).into()),
        }
        Ok(Self { _file: file })
    }
}

/// The catalog and the vector index of one gallery.
///
/// The vector index is a [`GalleryIndex`] of the store the user chose (see
/// [`VectorStore`]): locally, the exact index wrapped by the approximate one
/// ([`capmatch_store::AnnIndex`]), which passes every search to the exact path until its
/// graphs are built (`capmatch ann build`) and whenever they are not usable; in Milvus, a
/// collection the server indexes itself. `search_many_exact` forces the exact path
/// (`capmatch search --exact`).
pub(crate) struct Storage {
    db: PathBuf,
    catalog: Mutex<Box<dyn Catalog>>,
    index: RwLock<Box<dyn GalleryIndex>>,
    writable: bool,
    store: VectorStore,
    /// The part of the gallery this writer indexes.
    shard: Shard,
    /// When the index's manifest was last seen changed (readers follow other writers).
    seen: Mutex<[Option<SystemTime>; 2]>,
    _lock: Option<WriterLock>,
}

impl Storage {
    /// Opens a gallery for writing with `identity`'s models: creates it if needed, upgrades
    /// an index of an earlier version, checks the models, and recovers from a crash.
    pub(crate) fn open_writer(
        db: &Path,
        store: &VectorStore,
        shard: Shard,
        identity: &ModelIdentity,
        wait: bool,
        on_wait: &dyn Fn(&Path),
    ) -> Result<Self> {
        let lock = WriterLock::acquire(db, wait, on_wait)?;
        let mut catalog = SqliteCatalog::open(db)?;
        let fingerprint = identity.vector_fingerprint();
        let vectors = ExactIndex::dir_for(db);
        if catalog.schema_version() == SCHEMA_VERSION_V1 {
            if !store.is_local() {
                return Err(EngineError::invalid(format!(
                    "{} is an index of an earlier capmatch: upgrade it in place first (`capmatch index` with it and no \
                     --store), then copy it with `capmatch migrate --from {} --to {store}`",
                    db.display(),
                    db.display()
                )));
            }
            upgrade_v1(&mut catalog, &vectors, &fingerprint)?;
        }
        catalog.bind_models(identity)?;
        let index = store.open(db, Access::ReadWrite, Some(&fingerprint), shard)?;
        let storage = Self {
            db: db.to_path_buf(),
            catalog: Mutex::new(Box::new(catalog)),
            index: RwLock::new(index),
            writable: true,
            store: store.clone(),
            shard,
            seen: Mutex::new([None; 2]),
            _lock: Some(lock),
        };
        storage.reconcile()?;
        Ok(storage)
    }

    /// Opens an existing gallery for reading. Returns the models it was built with.
    pub(crate) fn open_reader(db: &Path, store: &VectorStore) -> Result<(Self, Option<ModelIdentity>)> {
        let catalog = SqliteCatalog::open_read_only(db)?;
        if catalog.schema_version() == SCHEMA_VERSION_V1 {
            return Err(EngineError::InvalidRequest(format!(
                "{} is an index of an earlier capmatch; run `capmatch index` with it once to upgrade it",
                db.display()
            )));
        }
        let identity = catalog.models()?;
        let fingerprint = identity.as_ref().map(ModelIdentity::vector_fingerprint);
        let index = store.open(db, Access::ReadOnly, fingerprint.as_deref(), Shard::ALL)?;
        let storage = Self {
            db: db.to_path_buf(),
            catalog: Mutex::new(Box::new(catalog)),
            index: RwLock::new(index),
            writable: false,
            store: store.clone(),
            shard: Shard::ALL,
            seen: Mutex::new(manifest_mtimes(db)),
            _lock: None,
        };
        Ok((storage, identity))
    }

    pub(crate) fn db(&self) -> &Path {
        &self.db
    }

    pub(crate) fn writable(&self) -> bool {
        self.writable
    }

    pub(crate) fn store(&self) -> &VectorStore {
        &self.store
    }

    pub(crate) fn shard(&self) -> Shard {
        self.shard
    }

    pub(crate) fn catalog(&self) -> MutexGuard<'_, Box<dyn Catalog>> {
        self.catalog.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn index(&self) -> RwLockReadGuard<'_, Box<dyn GalleryIndex>> {
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    fn index_mut(&self) -> RwLockWriteGuard<'_, Box<dyn GalleryIndex>> {
        self.index.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes the index's state durable and merges new rows into the approximate index's
    /// graphs (the end of an indexing run).
    pub(crate) fn flush(&self) -> Result<()> {
        Ok(self.index_mut().flush()?)
    }

    /// Builds (or rebuilds) the approximate index from every image.
    pub(crate) fn build_ann(&self, params: GraphParams) -> Result<AnnStatus> {
        let mut index = self.index_mut();
        Ok(index.approximate_mut().ok_or_else(|| self.no_approximate_index())?.build(params)?)
    }

    /// Measures the approximate index's recall and sets its search breadth.
    pub(crate) fn tune_ann(&self, options: &TuneOptions) -> Result<TuneReport> {
        let mut index = self.index_mut();
        Ok(index.approximate_mut().ok_or_else(|| self.no_approximate_index())?.tune(options)?)
    }

    fn no_approximate_index(&self) -> EngineError {
        EngineError::invalid(format!(
            "the vectors are in {}, which keeps its own index on the server: the local approximate index \
             (`capmatch ann`) is for the local store only",
            self.store
        ))
    }

    /// A reader follows the commits of a writer in another process (cheap when nothing
    /// changed: one `stat`).
    pub(crate) fn follow_writer(&self) -> Result<()> {
        if self.writable || !self.store.is_local() {
            // A server-side store answers every search with its latest commits.
            return Ok(());
        }
        let now = manifest_mtimes(&self.db);
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if now != *seen {
            self.index_mut().refresh()?;
            *seen = now;
        }
        Ok(())
    }

    /// Writes one batch: `vectors` (new or replaced images), then the catalog's `batch`,
    /// then the removal of what the catalog dropped. See the module documentation.
    pub(crate) fn commit(&self, vectors: &[VectorRecord], mut batch: CatalogBatch) -> Result<()> {
        let mut index = self.index_mut();
        let mut catalog = self.catalog();
        if !vectors.is_empty() {
            if self.store.is_local() {
                index.upsert(vectors)?;
            } else {
                index.upsert_with_entries(vectors, &entries_for(vectors, &batch, &**catalog)?)?;
            }
            if batch.dim.is_none() {
                batch.dim = index.dim();
            }
        }
        batch.vector_generation = Some(index.generation());
        let applied = catalog.apply(&batch)?;
        if !applied.removed.is_empty() {
            index.remove(&applied.removed)?;
            catalog.set_vector_generation(index.generation())?;
        }
        Ok(())
    }

    /// Makes the two stores agree after a crash (see the module documentation). Cheap when
    /// they already do: the generations match.
    pub(crate) fn reconcile(&self) -> Result<()> {
        let mut index = self.index_mut();
        let mut catalog = self.catalog();
        if catalog.vector_generation()? == Some(index.generation()) {
            return Ok(());
        }
        let in_catalog: HashMap<ImageId, String> = catalog.ids()?.into_iter().collect();
        let in_index: HashMap<ImageId, String> = index.ids()?.into_iter().collect();
        let orphans: Vec<ImageId> = in_index.keys().filter(|id| !in_catalog.contains_key(id)).copied().collect();
        let missing: Vec<ImageId> = in_catalog.keys().filter(|id| !in_index.contains_key(id)).copied().collect();
        let mut moved = Vec::new();
        for (id, domain) in &in_catalog {
            if in_index.get(id).is_some_and(|d| d != domain) {
                if let Some(mut record) = index.get(*id)? {
                    record.domain = domain.clone();
                    moved.push(record);
                }
            }
        }
        if !orphans.is_empty() {
            tracing::info!("removing {} vectors an interrupted run left without a catalog entry", orphans.len());
            index.remove(&orphans)?;
        }
        if !moved.is_empty() {
            let entries = if self.store.is_local() { Vec::new() } else { entries_for(&moved, &CatalogBatch::default(), &**catalog)? };
            index.upsert_with_entries(&moved, &entries)?;
        }
        if !missing.is_empty() {
            let paths: Vec<String> = catalog.entries(&missing)?.into_iter().flatten().map(|e| e.path).collect();
            tracing::warn!(
                "{} indexed files lost their vectors in an interrupted run; they are forgotten and will be indexed again \
                 the next time their folder is indexed",
                paths.len()
            );
            catalog.apply(&CatalogBatch { forget: paths, ..Default::default() })?;
        }
        catalog.set_vector_generation(index.generation())?;
        Ok(())
    }

    /// The entries of these images, in the order asked: the catalog's, and for a store
    /// shared by writers with their own catalogs, the store's copy of the entries of images
    /// another writer indexed (`None` for an id neither knows).
    pub(crate) fn entries(&self, ids: &[ImageId]) -> Result<Vec<Option<ImageEntry>>> {
        let mut entries = self.catalog().entries(ids)?;
        if !self.store.is_local() {
            let missing: Vec<usize> = (0..ids.len()).filter(|&i| entries[i].is_none()).collect();
            if !missing.is_empty() {
                let asked: Vec<ImageId> = missing.iter().map(|&i| ids[i]).collect();
                for (i, entry) in missing.into_iter().zip(self.index().stored_entries(&asked)?) {
                    entries[i] = entry;
                }
            }
        }
        Ok(entries)
    }

    /// Reclaims the space of removed vectors when it is worth it.
    pub(crate) fn compact(&self) -> Result<()> {
        let mut index = self.index_mut();
        if index.compact()? {
            let generation = index.generation();
            self.catalog().set_vector_generation(generation)?;
        }
        Ok(())
    }
}

/// What the catalog knows of `vectors`' files once `batch` is applied (for a store that
/// keeps it, see `VectorIndex::upsert_with_entries`): the batch's file and content records,
/// else the catalog's (a file whose content another file already had, a domain that moved).
fn entries_for(vectors: &[VectorRecord], batch: &CatalogBatch, catalog: &dyn Catalog) -> Result<Vec<ImageEntry>> {
    let contents: HashMap<&str, &ContentRecord> = batch.contents.iter().map(|c| (c.hash.as_str(), c)).collect();
    let domains: HashMap<ImageId, &str> = vectors.iter().map(|v| (v.id, v.domain.as_str())).collect();
    let mut out = Vec::with_capacity(vectors.len());
    let mut covered = HashSet::new();
    for f in batch.files.iter().filter(|f| domains.contains_key(&f.id)) {
        let content = match contents.get(f.hash.as_str()) {
            Some(c) => Some((c.width, c.height, c.captions.clone())),
            None => match catalog.file_with_content(&f.hash)? {
                Some(other) => catalog.entries(&[other])?.pop().flatten().map(|e| (e.width, e.height, e.captions)),
                None => None,
            },
        };
        if let Some((width, height, captions)) = content {
            covered.insert(f.id);
            out.push(ImageEntry {
                id: f.id,
                path: f.path.clone(),
                domain: f.domain.clone(),
                hash: f.hash.clone(),
                size: f.size,
                width,
                height,
                captions,
            });
        }
    }
    let rest: Vec<ImageId> = vectors.iter().map(|v| v.id).filter(|id| !covered.contains(id)).collect();
    for mut entry in catalog.entries(&rest)?.into_iter().flatten() {
        entry.domain = domains[&entry.id].to_owned();
        out.push(entry);
    }
    Ok(out)
}

/// When the exact and the approximate index's manifests last changed.
fn manifest_mtimes(db: &Path) -> [Option<SystemTime>; 2] {
    [ExactIndex::dir_for(db), AnnIndex::dir_for(db)]
        .map(|dir| std::fs::metadata(dir.join("manifest.json")).and_then(|m| m.modified()).ok())
}

/// Moves the vectors of a schema-1 index (BLOBs in SQLite) into the vector index and
/// rewrites the catalog as schema 2. Safe to interrupt: the catalog changes in one
/// transaction at the end, and writing the vectors again writes the same ids.
fn upgrade_v1(catalog: &mut SqliteCatalog, vectors: &Path, fingerprint: &str) -> Result<()> {
    tracing::info!("upgrading {} to the current index format", catalog.location().display());
    let mut index = ExactIndex::open(vectors, Access::ReadWrite, Some(fingerprint))?;
    let mut taken = std::collections::HashSet::new();
    let mut ids = Vec::new();
    let mut pending: Vec<VectorRecord> = Vec::new();
    catalog.v1_rows(&mut |row| {
        let mut attempt = 0;
        let id = loop {
            let id = ImageId::for_path_attempt(&row.path, attempt);
            if taken.insert(id) {
                break id;
            }
            attempt += 1;
        };
        ids.push((row.path.clone(), id));
        pending.push(VectorRecord { id, domain: row.domain, image: row.image_embedding, captions: row.caption_embeddings });
        if pending.len() >= 4096 {
            index.upsert(&pending)?;
            pending.clear();
        }
        Ok(())
    })?;
    index.upsert(&pending)?;
    catalog.upgrade_v1(&ids, index.generation())?;
    Ok(())
}
