//! `/metrics`: Prometheus counters and histograms of one server.
//!
//! Each server has its own registry (not a process-wide one), so that several servers in
//! one process, as in the tests, count separately. Requests are labelled by route pattern
//! (`/api/images/{id}`), never by the raw path, so the number of series stays bounded.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use capmatch_engine::BatchStats;
use prometheus::{Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::state::AppState;

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    batch_searches: Histogram,
    batch_seconds: Histogram,
    pub gallery_images: IntGauge,
    pub jobs: IntGaugeVec,
    pub job_files: IntCounter,
    pub uploads: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("capmatch".into()), None).expect("a valid prefix");
        let requests = IntCounterVec::new(
            Opts::new("http_requests_total", "HTTP requests answered, by route, method and status"),
            &["endpoint", "method", "status"],
        )
        .expect("valid metric");
        let latency = HistogramVec::new(
            HistogramOpts::new("http_request_duration_seconds", "Time to answer an HTTP request, by route")
                .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            &["endpoint"],
        )
        .expect("valid metric");
        let batch_searches = Histogram::with_opts(
            HistogramOpts::new("search_batch_size", "Searches embedded and scored together in one model batch")
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]),
        )
        .expect("valid metric");
        let batch_seconds = Histogram::with_opts(
            HistogramOpts::new("search_batch_duration_seconds", "Time to run one batch of searches")
                .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]),
        )
        .expect("valid metric");
        let gallery_images = IntGauge::new("gallery_images", "Images in the gallery").expect("valid metric");
        let jobs = IntGaugeVec::new(Opts::new("index_jobs", "Index jobs by state"), &["state"]).expect("valid metric");
        let job_files =
            IntCounter::new("index_job_files_total", "Files index jobs have finished (committed or skipped)").expect("valid metric");
        let uploads =
            IntCounterVec::new(Opts::new("uploads_total", "Uploaded images, by outcome"), &["outcome"]).expect("valid metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(batch_searches.clone()),
            Box::new(batch_seconds.clone()),
            Box::new(gallery_images.clone()),
            Box::new(jobs.clone()),
            Box::new(job_files.clone()),
            Box::new(uploads.clone()),
        ] {
            registry.register(c).expect("metric names are distinct");
        }
        Self { registry, requests, latency, batch_searches, batch_seconds, gallery_images, jobs, job_files, uploads }
    }

    /// Records one search batch (called by the engine's batcher).
    pub fn observe_batch(&self, stats: &BatchStats) {
        self.batch_searches.observe(stats.searches as f64);
        self.batch_seconds.observe(stats.elapsed.as_secs_f64());
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("encoding to memory");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Middleware: counts and times every request.
pub async fn record(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let endpoint = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "unmatched".into());
    let method = request.method().as_str().to_owned();
    let response = next.run(request).await;
    let metrics = state.metrics();
    metrics.requests.with_label_values(&[endpoint.as_str(), method.as_str(), response.status().as_str()]).inc();
    metrics.latency.with_label_values(&[endpoint.as_str()]).observe(started.elapsed().as_secs_f64());
    response
}
