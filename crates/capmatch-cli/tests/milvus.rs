//! The `capmatch` binary with its vectors in Milvus, on a server named by
//! `CAPMATCH_MILVUS_ADDR` (HOST:PORT; `scripts/milvus.sh start lite|server PORT`): the same
//! hits as the exact store in every mode, and two `--shard` processes at once filling one
//! collection as one process does. Skipped, saying so, without a server; `.ci/run` runs it
//! against both test servers.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn server() -> Option<String> {
    match std::env::var("CAPMATCH_MILVUS_ADDR") {
        Ok(a) if !a.is_empty() => Some(a),
        _ => {
            eprintln!("SKIPPED: set CAPMATCH_MILVUS_ADDR=HOST:PORT (scripts/milvus.sh start lite 19541) to run the Milvus tests");
            None
        }
    }
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn args(list: &[&str]) -> Vec<String> {
    let ws = workspace();
    let mut out: Vec<String> = list.iter().map(|s| s.to_string()).collect();
    if matches!(list.first(), Some(&"index")) {
        out.extend([
            "--clip".into(),
            ws.join("fixtures/clip/tiny-quickgelu-p32").display().to_string(),
            "--captioner".into(),
            ws.join("fixtures/blip/tiny-a").display().to_string(),
        ]);
    }
    out
}

fn run(list: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_capmatch")).args(args(list)).output().unwrap()
}

fn ok(list: &[&str]) -> String {
    let out = run(list);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(out.status.success(), "capmatch {list:?} failed:\n{stdout}\n{stderr}");
    stdout
}

/// photo/ and cartoon/ from the real fixture images.
fn gallery(root: &Path) -> PathBuf {
    let g = root.join("gallery");
    for entry in std::fs::read_dir(workspace().join("fixtures/images/real")).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if let Some((domain, _)) = name.split_once('_').filter(|_| name.ends_with(".png")) {
            std::fs::create_dir_all(g.join(domain)).unwrap();
            std::fs::copy(&p, g.join(domain).join(&name)).unwrap();
        }
    }
    g
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{prefix}_{}_{}", std::process::id(), nanos % 1_000_000_000)
}

/// (path, score) of each hit.
fn hits(json: &str) -> Vec<(String, f64)> {
    let v: Value = serde_json::from_str(json).unwrap();
    v["hits"]
        .as_array()
        .unwrap_or_else(|| panic!("no hits in {json}"))
        .iter()
        .map(|h| (h["path"].as_str().unwrap().to_owned(), h["score"].as_f64().unwrap()))
        .collect()
}

#[test]
fn milvus_gives_the_exact_stores_hits_in_every_mode() {
    let Some(server) = server() else { return };
    let root = tempfile::tempdir().unwrap();
    let g = gallery(root.path());
    let (photo, cartoon) = (g.join("photo"), g.join("cartoon"));
    let store = format!("milvus://{server}/{}", unique("cli_exact"));
    let local = root.path().join("local.db");
    let remote = root.path().join("remote.db");
    let dirs = [photo.to_str().unwrap(), cartoon.to_str().unwrap()];
    ok(&[&["index"], &dirs[..], &["--db", local.to_str().unwrap()]].concat());
    ok(&[&["index"], &dirs[..], &["--db", remote.to_str().unwrap(), "--store", &store]].concat());
    let query = photo.join("photo_lemon.png");
    for mode in ["caption", "image", "fused", "text", "caption-text"] {
        for (flag, q) in [("--image", query.to_str().unwrap()), ("--text", "a yellow lemon")] {
            if flag == "--text" && matches!(mode, "image" | "caption-text") {
                continue;
            }
            let search = |db: &Path, extra: &[&str]| {
                hits(&ok(&[&["search", flag, q, "--db", db.to_str().unwrap(), "--mode", mode, "-k", "4", "--json"], extra].concat()))
            };
            let want = search(&local, &[]);
            assert!(!want.is_empty());
            assert_eq!(search(&remote, &["--store", &store]), want, "mode {mode}, {flag}");
            let domain = search(&remote, &["--store", &store, "--domain", "cartoon"]);
            assert_eq!(domain, search(&local, &["--domain", "cartoon"]), "mode {mode}, {flag}, one domain");
        }
    }
    let info: Value = serde_json::from_str(&ok(&["info", "--db", remote.to_str().unwrap(), "--store", &store, "--json"])).unwrap();
    assert_eq!(info["vectors"]["backend"], "milvus");
    assert_eq!(info["vectors"]["images"], 6);
}

#[test]
fn two_shards_at_once_fill_the_collection_as_one_process_does() {
    let Some(server) = server() else { return };
    let root = tempfile::tempdir().unwrap();
    let g = gallery(root.path());
    let dirs = [g.join("photo").display().to_string(), g.join("cartoon").display().to_string()];
    let (one, sharded) = (format!("milvus://{server}/{}", unique("cli_one")), format!("milvus://{server}/{}", unique("cli_sharded")));
    let db = |name: &str| root.path().join(name).display().to_string();
    ok(&["index", &dirs[0], &dirs[1], "--db", &db("one.db"), "--store", &one]);
    let spawn = |i: u32| {
        Command::new(env!("CARGO_BIN_EXE_capmatch"))
            .args(args(&["index", &dirs[0], &dirs[1], "--db", &db(&format!("s{i}.db")), "--store", &sharded, "--shard", &format!("{i}/2")]))
            .output()
    };
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| spawn(0).unwrap());
        let b = s.spawn(|| spawn(1).unwrap());
        (a.join().unwrap(), b.join().unwrap())
    });
    for out in [&a, &b] {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let counts = |store: &str, name: &str| -> (u64, Vec<(String, u64)>) {
        let v: Value = serde_json::from_str(&ok(&["info", "--db", &db(name), "--store", store, "--json"])).unwrap();
        let mut by_domain: std::collections::BTreeMap<String, u64> = Default::default();
        for c in v["vectors"]["shards"].as_array().unwrap() {
            *by_domain.entry(c["domain"].as_str().unwrap().to_owned()).or_default() += c["images"].as_u64().unwrap();
        }
        (v["vectors"]["images"].as_u64().unwrap(), by_domain.into_iter().collect())
    };
    let (n_one, domains_one) = counts(&one, "one.db");
    let (n_sharded, domains_sharded) = counts(&sharded, "s0.db");
    assert_eq!(n_one, 6);
    assert_eq!((n_sharded, domains_sharded), (n_one, domains_one), "the same images in the same domains");
    // Run again: nothing is added twice.
    ok(&["index", &dirs[0], &dirs[1], "--db", &db("s0.db"), "--store", &sharded, "--shard", "0/2"]);
    assert_eq!(counts(&sharded, "s1.db").0, 6);
}
