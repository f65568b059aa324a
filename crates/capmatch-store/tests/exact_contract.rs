//! The exact index against the shared contract, plus what only it promises: crash recovery
//! from its own files, compaction, and refusing damaged or foreign files.

use std::io::Write;
use std::path::PathBuf;

use capmatch_store::contract::{self, random_records, Harness};
use capmatch_store::exact::Access;
use capmatch_store::{ExactIndex, ImageId, IndexStats, Result, VectorHit, VectorIndex, VectorQuery, VectorRecord};

struct Exact {
    root: tempfile::TempDir,
    next: usize,
}

impl Exact {
    fn new() -> Self {
        Self { root: tempfile::tempdir().unwrap(), next: 0 }
    }
}

impl Harness for Exact {
    type Index = ExactIndex;

    fn create(&mut self) -> ExactIndex {
        self.next += 1;
        ExactIndex::open(&self.root.path().join(format!("i{}", self.next)), Access::ReadWrite, Some("fp")).unwrap()
    }

    fn reopen(&mut self, index: ExactIndex) -> ExactIndex {
        let dir = index.dir().to_path_buf();
        drop(index);
        ExactIndex::open(&dir, Access::ReadWrite, Some("fp")).unwrap()
    }

    fn crash(&mut self, index: ExactIndex) -> ExactIndex {
        // What a process killed in the middle of its next commit leaves: bytes past the
        // committed length of every column, and a half-written manifest beside the real one.
        let dir = index.dir().to_path_buf();
        std::mem::forget(index);
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e != "json") {
                std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(&[0xAB; 100]).unwrap();
            }
        }
        std::fs::write(dir.join("manifest.json.tmp"), b"{\"format\": \"capmatch-exa").unwrap();
        ExactIndex::open(&dir, Access::ReadWrite, Some("fp")).unwrap()
    }
}

#[test]
fn the_exact_index_passes_the_contract() {
    contract::run_all(&mut Exact::new());
}

fn dir_with(records: usize) -> (tempfile::TempDir, PathBuf) {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("v");
    let mut index = ExactIndex::open(&dir, Access::ReadWrite, Some("fp")).unwrap();
    index.upsert(&random_records(records, 8, 5)).unwrap();
    (root, dir)
}

#[test]
fn readers_see_commits_after_refresh_and_never_a_partial_one() {
    let (_root, dir) = dir_with(10);
    let mut reader = ExactIndex::open(&dir, Access::ReadOnly, Some("fp")).unwrap();
    let mut writer = ExactIndex::open(&dir, Access::ReadWrite, Some("fp")).unwrap();
    let more = random_records(5, 8, 6);
    writer.upsert(&more).unwrap();
    assert_eq!(reader.len(), 10, "a reader keeps its snapshot");
    reader.refresh().unwrap();
    assert_eq!(reader.len(), 15);
    writer.remove(&[more[0].id]).unwrap();
    reader.refresh().unwrap();
    assert_eq!(reader.len(), 14);
    assert!(reader.upsert(&more).is_err(), "a reader cannot write");
}

#[test]
fn compaction_reclaims_removed_rows_and_keeps_results() {
    let (_root, dir) = dir_with(100);
    let mut index = ExactIndex::open(&dir, Access::ReadWrite, Some("fp")).unwrap();
    let records = random_records(100, 8, 5);
    let q = contract::Rng(4).unit(8);
    let query = VectorQuery { vectors: &q, target: capmatch_retrieval::Target::Captions, k: 10, domain: Some("sketch") };
    assert!(!index.compact().unwrap(), "nothing to reclaim");
    let gone: Vec<_> = records[..60].iter().map(|r| r.id).collect();
    index.remove(&gone).unwrap();
    let before = index.search(&query).unwrap();
    let mut reader = ExactIndex::open(&dir, Access::ReadOnly, Some("fp")).unwrap();
    assert!(index.compact().unwrap());
    assert_eq!(index.stats().dead_images, 0);
    assert_eq!(index.search(&query).unwrap(), before);
    // A reader of the old files keeps answering, then follows the new ones.
    assert_eq!(reader.search(&query).unwrap(), before);
    reader.refresh().unwrap();
    assert_eq!(reader.search(&query).unwrap(), before);
    let index = ExactIndex::open(&dir, Access::ReadWrite, Some("fp")).unwrap();
    assert_eq!(index.len(), 40);
    let names: Vec<String> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(names.iter().all(|n| !n.contains("-0.")), "old generation files are deleted: {names:?}");
}

#[test]
fn damaged_or_foreign_files_are_refused_with_a_message() {
    let (_root, dir) = dir_with(20);
    // Another model's vectors.
    let err = ExactIndex::open(&dir, Access::ReadOnly, Some("other")).err().unwrap().to_string();
    assert!(err.contains("other models"), "{err}");
    // A truncated column.
    let live = dir.join("live-0.u8");
    let bytes = std::fs::read(&live).unwrap();
    std::fs::write(&live, &bytes[..5]).unwrap();
    let err = ExactIndex::open(&dir, Access::ReadOnly, Some("fp")).err().unwrap().to_string();
    assert!(err.contains("manifest commits"), "{err}");
    assert!(ExactIndex::open(&dir, Access::ReadWrite, Some("fp")).is_err(), "a writer does not 'repair' lost data");
    std::fs::write(&live, &bytes).unwrap();
    // Garbage instead of a manifest.
    std::fs::write(dir.join("manifest.json"), b"\x00\x01 not json").unwrap();
    let err = ExactIndex::open(&dir, Access::ReadOnly, Some("fp")).err().unwrap().to_string();
    assert!(err.contains("not a vector manifest"), "{err}");
}

#[test]
fn a_reader_of_a_missing_index_sees_it_empty() {
    let root = tempfile::tempdir().unwrap();
    let index = ExactIndex::open(&root.path().join("none"), Access::ReadOnly, None).unwrap();
    assert_eq!(index.len(), 0);
    assert!(!root.path().join("none").exists(), "reading creates nothing");
}

/// The exact index with the trait's default `neighbours` and `score_pairs` (a search per
/// image), which a backend without its own graph gets: it must pass the same contract.
struct ByDefinition(ExactIndex);

impl VectorIndex for ByDefinition {
    fn dim(&self) -> Option<usize> {
        self.0.dim()
    }
    fn len(&self) -> usize {
        self.0.len()
    }
    fn upsert(&mut self, records: &[VectorRecord]) -> Result<()> {
        self.0.upsert(records)
    }
    fn remove(&mut self, ids: &[ImageId]) -> Result<usize> {
        self.0.remove(ids)
    }
    fn get(&self, id: ImageId) -> Result<Option<VectorRecord>> {
        self.0.get(id)
    }
    fn search(&self, query: &VectorQuery<'_>) -> Result<Vec<VectorHit>> {
        self.0.search(query)
    }
    fn ids(&self) -> Result<Vec<(ImageId, String)>> {
        self.0.ids()
    }
    fn generation(&self) -> u64 {
        self.0.generation()
    }
    fn flush(&mut self) -> Result<()> {
        self.0.flush()
    }
    fn refresh(&mut self) -> Result<()> {
        self.0.refresh()
    }
    fn stats(&self) -> IndexStats {
        self.0.stats()
    }
}

/// Drives [`ByDefinition`] through the exact index's harness.
struct DefaultGraph(Exact);

impl Harness for DefaultGraph {
    type Index = ByDefinition;

    fn create(&mut self) -> ByDefinition {
        ByDefinition(self.0.create())
    }

    fn reopen(&mut self, index: ByDefinition) -> ByDefinition {
        ByDefinition(self.0.reopen(index.0))
    }

    fn crash(&mut self, index: ByDefinition) -> ByDefinition {
        ByDefinition(self.0.crash(index.0))
    }
}

#[test]
fn the_default_neighbour_graph_passes_the_contract() {
    contract::run_all(&mut DefaultGraph(Exact::new()));
}
