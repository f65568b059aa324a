//! The search batcher: concurrent searches are embedded together, answer exactly as one
//! search at a time does, and fail alone.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use capmatch_engine::{
    BatchConfig, BatchStats, Engine, ErrorKind, IndexOptions, Mode, ModelConfig, Models, NoObserver, Query, Result,
    SearchBatcher, SearchRequest, SearchResponse,
};
use common::*;

fn indexed_with_fakes() -> (tempfile::TempDir, PathBuf, Vec<PathBuf>) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("fruit");
    let files = copy_real_images(&root);
    let db = tmp.path().join("index.db");
    writer(&db, &FakeModels::new()).unwrap().index_folders(&IndexOptions::new(vec![root]), &NoObserver).unwrap();
    (tmp, db, files)
}

/// A window long enough that every search submitted in one loop joins the first batch.
fn patient(max_batch: usize) -> BatchConfig {
    BatchConfig { max_batch, max_wait: Duration::from_millis(500), workers: 1 }
}

/// Submits every request at once, then waits for all answers (in request order).
fn submit_all(batcher: &SearchBatcher, requests: &[SearchRequest]) -> Vec<Result<SearchResponse>> {
    let receivers: Vec<_> = requests
        .iter()
        .map(|r| {
            let (tx, rx) = std::sync::mpsc::channel();
            batcher.submit(r.clone(), move |answer| tx.send(answer).unwrap());
            rx
        })
        .collect();
    receivers.into_iter().map(|rx| rx.recv_timeout(Duration::from_secs(60)).unwrap()).collect()
}

fn recording() -> (Arc<Mutex<Vec<BatchStats>>>, capmatch_engine::batching::BatchObserver) {
    let batches = Arc::new(Mutex::new(Vec::new()));
    let sink = batches.clone();
    (batches, Arc::new(move |s: &BatchStats| sink.lock().unwrap().push(*s)))
}

fn png_bytes(path: &Path) -> Query {
    Query::ImageBytes { name: path.file_name().unwrap().to_string_lossy().into_owned(), bytes: std::fs::read(path).unwrap() }
}

#[test]
fn concurrent_searches_share_one_model_call_and_answer_as_one_at_a_time() {
    let (_tmp, db, files) = indexed_with_fakes();
    let models = FakeModels::new();
    let engine = Arc::new(writer(&db, &models).unwrap());
    let mut requests: Vec<SearchRequest> =
        (0..5).map(|i| SearchRequest::new(Query::Text(format!("query number {i}")), Mode::Caption, 3)).collect();
    for (f, mode) in files.iter().zip([Mode::Caption, Mode::Image, Mode::Fused]) {
        requests.push(SearchRequest::new(png_bytes(f), mode, 4));
    }
    let alone: Vec<SearchResponse> = requests.iter().map(|r| engine.search(r).unwrap()).collect();

    let (texts_before, text_calls_before, image_calls_before) = (models.texts_seen(), models.text_calls(), models.image_calls());
    let (batches, observer) = recording();
    let batcher = SearchBatcher::start(engine.clone(), patient(16), Some(observer));
    let batched: Vec<SearchResponse> = submit_all(&batcher, &requests).into_iter().map(|r| r.unwrap()).collect();

    assert_eq!(batched, alone, "with batch-invariant (fake) models, batched answers are bit for bit those of single searches");
    assert_eq!(models.text_calls() - text_calls_before, 1, "five texts, one text-model call");
    assert_eq!(models.texts_seen() - texts_before, 5);
    assert_eq!(models.image_calls() - image_calls_before, 1, "three images, one image-model call");
    let batches = batches.lock().unwrap();
    assert_eq!(batches.len(), 1);
    assert_eq!((batches[0].searches, batches[0].texts, batches[0].images), (8, 5, 3));
}

#[test]
fn batches_are_capped_at_the_largest_batch() {
    let (_tmp, db, _files) = indexed_with_fakes();
    let engine = Arc::new(writer(&db, &FakeModels::new()).unwrap());
    let requests: Vec<SearchRequest> =
        (0..10).map(|i| SearchRequest::new(Query::Text(format!("q{i}")), Mode::Caption, 2)).collect();
    let (batches, observer) = recording();
    let batcher = SearchBatcher::start(engine, patient(4), Some(observer));
    assert!(submit_all(&batcher, &requests).iter().all(|r| r.is_ok()));
    let sizes: Vec<usize> = batches.lock().unwrap().iter().map(|b| b.searches).collect();
    // Usually [4, 4, 2]; on a loaded machine the submitting thread may be descheduled past
    // the window, which splits a batch further, but never makes one larger.
    assert_eq!(sizes.iter().sum::<usize>(), 10, "{sizes:?}");
    assert!(sizes.iter().all(|&n| n <= 4), "{sizes:?}");
    assert!(sizes.contains(&4), "batches fill up to the cap: {sizes:?}");
}

#[test]
fn a_bad_request_fails_alone() {
    let (_tmp, db, files) = indexed_with_fakes();
    let engine = Arc::new(writer(&db, &FakeModels::new()).unwrap());
    let good = SearchRequest::new(Query::Text("a picture of something red".into()), Mode::Caption, 3);
    let expected = engine.search(&good).unwrap();
    let known = expected.hits[0].id;
    let requests = vec![
        good.clone(),
        SearchRequest::new(Query::ImageBytes { name: "notes.txt".into(), bytes: b"not an image".to_vec() }, Mode::Caption, 3),
        SearchRequest::new(Query::Text("k of zero".into()), Mode::Caption, 0),
        // Passes the checks, fails inside the batch's search: the batch is rerun one by one.
        SearchRequest::new(Query::ImageId(capmatch_engine::ImageId(known.0 ^ 1)), Mode::Image, 3),
        SearchRequest::new(Query::ImageId(known), Mode::Image, 3),
        SearchRequest::new(png_bytes(&files[0]), Mode::Image, 3),
        good,
    ];
    let batcher = SearchBatcher::start(engine.clone(), patient(16), None);
    let answers = submit_all(&batcher, &requests);
    assert_eq!(answers[0].as_ref().unwrap(), &expected);
    assert_eq!(answers[1].as_ref().unwrap_err().kind(), ErrorKind::NotAnImage);
    assert_eq!(answers[2].as_ref().unwrap_err().kind(), ErrorKind::InvalidRequest);
    assert_eq!(answers[3].as_ref().unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(answers[4].as_ref().unwrap().hits[0].id, known);
    assert_eq!(answers[5].as_ref().unwrap(), &engine.search(&requests[5]).unwrap());
    assert_eq!(answers[6].as_ref().unwrap(), &expected);
    // The blocking form answers the same.
    assert_eq!(batcher.search(requests[0].clone()).unwrap(), expected);
}

fn fixture(rel: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(rel).canonicalize().unwrap().display().to_string()
}

/// With the real (tiny) CLIP, a batch of mixed texts and images answers as the same searches
/// run one at a time: the same hits in the same order with the same scores, to the bit. The
/// models' kernels are batch-invariant (a row's sums run in the same order whatever the
/// batch, and padding a text to the longest of its batch changes none of its bits), so
/// batching may not move a score at all.
#[test]
fn real_models_answer_identically_in_a_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("fruit");
    let files = copy_real_images(&root);
    let db = tmp.path().join("index.db");
    let config = ModelConfig {
        clip: fixture("fixtures/clip/tiny-quickgelu-p32"),
        captioner: fixture("fixtures/blip/tiny-a"),
        ..ModelConfig::default()
    };
    let models = Arc::new(Models::new(&config).unwrap());
    let engine = Engine::open_writer(&db, models, false, &|_| {}).unwrap();
    engine.index_folders(&IndexOptions::new(vec![root]), &NoObserver).unwrap();
    let engine = Arc::new(engine);

    let mut requests = Vec::new();
    for (i, text) in ["a lemon", "grapes on a table", "a cartoon apple with a long stem"].into_iter().enumerate() {
        requests.push(SearchRequest::new(Query::Text(text.into()), [Mode::Text, Mode::Caption, Mode::Text][i], 6));
    }
    for (f, mode) in files.iter().zip([Mode::Caption, Mode::Image, Mode::Fused, Mode::Caption]) {
        requests.push(SearchRequest::new(png_bytes(f), mode, 6));
    }
    let alone: Vec<SearchResponse> = requests.iter().map(|r| engine.search(r).unwrap()).collect();
    let batcher = SearchBatcher::start(engine, patient(16), None);
    let batched: Vec<SearchResponse> = submit_all(&batcher, &requests).into_iter().map(|r| r.unwrap()).collect();
    assert_eq!(batched.len(), alone.len());
    for (b, a) in batched.iter().zip(&alone) {
        assert_eq!(b.mode, a.mode);
        let ids = |r: &SearchResponse| r.hits.iter().map(|h| (h.id, h.caption.clone(), h.matched_caption)).collect::<Vec<_>>();
        assert_eq!(ids(b), ids(a), "the same hits in the same order");
        for (hb, ha) in b.hits.iter().zip(&a.hits) {
            assert_eq!(hb.score.to_bits(), ha.score.to_bits(), "{} vs {}: batching moved a score", hb.score, ha.score);
            assert_eq!(hb.scores, ha.scores, "the components too");
        }
    }
}
