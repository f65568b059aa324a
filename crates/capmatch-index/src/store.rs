//! Storage of the caption index behind a small trait, and its SQLite implementation.
//!
//! # The `CaptionIndex` file format (schema version 1)
//!
//! One SQLite database in WAL mode:
//!
//! ```sql
//! meta(key TEXT PRIMARY KEY, value TEXT)         -- format, schema_version, models (JSON), dim
//! images(hash TEXT PRIMARY KEY,                  -- blake3 of the file bytes, hex
//!        width INTEGER, height INTEGER,
//!        captions TEXT,                          -- JSON array of >= 1 strings
//!        image_embedding BLOB,                   -- dim × f32 little-endian, L2-normalised
//!        caption_embeddings BLOB)                -- len(captions) × dim × f32 LE, row-major
//! files(path TEXT PRIMARY KEY,                   -- absolute path as walked
//!       hash TEXT REFERENCES images(hash),
//!       size INTEGER, mtime_ns INTEGER,          -- stat at hashing time (change detection)
//!       domain TEXT, checked_at_ns INTEGER)      -- when the hash was taken (racy-stat guard)
//! skipped(path TEXT PRIMARY KEY, hash TEXT NULL, size INTEGER, mtime_ns INTEGER,
//!         domain TEXT, reason TEXT, checked_at_ns INTEGER)
//! ```
//!
//! Vectors are keyed by content, files point at content: a renamed, moved or duplicated file
//! reuses the vectors already computed. Every change goes through [`Store::apply`], one
//! transaction per call, so a killed process leaves the database as of the last commit.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use crate::models::ModelIdentity;

/// Version of the schema written by this build. Older files are refused (there is none yet);
/// newer files are refused with a message rather than misread.
pub const SCHEMA_VERSION: i64 = 1;
/// Value of `meta.format`: tells a capmatch index apart from any other SQLite file.
pub const FORMAT_NAME: &str = "capmatch-caption-index";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no index at {0} (run `capmatch index` first)")]
    Missing(PathBuf),
    #[error("{0} is not a capmatch index")]
    NotAnIndex(PathBuf),
    #[error("{path} has schema version {found}; this capmatch reads version {SCHEMA_VERSION}")]
    SchemaVersion { path: PathBuf, found: i64 },
    #[error(
        "refusing to mix vectors of different models in {path}:\n  the index holds: {stored}\n  this run uses:   {requested}\n\
         use another --db, or the models and prompt the index was built with"
    )]
    ModelMismatch { path: PathBuf, stored: Box<ModelIdentity>, requested: Box<ModelIdentity> },
    #[error("vector dimension {found} does not match the index's dimension {expected}")]
    Dimension { expected: usize, found: usize },
    #[error("corrupt record in the index: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Computed content: captions and vectors of one distinct image (by content hash).
#[derive(Clone, Debug, PartialEq)]
pub struct ImageRecord {
    pub hash: String,
    pub width: u32,
    pub height: u32,
    pub captions: Vec<String>,
    pub image_embedding: Vec<f32>,
    /// `captions.len()` rows of `image_embedding.len()` floats, row-major.
    pub caption_embeddings: Vec<f32>,
}

/// A file of the gallery pointing at computed content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileRecord {
    pub path: String,
    pub hash: String,
    pub size: u64,
    pub mtime_ns: i64,
    pub domain: String,
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

/// One atomic change: everything in it is committed together or not at all.
#[derive(Clone, Debug, Default)]
pub struct WriteBatch {
    pub images: Vec<ImageRecord>,
    /// Upserts; a path listed here leaves the skipped list.
    pub files: Vec<FileRecord>,
    /// Upserts; a path listed here leaves the indexed files.
    pub skipped: Vec<SkipRecord>,
}

impl WriteBatch {
    pub fn is_empty(&self) -> bool {
        self.images.is_empty() && self.files.is_empty() && self.skipped.is_empty()
    }
}

/// What the store knows about a path, indexed or skipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackedFile {
    pub path: String,
    /// `None` for a skipped file whose bytes could not be read.
    pub hash: Option<String>,
    pub size: u64,
    pub mtime_ns: i64,
    pub domain: String,
    pub checked_at_ns: i64,
    /// `Some(reason)` when the file is on the skipped list.
    pub skipped: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SkippedFile {
    pub path: String,
    pub domain: String,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DomainCount {
    pub domain: String,
    pub files: u64,
    pub captions: u64,
}

/// What `capmatch info` shows.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct IndexSummary {
    pub schema_version: i64,
    pub models: Option<ModelIdentity>,
    pub dim: Option<usize>,
    pub files: u64,
    /// Distinct contents (files with identical bytes share vectors).
    pub images: u64,
    pub domains: Vec<DomainCount>,
    pub skipped: Vec<SkippedFile>,
}

/// Little-endian f32 vectors as stored in a BLOB, borrowed from the database row.
#[derive(Clone, Copy, Debug)]
pub struct VectorBytes<'a>(pub &'a [u8]);

impl VectorBytes<'_> {
    pub fn len_f32(&self) -> usize {
        self.0.len() / 4
    }
    /// Appends the floats to `out` (one pass, no intermediate allocation).
    pub fn extend_into(&self, out: &mut Vec<f32>) {
        out.extend(self.0.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])));
    }
    pub fn to_vec(&self) -> Vec<f32> {
        let mut v = Vec::with_capacity(self.len_f32());
        self.extend_into(&mut v);
        v
    }
}

/// One indexed file with its vectors, as streamed to build a search gallery.
pub struct GalleryRow<'a> {
    pub path: &'a str,
    pub domain: &'a str,
    pub captions: Vec<String>,
    pub image_embedding: VectorBytes<'a>,
    pub caption_embeddings: VectorBytes<'a>,
}

/// The storage the indexer and the search need; small on purpose so that another backend
/// (or a fault-injecting wrapper in tests) is easy to write.
pub trait Store {
    /// The models whose vectors the store holds, if any.
    fn models(&self) -> Result<Option<ModelIdentity>>;
    /// Records `models` for an empty store, or checks they equal the recorded ones.
    fn bind_models(&mut self, models: &ModelIdentity) -> Result<()>;
    /// Every indexed and skipped path.
    fn tracked_files(&self) -> Result<Vec<TrackedFile>>;
    /// Hashes of every content with computed vectors.
    fn content_hashes(&self) -> Result<HashSet<String>>;
    /// Applies a batch atomically.
    fn apply(&mut self, batch: &WriteBatch) -> Result<()>;
    /// Forgets these paths (indexed or skipped) and any content no file points at any more.
    /// Returns how many paths were forgotten.
    fn forget(&mut self, paths: &[String]) -> Result<usize>;
    /// Streams every indexed file (optionally of one domain) with its vectors, in path order.
    fn scan_gallery(
        &self,
        domain: Option<&str>,
        sink: &mut dyn FnMut(GalleryRow<'_>) -> Result<()>,
    ) -> Result<()>;
    fn summary(&self) -> Result<IndexSummary>;
    /// How many rows [`Store::scan_gallery`] will stream, if cheaply known (lets the gallery
    /// allocate its matrices once instead of growing them).
    fn gallery_len_hint(&self, _domain: Option<&str>) -> Result<Option<usize>> {
        Ok(None)
    }
}

/// The `CaptionIndex` file: a SQLite database.
pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS images (
    hash TEXT PRIMARY KEY,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    captions TEXT NOT NULL,
    image_embedding BLOB NOT NULL,
    caption_embeddings BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,
    hash TEXT NOT NULL REFERENCES images(hash),
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    domain TEXT NOT NULL,
    checked_at_ns INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS files_hash ON files(hash);
CREATE TABLE IF NOT EXISTS skipped (
    path TEXT PRIMARY KEY,
    hash TEXT,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    domain TEXT NOT NULL,
    reason TEXT NOT NULL,
    checked_at_ns INTEGER NOT NULL
);
";

impl SqliteStore {
    /// Opens the index at `path` for writing, creating it if needed.
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path)?;
        // Another process (a concurrent `search`) may hold a read lock briefly.
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        // WAL: readers never block the writer, and a killed writer leaves the main file
        // intact (the uncommitted tail of the WAL is ignored on the next open). NORMAL sync
        // is durable against process crashes (SIGKILL); only an OS crash can lose the last
        // few commits, never consistency.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let store = Self { conn, path: path.to_path_buf() };
        store.check_format(true)?;
        Ok(store)
    }

    /// Opens an existing index for reading only (search, info).
    pub fn open_read_only(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(StoreError::Missing(path.to_path_buf()));
        }
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        // Loading a gallery reads every page once: map the file rather than copy each page
        // through SQLite's page cache.
        conn.pragma_update(None, "mmap_size", 1i64 << 32)?;
        let store = Self { conn, path: path.to_path_buf() };
        store.check_format(false)?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size on disk of the database, its WAL and shared-memory files.
    pub fn disk_size(&self) -> u64 {
        let mut total = 0;
        for suffix in ["", "-wal", "-shm"] {
            let mut p = self.path.clone().into_os_string();
            p.push(suffix);
            total += std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        }
        total
    }

    fn check_format(&self, writable: bool) -> Result<()> {
        let has_meta: bool = self
            .conn
            .query_row("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'meta'", [], |r| {
                r.get::<_, i64>(0)
            })
            .map_err(|e| self.not_an_index_if_not_db(e))?
            > 0;
        if !has_meta {
            let tables: i64 = self.conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))?;
            if tables > 0 || !writable {
                return Err(StoreError::NotAnIndex(self.path.clone()));
            }
            // A brand-new file: create the schema and its identification in one transaction.
            let tx = self.conn.unchecked_transaction()?;
            tx.execute_batch(SCHEMA)?;
            tx.execute("INSERT INTO meta(key, value) VALUES ('format', ?1)", [FORMAT_NAME])?;
            tx.execute("INSERT INTO meta(key, value) VALUES ('schema_version', ?1)", [SCHEMA_VERSION.to_string()])?;
            tx.commit()?;
            return Ok(());
        }
        if self.meta("format")?.as_deref() != Some(FORMAT_NAME) {
            return Err(StoreError::NotAnIndex(self.path.clone()));
        }
        let version: i64 = self
            .meta("schema_version")?
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| StoreError::NotAnIndex(self.path.clone()))?;
        if version != SCHEMA_VERSION {
            return Err(StoreError::SchemaVersion { path: self.path.clone(), found: version });
        }
        Ok(())
    }

    fn not_an_index_if_not_db(&self, e: rusqlite::Error) -> StoreError {
        match e {
            rusqlite::Error::SqliteFailure(ref f, _) if f.code == rusqlite::ErrorCode::NotADatabase => {
                StoreError::NotAnIndex(self.path.clone())
            }
            other => other.into(),
        }
    }

    fn meta(&self, key: &str) -> Result<Option<String>> {
        Ok(self.conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0)).optional()?)
    }

    /// SQLite's own consistency check of the whole file: `"ok"` when sound.
    pub fn integrity_check(&self) -> Result<String> {
        let mut stmt = self.conn.prepare("PRAGMA integrity_check")?;
        let lines: Vec<String> = stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
        Ok(lines.join("\n"))
    }

    /// Vector dimension of the stored vectors, once any are stored.
    pub fn dim(&self) -> Result<Option<usize>> {
        Ok(self.meta("dim")?.and_then(|v| v.parse().ok()))
    }
}

fn f32_blob(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * 4);
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

fn u64_to_sql(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Store for SqliteStore {
    fn models(&self) -> Result<Option<ModelIdentity>> {
        match self.meta("models")? {
            None => Ok(None),
            Some(json) => serde_json::from_str(&json)
                .map(Some)
                .map_err(|e| StoreError::Corrupt(format!("meta.models: {e}"))),
        }
    }

    fn bind_models(&mut self, models: &ModelIdentity) -> Result<()> {
        let tx = self.conn.transaction()?;
        let stored: Option<String> =
            tx.query_row("SELECT value FROM meta WHERE key = 'models'", [], |r| r.get(0)).optional()?;
        let has_vectors: bool = tx.query_row("SELECT EXISTS(SELECT 1 FROM images)", [], |r| r.get(0))?;
        if let Some(stored) = stored {
            let stored: ModelIdentity =
                serde_json::from_str(&stored).map_err(|e| StoreError::Corrupt(format!("meta.models: {e}")))?;
            if stored == *models {
                return Ok(());
            }
            // An index without vectors has nothing to mix with: let it be re-bound.
            if has_vectors {
                return Err(StoreError::ModelMismatch {
                    path: self.path.clone(),
                    stored: Box::new(stored),
                    requested: Box::new(models.clone()),
                });
            }
        }
        let json = serde_json::to_string(models).expect("identity serialises");
        tx.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('models', ?1)", [json])?;
        if !has_vectors {
            tx.execute("DELETE FROM meta WHERE key = 'dim'", [])?;
        }
        tx.commit()?;
        Ok(())
    }

    fn tracked_files(&self) -> Result<Vec<TrackedFile>> {
        let mut out = Vec::new();
        let mut stmt = self.conn.prepare(
            "SELECT path, hash, size, mtime_ns, domain, checked_at_ns, NULL FROM files
             UNION ALL
             SELECT path, hash, size, mtime_ns, domain, checked_at_ns, reason FROM skipped",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(TrackedFile {
                path: r.get(0)?,
                hash: r.get(1)?,
                size: r.get::<_, i64>(2)? as u64,
                mtime_ns: r.get(3)?,
                domain: r.get(4)?,
                checked_at_ns: r.get(5)?,
                skipped: r.get(6)?,
            })
        })?;
        for row in rows {
            out.push(row?);
        }
        Ok(out)
    }

    fn content_hashes(&self) -> Result<HashSet<String>> {
        let mut stmt = self.conn.prepare("SELECT hash FROM images")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        rows.collect::<Result<_, _>>().map_err(Into::into)
    }

    fn apply(&mut self, batch: &WriteBatch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let tx = self.conn.transaction()?;
        let mut dim: Option<usize> =
            tx.query_row("SELECT value FROM meta WHERE key = 'dim'", [], |r| r.get::<_, String>(0))
                .optional()?
                .and_then(|v| v.parse().ok());
        {
            let mut insert_image = tx.prepare_cached(
                // Same hash, same bytes, same models: an existing row is already right (and
                // replacing it would trip the foreign key of the files pointing at it).
                "INSERT INTO images(hash, width, height, captions, image_embedding, caption_embeddings)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT(hash) DO NOTHING",
            )?;
            for image in &batch.images {
                let d = image.image_embedding.len();
                match dim {
                    None => {
                        tx.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('dim', ?1)", [d.to_string()])?;
                        dim = Some(d);
                    }
                    Some(expected) if expected != d => return Err(StoreError::Dimension { expected, found: d }),
                    Some(_) => {}
                }
                if image.captions.is_empty() || image.caption_embeddings.len() != image.captions.len() * d {
                    return Err(StoreError::Dimension {
                        expected: image.captions.len() * d,
                        found: image.caption_embeddings.len(),
                    });
                }
                let captions = serde_json::to_string(&image.captions).expect("strings serialise");
                insert_image.execute(params![
                    image.hash,
                    image.width,
                    image.height,
                    captions,
                    f32_blob(&image.image_embedding),
                    f32_blob(&image.caption_embeddings),
                ])?;
            }
            let mut upsert_file = tx.prepare_cached(
                "INSERT INTO files(path, hash, size, mtime_ns, domain, checked_at_ns) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(path) DO UPDATE SET hash = excluded.hash, size = excluded.size,
                   mtime_ns = excluded.mtime_ns, domain = excluded.domain, checked_at_ns = excluded.checked_at_ns",
            )?;
            let mut unskip = tx.prepare_cached("DELETE FROM skipped WHERE path = ?1")?;
            for f in &batch.files {
                upsert_file.execute(params![f.path, f.hash, u64_to_sql(f.size), f.mtime_ns, f.domain, f.checked_at_ns])?;
                unskip.execute([&f.path])?;
            }
            let mut upsert_skip = tx.prepare_cached(
                "INSERT OR REPLACE INTO skipped(path, hash, size, mtime_ns, domain, reason, checked_at_ns)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            let mut unfile = tx.prepare_cached("DELETE FROM files WHERE path = ?1")?;
            for s in &batch.skipped {
                upsert_skip.execute(params![
                    s.path,
                    s.hash,
                    u64_to_sql(s.size),
                    s.mtime_ns,
                    s.domain,
                    s.reason,
                    s.checked_at_ns
                ])?;
                unfile.execute([&s.path])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn forget(&mut self, paths: &[String]) -> Result<usize> {
        let tx = self.conn.transaction()?;
        let mut forgotten = 0;
        {
            let mut del_file = tx.prepare_cached("DELETE FROM files WHERE path = ?1")?;
            let mut del_skip = tx.prepare_cached("DELETE FROM skipped WHERE path = ?1")?;
            for p in paths {
                forgotten += del_file.execute([p])?;
                forgotten += del_skip.execute([p])?;
            }
        }
        // Content no file points at is dead weight (a changed or deleted file's old vectors).
        tx.execute("DELETE FROM images WHERE hash NOT IN (SELECT hash FROM files)", [])?;
        tx.commit()?;
        Ok(forgotten)
    }

    fn scan_gallery(
        &self,
        domain: Option<&str>,
        sink: &mut dyn FnMut(GalleryRow<'_>) -> Result<()>,
    ) -> Result<()> {
        // One query, BLOBs read in place: loading 100k vectors is one sequential scan.
        let mut stmt = self.conn.prepare(
            "SELECT f.path, f.domain, i.captions, i.image_embedding, i.caption_embeddings
             FROM files f JOIN images i ON i.hash = f.hash
             WHERE ?1 IS NULL OR f.domain = ?1
             ORDER BY f.path",
        )?;
        let mut rows = stmt.query([domain])?;
        while let Some(row) = rows.next()? {
            let path = row.get_ref(0)?.as_str().map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let domain = row.get_ref(1)?.as_str().map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let captions_json = row.get_ref(2)?.as_str().map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let captions: Vec<String> =
                serde_json::from_str(captions_json).map_err(|e| StoreError::Corrupt(format!("captions of {path}: {e}")))?;
            let image_embedding = VectorBytes(row.get_ref(3)?.as_blob().map_err(|e| StoreError::Corrupt(e.to_string()))?);
            let caption_embeddings =
                VectorBytes(row.get_ref(4)?.as_blob().map_err(|e| StoreError::Corrupt(e.to_string()))?);
            sink(GalleryRow { path, domain, captions, image_embedding, caption_embeddings })?;
        }
        Ok(())
    }

    fn gallery_len_hint(&self, domain: Option<&str>) -> Result<Option<usize>> {
        let n: i64 =
            self.conn.query_row("SELECT count(*) FROM files WHERE ?1 IS NULL OR domain = ?1", [domain], |r| r.get(0))?;
        Ok(Some(n as usize))
    }

    fn summary(&self) -> Result<IndexSummary> {
        let files: i64 = self.conn.query_row("SELECT count(*) FROM files", [], |r| r.get(0))?;
        let images: i64 = self.conn.query_row("SELECT count(*) FROM images", [], |r| r.get(0))?;
        let mut domains = Vec::new();
        {
            let mut stmt = self.conn.prepare(
                "SELECT f.domain, count(*), sum(json_array_length(i.captions))
                 FROM files f JOIN images i ON i.hash = f.hash GROUP BY f.domain ORDER BY f.domain",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(DomainCount {
                    domain: r.get(0)?,
                    files: r.get::<_, i64>(1)? as u64,
                    captions: r.get::<_, Option<i64>>(2)?.unwrap_or(0) as u64,
                })
            })?;
            for row in rows {
                domains.push(row?);
            }
        }
        let mut skipped = Vec::new();
        {
            let mut stmt = self.conn.prepare("SELECT path, domain, reason FROM skipped ORDER BY path")?;
            let rows =
                stmt.query_map([], |r| Ok(SkippedFile { path: r.get(0)?, domain: r.get(1)?, reason: r.get(2)? }))?;
            for row in rows {
                skipped.push(row?);
            }
        }
        Ok(IndexSummary {
            schema_version: SCHEMA_VERSION,
            models: self.models()?,
            dim: self.dim()?,
            files: files as u64,
            images: images as u64,
            domains,
            skipped,
        })
    }
}
