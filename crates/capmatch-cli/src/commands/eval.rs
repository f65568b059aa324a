//! `capmatch eval`: the cross-domain retrieval benchmark on a dataset folder
//! `ROOT/<domain>/<class>/<image>`.
//!
//! 1. Walk the dataset (domains and classes from `--protocol`, `--domains`, `--classes`,
//!    `--classes-file`).
//! 2. Index it through the same store as `capmatch index` (`--db`, default
//!    `ROOT/.capmatch.db`), one domain tag per domain folder. Only new or changed images go
//!    through the models, and the models are loaded only if there is such an image: a second
//!    `eval` on the same dataset only scores.
//! 3. Read the records back, take each image's class from its path, and run
//!    `capmatch_eval::evaluate` (every ordered domain pair, every mode).
//! 4. Print tables (or `--json`), and with `--out DIR` write results.md, results.csv,
//!    results.json, precision.svg and precision.png.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use capmatch_eval::dataset::{self, Dataset, Selection};
use capmatch_eval::{evaluate, report, EvalConfig, EvalItem, Mode, Protocol};
use capmatch_engine::{Engine, IndexObserver, IndexOptions, IndexReport};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::EvalArgs;

/// Everything the flags decide before any file is read.
struct Plan {
    protocol: Protocol,
    selection: Selection,
    modes: Vec<Mode>,
    ks: Vec<usize>,
}

fn plan(args: &EvalArgs) -> anyhow::Result<Plan> {
    let protocol = match &args.protocol {
        Some(name) => Protocol::by_name(name)?,
        None => Protocol::custom(),
    };
    let domains = if args.domains.is_empty() { protocol.domains.clone() } else { clean(&args.domains) };
    let classes = if let Some(file) = &args.classes_file {
        let classes = dataset::read_classes_file(file)?;
        if classes.is_empty() {
            bail!("{} lists no classes", file.display());
        }
        classes
    } else if !args.classes.is_empty() {
        clean(&args.classes)
    } else {
        protocol.classes.clone().unwrap_or_default()
    };
    let ks = if args.k.is_empty() { protocol.ks.clone() } else { args.k.clone() };
    if ks.contains(&0) {
        bail!("--k values must be at least 1");
    }
    let modes = capmatch_eval::parse_modes(&args.modes)?;
    Ok(Plan { protocol, selection: Selection { domains, classes }, modes, ks })
}

fn clean(items: &[String]) -> Vec<String> {
    items.iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
}

pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    if !(0.0..=1.0).contains(&args.weight) {
        bail!("--weight must be in [0, 1], got {}", args.weight);
    }
    let plan = plan(&args)?;
    // Canonical root: the indexer stores canonical paths, and records are matched by path.
    let root = args.root.canonicalize().with_context(|| format!("cannot open dataset folder {}", args.root.display()))?;
    let dataset = dataset::walk(&root, &plan.selection)?;
    if dataset.domains.len() < 2 {
        bail!("cross-domain retrieval needs at least two domains; {} has {:?}", root.display(), domain_names(&dataset));
    }
    tracing::info!(
        "{} images, {} domains, {} classes under {}",
        dataset.images.len(),
        dataset.domains.len(),
        dataset.classes.len(),
        root.display()
    );

    let db = args.db.clone().unwrap_or_else(|| root.join(".capmatch.db"));
    let engine = super::models::open_writer(&db, super::models::gallery_models(&args.models)?)?;
    let index_report = index_dataset(&args, &dataset, &engine)?;
    tracing::info!(
        "index {}: {} new, {} reused, {} unchanged, {} skipped, {} model batches",
        db.display(),
        index_report.indexed,
        index_report.reused,
        index_report.unchanged,
        index_report.skipped,
        index_report.model_batches
    );

    let items = load_items(&engine, &dataset)?;
    let config = EvalConfig {
        protocol: plan.protocol.name.clone(),
        domains: domain_names(&dataset),
        modes: plan.modes.clone(),
        ks: plan.ks.clone(),
        weight: args.weight,
        // The index stores vectors normalised once (capmatch_retrieval::normalize): scoring them
        // as they are keeps the evaluation bit-for-bit the ranking a search gives.
        normalize: false,
        block_rows: None,
    };
    let total = capmatch_eval::total_queries(&items, &config.domains);
    let bar = progress_bar(total as u64, "queries");
    let scoring_started = Instant::now();
    let result = evaluate(&items, &config, &|n| bar.inc(n as u64))?;
    bar.finish_and_clear();
    tracing::info!("scored {} queries in {:.2?}", total, scoring_started.elapsed());

    if let Some(out) = &args.out {
        let written = report::write_all(&result, out)?;
        for p in &written {
            tracing::info!("wrote {}", p.display());
        }
    }
    if args.json {
        let mut v = report::to_json(&result);
        v["db"] = json!(db.display().to_string());
        v["index"] = serde_json::to_value(&index_report)?;
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", report::text_tables(&result));
        println!(
            "{} images ({} new to the index, {} model batches), {} queries scored in {:.1?}",
            items.len(),
            index_report.indexed,
            index_report.model_batches,
            total,
            started.elapsed()
        );
        if let Some(out) = &args.out {
            println!("results in {}", out.display());
        }
    }
    Ok(())
}

fn domain_names(dataset: &Dataset) -> Vec<String> {
    dataset.domains.iter().map(|(d, _)| d.clone()).collect()
}

fn progress_bar(len: u64, unit: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() || len == 0 {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    let template = format!("{{spinner}} [{{elapsed_precise}}] {{msg}} {{wide_bar}} {{pos}}/{{len}} {unit}, ETA {{eta}}");
    bar.set_style(ProgressStyle::with_template(&template).expect("valid template"));
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Progress over the indexing of all domains: one bar, its length growing as each domain's
/// planning finds work.
struct IndexProgress {
    bar: ProgressBar,
    base: std::cell::Cell<u64>,
    domain: std::cell::RefCell<String>,
}

impl IndexObserver for IndexProgress {
    fn started(&self, files: usize) {
        if files > 0 {
            tracing::info!("{}: {files} images to caption and embed", self.domain.borrow());
        }
        self.bar.inc_length(files as u64);
        self.bar.set_message(format!("indexing {}", self.domain.borrow()));
    }
    fn progressed(&self, done: usize) {
        self.bar.set_position(self.base.get() + done as u64);
    }
    fn skipped(&self, path: &str, reason: &str) {
        self.bar.suspend(|| tracing::warn!("skipped {path}: {reason}"));
    }
    fn walk_problem(&self, path: &str, message: &str) {
        self.bar.suspend(|| tracing::warn!("{path}: {message}"));
    }
}

/// Indexes every selected domain, tagged with its folder name, through its selected class
/// folders (so unselected classes are never captioned). Returns the runs' summed report.
fn index_dataset(args: &EvalArgs, dataset: &Dataset, engine: &Engine) -> anyhow::Result<IndexReport> {
    let bar = if std::io::stderr().is_terminal() { progress_bar(0, "images") } else { ProgressBar::hidden() };
    let observer = IndexProgress { bar, base: Default::default(), domain: Default::default() };
    let mut total = IndexReport::default();
    for (domain, _) in &dataset.domains {
        // The domain's selected class folders (all of them without a class selection).
        let mut roots: Vec<PathBuf> = dataset.images_of(domain).map(|i| class_dir(dataset, i)).collect();
        roots.dedup();
        if roots.is_empty() {
            continue;
        }
        let mut options = IndexOptions::new(roots);
        options.domain = Some(domain.clone());
        options.batch_size = args.models.batch.max(1);
        *observer.domain.borrow_mut() = domain.clone();
        observer.base.set(observer.bar.position());
        let r = engine.index_folders(&options, &observer).with_context(|| format!("cannot index domain {domain}"))?;
        total.add(&r);
    }
    observer.bar.finish_and_clear();
    Ok(total)
}

/// `ROOT/<domain>/<class>` of an image.
fn class_dir(dataset: &Dataset, image: &dataset::DatasetImage) -> PathBuf {
    dataset.root.join(&image.domain).join(&image.class)
}

/// The records of the dataset's images, in dataset order (domain, then path). Images the
/// indexer skipped (unreadable files) are left out with a warning.
fn load_items(engine: &Engine, dataset: &Dataset) -> anyhow::Result<Vec<EvalItem>> {
    let mut items = Vec::with_capacity(dataset.images.len());
    let mut missing: Vec<&Path> = Vec::new();
    for img in &dataset.images {
        let Some(path) = img.path.to_str() else {
            missing.push(&img.path);
            continue;
        };
        let Some(entry) = engine.entry_by_path(path)? else {
            missing.push(&img.path);
            continue;
        };
        let vectors = engine.vectors(entry.id)?;
        let dim = vectors.image.len();
        items.push(EvalItem {
            domain: img.domain.clone(),
            class: img.class.clone(),
            caption_embeddings: vectors.captions.chunks_exact(dim.max(1)).map(<[f32]>::to_vec).collect(),
            image_embedding: vectors.image,
        });
    }
    if !missing.is_empty() {
        tracing::warn!(
            "{} of {} images are not in the index (unreadable, see `capmatch info`), e.g. {}; they are left out",
            missing.len(),
            dataset.images.len(),
            missing[0].display()
        );
    }
    for (domain, _) in &dataset.domains {
        if !items.iter().any(|i| &i.domain == domain) {
            bail!("domain {domain} has no indexed images");
        }
    }
    Ok(items)
}
