//! `capmatch serve` as a process: its flags, where it says it listens, and how it stops:
//! SIGTERM during an index job lets the running batch commit and exits cleanly; SIGKILL
//! loses at most the uncommitted batch, and the next run finishes the folder.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use capmatch_core::image_io::{decode_file, DecodeLimits};
use capmatch_engine::{Engine, QueryModels};
use common::{model_args, workspace};
use serde_json::{json, Value};

const TOKEN: &str = "serve-test-token-0123456789";


/// `n` distinct PNG files made from the real fixtures.
fn write_images(dir: &Path, n: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let mut bases: Vec<PathBuf> = std::fs::read_dir(workspace().join("fixtures/images/real"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    bases.sort();
    let bases: Vec<_> = bases.iter().map(|p| decode_file(p, &DecodeLimits::default()).unwrap()).collect();
    for i in 0..n {
        let mut img = bases[i % bases.len()].clone();
        let shift = (i / bases.len()) as u8;
        for p in img.pixels_mut() {
            p[2] = p[2].saturating_sub(shift);
        }
        img.save(dir.join(format!("{i:04}.png"))).unwrap();
    }
}

fn index(dir: &Path, db: &Path) {
    let mut args = vec!["index".to_string(), dir.display().to_string(), "--db".into(), db.display().to_string()];
    args.extend(model_args());
    let out = Command::new(env!("CARGO_BIN_EXE_capmatch")).args(&args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

struct Served {
    child: Child,
    addr: String,
}

/// Starts `capmatch serve --port 0 ...` and waits until it is ready.
fn serve(db: &Path, extra: &[String]) -> Served {
    let mut args = vec!["serve".to_string(), "--db".into(), db.display().to_string(), "--port".into(), "0".into()];
    args.extend(model_args());
    args.extend(extra.iter().cloned());
    let mut child = Command::new(env!("CARGO_BIN_EXE_capmatch")).args(&args).stderr(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("the server exited before saying where it listens").unwrap();
        if let Some(rest) = line.split("open http://").nth(1) {
            break rest.split('/').next().unwrap().to_owned();
        }
    };
    // Keep draining its log so that it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    let served = Served { child, addr };
    let deadline = Instant::now() + Duration::from_secs(120);
    while served.request("GET", "/healthz", None).0 != 200 {
        assert!(Instant::now() < deadline, "not ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    served
}

impl Served {
    /// A plain HTTP/1.1 request; the status and the body.
    fn request(&self, method: &str, path: &str, json_body: Option<Value>) -> (u16, String) {
        let Ok(mut stream) = TcpStream::connect(&self.addr) else { return (0, String::new()) };
        let body = json_body.map(|b| b.to_string()).unwrap_or_default();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        )
        .unwrap();
        let mut out = String::new();
        let _ = stream.read_to_string(&mut out);
        let status = out.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
        (status, body)
    }

    fn json(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, text) = self.request(method, path, body);
        assert!((200..300).contains(&status), "{method} {path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }

    fn signal(&self, signal: &str) {
        let ok = Command::new("kill").args([signal, &self.child.id().to_string()]).status().unwrap().success();
        assert!(ok);
    }

    fn wait(mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the server did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn files_in(db: &Path) -> usize {
    let engine = Engine::open_reader(db, QueryModels::default()).unwrap();
    assert!(engine.check(false).unwrap().problems.is_empty());
    engine.len().unwrap()
}

/// Starts an index job over `dir` and waits until it has committed a batch or two.
fn start_job(served: &Served, dir: &Path) -> u64 {
    let job = served.json("POST", "/api/index", Some(json!({"path": dir.display().to_string()})));
    let id = job["id"].as_u64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let job = served.json("GET", &format!("/api/jobs/{id}"), None);
        if job["done"].as_u64().unwrap() >= 2 {
            return id;
        }
        assert!(Instant::now() < deadline, "{job}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn serve_answers_and_a_sigterm_mid_job_commits_the_batch_and_exits_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let gallery = tmp.path().join("gallery");
    write_images(&gallery, 6);
    let db = tmp.path().join("g.db");
    index(&gallery, &db);

    // Read-only: searches, and no write endpoint.
    let served = serve(&db, &[]);
    let found = served.json("POST", "/api/search", Some(json!({"text": "a lemon", "k": 3})));
    assert_eq!(found["hits"].as_array().unwrap().len(), 3);
    assert_eq!(served.request("POST", "/api/index", Some(json!({"path": "/"}))).0, 403);
    served.signal("-TERM");
    assert!(served.wait().success());

    // With a token: an index job, stopped by SIGTERM while it runs.
    let incoming = tmp.path().join("incoming");
    let total = 200;
    write_images(&incoming, total);
    let token = tmp.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let extra = ["--token-file".to_string(), token.display().to_string(), "--allow-index-root".into(), incoming.display().to_string(), "--batch".into(), "2".into()];
    let served = serve(&db, &extra);
    start_job(&served, &incoming);
    served.signal("-TERM");
    let status = served.wait();
    assert!(status.success(), "{status}");
    let after_term = files_in(&db) - 6;
    assert!(after_term >= 2 && after_term % 2 == 0 || after_term == total, "{after_term} committed");

    // SIGKILL mid-job: at most the batch in the models is lost; the rest is whole.
    let served = serve(&db, &extra);
    start_job(&served, &incoming);
    served.signal("-KILL");
    served.wait();
    let after_kill = files_in(&db) - 6;
    assert!(after_kill >= after_term);

    // The next run finishes the folder: nothing missing, nothing twice.
    index(&incoming, &db);
    assert_eq!(files_in(&db), 6 + total);
}
