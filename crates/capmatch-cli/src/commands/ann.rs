//! `capmatch ann build` and `capmatch ann tune`: the approximate index's upkeep. The work is
//! the engine's (`capmatch_engine::ann`); this file opens the gallery and prints.

use std::time::Instant;

use anyhow::Context;
use capmatch_engine::ann::{GraphParams, TuneOptions};
use capmatch_engine::Engine;

use crate::commands::info::{print_ann, when};
use crate::{AnnBuildArgs, AnnCommand, AnnTuneArgs, GraphArgs};

pub fn run(command: AnnCommand) -> anyhow::Result<()> {
    match command {
        AnnCommand::Build(args) => build(args),
        AnnCommand::Tune(args) => tune(args),
    }
}

impl GraphArgs {
    pub fn params(&self) -> GraphParams {
        GraphParams { connectivity: self.connectivity, expansion_add: self.expansion_add }
    }
}

/// Opens the gallery for upkeep, telling the user if another process holds it.
fn open(db: &std::path::Path) -> anyhow::Result<Engine> {
    Engine::open_maintainer(db, true, &|db| {
        eprintln!("waiting for another capmatch process that is writing to {} ...", db.display());
    })
    .with_context(|| format!("cannot open the index {}", db.display()))
}

fn build(args: AnnBuildArgs) -> anyhow::Result<()> {
    let engine = open(&args.db)?;
    let started = Instant::now();
    let status = engine.build_ann(args.graph.params())?;
    println!("built the approximate index in {:.1?}", started.elapsed());
    print_ann(&status);
    if status.tuning.is_none() {
        println!("measure its recall and set its search breadth: capmatch ann tune --db {}", args.db.display());
    }
    Ok(())
}

fn tune(args: AnnTuneArgs) -> anyhow::Result<()> {
    let engine = open(&args.db)?;
    let options = TuneOptions { target_recall: args.target_recall, sample: args.sample, k: args.k };
    let report = engine.tune_ann(&options)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{:>8}  {:>16}  {:>14}", "breadth", "caption recall", "image recall");
        for p in &report.curve {
            println!("{:>8}  {:>16.4}  {:>14.4}", p.breadth, p.caption_recall, p.image_recall);
        }
        let t = &report.tuning;
        println!(
            "search breadth {} (recall@{} {:.4} caption, {:.4} image, at least {:.4} with 95% confidence, on {} of {} images, {})",
            t.breadth,
            t.k,
            t.caption_recall,
            t.image_recall,
            t.recall_floor,
            t.sample,
            t.images,
            when(t.measured_at)
        );
    }
    let t = &report.tuning;
    if !t.reached() {
        let fix = if t.recall() >= t.target_recall {
            "measure on more images (--sample) to narrow the confidence interval"
        } else {
            "rebuild with more edges (capmatch ann build --connectivity 32)"
        };
        anyhow::bail!(
            "recall@{} {:.4} (at least {:.4} with 95% confidence) does not reach the target {} even at the largest breadth; {fix}",
            t.k,
            t.recall(),
            t.recall_floor,
            t.target_recall
        );
    }
    Ok(())
}
