//! Every input that once crashed, hung or aborted a fuzz target (`fuzz/regressions/<target>/`)
//! and every seed, replayed: each must be accepted or refused with an error, never panic.

use std::panic::{catch_unwind, AssertUnwindSafe};

fn replay(name: &str) {
    let target = capmatch_fuzz::target(name).expect("target");
    let mut inputs: Vec<(String, Vec<u8>)> =
        target.seeds().unwrap().into_iter().enumerate().map(|(i, s)| (format!("seed {i}"), s)).collect();
    let regressions = capmatch_fuzz::read_dir_files(&capmatch_fuzz::regression_dir(name)).unwrap();
    inputs.extend(regressions.into_iter().map(|(p, b)| (p.display().to_string(), b)));
    let mut panicked = Vec::new();
    for (what, input) in &inputs {
        if catch_unwind(AssertUnwindSafe(|| target.run(input))).is_err() {
            panicked.push(what.clone());
        }
    }
    assert!(panicked.is_empty(), "{name}: these inputs panicked: {panicked:?}");
}

#[test]
fn image_regressions() {
    replay("image");
}

#[test]
fn text_regressions() {
    replay("text");
}

#[test]
fn checkpoint_regressions() {
    replay("checkpoint");
}

#[test]
fn index_regressions() {
    replay("index");
}

/// The harness finds what it is for: a target that panics on some inputs has them saved.
#[test]
fn the_harness_saves_an_input_that_panics() {
    struct PanicsOnZ;
    impl capmatch_fuzz::Target for PanicsOnZ {
        fn name(&self) -> &'static str {
            "panics-on-z"
        }
        fn seeds(&self) -> anyhow::Result<Vec<Vec<u8>>> {
            Ok(vec![b"abcdefgh".to_vec()])
        }
        fn run(&self, input: &[u8]) -> anyhow::Result<()> {
            if input.contains(&b'Z') {
                panic!("found Z");
            }
            anyhow::ensure!(input.len() < 64, "too long");
            Ok(())
        }
    }
    let findings = tempfile::tempdir().unwrap();
    let options = capmatch_fuzz::RunOptions {
        duration: std::time::Duration::from_millis(1500),
        seed: 3,
        findings: findings.path().to_path_buf(),
        hang_after: std::time::Duration::from_secs(30),
        max_memory_bytes: None,
    };
    let summary = capmatch_fuzz::run_for(&PanicsOnZ, &options).unwrap();
    assert!(summary.executions > 100, "{summary:?}");
    assert!(!summary.crashes.is_empty(), "no panicking input found in {} runs", summary.executions);
    for crash in &summary.crashes {
        assert!(std::fs::read(crash).unwrap().contains(&b'Z'));
    }
}
