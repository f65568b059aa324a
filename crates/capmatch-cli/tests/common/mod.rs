//! What the binary's tests share: the workspace, and the flags that select the tiny fixture
//! models.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// `--clip` and `--captioner` of the tiny random-weight fixture models.
pub fn model_args() -> Vec<String> {
    let ws = workspace();
    vec![
        "--clip".into(),
        ws.join("fixtures/clip/tiny-quickgelu-p32").display().to_string(),
        "--captioner".into(),
        ws.join("fixtures/blip/tiny-a").display().to_string(),
    ]
}
