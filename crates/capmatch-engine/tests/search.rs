//! Search through the engine: every query form and mode, the tie and NaN rules, and what a
//! hit explains; on real files indexed with the deterministic fake models.

mod common;

use std::path::Path;

use capmatch_core::image_io::{decode_file, DecodeLimits};
use capmatch_engine::{EngineError, ErrorKind, IndexOptions, Mode, NoObserver, Query, SearchRequest};
use common::*;

fn indexed(two_captions: bool) -> (tempfile::TempDir, std::path::PathBuf, Vec<std::path::PathBuf>) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("fruit");
    let files = copy_real_images(&root);
    let db = tmp.path().join("index.db");
    let mut models = FakeModels::new();
    models.two_captions = two_captions;
    writer(&db, &models).unwrap().index_folders(&IndexOptions::new(vec![root]), &NoObserver).unwrap();
    (tmp, db, files)
}

fn request(query: Query, mode: Mode, k: usize) -> SearchRequest {
    SearchRequest::new(query, mode, k)
}

#[test]
fn every_query_form_finds_what_the_fake_models_predict() {
    let (_tmp, db, files) = indexed(true);
    let mut models = FakeModels::new();
    models.two_captions = true;
    let engine = writer(&db, &models).unwrap();
    let img = decode_file(&files[4], &DecodeLimits::default()).unwrap();
    let own_path = files[4].canonicalize().unwrap().display().to_string();

    // An image query equal to a gallery image finds it first in image mode.
    for query in [Query::ImagePath(files[4].clone()), Query::ImageBytes { name: "q.png".into(), bytes: std::fs::read(&files[4]).unwrap() }, Query::Image(img.clone())] {
        let hits = engine.search(&request(query, Mode::Image, 3)).unwrap().hits;
        assert_eq!(hits[0].path, own_path);
        assert!((hits[0].score - 1.0).abs() < 1e-5);
        assert_eq!(hits[0].rank, 1);
        assert_eq!(hits[0].scores.image, Some(hits[0].score));
    }
    // The vector of a stored caption finds its image with score 1 in caption mode, and the
    // hit names the caption that matched.
    let caption = fake_captions(&img, true)[1].clone(); // the size caption is unique per image
    let hits = engine.search(&request(Query::Vector(fake_text_embedding(&caption)), Mode::Caption, 1)).unwrap().hits;
    assert_eq!(hits[0].caption, caption);
    assert_eq!(hits[0].matched_caption, Some(1));
    assert_eq!(hits[0].captions, fake_captions(&img, true));
    assert!((hits[0].score - 1.0).abs() < 1e-5);
    // A text query in caption mode embeds the text: the same result.
    let by_text = engine.search(&request(Query::Text(caption.clone()), Mode::Caption, 1)).unwrap().hits;
    assert_eq!(by_text[0].id, hits[0].id);
    // More like this: an indexed image by id.
    let by_id = engine.search(&request(Query::ImageId(hits[0].id), Mode::Image, 2)).unwrap().hits;
    assert_eq!(by_id[0].id, hits[0].id);
    // caption-text: the query image is captioned; its size caption matches itself exactly.
    let ct = engine.search(&request(Query::Image(img.clone()), Mode::CaptionText, 1)).unwrap().hits;
    assert_eq!(ct[0].path, own_path);
    assert!((ct[0].score - 1.0).abs() < 1e-5);
    // Fused: the formula over the two component scores.
    let mut fused = request(Query::Image(img), Mode::Fused, 6);
    fused.weight = 0.3;
    for h in engine.search(&fused).unwrap().hits {
        let want = 0.3 * h.scores.caption.unwrap() + 0.7 * h.scores.image.unwrap();
        assert!((h.score - want).abs() < 1e-6, "{h:?}");
    }
}

#[test]
fn ties_are_ordered_by_path_and_the_cut_respects_it() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("same");
    std::fs::create_dir_all(&root).unwrap();
    // 30 files with identical pixels but different bytes (PNG text chunks differ), so each
    // is its own content with the same vectors: a 30-way tie.
    for i in (0..30).rev() {
        let path = root.join(format!("{i:02}.png"));
        write_solid_png(&path, 8, 8, [10, 200, 10]);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(format!("trailer {i}").as_bytes());
        std::fs::write(&path, bytes).unwrap();
    }
    let db = tmp.path().join("index.db");
    let models = FakeModels::new();
    let engine = writer(&db, &models).unwrap();
    engine.index_folders(&IndexOptions::new(vec![root.clone()]), &NoObserver).unwrap();
    let q = Query::Text("a picture of something green".into());
    for (mode, k) in [(Mode::Caption, 1), (Mode::Caption, 7), (Mode::Image, 30), (Mode::Fused, 12)] {
        let hits = engine.search(&request(q.clone(), mode, k)).unwrap().hits;
        let names: Vec<String> = hits.iter().map(|h| Path::new(&h.path).file_name().unwrap().to_string_lossy().into_owned()).collect();
        let want: Vec<String> = (0..k).map(|i| format!("{i:02}.png")).collect();
        assert_eq!(names, want, "{mode:?} k={k}");
        assert!(hits.windows(2).all(|w| w[0].score == w[1].score));
    }
}

#[test]
fn bad_requests_are_refused_with_their_kind() {
    let (_tmp, db, files) = indexed(false);
    let engine = reader(&db);
    let kind = |r: SearchRequest| engine.search(&r).unwrap_err().kind();
    assert_eq!(kind(request(Query::Vector(vec![1.0, 0.0]), Mode::Image, 5)), ErrorKind::InvalidRequest, "wrong dimension");
    assert_eq!(kind(request(Query::Vector(vec![0.0; DIM]), Mode::Image, 5)), ErrorKind::InvalidRequest, "zero vector");
    assert_eq!(kind(request(Query::Vector(vec![f32::NAN; DIM]), Mode::Image, 5)), ErrorKind::InvalidRequest);
    assert_eq!(kind(request(Query::ImagePath(files[0].clone()), Mode::Text, 5)), ErrorKind::InvalidRequest);
    assert_eq!(kind(request(Query::Vector(vec![1.0; DIM]), Mode::CaptionText, 5)), ErrorKind::InvalidRequest);
    assert_eq!(kind(request(Query::Vector(vec![1.0; DIM]), Mode::Image, 0)), ErrorKind::InvalidRequest);
    assert_eq!(kind(request(Query::ImageId(capmatch_engine::store::ImageId(12345)), Mode::Image, 5)), ErrorKind::NotFound);
    let not_image = request(Query::ImageBytes { name: "x".into(), bytes: b"hello".to_vec() }, Mode::Image, 5);
    assert_eq!(kind(not_image), ErrorKind::NotAnImage);
    let png = std::fs::read(&files[0]).unwrap();
    let truncated = request(Query::ImageBytes { name: "t.png".into(), bytes: png[..png.len() / 2].to_vec() }, Mode::Image, 5);
    assert_eq!(kind(truncated), ErrorKind::DamagedImage);
    let mut weight = request(Query::Vector(vec![1.0; DIM]), Mode::Fused, 5);
    weight.weight = 1.5;
    assert_eq!(kind(weight), ErrorKind::InvalidRequest);
    // Not errors: an unknown domain has no images; an unnormalised vector is normalised.
    let mut other = request(Query::Vector(vec![1.0; DIM]), Mode::Image, 5);
    other.domain = Some("nowhere".into());
    assert!(engine.search(&other).unwrap().hits.is_empty());
    let a = engine.search(&request(Query::Vector(vec![1.0; DIM]), Mode::Image, 3)).unwrap().hits;
    let b = engine.search(&request(Query::Vector(vec![7.0; DIM]), Mode::Image, 3)).unwrap().hits;
    assert_eq!(a, b);
    // min_score keeps what scores at least that.
    let mut min = request(Query::Vector(vec![1.0; DIM]), Mode::Image, 6);
    min.min_score = Some(a[1].score);
    let kept = engine.search(&min).unwrap().hits;
    assert_eq!(kept.len(), 2);
    assert!(matches!(reader(&db).search(&request(Query::Text("x".into()), Mode::Image, 1)), Err(EngineError::Model(_))), "the fake models are not on disk: a reader cannot embed text");
}

#[test]
fn search_by_id_or_vector_needs_no_models() {
    let (_tmp, db, _) = indexed(false);
    let engine = reader(&db);
    let id = engine.ids().unwrap()[0].0;
    let hits = engine.search(&request(Query::ImageId(id), Mode::Caption, 6)).unwrap().hits;
    assert_eq!(hits.len(), 6);
}
