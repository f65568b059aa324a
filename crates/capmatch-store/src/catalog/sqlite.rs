//! The catalog in one SQLite file.
//!
//! # Format (schema version 2)
//!
//! One SQLite database in WAL mode:
//!
//! ```sql
//! meta(key TEXT PRIMARY KEY, value TEXT)      -- format, schema_version, models (JSON), dim,
//!                                             -- vector_generation
//! contents(hash TEXT PRIMARY KEY,             -- blake3 of the file bytes, hex
//!          width INTEGER, height INTEGER,
//!          captions TEXT)                     -- JSON array of >= 1 strings
//! files(id INTEGER PRIMARY KEY,               -- ImageId: derived from the path
//!       path TEXT UNIQUE,                     -- absolute path as walked
//!       hash TEXT REFERENCES contents(hash),
//!       size INTEGER, mtime_ns INTEGER,       -- stat at hashing time (change detection)
//!       domain TEXT, checked_at_ns INTEGER)   -- when the hash was taken (racy-stat guard)
//! skipped(path TEXT PRIMARY KEY, hash TEXT NULL, size INTEGER, mtime_ns INTEGER,
//!         domain TEXT, reason TEXT, checked_at_ns INTEGER)
//! ```
//!
//! The vectors are not here: they are in the vector index beside it (`<db>.vectors/` for the
//! exact index). Schema version 1 kept them in BLOB columns of a table `images`;
//! [`SqliteCatalog::v1_rows`] reads such a file for the engine's upgrade.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use super::{Applied, Catalog, CatalogBatch, CatalogSummary, DomainCount, ImageEntry, SkippedFile, TrackedFile};
use crate::error::{Result, StoreError};
use crate::id::ImageId;
use crate::identity::ModelIdentity;

/// Version of the schema written by this build.
pub const SCHEMA_VERSION: i64 = 2;
/// The version before the vectors moved out of SQLite; upgraded by the engine.
pub const SCHEMA_VERSION_V1: i64 = 1;
/// Value of `meta.format`: tells a capmatch index apart from any other SQLite file.
pub const FORMAT_NAME: &str = "capmatch-caption-index";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS contents (
    hash TEXT PRIMARY KEY,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    captions TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    hash TEXT NOT NULL REFERENCES contents(hash),
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

/// The catalog file.
pub struct SqliteCatalog {
    conn: Connection,
    path: PathBuf,
    version: i64,
}

/// One file of a schema-version-1 index with its vectors (for the upgrade).
#[derive(Debug, Clone)]
pub struct V1Row {
    pub path: String,
    pub hash: String,
    pub size: u64,
    pub mtime_ns: i64,
    pub domain: String,
    pub checked_at_ns: i64,
    pub width: u32,
    pub height: u32,
    pub captions: Vec<String>,
    pub image_embedding: Vec<f32>,
    /// `captions.len() × dim`, row-major.
    pub caption_embeddings: Vec<f32>,
}

impl SqliteCatalog {
    /// Opens the catalog at `path` for writing, creating it if needed. A version-1 file
    /// opens too ([`SqliteCatalog::schema_version`] tells), for the engine to upgrade.
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path).map_err(|e| not_a_db(path, e))?;
        // Another process (a concurrent search) may hold a read lock briefly.
        conn.busy_timeout(std::time::Duration::from_secs(30))?;
        // WAL: readers never block the writer, and a killed writer leaves the main file
        // intact (the uncommitted tail of the WAL is ignored on the next open). NORMAL sync
        // is durable against process crashes (SIGKILL); only an OS crash can lose the last
        // few commits, never consistency.
        conn.pragma_update(None, "journal_mode", "WAL").map_err(|e| not_a_db(path, e))?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let mut catalog = Self { conn, path: path.to_path_buf(), version: 0 };
        catalog.version = catalog.check_format(true)?;
        Ok(catalog)
    }

    /// Opens an existing catalog for reading only (search, info).
    pub fn open_read_only(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(StoreError::Missing(path.to_path_buf()));
        }
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
            .map_err(|e| not_a_db(path, e))?;
        conn.busy_timeout(std::time::Duration::from_secs(30))?;
        let mut catalog = Self { conn, path: path.to_path_buf(), version: 0 };
        catalog.version = catalog.check_format(false)?;
        Ok(catalog)
    }

    pub fn schema_version(&self) -> i64 {
        self.version
    }

    /// Checks the file is a capmatch index of a version this build reads; creates the schema
    /// in a new, empty file. Returns the version.
    fn check_format(&self, writable: bool) -> Result<i64> {
        let has_meta: bool = self
            .conn
            .query_row("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'meta'", [], |r| r.get::<_, i64>(0))
            .map_err(|e| not_a_db(&self.path, e))?
            > 0;
        if !has_meta {
            let tables: i64 = self.conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))?;
            if tables > 0 || !writable {
                return Err(StoreError::NotAnIndex(self.path.clone()));
            }
            // A brand-new file: the schema and its identification in one transaction.
            let tx = self.conn.unchecked_transaction()?;
            tx.execute_batch(SCHEMA)?;
            tx.execute("INSERT INTO meta(key, value) VALUES ('format', ?1)", [FORMAT_NAME])?;
            tx.execute("INSERT INTO meta(key, value) VALUES ('schema_version', ?1)", [SCHEMA_VERSION.to_string()])?;
            tx.commit()?;
            return Ok(SCHEMA_VERSION);
        }
        if self.meta("format")?.as_deref() != Some(FORMAT_NAME) {
            return Err(StoreError::NotAnIndex(self.path.clone()));
        }
        let version: i64 =
            self.meta("schema_version")?.and_then(|v| v.parse().ok()).ok_or_else(|| StoreError::NotAnIndex(self.path.clone()))?;
        match version {
            SCHEMA_VERSION => Ok(version),
            SCHEMA_VERSION_V1 => Ok(version),
            _ => Err(StoreError::SchemaVersion {
                path: self.path.clone(),
                found: version,
                min: SCHEMA_VERSION_V1,
                max: SCHEMA_VERSION,
                hint: if version > SCHEMA_VERSION { " (written by a newer capmatch: upgrade capmatch)" } else { "" },
            }),
        }
    }

    fn require_current(&self) -> Result<()> {
        if self.version != SCHEMA_VERSION {
            return Err(StoreError::SchemaVersion {
                path: self.path.clone(),
                found: self.version,
                min: SCHEMA_VERSION,
                max: SCHEMA_VERSION,
                hint: " (an index of an earlier capmatch: run `capmatch index` with it once to upgrade it)",
            });
        }
        Ok(())
    }

    /// The one indexed file matching `condition` on `param`.
    fn entry_where(&self, condition: &str, param: impl rusqlite::ToSql) -> Result<Option<ImageEntry>> {
        self.require_current()?;
        let mut stmt = self.conn.prepare_cached(&format!("SELECT {ENTRY_COLUMNS} WHERE {condition}"))?;
        let mut rows = stmt.query([param])?;
        match rows.next()? {
            Some(r) => entry_from_row(&self.path, r).map(Some),
            None => Ok(None),
        }
    }

    fn meta(&self, key: &str) -> Result<Option<String>> {
        Ok(self.conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0)).optional()?)
    }

    fn corrupt(&self, message: impl Into<String>) -> StoreError {
        StoreError::corrupt(&self.path, message)
    }

    /// Streams the files of a version-1 index with their vectors, in path order.
    pub fn v1_rows(&self, sink: &mut dyn FnMut(V1Row) -> Result<()>) -> Result<()> {
        if self.version != SCHEMA_VERSION_V1 {
            return Err(StoreError::InvalidInput(format!("{} is not a version-1 index", self.path.display())));
        }
        let mut stmt = self.conn.prepare(
            "SELECT f.path, f.hash, f.size, f.mtime_ns, f.domain, f.checked_at_ns, i.width, i.height, i.captions,
                    i.image_embedding, i.caption_embeddings
             FROM files f JOIN images i ON i.hash = f.hash ORDER BY f.path",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let captions: String = r.get(8)?;
            let path: String = r.get(0)?;
            let captions: Vec<String> =
                serde_json::from_str(&captions).map_err(|e| self.corrupt(format!("captions of {path}: {e}")))?;
            let floats = |b: Vec<u8>| -> Vec<f32> {
                b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
            };
            sink(V1Row {
                path,
                hash: r.get(1)?,
                size: r.get::<_, i64>(2)? as u64,
                mtime_ns: r.get(3)?,
                domain: r.get(4)?,
                checked_at_ns: r.get(5)?,
                width: r.get(6)?,
                height: r.get(7)?,
                captions,
                image_embedding: floats(r.get(9)?),
                caption_embeddings: floats(r.get(10)?),
            })?;
        }
        Ok(())
    }

    /// Rewrites a version-1 file as version 2 in one transaction: the vectors leave the
    /// database (the engine has copied them into the vector index first), files get their
    /// ids. Skipped files and the models are kept.
    pub fn upgrade_v1(&mut self, ids: &[(String, ImageId)], vector_generation: u64) -> Result<()> {
        if self.version != SCHEMA_VERSION_V1 {
            return Ok(());
        }
        let tx = self.conn.transaction()?;
        tx.execute_batch(
            "ALTER TABLE files RENAME TO files_v1;
             DROP INDEX IF EXISTS files_hash;",
        )?;
        tx.execute_batch(SCHEMA)?;
        tx.execute(
            "INSERT INTO contents(hash, width, height, captions) SELECT hash, width, height, captions FROM images",
            [],
        )?;
        {
            let mut insert = tx.prepare(
                "INSERT INTO files(id, path, hash, size, mtime_ns, domain, checked_at_ns)
                 SELECT ?2, path, hash, size, mtime_ns, domain, checked_at_ns FROM files_v1 WHERE path = ?1",
            )?;
            for (path, id) in ids {
                insert.execute(params![path, id.to_sql()])?;
            }
        }
        tx.execute_batch("DROP TABLE files_v1; DROP TABLE images;")?;
        tx.execute("UPDATE meta SET value = ?1 WHERE key = 'schema_version'", [SCHEMA_VERSION.to_string()])?;
        tx.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES ('vector_generation', ?1)",
            [vector_generation.to_string()],
        )?;
        tx.commit()?;
        self.version = SCHEMA_VERSION;
        // Give the freed pages (the vectors) back to the file system.
        self.conn.execute_batch("VACUUM")?;
        Ok(())
    }
}

fn not_a_db(path: &Path, e: rusqlite::Error) -> StoreError {
    match e {
        rusqlite::Error::SqliteFailure(ref f, _) if f.code == rusqlite::ErrorCode::NotADatabase => {
            StoreError::NotAnIndex(path.to_path_buf())
        }
        other => other.into(),
    }
}

fn u64_to_sql(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn entry_from_row(path: &Path, r: &rusqlite::Row<'_>) -> Result<ImageEntry> {
    let captions: String = r.get(7)?;
    let file: String = r.get(1)?;
    let captions: Vec<String> =
        serde_json::from_str(&captions).map_err(|e| StoreError::corrupt(path, format!("captions of {file}: {e}")))?;
    Ok(ImageEntry {
        id: ImageId::from_sql(r.get(0)?),
        path: file,
        domain: r.get(2)?,
        hash: r.get(3)?,
        size: r.get::<_, i64>(4)? as u64,
        width: r.get(5)?,
        height: r.get(6)?,
        captions,
    })
}

const ENTRY_COLUMNS: &str =
    "f.id, f.path, f.domain, f.hash, f.size, c.width, c.height, c.captions FROM files f JOIN contents c ON c.hash = f.hash";

impl Catalog for SqliteCatalog {
    fn location(&self) -> &Path {
        &self.path
    }

    fn models(&self) -> Result<Option<ModelIdentity>> {
        match self.meta("models")? {
            None => Ok(None),
            Some(json) => serde_json::from_str(&json).map(Some).map_err(|e| self.corrupt(format!("meta.models: {e}"))),
        }
    }

    fn bind_models(&mut self, models: &ModelIdentity) -> Result<()> {
        self.require_current()?;
        let tx = self.conn.transaction()?;
        let stored: Option<String> =
            tx.query_row("SELECT value FROM meta WHERE key = 'models'", [], |r| r.get(0)).optional()?;
        let has_vectors: bool = tx.query_row("SELECT EXISTS(SELECT 1 FROM contents)", [], |r| r.get(0))?;
        if let Some(stored) = stored {
            let stored: ModelIdentity =
                serde_json::from_str(&stored).map_err(|e| StoreError::corrupt(&self.path, format!("meta.models: {e}")))?;
            if stored == *models {
                return Ok(());
            }
            // A gallery without vectors has nothing to mix with: let it be re-bound.
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

    fn dim(&self) -> Result<Option<usize>> {
        Ok(self.meta("dim")?.and_then(|v| v.parse().ok()))
    }

    fn tracked_files(&self) -> Result<Vec<TrackedFile>> {
        self.require_current()?;
        let mut stmt = self.conn.prepare(
            "SELECT path, id, hash, size, mtime_ns, domain, checked_at_ns, NULL FROM files
             UNION ALL
             SELECT path, NULL, hash, size, mtime_ns, domain, checked_at_ns, reason FROM skipped",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(TrackedFile {
                path: r.get(0)?,
                id: r.get::<_, Option<i64>>(1)?.map(ImageId::from_sql),
                hash: r.get(2)?,
                size: r.get::<_, i64>(3)? as u64,
                mtime_ns: r.get(4)?,
                domain: r.get(5)?,
                checked_at_ns: r.get(6)?,
                skipped: r.get(7)?,
            })
        })?;
        rows.collect::<Result<_, _>>().map_err(Into::into)
    }

    fn content_hashes(&self) -> Result<HashSet<String>> {
        self.require_current()?;
        let mut stmt = self.conn.prepare("SELECT hash FROM contents")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        rows.collect::<Result<_, _>>().map_err(Into::into)
    }

    fn file_with_content(&self, hash: &str) -> Result<Option<ImageId>> {
        Ok(self
            .conn
            .query_row("SELECT id FROM files WHERE hash = ?1 ORDER BY path LIMIT 1", [hash], |r| r.get::<_, i64>(0))
            .optional()?
            .map(ImageId::from_sql))
    }

    fn allocate_ids(&self, paths: &[&str]) -> Result<Vec<ImageId>> {
        self.require_current()?;
        let mut by_id = self.conn.prepare_cached("SELECT path FROM files WHERE id = ?1")?;
        let mut by_path = self.conn.prepare_cached("SELECT id FROM files WHERE path = ?1")?;
        let mut taken: HashSet<ImageId> = HashSet::new();
        let mut out = Vec::with_capacity(paths.len());
        for path in paths {
            if let Some(id) = by_path.query_row([path], |r| r.get::<_, i64>(0)).optional()? {
                taken.insert(ImageId::from_sql(id));
                out.push(ImageId::from_sql(id));
                continue;
            }
            let mut attempt = 0u32;
            loop {
                let id = ImageId::for_path_attempt(path, attempt);
                let holder: Option<String> = by_id.query_row([id.to_sql()], |r| r.get(0)).optional()?;
                let free = match holder {
                    None => !taken.contains(&id),
                    Some(p) => p == *path,
                };
                if free {
                    taken.insert(id);
                    out.push(id);
                    break;
                }
                attempt += 1;
                if attempt > 64 {
                    return Err(self.corrupt(format!("cannot find a free id for {path}")));
                }
            }
        }
        Ok(out)
    }

    fn apply(&mut self, batch: &CatalogBatch) -> Result<Applied> {
        self.require_current()?;
        let mut applied = Applied::default();
        if batch.is_empty() && batch.vector_generation.is_none() {
            return Ok(applied);
        }
        let tx = self.conn.transaction()?;
        {
            if let Some(d) = batch.dim {
                let stored: Option<usize> = tx
                    .query_row("SELECT value FROM meta WHERE key = 'dim'", [], |r| r.get::<_, String>(0))
                    .optional()?
                    .and_then(|v| v.parse().ok());
                match stored {
                    None => {
                        tx.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('dim', ?1)", [d.to_string()])?;
                    }
                    Some(expected) if expected != d => return Err(StoreError::Dimension { expected, found: d }),
                    Some(_) => {}
                }
            }
            let mut insert_content = tx.prepare_cached(
                // Same hash, same bytes, same models: an existing row is already right.
                "INSERT INTO contents(hash, width, height, captions) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(hash) DO NOTHING",
            )?;
            for c in &batch.contents {
                if c.captions.is_empty() {
                    return Err(StoreError::InvalidInput(format!("content {} has no caption", c.hash)));
                }
                let captions = serde_json::to_string(&c.captions).expect("strings serialise");
                insert_content.execute(params![c.hash, c.width, c.height, captions])?;
            }
            let mut id_of_path = tx.prepare_cached("SELECT id FROM files WHERE path = ?1")?;
            let mut upsert_file = tx.prepare_cached(
                "INSERT INTO files(id, path, hash, size, mtime_ns, domain, checked_at_ns) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT(path) DO UPDATE SET hash = excluded.hash, size = excluded.size,
                   mtime_ns = excluded.mtime_ns, domain = excluded.domain, checked_at_ns = excluded.checked_at_ns",
            )?;
            let mut unskip = tx.prepare_cached("DELETE FROM skipped WHERE path = ?1")?;
            for f in &batch.files {
                if let Some(existing) = id_of_path.query_row([&f.path], |r| r.get::<_, i64>(0)).optional()? {
                    if existing != f.id.to_sql() {
                        return Err(StoreError::InvalidInput(format!(
                            "{} is indexed as image {existing}, not {}",
                            f.path, f.id
                        )));
                    }
                }
                upsert_file.execute(params![
                    f.id.to_sql(),
                    f.path,
                    f.hash,
                    u64_to_sql(f.size),
                    f.mtime_ns,
                    f.domain,
                    f.checked_at_ns
                ])?;
                unskip.execute([&f.path])?;
            }
            let mut upsert_skip = tx.prepare_cached(
                "INSERT OR REPLACE INTO skipped(path, hash, size, mtime_ns, domain, reason, checked_at_ns)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            let mut unfile = tx.prepare_cached("DELETE FROM files WHERE path = ?1")?;
            for s in &batch.skipped {
                upsert_skip.execute(params![s.path, s.hash, u64_to_sql(s.size), s.mtime_ns, s.domain, s.reason, s.checked_at_ns])?;
                if let Some(id) = id_of_path.query_row([&s.path], |r| r.get::<_, i64>(0)).optional()? {
                    applied.removed.push(ImageId::from_sql(id));
                }
                unfile.execute([&s.path])?;
            }
            let mut del_skip = tx.prepare_cached("DELETE FROM skipped WHERE path = ?1")?;
            for p in &batch.forget {
                if let Some(id) = id_of_path.query_row([p], |r| r.get::<_, i64>(0)).optional()? {
                    applied.removed.push(ImageId::from_sql(id));
                }
                unfile.execute([p])?;
                del_skip.execute([p])?;
            }
            if !batch.skipped.is_empty() || !batch.forget.is_empty() || !batch.files.is_empty() {
                // Contents no file points at are dead weight (a changed or deleted file's).
                tx.execute("DELETE FROM contents WHERE hash NOT IN (SELECT hash FROM files)", [])?;
            }
            if let Some(g) = batch.vector_generation {
                tx.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('vector_generation', ?1)", [g.to_string()])?;
            }
        }
        tx.commit()?;
        Ok(applied)
    }

    fn entries(&self, ids: &[ImageId]) -> Result<Vec<Option<ImageEntry>>> {
        ids.iter().map(|id| self.entry_where("f.id = ?1", id.to_sql())).collect()
    }

    fn entry_by_path(&self, path: &str) -> Result<Option<ImageEntry>> {
        self.entry_where("f.path = ?1", path)
    }

    fn ids(&self) -> Result<Vec<(ImageId, String)>> {
        self.require_current()?;
        let mut stmt = self.conn.prepare("SELECT id, domain FROM files")?;
        let rows = stmt.query_map([], |r| Ok((ImageId::from_sql(r.get(0)?), r.get(1)?)))?;
        rows.collect::<Result<_, _>>().map_err(Into::into)
    }

    fn vector_generation(&self) -> Result<Option<u64>> {
        Ok(self.meta("vector_generation")?.and_then(|v| v.parse().ok()))
    }

    fn set_vector_generation(&mut self, generation: u64) -> Result<()> {
        self.conn
            .execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('vector_generation', ?1)", [generation.to_string()])?;
        Ok(())
    }

    fn summary(&self) -> Result<CatalogSummary> {
        self.require_current()?;
        let files: i64 = self.conn.query_row("SELECT count(*) FROM files", [], |r| r.get(0))?;
        let images: i64 = self.conn.query_row("SELECT count(*) FROM contents", [], |r| r.get(0))?;
        let mut stmt = self.conn.prepare(
            "SELECT f.domain, count(*), sum(json_array_length(c.captions))
             FROM files f JOIN contents c ON c.hash = f.hash GROUP BY f.domain ORDER BY f.domain",
        )?;
        let domains = stmt
            .query_map([], |r| {
                Ok(DomainCount {
                    domain: r.get(0)?,
                    files: r.get::<_, i64>(1)? as u64,
                    captions: r.get::<_, Option<i64>>(2)?.unwrap_or(0) as u64,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let mut stmt = self.conn.prepare("SELECT path, domain, reason FROM skipped ORDER BY path")?;
        let skipped = stmt
            .query_map([], |r| Ok(SkippedFile { path: r.get(0)?, domain: r.get(1)?, reason: r.get(2)? }))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CatalogSummary {
            schema_version: SCHEMA_VERSION,
            models: self.models()?,
            dim: self.dim()?,
            files: files as u64,
            images: images as u64,
            domains,
            skipped,
        })
    }

    fn disk_size(&self) -> u64 {
        ["", "-wal", "-shm"]
            .iter()
            .map(|suffix| {
                let mut p = self.path.clone().into_os_string();
                p.push(suffix);
                std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0)
            })
            .sum()
    }

    fn integrity_problems(&self) -> Result<Vec<String>> {
        let mut stmt = self.conn.prepare("PRAGMA integrity_check")?;
        let lines: Vec<String> = stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
        let mut problems: Vec<String> = lines.into_iter().filter(|l| l != "ok").collect();
        let mut stmt = self.conn.prepare("PRAGMA foreign_key_check")?;
        let fk: Vec<String> = stmt.query_map([], |r| r.get::<_, String>(0))?.collect::<Result<_, _>>()?;
        problems.extend(fk.into_iter().map(|t| format!("a row of table {t} points at a missing content")));
        Ok(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{ContentRecord, FileRecord, SkipRecord};

    fn identity(name: &str) -> ModelIdentity {
        ModelIdentity {
            clip: name.into(),
            clip_config: "c".into(),
            captioner: "cap".into(),
            captioner_config: "k".into(),
            prompt: "a picture of".into(),
        }
    }

    fn file(path: &str, hash: &str, domain: &str) -> FileRecord {
        FileRecord {
            id: ImageId::for_path(path),
            path: path.into(),
            hash: hash.into(),
            size: 10,
            mtime_ns: 1,
            domain: domain.into(),
            checked_at_ns: 5,
        }
    }

    fn content(hash: &str, captions: &[&str]) -> ContentRecord {
        ContentRecord { hash: hash.into(), width: 4, height: 3, captions: captions.iter().map(|s| s.to_string()).collect() }
    }

    #[test]
    fn files_skips_and_removals_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let mut c = SqliteCatalog::open(&path).unwrap();
        c.bind_models(&identity("a")).unwrap();
        let batch = CatalogBatch {
            contents: vec![content("h1", &["a lemon"]), content("h2", &["a cat", "a kitten"])],
            files: vec![file("/g/a.png", "h1", "photo"), file("/g/b.png", "h2", "sketch"), file("/g/c.png", "h1", "photo")],
            dim: Some(8),
            vector_generation: Some(3),
            ..Default::default()
        };
        assert!(c.apply(&batch).unwrap().removed.is_empty());
        assert_eq!(c.vector_generation().unwrap(), Some(3));
        let e = c.entry_by_path("/g/b.png").unwrap().unwrap();
        assert_eq!((e.id, e.captions.len(), e.domain.as_str()), (ImageId::for_path("/g/b.png"), 2, "sketch"));
        assert_eq!(c.entries(&[e.id, ImageId(12345)]).unwrap()[1], None);
        // b becomes unreadable; c is forgotten: both ids are reported, content h2 goes.
        let skip = SkipRecord {
            path: "/g/b.png".into(),
            hash: None,
            size: 0,
            mtime_ns: 2,
            domain: "sketch".into(),
            reason: "truncated".into(),
            checked_at_ns: 6,
        };
        let applied = c.apply(&CatalogBatch { skipped: vec![skip], forget: vec!["/g/c.png".into()], ..Default::default() }).unwrap();
        assert_eq!(applied.removed, [ImageId::for_path("/g/b.png"), ImageId::for_path("/g/c.png")]);
        assert_eq!(c.content_hashes().unwrap(), HashSet::from(["h1".to_string()]));
        let s = c.summary().unwrap();
        assert_eq!((s.files, s.images, s.skipped.len()), (1, 1, 1));
        assert!(c.integrity_problems().unwrap().is_empty());
        drop(c);
        let r = SqliteCatalog::open_read_only(&path).unwrap();
        assert_eq!(r.ids().unwrap(), [(ImageId::for_path("/g/a.png"), "photo".to_string())]);
        assert_eq!(r.dim().unwrap(), Some(8));
    }

    #[test]
    fn models_are_bound_once_and_dimensions_checked() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = SqliteCatalog::open(&dir.path().join("c.db")).unwrap();
        c.bind_models(&identity("a")).unwrap();
        c.bind_models(&identity("b")).unwrap(); // nothing indexed yet: re-bound
        c.apply(&CatalogBatch { contents: vec![content("h", &["x"])], files: vec![file("/p", "h", "d")], dim: Some(4), ..Default::default() })
            .unwrap();
        assert!(matches!(c.bind_models(&identity("a")), Err(StoreError::ModelMismatch { .. })));
        let err = c.apply(&CatalogBatch { dim: Some(5), contents: vec![content("h2", &["y"])], ..Default::default() });
        assert!(matches!(err, Err(StoreError::Dimension { expected: 4, found: 5 })));
    }

    #[test]
    fn id_allocation_keeps_existing_ids_and_probes_past_collisions() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = SqliteCatalog::open(&dir.path().join("c.db")).unwrap();
        // Plant another path on /g/x's first-choice id.
        let mut squatter = file("/g/squatter", "h", "d");
        squatter.id = ImageId::for_path("/g/x");
        c.apply(&CatalogBatch { contents: vec![content("h", &["x"])], files: vec![squatter], ..Default::default() }).unwrap();
        let ids = c.allocate_ids(&["/g/x", "/g/squatter", "/g/y"]).unwrap();
        assert_eq!(ids[0], ImageId::for_path_attempt("/g/x", 1));
        assert_eq!(ids[1], ImageId::for_path("/g/x")); // the squatter keeps its id
        assert_eq!(ids[2], ImageId::for_path("/g/y"));
    }

    #[test]
    fn foreign_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage.db");
        std::fs::write(&garbage, vec![0x5a; 8192]).unwrap();
        assert!(matches!(SqliteCatalog::open(&garbage), Err(StoreError::NotAnIndex(_))));
        assert!(matches!(SqliteCatalog::open_read_only(&garbage), Err(StoreError::NotAnIndex(_))));
        let other = dir.path().join("other.db");
        Connection::open(&other).unwrap().execute_batch("CREATE TABLE t(x)").unwrap();
        assert!(matches!(SqliteCatalog::open(&other), Err(StoreError::NotAnIndex(_))));
        assert!(matches!(SqliteCatalog::open_read_only(&dir.path().join("none.db")), Err(StoreError::Missing(_))));
    }
}
