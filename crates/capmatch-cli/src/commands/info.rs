//! `capmatch info`: what an index holds.

use capmatch_engine::{Engine, QueryModels};

use crate::InfoArgs;

pub fn run(args: InfoArgs) -> anyhow::Result<()> {
    let engine = Engine::open_reader(&args.db, QueryModels::default())?;
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
