//! capmatch-server: `capmatch serve`, an HTTP API and a web page over one gallery.
//!
//! A thin layer over `capmatch-engine` (as text-embeddings-inference's router is over its
//! core): the engine searches, indexes, batches concurrent queries and classifies errors;
//! this crate maps routes to engine calls and engine errors to statuses.
//!
//! | module | job |
//! | --- | --- |
//! | [`router`] | the routes; the small handlers (health, info, uploads, index jobs, metrics) |
//! | [`search`] | `POST /api/search`: JSON or multipart query → engine request → hits with URLs |
//! | [`images`] | originals and cached thumbnails, by image id only |
//! | [`clip_retrieval`] | `/knn-service`, `/metadata`, `/indices-list` as clip-back answers them |
//! | [`jobs`] | background index jobs with progress |
//! | [`auth`] | the bearer token of the write endpoints |
//! | [`error`] | engine errors → status + `{"error": ...}` |
//! | [`metrics`] | `/metrics` (Prometheus) |
//! | [`assets`] | the embedded web page |
//! | [`state`] | what the handlers share; 503 until the engine is ready |
//!
//! The server listens at once and loads the models in the background; `/healthz` says
//! `ok` when they are loaded. With a token file the gallery is opened as its writer
//! (uploads and index jobs enabled, one writer per gallery); without one, as a reader,
//! which also follows the commits of a `capmatch index` running in another process.
//! SIGTERM or Ctrl-C stops accepting requests, lets the running index job commit its
//! batch, and exits.

#![deny(unsafe_code)] // only the index jobs' thread priority (jobs.rs) opts out

pub mod assets;
pub mod auth;
pub mod clip_retrieval;
pub mod error;
pub mod images;
pub mod jobs;
pub mod metrics;
pub mod router;
pub mod search;
pub mod state;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use capmatch_core::image_io::DecodeLimits;
use capmatch_core::{Device, RgbImage};
use capmatch_engine::{BatchConfig, Dtype, Engine, EngineError, ModelConfig, Models, QueryModels, Shard, VectorStore};

pub use router::{router, RouterOptions};
pub use state::{AppState, Settings};

use auth::Auth;

/// Which models the server runs; each `None` is the gallery's own (as recorded in its
/// index), else the default.
#[derive(Debug, Clone)]
pub struct ModelChoice {
    pub clip: Option<String>,
    pub captioner: Option<String>,
    pub dtype: Option<Dtype>,
    pub prompt: Option<String>,
    pub device: Device,
}

impl Default for ModelChoice {
    fn default() -> Self {
        Self { clip: None, captioner: None, dtype: None, prompt: None, device: Device::Cpu }
    }
}

/// Everything `capmatch serve` is told.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub db: PathBuf,
    /// Where the gallery's vectors are (the catalog of files is `db`).
    pub store: VectorStore,
    pub host: String,
    /// 0: any free port (tests).
    pub port: u16,
    /// The write endpoints' bearer token; `None`: a read-only server.
    pub token_file: Option<PathBuf>,
    pub max_upload_bytes: usize,
    /// Folders `POST /api/index` may index (and their subfolders).
    pub allow_index_roots: Vec<PathBuf>,
    /// Origins allowed to call the API from a browser (CORS); empty: none.
    pub cors: Vec<String>,
    /// A static folder served at `/inspect`.
    pub inspect_dir: Option<PathBuf>,
    pub models: ModelChoice,
    pub batch: BatchConfig,
    /// Images per model batch in uploads and index jobs.
    pub index_batch_size: usize,
    pub request_timeout: Duration,
    pub limits: DecodeLimits,
}

impl ServerConfig {
    /// The defaults of `capmatch serve` for the gallery at `db`.
    pub fn new(db: PathBuf) -> Self {
        Self {
            db,
            store: VectorStore::Local,
            host: "127.0.0.1".into(),
            port: 7860,
            token_file: None,
            max_upload_bytes: 20 << 20,
            allow_index_roots: Vec::new(),
            cors: Vec::new(),
            inspect_dir: None,
            models: ModelChoice::default(),
            batch: BatchConfig::default(),
            index_batch_size: 8,
            request_timeout: Duration::from_secs(120),
            limits: DecodeLimits::default(),
        }
    }

    /// The settings the handlers see: paths made absolute and canonical, the token read.
    fn settings(&self) -> anyhow::Result<Settings> {
        let auth = match &self.token_file {
            Some(path) => Auth::from_file(path)?,
            None => Auth::read_only(),
        };
        let mut allowed_roots = Vec::new();
        for root in &self.allow_index_roots {
            let canonical = root.canonicalize().with_context(|| format!("--allow-index-root {}", root.display()))?;
            anyhow::ensure!(canonical.is_dir(), "--allow-index-root {} is not a folder", root.display());
            allowed_roots.push(canonical);
        }
        if !allowed_roots.is_empty() && !auth.writable() {
            tracing::warn!("--allow-index-root has no effect without --token-file (the server is read-only)");
        }
        let inspect_dir = match &self.inspect_dir {
            Some(dir) => {
                let canonical = dir.canonicalize().with_context(|| format!("--inspect-dir {}", dir.display()))?;
                anyhow::ensure!(canonical.is_dir(), "--inspect-dir {} is not a folder", dir.display());
                Some(canonical)
            }
            None => None,
        };
        Ok(Settings {
            db: capmatch_engine::absolute(&self.db),
            auth,
            max_upload_bytes: self.max_upload_bytes,
            allowed_roots,
            index_batch_size: self.index_batch_size.max(1),
            limits: self.limits,
            inspect_dir,
        })
    }

    fn router_options(&self) -> anyhow::Result<RouterOptions> {
        let cors_origins = self
            .cors
            .iter()
            .map(|o| o.trim_end_matches('/').parse().with_context(|| format!("--cors {o}: not a valid origin")))
            .collect::<anyhow::Result<_>>()?;
        Ok(RouterOptions { request_timeout: self.request_timeout, cors_origins })
    }
}

/// Opens the gallery as `capmatch serve` does: as its writer with a token file, else as a
/// reader; then loads the models (a first call to each), so that the first query does not
/// pay for it.
pub fn open_engine(config: &ServerConfig, writable: bool) -> anyhow::Result<Engine> {
    let db = capmatch_engine::absolute(&config.db);
    let choice = &config.models;
    let engine = if writable {
        // The gallery's own models unless told otherwise: serving an index needs no flags.
        let recorded = if db.exists() { Engine::open_reader_in(&db, &config.store, QueryModels::default())?.identity()? } else { None };
        let model_config = ModelConfig {
            clip: choice.clip.clone().or_else(|| recorded.as_ref().map(|r| r.clip.clone())).unwrap_or_else(|| ModelConfig::default().clip),
            captioner: choice
                .captioner
                .clone()
                .or_else(|| recorded.as_ref().map(|r| r.captioner.clone()))
                .unwrap_or_else(|| ModelConfig::default().captioner),
            dtype: choice.dtype,
            prompt: choice.prompt.clone().or_else(|| recorded.as_ref().filter(|_| choice.captioner.is_none()).map(|r| r.prompt.clone())),
            device: choice.device.clone(),
            ..ModelConfig::default()
        };
        let models = Arc::new(Models::new(&model_config)?);
        Engine::open_writer_in(&db, &config.store, Shard::ALL, models, false, &|_| {}).map_err(|e| match e {
            EngineError::Busy(_) => anyhow::anyhow!(
                "{} is being written by another capmatch process; stop it, or start the server without --token-file \
                 (read-only: it follows that process's commits)",
                db.display()
            ),
            e => e.into(),
        })?
    } else {
        if !db.exists() {
            anyhow::bail!(
                "no gallery at {}: index one first (capmatch index DIR --db {}), or start the server with --token-file \
                 to create it and upload images",
                db.display(),
                config.db.display()
            );
        }
        Engine::open_reader_in(
            &db,
            &config.store,
            QueryModels { clip: choice.clip.clone(), dtype: choice.dtype, device: Some(choice.device.clone()) },
        )?
    };
    let engine = engine.with_limits(config.limits);
    warm_up(&engine)?;
    Ok(engine)
}

fn warm_up(engine: &Engine) -> anyhow::Result<()> {
    if !engine.is_writer() && engine.identity()?.is_none() {
        tracing::warn!("{} holds no image yet: searches will fail until it is indexed", engine.db().display());
        return Ok(());
    }
    let models = engine.models()?;
    // Both towers: CLIP builds each on first use, and a server answers image queries too
    // (a broken checkpoint fails here, not on a stranger's first request).
    models.embed_texts(&["warm-up"]).context("loading the CLIP model's text tower")?;
    models
        .embed_images(&[RgbImage::from_pixel(32, 32, image::Rgb([255, 255, 255]))])
        .context("loading the CLIP model's vision tower")?;
    if engine.is_writer() {
        models.caption(&[RgbImage::from_pixel(32, 32, image::Rgb([255, 255, 255]))]).context("loading the captioner")?;
    }
    Ok(())
}

/// A server bound to its address, not yet answering.
pub struct Server {
    config: ServerConfig,
    listener: tokio::net::TcpListener,
    state: AppState,
    router: axum::Router,
}

impl Server {
    /// Checks the configuration and binds the address; nothing is loaded yet.
    pub async fn bind(config: ServerConfig) -> anyhow::Result<Self> {
        let settings = config.settings()?;
        let options = config.router_options()?;
        let listener = tokio::net::TcpListener::bind((config.host.as_str(), config.port))
            .await
            .with_context(|| format!("cannot listen on {}:{}", config.host, config.port))?;
        let state = AppState::new(settings);
        let router = router(state.clone(), &options);
        Ok(Self { config, listener, state, router })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    pub fn state(&self) -> AppState {
        self.state.clone()
    }

    /// Loads the engine in the background and answers requests until `shutdown` resolves
    /// (or the engine fails to load: then the error is returned). On shutdown, the running
    /// index job stops after its current batch, which commits.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let Server { config, listener, state, router } = self;
        let writable = state.settings().auth.writable();
        let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<anyhow::Error>();
        {
            let state = state.clone();
            let batch = config.batch;
            state.set_waiting_for("loading the models");
            tokio::task::spawn_blocking(move || match open_engine(&config, writable) {
                Ok(engine) => {
                    state.set_engine(engine, batch);
                    tracing::info!("ready");
                }
                Err(e) => {
                    let _ = failed_tx.send(e);
                }
            });
        }
        let failure: Arc<Mutex<Option<anyhow::Error>>> = Arc::default();
        let stop = {
            let failure = failure.clone();
            let state = state.clone();
            async move {
                let load_failed = async {
                    match failed_rx.await {
                        Ok(e) => e,
                        // Loaded: only `shutdown` stops the server now.
                        Err(_) => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = shutdown => tracing::info!("shutting down: finishing the running requests and index batch"),
                    e = load_failed => *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e),
                }
                state.jobs().cancel();
            }
        };
        axum::serve(listener, router).with_graceful_shutdown(stop).await.context("the HTTP server failed")?;
        tokio::task::spawn_blocking(move || {
            state.shut_down_jobs();
            state.close();
        })
        .await?;
        let failure = failure.lock().unwrap_or_else(|p| p.into_inner()).take();
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}

/// `capmatch serve`: binds, says where, serves until SIGTERM or Ctrl-C.
pub async fn serve(config: ServerConfig) -> anyhow::Result<()> {
    let writable = config.token_file.is_some();
    let server = Server::bind(config).await?;
    let addr = server.local_addr();
    if writable && !addr.ip().is_loopback() {
        tracing::warn!("the bearer token travels in clear over plain HTTP: put a TLS proxy in front of {addr}");
    }
    eprintln!(
        "capmatch serve: open http://{addr}/ ({}); loading the models...",
        if writable { "uploads and index jobs enabled" } else { "read-only" }
    );
    server.run(shutdown_signal()).await
}

/// [`serve`] on a runtime of its own, for a synchronous `main`.
pub fn serve_blocking(config: ServerConfig) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("capmatch-http")
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(serve(config));
    // A model still loading when the server was stopped is not waited for.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}
