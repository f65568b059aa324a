//! `capmatch inspect`: the similarity structure of a gallery, as a report folder.
//!
//! The work is `capmatch-inspect`'s over the engine; this file maps the flags, indexes an
//! `--against` folder first, shows progress and prints the summary.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use capmatch_engine::{Engine, GraphProgress, IndexOptions, Models, QueryModels, Shard};
use capmatch_inspect::report::{self, ReportOptions};
use capmatch_inspect::{cache, inspect, ClusterOn, InspectOptions, MatchMode, Observer, Thresholds};
use indicatif::{ProgressBar, ProgressStyle};

use crate::commands::index::Progress as IndexProgress;
use crate::commands::models::{device, open_writer};
use crate::{InspectArgs, InspectMode};

pub fn run(args: InspectArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let options = options(&args)?;
    let (engine, against) = open(&args)?;
    if engine.is_empty()? {
        bail!("the index {} holds no image (run `capmatch index` first)", args.db.display());
    }
    let mut options = options;
    options.against = against;
    // The cache is keyed by the local store's generation; a shared store's writers count
    // their own commits, so its graphs are computed afresh.
    if !args.no_cache && engine.store().is_local() {
        options.cache_dir = Some(cache::dir_for(&capmatch_engine::absolute(&args.db)));
    }
    let observer = Stages::new();
    let inspection = inspect(&engine, &options, &observer)?;
    observer.stage("writing the report");
    let written = report::write(
        &inspection,
        &args.out,
        &ReportOptions { max_listed: args.max_pairs, db: capmatch_engine::absolute(&args.db).display().to_string() },
    )
    .with_context(|| format!("cannot write the report into {}", args.out.display()))?;
    observer.finish();
    let c = &inspection.counts.all;
    if args.json {
        let summary = serde_json::json!({
            "report": written.index,
            "images": c.images,
            "counts": c,
            "clusters": inspection.clustering.clusters.len(),
            "clusters_capped": inspection.clustering.capped,
            "thumbnails": written.thumbnails,
            "missing_thumbnails": written.missing_thumbnails,
            "seconds": started.elapsed().as_secs_f64(),
        });
        println!("{}", serde_json::to_string_pretty(&summary)?);
        return Ok(());
    }
    let pct = |x: usize| if c.images == 0 { 0.0 } else { 100.0 * x as f64 / c.images as f64 };
    println!(
        "inspected {} images in {} domains in {:.1?} (neighbour graphs {:.1} s)",
        c.images,
        inspection.counts.matrix.domains.len(),
        started.elapsed(),
        inspection.timings.graphs_secs
    );
    for (label, n) in [
        ("with an identical file", c.identical),
        ("with a near-duplicate", c.near_duplicate),
        ("with a same-subject match", c.same_subject),
        ("with a cross-domain match", c.cross_domain),
        ("in a cluster", c.in_cluster),
        ("outliers", c.outliers),
    ] {
        println!("  {n:>8} images {label} ({:.1}%)", pct(n));
    }
    println!("  {:>8} clusters", inspection.clustering.clusters.len());
    for a in &inspection.against {
        println!("  {:>8} of {} images have a match in {}", a.images_with_match, a.collection, a.domain);
    }
    if written.missing_thumbnails > 0 {
        println!("  ({} listed images could not be read for a thumbnail)", written.missing_thumbnails);
    }
    println!("report: {}", written.index.display());
    Ok(())
}

fn options(args: &InspectArgs) -> anyhow::Result<InspectOptions> {
    if !(0.0..=1.0).contains(&args.weight) {
        bail!("--weight must be between 0 and 1, not {}", args.weight);
    }
    let mode = match args.mode {
        InspectMode::Caption => MatchMode::Caption,
        InspectMode::Image => MatchMode::Image,
        InspectMode::Fused => MatchMode::Fused { weight: args.weight },
    };
    let mut options = InspectOptions::new(mode);
    options.thresholds = Thresholds::defaults(mode).with_overrides(args.thresholds.as_deref().unwrap_or(""))?;
    options.k = args.k;
    options.cluster_on = if args.cluster_copies { ClusterOn::Copies } else { ClusterOn::Similar };
    options.min_cluster = args.min_cluster;
    options.max_cluster = args.max_cluster;
    options.outlier_fraction = args.outlier_fraction;
    if args.max_pairs == 0 {
        bail!("--max-pairs must be at least 1");
    }
    Ok(options)
}

/// Opens the gallery: for reading, or, when an `--against` names a folder, for writing
/// with the models the index was built with, after indexing each such folder under a
/// domain named after it. Returns the reference domains.
fn open(args: &InspectArgs) -> anyhow::Result<(Engine, Vec<String>)> {
    let query_models = QueryModels { clip: args.clip.clone(), dtype: None, device: Some(device(&args.device)?) };
    let folders: Vec<&PathBuf> = args.against.iter().filter(|a| a.is_dir()).collect();
    let domains: Vec<String> = args
        .against
        .iter()
        .map(|a| if a.is_dir() { folder_domain(a) } else { Ok(a.to_string_lossy().into_owned()) })
        .collect::<anyhow::Result<_>>()?;
    let store = args.store.store()?;
    if folders.is_empty() {
        return Ok((Engine::open_reader_in(&args.db, &store, query_models)?, domains));
    }
    let identity = Engine::open_reader_in(&args.db, &store, QueryModels::default())?
        .identity()?
        .with_context(|| format!("the index {} is empty: index the collection before matching it --against a folder", args.db.display()))?;
    let models = Models::of_index(&identity, args.clip.as_deref(), None, query_models.device.as_ref().expect("set above"))?;
    let engine = open_writer(&args.db, &store, Shard::ALL, Arc::new(models))?;
    for folder in folders {
        let domain = folder_domain(folder)?;
        eprintln!("indexing {} as domain {domain} ...", folder.display());
        let mut options = IndexOptions::new(vec![folder.clone()]);
        options.domain = Some(domain);
        options.batch_size = args.batch.max(1);
        let progress = IndexProgress::new();
        let report = engine.index_folders(&options, &progress)?;
        progress.finish();
        eprintln!("  {} new, {} reused, {} unchanged, {} skipped", report.indexed, report.reused, report.unchanged, report.skipped);
    }
    Ok((engine, domains))
}

/// The domain a reference folder is indexed under: its name.
fn folder_domain(folder: &Path) -> anyhow::Result<String> {
    let abs = capmatch_engine::absolute(folder);
    abs.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .with_context(|| format!("--against {}: a folder without a name cannot name a domain", folder.display()))
}

/// A progress bar per step on a terminal, log lines otherwise.
struct Stages {
    bar: Mutex<Option<ProgressBar>>,
    terminal: bool,
}

impl Stages {
    fn new() -> Self {
        Self { bar: Mutex::new(None), terminal: std::io::IsTerminal::is_terminal(&std::io::stderr()) }
    }

    fn finish(&self) {
        if let Some(bar) = self.bar.lock().unwrap_or_else(|p| p.into_inner()).take() {
            bar.finish_and_clear();
        }
    }
}

impl GraphProgress for Stages {
    fn progressed(&self, done: usize, total: usize) {
        if let Some(bar) = self.bar.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        }
    }
}

impl Observer for Stages {
    fn stage(&self, what: &str) {
        let mut bar = self.bar.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = bar.take() {
            old.finish_and_clear();
        }
        if !self.terminal {
            tracing::info!("{what}");
            return;
        }
        let b = ProgressBar::new(0);
        b.set_style(
            ProgressStyle::with_template("{spinner} {msg:<32} [{elapsed_precise}] {wide_bar} {pos}/{len} images, ETA {eta}")
                .expect("valid template"),
        );
        b.set_message(what.to_string());
        b.enable_steady_tick(Duration::from_millis(200));
        *bar = Some(b);
    }
}
