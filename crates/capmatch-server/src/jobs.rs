//! Background index jobs (`POST /api/index`) and their progress (`GET /api/jobs/{id}`).
//!
//! Jobs run one at a time, in the order they were submitted, on one thread: the engine has
//! one writer, and two jobs over overlapping folders would only race each other. Each job
//! is an [`Engine::index_folders`] run whose observer records its progress; searches go on
//! meanwhile and see each committed batch. Shutting down sets the runs' cancel flag: the
//! batch in the models commits, nothing after it starts, queued jobs never start.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use capmatch_engine::{Engine, IndexObserver, IndexOptions, IndexReport};
use serde::Serialize;

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Done,
    Failed,
    /// Stopped by a shutdown (what was committed stays; indexing the folder again finishes it).
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 5] = [JobState::Queued, JobState::Running, JobState::Done, JobState::Failed, JobState::Cancelled];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }
}

/// What `GET /api/jobs/{id}` answers.
#[derive(Debug, Clone, Serialize)]
pub struct JobStatus {
    pub id: u64,
    pub state: JobState,
    /// The folder being indexed.
    pub path: PathBuf,
    pub domain: Option<String>,
    /// Files the models have to look at, once planning is over.
    pub total: Option<usize>,
    /// Of which finished (committed, or skipped with a reason).
    pub done: usize,
    /// Files skipped so far.
    pub skipped: usize,
    /// The run's counts, once it is over.
    pub report: Option<IndexReport>,
    pub error: Option<String>,
    /// Unix times in seconds.
    pub submitted_at: f64,
    pub started_at: Option<f64>,
    pub finished_at: Option<f64>,
}

/// A job to run.
pub struct JobSpec {
    pub path: PathBuf,
    pub domain: Option<String>,
    pub prune: bool,
}

type Shared = Arc<Mutex<JobStatus>>;

/// The jobs of one server.
pub struct Jobs {
    table: Mutex<BTreeMap<u64, (Shared, Option<JobSpec>)>>,
    next_id: Mutex<u64>,
    cancel: Arc<AtomicBool>,
    queue: Mutex<Option<Sender<u64>>>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Called with the number of files a job finished since the last call (for metrics).
pub type Progress = Arc<dyn Fn(usize) + Send + Sync>;

impl Jobs {
    pub fn new() -> Self {
        Self {
            table: Mutex::new(BTreeMap::new()),
            next_id: Mutex::new(1),
            cancel: Arc::new(AtomicBool::new(false)),
            queue: Mutex::new(None),
            worker: Mutex::new(None),
        }
    }

    /// Starts the job thread over `engine` (a writer). `template` gives the options every
    /// run shares (batch size, decode limits).
    pub fn start(self: &Arc<Self>, engine: Arc<Engine>, template: IndexOptions, progress: Progress) {
        let (sender, receiver) = std::sync::mpsc::channel();
        *lock(&self.queue) = Some(sender);
        let jobs = self.clone();
        let handle = std::thread::Builder::new()
            .name("capmatch-index-jobs".into())
            .spawn(move || jobs.run(&engine, &template, &progress, receiver))
            .expect("cannot start the index job thread");
        *lock(&self.worker) = Some(handle);
    }

    /// Queues a job; returns its status. `None` when jobs cannot run (no writer engine, or
    /// shutting down).
    pub fn submit(&self, spec: JobSpec) -> Option<JobStatus> {
        let queue = lock(&self.queue);
        let sender = queue.as_ref()?;
        if self.cancel.load(Ordering::SeqCst) {
            return None;
        }
        let id = {
            let mut next = lock(&self.next_id);
            let id = *next;
            *next += 1;
            id
        };
        let status = JobStatus {
            id,
            state: JobState::Queued,
            path: spec.path.clone(),
            domain: spec.domain.clone(),
            total: None,
            done: 0,
            skipped: 0,
            report: None,
            error: None,
            submitted_at: now(),
            started_at: None,
            finished_at: None,
        };
        lock(&self.table).insert(id, (Arc::new(Mutex::new(status.clone())), Some(spec)));
        sender.send(id).ok()?;
        Some(status)
    }

    pub fn get(&self, id: u64) -> Option<JobStatus> {
        lock(&self.table).get(&id).map(|(s, _)| lock(s).clone())
    }

    /// How many jobs are in each state.
    pub fn counts(&self) -> Vec<(JobState, usize)> {
        let table = lock(&self.table);
        JobState::ALL
            .iter()
            .map(|state| (*state, table.values().filter(|(s, _)| lock(s).state == *state).count()))
            .collect()
    }

    /// Stops the jobs: the running one at its next batch boundary, the queued ones at once.
    /// Returns at once; [`Jobs::wait`] waits for the running batch to commit.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
        lock(&self.queue).take();
    }

    /// Waits for the job thread to finish (after [`Jobs::cancel`]).
    pub fn wait(&self) {
        let handle = lock(&self.worker).take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }

    fn run(&self, engine: &Engine, template: &IndexOptions, progress: &Progress, receiver: Receiver<u64>) {
        for id in receiver {
            let Some((status, spec)) = lock(&self.table).get_mut(&id).map(|(s, spec)| (s.clone(), spec.take())) else {
                continue;
            };
            let Some(spec) = spec else { continue };
            if self.cancel.load(Ordering::SeqCst) {
                let mut s = lock(&status);
                s.state = JobState::Cancelled;
                s.finished_at = Some(now());
                continue;
            }
            {
                let mut s = lock(&status);
                s.state = JobState::Running;
                s.started_at = Some(now());
            }
            let options = IndexOptions {
                roots: vec![spec.path.clone()],
                domain: spec.domain.clone(),
                prune: spec.prune,
                cancel: Some(self.cancel.clone()),
                ..template.clone()
            };
            let observer = JobObserver { status: &status, progress: progress.as_ref(), reported: Mutex::new(0) };
            let result = engine.index_folders(&options, &observer);
            let mut s = lock(&status);
            s.finished_at = Some(now());
            match result {
                Ok(report) => {
                    s.state = if report.cancelled { JobState::Cancelled } else { JobState::Done };
                    s.report = Some(report);
                }
                Err(e) => {
                    tracing::error!("index job {id} ({}) failed: {e:#}", spec.path.display());
                    s.state = JobState::Failed;
                    s.error = Some(format!("{e:#}"));
                }
            }
        }
        // The queue is closed: whatever was still queued never runs.
        for (status, spec) in lock(&self.table).values_mut() {
            if spec.take().is_some() {
                let mut s = lock(status);
                s.state = JobState::Cancelled;
                s.finished_at = Some(now());
            }
        }
    }
}

impl Default for Jobs {
    fn default() -> Self {
        Self::new()
    }
}

struct JobObserver<'a> {
    status: &'a Mutex<JobStatus>,
    progress: &'a (dyn Fn(usize) + Send + Sync),
    reported: Mutex<usize>,
}

impl IndexObserver for JobObserver<'_> {
    fn started(&self, files: usize) {
        lock(self.status).total = Some(files);
    }

    fn progressed(&self, done: usize) {
        lock(self.status).done = done;
        let mut reported = lock(&self.reported);
        (self.progress)(done.saturating_sub(*reported));
        *reported = done;
    }

    fn skipped(&self, path: &str, reason: &str) {
        tracing::warn!("skipped {path}: {reason}");
        lock(self.status).skipped += 1;
    }
}
