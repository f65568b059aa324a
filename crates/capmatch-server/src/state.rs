//! What every handler shares: the settings, the engine once it is ready, the jobs, the
//! metrics.
//!
//! The server listens before the models are loaded (loading a large CLIP takes seconds,
//! a BLIP-2 minutes): until [`AppState::set_engine`] has run, `/healthz` and every endpoint
//! that needs the engine answer 503.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use capmatch_core::image_io::DecodeLimits;
use capmatch_engine::{BatchConfig, Engine, IndexOptions, SearchBatcher};

use crate::auth::Auth;
use crate::error::{ApiError, ApiResult};
use crate::jobs::Jobs;
use crate::metrics::Metrics;

/// How the server behaves, whatever its models.
#[derive(Clone)]
pub struct Settings {
    /// The gallery's catalog file.
    pub db: PathBuf,
    pub auth: Auth,
    /// Largest request body (uploads, query images).
    pub max_upload_bytes: usize,
    /// Folders under which `POST /api/index` may index (canonical paths). Empty: none.
    pub allowed_roots: Vec<PathBuf>,
    /// Images per model batch in uploads and index jobs.
    pub index_batch_size: usize,
    /// Decode limits for every image the server reads (uploads, queries, thumbnails).
    pub limits: DecodeLimits,
    /// A static folder served at `/inspect` (the inspection report).
    pub inspect_dir: Option<PathBuf>,
}

/// The engine and what runs over it, once loaded.
pub struct Ready {
    pub engine: Arc<Engine>,
    pub batcher: SearchBatcher,
}

struct Shared {
    settings: Settings,
    metrics: Arc<Metrics>,
    jobs: Arc<Jobs>,
    /// Set once the engine is loaded; emptied when the server has stopped, so that the
    /// gallery (and its writer lock) is released even while clones of the state live on.
    ready: RwLock<Option<Arc<Ready>>>,
    /// Why the engine is not ready yet (shown by the 503s).
    waiting_for: Mutex<String>,
}

/// Cheap to clone: one per request.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(settings: Settings) -> Self {
        Self(Arc::new(Shared {
            settings,
            metrics: Arc::new(Metrics::new()),
            jobs: Arc::new(Jobs::new()),
            ready: RwLock::new(None),
            waiting_for: Mutex::new("the server is starting".into()),
        }))
    }

    pub fn settings(&self) -> &Settings {
        &self.0.settings
    }

    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }

    pub fn jobs(&self) -> &Jobs {
        &self.0.jobs
    }

    /// Says what the server is waiting for (the 503s' message).
    pub fn set_waiting_for(&self, what: impl Into<String>) {
        *self.0.waiting_for.lock().unwrap_or_else(|p| p.into_inner()) = what.into();
    }

    pub fn is_ready(&self) -> bool {
        self.0.ready.read().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// The engine, or a 503 saying what the server is waiting for.
    pub fn ready(&self) -> ApiResult<Arc<Ready>> {
        self.0.ready.read().unwrap_or_else(|p| p.into_inner()).clone().ok_or_else(|| {
            let what = self.0.waiting_for.lock().unwrap_or_else(|p| p.into_inner()).clone();
            ApiError::unavailable(format!("not ready: {what}"))
        })
    }

    /// Puts `engine` to work: starts the search batcher and, for a writer, the job thread.
    /// From then on the server is ready.
    pub fn set_engine(&self, engine: Engine, batch: BatchConfig) {
        let engine = Arc::new(engine);
        let metrics = self.0.metrics.clone();
        let batcher =
            SearchBatcher::start(engine.clone(), batch, Some(Arc::new(move |stats: &capmatch_engine::BatchStats| metrics.observe_batch(stats))));
        if engine.is_writer() {
            let settings = &self.0.settings;
            let template = IndexOptions {
                batch_size: settings.index_batch_size.max(1),
                limits: settings.limits,
                ..IndexOptions::new(Vec::new())
            };
            let metrics = self.0.metrics.clone();
            self.0.jobs.start(engine.clone(), template, Arc::new(move |files| metrics.job_files.inc_by(files as u64)));
        }
        let mut ready = self.0.ready.write().unwrap_or_else(|p| p.into_inner());
        if ready.is_some() {
            tracing::warn!("the engine was set twice; the first one stays");
            return;
        }
        *ready = Some(Arc::new(Ready { engine, batcher }));
    }

    /// Stops the index jobs at their next batch boundary and waits for that batch to
    /// commit (blocking: call it off the async threads).
    pub fn shut_down_jobs(&self) {
        self.0.jobs.cancel();
        self.0.jobs.wait();
    }

    /// Lets go of the engine once the server has stopped (blocking: the search thread is
    /// joined when the last request holding it is done). From then on every endpoint
    /// answers 503 and the gallery can be opened by another writer.
    pub fn close(&self) {
        self.set_waiting_for("the server has stopped");
        let ready = self.0.ready.write().unwrap_or_else(|p| p.into_inner()).take();
        drop(ready);
    }
}
