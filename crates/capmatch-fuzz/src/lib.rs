//! Fuzzing on stable Rust: a seeded mutation harness over a corpus of the project's real
//! fixture files, for every input a stranger can hand capmatch (image bytes, texts,
//! checkpoints, index files).
//!
//! cargo-fuzz needs a nightly toolchain (sanitizer flags) that this project's machines do
//! not have; this harness keeps what matters for "nothing a file contains may abort the
//! process": every input runs in-process under `catch_unwind` (a panic is a finding), a
//! watchdog turns an input that runs too long into a finding, and an address-space limit
//! turns a runaway allocation into an abort whose input was written to disk just before it
//! ran (so `scripts/fuzz.sh` reports it). Without coverage feedback, an input is kept in the
//! corpus when it produces an error the target has not produced before, which steers the
//! mutations past the first checks of a format.
//!
//! Each target is one file under [`targets`]; `tests/regressions.rs` replays every file of
//! `fuzz/regressions/<target>/` and every seed through it in `cargo test`.

pub mod harness;
pub mod mutate;
pub mod targets;

use std::path::{Path, PathBuf};

pub use harness::{run_for, RunOptions, RunSummary};
pub use mutate::Rng;

/// One kind of input and the code that must survive it.
pub trait Target: Sync {
    /// Name on the command line and of its regression folder.
    fn name(&self) -> &'static str;
    /// The corpus the mutations start from (real files of the repository).
    fn seeds(&self) -> anyhow::Result<Vec<Vec<u8>>>;
    /// A mutation that knows the format (a lying header field, a huge number); `false`
    /// when the target has none for this input, and the generic byte mutations run.
    fn mutate_structured(&self, _input: &mut Vec<u8>, _rng: &mut Rng) -> bool {
        false
    }
    /// Runs one input. An `Err` is a clear refusal, which is fine; a panic, abort or hang
    /// is a finding.
    fn run(&self, input: &[u8]) -> anyhow::Result<()>;
}

/// Every target, by name.
pub fn targets() -> Vec<Box<dyn Target>> {
    vec![
        Box::new(targets::image::ImageBytes),
        Box::new(targets::text::Text::default()),
        Box::new(targets::checkpoint::Checkpoint),
        Box::new(targets::index::IndexFiles::default()),
    ]
}

pub fn target(name: &str) -> Option<Box<dyn Target>> {
    targets().into_iter().find(|t| t.name() == name)
}

/// The repository this crate is built from (fixtures and the regression corpus live there).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `fuzz/regressions/<target>/`: inputs that once crashed, hung or aborted a target.
pub fn regression_dir(target: &str) -> PathBuf {
    repo_root().join("fuzz/regressions").join(target)
}

/// Every file of a folder but dotfiles, sorted by name (an absent folder is empty).
pub fn read_dir_files(dir: &Path) -> anyhow::Result<Vec<(PathBuf, Vec<u8>)>> {
    let mut paths: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_file() && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'))).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    paths.sort();
    paths.into_iter().map(|p| Ok((p.clone(), std::fs::read(&p)?))).collect()
}
