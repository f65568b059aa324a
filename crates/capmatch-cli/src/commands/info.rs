//! `capmatch info`: what an index holds.

use std::time::{Duration, UNIX_EPOCH};

use capmatch_engine::ann::{AnnState, AnnStatus};
use capmatch_engine::{Engine, QueryModels};

use crate::InfoArgs;

pub fn run(args: InfoArgs) -> anyhow::Result<()> {
    let engine = Engine::open_reader_in(&args.db, &args.store.store()?, QueryModels::default())?;
    if args.check {
        return check(&engine, &args);
    }
    let info = engine.info()?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(());
    }
    let summary = &info.catalog;
    println!("index:    {} ({}, schema version {})", args.db.display(), human_bytes(info.db_bytes), summary.schema_version);
    match &summary.models {
        Some(m) => {
            println!("clip:     {} (config {})", m.clip, m.clip_config);
            println!("captions: {} (config {}), prompt {:?}", m.captioner, m.captioner_config, m.prompt);
        }
        None => println!("models:   none yet"),
    }
    if let Some(dim) = summary.dim {
        println!(
            "vectors:  {dim} dimensions, {} images and {} captions in the {} index at {}",
            info.vectors.images, info.vectors.captions, info.vectors.backend, info.vectors.location
        );
    }
    print_ann(&info.ann);
    if !info.vectors.shards.is_empty() {
        println!("in the store, by shard and domain:");
        for c in &info.vectors.shards {
            println!("  shard {:<8} {:<20} {:>8} images", c.shard, c.domain, c.images);
        }
    }
    println!("files:    {} indexed ({} distinct images), {} skipped", summary.files, summary.images, summary.skipped.len());
    if !summary.domains.is_empty() {
        println!("domains:");
        for d in &summary.domains {
            println!("  {:<20} {:>8} images {:>8} captions", d.domain, d.files, d.captions);
        }
    }
    if !summary.skipped.is_empty() {
        println!("skipped:");
        for s in &summary.skipped {
            println!("  {}: {}", s.path, s.reason);
        }
    }
    Ok(())
}

fn check(engine: &Engine, args: &InfoArgs) -> anyhow::Result<()> {
    let report = engine.check(true)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if report.is_ok() {
        println!("{}: ok ({} indexed files checked)", args.db.display(), report.files);
    } else {
        for p in &report.problems {
            println!("problem: {}
    fix: {}", p.what, p.fix);
        }
    }
    if !report.is_ok() {
        anyhow::bail!("{} problem(s) found in {}", report.problems.len(), args.db.display());
    }
    Ok(())
}

/// The approximate index's lines of `capmatch info` (nothing when there is none).
pub fn print_ann(ann: &AnnStatus) {
    let state = match ann.state {
        AnnState::Absent => return,
        AnnState::Fresh => "in use",
        AnnState::Behind => "NOT IN USE (behind)",
        AnnState::Stale => "NOT IN USE (stale)",
        AnnState::Refused => "NOT IN USE (refused)",
    };
    println!("ann:      {state}, {} at {}", human_bytes(ann.disk_bytes), ann.location);
    if let Some(problem) = &ann.problem {
        println!("          {problem}");
    }
    if let (Some(params), Some(breadth)) = (ann.params, ann.breadth) {
        println!(
            "          {} HNSW (M = {}, efConstruction = {}, {} vectors), {} image and {} caption vectors, breadth {breadth}, {}× candidates re-ranked exactly",
            ann.library.as_deref().unwrap_or("?"),
            params.connectivity,
            params.expansion_add,
            ann.quantization.as_deref().unwrap_or("?"),
            ann.image_vectors,
            ann.caption_vectors,
            ann.oversample
        );
    }
    if let Some(built) = ann.built_at {
        let mut line = format!("          built {}", when(built));
        if ann.unmerged > 0 {
            line += &format!(", {} newer images scanned exactly until merged", ann.unmerged);
        }
        if ann.removed > 0 {
            line += &format!(", {} removed images filtered out (a rebuild drops them)", ann.removed);
        }
        println!("{line}");
    }
    match &ann.tuning {
        Some(t) => println!(
            "          recall@{} {:.4} caption, {:.4} image (≥ {:.4} with 95% confidence, target {}) on {} of {} images at breadth {}, measured {}",
            t.k,
            t.caption_recall,
            t.image_recall,
            t.recall_floor,
            t.target_recall,
            t.sample,
            t.images,
            t.breadth,
            when(t.measured_at)
        ),
        None if ann.state != AnnState::Refused => println!("          recall not measured yet: capmatch ann tune"),
        None => {}
    }
}

/// A time as an RFC 3339 UTC date.
pub fn when(unix_secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix_secs)).to_string()
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}
