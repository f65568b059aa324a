//! The indexing job: incremental, batched, pipelined, crash-safe.
//!
//! 1. **Plan.** Walk the folders; a file whose size and mtime match its record (and whose
//!    record is not "racy", see [`RACY_WINDOW_NS`]) is unchanged without being read. Other
//!    files are hashed (blake3, in parallel). A hash already in the index (a moved, renamed
//!    or duplicated file) reuses its captions and vectors; only new contents are queued for
//!    the models, once per distinct content.
//! 2. **Pipeline.** A producer thread decodes the next batch on a thread pool while the
//!    calling thread runs the models on the current one (a bounded channel of one batch
//!    keeps memory flat).
//! 3. **Commit.** Each batch — its vectors, its files, its skipped files — is one commit of
//!    the gallery (see `storage`). Killing the process at any point leaves the gallery as of
//!    the last commit; the next run re-plans from the catalog and finishes the job, with no
//!    duplicates (paths, hashes and ids are keys) and nothing missing.
//!
//! Captions are embedded once per distinct text within a run (identical captions are
//! common: "a drawing of a cat"), and since the models' vectors do not depend on their
//! batch, identical captions get bit-identical vectors across runs too.
//!
//! Bad input never stops the run: a file that cannot be read or decoded (empty, truncated,
//! corrupt, not an image, too many pixels) is recorded as skipped with its reason. A model
//! batch that fails is retried image by image so that one poisonous image is skipped alone;
//! if every image of the batch fails on its own too, the models are broken and the run stops
//! (with everything committed so far kept).

pub mod uploads;
pub mod walk;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use capmatch_core::image_io::{decode_file, DecodeLimits};
use capmatch_core::RgbImage;
use capmatch_retrieval::normalized;
use capmatch_store::{CatalogBatch, ContentRecord, FileRecord, ImageId, SkipRecord, TrackedFile, VectorRecord};
use rayon::prelude::*;
use serde::Serialize;

use self::walk::{collect_candidates, Candidate};
use crate::error::{EngineError, Result};
use crate::models::GalleryModels;
use crate::storage::Storage;

/// A file modified within this window before its record was written may have changed again
/// within the same mtime tick (coarse filesystem timestamps), so it is re-hashed rather than
/// trusted by stat (git's "racy clean" problem).
pub const RACY_WINDOW_NS: i64 = 2_000_000_000;

/// Distinct caption texts whose vectors a run keeps (about 2 KiB each at 512 dimensions).
const CAPTION_CACHE: usize = 50_000;

#[derive(Clone, Debug)]
pub struct IndexOptions {
    /// Folders (or single files) to index, recursively.
    pub roots: Vec<PathBuf>,
    /// Domain tag for every file; `None`: each root folder's name.
    pub domain: Option<String>,
    /// Images per model batch.
    pub batch_size: usize,
    pub limits: DecodeLimits,
    /// Forget files that no longer exist (and vectors no file points at).
    pub prune: bool,
    /// Threads for hashing and decoding; 0: one per core.
    pub decode_threads: usize,
    /// Set to stop the run at the next batch boundary: the batch in the models finishes and
    /// commits, nothing after it starts (a server shutting down, a job cancelled). The
    /// report then says `cancelled`; a later run over the same folders finishes the job.
    pub cancel: Option<Arc<AtomicBool>>,
}

impl IndexOptions {
    pub fn new(roots: Vec<PathBuf>) -> Self {
        Self { roots, domain: None, batch_size: 8, limits: DecodeLimits::default(), prune: false, decode_threads: 0, cancel: None }
    }

    fn cancelled(&self) -> bool {
        self.cancel.as_ref().is_some_and(|c| c.load(Ordering::SeqCst))
    }
}

/// What a run did. Every candidate file is counted once in exactly one of
/// `indexed`, `reused`, `unchanged`, `skipped`, `other_shards`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct IndexReport {
    /// Image files found under the roots.
    pub candidates: usize,
    /// Files whose captions and vectors the models computed in this run.
    pub indexed: usize,
    /// New or changed paths whose content was already indexed (moved, renamed, duplicate).
    pub reused: usize,
    /// Files already indexed with the same content.
    pub unchanged: usize,
    /// Files that could not be indexed in this run (recorded with their reason).
    pub skipped: usize,
    /// Files whose content belongs to another shard of a sharded run (left to its writer).
    pub other_shards: usize,
    /// Records forgotten by `prune`.
    pub pruned: usize,
    /// Things in the folders that could not be walked (loops, dangling links...).
    pub walk_problems: usize,
    /// Model batches run (each is one caption + text + image call, more on retry).
    pub model_batches: usize,
    /// The run was stopped by [`IndexOptions::cancel`] before every file was done (files
    /// not reached are in no count but `candidates`; `prune` did not run).
    pub cancelled: bool,
}

impl IndexReport {
    /// Adds another run's counts (eval indexes one domain at a time).
    pub fn add(&mut self, r: &IndexReport) {
        self.candidates += r.candidates;
        self.indexed += r.indexed;
        self.reused += r.reused;
        self.unchanged += r.unchanged;
        self.skipped += r.skipped;
        self.pruned += r.pruned;
        self.walk_problems += r.walk_problems;
        self.model_batches += r.model_batches;
        self.cancelled |= r.cancelled;
    }
}

impl std::fmt::Display for IndexReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} new, {} reused, {} unchanged, {} skipped, {} pruned ({} image files found)",
            self.indexed, self.reused, self.unchanged, self.skipped, self.pruned, self.candidates
        )
    }
}

/// Hooks for progress display and warnings. The indexer itself prints nothing.
pub trait IndexObserver {
    /// Model work is about to start on `files` files (after planning).
    fn started(&self, _files: usize) {}
    /// A batch was committed; `done` files of the `started` total are finished.
    fn progressed(&self, _done: usize) {}
    /// A file was skipped (one call per file per run).
    fn skipped(&self, path: &str, reason: &str) {
        tracing::warn!("skipped {path}: {reason}");
    }
    /// Something could not be walked.
    fn walk_problem(&self, path: &str, message: &str) {
        tracing::warn!("{path}: {message}");
    }
}

/// An observer that only logs warnings through `tracing`.
pub struct NoObserver;
impl IndexObserver for NoObserver {}

/// One distinct new content and the files that have it.
struct WorkUnit {
    hash: String,
    files: Vec<Candidate>,
}

struct Decoded<'a> {
    unit: &'a WorkUnit,
    image: Result<RgbImage, String>,
}

/// Captions and vectors the models produced for one image.
struct Computed {
    captions: Vec<String>,
    image_embedding: Vec<f32>,
    caption_embeddings: Vec<f32>,
}

fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

fn hash_file(path: &Path) -> Result<String, String> {
    let mut hasher = blake3::Hasher::new();
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    hasher.update_reader(file).map_err(|e| format!("cannot read: {e}"))?;
    Ok(hasher.finalize().to_hex().to_string())
}

/// A commit in the making: the catalog's part and the vectors.
#[derive(Default)]
struct Pending {
    catalog: CatalogBatch,
    vectors: Vec<VectorRecord>,
}

/// Indexes `options.roots` into `storage` with `models`. See the module documentation.
pub(crate) fn index_folders(
    storage: &Storage,
    models: &dyn GalleryModels,
    options: &IndexOptions,
    observer: &dyn IndexObserver,
) -> Result<IndexReport> {
    let walk = collect_candidates(&options.roots, options.domain.as_deref())?;
    for problem in &walk.problems {
        observer.walk_problem(&problem.path, &problem.message);
    }
    let mut report = index_candidates(storage, models, &walk.candidates, options, observer)?;
    report.walk_problems = walk.problems.len();
    // A cancelled run has not seen every file: pruning now could forget good ones.
    if options.prune && !report.cancelled {
        let seen: std::collections::HashSet<&str> = walk.candidates.iter().map(|c| c.path.as_str()).collect();
        let tracked = storage.catalog().tracked_files()?;
        let gone: Vec<String> = tracked
            .into_iter()
            .map(|t| t.path)
            .filter(|p| !seen.contains(p.as_str()) && !Path::new(p).exists())
            .collect();
        report.pruned = gone.len();
        storage.commit(&[], CatalogBatch { forget: gone, ..Default::default() })?;
        storage.compact()?;
    }
    Ok(report)
}

/// Indexes the given candidate files (already walked).
pub(crate) fn index_candidates(
    storage: &Storage,
    models: &dyn GalleryModels,
    candidates: &[Candidate],
    options: &IndexOptions,
    observer: &dyn IndexObserver,
) -> Result<IndexReport> {
    let started = Instant::now();
    let run_started_ns = now_ns();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(options.decode_threads)
        .thread_name(|i| format!("capmatch-decode-{i}"))
        .build()
        .context("cannot start the decoding threads")?;
    let mut report = IndexReport { candidates: candidates.len(), ..Default::default() };

    let (tracked, known) = {
        let catalog = storage.catalog();
        let tracked: HashMap<String, TrackedFile> = catalog.tracked_files()?.into_iter().map(|t| (t.path.clone(), t)).collect();
        (tracked, catalog.content_hashes()?)
    };

    // --- Plan: stat shortcut, then hash what may have changed.
    let mut early = Pending::default();
    let mut relabelled: Vec<(ImageId, String)> = Vec::new();
    let mut reuse: Vec<(&Candidate, String)> = Vec::new();
    let mut to_hash = Vec::new();
    for candidate in candidates {
        match tracked.get(&candidate.path) {
            Some(t)
                if t.skipped.is_none()
                    && t.size == candidate.size
                    && t.mtime_ns == candidate.mtime_ns
                    && t.mtime_ns < t.checked_at_ns - RACY_WINDOW_NS =>
            {
                report.unchanged += 1;
                if t.domain != candidate.domain {
                    let id = t.id.expect("indexed files have ids");
                    early.catalog.files.push(file_record(id, candidate, t.hash.clone().unwrap_or_default(), t.checked_at_ns));
                    relabelled.push((id, candidate.domain.clone()));
                }
            }
            _ => to_hash.push(candidate),
        }
    }
    let hashes: Vec<Result<String, String>> =
        pool.install(|| to_hash.par_iter().map(|c| hash_file(Path::new(&c.path))).collect());

    let mut units: Vec<WorkUnit> = Vec::new();
    let mut unit_of_hash: HashMap<String, usize> = HashMap::new();
    let mut refreshed: Vec<(&Candidate, String, ImageId)> = Vec::new();
    for (candidate, hash) in to_hash.into_iter().zip(hashes) {
        let hash = match hash {
            Ok(h) => h,
            Err(reason) => {
                early.catalog.skipped.push(skip_record(candidate, None, reason, run_started_ns));
                continue;
            }
        };
        if !storage.shard().contains(&hash) {
            // Another shard's content: its writer indexes it. A file that moved out of this
            // shard (its bytes changed) is no longer this writer's.
            report.other_shards += 1;
            if tracked.contains_key(&candidate.path) {
                early.catalog.forget.push(candidate.path.clone());
            }
            continue;
        }
        let previous = tracked.get(&candidate.path);
        match previous {
            Some(t) if t.skipped.is_none() && t.hash.as_deref() == Some(hash.as_str()) => {
                // Same bytes, new stat (touched, copied over itself): refresh the stat only.
                report.unchanged += 1;
                let id = t.id.expect("indexed files have ids");
                if t.domain != candidate.domain {
                    relabelled.push((id, candidate.domain.clone()));
                }
                refreshed.push((candidate, hash, id));
            }
            _ if known.contains(&hash) => {
                report.reused += 1;
                reuse.push((candidate, hash));
            }
            _ => match unit_of_hash.get(&hash) {
                Some(&i) => units[i].files.push(candidate.clone()),
                None => {
                    unit_of_hash.insert(hash.clone(), units.len());
                    units.push(WorkUnit { hash, files: vec![candidate.clone()] });
                }
            },
        }
    }
    for (candidate, hash, id) in refreshed {
        early.catalog.files.push(file_record(id, candidate, hash, run_started_ns));
    }
    // Known contents: copy the vectors of a file that has them, under the new file's id.
    {
        let catalog = storage.catalog();
        let index = storage.index();
        let paths: Vec<&str> = reuse.iter().map(|(c, _)| c.path.as_str()).collect();
        let ids = catalog.allocate_ids(&paths)?;
        for ((candidate, hash), id) in reuse.into_iter().zip(ids) {
            let source = catalog.file_with_content(&hash)?;
            let vectors = match source {
                Some(source) => index.get(source)?,
                None => None,
            };
            match vectors {
                Some(v) => {
                    early.vectors.push(VectorRecord { id, domain: candidate.domain.clone(), ..v });
                    early.catalog.files.push(file_record(id, candidate, hash, run_started_ns));
                }
                None => {
                    // The content's vectors are gone (an interrupted run): compute them again.
                    report.reused -= 1;
                    match unit_of_hash.get(&hash) {
                        Some(&i) => units[i].files.push(candidate.clone()),
                        None => {
                            unit_of_hash.insert(hash.clone(), units.len());
                            units.push(WorkUnit { hash, files: vec![candidate.clone()] });
                        }
                    }
                }
            }
        }
        for (id, domain) in relabelled {
            if let Some(v) = index.get(id)? {
                early.vectors.push(VectorRecord { domain, ..v });
            }
        }
    }
    for s in &early.catalog.skipped {
        observer.skipped(&s.path, &s.reason);
    }
    report.skipped += early.catalog.skipped.len();
    storage.commit(&early.vectors, early.catalog)?;

    // --- Pipeline: decode batch i+1 while the models run batch i.
    let total_files: usize = units.iter().map(|u| u.files.len()).sum();
    observer.started(total_files);
    let batch_size = options.batch_size.max(1);
    let limits = options.limits;
    let mut done = 0usize;
    let mut caption_cache: HashMap<String, Vec<f32>> = HashMap::new();
    std::thread::scope(|scope| -> Result<()> {
        let (sender, receiver) = crossbeam_channel::bounded::<Vec<Decoded<'_>>>(1);
        let units = &units;
        let pool = &pool;
        scope.spawn(move || {
            for chunk in units.chunks(batch_size) {
                let decoded: Vec<Decoded<'_>> = pool.install(|| {
                    chunk
                        .par_iter()
                        .map(|unit| Decoded {
                            unit,
                            image: decode_file(Path::new(&unit.files[0].path), &limits).map_err(|e| e.to_string()),
                        })
                        .collect()
                });
                // The consumer hung up (it failed): stop decoding.
                if sender.send(decoded).is_err() {
                    break;
                }
            }
        });
        for batch in receiver.iter() {
            // Between two commits: the only point where stopping loses nothing.
            if options.cancelled() {
                report.cancelled = true;
                break;
            }
            let batch_files: usize = batch.iter().map(|d| d.unit.files.len()).sum();
            let mut pending = Pending::default();
            let mut ready: Vec<(&WorkUnit, RgbImage)> = Vec::with_capacity(batch.len());
            for d in batch {
                match d.image {
                    Ok(image) => ready.push((d.unit, image)),
                    Err(reason) => {
                        for f in &d.unit.files {
                            pending.catalog.skipped.push(skip_record(f, Some(d.unit.hash.clone()), reason.clone(), run_started_ns));
                        }
                    }
                }
            }
            let mut computed: Vec<(&WorkUnit, &RgbImage, Computed)> = Vec::new();
            if !ready.is_empty() {
                let images: Vec<RgbImage> = ready.iter().map(|(_, img)| img.clone()).collect();
                report.model_batches += 1;
                match run_models(models, &images, &mut caption_cache) {
                    Ok(out) => {
                        for ((unit, image), c) in ready.iter().zip(out) {
                            computed.push((unit, image, c));
                        }
                    }
                    Err(batch_err) if ready.len() > 1 => {
                        // Find the image(s) the models choke on; keep the others.
                        let mut failures = Vec::new();
                        for (unit, image) in &ready {
                            report.model_batches += 1;
                            match run_models(models, std::slice::from_ref(image), &mut caption_cache) {
                                Ok(mut c) => computed.push((unit, image, c.remove(0))),
                                Err(e) => failures.push((*unit, e)),
                            }
                        }
                        if computed.is_empty() {
                            return Err(EngineError::Model(batch_err.context("the models failed on every image of a batch")));
                        }
                        for (unit, e) in failures {
                            for f in &unit.files {
                                pending.catalog.skipped.push(skip_record(
                                    f,
                                    Some(unit.hash.clone()),
                                    format!("model error: {e:#}"),
                                    run_started_ns,
                                ));
                            }
                        }
                    }
                    Err(e) => {
                        return Err(EngineError::Model(e.context(format!("the models failed on {}", ready[0].0.files[0].path))));
                    }
                }
            }
            {
                let paths: Vec<&str> = computed.iter().flat_map(|(u, ..)| u.files.iter().map(|f| f.path.as_str())).collect();
                let mut ids = storage.catalog().allocate_ids(&paths)?.into_iter();
                for (unit, image, c) in computed {
                    report.indexed += unit.files.len();
                    pending.catalog.contents.push(ContentRecord {
                        hash: unit.hash.clone(),
                        width: image.width(),
                        height: image.height(),
                        captions: c.captions.clone(),
                    });
                    for f in &unit.files {
                        let id = ids.next().expect("one id per path");
                        pending.catalog.files.push(file_record(id, f, unit.hash.clone(), run_started_ns));
                        pending.vectors.push(VectorRecord {
                            id,
                            domain: f.domain.clone(),
                            image: c.image_embedding.clone(),
                            captions: c.caption_embeddings.clone(),
                        });
                    }
                }
            }
            for s in &pending.catalog.skipped {
                observer.skipped(&s.path, &s.reason);
            }
            report.skipped += pending.catalog.skipped.len();
            storage.commit(&pending.vectors, pending.catalog)?;
            done += batch_files;
            observer.progressed(done);
        }
        Ok(())
    })?;
    tracing::debug!("index run took {:.2?}", started.elapsed());
    Ok(report)
}

fn file_record(id: ImageId, c: &Candidate, hash: String, checked_at_ns: i64) -> FileRecord {
    FileRecord {
        id,
        path: c.path.clone(),
        hash,
        size: c.size,
        mtime_ns: c.mtime_ns,
        domain: c.domain.clone(),
        checked_at_ns,
    }
}

fn skip_record(c: &Candidate, hash: Option<String>, reason: String, checked_at_ns: i64) -> SkipRecord {
    SkipRecord {
        path: c.path.clone(),
        hash,
        size: c.size,
        mtime_ns: c.mtime_ns,
        domain: c.domain.clone(),
        reason,
        checked_at_ns,
    }
}

/// Captions, caption embeddings and image embeddings of one batch, validated and
/// normalised. Each distinct caption text is embedded once (`cache` keeps the vectors of
/// texts seen earlier in the run).
fn run_models(
    models: &dyn GalleryModels,
    images: &[RgbImage],
    cache: &mut HashMap<String, Vec<f32>>,
) -> anyhow::Result<Vec<Computed>> {
    if cache.len() > CAPTION_CACHE {
        cache.clear();
    }
    let captions = models.caption(images).context("captioning")?;
    if captions.len() != images.len() {
        bail!("the captioner returned {} caption lists for {} images", captions.len(), images.len());
    }
    if let Some(i) = captions.iter().position(|c| c.is_empty()) {
        bail!("the captioner returned no caption for image {i} of the batch");
    }
    let image_embeddings = models.embed_images(images).context("embedding images")?;
    if image_embeddings.len() != images.len() {
        bail!("the image encoder returned {} embeddings for {} images", image_embeddings.len(), images.len());
    }
    let dim = image_embeddings[0].len();
    let mut new_texts: Vec<&str> = Vec::new();
    for text in captions.iter().flatten() {
        if !cache.contains_key(text.as_str()) && !new_texts.contains(&text.as_str()) {
            new_texts.push(text);
        }
    }
    if !new_texts.is_empty() {
        let embedded = models.embed_texts(&new_texts).context("embedding captions")?;
        if embedded.len() != new_texts.len() {
            bail!("the text encoder returned {} embeddings for {} captions", embedded.len(), new_texts.len());
        }
        for (text, v) in new_texts.iter().zip(embedded) {
            let v = normalized(&v, dim).with_context(|| format!("caption embedding of {text:?}"))?;
            cache.insert(text.to_string(), v);
        }
    }
    let mut out = Vec::with_capacity(images.len());
    for (caps, image_embedding) in captions.into_iter().zip(image_embeddings) {
        let image_embedding = normalized(&image_embedding, dim).context("image embedding")?;
        let mut caption_embeddings = Vec::with_capacity(caps.len() * dim);
        for c in &caps {
            caption_embeddings.extend_from_slice(&cache[c.as_str()]);
        }
        out.push(Computed { captions: caps, image_embedding, caption_embeddings });
    }
    Ok(out)
}
