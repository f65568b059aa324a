//! The approximate vector index: HNSW graphs (usearch) over an [`ExactIndex`], for
//! galleries where an exhaustive scan is too slow (42 ms a query at 1M × 512 on 2 cores).
//!
//! # What it is
//!
//! [`AnnIndex`] wraps the exact index and keeps everything exact that can be: vectors are
//! stored, read back, listed and removed by the exact index (its memory-mapped f32 files);
//! the approximate index only adds two graphs over bf16 copies of them, one over the image
//! vectors and one over every caption vector. Both are keyed by the exact index's **row**:
//! the caption graph holds several vectors per key (usearch's `multi`), so an image is found
//! by any of its captions, and a row maps straight to its f32 vectors, its id, its domain and
//! whether it is still live, with no lookup table.
//!
//! # Search
//!
//! Each query vector asks each graph the mode needs for `k ×` [`OVERSAMPLE`] candidates at
//! the tuned breadth (efSearch, see [`AnnIndex::tune`]); fused mode takes the union of both
//! graphs' candidates. Every candidate is then **re-scored exactly** with
//! `capmatch_retrieval` from the f32 vectors — the same kernel and the same rule as the
//! exact index, so scores are bit-identical to it — and the best `k` are kept in the
//! retrieval order (ties at the cut included). The domain filter and removed rows are
//! applied inside the graph walk (usearch's filtered search: rejected nodes are walked
//! through, never returned). Rows added since the graphs were saved are scanned exactly and
//! merged in, so a search never misses a new image. A query whose candidates would cover the
//! gallery anyway (k × [`OVERSAMPLE`] ≥ images) is answered by the exact scan.
//!
//! # Files (`<db>.ann/`, beside the catalog and its `.vectors/` folder)
//!
//! | file | contents |
//! | --- | --- |
//! | `manifest.json` | the commit record: library, dimension, models' fingerprint, the exact index's file generation and generation it reflects, rows covered, build parameters, search breadth, the last tuning |
//! | `images-N.usearch` | the image graph, with its bf16 vectors (usearch's own format, memory-mapped) |
//! | `captions-N.usearch` | the caption graph |
//!
//! # Freshness, and catching up
//!
//! The graphs cover the exact index's rows `0..rows` of one file generation. Rows appended
//! later are scanned exactly until a writer **merges** them (adds them to an in-memory copy
//! of the graphs and saves them under the next `N`, then commits the manifest); a writer
//! merges when more than [`AnnOptions::merge_after`] rows wait, and on [`VectorIndex::flush`]
//! (the engine flushes at the end of every indexing run). Removed and replaced rows stay in
//! the graph and are filtered out. Catching up is therefore exact: nothing is lost by a crash
//! (the rows are in the exact index) or by writes of a process that did not merge them. Only
//! two states send searches to the exact path: more than [`AnnOptions::max_tail`] rows not yet
//! merged (`behind`), or a compaction of the exact index that renumbered its rows without the
//! graphs being renumbered with it (`stale`, after a crash in between); [`AnnIndex::status`]
//! says which, and how to fix it (`capmatch ann build`).
//!
//! # Load safety
//!
//! A missing, truncated or foreign graph file, a manifest of another format, or graphs of
//! another dimension or other models are refused with a message ([`AnnStatus`]); the index
//! then answers every search by the exact path, and `capmatch ann build` replaces the files.

mod distance;
mod graph;
mod manifest;
mod tune;

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use capmatch_retrieval::{score_chunk, GalleryVectors, QueryVectors, ScoreBlock, Target, TopK};
use rayon::prelude::*;
use serde::Serialize;

use self::graph::Graph;
pub use self::graph::GraphParams;
use self::manifest::AnnManifest;
pub use self::manifest::Tuning;
pub use self::tune::{TuneOptions, TuneReport, TunePoint};
use crate::error::{Result, StoreError};
use crate::exact::ExactIndex;
use crate::id::ImageId;
use crate::vector_index::{IndexStats, VectorHit, VectorIndex, VectorQuery, VectorRecord};

/// Candidates asked of a graph per result: `k × OVERSAMPLE`. Re-ranking from f32 repairs
/// the order the bf16 graph found them in; the spare candidates cover what the bf16 ordering
/// and a multi-caption image (one key found several times) push out of the first `k`.
pub const OVERSAMPLE: usize = 4;

/// The kernel the graphs' bf16 distance runs on, on this CPU (`avx2+fma` or `portable`).
pub fn distance_kernel() -> &'static str {
    distance::kernel_name()
}

/// efSearch before any tuning.
pub const DEFAULT_BREADTH: usize = 64;

/// How an [`AnnIndex`] keeps up with its exact index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnnOptions {
    /// A writer merges rows not yet in the graphs once more than this many wait (at its next
    /// commit). Each merge rewrites the graph files, so this trades the exact scan of the
    /// waiting rows against rewrites.
    pub merge_after: usize,
    /// With more rows than this not yet in the graphs, searches use the exact path.
    pub max_tail: usize,
}

impl Default for AnnOptions {
    fn default() -> Self {
        // 32k unmerged rows cost about 1.4 ms of exact scanning per query at 512
        // dimensions on 2 cores: past that the approximate index would no longer pay.
        Self { merge_after: 16_384, max_tail: 32_768 }
    }
}

/// Where the approximate index stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AnnState {
    /// None was built.
    Absent,
    /// In use; every row is in the graphs, or few enough are not to be scanned exactly.
    Fresh,
    /// Too many rows are not in the graphs yet: searches are exact until a writer merges them.
    Behind,
    /// The graphs no longer match the exact index's rows: searches are exact until a rebuild.
    Stale,
    /// The files cannot be used (damaged, foreign, another dimension or other models):
    /// searches are exact until a rebuild.
    Refused,
}

/// What `capmatch info` shows of the approximate index.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnnStatus {
    pub state: AnnState,
    pub location: String,
    /// Why it is not in use, and what to do.
    pub problem: Option<String>,
    pub library: Option<String>,
    pub params: Option<GraphParams>,
    pub quantization: Option<String>,
    pub breadth: Option<usize>,
    pub oversample: usize,
    /// Vectors in the image and caption graphs.
    pub image_vectors: u64,
    pub caption_vectors: u64,
    /// Rows added since the graphs were saved (scanned exactly until merged).
    pub unmerged: u64,
    /// Images removed or replaced since they were added to the graphs (filtered out).
    pub removed: u64,
    pub built_at: Option<u64>,
    pub tuning: Option<Tuning>,
    pub disk_bytes: u64,
}

impl AnnStatus {
    /// No approximate index at `location`.
    pub fn absent(location: String, disk_bytes: u64) -> Self {
        Self {
            state: AnnState::Absent,
            location,
            problem: None,
            library: None,
            params: None,
            quantization: None,
            breadth: None,
            oversample: OVERSAMPLE,
            image_vectors: 0,
            caption_vectors: 0,
            unmerged: 0,
            removed: 0,
            built_at: None,
            tuning: None,
            disk_bytes,
        }
    }
}

/// The graphs in use.
struct Graphs {
    manifest: AnnManifest,
    images: Graph,
    captions: Graph,
}

enum State {
    Absent,
    /// Files that cannot be used, with the reason.
    Refused(String),
    Loaded(Box<Graphs>),
}

/// The approximate index. See the module documentation.
pub struct AnnIndex {
    exact: ExactIndex,
    dir: PathBuf,
    options: AnnOptions,
    state: State,
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn finite(v: &[f32]) -> bool {
    v.iter().all(|x| x.is_finite())
}

fn graph_name(kind: &str, sequence: u64) -> String {
    format!("{kind}-{sequence}.usearch")
}

impl AnnIndex {
    /// The folder of the approximate index that goes with the catalog at `db`.
    pub fn dir_for(db: &Path) -> PathBuf {
        let mut name = db.as_os_str().to_owned();
        name.push(".ann");
        PathBuf::from(name)
    }

    /// Wraps `exact` with the approximate index in `dir`, if there is one. Never fails on the
    /// approximate index's files: a problem with them is reported by [`AnnIndex::status`] and
    /// searches take the exact path.
    pub fn open(exact: ExactIndex, dir: &Path, options: AnnOptions) -> Self {
        let mut index = Self { exact, dir: dir.to_path_buf(), options, state: State::Absent };
        index.state = index.load_state();
        if let State::Refused(why) = &index.state {
            tracing::warn!("the approximate index is not used: {why}");
        }
        index
    }

    /// The exact index underneath.
    pub fn exact(&self) -> &ExactIndex {
        &self.exact
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn load_state(&self) -> State {
        match AnnManifest::read(&self.dir) {
            Ok(None) => State::Absent,
            Ok(Some(m)) => match self.view(m) {
                Ok(graphs) => State::Loaded(Box::new(graphs)),
                Err(e) => State::Refused(e.to_string()),
            },
            Err(e) => State::Refused(e.to_string()),
        }
    }

    /// Maps the graphs `m` names, after checking they belong to this exact index.
    fn view(&self, m: AnnManifest) -> Result<Graphs> {
        let manifest_path = self.dir.join(manifest::MANIFEST);
        if let Some(dim) = self.exact.dim() {
            if dim != m.dim {
                return Err(StoreError::corrupt(&manifest_path, format!("graphs of dimension {} for vectors of dimension {dim}", m.dim)));
            }
        }
        if let (Some(have), Some(want)) = (m.fingerprint.as_deref(), self.exact.fingerprint()) {
            if have != want {
                return Err(StoreError::corrupt(
                    &manifest_path,
                    format!("graphs of other models' vectors (fingerprint {have}, the vectors' {want})"),
                ));
            }
        }
        let images = Graph::view(&self.dir.join(&m.images.name), &m.images, m.dim, false)?;
        let captions = Graph::view(&self.dir.join(&m.captions.name), &m.captions, m.dim, true)?;
        images.set_breadth(m.breadth);
        captions.set_breadth(m.breadth);
        Ok(Graphs { manifest: m, images, captions })
    }

    fn graphs(&self) -> Option<&Graphs> {
        match &self.state {
            State::Loaded(g) => Some(g),
            _ => None,
        }
    }

    /// Rows not yet in the graphs, or `None` when the graphs do not describe the exact
    /// index's current rows (a compaction renumbered them).
    fn unmerged(&self, g: &Graphs) -> Option<usize> {
        let s = self.exact.snapshot();
        (g.manifest.exact_file_generation == s.file_generation() && g.manifest.rows as usize <= s.rows())
            .then(|| s.rows() - g.manifest.rows as usize)
    }

    /// The graphs, when searches may use them.
    fn usable(&self) -> Option<&Graphs> {
        self.graphs().filter(|g| self.unmerged(g).is_some_and(|tail| tail <= self.options.max_tail))
    }

    /// Whether searches use the graphs.
    pub fn is_usable(&self) -> bool {
        self.usable().is_some()
    }

    pub fn status(&self) -> AnnStatus {
        let disk_bytes = std::fs::read_dir(&self.dir)
            .map(|entries| entries.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
            .unwrap_or(0);
        let mut status = AnnStatus::absent(self.dir.display().to_string(), disk_bytes);
        match &self.state {
            State::Absent => {}
            State::Refused(why) => {
                status.state = AnnState::Refused;
                status.problem = Some(format!("{why}; searches are exact until `capmatch ann build` rebuilds it"));
            }
            State::Loaded(g) => {
                let m = &g.manifest;
                status.library = Some(m.library.clone());
                status.params = Some(m.params);
                status.quantization = Some(m.quantization.clone());
                status.breadth = Some(m.breadth);
                status.image_vectors = g.images.len() as u64;
                status.caption_vectors = g.captions.len() as u64;
                status.built_at = Some(m.built_at);
                status.tuning = m.tuning.clone();
                let s = self.exact.snapshot();
                match self.unmerged(g) {
                    None => {
                        status.state = AnnState::Stale;
                        status.problem = Some(
                            "the vector files were compacted (rows renumbered) after the approximate index was saved; \
                             searches are exact until `capmatch ann build` rebuilds it"
                                .into(),
                        );
                    }
                    Some(tail) => {
                        status.unmerged = tail as u64;
                        status.removed = (0..m.rows as usize).filter(|&r| !s.is_live(r)).count() as u64;
                        if tail > self.options.max_tail {
                            status.state = AnnState::Behind;
                            status.problem = Some(format!(
                                "{tail} images were added since it was saved; searches are exact until the next \
                                 `capmatch index` or `capmatch ann build` merges them"
                            ));
                        } else {
                            status.state = AnnState::Fresh;
                        }
                    }
                }
            }
        }
        status
    }

    fn require_writer(&self) -> Result<()> {
        if !self.exact.is_writer() {
            return Err(StoreError::InvalidInput(format!("{} is open for reading only", self.dir.display())));
        }
        Ok(())
    }

    /// Builds the graphs from every live row, replacing any previous ones (their breadth and
    /// tuning are kept when the parameters are the same). Takes minutes past a million images.
    pub fn build(&mut self, params: GraphParams) -> Result<AnnStatus> {
        self.require_writer()?;
        let s = self.exact.snapshot();
        let (Some(dim), Some(gallery)) = (s.dim(), s.gallery()) else {
            return Err(StoreError::InvalidInput("the index holds no vectors yet: index some images first".into()));
        };
        let rows: Vec<usize> = (0..s.rows()).filter(|&r| s.is_live(r)).collect();
        let captions: usize = rows.iter().map(|&r| gallery.caption_rows(r).len()).sum();
        let images = Graph::new(dim, false, params, rows.len())?;
        let caption_graph = Graph::new(dim, true, params, captions)?;
        add_rows(&images, &caption_graph, &gallery, &rows)?;
        // Keep what a tuning measured when the graph is built the same way.
        let previous = match AnnManifest::read(&self.dir) {
            Ok(Some(m)) if m.params == params && m.dim == dim => Some(m),
            _ => None,
        };
        let sequence = previous_sequence(&self.dir) + 1;
        let (format, version) = AnnManifest::new_format();
        let manifest = AnnManifest {
            format,
            version,
            library: AnnManifest::library(),
            dim,
            fingerprint: self.exact.fingerprint().map(str::to_owned),
            exact_file_generation: s.file_generation(),
            exact_generation: self.exact.generation(),
            rows: s.rows() as u64,
            sequence,
            params,
            quantization: graph::quantization_name().into(),
            breadth: previous.as_ref().map_or(DEFAULT_BREADTH, |m| m.breadth),
            tuning: previous.and_then(|m| m.tuning),
            built_at: now_secs(),
            images: Default::default(),
            captions: Default::default(),
        };
        self.save(images, caption_graph, manifest)?;
        Ok(self.status())
    }

    /// Writes owned graphs under the manifest's sequence, commits the manifest, maps the new
    /// files and deletes the graph files of other sequences.
    fn save(&mut self, images: Graph, captions: Graph, mut manifest: AnnManifest) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(|e| StoreError::io(&self.dir, e))?;
        manifest.images = images.save(&self.dir.join(graph_name("images", manifest.sequence)))?;
        manifest.captions = captions.save(&self.dir.join(graph_name("captions", manifest.sequence)))?;
        drop((images, captions));
        manifest.write(&self.dir)?;
        let keep = [manifest.images.name.clone(), manifest.captions.name.clone()];
        self.state = State::Loaded(Box::new(self.view(manifest)?));
        for entry in std::fs::read_dir(&self.dir).map_err(|e| StoreError::io(&self.dir, e))?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".usearch") && !keep.contains(&name) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(())
    }

    /// Adds the rows appended since the graphs were saved (exact: the rows are read from the
    /// exact index). Nothing to do without usable graphs, or with nothing waiting.
    pub fn merge(&mut self) -> Result<()> {
        self.require_writer()?;
        let Some(g) = self.graphs() else { return Ok(()) };
        let Some(tail) = self.unmerged(g) else { return Ok(()) };
        if tail == 0 {
            return Ok(());
        }
        let m = g.manifest.clone();
        let images = Graph::load(&self.dir.join(&m.images.name), &m.images, m.dim, false)?;
        let captions = Graph::load(&self.dir.join(&m.captions.name), &m.captions, m.dim, true)?;
        let s = self.exact.snapshot();
        let gallery = s.gallery().expect("rows imply vectors");
        let rows: Vec<usize> = (m.rows as usize..s.rows()).filter(|&r| s.is_live(r)).collect();
        let new_captions: usize = rows.iter().map(|&r| gallery.caption_rows(r).len()).sum();
        images.reserve(images.len() + rows.len())?;
        captions.reserve(captions.len() + new_captions)?;
        add_rows(&images, &captions, &gallery, &rows)?;
        let manifest = AnnManifest {
            rows: s.rows() as u64,
            exact_generation: self.exact.generation(),
            sequence: m.sequence + 1,
            ..m
        };
        tracing::debug!("merging {} rows into the approximate index", rows.len());
        self.save(images, captions, manifest)
    }

    /// Measures recall against the exact index and sets the search breadth; see
    /// [`TuneOptions`].
    pub fn tune(&mut self, options: &TuneOptions) -> Result<TuneReport> {
        self.require_writer()?;
        // Rows waiting to be merged would be scanned exactly and flatter the measurement.
        self.merge()?;
        let report = match self.usable() {
            Some(g) => tune::measure(self, g, options)?,
            None => {
                return Err(StoreError::InvalidInput(match &self.state {
                    State::Absent => "there is no approximate index to tune: run `capmatch ann build` first".into(),
                    _ => format!("the approximate index is not usable: {}", self.status().problem.unwrap_or_default()),
                }))
            }
        };
        let State::Loaded(g) = &mut self.state else { unreachable!("usable graphs are loaded") };
        g.manifest.breadth = report.tuning.breadth;
        g.manifest.tuning = Some(report.tuning.clone());
        g.manifest.write(&self.dir)?;
        g.images.set_breadth(report.tuning.breadth);
        g.captions.set_breadth(report.tuning.breadth);
        Ok(report)
    }

    /// Sets the search breadth by hand, replacing a tuned one; the last tuning's measurement
    /// no longer describes it and is dropped.
    pub fn set_breadth(&mut self, breadth: usize) -> Result<()> {
        self.require_writer()?;
        let State::Loaded(g) = &mut self.state else {
            return Err(StoreError::InvalidInput("there is no usable approximate index: run `capmatch ann build` first".into()));
        };
        g.manifest.breadth = breadth.max(1);
        g.manifest.tuning = None;
        g.manifest.write(&self.dir)?;
        g.images.set_breadth(g.manifest.breadth);
        g.captions.set_breadth(g.manifest.breadth);
        Ok(())
    }

    /// Searches exhaustively, whatever the graphs' state (`capmatch search --exact`).
    pub fn search_many_exact(&self, queries: &[VectorQuery<'_>]) -> Result<Vec<Vec<VectorHit>>> {
        self.exact.search_many(queries)
    }

    /// One search through the graphs; see the module documentation.
    fn search_graphs(&self, g: &Graphs, q: &VectorQuery<'_>) -> Result<Vec<VectorHit>> {
        let s = self.exact.snapshot();
        let Some(gallery) = s.gallery() else { return Ok(Vec::new()) };
        let dim = gallery.dim;
        if q.vectors.is_empty() || q.vectors.len() % dim != 0 {
            return Err(StoreError::Dimension { expected: dim, found: q.vectors.len() });
        }
        let count = q.k.saturating_mul(OVERSAMPLE);
        if count >= s.live_rows() {
            // The candidates would be (nearly) the whole gallery: scanning it is cheaper.
            return self.exact.search(q);
        }
        let domain = match q.domain {
            None => None,
            Some(name) => match s.domain_index(name) {
                Some(d) => Some(d),
                None => return Ok(Vec::new()),
            },
        };
        let row_domains = s.row_domains();
        let keep = |row: usize| s.is_live(row) && domain.is_none_or(|d| row_domains[row] == d);
        let keep_key = |key: u64| keep(key as usize);
        // Without a domain and without removed rows every node qualifies: the unfiltered
        // search is cheaper.
        let filter: Option<&dyn Fn(u64) -> bool> =
            if domain.is_none() && s.live_rows() == s.rows() { None } else { Some(&keep_key) };
        let mut candidates: Vec<u64> = Vec::new();
        for v in q.vectors.chunks_exact(dim) {
            if q.target.needs_captions() {
                candidates.extend(g.captions.candidates(v, count, filter)?);
            }
            if q.target.needs_images() {
                candidates.extend(g.images.candidates(v, count, filter)?);
            }
        }
        candidates.sort_unstable();
        candidates.dedup();
        let qv = QueryVectors::one(dim, q.vectors);
        let mut top = TopK::new(q.k, true);
        let mut scratch = ScoreBlock::default();
        let mut score = [0f32];
        for row in candidates.into_iter().map(|key| key as usize) {
            if row < s.rows() && keep(row) {
                score_chunk(&gallery, &qv, q.target, row..row + 1, &mut scratch, &mut score);
                top.push(score[0], row as u32);
            }
        }
        scan_rows(&gallery, &qv, q.target, g.manifest.rows as usize..s.rows(), &keep, &mut top);
        Ok(s.hits(&gallery, &qv, top.finish()))
    }
}

/// Scores `rows` exactly into `top` (the rows not yet in the graphs).
fn scan_rows(
    gallery: &GalleryVectors<'_>,
    query: &QueryVectors<'_>,
    target: Target,
    rows: std::ops::Range<usize>,
    keep: &dyn Fn(usize) -> bool,
    top: &mut TopK,
) {
    const CHUNK: usize = 1024;
    let mut scratch = ScoreBlock::default();
    let mut scores = Vec::new();
    for start in rows.clone().step_by(CHUNK) {
        let chunk = start..(start + CHUNK).min(rows.end);
        scores.resize(chunk.len(), 0.0);
        score_chunk(gallery, query, target, chunk.clone(), &mut scratch, &mut scores);
        for (row, &s) in chunk.zip(&scores) {
            if keep(row) {
                top.push(s, row as u32);
            }
        }
    }
}

/// Adds `rows` of `gallery` to the graphs, in parallel. Vectors with a NaN or an infinity
/// are left out: they score −∞ whatever the query, and would mislead the graph's walk.
fn add_rows(images: &Graph, captions: &Graph, gallery: &GalleryVectors<'_>, rows: &[usize]) -> Result<()> {
    rows.par_iter().try_for_each(|&row| {
        let image = gallery.image(row);
        if finite(image) {
            images.add(row as u64, image)?;
        }
        for c in gallery.caption_rows(row) {
            let caption = gallery.caption(c);
            if finite(caption) {
                captions.add(row as u64, caption)?;
            }
        }
        Ok(())
    })
}

/// The highest sequence number of the graph files in `dir` (0 without any).
fn previous_sequence(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let stem = name.strip_suffix(".usearch")?;
                    stem.rsplit_once('-')?.1.parse::<u64>().ok()
                })
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
        .max(AnnManifest::read(dir).ok().flatten().map_or(0, |m| m.sequence))
}

impl VectorIndex for AnnIndex {
    fn dim(&self) -> Option<usize> {
        self.exact.dim()
    }

    /// The exact index's blockwise graph: every row is exact (inspection counts pairs and
    /// clusters from it, where a missed neighbour would be a missed copy), and the blockwise
    /// screen is faster than one approximate search per image at the sizes inspect runs.
    fn neighbours(
        &self,
        query: &crate::vector_index::NeighbourQuery<'_>,
        progress: &dyn crate::vector_index::GraphProgress,
    ) -> Result<Vec<crate::vector_index::Neighbours>> {
        self.exact.neighbours(query, progress)
    }

    /// Exact, from the vectors: given pairs need no candidates.
    fn score_pairs(&self, pairs: &[(ImageId, ImageId)]) -> Result<Vec<Option<capmatch_retrieval::ComponentScores>>> {
        self.exact.score_pairs(pairs)
    }

    fn len(&self) -> usize {
        self.exact.len()
    }

    fn upsert(&mut self, records: &[VectorRecord]) -> Result<()> {
        self.exact.upsert(records)?;
        if self.graphs().and_then(|g| self.unmerged(g)).is_some_and(|tail| tail > self.options.merge_after) {
            self.merge()?;
        }
        Ok(())
    }

    fn remove(&mut self, ids: &[ImageId]) -> Result<usize> {
        // Removed rows are filtered out of the graphs' answers (the exact index's live map).
        self.exact.remove(ids)
    }

    fn get(&self, id: ImageId) -> Result<Option<VectorRecord>> {
        self.exact.get(id)
    }

    fn search(&self, query: &VectorQuery<'_>) -> Result<Vec<VectorHit>> {
        match self.usable() {
            Some(g) => self.search_graphs(g, query),
            None => self.exact.search(query),
        }
    }

    fn search_many(&self, queries: &[VectorQuery<'_>]) -> Result<Vec<Vec<VectorHit>>> {
        match self.usable() {
            Some(g) => queries.iter().map(|q| self.search_graphs(g, q)).collect(),
            None => self.exact.search_many(queries),
        }
    }

    fn ids(&self) -> Result<Vec<(ImageId, String)>> {
        self.exact.ids()
    }

    fn generation(&self) -> u64 {
        self.exact.generation()
    }

    /// Merges the rows waiting for the graphs (the exact index's commits are durable
    /// already).
    fn flush(&mut self) -> Result<()> {
        self.exact.flush()?;
        if self.exact.is_writer() {
            self.merge()?;
        }
        Ok(())
    }

    fn refresh(&mut self) -> Result<()> {
        self.exact.refresh()?;
        let current = self.graphs().map(|g| &g.manifest);
        let on_disk = AnnManifest::read(&self.dir);
        let changed = match (&on_disk, current) {
            (Ok(Some(m)), Some(c)) => m != c,
            (Ok(None), None) => false,
            _ => true,
        };
        if changed {
            self.state = self.load_state();
        }
        Ok(())
    }

    /// Compacts the exact index, then renumbers the graphs' keys the same way, so that they
    /// stay in use without a rebuild.
    fn compact(&mut self) -> Result<bool> {
        let before = self.exact.snapshot();
        let old_live: Vec<usize> = (0..before.rows()).filter(|&r| before.is_live(r)).collect();
        let old_rows = before.rows();
        let renumber = self.graphs().filter(|g| self.unmerged(g).is_some()).map(|g| g.manifest.clone());
        if !self.exact.compact()? {
            return Ok(false);
        }
        if let Some(m) = renumber {
            self.renumber(m, &old_live, old_rows)?;
        }
        Ok(true)
    }

    fn stats(&self) -> IndexStats {
        let mut stats = self.exact.stats();
        if self.is_usable() {
            stats.backend = "hnsw".into();
        }
        stats
    }
}

impl AnnIndex {
    /// After a compaction that kept the rows `old_live` (of `old_rows`) in order: drops the
    /// removed rows from copies of the graphs and renames every kept row to its new number.
    fn renumber(&mut self, m: AnnManifest, old_live: &[usize], old_rows: usize) -> Result<()> {
        let images = Graph::load(&self.dir.join(&m.images.name), &m.images, m.dim, false)?;
        let captions = Graph::load(&self.dir.join(&m.captions.name), &m.captions, m.dim, true)?;
        let covered = m.rows as usize;
        let mut live = vec![false; old_rows];
        for &r in old_live {
            live[r] = true;
        }
        for row in (0..covered).filter(|&r| !live[r]) {
            images.remove(row as u64)?;
            captions.remove(row as u64)?;
        }
        // New numbers only ever go down, and a kept row's new number was either a removed
        // row (gone from the graph) or a kept row renamed before it: ascending order never
        // renames onto a key still in use.
        let mut new_covered = 0;
        for (new, &old) in old_live.iter().enumerate().filter(|(_, &old)| old < covered) {
            if new != old {
                if images.contains(old as u64) {
                    images.rename(old as u64, new as u64)?;
                }
                if captions.contains(old as u64) {
                    captions.rename(old as u64, new as u64)?;
                }
            }
            new_covered = new + 1;
        }
        let s = self.exact.snapshot();
        let manifest = AnnManifest {
            exact_file_generation: s.file_generation(),
            exact_generation: self.exact.generation(),
            rows: new_covered as u64,
            sequence: m.sequence + 1,
            ..m
        };
        self.save(images, captions, manifest)
    }
}
