//! The exact vector index: every vector in memory-mapped column files beside the catalog,
//! searched exhaustively with the retrieval kernel.
//!
//! # Files (in one folder, `<db>.vectors/` next to the catalog)
//!
//! | file | contents |
//! | --- | --- |
//! | `manifest.json` | the commit record: dimension, rows, caption rows, generation, domains, model fingerprint, rows removed by the last commit |
//! | `images-G.f32` | one image vector per row, `dim` little-endian f32 each |
//! | `captions-G.f32` | every caption vector, grouped by row |
//! | `offsets-G.u32` | `rows + 1` ascending offsets into the caption rows |
//! | `ids-G.u64` | the [`ImageId`] of each row |
//! | `domains-G.u32` | the domain of each row, an index into the manifest's domain names |
//! | `live-G.u8` | 1 while the row is the image's current vectors, 0 once removed or replaced |
//!
//! `G` is the file generation, which changes only when compaction rewrites the files.
//!
//! # Commits and crashes
//!
//! Rows are only ever appended. A change writes its rows past the committed length, syncs
//! them, then replaces `manifest.json` atomically (write, sync, rename): that rename is the
//! commit. A process killed before it leaves bytes past the committed length, which the
//! next writer truncates away. Rows a commit removes (removed ids, or the old rows of
//! replaced ids) are listed in the manifest as `removed_rows` and then marked in `live`;
//! readers treat listed rows as dead, and a writer opening after a crash marks them again,
//! so a removal is atomic too. Compaction writes the live rows into files of the next
//! generation and commits a manifest naming it; readers that still map the old files keep
//! a consistent (older) view until they refresh.
//!
//! One process writes at a time (the engine holds the gallery's writer lock); any number
//! of processes read.

mod graph;
mod mapped;

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use capmatch_retrieval::{components, top_k_images, ComponentScores, GalleryVectors, QueryVectors, Ranked, Target};
use serde::{Deserialize, Serialize};

use self::mapped::Mapped;
use crate::error::{Result, StoreError};
use crate::id::ImageId;
use crate::vector_index::{
    Among, GraphProgress, IndexStats, NeighbourQuery, Neighbours, VectorHit, VectorIndex, VectorQuery, VectorRecord,
};

#[cfg(not(target_endian = "little"))]
compile_error!("the exact index maps little-endian files directly: big-endian targets are not supported");

const MANIFEST: &str = "manifest.json";
const FORMAT: &str = "capmatch-exact-vectors";
const VERSION: u32 = 1;

/// The commit record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Manifest {
    format: String,
    version: u32,
    dim: Option<usize>,
    rows: u64,
    caption_rows: u64,
    generation: u64,
    file_generation: u64,
    /// Names of the domains; rows store indices into this list.
    domains: Vec<String>,
    /// What made the vectors (see `ModelIdentity::vector_fingerprint`), once bound.
    fingerprint: Option<String>,
    /// Rows the last commit removed (applied to `live` right after the commit; listed so
    /// that a crash in between cannot resurrect them).
    removed_rows: Vec<u64>,
}

impl Manifest {
    fn new() -> Self {
        Self {
            format: FORMAT.into(),
            version: VERSION,
            dim: None,
            rows: 0,
            caption_rows: 0,
            generation: 0,
            file_generation: 0,
            domains: Vec::new(),
            fingerprint: None,
            removed_rows: Vec::new(),
        }
    }
}

/// The columns, as files of one generation.
#[derive(Clone, Copy)]
enum Column {
    Images,
    Captions,
    Offsets,
    Ids,
    Domains,
    Live,
}

impl Column {
    const ALL: [Column; 6] = [Column::Images, Column::Captions, Column::Offsets, Column::Ids, Column::Domains, Column::Live];

    fn file_name(self, generation: u64) -> String {
        let (stem, ext) = match self {
            Column::Images => ("images", "f32"),
            Column::Captions => ("captions", "f32"),
            Column::Offsets => ("offsets", "u32"),
            Column::Ids => ("ids", "u64"),
            Column::Domains => ("domains", "u32"),
            Column::Live => ("live", "u8"),
        };
        format!("{stem}-{generation}.{ext}")
    }

    /// Whether `name` is a file of this column, of any generation.
    fn matches(self, name: &str) -> bool {
        let f = self.file_name(0);
        let (stem, ext) = f.split_once("-0.").expect("stem-generation.ext");
        name.strip_prefix(stem)
            .and_then(|rest| rest.strip_prefix('-'))
            .and_then(|rest| rest.strip_suffix(ext))
            .and_then(|rest| rest.strip_suffix('.'))
            .is_some_and(|g| !g.is_empty() && g.bytes().all(|b| b.is_ascii_digit()))
    }

    /// Committed bytes of this column under `m`.
    fn committed_len(self, m: &Manifest) -> u64 {
        let dim = m.dim.unwrap_or(0) as u64;
        match self {
            Column::Images => m.rows * dim * 4,
            Column::Captions => m.caption_rows * dim * 4,
            Column::Offsets => (m.rows + 1) * 4,
            Column::Ids => m.rows * 8,
            Column::Domains => m.rows * 4,
            Column::Live => m.rows,
        }
    }
}

/// The committed state, mapped. The approximate index (`crate::ann`) reads it row by row:
/// its graphs are keyed by row, and it re-scores candidates from these vectors.
pub(crate) struct Snapshot {
    manifest: Manifest,
    images: Mapped,
    captions: Mapped,
    offsets: Mapped,
    ids: Mapped,
    domains: Mapped,
    live: Mapped,
    removed: HashSet<u64>,
    live_rows: u64,
}

impl Snapshot {
    fn load(dir: &Path, manifest: Manifest) -> Result<Self> {
        let open = |c: Column| Mapped::open(&dir.join(c.file_name(manifest.file_generation)), c.committed_len(&manifest) as usize);
        let offsets = if manifest.rows == 0 && manifest.dim.is_none() { Mapped::empty() } else { open(Column::Offsets)? };
        let mut s = Snapshot {
            images: open(Column::Images)?,
            captions: open(Column::Captions)?,
            offsets,
            ids: open(Column::Ids)?,
            domains: open(Column::Domains)?,
            live: open(Column::Live)?,
            removed: manifest.removed_rows.iter().copied().collect(),
            live_rows: 0,
            manifest,
        };
        s.check(dir)?;
        s.live_rows = (0..s.rows()).filter(|&r| s.is_live(r)).count() as u64;
        Ok(s)
    }

    pub(crate) fn rows(&self) -> usize {
        self.manifest.rows as usize
    }

    pub(crate) fn is_live(&self, row: usize) -> bool {
        self.live.bytes()[row] == 1 && !self.removed.contains(&(row as u64))
    }

    /// Rows holding images: the live ones.
    pub(crate) fn live_rows(&self) -> usize {
        self.live_rows as usize
    }

    /// Changes only when compaction renumbers the rows.
    pub(crate) fn file_generation(&self) -> u64 {
        self.manifest.file_generation
    }

    pub(crate) fn dim(&self) -> Option<usize> {
        self.manifest.dim
    }

    pub(crate) fn id(&self, row: usize) -> ImageId {
        ImageId(self.ids.u64s()[row])
    }

    /// The domain of each row, as an index into [`Self::domain_index`]'s numbering.
    pub(crate) fn row_domains(&self) -> &[u32] {
        self.domains.u32s()
    }

    /// The number rows use for the domain `name`, if any row has it.
    pub(crate) fn domain_index(&self, name: &str) -> Option<u32> {
        self.manifest.domains.iter().position(|d| d == name).map(|i| i as u32)
    }

    fn offsets(&self) -> &[u32] {
        let o = self.offsets.u32s();
        if o.is_empty() { &[0] } else { o }
    }

    /// Cheap structural checks, so that a damaged file is refused with a message rather
    /// than read out of bounds.
    fn check(&self, dir: &Path) -> Result<()> {
        let offsets = self.offsets();
        if offsets[0] != 0
            || offsets.windows(2).any(|w| w[0] > w[1])
            || *offsets.last().expect("rows + 1 offsets") as u64 != self.manifest.caption_rows
        {
            return Err(StoreError::corrupt(dir, "caption offsets are not ascending up to the caption rows"));
        }
        let n_domains = self.manifest.domains.len() as u32;
        if self.domains.u32s().iter().any(|&d| d >= n_domains) {
            return Err(StoreError::corrupt(dir, "a row names a domain the manifest does not list"));
        }
        Ok(())
    }

    pub(crate) fn gallery(&self) -> Option<GalleryVectors<'_>> {
        let dim = self.manifest.dim?;
        // `check` found the offsets ascending when the snapshot was loaded.
        GalleryVectors::with_ascending_offsets(dim, self.images.f32s(), self.captions.f32s(), self.offsets()).ok()
    }

    pub(crate) fn record(&self, row: usize) -> VectorRecord {
        let dim = self.manifest.dim.unwrap_or(0);
        let offsets = self.offsets();
        let (c0, c1) = (offsets[row] as usize, offsets[row + 1] as usize);
        VectorRecord {
            id: ImageId(self.ids.u64s()[row]),
            domain: self.manifest.domains[self.domains.u32s()[row] as usize].clone(),
            image: self.images.f32s()[row * dim..(row + 1) * dim].to_vec(),
            captions: self.captions.f32s()[c0 * dim..c1 * dim].to_vec(),
        }
    }

    /// Ranked rows as hits: ids and both components of each score.
    pub(crate) fn hits(&self, gallery: &GalleryVectors<'_>, query: &QueryVectors<'_>, ranked: Vec<Ranked>) -> Vec<VectorHit> {
        ranked
            .into_iter()
            .map(|r| VectorHit {
                id: self.id(r.position as usize),
                score: r.score,
                components: components(gallery, query, r.position as usize),
            })
            .collect()
    }

    /// Live row of each id (the latest, should a crash have left two).
    fn id_rows(&self) -> HashMap<ImageId, usize> {
        let ids = self.ids.u64s();
        let mut map = HashMap::with_capacity(self.live_rows as usize);
        for row in 0..self.rows() {
            if self.is_live(row) {
                map.insert(ImageId(ids[row]), row);
            }
        }
        map
    }
}

/// How an [`ExactIndex`] is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    ReadOnly,
    /// The one writer (the caller holds the gallery's writer lock).
    ReadWrite,
}

/// The exact vector index. See the module documentation.
pub struct ExactIndex {
    dir: PathBuf,
    access: Access,
    snapshot: Snapshot,
    /// Row of each live id, built on first use.
    id_rows: Mutex<Option<Arc<HashMap<ImageId, usize>>>>,
}

impl ExactIndex {
    /// The folder of the index that goes with the catalog at `db`.
    pub fn dir_for(db: &Path) -> PathBuf {
        let mut name = db.as_os_str().to_owned();
        name.push(".vectors");
        PathBuf::from(name)
    }

    /// Opens the index in `dir`. A reader of a missing folder sees an empty index; a writer
    /// creates it, drops uncommitted bytes a crash left, and finishes the last commit's
    /// removals. `fingerprint` (the models' vector fingerprint), when given, must match the
    /// recorded one; a writer records it in a new index.
    pub fn open(dir: &Path, access: Access, fingerprint: Option<&str>) -> Result<Self> {
        let manifest_path = dir.join(MANIFEST);
        let manifest = match std::fs::read(&manifest_path) {
            Ok(bytes) => {
                let m: Manifest = serde_json::from_slice(&bytes)
                    .map_err(|e| StoreError::corrupt(&manifest_path, format!("not a vector manifest: {e}")))?;
                if m.format != FORMAT {
                    return Err(StoreError::corrupt(&manifest_path, format!("format {:?}, expected {FORMAT:?}", m.format)));
                }
                if m.version != VERSION {
                    return Err(StoreError::corrupt(
                        &manifest_path,
                        format!("vector format version {} (this capmatch reads {VERSION})", m.version),
                    ));
                }
                m
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Manifest::new(),
            Err(e) => return Err(StoreError::io(&manifest_path, e)),
        };
        if let (Some(want), Some(have)) = (fingerprint, manifest.fingerprint.as_deref()) {
            // An index without vectors has nothing to mix with: a writer re-binds it.
            if want != have && manifest.rows > 0 {
                return Err(StoreError::InvalidInput(format!(
                    "the vectors in {} were made by other models (fingerprint {have}, these models {want}); \
                     use another --db, or the models the index was built with",
                    dir.display()
                )));
            }
        }
        if access == Access::ReadWrite {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
            recover(dir, &manifest)?;
        }
        let snapshot = Snapshot::load(dir, manifest)?;
        let mut index = Self { dir: dir.to_path_buf(), access, snapshot, id_rows: Mutex::new(None) };
        if access == Access::ReadWrite && index.snapshot.manifest.fingerprint.as_deref() != fingerprint {
            if let Some(f) = fingerprint {
                let mut m = index.snapshot.manifest.clone();
                m.fingerprint = Some(f.to_owned());
                index.commit(m)?;
            }
        }
        Ok(index)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn is_writer(&self) -> bool {
        self.access == Access::ReadWrite
    }

    pub(crate) fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// The models' fingerprint the vectors were made with, once bound.
    pub fn fingerprint(&self) -> Option<&str> {
        self.snapshot.manifest.fingerprint.as_deref()
    }

    fn column_path(&self, c: Column, file_generation: u64) -> PathBuf {
        self.dir.join(c.file_name(file_generation))
    }

    fn require_writer(&self) -> Result<()> {
        if self.access != Access::ReadWrite {
            return Err(StoreError::InvalidInput(format!("{} is open for reading only", self.dir.display())));
        }
        Ok(())
    }

    fn id_rows(&self) -> Arc<HashMap<ImageId, usize>> {
        let mut guard = self.id_rows.lock().unwrap_or_else(|p| p.into_inner());
        guard.get_or_insert_with(|| Arc::new(self.snapshot.id_rows())).clone()
    }

    /// Writes `m` as the new commit record, applies its removals, and maps the result.
    fn commit(&mut self, m: Manifest) -> Result<()> {
        write_manifest(&self.dir, &m)?;
        apply_removals(&self.dir, &m)?;
        self.snapshot = Snapshot::load(&self.dir, m)?;
        *self.id_rows.lock().unwrap_or_else(|p| p.into_inner()) = None;
        Ok(())
    }

    fn append(&self, c: Column, m: &Manifest, bytes: &[u8]) -> Result<()> {
        let path = self.column_path(c, m.file_generation);
        let file = OpenOptions::new().create(true).write(true).truncate(false).open(&path).map_err(|e| StoreError::io(&path, e))?;
        file.write_all_at(bytes, c.committed_len(m)).map_err(|e| StoreError::io(&path, e))?;
        file.sync_data().map_err(|e| StoreError::io(&path, e))
    }
}

/// Drops bytes past the committed lengths, finishes the last commit's removals, and
/// deletes files of other generations (a crashed compaction's).
fn recover(dir: &Path, m: &Manifest) -> Result<()> {
    for c in Column::ALL {
        let path = dir.join(c.file_name(m.file_generation));
        let file = OpenOptions::new().create(true).write(true).truncate(false).open(&path).map_err(|e| StoreError::io(&path, e))?;
        let have = file.metadata().map_err(|e| StoreError::io(&path, e))?.len();
        let want = c.committed_len(m);
        if have > want {
            file.set_len(want).map_err(|e| StoreError::io(&path, e))?;
        } else if have < want {
            if matches!(c, Column::Offsets) && have == 0 && m.rows == 0 {
                // A new index: the offsets column starts with its leading 0.
                file.write_all_at(&0u32.to_le_bytes(), 0).map_err(|e| StoreError::io(&path, e))?;
            } else {
                return Err(StoreError::corrupt(&path, format!("{have} bytes where the manifest commits {want}")));
            }
        }
    }
    apply_removals(dir, m)?;
    let current: HashSet<String> = Column::ALL.iter().map(|c| c.file_name(m.file_generation)).collect();
    for entry in std::fs::read_dir(dir).map_err(|e| StoreError::io(dir, e))?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if Column::ALL.iter().any(|c| c.matches(&name)) && !current.contains(&name) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(())
}

fn apply_removals(dir: &Path, m: &Manifest) -> Result<()> {
    if m.removed_rows.is_empty() {
        return Ok(());
    }
    let path = dir.join(Column::Live.file_name(m.file_generation));
    let file = OpenOptions::new().write(true).open(&path).map_err(|e| StoreError::io(&path, e))?;
    for &row in &m.removed_rows {
        if row < m.rows {
            file.write_all_at(&[0u8], row).map_err(|e| StoreError::io(&path, e))?;
        }
    }
    file.sync_data().map_err(|e| StoreError::io(&path, e))
}

fn write_manifest(dir: &Path, m: &Manifest) -> Result<()> {
    crate::durable::replace_file(dir, MANIFEST, &serde_json::to_vec_pretty(m).expect("manifest serialises"))
}

fn f32_bytes(v: &[f32]) -> &[u8] {
    bytemuck::cast_slice(v)
}

impl VectorIndex for ExactIndex {
    fn dim(&self) -> Option<usize> {
        self.snapshot.manifest.dim
    }

    fn len(&self) -> usize {
        self.snapshot.live_rows as usize
    }

    fn upsert(&mut self, records: &[VectorRecord]) -> Result<()> {
        self.require_writer()?;
        if records.is_empty() {
            return Ok(());
        }
        let mut m = self.snapshot.manifest.clone();
        let dim = crate::vector_index::check_records(records, m.dim)?;
        m.dim = Some(dim);
        let (mut images, mut captions, mut offsets, mut ids, mut domains) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut caption_rows = m.caption_rows;
        for r in records {
            images.extend_from_slice(f32_bytes(&r.image));
            captions.extend_from_slice(f32_bytes(&r.captions));
            caption_rows += (r.captions.len() / dim) as u64;
            let end = u32::try_from(caption_rows)
                .map_err(|_| StoreError::InvalidInput("more than 2^32 caption vectors in one index".into()))?;
            offsets.extend_from_slice(&end.to_le_bytes());
            ids.extend_from_slice(&r.id.0.to_le_bytes());
            let d = match m.domains.iter().position(|d| *d == r.domain) {
                Some(i) => i,
                None => {
                    m.domains.push(r.domain.clone());
                    m.domains.len() - 1
                }
            } as u32;
            domains.extend_from_slice(&d.to_le_bytes());
        }
        let base = self.snapshot.manifest.clone();
        let with_dim = Manifest { dim: Some(dim), ..base.clone() };
        self.append(Column::Images, &with_dim, &images)?;
        self.append(Column::Captions, &with_dim, &captions)?;
        self.append(Column::Offsets, &with_dim, &offsets)?;
        self.append(Column::Ids, &with_dim, &ids)?;
        self.append(Column::Domains, &with_dim, &domains)?;
        self.append(Column::Live, &with_dim, &vec![1u8; records.len()])?;
        let old_rows = self.id_rows();
        m.removed_rows = records.iter().filter_map(|r| old_rows.get(&r.id)).map(|&row| row as u64).collect();
        m.rows += records.len() as u64;
        m.caption_rows = caption_rows;
        m.generation += 1;
        self.commit(m)
    }

    fn remove(&mut self, ids: &[ImageId]) -> Result<usize> {
        self.require_writer()?;
        let rows = self.id_rows();
        let removed: Vec<u64> = ids.iter().collect::<HashSet<_>>().into_iter().filter_map(|id| rows.get(id)).map(|&r| r as u64).collect();
        if removed.is_empty() {
            return Ok(0);
        }
        let mut m = self.snapshot.manifest.clone();
        m.removed_rows = removed.clone();
        m.generation += 1;
        self.commit(m)?;
        Ok(removed.len())
    }

    fn get(&self, id: ImageId) -> Result<Option<VectorRecord>> {
        Ok(self.id_rows().get(&id).map(|&row| self.snapshot.record(row)))
    }

    fn search(&self, query: &VectorQuery<'_>) -> Result<Vec<VectorHit>> {
        Ok(self.search_many(std::slice::from_ref(query))?.pop().unwrap_or_default())
    }

    /// Queries with the same target, k and domain are scored against the gallery together
    /// (one pass over the vectors for the whole group, the products as a matrix product);
    /// the dot kernel is batch-invariant, so each query's hits are those it gets alone.
    fn search_many(&self, queries: &[VectorQuery<'_>]) -> Result<Vec<Vec<VectorHit>>> {
        let s = &self.snapshot;
        let Some(gallery) = s.gallery() else {
            return Ok(queries.iter().map(|_| Vec::new()).collect());
        };
        let dim = gallery.dim;
        if let Some(q) = queries.iter().find(|q| q.vectors.is_empty() || q.vectors.len() % dim != 0) {
            return Err(StoreError::Dimension { expected: dim, found: q.vectors.len() });
        }
        let live = s.live.bytes();
        let domain_of = s.domains.u32s();
        let mut out = vec![Vec::new(); queries.len()];
        // Groups of queries sharing (target, k, domain); a domain the index has never seen
        // matches nothing, so its queries stay empty.
        let mut groups: Vec<(Target, usize, Option<u32>, Vec<usize>)> = Vec::new();
        for (qi, q) in queries.iter().enumerate() {
            let domain = match q.domain {
                None => None,
                Some(name) => match s.manifest.domains.iter().position(|d| d == name) {
                    Some(i) => Some(i as u32),
                    None => continue,
                },
            };
            match groups.iter_mut().find(|(t, k, d, _)| *t == q.target && *k == q.k && *d == domain) {
                Some(group) => group.3.push(qi),
                None => groups.push((q.target, q.k, domain, vec![qi])),
            }
        }
        for (target, k, domain, members) in groups {
            let keep = |i: usize| live[i] == 1 && !s.removed.contains(&(i as u64)) && domain.is_none_or(|d| domain_of[i] == d);
            let vectors: Vec<f32> = members.iter().flat_map(|&qi| queries[qi].vectors.iter().copied()).collect();
            let mut rows = Vec::with_capacity(members.len());
            let mut row = 0;
            for &qi in &members {
                let n = queries[qi].vectors.len() / dim;
                rows.push(row..row + n);
                row += n;
            }
            let qv = QueryVectors { dim, vectors: &vectors, groups: rows };
            let ranked = top_k_images(&gallery, &qv, target, k, true, &keep);
            for (j, (qi, ranked)) in members.into_iter().zip(ranked).enumerate() {
                out[qi] = s.hits(&gallery, &qv.slice(j..j + 1), ranked);
            }
        }
        Ok(out)
    }

    /// Blocks of query rows against the memory-mapped matrices (see `graph`). Candidates
    /// given by id are copied into a small gallery of their own first, so that a few new
    /// images are not found by scanning every row.
    fn neighbours(&self, query: &NeighbourQuery<'_>, progress: &dyn GraphProgress) -> Result<Vec<Neighbours>> {
        let s = &self.snapshot;
        let Some(gallery) = s.gallery() else { return Ok(Vec::new()) };
        let dim = gallery.dim;
        let id_rows = self.id_rows();
        let ids = s.ids.u64s();
        let query_rows: Vec<usize> = match query.of {
            None => (0..s.rows()).filter(|&r| s.is_live(r)).collect(),
            Some(of) => of.iter().filter_map(|id| id_rows.get(id).copied()).collect(),
        };
        // The candidates: the mapped gallery with a mask, or a compact copy of the listed rows.
        let (owned, candidate_rows): (Option<(Vec<f32>, Vec<f32>, Vec<u32>)>, Option<Vec<usize>>) = match query.among {
            Among::Ids(list) => {
                let mut rows: Vec<usize> = list.iter().filter_map(|id| id_rows.get(id).copied()).collect();
                rows.sort_unstable();
                rows.dedup();
                let (mut images, mut captions, mut offsets) = (Vec::new(), Vec::new(), vec![0u32]);
                for &r in &rows {
                    images.extend_from_slice(gallery.image(r));
                    let c = gallery.caption_rows(r);
                    captions.extend_from_slice(&gallery.captions[c.start * dim..c.end * dim]);
                    offsets.push((captions.len() / dim) as u32);
                }
                (Some((images, captions, offsets)), Some(rows))
            }
            _ => (None, None),
        };
        let compact = match &owned {
            Some((images, captions, offsets)) => {
                Some(GalleryVectors::new(dim, images, captions, offsets).map_err(|e| StoreError::corrupt(&self.dir, e))?)
            }
            None => None,
        };
        let candidates = compact.as_ref().unwrap_or(&gallery);
        let keep: Vec<bool> = match query.among {
            Among::Ids(_) => vec![true; candidates.len()],
            Among::All => (0..s.rows()).map(|r| s.is_live(r)).collect(),
            Among::Domain(name) => match s.manifest.domains.iter().position(|d| d == name) {
                Some(d) => (0..s.rows()).map(|r| s.is_live(r) && s.domains.u32s()[r] == d as u32).collect(),
                None => vec![false; s.rows()],
            },
        };
        let queries: Vec<graph::GraphQuery<'_>> = query_rows
            .iter()
            .map(|&r| graph::GraphQuery {
                vector: gallery.image(r),
                itself: match &candidate_rows {
                    Some(rows) => rows.binary_search(&r).ok(),
                    None => Some(r),
                },
            })
            .collect();
        let ranked = graph::top_k_blockwise(candidates, &keep, &queries, query.target, query.k, progress);
        let id_of = |position: u32| -> ImageId {
            let row = match &candidate_rows {
                Some(rows) => rows[position as usize],
                None => position as usize,
            };
            ImageId(ids[row])
        };
        Ok(query_rows
            .iter()
            .zip(ranked)
            .map(|(&r, hits)| Neighbours {
                id: ImageId(ids[r]),
                hits: hits
                    .into_iter()
                    .map(|(ranked, components)| VectorHit { id: id_of(ranked.position), score: ranked.score, components })
                    .collect(),
            })
            .collect())
    }

    fn score_pairs(&self, pairs: &[(ImageId, ImageId)]) -> Result<Vec<Option<ComponentScores>>> {
        let s = &self.snapshot;
        let Some(gallery) = s.gallery() else { return Ok(vec![None; pairs.len()]) };
        let id_rows = self.id_rows();
        Ok(pairs
            .iter()
            .map(|(a, b)| {
                let (a, b) = (id_rows.get(a)?, id_rows.get(b)?);
                Some(components(&gallery, &QueryVectors::one(gallery.dim, gallery.image(*a)), *b))
            })
            .collect())
    }

    fn ids(&self) -> Result<Vec<(ImageId, String)>> {
        let s = &self.snapshot;
        let ids = s.ids.u64s();
        let domains = s.domains.u32s();
        Ok((0..s.rows())
            .filter(|&r| s.is_live(r))
            .map(|r| (ImageId(ids[r]), s.manifest.domains[domains[r] as usize].clone()))
            .collect())
    }

    fn generation(&self) -> u64 {
        self.snapshot.manifest.generation
    }

    fn flush(&mut self) -> Result<()> {
        // Every commit is synced before its manifest is renamed.
        Ok(())
    }

    fn refresh(&mut self) -> Result<()> {
        let path = self.dir.join(MANIFEST);
        let m: Manifest = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::corrupt(&path, e.to_string()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(StoreError::io(&path, e)),
        };
        if m != self.snapshot.manifest {
            self.snapshot = Snapshot::load(&self.dir, m)?;
            *self.id_rows.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
        Ok(())
    }

    fn compact(&mut self) -> Result<bool> {
        self.require_writer()?;
        let s = &self.snapshot;
        let dead = s.manifest.rows - s.live_rows;
        if dead == 0 || dead * 4 < s.manifest.rows {
            return Ok(false);
        }
        let dim = s.manifest.dim.unwrap_or(0);
        let mut m = s.manifest.clone();
        m.file_generation += 1;
        m.rows = 0;
        m.caption_rows = 0;
        m.removed_rows.clear();
        m.generation += 1;
        let live: Vec<usize> = (0..s.rows()).filter(|&r| s.is_live(r)).collect();
        // Domains still in use, renumbered.
        let mut domains: Vec<String> = Vec::new();
        let mut remap: HashMap<u32, u32> = HashMap::new();
        let (mut images, mut captions, mut offsets, mut ids, mut doms) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        offsets.extend_from_slice(&0u32.to_le_bytes());
        let mut caption_rows = 0u64;
        for &row in &live {
            let r = s.record(row);
            images.extend_from_slice(f32_bytes(&r.image));
            captions.extend_from_slice(f32_bytes(&r.captions));
            caption_rows += (r.captions.len() / dim.max(1)) as u64;
            offsets.extend_from_slice(&(caption_rows as u32).to_le_bytes());
            ids.extend_from_slice(&r.id.0.to_le_bytes());
            let old = s.domains.u32s()[row];
            let d = *remap.entry(old).or_insert_with(|| {
                domains.push(r.domain.clone());
                (domains.len() - 1) as u32
            });
            doms.extend_from_slice(&d.to_le_bytes());
        }
        m.domains = domains;
        for (c, bytes) in [
            (Column::Images, &images),
            (Column::Captions, &captions),
            (Column::Offsets, &offsets),
            (Column::Ids, &ids),
            (Column::Domains, &doms),
            (Column::Live, &vec![1u8; live.len()]),
        ] {
            let path = self.column_path(c, m.file_generation);
            let file = File::create(&path).map_err(|e| StoreError::io(&path, e))?;
            file.write_all_at(bytes, 0).map_err(|e| StoreError::io(&path, e))?;
            file.sync_data().map_err(|e| StoreError::io(&path, e))?;
        }
        m.rows = live.len() as u64;
        m.caption_rows = caption_rows;
        let old_generation = s.manifest.file_generation;
        self.commit(m)?;
        for c in Column::ALL {
            let _ = std::fs::remove_file(self.column_path(c, old_generation));
        }
        Ok(true)
    }

    fn stats(&self) -> IndexStats {
        let s = &self.snapshot;
        let disk_bytes = std::fs::read_dir(&self.dir)
            .map(|entries| entries.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
            .unwrap_or(0);
        let live_captions: u64 = {
            let o = s.offsets();
            (0..s.rows()).filter(|&r| s.is_live(r)).map(|r| (o[r + 1] - o[r]) as u64).sum()
        };
        IndexStats {
            backend: "exact".into(),
            location: self.dir.display().to_string(),
            dim: s.manifest.dim,
            images: s.live_rows,
            captions: live_captions,
            disk_bytes,
            dead_images: s.manifest.rows - s.live_rows,
            shards: Vec::new(),
        }
    }
}
