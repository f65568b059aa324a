//! The approximate index through the engine: built on request, used by searches once fresh,
//! `exact` forcing the scan, indexing runs merging their images into it, tuning recorded
//! and shown by `info`, and a damaged index refused while searches still answer.

mod common;

use capmatch_engine::ann::{AnnState, GraphParams, TuneOptions};
use capmatch_engine::{Engine, IndexOptions, Mode, NoObserver, Query, SearchRequest};
use common::*;

fn maintainer(db: &std::path::Path) -> Engine {
    Engine::open_maintainer(db, false, &|_| {}).unwrap()
}

/// Every image searched by its own vectors, in every mode, with `k` results.
fn answers(engine: &Engine, k: usize, exact: bool) -> Vec<Vec<(String, u32)>> {
    let mut out = Vec::new();
    for (id, _) in engine.ids().unwrap() {
        for mode in [Mode::Caption, Mode::Image, Mode::Fused] {
            let mut request = SearchRequest::new(Query::ImageId(id), mode, k);
            request.exact = exact;
            let hits = engine.search(&request).unwrap().hits;
            out.push(hits.into_iter().map(|h| (h.path, h.score.to_bits())).collect());
        }
    }
    out
}

#[test]
fn searches_use_a_fresh_approximate_index_and_indexing_runs_keep_it_fresh() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("index.db");
    let models = FakeModels::new();
    let first = tmp.path().join("fruit");
    copy_real_images(&first);
    let engine = writer(&db, &models).unwrap();
    engine.index_folders(&IndexOptions::new(vec![first]), &NoObserver).unwrap();
    assert_eq!(engine.info().unwrap().ann.state, AnnState::Absent);
    let (status, built) = engine.ensure_ann(GraphParams::default()).unwrap();
    assert!(built);
    assert_eq!((status.state, status.image_vectors), (AnnState::Fresh, 6));
    let (_, built) = engine.ensure_ann(GraphParams::default()).unwrap();
    assert!(!built, "a fresh index is not rebuilt");
    drop(engine);

    let engine = reader(&db);
    let info = engine.info().unwrap();
    assert_eq!((info.vectors.backend.as_str(), info.ann.state), ("hnsw", AnnState::Fresh));
    assert!(info.db_bytes > info.ann.disk_bytes && info.ann.disk_bytes > 0);
    // k = 1 asks the graphs for 4 candidates of 6: the approximate path, answering as the scan.
    assert_eq!(answers(&engine, 1, false), answers(&engine, 1, true));

    // A second run's images are merged into the graphs when it ends.
    let second = tmp.path().join("more");
    std::fs::create_dir_all(&second).unwrap();
    for (i, rgb) in [[200, 10, 10], [10, 200, 10], [10, 10, 200], [250, 250, 250]].into_iter().enumerate() {
        write_solid_png(&second.join(format!("solid{i}.png")), 32 + i as u32, 32, rgb);
    }
    writer(&db, &models).unwrap().index_folders(&IndexOptions::new(vec![second]), &NoObserver).unwrap();
    let info = engine.info().unwrap();
    assert_eq!((info.ann.state, info.ann.unmerged, info.ann.image_vectors), (AnnState::Fresh, 0, 10));
    assert_eq!(answers(&engine, 2, false), answers(&engine, 2, true));
}

#[test]
fn tuning_needs_no_model_is_recorded_and_survives_in_info() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("index.db");
    let root = tmp.path().join("fruit");
    copy_real_images(&root);
    writer(&db, &FakeModels::new()).unwrap().index_folders(&IndexOptions::new(vec![root]), &NoObserver).unwrap();
    let engine = maintainer(&db);
    assert!(engine.tune_ann(&TuneOptions::default()).is_err(), "nothing to tune before a build");
    engine.build_ann(GraphParams::default()).unwrap();
    // Six results found of six only show a recall of at least 0.61 with 95% confidence.
    let short = engine.tune_ann(&TuneOptions { target_recall: 0.9, sample: 6, k: 1 }).unwrap();
    assert!(!short.tuning.reached() && short.tuning.recall() == 1.0, "{short:?}");
    let report = engine.tune_ann(&TuneOptions { target_recall: 0.6, sample: 6, k: 1 }).unwrap();
    assert!(report.tuning.reached(), "{report:?}");
    drop(engine);
    let ann = reader(&db).info().unwrap().ann;
    assert_eq!(ann.tuning, Some(report.tuning.clone()));
    assert_eq!(ann.breadth, Some(report.tuning.breadth));
    assert!(reader(&db).build_ann(GraphParams::default()).is_err(), "a reader cannot build");
}

#[test]
fn a_damaged_approximate_index_is_refused_and_searches_stay_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("index.db");
    let root = tmp.path().join("fruit");
    copy_real_images(&root);
    let engine = writer(&db, &FakeModels::new()).unwrap();
    engine.index_folders(&IndexOptions::new(vec![root]), &NoObserver).unwrap();
    engine.build_ann(GraphParams::default()).unwrap();
    let want = answers(&engine, 1, true);
    drop(engine);
    let ann_dir = capmatch_engine::store::AnnIndex::dir_for(&db);
    for entry in std::fs::read_dir(&ann_dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "usearch") {
            let bytes = std::fs::read(&path).unwrap();
            std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        }
    }
    let engine = reader(&db);
    let info = engine.info().unwrap();
    assert_eq!((info.ann.state, info.vectors.backend.as_str()), (AnnState::Refused, "exact"));
    assert!(info.ann.problem.unwrap().contains("capmatch ann build"));
    assert_eq!(answers(&engine, 1, false), want);
    maintainer(&db).build_ann(GraphParams::default()).unwrap();
    assert_eq!(reader(&db).info().unwrap().ann.state, AnnState::Fresh);
}
