//! The approximate index through the real binary: `capmatch index --ann`, `ann tune`,
//! `ann build`, `info` and `search --exact`, and a damaged index refused while searches
//! still answer.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn capmatch(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_capmatch")).args(args).output().unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = capmatch(args);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "capmatch {args:?} failed:\n{stdout}\n{stderr}");
    stdout
}

/// The ranked paths and scores of a JSON search.
fn ranking(search: &str) -> Vec<(String, String)> {
    let v: Value = serde_json::from_str(search).unwrap();
    v.as_array().unwrap().iter().map(|h| (h["path"].to_string(), h["score"].to_string())).collect()
}

#[test]
fn index_with_ann_tune_info_search_exact_and_a_damaged_index() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("photos");
    std::fs::create_dir_all(&photos).unwrap();
    for entry in std::fs::read_dir(workspace().join("fixtures/images/real")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "png") {
            std::fs::copy(&path, photos.join(path.file_name().unwrap())).unwrap();
        }
    }
    let db = tmp.path().join("g.db");
    let (db_arg, photos_arg) = (db.display().to_string(), photos.display().to_string());
    let clip = workspace().join("fixtures/clip/tiny-quickgelu-p32").display().to_string();
    let blip = workspace().join("fixtures/blip/tiny-a").display().to_string();

    let out = ok(&["index", &photos_arg, "--db", &db_arg, "--ann", "--clip", &clip, "--captioner", &blip]);
    assert!(out.contains("built the approximate index"), "{out}");
    assert!(out.contains("ann:      in use"), "{out}");
    let info = ok(&["info", "--db", &db_arg]);
    assert!(info.contains("ann:      in use") && info.contains("recall not measured yet: capmatch ann tune"), "{info}");

    // A tiny gallery measures few results: 0.98 cannot be shown with 95% confidence, 0.8 can.
    let refused = capmatch(&["ann", "tune", "--db", &db_arg]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--sample"), "{}", String::from_utf8_lossy(&refused.stderr));
    let tuned: Value = serde_json::from_str(&ok(&["ann", "tune", "--db", &db_arg, "--target-recall", "0.8", "--json"])).unwrap();
    assert_eq!(tuned["tuning"]["target_recall"], 0.8);
    let info = ok(&["info", "--db", &db_arg, "--json"]);
    let info: Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["ann"]["tuning"], tuned["tuning"], "info shows the recorded measurement");
    assert_eq!(info["ann"]["state"], "fresh");

    let query = photos.join("photo_lemon.png").display().to_string();
    let search = |extra: &[&str]| -> Vec<(String, String)> {
        let mut args = vec!["search", &query, "--db", &db_arg, "-k", "1", "--json", "--mode", "fused"];
        args.extend(extra);
        ranking(&ok(&args))
    };
    let exact = search(&["--exact"]);
    assert_eq!(exact.len(), 1);
    assert_eq!(search(&[]), exact, "the approximate path answers as the exact one, scores included");

    // A truncated graph: refused, said by `info`, searches exact; `ann build` repairs it.
    let ann_dir = PathBuf::from(format!("{db_arg}.ann"));
    for entry in std::fs::read_dir(&ann_dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "usearch") {
            let bytes = std::fs::read(&path).unwrap();
            std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        }
    }
    let info = ok(&["info", "--db", &db_arg]);
    assert!(info.contains("NOT IN USE (refused)") && info.contains("capmatch ann build"), "{info}");
    assert_eq!(search(&[]), exact);
    ok(&["ann", "build", "--db", &db_arg]);
    assert!(ok(&["info", "--db", &db_arg]).contains("ann:      in use"));
}
