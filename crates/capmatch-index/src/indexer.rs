//! The indexing job: incremental, batched, pipelined, crash-safe.
//!
//! 1. **Plan.** Walk the folders; a file whose size and mtime match its record (and whose
//!    record is not "racy", see [`RACY_WINDOW_NS`]) is unchanged without being read. Other
//!    files are hashed (blake3, in parallel). A hash already in the index (a moved, renamed
//!    or duplicated file) reuses its vectors; only new contents are queued for the models,
//!    once per distinct content.
//! 2. **Pipeline.** A producer thread decodes the next batch on a thread pool while the
//!    calling thread runs the models on the current one (a bounded channel of one batch
//!    keeps memory flat).
//! 3. **Commit.** Each batch — its vectors, its files, its skipped files — is one
//!    transaction. Killing the process at any point leaves the index as of the last commit;
//!    the next run re-plans from the database and finishes the job, with no duplicates
//!    (paths and hashes are primary keys) and nothing missing.
//!
//! Bad input never stops the run: a file that cannot be read or decoded (empty, truncated,
//! corrupt, not an image, too many pixels) is recorded as skipped with its reason. A model
//! batch that fails is retried image by image so that one poisonous image is skipped alone;
//! if every image of the batch fails on its own too, the models are broken and the run stops
//! (with everything committed so far kept).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use capmatch_core::image_io::{decode_file, DecodeLimits};
use capmatch_core::RgbImage;
use rayon::prelude::*;

use crate::models::GalleryModels;
use crate::store::{FileRecord, ImageRecord, SkipRecord, Store, TrackedFile, WriteBatch};
use crate::walk::{collect_candidates, Candidate};

/// A file modified within this window before its record was written may have changed again
/// within the same mtime tick (coarse filesystem timestamps), so it is re-hashed rather than
/// trusted by stat (git's "racy clean" problem).
pub const RACY_WINDOW_NS: i64 = 2_000_000_000;

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
}

impl IndexOptions {
    pub fn new(roots: Vec<PathBuf>) -> Self {
        Self { roots, domain: None, batch_size: 8, limits: DecodeLimits::default(), prune: false, decode_threads: 0 }
    }
}

/// What a run did. Every candidate file is counted once in exactly one of
/// `indexed`, `reused`, `unchanged`, `skipped`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
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
    /// Records forgotten by `prune`.
    pub pruned: usize,
    /// Things in the folders that could not be walked (loops, dangling links...).
    pub walk_problems: usize,
    /// Model batches run (each is one caption + text + image call, more on retry).
    pub model_batches: usize,
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

/// Indexes `options.roots` into `store` with `models`. See the module documentation.
pub fn index_folders(
    store: &mut dyn Store,
    models: &mut dyn GalleryModels,
    options: &IndexOptions,
    observer: &dyn IndexObserver,
) -> anyhow::Result<IndexReport> {
    let started = Instant::now();
    // Refuse to mix before doing anything else.
    store.bind_models(&models.identity())?;
    let run_started_ns = now_ns();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(options.decode_threads)
        .thread_name(|i| format!("capmatch-decode-{i}"))
        .build()
        .context("cannot start the decoding threads")?;

    let walk = collect_candidates(&options.roots, options.domain.as_deref())?;
    let mut report = IndexReport { candidates: walk.candidates.len(), walk_problems: walk.problems.len(), ..Default::default() };
    for problem in &walk.problems {
        observer.walk_problem(&problem.path, &problem.message);
    }

    let tracked: HashMap<String, TrackedFile> =
        store.tracked_files()?.into_iter().map(|t| (t.path.clone(), t)).collect();
    let known = store.content_hashes()?;

    // --- Plan: stat shortcut, then hash what may have changed.
    let mut early = WriteBatch::default();
    let mut to_hash = Vec::new();
    for candidate in &walk.candidates {
        match tracked.get(&candidate.path) {
            Some(t)
                if t.skipped.is_none()
                    && t.size == candidate.size
                    && t.mtime_ns == candidate.mtime_ns
                    && t.mtime_ns < t.checked_at_ns - RACY_WINDOW_NS =>
            {
                report.unchanged += 1;
                if t.domain != candidate.domain {
                    early.files.push(file_record(candidate, t.hash.clone().unwrap_or_default(), t.checked_at_ns));
                }
            }
            _ => to_hash.push(candidate),
        }
    }
    let hashes: Vec<Result<String, String>> =
        pool.install(|| to_hash.par_iter().map(|c| hash_file(Path::new(&c.path))).collect());

    let mut units: Vec<WorkUnit> = Vec::new();
    let mut unit_of_hash: HashMap<String, usize> = HashMap::new();
    for (candidate, hash) in to_hash.into_iter().zip(hashes) {
        let hash = match hash {
            Ok(h) => h,
            Err(reason) => {
                early.skipped.push(skip_record(candidate, None, reason, run_started_ns));
                continue;
            }
        };
        let previous = tracked.get(&candidate.path);
        if previous.is_some_and(|t| t.skipped.is_none() && t.hash.as_deref() == Some(hash.as_str())) {
            // Same bytes, new stat (touched, copied over itself): refresh the stat only.
            report.unchanged += 1;
            early.files.push(file_record(candidate, hash, run_started_ns));
        } else if known.contains(&hash) {
            report.reused += 1;
            early.files.push(file_record(candidate, hash, run_started_ns));
        } else {
            match unit_of_hash.get(&hash) {
                Some(&i) => units[i].files.push(candidate.clone()),
                None => {
                    unit_of_hash.insert(hash.clone(), units.len());
                    units.push(WorkUnit { hash, files: vec![candidate.clone()] });
                }
            }
        }
    }
    for s in &early.skipped {
        observer.skipped(&s.path, &s.reason);
    }
    report.skipped += early.skipped.len();
    store.apply(&early)?;

    // --- Pipeline: decode batch i+1 while the models run batch i.
    let total_files: usize = units.iter().map(|u| u.files.len()).sum();
    observer.started(total_files);
    let batch_size = options.batch_size.max(1);
    let limits = options.limits;
    let mut done = 0usize;
    std::thread::scope(|scope| -> anyhow::Result<()> {
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
            let batch_files: usize = batch.iter().map(|d| d.unit.files.len()).sum();
            let mut write = WriteBatch::default();
            let mut ready: Vec<(&WorkUnit, RgbImage)> = Vec::with_capacity(batch.len());
            for d in batch {
                match d.image {
                    Ok(image) => ready.push((d.unit, image)),
                    Err(reason) => {
                        for f in &d.unit.files {
                            write.skipped.push(skip_record(f, Some(d.unit.hash.clone()), reason.clone(), run_started_ns));
                        }
                    }
                }
            }
            if !ready.is_empty() {
                let images: Vec<RgbImage> = ready.iter().map(|(_, img)| img.clone()).collect();
                report.model_batches += 1;
                match run_models(models, &images) {
                    Ok(computed) => {
                        for ((unit, image), c) in ready.iter().zip(computed) {
                            push_computed(&mut write, unit, image, c, run_started_ns);
                            report.indexed += unit.files.len();
                        }
                    }
                    Err(batch_err) if ready.len() > 1 => {
                        // Find the image(s) the models choke on; keep the others.
                        let mut any_ok = false;
                        let mut failures = Vec::new();
                        for (unit, image) in &ready {
                            report.model_batches += 1;
                            match run_models(models, std::slice::from_ref(image)) {
                                Ok(mut c) => {
                                    any_ok = true;
                                    push_computed(&mut write, unit, image, c.remove(0), run_started_ns);
                                    report.indexed += unit.files.len();
                                }
                                Err(e) => failures.push((*unit, e)),
                            }
                        }
                        if !any_ok {
                            return Err(batch_err.context("the models failed on every image of a batch"));
                        }
                        for (unit, e) in failures {
                            for f in &unit.files {
                                write.skipped.push(skip_record(f, Some(unit.hash.clone()), format!("model error: {e:#}"), run_started_ns));
                            }
                        }
                    }
                    Err(e) => {
                        return Err(e.context(format!("the models failed on {}", ready[0].0.files[0].path)));
                    }
                }
            }
            for s in &write.skipped {
                observer.skipped(&s.path, &s.reason);
            }
            report.skipped += write.skipped.len();
            store.apply(&write)?;
            done += batch_files;
            observer.progressed(done);
        }
        Ok(())
    })?;

    if options.prune {
        let seen: std::collections::HashSet<&str> = walk.candidates.iter().map(|c| c.path.as_str()).collect();
        let gone: Vec<String> = tracked
            .keys()
            .filter(|p| !seen.contains(p.as_str()) && !Path::new(p).exists())
            .cloned()
            .collect();
        report.pruned = store.forget(&gone)?;
    }
    tracing::debug!("index run took {:.2?}", started.elapsed());
    Ok(report)
}

fn file_record(c: &Candidate, hash: String, checked_at_ns: i64) -> FileRecord {
    FileRecord { path: c.path.clone(), hash, size: c.size, mtime_ns: c.mtime_ns, domain: c.domain.clone(), checked_at_ns }
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

fn push_computed(write: &mut WriteBatch, unit: &WorkUnit, image: &RgbImage, c: Computed, checked_at_ns: i64) {
    write.images.push(ImageRecord {
        hash: unit.hash.clone(),
        width: image.width(),
        height: image.height(),
        captions: c.captions,
        image_embedding: c.image_embedding,
        caption_embeddings: c.caption_embeddings,
    });
    for f in &unit.files {
        write.files.push(file_record(f, unit.hash.clone(), checked_at_ns));
    }
}

/// Captions, caption embeddings and image embeddings of one batch, validated.
fn run_models(models: &mut dyn GalleryModels, images: &[RgbImage]) -> anyhow::Result<Vec<Computed>> {
    let captions = models.caption(images).context("captioning")?;
    if captions.len() != images.len() {
        bail!("the captioner returned {} caption lists for {} images", captions.len(), images.len());
    }
    if let Some(i) = captions.iter().position(|c| c.is_empty()) {
        bail!("the captioner returned no caption for image {i} of the batch");
    }
    let texts: Vec<&str> = captions.iter().flatten().map(String::as_str).collect();
    let text_embeddings = models.embed_texts(&texts).context("embedding captions")?;
    if text_embeddings.len() != texts.len() {
        bail!("the text encoder returned {} embeddings for {} captions", text_embeddings.len(), texts.len());
    }
    let image_embeddings = models.embed_images(images).context("embedding images")?;
    if image_embeddings.len() != images.len() {
        bail!("the image encoder returned {} embeddings for {} images", image_embeddings.len(), images.len());
    }
    let dim = image_embeddings[0].len();
    let mut text_embeddings = text_embeddings.into_iter();
    let mut out = Vec::with_capacity(images.len());
    for (caps, image_embedding) in captions.into_iter().zip(image_embeddings) {
        let image_embedding = normalised(image_embedding, dim).context("image embedding")?;
        let mut caption_embeddings = Vec::with_capacity(caps.len() * dim);
        for _ in 0..caps.len() {
            let e = text_embeddings.next().expect("counted above");
            caption_embeddings.extend(normalised(e, dim).context("caption embedding")?);
        }
        out.push(Computed { captions: caps, image_embedding, caption_embeddings });
    }
    Ok(out)
}

/// L2-normalises `v` (a no-op up to rounding for the already-normalised CLIP outputs), and
/// rejects what cannot be a cosine-comparable vector.
fn normalised(mut v: Vec<f32>, dim: usize) -> anyhow::Result<Vec<f32>> {
    if v.len() != dim || dim == 0 {
        bail!("vector of dimension {} where {dim} was expected", v.len());
    }
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if !norm.is_finite() || norm == 0.0 {
        bail!("vector is zero or not finite");
    }
    v.iter_mut().for_each(|x| *x /= norm);
    Ok(v)
}
