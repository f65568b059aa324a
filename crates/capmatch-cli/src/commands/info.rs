//! `capmatch info`: what an index holds.

use anyhow::Context;
use capmatch_index::{SqliteStore, Store};

use crate::InfoArgs;

pub fn run(args: InfoArgs) -> anyhow::Result<()> {
    let store = SqliteStore::open_read_only(&args.db)?;
    let summary = store.summary().with_context(|| format!("cannot read {}", args.db.display()))?;
    let size = store.disk_size();
    if args.json {
        let mut value = serde_json::to_value(&summary)?;
        value["db"] = serde_json::Value::String(args.db.display().to_string());
        value["db_bytes"] = size.into();
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    println!("index:    {} ({}, schema version {})", args.db.display(), human_bytes(size), summary.schema_version);
    match &summary.models {
        Some(m) => {
            println!("clip:     {} (config {})", m.clip, m.clip_config);
            println!("captions: {} (config {}), prompt {:?}", m.captioner, m.captioner_config, m.prompt);
        }
        None => println!("models:   none yet"),
    }
    if let Some(dim) = summary.dim {
        println!("vectors:  {dim} dimensions");
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
