//! Background index jobs (`POST /api/index`) and their progress (`GET /api/jobs/{id}`).
//!
//! Jobs run one at a time, in the order they were submitted, on one thread: the engine has
//! one writer, and two jobs over overlapping folders would only race each other. Each job
//! is an [`Engine::index_folders`] run whose observer records its progress; searches go on
//! meanwhile and see each committed batch. Shutting down sets the runs' cancel flag: the
//! batch in the models commits, nothing after it starts, queued jobs never start.
//!
//! A job must not make the page slow. Its models run in their own thread pool whose threads
//! (and the decoding threads they start) have a lower scheduling priority than the
//! searches, so a search runs as soon as it arrives and the job takes what is left of the
//! CPUs. On the shared global pool a search's kernels queued behind the captioner's, and a
//! text search took seconds instead of tens of milliseconds (tools/bench/serve_load.sh).

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
        let handle = spawn_in_background("capmatch-index-jobs", move || jobs.run(&engine, &template, &progress, receiver))
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

/// Runs `work` on a new thread of lower priority ([`JOB_NICENESS`]), inside a rayon pool
/// of as many threads as the shared one, started from that thread and so of the same
/// priority: the models' kernels called from `work` run there, not on the searches' pool.
fn spawn_in_background<T: Send + 'static>(name: &str, work: impl FnOnce() -> T + Send + 'static) -> std::io::Result<JoinHandle<T>> {
    let prefix = name.to_owned();
    std::thread::Builder::new().name(name.into()).spawn(move || {
        // Threads inherit their creator's priority: lower this one before the pool (and,
        // inside an index run, the decoding pool) is started from it.
        lower_this_threads_priority();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(rayon::current_num_threads())
            .thread_name(move |i| format!("{prefix}-{i}"))
            .build();
        match pool {
            Ok(pool) => pool.install(work),
            Err(e) => {
                tracing::warn!("index jobs run on the shared threads (cannot start their own: {e})");
                work()
            }
        }
    })
}

/// How much the index jobs' threads yield to the searches' (Linux nice value: at 10 the
/// scheduler gives a job about a tenth of a CPU that a search wants, all of one it does not).
const JOB_NICENESS: i32 = 10;

/// Lowers the calling thread's scheduling priority to [`JOB_NICENESS`]. On Linux a nice
/// value belongs to a thread, not the process; elsewhere (where it is per process) nothing
/// is done rather than slow the searches too.
#[allow(unsafe_code)]
fn lower_this_threads_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain system calls on the calling thread's own id.
        let result = unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, JOB_NICENESS)
        };
        if result != 0 {
            tracing::warn!("index jobs keep the searches' priority: {}", std::io::Error::last_os_error());
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use rayon::prelude::*;

    /// The calling thread's nice value.
    #[allow(unsafe_code)]
    fn niceness() -> i32 {
        // SAFETY: getpriority on the calling thread's own id cannot fail.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::syscall(libc::SYS_gettid) as libc::id_t) }
    }

    /// Every thread a job's work runs on (its own, its pool's, a pool it starts) is niced;
    /// the caller and the shared pool, where searches run, are not.
    #[test]
    fn background_work_runs_below_the_searches() {
        let before = niceness();
        let seen = spawn_in_background("test-job", || {
            let own = niceness();
            let pool: Vec<i32> = (0..64).into_par_iter().map(|_| niceness()).collect();
            let nested = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
            let started: Vec<i32> = nested.install(|| (0..64).into_par_iter().map(|_| niceness()).collect());
            (own, pool, started)
        })
        .unwrap()
        .join()
        .unwrap();
        let expected = (before + JOB_NICENESS).min(19);
        assert_eq!(seen.0, expected);
        assert!(seen.1.iter().all(|&n| n == expected), "{:?}", seen.1);
        assert!(seen.2.iter().all(|&n| n == expected), "{:?}", seen.2);
        assert_eq!(niceness(), before, "the caller keeps its priority");
        let shared: Vec<i32> = rayon::ThreadPoolBuilder::new().build().unwrap().install(|| (0..64).into_par_iter().map(|_| niceness()).collect());
        assert!(shared.iter().all(|&n| n == before), "{shared:?}");
    }
}
