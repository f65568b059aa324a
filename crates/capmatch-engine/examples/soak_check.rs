//! Checks a gallery that was indexed under repeated SIGKILLs (`scripts/soak.sh`) against
//! one indexed without interruption from the same files:
//!
//!     cargo run --release -p capmatch-engine --example soak_check -- KILLED.db REFERENCE.db
//!
//! - the integrity checks of `capmatch info --check` find nothing in either;
//! - the same files are indexed (each exactly once) and the same skipped, none both;
//! - every image has the same captions and bit-identical vectors (image and captions).
//!
//! Exits non-zero with the first differences listed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use capmatch_engine::{Engine, QueryModels};

fn main() -> anyhow::Result<()> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [killed, reference] = &args[..] else {
        anyhow::bail!("usage: soak_check KILLED.db REFERENCE.db");
    };
    let mut problems = Vec::new();
    let a = Engine::open_reader(killed, QueryModels::default())?;
    let b = Engine::open_reader(reference, QueryModels::default())?;
    for (name, engine) in [("killed", &a), ("reference", &b)] {
        for p in engine.check(true)?.problems {
            problems.push(format!("{name}: {} (fix: {})", p.what, p.fix));
        }
    }
    let files = |e: &Engine| -> anyhow::Result<BTreeMap<String, capmatch_engine::ImageId>> {
        let ids: Vec<_> = e.ids()?.into_iter().map(|(id, _)| id).collect();
        let mut by_path = BTreeMap::new();
        for entry in e.entries(&ids)?.into_iter().flatten() {
            by_path.insert(entry.path.clone(), entry.id);
        }
        Ok(by_path)
    };
    let (fa, fb) = (files(&a)?, files(&b)?);
    let skipped = |e: &Engine| -> anyhow::Result<BTreeSet<String>> { Ok(e.summary()?.skipped.into_iter().map(|s| s.path).collect()) };
    let (sa, sb) = (skipped(&a)?, skipped(&b)?);
    let indexed_a: BTreeSet<&String> = fa.keys().collect();
    let indexed_b: BTreeSet<&String> = fb.keys().collect();
    for path in indexed_a.symmetric_difference(&indexed_b) {
        problems.push(format!("indexed in one gallery only: {path}"));
    }
    for path in sa.symmetric_difference(&sb) {
        problems.push(format!("skipped in one gallery only: {path}"));
    }
    for path in sa.iter().filter(|p| fa.contains_key(*p)) {
        problems.push(format!("both indexed and skipped: {path}"));
    }
    let summary = a.summary()?;
    if summary.files != fa.len() as u64 {
        problems.push(format!("the catalog counts {} files but lists {}", summary.files, fa.len()));
    }
    // One vector record per indexed file (files with identical bytes share captions, not ids).
    if a.len()? != fa.len() {
        problems.push(format!("{} vector records for {} indexed files", a.len()?, fa.len()));
    }
    let mut compared = 0;
    for (path, id_a) in &fa {
        let Some(id_b) = fb.get(path) else { continue };
        let (ea, eb) = (a.entry(*id_a)?, b.entry(*id_b)?);
        if ea.captions != eb.captions {
            problems.push(format!("{path}: captions {:?} vs {:?}", ea.captions, eb.captions));
        }
        let (va, vb) = (a.vectors(*id_a)?, b.vectors(*id_b)?);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        if bits(&va.image) != bits(&vb.image) || bits(&va.captions) != bits(&vb.captions) {
            problems.push(format!("{path}: vectors differ"));
        }
        compared += 1;
    }
    println!(
        "soak_check: {} indexed, {} skipped, {compared} images compared with the uninterrupted run, {} problems",
        fa.len(),
        sa.len(),
        problems.len()
    );
    if !problems.is_empty() {
        for p in problems.iter().take(20) {
            eprintln!("  {p}");
        }
        std::process::exit(1);
    }
    Ok(())
}
