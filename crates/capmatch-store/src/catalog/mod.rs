//! The catalog: which files the gallery has, what is in them, and what could not be indexed.
//!
//! Files point at contents by hash (blake3 of the bytes): a renamed, moved or duplicated
//! file reuses what was computed for its bytes. The catalog holds captions (per content) and
//! everything about files; the vectors live in a [`crate::VectorIndex`], keyed by the file's
//! [`ImageId`].

pub mod sqlite;

use std::collections::HashSet;
use std::path::Path;

use serde::Serialize;

use crate::error::Result;
use crate::id::ImageId;
use crate::identity::ModelIdentity;

/// What was computed for one distinct content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContentRecord {
    pub hash: String,
    pub width: u32,
    pub height: u32,
    /// At least one caption.
    pub captions: Vec<String>,
}

/// An indexed file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileRecord {
    pub id: ImageId,
    pub path: String,
    pub hash: String,
    pub size: u64,
    pub mtime_ns: i64,
    pub domain: String,
    /// When the hash was taken (the racy-stat guard of the indexer).
    pub checked_at_ns: i64,
}

/// A file that could not be indexed, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkipRecord {
    pub path: String,
    pub hash: Option<String>,
    pub size: u64,
    pub mtime_ns: i64,
    pub domain: String,
    pub reason: String,
    pub checked_at_ns: i64,
}

/// One atomic change of the catalog: everything in it is committed together or not at all.
#[derive(Clone, Debug, Default)]
pub struct CatalogBatch {
    pub contents: Vec<ContentRecord>,
    /// Upserts by path; a path listed here leaves the skipped list.
    pub files: Vec<FileRecord>,
    /// Upserts by path; a path listed here leaves the indexed files.
    pub skipped: Vec<SkipRecord>,
    /// Paths to forget entirely (indexed or skipped).
    pub forget: Vec<String>,
    /// Dimension of the vectors, recorded with the first content.
    pub dim: Option<usize>,
    /// The vector index's generation this batch is consistent with (see the engine's
    /// reconciliation).
    pub vector_generation: Option<u64>,
}

impl CatalogBatch {
    pub fn is_empty(&self) -> bool {
        self.contents.is_empty() && self.files.is_empty() && self.skipped.is_empty() && self.forget.is_empty()
    }
}

/// What [`Catalog::apply`] did that the vector index must follow.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Ids that no longer name an indexed file (forgotten, or now skipped): their vectors
    /// must go.
    pub removed: Vec<ImageId>,
}

/// What the catalog knows about a path, indexed or skipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackedFile {
    pub path: String,
    /// `Some` for an indexed file.
    pub id: Option<ImageId>,
    /// `None` for a skipped file whose bytes could not be read.
    pub hash: Option<String>,
    pub size: u64,
    pub mtime_ns: i64,
    pub domain: String,
    pub checked_at_ns: i64,
    /// `Some(reason)` when the file is on the skipped list.
    pub skipped: Option<String>,
}

/// An indexed image, as a front end shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ImageEntry {
    pub id: ImageId,
    pub path: String,
    pub domain: String,
    pub hash: String,
    pub size: u64,
    pub width: u32,
    pub height: u32,
    pub captions: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SkippedFile {
    pub path: String,
    pub domain: String,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DomainCount {
    pub domain: String,
    pub files: u64,
    pub captions: u64,
}

/// What `capmatch info` shows of the catalog.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CatalogSummary {
    pub schema_version: i64,
    pub models: Option<ModelIdentity>,
    pub dim: Option<usize>,
    pub files: u64,
    /// Distinct contents (files with identical bytes share captions).
    pub images: u64,
    pub domains: Vec<DomainCount>,
    pub skipped: Vec<SkippedFile>,
}

/// The catalog of a gallery. Small on purpose, so that a fault-injecting wrapper in tests
/// (or another database) is easy to write.
pub trait Catalog: Send {
    /// Where it is, for messages.
    fn location(&self) -> &Path;
    /// The models whose vectors the gallery holds, if any.
    fn models(&self) -> Result<Option<ModelIdentity>>;
    /// Records `models` for a gallery without vectors, or checks they equal the recorded ones.
    fn bind_models(&mut self, models: &ModelIdentity) -> Result<()>;
    /// Dimension of the vectors, once any are stored.
    fn dim(&self) -> Result<Option<usize>>;
    /// Every indexed and skipped path.
    fn tracked_files(&self) -> Result<Vec<TrackedFile>>;
    /// Hashes of every content with computed captions (and vectors).
    fn content_hashes(&self) -> Result<HashSet<String>>;
    /// An indexed file with this content (whose vectors can be copied), if any.
    fn file_with_content(&self, hash: &str) -> Result<Option<ImageId>>;
    /// Ids for new paths: the path's id, or on a collision with another path the next
    /// attempt. Paths already indexed keep their id. `paths` must be distinct.
    fn allocate_ids(&self, paths: &[&str]) -> Result<Vec<ImageId>>;
    /// Applies a batch atomically.
    fn apply(&mut self, batch: &CatalogBatch) -> Result<Applied>;
    /// The entries of these ids (`None` for an unknown id), in the same order.
    fn entries(&self, ids: &[ImageId]) -> Result<Vec<Option<ImageEntry>>>;
    /// The indexed file at `path`.
    fn entry_by_path(&self, path: &str) -> Result<Option<ImageEntry>>;
    /// Every indexed file's id and domain.
    fn ids(&self) -> Result<Vec<(ImageId, String)>>;
    /// The vector generation recorded by the last batch (see [`CatalogBatch`]).
    fn vector_generation(&self) -> Result<Option<u64>>;
    fn set_vector_generation(&mut self, generation: u64) -> Result<()>;
    fn summary(&self) -> Result<CatalogSummary>;
    /// Bytes on disk.
    fn disk_size(&self) -> u64;
    /// The database's own consistency checks: empty when sound.
    fn integrity_problems(&self) -> Result<Vec<String>>;
}
