//! The gallery's storage through the engine: recovery after a crash between the two stores,
//! one writer at a time, readers following a writer, the upgrade of a version-1 index, and
//! uploads.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use capmatch_engine::store::exact::Access;
use capmatch_engine::store::{ExactIndex, ImageId, VectorIndex, VectorRecord};
use capmatch_engine::{EngineError, IndexOptions, Mode, NoObserver, Query, SearchRequest, Upload};
use common::*;

fn index(db: &Path, root: &Path) -> capmatch_engine::IndexReport {
    writer(db, &FakeModels::new()).unwrap().index_folders(&IndexOptions::new(vec![root.to_path_buf()]), &NoObserver).unwrap()
}

#[test]
fn a_writer_reconciles_the_two_stores_after_a_crash_between_them() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("g");
    let files = copy_real_images(&root);
    let db = tmp.path().join("index.db");
    index(&db, &root);
    let lost = reader(&db).entry_by_path(&files[2].canonicalize().unwrap().display().to_string()).unwrap().unwrap();
    // What a crash can leave: vectors the catalog never committed (an orphan), and a
    // committed file whose vectors were removed (a later commit's removal that the catalog
    // did not record).
    {
        let mut vectors = ExactIndex::open(&ExactIndex::dir_for(&db), Access::ReadWrite, None).unwrap();
        let orphan = VectorRecord { id: ImageId(99), domain: "g".into(), image: vec![0.5; DIM], captions: vec![0.5; DIM] };
        vectors.upsert(&[orphan]).unwrap();
        vectors.remove(&[lost.id]).unwrap();
    }
    // A reader is never shown the orphan (no catalog entry), and check() says what is wrong.
    let r = reader(&db);
    let hits = r.search(&SearchRequest::new(Query::Vector(vec![0.5; DIM]), Mode::Image, 10)).unwrap().hits;
    assert!(hits.iter().all(|h| h.id != ImageId(99)));
    let problems = r.check(true).unwrap().problems;
    assert_eq!(problems.len(), 2, "{problems:?}");
    drop(r);
    // The next writer reconciles: the orphan goes, the file without vectors is forgotten and
    // indexed again by the next run over its folder.
    let report = index(&db, &root);
    assert_eq!((report.indexed, report.unchanged), (1, 5), "{report:?}");
    let r = reader(&db);
    assert!(r.check(true).unwrap().is_ok(), "{:?}", r.check(true).unwrap());
    assert_eq!(r.info().unwrap().vectors.images, 6);
}

#[test]
fn one_writer_at_a_time_and_a_second_one_waits() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("index.db");
    let first = writer(&db, &FakeModels::new()).unwrap();
    assert!(matches!(writer(&db, &FakeModels::new()), Err(EngineError::Busy(_))), "without waiting: refused");
    let told = Arc::new(AtomicBool::new(false));
    let waiter = {
        let (db, told) = (db.clone(), told.clone());
        std::thread::spawn(move || {
            let e = capmatch_engine::Engine::open_writer(&db, Arc::new(FakeModels::new()), true, &|_| told.store(true, Ordering::SeqCst));
            e.map(|_| ()).map_err(|e| e.to_string())
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(!waiter.is_finished(), "the second writer waits for the first");
    assert!(told.load(Ordering::SeqCst), "and says why");
    drop(first);
    waiter.join().unwrap().unwrap();
}

#[test]
fn a_reader_sees_what_a_writer_commits_while_it_is_open() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    copy_real_images(&a);
    std::fs::create_dir_all(&b).unwrap();
    write_solid_png(&b.join("blue.png"), 1, 1, [0, 0, 255]);
    let db = tmp.path().join("index.db");
    index(&db, &a);
    let r = reader(&db);
    assert_eq!(r.len().unwrap(), 6);
    index(&db, &b);
    assert_eq!(r.len().unwrap(), 7, "the reader follows the writer's commits");
    let q = SearchRequest::new(Query::Vector(fake_image_embedding(&image::RgbImage::from_pixel(1, 1, image::Rgb([0, 0, 255])))), Mode::Image, 1);
    assert!(r.search(&q).unwrap().hits[0].path.ends_with("blue.png"));
}

#[test]
fn uploads_are_stored_by_content_indexed_and_bad_ones_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("index.db");
    let real = real_images_dir();
    let lemon = std::fs::read(real.join("photo_lemon.png")).unwrap_or_else(|_| {
        let first = std::fs::read_dir(&real).unwrap().next().unwrap().unwrap().path();
        std::fs::read(first).unwrap()
    });
    let engine = writer(&db, &FakeModels::new()).unwrap();
    let uploads = vec![
        Upload { name: "../../etc/lemon.png".into(), domain: "uploads".into(), bytes: lemon.clone() },
        Upload { name: "notes.jpg".into(), domain: "uploads".into(), bytes: b"not an image".to_vec() },
        Upload { name: "again.png".into(), domain: "uploads".into(), bytes: lemon.clone() },
    ];
    let out = engine.index_uploads(&uploads, 4, &NoObserver).unwrap();
    assert!(out[0].id.is_some() && out[0].error.is_none(), "{out:?}");
    assert!(out[1].id.is_none() && out[1].error.as_deref().unwrap().contains("not a supported image format"), "{out:?}");
    assert_eq!(out[2].id, out[0].id, "the same bytes are the same stored file");
    let entry = engine.entry(out[0].id.unwrap()).unwrap();
    let uploads_dir = capmatch_engine::uploads_dir(&db).canonicalize().unwrap();
    assert!(Path::new(&entry.path).starts_with(&uploads_dir), "{} is under the uploads folder", entry.path);
    assert_eq!(std::fs::read(&entry.path).unwrap(), lemon);
    assert_eq!(entry.domain, "uploads");
    assert_eq!(engine.len().unwrap(), 1);
    assert!(engine.index_uploads(&[Upload { name: "x.png".into(), domain: " ".into(), bytes: lemon }], 1, &NoObserver).is_err());
}

#[test]
fn identical_captions_are_embedded_once_and_share_bit_identical_vectors() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("g");
    std::fs::create_dir_all(&root).unwrap();
    // Ten different files, all captioned "a picture of something red" by the fake captioner.
    for i in 0..10u8 {
        write_solid_png(&root.join(format!("red{i}.png")), 5 + i as u32, 5, [250 - i, 5, 5]);
    }
    let db = tmp.path().join("index.db");
    let models = FakeModels::new();
    let mut options = IndexOptions::new(vec![root.clone()]);
    options.batch_size = 3;
    writer(&db, &models).unwrap().index_folders(&options, &NoObserver).unwrap();
    assert_eq!(models.texts_seen(), 1, "one distinct caption, embedded once across four batches");
    let g = gallery_of(&db);
    assert!(g.iter().all(|(_, v)| v.captions == g[0].1.captions));
    // A later run embeds it again (a new process) and gets the same bits.
    let more = tmp.path().join("more");
    std::fs::create_dir_all(&more).unwrap();
    write_solid_png(&more.join("red.png"), 3, 9, [240, 0, 0]);
    writer(&db, &FakeModels::new()).unwrap().index_folders(&IndexOptions::new(vec![more]), &NoObserver).unwrap();
    let g = gallery_of(&db);
    let caption_bits: Vec<Vec<u32>> = g.iter().map(|(_, v)| v.captions.iter().map(|x| x.to_bits()).collect()).collect();
    assert!(caption_bits.windows(2).all(|w| w[0] == w[1]));
}

/// A version-1 index, as the previous capmatch wrote it: vectors in BLOB columns.
fn write_v1(db: &Path, rows: &[(&str, &str, &[f32], &[f32])]) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.execute_batch(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
         CREATE TABLE images (hash TEXT PRIMARY KEY, width INTEGER NOT NULL, height INTEGER NOT NULL,
             captions TEXT NOT NULL, image_embedding BLOB NOT NULL, caption_embeddings BLOB NOT NULL);
         CREATE TABLE files (path TEXT PRIMARY KEY, hash TEXT NOT NULL REFERENCES images(hash), size INTEGER NOT NULL,
             mtime_ns INTEGER NOT NULL, domain TEXT NOT NULL, checked_at_ns INTEGER NOT NULL);
         CREATE INDEX files_hash ON files(hash);
         CREATE TABLE skipped (path TEXT PRIMARY KEY, hash TEXT, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
             domain TEXT NOT NULL, reason TEXT NOT NULL, checked_at_ns INTEGER NOT NULL);
         INSERT INTO meta VALUES ('format', 'capmatch-caption-index'), ('schema_version', '1');",
    )
    .unwrap();
    let identity = serde_json::to_string(&capmatch_engine::GalleryModels::identity(&FakeModels::new())).unwrap();
    conn.execute("INSERT INTO meta VALUES ('models', ?1), ('dim', ?2)", [identity, DIM.to_string()]).unwrap();
    let blob = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
    for (i, (path, caption, image, captions)) in rows.iter().enumerate() {
        let hash = format!("{i:064x}");
        conn.execute(
            "INSERT INTO images VALUES (?1, 4, 4, ?2, ?3, ?4)",
            rusqlite::params![hash, serde_json::to_string(&[caption]).unwrap(), blob(image), blob(captions)],
        )
        .unwrap();
        conn.execute("INSERT INTO files VALUES (?1, ?2, 10, 1, 'old', 2)", rusqlite::params![path, hash]).unwrap();
    }
    conn.execute("INSERT INTO skipped VALUES ('/old/bad.png', NULL, 0, 1, 'old', 'truncated', 2)", []).unwrap();
}

#[test]
fn a_version_1_index_is_upgraded_by_the_first_writer_and_keeps_its_vectors() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("v1.db");
    let a = normalise((0..DIM).map(|i| i as f32 + 1.0).collect());
    let b = normalise((0..DIM).map(|i| (DIM - i) as f32).collect());
    write_v1(&db, &[("/old/a.png", "a lemon", &a, &a), ("/old/b.png", "a cat", &b, &b)]);
    // A reader asks for the upgrade instead of misreading the file.
    let err = capmatch_engine::Engine::open_reader(&db, Default::default()).err().unwrap().to_string();
    assert!(err.contains("upgrade"), "{err}");
    drop(writer(&db, &FakeModels::new()).unwrap());
    let r = reader(&db);
    let info = r.info().unwrap();
    assert_eq!((info.catalog.files, info.catalog.skipped.len(), info.vectors.images), (2, 1, 2));
    let hits = r.search(&SearchRequest::new(Query::Vector(b.clone()), Mode::Caption, 2)).unwrap().hits;
    assert_eq!((hits[0].path.as_str(), hits[0].caption.as_str()), ("/old/b.png", "a cat"));
    let v = r.vectors(hits[0].id).unwrap();
    assert_eq!((v.image, v.captions), (b.clone(), b));
    assert!(r.check(false).unwrap().is_ok());
}
