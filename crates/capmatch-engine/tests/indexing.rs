//! The indexing job on real files in a temporary folder, with deterministic fake models.

mod common;

use std::path::Path;

use capmatch_core::image_io::DecodeLimits;
use capmatch_engine::store::{SqliteCatalog, StoreError};
use capmatch_engine::{EngineError, GalleryModels, IndexOptions, IndexReport, NoObserver};
use common::*;

fn options(root: &Path) -> IndexOptions {
    let mut o = IndexOptions::new(vec![root.to_path_buf()]);
    o.batch_size = 2;
    o
}

fn run(db: &Path, opts: &IndexOptions, models: &mut FakeModels) -> Result<IndexReport, EngineError> {
    writer(db, models)?.index_folders(opts, &NoObserver)
}

fn indexed_paths(db: &Path) -> Vec<String> {
    gallery_of(db).into_iter().map(|(e, _)| e.path).collect()
}

fn canon(p: &Path) -> String {
    p.canonicalize().unwrap().to_str().unwrap().to_owned()
}

#[test]
fn first_run_indexes_everything_and_second_run_does_no_model_work() {
    let tmp = tempfile::tempdir().unwrap();
    let gallery = tmp.path().join("photos");
    let files = copy_real_images(&gallery);
    std::fs::write(gallery.join("README.txt"), "not an image candidate").unwrap();
    let db = tmp.path().join("index.db");

    let mut models = FakeModels::new();
    let report = run(&db, &options(&gallery), &mut models).unwrap();
    assert_eq!(report.candidates, 6);
    assert_eq!(report.indexed, 6);
    assert_eq!(report.skipped, 0);
    assert_eq!(models.images_seen(), 6);
    assert_eq!(models.image_calls(), 3, "six images in batches of two");

    let mut again = FakeModels::new();
    let report = run(&db, &options(&gallery), &mut again).unwrap();
    assert_eq!(again.model_calls(), 0, "second run must not call the models");
    assert_eq!((report.indexed, report.unchanged, report.reused, report.skipped), (0, 6, 0, 0));

    let summary = summary_of(&db);
    assert_eq!(summary.files, 6);
    assert_eq!(summary.images, 6);
    assert_eq!(summary.dim, Some(DIM));
    assert_eq!(summary.domains.len(), 1);
    assert_eq!(summary.domains[0].domain, "photos", "default domain is the folder's name");
    assert_eq!(summary.models, Some(FakeModels::new().identity_for_test()));
    let expected: Vec<String> = files.iter().map(|f| canon(f)).collect();
    assert_eq!(indexed_paths(&db), expected);

    // Stored vectors and captions are exactly what the models produced.
    let g = gallery_of(&db);
    for (i, f) in files.iter().enumerate() {
        let img = capmatch_core::image_io::decode_file(f, &DecodeLimits::default()).unwrap();
        assert_eq!(g[i].0.captions, fake_captions(&img, false));
        let want = fake_image_embedding(&img);
        for (a, b) in g[i].1.image.iter().zip(&want) {
            assert!((a - b).abs() < 1e-6);
        }
        assert_eq!(g[i].1.captions, fake_text_embedding(&g[i].0.captions[0]), "the caption's vector, exactly");
    }
}

trait IdentityForTest {
    fn identity_for_test(&self) -> capmatch_engine::ModelIdentity;
}
impl IdentityForTest for FakeModels {
    fn identity_for_test(&self) -> capmatch_engine::ModelIdentity {
        GalleryModels::identity(self)
    }
}

#[test]
fn changed_file_is_reindexed_and_moved_file_reuses_vectors() {
    let tmp = tempfile::tempdir().unwrap();
    let gallery = tmp.path().join("g");
    let files = copy_real_images(&gallery);
    let db = tmp.path().join("index.db");
    run(&db, &options(&gallery), &mut FakeModels::new()).unwrap();

    // Change one file's content (a red square in place of a lemon).
    write_solid_png(&files[0], 40, 30, [250, 10, 10]);
    // Rename another.
    let moved = gallery.join("sub").join("renamed.png");
    std::fs::create_dir_all(moved.parent().unwrap()).unwrap();
    std::fs::rename(&files[1], &moved).unwrap();

    let mut models = FakeModels::new();
    let report = run(&db, &options(&gallery), &mut models).unwrap();
    assert_eq!(report.indexed, 1, "{report:?}");
    assert_eq!(report.reused, 1, "{report:?}");
    assert_eq!(report.unchanged, 4, "{report:?}");
    assert_eq!(models.images_seen(), 1, "only the changed file goes through the models");

    let g = gallery_of(&db);
    let i = g.iter().position(|(e, _)| e.path == canon(&files[0])).unwrap();
    assert_eq!(g[i].0.captions, ["a picture of something red".to_string()]);
    // Without --prune the old path of the moved file is still remembered.
    assert_eq!(g.len(), 7);

    let mut opts = options(&gallery);
    opts.prune = true;
    let mut models = FakeModels::new();
    let report = run(&db, &opts, &mut models).unwrap();
    assert_eq!(report.pruned, 1);
    assert_eq!(models.model_calls(), 0);
    let summary = summary_of(&db);
    assert_eq!(summary.files, 6);
    assert_eq!(summary.images, 6, "the changed file's old vectors are collected by prune");
    let old_path = Path::new(&canon(&gallery)).join(files[1].file_name().unwrap()).to_str().unwrap().to_owned();
    assert!(!indexed_paths(&db).contains(&old_path));
    assert!(indexed_paths(&db).contains(&canon(&moved)));
}

#[test]
fn prune_forgets_deleted_and_skipped_files_but_not_other_roots() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    let files_a = copy_real_images(&a);
    std::fs::create_dir_all(&b).unwrap();
    write_solid_png(&b.join("blue.png"), 10, 10, [0, 0, 250]);
    std::fs::write(b.join("broken.png"), b"garbage").unwrap();
    let db = tmp.path().join("index.db");
    run(&db, &options(&a), &mut FakeModels::new()).unwrap();
    run(&db, &options(&b), &mut FakeModels::new()).unwrap();

    std::fs::remove_file(&files_a[2]).unwrap();
    std::fs::remove_file(b.join("broken.png")).unwrap();
    let mut opts = options(&b);
    opts.prune = true;
    let report = run(&db, &opts, &mut FakeModels::new()).unwrap();
    assert_eq!(report.pruned, 2, "a's deleted file and b's deleted skipped file");
    let summary = summary_of(&db);
    assert_eq!(summary.files, 6, "a's five remaining files are kept though a was not walked");
    assert!(summary.skipped.is_empty());
    let deleted = Path::new(&canon(&a)).join(files_a[2].file_name().unwrap()).to_str().unwrap().to_owned();
    assert!(!indexed_paths(&db).contains(&deleted));
}

#[test]
fn models_of_another_identity_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let gallery = tmp.path().join("g");
    copy_real_images(&gallery);
    let db = tmp.path().join("index.db");
    run(&db, &options(&gallery), &mut FakeModels::new()).unwrap();

    let mut other = FakeModels::new();
    other.name = "another-clip".into();
    let err = run(&db, &options(&gallery), &mut other).unwrap_err();
    assert!(matches!(err, EngineError::Store(StoreError::ModelMismatch { .. })), "{err:#}");
    let message = format!("{err:#}");
    assert!(message.contains("fake-clip") && message.contains("another-clip"), "{message}");
    assert_eq!(other.model_calls(), 0);

    let mut other_prompt = FakeModels::new();
    other_prompt.prompt = "a drawing of".into();
    let err = run(&db, &options(&gallery), &mut other_prompt).unwrap_err();
    assert!(format!("{err:#}").contains("refusing to mix"), "{err:#}");

    // The index is intact and still usable with the original models.
    let report = run(&db, &options(&gallery), &mut FakeModels::new()).unwrap();
    assert_eq!(report.unchanged, 6);
}

#[test]
fn bad_inputs_are_skipped_with_reasons_and_the_run_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let gallery = tmp.path().join("g");
    let files = copy_real_images(&gallery);
    let good = std::fs::read(&files[0]).unwrap();
    std::fs::write(gallery.join("zero.png"), b"").unwrap();
    std::fs::write(gallery.join("truncated.png"), &good[..good.len() / 3]).unwrap();
    let mut corrupt = good.clone();
    for b in corrupt.iter_mut().skip(40).take(2000) {
        *b = b.wrapping_mul(31).wrapping_add(7);
    }
    std::fs::write(gallery.join("corrupt.png"), &corrupt).unwrap();
    std::fs::write(gallery.join("notes.jpg"), "this is a text file with an image's name\n").unwrap();
    write_solid_png(&gallery.join("huge.png"), 600, 400, [1, 2, 3]);
    std::fs::write(gallery.join("bomb.png"), png_header_claiming(100_000, 100_000)).unwrap();
    let db = tmp.path().join("index.db");

    let mut opts = options(&gallery);
    // 600×400 = 240 000 pixels is over this limit; every real fixture (at most 376×379) is under.
    opts.limits = DecodeLimits { max_pixels: 200_000, ..Default::default() };
    let mut models = FakeModels::new();
    let report = run(&db, &opts, &mut models).unwrap();
    assert_eq!(report.indexed, 6, "{report:?}");
    assert_eq!(report.skipped, 6, "{report:?}");
    assert_eq!(models.images_seen(), 6, "bad files never reach the models");

    let summary = summary_of(&db);
    assert_eq!(summary.files, 6);
    let reason = |name: &str| {
        summary
            .skipped
            .iter()
            .find(|s| s.path.ends_with(name))
            .unwrap_or_else(|| panic!("{name} not recorded: {:?}", summary.skipped))
            .reason
            .clone()
    };
    assert!(reason("zero.png").contains("empty"), "{}", reason("zero.png"));
    assert!(!reason("truncated.png").is_empty());
    assert!(!reason("corrupt.png").is_empty());
    assert!(reason("notes.jpg").contains("not a supported image format"), "{}", reason("notes.jpg"));
    assert!(reason("huge.png").contains("exceeds the limit"), "{}", reason("huge.png"));
    assert!(reason("bomb.png").contains("100000x100000"), "{}", reason("bomb.png"));

    // A fixed file leaves the skipped list on the next run.
    std::fs::write(gallery.join("zero.png"), &good).unwrap();
    let report = run(&db, &opts, &mut FakeModels::new()).unwrap();
    assert_eq!(report.reused, 1, "zero.png now has the bytes of an indexed file: {report:?}");
    assert_eq!(report.skipped, 5);
    let summary = summary_of(&db);
    assert_eq!(summary.files, 7);
    assert_eq!(summary.skipped.len(), 5);
}

/// A file whose read fails is recorded as skipped, and the others are indexed. The failing
/// read is a link named like an image to this process's `/proc/self/mem`: a regular file
/// that opens but whose first read fails (EIO, nothing is mapped at address 0) for every
/// user, root included, so the test does not depend on who runs it (file permissions do
/// not stop root).
#[test]
fn unreadable_file_is_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let gallery = tmp.path().join("g");
    let files = copy_real_images(&gallery);
    std::fs::remove_file(&files[3]).unwrap();
    std::os::unix::fs::symlink("/proc/self/mem", &files[3]).unwrap();
    let mut probe = [0u8; 1];
    assert!(
        std::io::Read::read(&mut std::fs::File::open(&files[3]).unwrap(), &mut probe).is_err(),
        "reading /proc/self/mem at 0 was expected to fail"
    );
    let db = tmp.path().join("index.db");
    let report = run(&db, &options(&gallery), &mut FakeModels::new()).unwrap();
    assert_eq!((report.indexed, report.skipped), (5, 1));
    let summary = summary_of(&db);
    assert_eq!(summary.skipped.len(), 1, "{:?}", summary.skipped);
    assert!(summary.skipped[0].path.ends_with(files[3].file_name().unwrap().to_str().unwrap()), "{:?}", summary.skipped);
    assert!(summary.skipped[0].reason.contains("cannot read"), "{:?}", summary.skipped);
}

#[test]
fn a_failing_batch_leaves_no_half_written_records_and_a_rerun_completes() {
    let tmp = tempfile::tempdir().unwrap();
    let gallery = tmp.path().join("g");
    copy_real_images(&gallery);
    let db = tmp.path().join("index.db");

    let mut failing = FakeModels::new();
    failing.fail_from_call = Some(3); // batches 1 and 2 succeed, batch 3 (and its retries) fail
    let err = run(&db, &options(&gallery), &mut failing).unwrap_err();
    assert!(format!("{err:#}").contains("simulated model failure"), "{err:#}");

    let summary = summary_of(&db);
    assert_eq!(summary.files, 4, "the two committed batches, nothing of the third");
    assert_eq!(summary.images, 4);
    assert!(summary.skipped.is_empty(), "a broken model is not the images' fault");
    assert_eq!(gallery_of(&db).len(), 4, "every committed file has its vectors");
    assert!(reader(&db).check(true).unwrap().is_ok());

    let mut models = FakeModels::new();
    let report = run(&db, &options(&gallery), &mut models).unwrap();
    assert_eq!((report.indexed, report.unchanged), (2, 4));
    assert_eq!(models.images_seen(), 2);
    let paths = indexed_paths(&db);
    assert_eq!(paths.len(), 6);
    let mut dedup = paths.clone();
    dedup.dedup();
    assert_eq!(dedup, paths);
}

#[test]
fn a_poisonous_image_is_skipped_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let gallery = tmp.path().join("g");
    copy_real_images(&gallery);
    write_solid_png(&gallery.join("poison.png"), 7, 7, [0, 200, 0]);
    let db = tmp.path().join("index.db");
    let mut models = FakeModels::new();
    models.poison_width = Some(7);
    let mut opts = options(&gallery);
    opts.batch_size = 4;
    let report = run(&db, &opts, &mut models).unwrap();
    assert_eq!((report.indexed, report.skipped), (6, 1), "{report:?}");
    let summary = summary_of(&db);
    assert_eq!(summary.skipped.len(), 1);
    assert!(summary.skipped[0].path.ends_with("poison.png"));
    assert!(summary.skipped[0].reason.contains("model error"), "{:?}", summary.skipped);
}

#[test]
fn identical_files_are_computed_once() {
    let tmp = tempfile::tempdir().unwrap();
    let gallery = tmp.path().join("g");
    let files = copy_real_images(&gallery);
    std::fs::copy(&files[0], gallery.join("copy1.png")).unwrap();
    std::fs::copy(&files[0], gallery.join("copy2.png")).unwrap();
    let db = tmp.path().join("index.db");
    let mut models = FakeModels::new();
    let report = run(&db, &options(&gallery), &mut models).unwrap();
    assert_eq!(report.indexed, 8);
    assert_eq!(models.images_seen(), 6);
    let summary = summary_of(&db);
    assert_eq!((summary.files, summary.images), (8, 6));
}

#[test]
fn symlink_loops_are_not_followed_twice_and_domains_follow_roots() {
    let tmp = tempfile::tempdir().unwrap();
    let cartoons = tmp.path().join("cartoons");
    let photos = tmp.path().join("photos");
    copy_real_images(&cartoons);
    std::fs::create_dir_all(photos.join("nested")).unwrap();
    write_solid_png(&photos.join("nested/yellow.png"), 12, 12, [250, 250, 0]);
    std::os::unix::fs::symlink(&photos, photos.join("nested/loop")).unwrap();
    std::os::unix::fs::symlink(tmp.path().join("missing.png"), photos.join("dangling.png")).unwrap();
    let db = tmp.path().join("index.db");

    let opts = IndexOptions { batch_size: 3, ..IndexOptions::new(vec![cartoons.clone(), photos.clone()]) };
    let report = run(&db, &opts, &mut FakeModels::new()).unwrap();
    assert_eq!(report.indexed, 7, "{report:?}");
    assert!(report.walk_problems >= 2, "loop and dangling link are reported: {report:?}");
    let summary = summary_of(&db);
    let counts: Vec<(String, u64)> = summary.domains.iter().map(|d| (d.domain.clone(), d.files)).collect();
    assert_eq!(counts, vec![("cartoons".into(), 6), ("photos".into(), 1)]);

    // --domain overrides, and re-tags without model work.
    let opts = IndexOptions { domain: Some("mixed".into()), ..opts };
    let mut models = FakeModels::new();
    run(&db, &opts, &mut models).unwrap();
    assert_eq!(models.model_calls(), 0);
    let summary = summary_of(&db);
    assert_eq!(summary.domains.len(), 1);
    assert_eq!(summary.domains[0].domain, "mixed");
    assert_eq!(summary.domains[0].files, 7);
}

#[test]
fn several_captions_are_all_stored() {
    let tmp = tempfile::tempdir().unwrap();
    let gallery = tmp.path().join("g");
    copy_real_images(&gallery);
    let db = tmp.path().join("index.db");
    let mut models = FakeModels::new();
    models.two_captions = true;
    run(&db, &options(&gallery), &mut models).unwrap();
    let summary = summary_of(&db);
    assert_eq!(summary.domains[0].captions, 12);
    let g = gallery_of(&db);
    assert!(g.iter().all(|(e, v)| e.captions.len() == 2 && v.captions.len() == 2 * DIM));
}

#[test]
fn a_missing_root_is_an_error_and_foreign_databases_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("index.db");
    let err = run(&db, &options(&tmp.path().join("nope")), &mut FakeModels::new()).unwrap_err();
    assert!(format!("{err:#}").contains("nope"), "{err:#}");

    let foreign = tmp.path().join("foreign.db");
    {
        let conn = rusqlite::Connection::open(&foreign).unwrap();
        conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);").unwrap();
    }
    assert!(matches!(SqliteCatalog::open(&foreign), Err(StoreError::NotAnIndex(_))));
    assert!(matches!(run(&foreign, &options(tmp.path()), &mut FakeModels::new()), Err(EngineError::Store(StoreError::NotAnIndex(_)))));
    let text = tmp.path().join("text.db");
    std::fs::write(&text, "hello, this is not sqlite at all, not even close to a header").unwrap();
    assert!(SqliteCatalog::open(&text).is_err());
    assert!(matches!(SqliteCatalog::open_read_only(&tmp.path().join("absent.db")), Err(StoreError::Missing(_))));
}

/// A decompression bomb: a valid PNG signature and IHDR announcing `w`×`h` RGB pixels, and a
/// tiny IDAT. Nothing may be allocated for the announced size.
fn png_header_claiming(w: u32, h: u32) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = 0xffff_ffffu32;
        for &b in bytes {
            crc ^= b as u32;
            for _ in 0..8 {
                crc = if crc & 1 != 0 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
            }
        }
        !crc
    }
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32(&body).to_be_bytes());
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
    chunk(&mut out, b"IEND", &[]);
    out
}

/// Stops the run it observes after `after` committed files, and records what a search of
/// the same engine sees after each commit.
struct StopAfter<'a> {
    engine: &'a capmatch_engine::Engine,
    after: usize,
    cancel: std::sync::Arc<std::sync::atomic::AtomicBool>,
    seen: std::cell::RefCell<Vec<(usize, usize)>>,
}

impl capmatch_engine::IndexObserver for StopAfter<'_> {
    fn progressed(&self, done: usize) {
        let hits = self
            .engine
            .search(&capmatch_engine::SearchRequest::new(
                capmatch_engine::Query::Text("anything".into()),
                capmatch_engine::Mode::Caption,
                100,
            ))
            .unwrap()
            .hits;
        self.seen.borrow_mut().push((done, hits.len()));
        if done >= self.after {
            self.cancel.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

#[test]
fn a_cancelled_run_stops_between_commits_and_search_sees_each_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let gallery = tmp.path().join("photos");
    copy_real_images(&gallery);
    let db = tmp.path().join("index.db");
    let models = FakeModels::new();
    let engine = writer(&db, &models).unwrap();
    let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut opts = options(&gallery);
    opts.cancel = Some(cancel.clone());
    let observer = StopAfter { engine: &engine, after: 2, cancel, seen: Default::default() };

    let report = engine.index_folders(&opts, &observer).unwrap();
    assert!(report.cancelled);
    assert_eq!(report.indexed, 2, "one batch of two, then the stop");
    // Searching between two commits of the job sees exactly what was committed.
    assert_eq!(*observer.seen.borrow(), vec![(2, 2)]);
    assert_eq!(indexed_paths(&db).len(), 2);
    drop(engine);

    // The next run finishes the job; nothing is lost or duplicated.
    let mut models = models;
    let report = run(&db, &options(&gallery), &mut models).unwrap();
    assert!(!report.cancelled);
    assert_eq!((report.indexed, report.unchanged), (4, 2));
    assert_eq!(indexed_paths(&db).len(), 6);
}

#[test]
fn search_sees_every_commit_of_a_running_job() {
    let tmp = tempfile::tempdir().unwrap();
    let gallery = tmp.path().join("photos");
    copy_real_images(&gallery);
    let db = tmp.path().join("index.db");
    let engine = writer(&db, &FakeModels::new()).unwrap();
    let observer = StopAfter { engine: &engine, after: usize::MAX, cancel: Default::default(), seen: Default::default() };
    let report = engine.index_folders(&options(&gallery), &observer).unwrap();
    assert!(!report.cancelled);
    assert_eq!(*observer.seen.borrow(), vec![(2, 2), (4, 4), (6, 6)]);
}

#[test]
fn uploads_are_kept_by_hash_indexed_and_bad_ones_refused_alone() {
    use capmatch_engine::{ErrorKind, Upload};
    let tmp = tempfile::tempdir().unwrap();
    let files = copy_real_images(&tmp.path().join("src"));
    let db = tmp.path().join("index.db");
    let engine = writer(&db, &FakeModels::new()).unwrap();
    let png = std::fs::read(&files[0]).unwrap();
    let upload = |name: &str, bytes: Vec<u8>| Upload { name: name.into(), domain: "uploads".into(), bytes };
    let outcomes = engine
        .index_uploads(
            &[upload("../../evil.png", png.clone()), upload("notes.txt", b"hello".to_vec()), upload("again.jpg", png.clone())],
            4,
            &NoObserver,
        )
        .unwrap();
    assert!(outcomes[0].error.is_none(), "{:?}", outcomes[0]);
    assert_eq!(outcomes[1].error_kind, Some(ErrorKind::NotAnImage));
    assert!(outcomes[1].id.is_none());
    // The same bytes are one file, whatever their names.
    assert_eq!(outcomes[2].id, outcomes[0].id);
    let entry = engine.entry(outcomes[0].id.unwrap()).unwrap();
    let stored = Path::new(&entry.path);
    assert_eq!(stored.parent().unwrap(), capmatch_engine::uploads_dir(&db).canonicalize().unwrap());
    assert_eq!(stored.extension().unwrap(), "png");
    assert_eq!(std::fs::read(stored).unwrap(), png);
    assert_eq!(entry.domain, "uploads");
    assert_eq!(engine.len().unwrap(), 1);
    // A read-only engine refuses uploads.
    drop(engine);
    let err = reader(&db).index_uploads(&[upload("x.png", png)], 1, &NoObserver).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidRequest);
}
