//! The contract every [`VectorIndex`] backend must pass (feature `contract`).
//!
//! A backend's test implements [`Harness`] (how to make an empty index, reopen it, and
//! simulate a crash) and calls [`run_all`]. The checks compare every search with a brute
//! force over the same vectors computed with `capmatch_retrieval`'s kernel, so an exact
//! backend must return the same ids, in the same order, with bit-identical scores; an
//! approximate backend (`Harness::approximate`) must return exact scores for what it finds
//! and a recall@k of at least `Harness::min_recall`.

use std::collections::HashSet;

use capmatch_retrieval::{dot, normalize, same_rank_score, Target};

use crate::catalog::ImageEntry;
use crate::id::ImageId;
use crate::vector_index::{Among, NeighbourQuery, NoProgress, VectorHit, VectorIndex, VectorQuery, VectorRecord};

/// How the suite drives a backend.
pub trait Harness {
    type Index: VectorIndex;
    /// A new, empty index.
    fn create(&mut self) -> Self::Index;
    /// The same index, closed and opened again.
    fn reopen(&mut self, index: Self::Index) -> Self::Index;
    /// The index after the process died without closing it, with whatever a crash can
    /// leave behind (half-written data past the last commit); reopened.
    fn crash(&mut self, index: Self::Index) -> Self::Index;
    /// Whether searches may miss results (their scores must still be exact).
    fn approximate(&self) -> bool {
        false
    }
    /// Recall@k an approximate backend must reach on the suite's galleries.
    fn min_recall(&self) -> f64 {
        1.0
    }
    /// Whether the backend keeps catalog entries with the vectors (a store shared by
    /// writers with separate catalogs; see `VectorIndex::upsert_with_entries`).
    fn keeps_entries(&self) -> bool {
        false
    }
}

/// Every check, in order. Each check's time goes to stderr (seen with `--nocapture`), since
/// a remote backend's round trips make some checks slow.
pub fn run_all<H: Harness>(h: &mut H) {
    let checks: [(&str, fn(&mut H)); 15] = [
        ("empty_index_answers_nothing", empty_index_answers_nothing),
        ("vectors_round_trip", vectors_round_trip),
        ("an_image_scores_by_its_best_caption", an_image_scores_by_its_best_caption),
        ("every_target_matches_brute_force", every_target_matches_brute_force),
        ("several_query_vectors_score_by_the_best", several_query_vectors_score_by_the_best),
        ("ties_at_the_cut_are_all_returned", ties_at_the_cut_are_all_returned),
        ("nan_ranks_last", nan_ranks_last),
        ("domain_filter", domain_filter),
        ("neighbour_graph_matches_brute_force", neighbour_graph_matches_brute_force),
        ("pair_scores_explain_a_search", pair_scores_explain_a_search),
        ("upsert_replaces", upsert_replaces),
        ("entries_travel_with_the_vectors", entries_travel_with_the_vectors),
        ("removal", removal),
        ("reopen_and_crash_keep_the_last_commit", reopen_and_crash_keep_the_last_commit),
        ("dimension_mismatch_is_refused", dimension_mismatch_is_refused),
    ];
    for (name, check) in checks {
        let started = std::time::Instant::now();
        check(h);
        eprintln!("contract: {name} passed in {:.1} s", started.elapsed().as_secs_f64());
    }
}

/// A seeded generator of unit vectors (the suite must be reproducible).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn unit(&mut self, dim: usize) -> Vec<f32> {
        let mut v: Vec<f32> = (0..dim).map(|_| (self.next() % 20001) as f32 / 10000.0 - 1.0).collect();
        normalize(&mut v).expect("non-zero");
        v
    }
}

/// A random gallery: `n` images in three domains, 1 to 3 captions each.
pub fn random_records(n: usize, dim: usize, seed: u64) -> Vec<VectorRecord> {
    let mut rng = Rng(seed | 1);
    (0..n)
        .map(|i| VectorRecord {
            id: ImageId::for_path(&format!("/contract/{seed}/{i}")),
            domain: ["photo", "sketch", "clipart"][i % 3].into(),
            image: rng.unit(dim),
            captions: (0..1 + i % 3).flat_map(|_| rng.unit(dim)).collect(),
        })
        .collect()
}

/// The definition, pair by pair.
pub fn brute_force(records: &[VectorRecord], query: &[f32], target: Target, domain: Option<&str>) -> Vec<(ImageId, f32)> {
    let dim = records.first().map(|r| r.image.len()).unwrap_or(1);
    let mut scored: Vec<(ImageId, f32)> = records
        .iter()
        .filter(|r| domain.is_none_or(|d| r.domain == d))
        .map(|r| {
            let best = |target_rows: &[f32]| -> f32 {
                query
                    .chunks_exact(dim)
                    .flat_map(|q| target_rows.chunks_exact(dim).map(move |t| dot(q, t)))
                    .fold(f32::NEG_INFINITY, |a, s| if s > a { s } else { a })
            };
            (r.id, target.combine(best(&r.captions), best(&r.image)))
        })
        .collect();
    scored.sort_by_key(|&(id, s)| (capmatch_retrieval::rank_key(s, 0), id));
    scored
}

fn search<I: VectorIndex>(index: &I, query: &[f32], target: Target, k: usize, domain: Option<&str>) -> Vec<VectorHit> {
    index.search(&VectorQuery { vectors: query, target, k, domain }).expect("search")
}

/// Checks `hits` against the brute-force ranking: the first k hits have the expected scores
/// in rank order; an exact backend finds exactly the expected set (ties at the cut aside).
fn check_ranking<H: Harness>(h: &H, hits: &[VectorHit], want: &[(ImageId, f32)], k: usize, what: &str) {
    let k = k.min(want.len());
    assert!(hits.len() >= k || h.approximate(), "{what}: {} hits for k = {k}", hits.len());
    for w in hits.windows(2) {
        assert!(
            capmatch_retrieval::rank_key(w[0].score, 0) <= capmatch_retrieval::rank_key(w[1].score, 0),
            "{what}: hits out of rank order"
        );
    }
    let expected_score = |id: ImageId| want.iter().find(|w| w.0 == id).map(|w| w.1);
    for hit in hits {
        let s = expected_score(hit.id).unwrap_or_else(|| panic!("{what}: hit {} is not in the gallery (or filtered out)", hit.id));
        assert!(same_rank_score(s, hit.score), "{what}: image {} scored {} instead of {s}", hit.id, hit.score);
    }
    if k == 0 {
        return;
    }
    let cut = want[k - 1].1;
    if h.approximate() {
        let truth: HashSet<ImageId> = want[..k].iter().map(|w| w.0).collect();
        let found = hits.iter().take(k).filter(|hit| truth.contains(&hit.id) || same_rank_score(hit.score, cut)).count();
        let recall = found as f64 / k as f64;
        assert!(recall >= h.min_recall(), "{what}: recall@{k} {recall} below {}", h.min_recall());
    } else {
        // Everything ranked strictly above the cut, then every tie at the cut.
        let above: HashSet<ImageId> =
            want.iter().take_while(|w| !same_rank_score(w.1, cut)).map(|w| w.0).collect();
        let tied: HashSet<ImageId> = want.iter().filter(|w| same_rank_score(w.1, cut)).map(|w| w.0).collect();
        let got: HashSet<ImageId> = hits.iter().map(|hit| hit.id).collect();
        assert!(above.is_subset(&got), "{what}: missed results ranked above the k-th");
        assert_eq!(got.len(), above.len() + tied.len(), "{what}: exact search returns the top k and the whole tie at the cut");
        assert!(got.iter().all(|id| above.contains(id) || tied.contains(id)), "{what}: returned something below the cut");
    }
}

pub fn empty_index_answers_nothing<H: Harness>(h: &mut H) {
    let index = h.create();
    assert_eq!(index.len(), 0);
    assert!(index.ids().unwrap().is_empty());
    assert_eq!(index.get(ImageId(7)).unwrap(), None);
    let q = Rng(5).unit(8);
    assert!(search(&index, &q, Target::Captions, 10, None).is_empty());
}

pub fn vectors_round_trip<H: Harness>(h: &mut H) {
    let mut index = h.create();
    let records = random_records(50, 16, 11);
    let g0 = index.generation();
    index.upsert(&records).unwrap();
    assert_ne!(index.generation(), g0, "a commit changes the generation");
    assert_eq!(index.len(), 50);
    assert_eq!(index.dim(), Some(16));
    for r in records.iter().step_by(7) {
        assert_eq!(index.get(r.id).unwrap().as_ref(), Some(r), "vectors come back as stored");
    }
    // Together, in the order asked: an unknown id and a repeated one included.
    let mut asked: Vec<ImageId> = records.iter().rev().map(|r| r.id).collect();
    asked.insert(3, ImageId(999_999));
    asked.push(records[0].id);
    let got = index.get_many(&asked).unwrap();
    assert_eq!(got.len(), asked.len(), "one answer per id asked");
    for (id, record) in asked.iter().zip(&got) {
        assert_eq!(record.as_ref(), records.iter().find(|r| r.id == *id), "get_many({id:?})");
    }
    let mut ids: Vec<(ImageId, String)> = index.ids().unwrap();
    ids.sort();
    let mut want: Vec<(ImageId, String)> = records.iter().map(|r| (r.id, r.domain.clone())).collect();
    want.sort();
    assert_eq!(ids, want);
}

pub fn an_image_scores_by_its_best_caption<H: Harness>(h: &mut H) {
    let mut index = h.create();
    let dim = 4;
    let e = |i: usize| -> Vec<f32> { (0..dim).map(|j| if j == i { 1.0 } else { 0.0 }).collect() };
    let a = VectorRecord { id: ImageId(1), domain: "d".into(), image: e(3), captions: [e(1), e(0), e(2)].concat() };
    let b = VectorRecord { id: ImageId(2), domain: "d".into(), image: e(0), captions: e(1) };
    index.upsert(&[a, b]).unwrap();
    let hits = search(&index, &e(0), Target::Captions, 2, None);
    assert_eq!(hits[0].id, ImageId(1), "image 1's second caption matches exactly");
    assert_eq!(hits[0].score, 1.0);
    assert_eq!(hits[0].components.best_caption, Some(1));
    assert_eq!(hits[0].components.image, 0.0);
    assert_eq!(hits[1].id, ImageId(2));
    assert_eq!(hits[1].components.image, 1.0);
    let hits = search(&index, &e(0), Target::Image, 1, None);
    assert_eq!((hits[0].id, hits[0].score), (ImageId(2), 1.0));
}

pub fn every_target_matches_brute_force<H: Harness>(h: &mut H) {
    let mut index = h.create();
    let dim = 37; // not a multiple of the kernel's lanes
    let records = random_records(700, dim, 23);
    index.upsert(&records).unwrap();
    let mut rng = Rng(99);
    let targets = [
        Target::Captions,
        Target::Image,
        Target::Fused { caption_weight: 0.5 },
        Target::Fused { caption_weight: 0.8 },
        Target::Fused { caption_weight: 0.0 },
    ];
    let mut queries: Vec<VectorQuery<'_>> = Vec::new();
    let qs: Vec<Vec<f32>> = (0..6).map(|_| rng.unit(dim)).collect();
    for (i, target) in targets.iter().enumerate() {
        for k in [1, 10, 700, 1000] {
            let q = &qs[i % qs.len()];
            let hits = search(&index, q, *target, k, None);
            check_ranking(h, &hits, &brute_force(&records, q, *target, None), k, &format!("{target:?} k={k}"));
            queries.push(VectorQuery { vectors: q, target: *target, k, domain: None });
        }
    }
    // A batch a backend may score together: the same target and k, one and several vectors
    // per query, with and without a domain, mixed with the different targets above.
    let multi: Vec<Vec<f32>> = (0..4).map(|i| qs[i].iter().chain(&qs[i + 1]).copied().collect()).collect();
    for (i, q) in qs.iter().enumerate() {
        queries.push(VectorQuery { vectors: q, target: Target::Captions, k: 10, domain: None });
        queries.push(VectorQuery { vectors: &multi[i % multi.len()], target: Target::Captions, k: 10, domain: None });
        queries.push(VectorQuery { vectors: q, target: Target::Captions, k: 10, domain: Some(&records[i].domain) });
    }
    let many = index.search_many(&queries).unwrap();
    assert_eq!(many.len(), queries.len());
    for (q, hits) in queries.iter().zip(many) {
        assert_eq!(hits, index.search(q).unwrap(), "search_many agrees with search");
    }
}

pub fn several_query_vectors_score_by_the_best<H: Harness>(h: &mut H) {
    let mut index = h.create();
    let dim = 16;
    let records = random_records(200, dim, 31);
    index.upsert(&records).unwrap();
    let mut rng = Rng(3);
    let q: Vec<f32> = (0..3).flat_map(|_| rng.unit(dim)).collect();
    for target in [Target::Captions, Target::Image] {
        let hits = search(&index, &q, target, 15, None);
        check_ranking(h, &hits, &brute_force(&records, &q, target, None), 15, "three query vectors");
    }
}

pub fn ties_at_the_cut_are_all_returned<H: Harness>(h: &mut H) {
    let mut index = h.create();
    let dim = 8;
    let mut rng = Rng(77);
    let shared = rng.unit(dim);
    // Five images with the same caption vector (identical captions), five others.
    let mut records: Vec<VectorRecord> = (0..5)
        .map(|i| VectorRecord { id: ImageId(100 + i), domain: "d".into(), image: rng.unit(dim), captions: shared.clone() })
        .collect();
    records.extend((0..5).map(|i| VectorRecord {
        id: ImageId(200 + i),
        domain: "d".into(),
        image: rng.unit(dim),
        captions: rng.unit(dim),
    }));
    index.upsert(&records).unwrap();
    let hits = search(&index, &shared, Target::Captions, 2, None);
    let tied: Vec<ImageId> = hits.iter().filter(|hit| hit.score == hits[0].score).map(|hit| hit.id).collect();
    if h.approximate() {
        assert!(tied.len() >= 2, "the two best are both tied at the top");
    } else {
        let mut tied = tied;
        tied.sort();
        assert_eq!(tied, (100..105).map(ImageId).collect::<Vec<_>>(), "the whole tie is returned");
    }
}

pub fn nan_ranks_last<H: Harness>(h: &mut H) {
    let mut index = h.create();
    let dim = 8;
    let mut rng = Rng(13);
    let mut broken = vec![0.5f32; dim];
    broken[3] = f32::NAN;
    let mut records = vec![VectorRecord { id: ImageId(1), domain: "d".into(), image: broken.clone(), captions: broken }];
    records.extend((2..12).map(|i| VectorRecord { id: ImageId(i), domain: "d".into(), image: rng.unit(dim), captions: rng.unit(dim) }));
    index.upsert(&records).unwrap();
    let q = rng.unit(dim);
    let hits = search(&index, &q, Target::Captions, 11, None);
    if let Some(pos) = hits.iter().position(|hit| hit.id == ImageId(1)) {
        assert!(hits[pos].score.is_nan() || hits[pos].score == f32::NEG_INFINITY, "a NaN product scores as −∞");
        assert!(hits[pos + 1..].iter().all(|hit| hit.score.is_nan() || hit.score == f32::NEG_INFINITY), "NaN ranks last");
        assert_eq!(pos, 10);
    } else {
        assert!(h.approximate(), "an exact backend returns the NaN image when k covers the gallery");
    }
    let top = search(&index, &q, Target::Captions, 3, None);
    assert!(top.iter().all(|hit| hit.id != ImageId(1)), "a NaN never outranks a real match");
}

pub fn domain_filter<H: Harness>(h: &mut H) {
    let mut index = h.create();
    let dim = 12;
    let records = random_records(300, dim, 41);
    index.upsert(&records).unwrap();
    let q = Rng(8).unit(dim);
    for domain in ["sketch", "clipart"] {
        let hits = search(&index, &q, Target::Fused { caption_weight: 0.5 }, 20, Some(domain));
        let want = brute_force(&records, &q, Target::Fused { caption_weight: 0.5 }, Some(domain));
        check_ranking(h, &hits, &want, 20, &format!("domain {domain}"));
    }
    assert!(search(&index, &q, Target::Captions, 20, Some("nowhere")).is_empty(), "an unknown domain has no images");
}

pub fn neighbour_graph_matches_brute_force<H: Harness>(h: &mut H) {
    let mut index = h.create();
    let dim = 19;
    let mut records = random_records(240, dim, 91);
    // Exact copies (their own image ties with them at 1.0: it must still never be listed),
    // and a removed image that must never come back.
    for i in 0..4 {
        let mut copy = records[i * 7].clone();
        copy.id = ImageId(900_000 + i as u64);
        records.push(copy);
    }
    index.upsert(&records).unwrap();
    let gone = records.remove(50);
    index.remove(&[gone.id]).unwrap();
    let subset: Vec<ImageId> = records.iter().step_by(9).map(|r| r.id).chain([gone.id, ImageId(4242)]).collect();
    let among_ids: Vec<ImageId> = records.iter().skip(3).step_by(5).map(|r| r.id).chain([gone.id]).collect();
    for target in [Target::Image, Target::Captions, Target::Fused { caption_weight: 0.7 }] {
        for (among, k) in [(Among::All, 5), (Among::All, 1), (Among::Domain("sketch"), 4), (Among::Ids(&among_ids), 3), (Among::All, 300)] {
            for of in [None, Some(&subset[..])] {
                let what = format!("neighbours {target:?} {among:?} k={k} of={}", if of.is_some() { "subset" } else { "all" });
                let graph = index.neighbours(&NeighbourQuery { target, k, of, among }, &NoProgress).unwrap();
                let want_ids: Vec<ImageId> = match of {
                    Some(ids) => ids.iter().filter(|id| records.iter().any(|r| r.id == **id)).copied().collect(),
                    None => records.iter().map(|r| r.id).collect(),
                };
                let mut got_ids: Vec<ImageId> = graph.iter().map(|n| n.id).collect();
                if of.is_none() {
                    got_ids.sort();
                    let mut w = want_ids.clone();
                    w.sort();
                    assert_eq!(got_ids, w, "{what}: one row per image");
                } else {
                    assert_eq!(got_ids, want_ids, "{what}: rows in the order asked, unknown ids left out");
                }
                for row in &graph {
                    let me = records.iter().find(|r| r.id == row.id).unwrap();
                    assert!(row.hits.iter().all(|hit| hit.id != row.id), "{what}: an image is never its own neighbour");
                    let candidates: Vec<VectorRecord> = records
                        .iter()
                        .filter(|r| r.id != row.id)
                        .filter(|r| match among {
                            Among::All => true,
                            Among::Domain(d) => r.domain == d,
                            Among::Ids(ids) => ids.contains(&r.id),
                        })
                        .cloned()
                        .collect();
                    let want = brute_force(&candidates, &me.image, target, None);
                    check_ranking(h, &row.hits, &want, k, &what);
                    for hit in &row.hits {
                        let c = &hit.components;
                        assert!(same_rank_score(hit.score, target.combine(c.caption, c.image)), "{what}: components explain the score");
                    }
                }
            }
        }
    }
    // The copies find each other at the top.
    let graph = index.neighbours(&NeighbourQuery { target: Target::Image, k: 1, of: Some(&[ImageId(900_000)]), among: Among::All }, &NoProgress).unwrap();
    assert_eq!(graph[0].hits[0].id, records[0].id);
    // A broken vector ranks last, and still comes back when k covers the gallery.
    let mut broken = records[1].clone();
    broken.id = ImageId(900_100);
    broken.image[2] = f32::NAN;
    broken.captions.fill(f32::NAN);
    index.upsert(std::slice::from_ref(&broken)).unwrap();
    for target in [Target::Image, Target::Captions] {
        let of = [records[2].id];
        let graph = index.neighbours(&NeighbourQuery { target, k: records.len() + 1, of: Some(&of), among: Among::All }, &NoProgress).unwrap();
        let hits = &graph[0].hits;
        if !h.approximate() {
            assert_eq!(hits.len(), records.len(), "{target:?}: every other image, the broken one included");
        }
        if let Some(pos) = hits.iter().position(|hit| hit.id == broken.id) {
            assert_eq!(pos, hits.len() - 1, "{target:?}: NaN ranks last");
        }
    }
}

pub fn pair_scores_explain_a_search<H: Harness>(h: &mut H) {
    let mut index = h.create();
    let dim = 12;
    let records = random_records(30, dim, 101);
    index.upsert(&records).unwrap();
    let pairs: Vec<(ImageId, ImageId)> =
        (0..30).map(|i| (records[i].id, records[(i * 7 + 3) % 30].id)).chain([(records[0].id, ImageId(31337))]).collect();
    let scores = index.score_pairs(&pairs).unwrap();
    assert_eq!(scores.len(), pairs.len());
    assert_eq!(scores[30], None, "an unknown id has no score");
    for ((a, b), got) in pairs.iter().zip(&scores).take(30) {
        let query = &records.iter().find(|r| r.id == *a).unwrap().image;
        let hits = search(&index, query, Target::Fused { caption_weight: 0.5 }, 30, None);
        let hit = hits.iter().find(|hit| hit.id == *b).unwrap();
        assert_eq!(got.as_ref(), Some(&hit.components), "pair ({a}, {b}) scores as a search from {a} sees {b}");
    }
}

pub fn upsert_replaces<H: Harness>(h: &mut H) {
    let mut index = h.create();
    let dim = 8;
    let mut records = random_records(30, dim, 51);
    index.upsert(&records).unwrap();
    let mut rng = Rng(52);
    records[7].image = rng.unit(dim);
    records[7].captions = [rng.unit(dim), rng.unit(dim)].concat();
    records[7].domain = "painting".into();
    index.upsert(std::slice::from_ref(&records[7])).unwrap();
    assert_eq!(index.len(), 30, "a replaced image is counted once");
    assert_eq!(index.get(records[7].id).unwrap().as_ref(), Some(&records[7]));
    let hits = search(&index, &records[7].captions[..dim], Target::Captions, 30, None);
    assert_eq!(hits.iter().filter(|hit| hit.id == records[7].id).count(), 1, "never twice in one result");
    check_ranking(h, &hits, &brute_force(&records, &records[7].captions[..dim], Target::Captions, None), 30, "after replace");
    let painted = search(&index, &records[7].image, Target::Image, 5, Some("painting"));
    assert_eq!(painted.iter().map(|hit| hit.id).collect::<Vec<_>>(), [records[7].id], "the new domain applies");
}

/// Entries given with the vectors come back as given (with the record's domain) from a
/// backend that keeps them, never wrong from one that does not; the vectors are stored
/// either way, and a removed image's entry goes with it.
pub fn entries_travel_with_the_vectors<H: Harness>(h: &mut H) {
    let mut index = h.create();
    let dim = 8;
    let records = random_records(5, dim, 57);
    let entry = |r: &VectorRecord, i: usize| ImageEntry {
        id: r.id,
        path: format!("/gallery/{}/image \"{i}\".png", r.domain),
        domain: r.domain.clone(),
        hash: format!("{i:064x}"),
        size: 1000 + i as u64,
        width: 640,
        height: 480,
        captions: vec![format!("caption {i}"), "a second, with ünïcode".into()],
    };
    // Entries for all but the last record.
    let entries: Vec<ImageEntry> = records.iter().take(4).enumerate().map(|(i, r)| entry(r, i)).collect();
    index.upsert_with_entries(&records, &entries).unwrap();
    assert_eq!(index.len(), 5);
    assert_eq!(index.get(records[4].id).unwrap().as_ref(), Some(&records[4]));
    let unknown = ImageId::for_path("/contract/never-added");
    let mut ids: Vec<ImageId> = records.iter().map(|r| r.id).collect();
    ids.push(unknown);
    let stored = index.stored_entries(&ids).unwrap();
    assert_eq!(stored.len(), ids.len(), "one answer per id, in order");
    for (i, got) in stored.iter().enumerate() {
        match (i, got) {
            (0..=3, Some(e)) => assert_eq!(e, &entries[i]),
            (0..=3, None) => assert!(!h.keeps_entries(), "entry {i} was not kept"),
            (_, got) => assert_eq!(got, &None, "no entry was given for id {}", ids[i]),
        }
    }
    index.remove(&[records[0].id]).unwrap();
    assert_eq!(index.stored_entries(&[records[0].id]).unwrap(), vec![None], "removed with its image");
}

pub fn removal<H: Harness>(h: &mut H) {
    let mut index = h.create();
    let dim = 8;
    let records = random_records(40, dim, 61);
    index.upsert(&records).unwrap();
    let gone: Vec<ImageId> = records.iter().step_by(4).map(|r| r.id).collect();
    let g = index.generation();
    assert_eq!(index.remove(&[gone.clone(), vec![ImageId(424242)]].concat()).unwrap(), gone.len());
    assert_ne!(index.generation(), g);
    assert_eq!(index.len(), 30);
    assert_eq!(index.remove(&gone).unwrap(), 0, "removing again changes nothing");
    for id in &gone {
        assert_eq!(index.get(*id).unwrap(), None);
    }
    let kept: Vec<VectorRecord> = records.iter().filter(|r| !gone.contains(&r.id)).cloned().collect();
    let q = Rng(62).unit(dim);
    let hits = search(&index, &q, Target::Captions, 40, None);
    check_ranking(h, &hits, &brute_force(&kept, &q, Target::Captions, None), 40, "after removal");
}

pub fn reopen_and_crash_keep_the_last_commit<H: Harness>(h: &mut H) {
    let mut index = h.create();
    let dim = 8;
    let records = random_records(60, dim, 71);
    index.upsert(&records[..40]).unwrap();
    index.remove(&[records[0].id]).unwrap();
    index.flush().unwrap();
    let mut index = h.reopen(index);
    assert_eq!(index.len(), 39);
    assert_eq!(index.get(records[5].id).unwrap().as_ref(), Some(&records[5]));
    index.upsert(&records[40..]).unwrap();
    index.flush().unwrap();
    let index = h.crash(index);
    assert_eq!(index.len(), 59, "a crash after a commit keeps it");
    let q = Rng(72).unit(dim);
    let kept: Vec<VectorRecord> = records[1..].to_vec();
    check_ranking(h, &search(&index, &q, Target::Captions, 10, None), &brute_force(&kept, &q, Target::Captions, None), 10, "after a crash");
    // The index still takes writes after recovery.
    let mut index = index;
    let extra = random_records(1, dim, 73);
    index.upsert(&extra).unwrap();
    assert_eq!(index.len(), 60);
}

pub fn dimension_mismatch_is_refused<H: Harness>(h: &mut H) {
    let mut index = h.create();
    index.upsert(&random_records(3, 8, 81)).unwrap();
    let wrong = random_records(1, 9, 82);
    assert!(index.upsert(&wrong).is_err(), "a vector of another dimension is refused");
    assert_eq!(index.len(), 3, "and nothing of it is written");
    let q = vec![0.5f32; 9];
    assert!(index.search(&VectorQuery { vectors: &q, target: Target::Image, k: 1, domain: None }).is_err());
}
