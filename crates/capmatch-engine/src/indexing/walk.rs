//! Which files of the given folders are candidate images.
//!
//! Candidates are chosen by extension (case-insensitive): cheap, predictable, and it keeps
//! READMEs, sidecar files and the index itself out of the "skipped" list. A candidate that
//! then fails to decode (a text file named `.jpg`, a truncated PNG) is recorded as skipped
//! with the reason, so nothing with an image's name is silently ignored.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use crate::error::{EngineError, Result};

/// Whether a path names an image capmatch tries to decode: the extensions decoding supports
/// (one list, in `capmatch_core::image_io`, shared with the dataset walk of `eval`).
pub use capmatch_core::image_io::is_image_path as is_candidate;

/// A file to consider, with the stat used for change detection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// Absolute path (the root canonicalised, then the path as walked below it: a symlinked
    /// file keeps its link's name, which is what the user sees in the folder).
    pub path: String,
    pub domain: String,
    pub size: u64,
    pub mtime_ns: i64,
}

/// Something in the folders that could not be walked (a loop, a dangling link, an
/// unreadable folder, a path that is not UTF-8): warned about, never fatal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalkProblem {
    pub path: String,
    pub message: String,
}

#[derive(Debug, Default)]
pub struct WalkOutcome {
    /// Sorted by path, each path once.
    pub candidates: Vec<Candidate>,
    pub problems: Vec<WalkProblem>,
}

/// The domain of a root: `--domain` when given, else the root folder's name.
pub fn default_domain(root: &Path) -> String {
    let dir = if root.is_file() { root.parent().unwrap_or(root) } else { root };
    dir.file_name().map(|n| n.to_string_lossy().into_owned()).filter(|n| !n.is_empty()).unwrap_or_else(|| "default".into())
}

/// Walks `roots` recursively, following symlinks (a link back to an ancestor is reported
/// once as a loop and not entered). A root that does not exist is an error: a typo should
/// not look like an empty gallery.
pub fn collect_candidates(roots: &[PathBuf], domain: Option<&str>) -> Result<WalkOutcome> {
    let mut outcome = WalkOutcome::default();
    let mut seen = HashSet::new();
    for root in roots {
        let root = root
            .canonicalize()
            .map_err(|e| EngineError::NotFound(format!("cannot open folder {}: {e}", root.display())))?;
        let domain = domain.map(str::to_owned).unwrap_or_else(|| default_domain(&root));
        for entry in walkdir::WalkDir::new(&root).follow_links(true) {
            let entry = match entry {
                Ok(e) => e,
                Err(err) => {
                    let path = err.path().map(|p| p.display().to_string()).unwrap_or_else(|| root.display().to_string());
                    let message = match err.loop_ancestor() {
                        Some(ancestor) => format!("symlink loop back to {}, not followed", ancestor.display()),
                        None => err.to_string(),
                    };
                    outcome.problems.push(WalkProblem { path, message });
                    continue;
                }
            };
            if !entry.file_type().is_file() || !is_candidate(entry.path()) {
                continue;
            }
            let Some(path) = entry.path().to_str().map(str::to_owned) else {
                outcome.problems.push(WalkProblem {
                    path: entry.path().display().to_string(),
                    message: "path is not valid UTF-8, not indexed".into(),
                });
                continue;
            };
            if !seen.insert(path.clone()) {
                continue; // the same folder given twice, or nested roots
            }
            match entry.metadata() {
                Ok(meta) => outcome.candidates.push(Candidate {
                    path,
                    domain: domain.clone(),
                    size: meta.len(),
                    mtime_ns: mtime_ns(&meta),
                }),
                Err(err) => outcome.problems.push(WalkProblem { path, message: err.to_string() }),
            }
        }
    }
    outcome.candidates.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(outcome)
}

/// Modification time in nanoseconds since the epoch (0 when the platform has none).
pub fn mtime_ns(meta: &std::fs::Metadata) -> i64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
