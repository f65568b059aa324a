//! `capmatch index`: caption and embed every image of some folders into the index.
//!
//! The job is the engine's (`Engine::index_folders`); this file adds the progress display
//! and the summary.

use std::cell::{Cell, RefCell};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use capmatch_core::image_io::DecodeLimits;
use capmatch_engine::{IndexObserver, IndexOptions};
use indicatif::{ProgressBar, ProgressStyle};

use crate::commands::models::{gallery_models, open_writer};
use crate::IndexArgs;

pub fn run(args: IndexArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    // Checkpoints are resolved now (their identity is checked against the index before any
    // work) but loaded only if some image needs the models.
    let models = gallery_models(&args.models)?;
    let engine = open_writer(&args.db, &args.store.store()?, args.shard.unwrap_or_default(), models)?;
    let options = IndexOptions {
        roots: args.dirs.clone(),
        domain: args.domain.clone(),
        batch_size: args.models.batch.max(1),
        limits: DecodeLimits { max_pixels: args.max_pixels, ..Default::default() },
        prune: args.prune,
        decode_threads: 0,
        cancel: None,
    };
    let progress = Progress::new();
    let report = engine.index_folders(&options, &progress)?;
    progress.finish();
    println!(
        "indexed {} new, {} reused, {} unchanged, {} skipped, {} pruned, {} left to other shards ({} image files) into {} in {:.1?}",
        report.indexed,
        report.reused,
        report.unchanged,
        report.skipped,
        report.pruned,
        report.other_shards,
        report.candidates,
        args.db.display(),
        started.elapsed()
    );
    if report.skipped > 0 {
        println!("skipped files and their reasons: capmatch info --db {}", args.db.display());
    }
    if args.ann {
        let started = Instant::now();
        let (status, built) = engine.ensure_ann(args.graph.params())?;
        if built {
            println!("built the approximate index in {:.1?}", started.elapsed());
        }
        crate::commands::info::print_ann(&status);
    }
    Ok(())
}

/// A progress bar on a terminal; plain log lines (at most one every few seconds, plus one
/// per committed batch at debug level) when stderr is a pipe or a file.
pub(crate) struct Progress {
    bar: Option<ProgressBar>,
    total: Cell<usize>,
    started: Cell<Option<Instant>>,
    last_line: RefCell<Option<Instant>>,
}

impl Progress {
    pub(crate) fn new() -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::hidden();
            bar.set_style(
                ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} images, {per_sec}, ETA {eta}")
                    .expect("valid template"),
            );
            bar
        });
        Self { bar, total: Cell::new(0), started: Cell::new(None), last_line: RefCell::new(None) }
    }

    pub(crate) fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl IndexObserver for Progress {
    fn started(&self, files: usize) {
        self.total.set(files);
        self.started.set(Some(Instant::now()));
        match &self.bar {
            Some(bar) if files > 0 => {
                bar.set_length(files as u64);
                bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                bar.enable_steady_tick(Duration::from_millis(200));
            }
            Some(_) => {}
            None => tracing::info!("{files} new, changed or previously skipped files to index"),
        }
    }

    fn progressed(&self, done: usize) {
        if let Some(bar) = &self.bar {
            bar.set_position(done as u64);
            return;
        }
        let total = self.total.get();
        let elapsed = self.started.get().map(|s| s.elapsed()).unwrap_or_default();
        let rate = done as f64 / elapsed.as_secs_f64().max(1e-9);
        let eta = if rate > 0.0 { Duration::from_secs_f64((total - done.min(total)) as f64 / rate) } else { Duration::ZERO };
        let line = format!("committed {done}/{total} images ({rate:.1}/s, ETA {:.0?})", eta);
        let mut last = self.last_line.borrow_mut();
        if done == total || last.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
            tracing::info!("{line}");
            *last = Some(Instant::now());
        } else {
            tracing::debug!("{line}");
        }
    }

    fn skipped(&self, path: &str, reason: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| tracing::warn!("skipped {path}: {reason}")),
            None => tracing::warn!("skipped {path}: {reason}"),
        }
    }

    fn walk_problem(&self, path: &str, message: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| tracing::warn!("{path}: {message}")),
            None => tracing::warn!("{path}: {message}"),
        }
    }
}
