//! Dynamic batching of searches: concurrent queries are embedded together.
//!
//! A front end that answers many clients at once (the server) submits each search to a
//! [`SearchBatcher`] rather than calling [`Engine::search`] on its own thread. A worker
//! thread takes the oldest waiting search, then every other one already queued or arriving
//! within [`BatchConfig::max_wait`] of it, up to [`BatchConfig::max_batch`], and runs them
//! as one [`Engine::search_many`], which embeds their texts in one model call and their
//! images in another and scans the gallery once for all of them. While the worker is busy
//! the queue fills, so batches grow with the load and so does throughput; a lone query
//! waits at most `max_wait` (the design of text-embeddings-inference's queue).
//!
//! Answers are those of one search at a time: the same hits in the same order, scores equal
//! to float rounding (CLIP's vectors change in their last bits with the batch they are
//! computed in: texts are padded to the longest, and the matrix products sum in an order
//! that follows the shapes). A request that fails (a bad image, an unknown id) fails alone. Each
//! request is checked and its image decoded before it joins a batch, in parallel; should
//! a whole batch still fail, its requests are run again one by one so that each gets its
//! own answer.
//!
//! The engine stays synchronous: [`SearchBatcher::submit`] takes a callback that receives
//! the answer on the worker thread (an async front end sends it on to a oneshot channel),
//! and [`SearchBatcher::search`] waits for it.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use rayon::prelude::*;

use crate::error::{EngineError, Result};
use crate::search::{Query, SearchRequest, SearchResponse};
use crate::Engine;

/// How searches are grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    /// Most searches run together.
    pub max_batch: usize,
    /// Longest a search waits for others to join its batch.
    pub max_wait: Duration,
    /// Threads running batches. One is right for a CPU: the models already use every core
    /// for one batch, and a second worker would only split them.
    pub workers: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self { max_batch: 32, max_wait: Duration::from_millis(2), workers: 1 }
    }
}

/// What one batch was, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchStats {
    /// Searches in the batch (after those refused on their own were answered).
    pub searches: usize,
    /// Of which text queries (embedded in one text-model call).
    pub texts: usize,
    /// Of which image queries (embedded in one image-model call).
    pub images: usize,
    /// From the batch's start to its last answer.
    pub elapsed: Duration,
}

/// Called once per batch run, on the worker thread.
pub type BatchObserver = Arc<dyn Fn(&BatchStats) + Send + Sync>;

type Reply = Box<dyn FnOnce(Result<SearchResponse>) + Send>;

struct Job {
    request: SearchRequest,
    reply: Reply,
}

/// A queue of searches and the worker threads that run them in batches. Dropping it
/// answers what is queued and stops the workers.
pub struct SearchBatcher {
    sender: Option<Sender<Job>>,
    workers: Vec<JoinHandle<()>>,
}

impl SearchBatcher {
    /// Starts the workers over `engine`.
    pub fn start(engine: Arc<Engine>, config: BatchConfig, observer: Option<BatchObserver>) -> Self {
        let (sender, receiver) = crossbeam_channel::unbounded::<Job>();
        let workers = (0..config.workers.max(1))
            .map(|i| {
                let engine = engine.clone();
                let receiver = receiver.clone();
                let observer = observer.clone();
                std::thread::Builder::new()
                    .name(format!("capmatch-search-{i}"))
                    .spawn(move || run_worker(&engine, &receiver, config, observer.as_deref()))
                    .expect("cannot start a search thread")
            })
            .collect();
        Self { sender: Some(sender), workers }
    }

    /// Queues a search; `reply` is called with its answer, on a worker thread.
    pub fn submit(&self, request: SearchRequest, reply: impl FnOnce(Result<SearchResponse>) + Send + 'static) {
        let job = Job { request, reply: Box::new(reply) };
        let sender = self.sender.as_ref().expect("the batcher is running until dropped");
        if let Err(crossbeam_channel::SendError(job)) = sender.send(job) {
            // Only if every worker is gone (a worker panicked): say so rather than hang.
            (job.reply)(Err(EngineError::Other(anyhow::anyhow!("the search threads have stopped"))));
        }
    }

    /// Queues a search and waits for its answer.
    pub fn search(&self, request: SearchRequest) -> Result<SearchResponse> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.submit(request, move |answer| {
            let _ = tx.send(answer);
        });
        rx.recv().map_err(|_| EngineError::Other(anyhow::anyhow!("a search thread stopped without answering")))?
    }
}

impl Drop for SearchBatcher {
    fn drop(&mut self) {
        self.sender.take();
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

fn run_worker(engine: &Engine, receiver: &Receiver<Job>, config: BatchConfig, observer: Option<&(dyn Fn(&BatchStats) + Send + Sync)>) {
    let max_batch = config.max_batch.max(1);
    while let Ok(first) = receiver.recv() {
        let deadline = Instant::now() + config.max_wait;
        let mut jobs = vec![first];
        while jobs.len() < max_batch {
            match receiver.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => match receiver.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(job) => jobs.push(job),
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                },
            }
        }
        // A panic in a model must not take the worker down with it: that batch's callers
        // are told their search stopped (their callbacks are dropped), the next batch runs.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_batch(engine, jobs, observer)));
    }
}

fn run_batch(engine: &Engine, jobs: Vec<Job>, observer: Option<&(dyn Fn(&BatchStats) + Send + Sync)>) {
    let started = Instant::now();
    // Checks and image decoding, in parallel; a request refused here is answered at once.
    let prepared: Vec<(Result<SearchRequest>, Reply)> =
        jobs.into_par_iter().map(|job| (engine.prepared(job.request), job.reply)).collect();
    let mut requests = Vec::with_capacity(prepared.len());
    let mut replies = Vec::with_capacity(prepared.len());
    for (request, reply) in prepared {
        match request {
            Ok(r) => {
                requests.push(r);
                replies.push(reply);
            }
            Err(e) => reply(Err(e)),
        }
    }
    if requests.is_empty() {
        return;
    }
    let stats = BatchStats {
        searches: requests.len(),
        texts: requests.iter().filter(|r| matches!(r.query, Query::Text(_))).count(),
        images: requests.iter().filter(|r| matches!(r.query, Query::Image(_))).count(),
        elapsed: Duration::ZERO,
    };
    let answers: Vec<Result<SearchResponse>> = match engine.search_many(&requests) {
        Ok(responses) => responses.into_iter().map(Ok).collect(),
        Err(e) if requests.len() == 1 => vec![Err(e)],
        // Something only visible to the search itself (an id gone since the check, a model
        // failure): each request gets its own answer.
        Err(_) => requests.iter().map(|request| engine.search(request)).collect(),
    };
    // The batch is observed before any of its searches is answered, so whoever holds an
    // answer also finds its batch in the statistics (a test, the server's /metrics).
    if let Some(observe) = observer {
        observe(&BatchStats { elapsed: started.elapsed(), ..stats });
    }
    for (reply, answer) in replies.into_iter().zip(answers) {
        reply(answer);
    }
}
