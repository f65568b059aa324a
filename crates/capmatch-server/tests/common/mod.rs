//! A gallery of the real fixture images indexed with the tiny fixture models, and a server
//! over it on an ephemeral loopback port.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use capmatch_core::image_io::{decode_file, DecodeLimits};
use capmatch_core::RgbImage;
use capmatch_engine::{Engine, IndexObserver, IndexOptions, ModelConfig, Models};
use capmatch_server::{ModelChoice, Server, ServerConfig};

pub const TOKEN: &str = "test-token-0123456789abcdef";

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

pub fn clip_dir() -> String {
    workspace().join("fixtures/clip/tiny-quickgelu-p32").display().to_string()
}

pub fn captioner_dir() -> String {
    workspace().join("fixtures/blip/tiny-a").display().to_string()
}

pub fn models() -> Arc<Models> {
    let config = ModelConfig { clip: clip_dir(), captioner: captioner_dir(), ..ModelConfig::default() };
    Arc::new(Models::new(&config).unwrap())
}

/// The six real fixture images, by name, sorted.
pub fn real_images() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(workspace().join("fixtures/images/real"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    out.sort();
    out
}

/// Distinct images made from the fixtures (a brightness shift per copy), as PNG files.
pub fn write_variants(dir: &Path, n: usize, offset: usize) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    let bases: Vec<RgbImage> = real_images().iter().map(|p| decode_file(p, &DecodeLimits::default()).unwrap()).collect();
    (0..n)
        .map(|i| {
            let k = i + offset;
            let mut img = bases[k % bases.len()].clone();
            let shift = (k / bases.len() + 1) as u8;
            for p in img.pixels_mut() {
                p[1] = p[1].saturating_add(shift);
            }
            let path = dir.join(format!("v{k:04}.png"));
            img.save(&path).unwrap();
            path
        })
        .collect()
}

pub struct Gallery {
    pub tmp: tempfile::TempDir,
    pub db: PathBuf,
    /// The indexed files (cartoon/ and photo/ domains).
    pub files: Vec<PathBuf>,
}

/// Cartoons and photos in two domains, indexed into `<tmp>/gallery.db`.
pub fn gallery() -> Gallery {
    let tmp = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for src in real_images() {
        let name = src.file_name().unwrap().to_str().unwrap().to_owned();
        let domain = if name.starts_with("cartoon") { "cartoon" } else { "photo" };
        let dest = tmp.path().join("images").join(domain).join(&name);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(&src, &dest).unwrap();
        files.push(dest.canonicalize().unwrap());
    }
    let db = tmp.path().join("gallery.db");
    index(&db, &[tmp.path().join("images/cartoon"), tmp.path().join("images/photo")], &capmatch_engine::NoObserver);
    Gallery { tmp, db, files }
}

/// Indexes `roots` into `db` with the fixture models (a writer in this process).
pub fn index(db: &Path, roots: &[PathBuf], observer: &dyn IndexObserver) -> capmatch_engine::IndexReport {
    let engine = Engine::open_writer(db, models(), true, &|_| {}).unwrap();
    let mut options = IndexOptions::new(roots.to_vec());
    options.batch_size = 2;
    engine.index_folders(&options, observer).unwrap()
}

pub fn config(db: &Path) -> ServerConfig {
    ServerConfig {
        host: "127.0.0.1".into(),
        port: 0,
        models: ModelChoice { clip: Some(clip_dir()), captioner: Some(captioner_dir()), ..ModelChoice::default() },
        index_batch_size: 2,
        ..ServerConfig::new(db.to_path_buf())
    }
}

/// A config with a token file (in `dir`).
pub fn writable_config(db: &Path, dir: &Path) -> ServerConfig {
    let token_file = dir.join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    ServerConfig { token_file: Some(token_file), ..config(db) }
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    pub state: capmatch_server::AppState,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    /// Starts the server and waits until it is ready.
    pub async fn start(config: ServerConfig) -> Self {
        let server = Server::bind(config).await.unwrap();
        let addr = server.local_addr();
        let state = server.state();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        let client = reqwest::Client::builder().timeout(Duration::from_secs(120)).build().unwrap();
        let me = Self { addr, client, state, stop: Some(stop), task: Some(task) };
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(r) = me.client.get(me.url("/healthz")).send().await {
                if r.status() == 200 {
                    break;
                }
            }
            assert!(std::time::Instant::now() < deadline, "the server did not become ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        me
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    pub async fn post_json(&self, path: &str, body: serde_json::Value) -> reqwest::Response {
        self.client.post(self.url(path)).json(&body).send().await.unwrap()
    }

    pub async fn search(&self, body: serde_json::Value) -> (u16, serde_json::Value) {
        let r = self.post_json("/api/search", body).await;
        let status = r.status().as_u16();
        (status, r.json().await.unwrap())
    }

    /// A request whose path is sent exactly as written (no dot-segment normalisation, as
    /// a hostile client would send it). Returns the status and the body.
    pub async fn raw_get(&self, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", self.addr).as_bytes())
            .await
            .unwrap();
        let mut out = Vec::new();
        stream.read_to_end(&mut out).await.unwrap();
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        (status, text)
    }

    /// Stops the server as SIGTERM would, and waits until it has.
    pub async fn shut_down(mut self) -> anyhow::Result<()> {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub fn multipart_image(path: &Path) -> reqwest::multipart::Part {
    reqwest::multipart::Part::bytes(std::fs::read(path).unwrap())
        .file_name(path.file_name().unwrap().to_string_lossy().into_owned())
        .mime_str("image/png")
        .unwrap()
}
