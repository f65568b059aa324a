//! The approximate index: the shared contract with recall tolerance, measured recall on a
//! 20k gallery, incremental upkeep against a rebuild, catching up with writes it did not
//! see, compaction, and refusing damaged or foreign files while the exact path answers.

use std::io::Write;
use std::path::{Path, PathBuf};

use capmatch_retrieval::Target;
use capmatch_store::ann::{GraphParams, TuneOptions};
use capmatch_store::contract::{self, brute_force, random_records, Harness, Rng};
use capmatch_store::exact::Access;
use capmatch_store::{
    AnnIndex, AnnOptions, AnnState, ExactIndex, GraphProgress, ImageId, IndexStats, NeighbourQuery, Neighbours, VectorHit, VectorIndex,
    VectorQuery, VectorRecord,
};

/// Merges every commit at once, so that every search of the contract goes through the graphs.
const EAGER: AnnOptions = AnnOptions { merge_after: 0, max_tail: 0 };

fn open(dir: &Path, options: AnnOptions) -> AnnIndex {
    let exact = ExactIndex::open(&dir.join("vectors"), Access::ReadWrite, Some("fp")).unwrap();
    AnnIndex::open(exact, &dir.join("ann"), options)
}

fn open_reader(dir: &Path, options: AnnOptions) -> AnnIndex {
    let exact = ExactIndex::open(&dir.join("vectors"), Access::ReadOnly, Some("fp")).unwrap();
    AnnIndex::open(exact, &dir.join("ann"), options)
}

/// An approximate index whose graphs are built by its first write (the contract starts
/// from an empty index, and graphs need the dimension). It forwards every method, those
/// with a default body too: a wrapper that left `neighbours` to the trait's default made
/// the contract test that default (a graph from one approximate search per image, recall
/// 0.8 on one row) instead of `AnnIndex`'s own.
struct BuiltOnFirstWrite(AnnIndex);

impl VectorIndex for BuiltOnFirstWrite {
    fn dim(&self) -> Option<usize> {
        self.0.dim()
    }
    fn len(&self) -> usize {
        self.0.len()
    }
    fn upsert(&mut self, records: &[VectorRecord]) -> capmatch_store::Result<()> {
        self.0.upsert(records)?;
        if self.0.status().state == AnnState::Absent {
            self.0.build(GraphParams::default())?;
        }
        Ok(())
    }
    fn remove(&mut self, ids: &[ImageId]) -> capmatch_store::Result<usize> {
        self.0.remove(ids)
    }
    fn get(&self, id: ImageId) -> capmatch_store::Result<Option<VectorRecord>> {
        self.0.get(id)
    }
    fn get_many(&self, ids: &[ImageId]) -> capmatch_store::Result<Vec<Option<VectorRecord>>> {
        self.0.get_many(ids)
    }
    fn search(&self, query: &VectorQuery<'_>) -> capmatch_store::Result<Vec<VectorHit>> {
        self.0.search(query)
    }
    fn search_many(&self, queries: &[VectorQuery<'_>]) -> capmatch_store::Result<Vec<Vec<VectorHit>>> {
        self.0.search_many(queries)
    }
    fn neighbours(&self, query: &NeighbourQuery<'_>, progress: &dyn GraphProgress) -> capmatch_store::Result<Vec<Neighbours>> {
        self.0.neighbours(query, progress)
    }
    fn score_pairs(&self, pairs: &[(ImageId, ImageId)]) -> capmatch_store::Result<Vec<Option<capmatch_retrieval::ComponentScores>>> {
        self.0.score_pairs(pairs)
    }
    fn compact(&mut self) -> capmatch_store::Result<bool> {
        self.0.compact()
    }
    fn ids(&self) -> capmatch_store::Result<Vec<(ImageId, String)>> {
        self.0.ids()
    }
    fn generation(&self) -> u64 {
        self.0.generation()
    }
    fn flush(&mut self) -> capmatch_store::Result<()> {
        self.0.flush()
    }
    fn refresh(&mut self) -> capmatch_store::Result<()> {
        self.0.refresh()
    }
    fn stats(&self) -> IndexStats {
        self.0.stats()
    }
}

struct Ann {
    root: tempfile::TempDir,
    next: usize,
}

impl Harness for Ann {
    type Index = BuiltOnFirstWrite;

    fn create(&mut self) -> BuiltOnFirstWrite {
        self.next += 1;
        BuiltOnFirstWrite(open(&self.root.path().join(format!("i{}", self.next)), EAGER))
    }

    fn reopen(&mut self, index: BuiltOnFirstWrite) -> BuiltOnFirstWrite {
        let dir = index.0.dir().parent().unwrap().to_path_buf();
        drop(index);
        let index = open(&dir, EAGER);
        assert_eq!(index.status().state, AnnState::Fresh, "{:?}", index.status().problem);
        BuiltOnFirstWrite(index)
    }

    fn crash(&mut self, index: BuiltOnFirstWrite) -> BuiltOnFirstWrite {
        // Killed in the middle of its next commit and merge: bytes past the exact index's
        // committed length, a half-written next graph file and manifest.
        let dir = index.0.dir().parent().unwrap().to_path_buf();
        std::mem::forget(index);
        for entry in std::fs::read_dir(dir.join("vectors")).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e != "json") {
                std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(&[0xAB; 100]).unwrap();
            }
        }
        std::fs::write(dir.join("ann/images-999.usearch"), b"usearch half a graph").unwrap();
        std::fs::write(dir.join("ann/manifest.json.tmp"), b"{\"format\": \"capmatch-a").unwrap();
        let index = open(&dir, EAGER);
        assert_eq!(index.status().state, AnnState::Fresh, "{:?}", index.status().problem);
        BuiltOnFirstWrite(index)
    }

    fn approximate(&self) -> bool {
        true
    }

    fn min_recall(&self) -> f64 {
        0.9
    }
}

/// The contract, with recall-tolerant ranking checks (the neighbour graph apart, below).
#[test]
fn the_approximate_index_passes_the_contract() {
    let h = &mut Ann { root: tempfile::tempdir().unwrap(), next: 0 };
    contract::empty_index_answers_nothing(h);
    contract::vectors_round_trip(h);
    contract::an_image_scores_by_its_best_caption(h);
    contract::every_target_matches_brute_force(h);
    contract::several_query_vectors_score_by_the_best(h);
    contract::ties_at_the_cut_are_all_returned(h);
    contract::nan_ranks_last(h);
    contract::domain_filter(h);
    contract::pair_scores_explain_a_search(h);
    contract::upsert_replaces(h);
    contract::removal(h);
    contract::reopen_and_crash_keep_the_last_commit(h);
    contract::dimension_mismatch_is_refused(h);
}

/// The neighbour graph (used by inspect) through the approximate index: the exact graph.
#[test]
fn the_approximate_index_neighbour_graph_matches_brute_force() {
    contract::neighbour_graph_matches_brute_force(&mut Ann { root: tempfile::tempdir().unwrap(), next: 0 });
}

fn query<'a>(v: &'a [f32], target: Target, k: usize) -> VectorQuery<'a> {
    VectorQuery { vectors: v, target, k, domain: None }
}

/// Recall@k of `index` against brute force over `records`, over `queries`.
fn recall(index: &AnnIndex, records: &[VectorRecord], queries: &[Vec<f32>], target: Target, k: usize) -> f64 {
    let mut found = 0;
    for q in queries {
        let want: Vec<ImageId> = brute_force(records, q, target, None).into_iter().take(k).map(|w| w.0).collect();
        let hits = index.search(&query(q, target, k)).unwrap();
        found += hits.iter().take(k).filter(|h| want.contains(&h.id)).count();
    }
    found as f64 / (k * queries.len()) as f64
}

/// A unit vector near `centre`: the centre plus a random direction of the same length
/// (cosine about 0.7 to it).
fn near(rng: &mut Rng, centre: &[f32]) -> Vec<f32> {
    let noise = rng.unit(centre.len());
    let mut v: Vec<f32> = centre.iter().zip(&noise).map(|(c, n)| c + n).collect();
    capmatch_retrieval::normalize(&mut v).expect("non-zero");
    v
}

/// A clustered gallery, like embeddings and unlike uniform random vectors (whose
/// neighbours are all nearly alike, which no real gallery looks like): `n` images around
/// `n / 100` centres, each with 1 to 3 captions near the same centre; and `queries` more
/// vectors drawn the same way.
fn clustered(n: usize, dim: usize, queries: usize, seed: u64) -> (Vec<VectorRecord>, Vec<Vec<f32>>) {
    let mut rng = Rng(seed | 1);
    let centres: Vec<Vec<f32>> = (0..(n / 100).max(1)).map(|_| rng.unit(dim)).collect();
    let pick = |rng: &mut Rng| centres[(rng.next() % centres.len() as u64) as usize].clone();
    let records = (0..n)
        .map(|i| {
            let centre = pick(&mut rng);
            VectorRecord {
                id: ImageId::for_path(&format!("/clustered/{seed}/{i}")),
                domain: ["photo", "sketch", "clipart"][i % 3].into(),
                image: near(&mut rng, &centre),
                captions: (0..1 + i % 3).flat_map(|_| near(&mut rng, &centre)).collect(),
            }
        })
        .collect();
    let queries = (0..queries).map(|_| { let c = pick(&mut rng); near(&mut rng, &c) }).collect();
    (records, queries)
}

#[test]
fn tuned_recall_at_10_holds_on_a_20k_gallery() {
    let root = tempfile::tempdir().unwrap();
    let mut index = open(root.path(), AnnOptions::default());
    let dim = 128;
    let (records, queries) = clustered(20_000, dim, 100, 1);
    for batch in records.chunks(5_000) {
        index.upsert(batch).unwrap();
    }
    index.build(GraphParams::default()).unwrap();
    let report = index.tune(&TuneOptions { target_recall: 0.98, sample: 100, k: 10 }).unwrap();
    assert!(report.tuning.reached(), "{report:?}");
    assert!(report.curve.windows(2).all(|w| w[0].breadth < w[1].breadth));
    assert_eq!(index.status().breadth, Some(report.tuning.breadth));
    assert_eq!(index.status().tuning.as_ref(), Some(&report.tuning), "the measurement is recorded");
    // Held-out queries (not gallery images), every mode.
    for target in [Target::Captions, Target::Image, Target::Fused { caption_weight: 0.5 }] {
        let r = recall(&index, &records, &queries, target, 10);
        assert!(r >= 0.98, "{target:?}: recall@10 {r}");
    }
    // The breadth and the measurement survive a reopen.
    drop(index);
    let index = open_reader(root.path(), AnnOptions::default());
    assert_eq!(index.status().tuning, Some(report.tuning));
}

/// Search results as (id, score bits) of every query in three modes, top 10, by `search`.
fn answers_by(queries: &[Vec<f32>], search: impl Fn(&VectorQuery<'_>) -> Vec<VectorHit>) -> Vec<Vec<(ImageId, u32)>> {
    let mut out = Vec::new();
    for q in queries {
        for target in [Target::Captions, Target::Image, Target::Fused { caption_weight: 0.3 }] {
            let hits = search(&query(q, target, 10));
            out.push(hits.iter().take(10).map(|h| (h.id, h.score.to_bits())).collect());
        }
    }
    out
}

/// [`answers_by`] the index's own search.
fn answers(index: &AnnIndex, queries: &[Vec<f32>]) -> Vec<Vec<(ImageId, u32)>> {
    answers_by(queries, |q| index.search(q).unwrap())
}

#[test]
fn incremental_adds_and_removals_match_a_rebuild_and_exact_search() {
    let root = tempfile::tempdir().unwrap();
    let dim = 32;
    let (mut records, queries) = clustered(3_000, dim, 40, 7);
    let mut incremental = open(&root.path().join("incremental"), EAGER);
    incremental.upsert(&records[..1_000]).unwrap();
    incremental.build(GraphParams::default()).unwrap();
    for batch in records[1_000..].chunks(500) {
        incremental.upsert(batch).unwrap();
    }
    let gone: Vec<ImageId> = records.iter().step_by(7).map(|r| r.id).collect();
    incremental.remove(&gone).unwrap();
    let mut rng = Rng(8);
    for r in records.iter_mut().skip(3).step_by(11) {
        r.captions = [rng.unit(dim), rng.unit(dim)].concat();
    }
    let replaced: Vec<VectorRecord> = records.iter().skip(3).step_by(11).filter(|r| !gone.contains(&r.id)).cloned().collect();
    incremental.upsert(&replaced).unwrap();
    let status = incremental.status();
    assert_eq!((status.state, status.unmerged), (AnnState::Fresh, 0));
    assert_eq!(status.removed as usize, gone.len() + replaced.len(), "removed and replaced rows are filtered out");

    let kept: Vec<VectorRecord> = records.iter().filter(|r| !gone.contains(&r.id)).cloned().collect();
    let mut rebuilt = open(&root.path().join("rebuilt"), EAGER);
    rebuilt.upsert(&kept).unwrap();
    rebuilt.build(GraphParams::default()).unwrap();
    assert_eq!(
        status.image_vectors,
        rebuilt.status().image_vectors + status.removed,
        "the same images are in both graphs, and the removed ones beside them"
    );

    let want = answers_by(&queries, |q| rebuilt.exact().search(q).unwrap());
    let total: usize = want.iter().map(Vec::len).sum();
    // (id, score bits) pairs of `got` that exact search also returns: right image, exact score.
    let agree = |got: &[Vec<(ImageId, u32)>], with: &[Vec<(ImageId, u32)>]| -> usize {
        got.iter().zip(with).map(|(g, w)| g.iter().filter(|h| w.contains(h)).count()).sum()
    };
    // Two graphs grown differently miss different near misses (an HNSW graph may even leave
    // a node unreachable), so they are compared by what they find, not hit for hit: at the
    // default breadth and at a wide one, both find nearly all of the exact answer, with
    // bit-identical scores, and as much of it as each other.
    for breadth in [None, Some(4 * records.len())] {
        if let Some(b) = breadth {
            incremental.set_breadth(b).unwrap();
            rebuilt.set_breadth(b).unwrap();
        }
        let floor = if breadth.is_some() { 0.99 } else { 0.95 };
        let (a, b) = (answers(&incremental, &queries), answers(&rebuilt, &queries));
        let (found_a, found_b) = (agree(&a, &want), agree(&b, &want));
        assert!(found_a as f64 >= floor * total as f64, "incremental at {breadth:?}: {found_a}/{total}");
        assert!(found_b as f64 >= floor * total as f64, "rebuilt at {breadth:?}: {found_b}/{total}");
        assert!(found_a.abs_diff(found_b) as f64 <= 0.01 * total as f64, "{found_a} against {found_b} of {total}");
    }
}

#[test]
fn rows_not_yet_merged_are_scanned_exactly_and_merged_on_flush() {
    let root = tempfile::tempdir().unwrap();
    let dim = 16;
    let options = AnnOptions { merge_after: 1_000_000, max_tail: 450 };
    let mut writer = open(root.path(), options);
    let records = random_records(2_000, dim, 21);
    writer.upsert(&records[..1_500]).unwrap();
    writer.build(GraphParams::default()).unwrap();
    writer.upsert(&records[1_500..1_900]).unwrap();
    let mut reader = open_reader(root.path(), options);
    assert_eq!((reader.status().state, reader.status().unmerged), (AnnState::Fresh, 400));
    for r in &records[1_500..1_900] {
        let q = query(&r.captions[..dim], Target::Captions, 3);
        let hits = reader.search(&q).unwrap();
        assert_eq!(hits[0].id, r.id, "a new image is found at once");
        assert_eq!(hits[0], reader.exact().search(&q).unwrap()[0]);
    }
    // Writes beyond the tail limit send searches to the exact path until a merge.
    writer.upsert(&records[1_900..]).unwrap();
    reader.refresh().unwrap();
    assert_eq!(reader.status().state, AnnState::Behind);
    assert!(reader.status().problem.unwrap().contains("500 images were added"));
    let q = Rng(3).unit(dim);
    assert_eq!(reader.search(&query(&q, Target::Image, 10)).unwrap(), reader.exact().search(&query(&q, Target::Image, 10)).unwrap());
    writer.flush().unwrap();
    reader.refresh().unwrap();
    assert_eq!((reader.status().state, reader.status().unmerged), (AnnState::Fresh, 0));
    assert_eq!(reader.status().caption_vectors as usize, records.iter().map(|r| r.caption_count()).sum::<usize>());
}

#[test]
fn writes_the_graphs_did_not_see_are_caught_up() {
    let root = tempfile::tempdir().unwrap();
    let dim = 16;
    let records = random_records(1_200, dim, 31);
    let mut index = open(root.path(), EAGER);
    index.upsert(&records[..1_000]).unwrap();
    index.build(GraphParams::default()).unwrap();
    drop(index);
    // Another process writes to the exact index alone (or a writer dies before merging).
    let mut exact = ExactIndex::open(&root.path().join("vectors"), Access::ReadWrite, Some("fp")).unwrap();
    exact.upsert(&records[1_000..]).unwrap();
    exact.remove(&[records[0].id]).unwrap();
    drop(exact);
    let mut index = open(root.path(), AnnOptions::default());
    assert_eq!((index.status().state, index.status().unmerged), (AnnState::Fresh, 200));
    let q = Rng(4).unit(dim);
    let before = index.search(&query(&q, Target::Captions, 10)).unwrap();
    assert!(before.iter().all(|h| h.id != records[0].id));
    index.flush().unwrap();
    assert_eq!(index.status().unmerged, 0);
    assert_eq!(index.status().image_vectors, 1_200, "the removed image stays in the graph, filtered out");
    assert_eq!(index.search(&query(&q, Target::Captions, 10)).unwrap(), before);
}

#[test]
fn compaction_renumbers_the_graphs_instead_of_leaving_them_stale() {
    let root = tempfile::tempdir().unwrap();
    let dim = 16;
    let records = random_records(400, dim, 41);
    let mut index = open(root.path(), EAGER);
    index.upsert(&records).unwrap();
    index.build(GraphParams::default()).unwrap();
    let gone: Vec<ImageId> = records[..300].iter().map(|r| r.id).collect();
    index.remove(&gone).unwrap();
    let mut rng = Rng(5);
    let queries: Vec<Vec<f32>> = (0..20).map(|_| rng.unit(dim)).collect();
    let before = answers(&index, &queries);
    assert!(index.compact().unwrap());
    let status = index.status();
    assert_eq!(status.state, AnnState::Fresh, "{:?}", status.problem);
    assert_eq!((status.removed, status.image_vectors), (0, 100));
    assert_eq!(answers(&index, &queries), before);
    // A reader opening afterwards sees the renumbered graphs.
    assert_eq!(open_reader(root.path(), EAGER).status().state, AnnState::Fresh);
}

#[test]
fn a_compaction_the_graphs_missed_makes_them_stale_not_wrong() {
    let root = tempfile::tempdir().unwrap();
    let records = random_records(100, 8, 51);
    let mut index = open(root.path(), EAGER);
    index.upsert(&records).unwrap();
    index.build(GraphParams::default()).unwrap();
    drop(index);
    let mut exact = ExactIndex::open(&root.path().join("vectors"), Access::ReadWrite, Some("fp")).unwrap();
    exact.remove(&records[..60].iter().map(|r| r.id).collect::<Vec<_>>()).unwrap();
    assert!(exact.compact().unwrap());
    drop(exact);
    let mut index = open(root.path(), EAGER);
    let status = index.status();
    assert_eq!(status.state, AnnState::Stale);
    assert!(status.problem.unwrap().contains("capmatch ann build"));
    let q = Rng(6).unit(8);
    assert_eq!(index.search(&query(&q, Target::Captions, 5)).unwrap(), index.exact().search(&query(&q, Target::Captions, 5)).unwrap());
    index.build(GraphParams::default()).unwrap();
    assert_eq!(index.status().state, AnnState::Fresh);
}

/// The graph file the manifest names for `kind`.
fn graph_file(dir: &Path, kind: &str) -> PathBuf {
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("ann/manifest.json")).unwrap()).unwrap();
    dir.join("ann").join(manifest[kind]["name"].as_str().unwrap())
}

/// Checks that `index` refuses its files with a message containing `expected`, and that its
/// searches are exact.
fn refused(dir: &Path, expected: &str) {
    let index = open(dir, EAGER);
    let status = index.status();
    assert_eq!(status.state, AnnState::Refused);
    let problem = status.problem.unwrap();
    assert!(problem.contains(expected), "{problem}");
    assert!(problem.contains("capmatch ann build"), "{problem}");
    let q = Rng(9).unit(8);
    let hits = index.search(&query(&q, Target::Fused { caption_weight: 0.5 }, 5)).unwrap();
    assert_eq!(hits, index.exact().search(&query(&q, Target::Fused { caption_weight: 0.5 }, 5)).unwrap());
    assert_eq!(hits.len(), 5);
}

#[test]
fn damaged_or_foreign_files_are_refused_and_the_exact_path_answers() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    let records = random_records(300, 8, 61);
    let mut index = open(dir, EAGER);
    index.upsert(&records).unwrap();
    index.build(GraphParams::default()).unwrap();
    drop(index);
    let images = graph_file(dir, "images");
    let good = std::fs::read(&images).unwrap();

    std::fs::write(&images, &good[..good.len() / 2]).unwrap();
    refused(dir, "bytes where the manifest records");

    let mut foreign = vec![0u8; good.len()];
    foreign.iter_mut().enumerate().for_each(|(i, b)| *b = (i * 7 % 251) as u8);
    std::fs::write(&images, &foreign).unwrap();
    refused(dir, "not a usearch graph");
    std::fs::write(&images, &good).unwrap();

    // Graphs of other models' vectors, or of another dimension.
    let manifest_path = dir.join("ann/manifest.json");
    let manifest = std::fs::read_to_string(&manifest_path).unwrap();
    std::fs::write(&manifest_path, manifest.replace("\"fp\"", "\"another\"")).unwrap();
    refused(dir, "other models");
    let other = tempfile::tempdir().unwrap();
    let mut wide = open(other.path(), EAGER);
    wide.upsert(&random_records(300, 12, 62)).unwrap();
    wide.build(GraphParams::default()).unwrap();
    drop(wide);
    std::fs::remove_dir_all(dir.join("ann")).unwrap();
    copy_dir(&other.path().join("ann"), &dir.join("ann"));
    refused(dir, "dimension 12");

    std::fs::write(&manifest_path, b"\x00 not json").unwrap();
    refused(dir, "not an approximate-index manifest");

    // A rebuild replaces whatever was there.
    let mut index = open(dir, EAGER);
    index.build(GraphParams::default()).unwrap();
    assert_eq!(open_reader(dir, EAGER).status().state, AnnState::Fresh);
    let names: Vec<String> = std::fs::read_dir(dir.join("ann")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names.iter().filter(|n| n.ends_with(".usearch")).count(), 2, "old graph files are deleted: {names:?}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[test]
fn a_reader_cannot_build_or_tune() {
    let root = tempfile::tempdir().unwrap();
    let mut index = open(root.path(), EAGER);
    assert!(index.build(GraphParams::default()).is_err(), "nothing to build from yet");
    index.upsert(&random_records(50, 8, 71)).unwrap();
    drop(index);
    let mut reader = open_reader(root.path(), EAGER);
    assert!(reader.build(GraphParams::default()).is_err());
    assert!(reader.tune(&TuneOptions::default()).is_err());
    assert_eq!(reader.status().state, AnnState::Absent);
}

#[test]
fn many_threads_can_search_at_once() {
    // More concurrent searches than usearch has scratch slots (one per hardware thread): a
    // server's request threads wait for a slot rather than failing.
    let root = tempfile::tempdir().unwrap();
    let dim = 16;
    let records = random_records(2_000, dim, 81);
    let mut index = open(root.path(), EAGER);
    index.upsert(&records).unwrap();
    index.build(GraphParams::default()).unwrap();
    drop(index);
    let index = open_reader(root.path(), EAGER);
    let threads = 4 * std::thread::available_parallelism().map_or(1, |n| n.get()) + 4;
    let barrier = std::sync::Barrier::new(threads);
    std::thread::scope(|scope| {
        for t in 0..threads {
            let (index, barrier) = (&index, &barrier);
            scope.spawn(move || {
                let mut rng = Rng(100 + t as u64);
                barrier.wait();
                for _ in 0..50 {
                    let q = rng.unit(dim);
                    let hits = index.search(&query(&q, Target::Fused { caption_weight: 0.5 }, 10)).expect("a concurrent search");
                    assert_eq!(hits.len(), 10);
                }
            });
        }
    });
}
