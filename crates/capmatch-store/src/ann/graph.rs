//! One HNSW graph (usearch) over bf16 copies of vectors, keyed by the exact index's row.
//!
//! A graph is either **viewed** (memory-mapped from its file, read-only: what every search
//! uses) or **owned** (in memory, growing: while it is built or a writer merges new rows
//! into it, then saved to a new file).

use std::fs::{File, OpenOptions};
use std::path::Path;
use std::sync::{Condvar, Mutex};

use memmap2::{Mmap, MmapMut, MmapOptions};
use serde::{Deserialize, Serialize};
use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

use crate::error::{Result, StoreError};

/// How a graph is built. Recorded in the manifest: a merge adds rows with the parameters the
/// graph was built with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraphParams {
    /// Edges per node (HNSW's M; the bottom layer keeps 2 × M).
    pub connectivity: usize,
    /// Breadth of the search that links a new node (efConstruction).
    pub expansion_add: usize,
}

impl Default for GraphParams {
    fn default() -> Self {
        // M = 16 and efConstruction = 128 reached recall@10 ≥ 0.99 on 100k clustered 512-d
        // vectors with re-ranking at half the build time of M = 32 (see BENCHMARKS.md).
        Self { connectivity: 16, expansion_add: 128 }
    }
}

/// The graph's scalar type: vectors are stored as bf16, half the f32 bytes. Its cosines are
/// within about 1e-2 of the f32 ones, enough to find the candidates; re-ranking from f32
/// restores their exact order. The distance is ours (`super::distance`): a bf16 value
/// widens to an f32 with one integer instruction, where an f16 needs F16C.
const QUANTIZATION: ScalarKind = ScalarKind::BF16;
const QUANTIZATION_NAME: &str = "bf16";

pub(crate) fn quantization_name() -> &'static str {
    QUANTIZATION_NAME
}

/// What a graph file must be, from the manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraphFile {
    pub name: String,
    pub bytes: u64,
    /// Vectors in the graph (several per key in the caption graph), removed ones aside.
    pub vectors: u64,
}

pub(crate) struct Graph {
    // Declared before `map`: a view points into the map, so it must be dropped first.
    index: Index,
    map: Option<Mmap>,
    searches: SearchSlots,
}

/// usearch gives each concurrent search one of a fixed number of scratch slots (one per
/// hardware thread by default) and fails a search that finds none free ("Reserve capacity
/// ahead of searches!"). A server searching from more threads than that waits here for a
/// slot instead.
struct SearchSlots {
    free: Mutex<usize>,
    freed: Condvar,
}

impl SearchSlots {
    fn new() -> Self {
        // usearch reserves `hardware_concurrency()` slots; the standard library's count is
        // never above it (it also honours CPU affinity and cgroup quotas).
        Self { free: Mutex::new(std::thread::available_parallelism().map_or(1, |n| n.get())), freed: Condvar::new() }
    }

    fn run<T>(&self, search: impl FnOnce() -> T) -> T {
        {
            let mut free = self.freed.wait_while(self.free.lock().unwrap_or_else(|p| p.into_inner()), |n| *n == 0).unwrap_or_else(|p| p.into_inner());
            *free -= 1;
        }
        let out = search();
        *self.free.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.freed.notify_one();
        out
    }
}

fn backend(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("{what}: {e}"))
}

/// Gives `index` our bf16 distance in place of usearch's own (see `super::distance`).
/// Needed after every `Index::new`, `view` and `load`: usearch resets the metric to its
/// built-in one from the file header when it opens a graph.
fn install_distance(index: &mut Index, dim: usize) {
    let distance = super::distance::bf16_ip_distance();
    index.change_metric::<f32>(Box::new(move |a: *const f32, b: *const f32| {
        #[allow(unsafe_code)]
        // SAFETY: usearch calls the metric with two of its stored vectors (or a query it cast
        // to the same scalar type), each `dim` bf16 values, whatever the closure's pointer
        // type says: the index's scalar type is `QUANTIZATION`, bf16.
        let (a, b) = unsafe { (std::slice::from_raw_parts(a.cast::<u16>(), dim), std::slice::from_raw_parts(b.cast::<u16>(), dim)) };
        distance(a, b)
    }));
}

fn options(dim: usize, multi: bool, params: GraphParams) -> IndexOptions {
    IndexOptions {
        dimensions: dim,
        // Inner product on unit vectors: distance = 1 − cosine.
        metric: MetricKind::IP,
        quantization: QUANTIZATION,
        connectivity: params.connectivity,
        expansion_add: params.expansion_add,
        expansion_search: 64,
        multi,
    }
}

impl Graph {
    /// An empty graph in memory, with room for `capacity` vectors.
    pub(crate) fn new(dim: usize, multi: bool, params: GraphParams, capacity: usize) -> Result<Self> {
        let mut index = Index::new(&options(dim, multi, params)).map_err(|e| backend("creating a graph", e))?;
        install_distance(&mut index, dim);
        let graph = Self { index, map: None, searches: SearchSlots::new() };
        graph.reserve(capacity)?;
        Ok(graph)
    }

    /// Makes room for `capacity` vectors in all, for adds from every rayon thread.
    pub(crate) fn reserve(&self, capacity: usize) -> Result<()> {
        // Adds come from rayon's threads; searches are bounded by `SearchSlots`.
        let threads = rayon::current_num_threads().max(std::thread::available_parallelism().map_or(1, |n| n.get()));
        self.index.reserve_capacity_and_threads(capacity.max(1), threads).map_err(|e| backend("reserving graph memory", e))
    }

    /// Maps the graph file `path` read-only, after checking that it is the file `expected`
    /// describes (length, dimension, key layout, vector count): a truncated, foreign or
    /// mismatched file is refused with a message instead of being read out of bounds.
    pub(crate) fn view(path: &Path, expected: &GraphFile, dim: usize, multi: bool) -> Result<Self> {
        let map = map_checked(path, expected)?;
        let meta = Index::metadata_from_buffer(&map).map_err(|e| StoreError::corrupt(path, format!("not a usearch graph: {e}")))?;
        let mismatch = |what: String| Err(StoreError::corrupt(path, what));
        if meta.dimensions as usize != dim {
            return mismatch(format!("a graph of {}-dimensional vectors where the index has {dim}", meta.dimensions));
        }
        if meta.multi != multi || meta.metric != MetricKind::IP || meta.quantization != QUANTIZATION {
            return mismatch("a graph of another kind (metric, scalar type or key layout)".into());
        }
        if meta.count_present != expected.vectors {
            return mismatch(format!("{} vectors where the manifest records {}", meta.count_present, expected.vectors));
        }
        let mut index = Index::new(&meta.into()).map_err(|e| backend("opening a graph", e))?;
        #[allow(unsafe_code)]
        // SAFETY: the view points into `map`, which `Graph` owns and drops after `index`;
        // graph files are never modified once written (a merge writes a new file).
        unsafe { index.view_from_buffer(&map) }.map_err(|e| StoreError::corrupt(path, format!("unreadable graph: {e}")))?;
        install_distance(&mut index, dim);
        Ok(Self { index, map: Some(map), searches: SearchSlots::new() })
    }

    /// An owned copy of the graph file `path` (checked as [`Graph::view`] does), to add to.
    pub(crate) fn load(path: &Path, expected: &GraphFile, dim: usize, multi: bool) -> Result<Self> {
        let viewed = Self::view(path, expected, dim, multi)?;
        let mut index = Index::new(&options(dim, multi, GraphParams::default())).map_err(|e| backend("creating a graph", e))?;
        index
            .load_from_buffer(viewed.map.as_deref().expect("a view has its map"))
            .map_err(|e| StoreError::corrupt(path, format!("unreadable graph: {e}")))?;
        install_distance(&mut index, dim);
        Ok(Self { index, map: None, searches: SearchSlots::new() })
    }

    pub(crate) fn add(&self, key: u64, vector: &[f32]) -> Result<()> {
        self.index.add(key, vector).map_err(|e| backend("adding to a graph", e))
    }

    /// Removes every vector of `key`; returns how many there were.
    pub(crate) fn remove(&self, key: u64) -> Result<usize> {
        self.index.remove(key).map_err(|e| backend("removing from a graph", e))
    }

    pub(crate) fn rename(&self, from: u64, to: u64) -> Result<()> {
        self.index.rename(from, to).map(|_| ()).map_err(|e| backend("renumbering a graph", e))
    }

    pub(crate) fn contains(&self, key: u64) -> bool {
        self.index.contains(key)
    }

    /// Vectors in the graph.
    pub(crate) fn len(&self) -> usize {
        self.index.size()
    }

    /// Writes the graph to a new file at `path` (synced); returns its description.
    pub(crate) fn save(&self, path: &Path) -> Result<GraphFile> {
        let bytes = self.index.serialized_length();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| StoreError::io(path, e))?;
        file.set_len(bytes as u64).map_err(|e| StoreError::io(path, e))?;
        #[allow(unsafe_code)]
        // SAFETY: the file was just created by this process (a new name, under the writer
        // lock) and nothing else maps it until the manifest names it.
        let mut map = unsafe { MmapMut::map_mut(&file) }.map_err(|e| StoreError::io(path, e))?;
        self.index.save_to_buffer(&mut map).map_err(|e| backend("saving a graph", e))?;
        map.flush().map_err(|e| StoreError::io(path, e))?;
        file.sync_all().map_err(|e| StoreError::io(path, e))?;
        // Recorded as the file's own header says, which is what `view` checks.
        let meta = Index::metadata_from_buffer(&map).map_err(|e| backend("reading back a saved graph", e))?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Ok(GraphFile { name, bytes: bytes as u64, vectors: meta.count_present })
    }

    /// Sets the search breadth (efSearch). Not for concurrent use with searches of other
    /// breadths: the index holds one value.
    pub(crate) fn set_breadth(&self, breadth: usize) {
        self.index.change_expansion_search(breadth.max(1));
    }

    /// Up to `count` keys whose vectors are nearest to `query`, restricted to keys `keep`
    /// accepts (usearch's filtered search: rejected nodes are still walked through, never
    /// returned). Keys may repeat in a multi-vector graph.
    pub(crate) fn candidates(&self, query: &[f32], count: usize, keep: Option<&dyn Fn(u64) -> bool>) -> Result<Vec<u64>> {
        if self.index.size() == 0 || count == 0 {
            return Ok(Vec::new());
        }
        let found = self.searches.run(|| match keep {
            None => self.index.search(query, count),
            Some(keep) => self.index.filtered_search(query, count, keep),
        });
        Ok(found.map_err(|e| backend("searching a graph", e))?.keys)
    }
}

/// Maps `path` after checking its length against `expected`.
fn map_checked(path: &Path, expected: &GraphFile) -> Result<Mmap> {
    let file = File::open(path).map_err(|e| StoreError::io(path, e))?;
    let actual = file.metadata().map_err(|e| StoreError::io(path, e))?.len();
    if actual != expected.bytes {
        return Err(StoreError::corrupt(path, format!("{actual} bytes where the manifest records {}", expected.bytes)));
    }
    if actual == 0 {
        return Err(StoreError::corrupt(path, "an empty graph file"));
    }
    #[allow(unsafe_code)]
    // SAFETY: graph files are written once under a new name and never modified; a writer
    // deletes a replaced file only after committing a manifest that no longer names it, and
    // an unlinked file stays valid for the maps that hold it.
    unsafe { MmapOptions::new().map(&file) }.map_err(|e| StoreError::io(path, e))
}
