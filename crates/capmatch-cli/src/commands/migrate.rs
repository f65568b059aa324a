//! `capmatch migrate` (a gallery's vectors into another store) and `capmatch verify` (a
//! store checked against the catalog and the exact local store). The work is the engine's
//! (`capmatch_engine::migrate`); this file adds the progress bar and the printing.

use capmatch_engine::{Engine, QueryModels, VectorStore};
use indicatif::{ProgressBar, ProgressStyle};

use crate::{MigrateArgs, VerifyArgs};

pub fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    let to = VectorStore::parse(Some(&args.to), args.store_token_file.as_deref())?;
    let engine = Engine::open_reader(&args.from, QueryModels::default())?;
    let bar = ProgressBar::new(0);
    bar.set_style(ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} images ({eta} left)")?.progress_chars("=> "));
    bar.set_message(format!("copying to {to}"));
    let report = engine.migrate_to(&to, args.batch, &|done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} images: {} copied, {} already there (an earlier run){}",
            report.images,
            report.copied,
            report.already,
            if report.removed > 0 { format!(", {} no longer in the gallery removed", report.removed) } else { String::new() }
        );
        println!("search it with: capmatch search --db {} --store {} ...", args.from.display(), args.to);
        println!("check it with:  capmatch verify --db {} --store {}", args.from.display(), args.to);
    }
    Ok(())
}

pub fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    let engine = Engine::open_reader_in(&args.db, &args.store.store()?, QueryModels::default())?;
    let report = engine.verify_store(args.queries, args.k)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("store:    {}", report.store);
        println!("images:   {} in the catalog, {} in the store", report.catalog_images, report.store_images);
        if report.missing > 0 {
            println!("MISSING:  {} catalog files have no vectors in the store, e.g.:", report.missing);
            for path in &report.missing_examples {
                println!("          {path}");
            }
        }
        if report.compared {
            println!(
                "searches: {} gallery images as queries, recall@{} against the exact local store: caption {:.4}, image {:.4}; \
                 largest score difference {:.2e}",
                report.queries, report.k, report.recall_caption, report.recall_image, report.max_score_difference
            );
        } else {
            println!("searches: not compared (no local vectors beside {} to compare with)", args.db.display());
        }
    }
    if !report.passes(args.min_recall) {
        anyhow::bail!(
            "{} does not match the gallery{}: run `capmatch migrate --from {} --to {}` again to copy what is missing",
            report.store,
            if report.missing > 0 { format!(" ({} images missing)", report.missing) } else { format!(" (recall below {})", args.min_recall) },
            args.db.display(),
            report.store
        );
    }
    Ok(())
}
