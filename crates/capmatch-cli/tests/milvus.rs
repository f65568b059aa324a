//! The `capmatch` binary with its vectors in Milvus, on a server named by
//! `CAPMATCH_MILVUS_ADDR` (HOST:PORT; `scripts/milvus.sh start lite|server PORT`): the same
//! hits as the exact store in every mode, and two `--shard` processes at once filling one
//! collection as one process does. Skipped, saying so, without a server; `.ci/run` runs it
//! against both test servers.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use capmatch_milvus::test_server as server;

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
    // `capmatch search --json` prints the hits as an array.
    v.as_array()
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
        for query in [vec![query.to_str().unwrap()], vec!["--text", "a yellow lemon"]] {
            let flag = query[0];
            if flag != "--text" && mode == "text" {
                continue; // text mode takes a text query only
            }
            let search = |db: &Path, extra: &[&str]| {
                hits(&ok(&[&["search"], &query[..], &["--db", db.to_str().unwrap(), "--mode", mode, "-k", "4", "--json"], extra].concat()))
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

/// (path, score) of each hit of a text search.
fn text_hits(db: &Path, store: Option<&str>, text: &str) -> Vec<(String, f64)> {
    let mut list = vec!["search", "--text", text, "--db", db.to_str().unwrap(), "-k", "6", "--json"];
    if let Some(s) = store {
        list.extend(["--store", s]);
    }
    hits(&ok(&list))
}

#[test]
fn a_shard_searches_every_shards_images_with_their_paths() {
    let Some(server) = server() else { return };
    let root = tempfile::tempdir().unwrap();
    let g = gallery(root.path());
    let dirs = [g.join("photo").display().to_string(), g.join("cartoon").display().to_string()];
    let store = format!("milvus://{server}/{}", unique("cli_shard_search"));
    let db = |name: &str| root.path().join(name);
    ok(&["index", &dirs[0], &dirs[1], "--db", db("local.db").to_str().unwrap()]);
    for i in 0..2 {
        ok(&["index", &dirs[0], &dirs[1], "--db", db(&format!("s{i}.db")).to_str().unwrap(), "--store", &store, "--shard", &format!("{i}/2")]);
    }
    let want = text_hits(&db("local.db"), None, "a yellow lemon");
    assert_eq!(want.len(), 6);
    for i in 0..2 {
        // Each shard's catalog knows only its own files; the others' come from the store.
        assert_eq!(text_hits(&db(&format!("s{i}.db")), Some(&store), "a yellow lemon"), want, "searching from shard {i}");
    }
}

#[test]
fn a_killed_shard_rerun_leaves_every_image_once() {
    let Some(server) = server() else { return };
    let root = tempfile::tempdir().unwrap();
    let g = gallery(root.path());
    let dirs = [g.join("photo").display().to_string(), g.join("cartoon").display().to_string()];
    let store = format!("milvus://{server}/{}", unique("cli_kill"));
    let db = root.path().join("s.db").display().to_string();
    let local = root.path().join("local.db");
    ok(&["index", &dirs[0], &dirs[1], "--db", local.to_str().unwrap()]);
    // Killed at several points of its run (one image per batch, so each batch is a commit),
    // then run to the end.
    for delay_ms in [300u64, 900, 1800] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_capmatch"))
            .args(args(&["index", &dirs[0], &dirs[1], "--db", &db, "--store", &store, "--batch", "1"]))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
    }
    ok(&["index", &dirs[0], &dirs[1], "--db", &db, "--store", &store]);
    let info: Value = serde_json::from_str(&ok(&["info", "--db", &db, "--store", &store, "--json"])).unwrap();
    assert_eq!(info["vectors"]["images"], 6, "every image exactly once: {info}");
    assert_eq!(text_hits(Path::new(&db), Some(&store), "a yellow lemon"), text_hits(&local, None, "a yellow lemon"));
    let verify: Value = serde_json::from_str(&ok(&["verify", "--db", &db, "--store", &store, "--json"])).unwrap();
    assert_eq!(verify["missing"], 0, "{verify}");
}

#[test]
fn migrate_copies_a_local_gallery_resumes_and_verifies() {
    let Some(server) = server() else { return };
    let root = tempfile::tempdir().unwrap();
    let g = gallery(root.path());
    let db = root.path().join("g.db");
    let dbs = db.to_str().unwrap();
    let store = format!("milvus://{server}/{}", unique("cli_migrate"));
    ok(&["index", g.join("photo").to_str().unwrap(), "--db", dbs]);
    let first: Value = serde_json::from_str(&ok(&["migrate", "--from", dbs, "--to", &store, "--batch", "2", "--json"])).unwrap();
    assert_eq!((first["images"].as_u64(), first["copied"].as_u64(), first["already"].as_u64()), (Some(3), Some(3), Some(0)), "{first}");
    // The gallery grows; a second run sends only what the store lacks.
    ok(&["index", g.join("photo").to_str().unwrap(), g.join("cartoon").to_str().unwrap(), "--db", dbs]);
    let second: Value = serde_json::from_str(&ok(&["migrate", "--from", dbs, "--to", &store, "--json"])).unwrap();
    assert_eq!((second["images"].as_u64(), second["copied"].as_u64(), second["already"].as_u64()), (Some(6), Some(3), Some(3)), "{second}");
    let verify: Value = serde_json::from_str(&ok(&["verify", "--db", dbs, "--store", &store, "--json"])).unwrap();
    assert_eq!(verify["missing"], 0, "{verify}");
    assert_eq!(verify["compared"], true, "{verify}");
    assert_eq!(verify["recall_caption"], 1.0, "{verify}");
    assert_eq!(verify["recall_image"], 1.0, "{verify}");
    assert_eq!(text_hits(&db, Some(&store), "a yellow lemon"), text_hits(&db, None, "a yellow lemon"));
    // A store that lacks images fails verification, saying how to fix it.
    let out = run(&["verify", "--db", dbs, "--store", &format!("milvus://{server}/{}", unique("cli_never"))]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("capmatch migrate"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// `per` distinct variants (one pixel changed) of every fixture image, in photo/ and cartoon/.
fn larger_gallery(root: &Path, per: usize) -> PathBuf {
    let g = gallery(root);
    for domain in ["photo", "cartoon"] {
        for entry in std::fs::read_dir(g.join(domain)).unwrap() {
            let p = entry.unwrap().path();
            let img = image::open(&p).unwrap().to_rgb8();
            for v in 1..per {
                let mut copy = img.clone();
                copy.put_pixel(0, 0, image::Rgb([v as u8, 7, 11]));
                copy.save(p.with_file_name(format!("{}_v{v}.png", p.file_stem().unwrap().to_string_lossy()))).unwrap();
            }
        }
    }
    g
}

#[test]
fn the_server_restarted_mid_run_loses_nothing() {
    let Some(server) = server() else { return };
    // The command that restarts the server on its data (`.ci/run` sets it to
    // `scripts/milvus.sh restart KIND PORT`).
    let Ok(restart) = std::env::var("CAPMATCH_MILVUS_RESTART") else {
        eprintln!("SKIPPED: set CAPMATCH_MILVUS_RESTART to a command that restarts the server at CAPMATCH_MILVUS_ADDR");
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let g = larger_gallery(root.path(), 8);
    let dirs = [g.join("photo").display().to_string(), g.join("cartoon").display().to_string()];
    let store = format!("milvus://{server}/{}", unique("cli_restart"));
    let db = root.path().join("r.db");
    let local = root.path().join("local.db");
    ok(&["index", &dirs[0], &dirs[1], "--db", local.to_str().unwrap()]);
    // One image per commit, so that the restart falls between two of them or in one.
    let mut child = Command::new(env!("CARGO_BIN_EXE_capmatch"))
        .args(args(&["index", &dirs[0], &dirs[1], "--db", db.to_str().unwrap(), "--store", &store, "--batch", "1"]))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(child.try_wait().unwrap().is_none(), "the run ended before the restart: make the gallery larger");
    let restarted = Command::new("sh").args(["-c", &restart]).current_dir(workspace()).status().unwrap();
    assert!(restarted.success(), "{restart} failed");
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the run did not survive the restart:\n{}", String::from_utf8_lossy(&out.stderr));
    let info: Value = serde_json::from_str(&ok(&["info", "--db", db.to_str().unwrap(), "--store", &store, "--json"])).unwrap();
    assert_eq!(info["vectors"]["images"], 48, "{info}");
    let verify: Value = serde_json::from_str(&ok(&["verify", "--db", db.to_str().unwrap(), "--store", &store, "--json"])).unwrap();
    assert_eq!(verify["missing"], 0, "{verify}");
    assert_eq!(text_hits(&db, Some(&store), "a yellow lemon"), text_hits(&local, None, "a yellow lemon"));
}
