//! `capmatch info --check`: the gallery's integrity, with the fix for each problem.

use std::collections::HashSet;
use std::path::Path;

use capmatch_store::ImageId;
use serde::Serialize;

use crate::error::Result;
use crate::Engine;

/// One problem found, and what to do about it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Problem {
    pub what: String,
    pub fix: String,
}

/// What [`Engine::check`] found.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CheckReport {
    /// Indexed files examined.
    pub files: usize,
    pub problems: Vec<Problem>,
}

impl CheckReport {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// At most this many examples are named per problem.
const EXAMPLES: usize = 5;

fn examples(items: &[String]) -> String {
    let shown: Vec<&str> = items.iter().take(EXAMPLES).map(String::as_str).collect();
    let more = items.len().saturating_sub(EXAMPLES);
    if more > 0 { format!("{} and {more} more", shown.join(", ")) } else { shown.join(", ") }
}

impl Engine {
    /// Runs every check: SQLite's own integrity check, every indexed file has readable,
    /// finite vectors of the index's dimension, no vectors without a file, and (with
    /// `files`) every indexed file still on disk with the size it was indexed with.
    pub fn check(&self, files: bool) -> Result<CheckReport> {
        self.storage.follow_writer()?;
        let mut report = CheckReport::default();
        let catalog = self.storage.catalog();
        for line in catalog.integrity_problems()? {
            report.problems.push(Problem {
                what: format!("the catalog {} is damaged: {line}", self.db().display()),
                fix: "restore it from a backup, or delete it (and its .vectors folder) and run `capmatch index` again".into(),
            });
        }
        let ids = catalog.ids()?;
        report.files = ids.len();
        let dim = catalog.dim()?;
        let index = self.storage.index();
        let mut without_vectors = Vec::new();
        let mut bad_vectors = Vec::new();
        for (id, _) in &ids {
            match index.get(*id)? {
                None => without_vectors.push(*id),
                Some(v) => {
                    let finite = v.image.iter().chain(&v.captions).all(|x| x.is_finite());
                    if !finite || dim.is_some_and(|d| v.image.len() != d) || v.captions.is_empty() {
                        bad_vectors.push(*id);
                    }
                }
            }
        }
        let in_catalog: HashSet<ImageId> = ids.iter().map(|(id, _)| *id).collect();
        let orphans = index.ids()?.into_iter().filter(|(id, _)| !in_catalog.contains(id)).count();
        let ann = index.ann_status();
        drop(index);
        if let Some(problem) = ann.problem {
            // Searches still answer (exactly): a problem of speed, not of results.
            report.problems.push(Problem {
                what: format!("the approximate index {} is not in use: {problem}", ann.location),
                fix: "run `capmatch ann build` (then `capmatch ann tune`)".into(),
            });
        }
        let paths = |ids: &[ImageId]| -> Result<Vec<String>> {
            Ok(catalog.entries(ids)?.into_iter().flatten().map(|e| e.path).collect())
        };
        if !without_vectors.is_empty() {
            report.problems.push(Problem {
                what: format!("{} indexed files have no vectors: {}", without_vectors.len(), examples(&paths(&without_vectors)?)),
                fix: "run `capmatch index` on their folders: it forgets them and indexes them again".into(),
            });
        }
        if !bad_vectors.is_empty() {
            report.problems.push(Problem {
                what: format!("{} indexed files have unreadable vectors: {}", bad_vectors.len(), examples(&paths(&bad_vectors)?)),
                fix: "delete the index and run `capmatch index` again".into(),
            });
        }
        if orphans > 0 {
            report.problems.push(Problem {
                what: format!("{orphans} vectors belong to no indexed file (left by an interrupted run)"),
                fix: "run `capmatch index` once on any folder: it removes them".into(),
            });
        }
        if files {
            let mut changed = Vec::new();
            let mut vanished = Vec::new();
            for t in catalog.tracked_files()?.into_iter().filter(|t| t.skipped.is_none()) {
                match std::fs::metadata(Path::new(&t.path)) {
                    Err(_) => vanished.push(t.path),
                    Ok(m) if m.len() != t.size => changed.push(t.path),
                    Ok(_) => {}
                }
            }
            if !vanished.is_empty() {
                report.problems.push(Problem {
                    what: format!("{} indexed files are gone: {}", vanished.len(), examples(&vanished)),
                    fix: "run `capmatch index --prune` on their folders to forget them".into(),
                });
            }
            if !changed.is_empty() {
                report.problems.push(Problem {
                    what: format!("{} indexed files changed since they were indexed: {}", changed.len(), examples(&changed)),
                    fix: "run `capmatch index` on their folders to index the new contents".into(),
                });
            }
        }
        Ok(report)
    }
}
