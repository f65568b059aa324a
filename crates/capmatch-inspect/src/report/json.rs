//! `report.json`: the inspection for programs.
//!
//! # Schema `capmatch-inspect-report`, version 1
//!
//! ```text
//! {
//!   "schema": "capmatch-inspect-report", "version": 1,
//!   "generator": "capmatch 0.1.0",
//!   "gallery":  { "db": path, "images": n, "domains": [name…], "vector_generation": g },
//!   "settings": { "mode": "caption" | "image" | "fused", "weight": w | null, "k": k,
//!                 "thresholds": { "near_duplicate", "same_subject", "cross_domain" },
//!                 "cluster_on": "copies" | "similar", "min_cluster", "max_cluster",
//!                 "outlier_fraction", "max_listed", "against": [domain…] },
//!   "work":     { "graphs": [{ "space": "image" | "caption", "k", "among": domain | null,
//!                              "reused", "computed", "updated", "new_candidates" }],
//!                 "seconds": { "images", "graphs", "analysis", "report" } },
//!   "counts":   { "all": Counts, "by_domain": { domain: Counts } },
//!   "domain_matrix": { "domains": [...], "images_with_match": [[n]], "rate": [[0..1]] },
//!   "histograms": { "nearest_image": Histogram, "nearest_caption": Histogram },
//!   "pairs":    { "total": { tier: n }, "listed": [Pair] },
//!   "clusters": { "total", "capped", "unclustered", "listed": [Cluster] },
//!   "outliers": { "weakest_neighbour": [Outlier], "caption_disagreement": [Outlier] },
//!   "against":  [{ "domain", "collection", "references", "images_with_match",
//!                  "total", "listed": [Match] }],
//!   "images":   { id: { "path", "domain", "hash", "captions": [...], "thumbnail": path | null } }
//! }
//! Counts    = { "images", "identical", "near_duplicate", "any_copy", "same_subject",
//!               "cross_domain", "any_match", "in_cluster", "outliers" }   (images, never pairs)
//! Histogram = { "start", "bin_width", "counts": [n], "missing" }
//! Pair      = { "tier", "a", "b", "score", "image", "caption", "caption_a_to_b",
//!               "caption_b_to_a", "image_rank": r | null }
//! Cluster   = { "medoid", "size", "spread": { "min", "median", "max" },
//!               "members": [{ "id", "tier", "score" }] }
//! Outlier   = { "id", "score", "neighbour": id | null }
//! Match     = { "image", "reference", "rank", "score", "image_score", "caption",
//!               "caption_a_to_b", "caption_b_to_a", "tier": tier | null }
//! ```
//!
//! Ids (`a`, `b`, `medoid`, …) are the gallery's image ids (integers below 2^53) and key
//! `images`, which holds every image the report lists. Tiers are `identical`,
//! `near-duplicate`, `cross-domain`, `same-subject`. Scores without a value (an image with
//! no caption, no neighbour) are `null`. Lists are strongest first and hold at most
//! `max_listed` items each; totals and counts cover everything. A reader should check
//! `schema` and `version`: a change that removes or renames a field gets a new version.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::report::{Listing, ReportMeta};
use crate::tiers::{Pair, Tier};
use crate::Inspection;

pub const SCHEMA: &str = "capmatch-inspect-report";
pub const VERSION: u32 = 1;

fn num(x: f32) -> Value {
    if x.is_finite() {
        // Through the shortest decimal of the f32, so that 0.3 is written 0.3.
        json!(format!("{x}").parse::<f64>().unwrap_or(x as f64))
    } else {
        Value::Null
    }
}

fn pair_json(inspection: &Inspection, p: &Pair) -> Value {
    json!({
        "tier": p.tier.name(),
        "a": inspection.images[p.a].id,
        "b": inspection.images[p.b].id,
        "score": num(p.score),
        "image": num(p.scores.image),
        "caption": num(p.scores.caption()),
        "caption_a_to_b": num(p.scores.caption_ab),
        "caption_b_to_a": num(p.scores.caption_ba),
        "image_rank": p.image_rank,
    })
}

pub fn to_json(inspection: &Inspection, listing: &Listing<'_>, meta: &ReportMeta) -> Value {
    let images = &inspection.images;
    let o = &inspection.options;
    let id = |i: usize| json!(images[i].id);
    let mut domains: Vec<&str> = images.iter().map(|i| i.domain.as_str()).collect();
    domains.sort();
    domains.dedup();
    let mut totals = Map::new();
    for t in Tier::ALL {
        totals.insert(t.name().into(), json!(inspection.pairs.iter().filter(|p| p.tier == t).count()));
    }
    let clusters: Vec<Value> = listing
        .clusters
        .iter()
        .map(|c| {
            let (min, median, max) = c.spread();
            json!({
                "medoid": id(c.medoid),
                "size": c.size(),
                "spread": { "min": num(min), "median": num(median), "max": num(max) },
                "members": c.members.iter().map(|m| json!({ "id": id(m.image), "tier": m.tier.name(), "score": num(m.score) })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let outlier = |list: &[crate::outliers::Outlier]| -> Vec<Value> {
        list.iter().map(|x| json!({ "id": id(x.image), "score": num(x.score), "neighbour": x.neighbour.map(id) })).collect()
    };
    let against: Vec<Value> = inspection
        .against
        .iter()
        .zip(&listing.against)
        .map(|(a, listed)| {
            json!({
                "domain": a.domain,
                "collection": a.collection,
                "references": a.references,
                "images_with_match": a.images_with_match,
                "total": a.matches.len(),
                "listed": listed.iter().map(|m| json!({
                    "image": id(m.image),
                    "reference": id(m.reference),
                    "rank": m.rank,
                    "score": num(m.score),
                    "image_score": num(m.scores.image),
                    "caption": num(m.scores.caption()),
                    "caption_a_to_b": num(m.scores.caption_ab),
                    "caption_b_to_a": num(m.scores.caption_ba),
                    "tier": m.tier.map(Tier::name),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let mut listed_images = BTreeMap::new();
    for (&i, thumb) in &meta.thumbnails {
        let img = &images[i];
        listed_images.insert(
            img.id.0.to_string(),
            json!({
                "path": img.path,
                "domain": img.domain,
                "hash": img.hash,
                "captions": img.captions,
                "thumbnail": thumb,
            }),
        );
    }
    let h = |x: &crate::counts::Histogram| {
        json!({ "start": num(x.start), "bin_width": num(x.bin_width), "counts": x.counts, "missing": x.missing })
    };
    json!({
        "schema": SCHEMA,
        "version": VERSION,
        "generator": format!("capmatch {}", env!("CARGO_PKG_VERSION")),
        "gallery": {
            "db": meta.db,
            "images": images.len(),
            "domains": domains,
            "vector_generation": inspection.generation,
        },
        "settings": {
            "mode": o.mode.name(),
            "weight": match o.mode { crate::MatchMode::Fused { weight } => num(weight), _ => Value::Null },
            "k": o.k,
            "thresholds": {
                "near_duplicate": num(o.thresholds.near_duplicate),
                "same_subject": num(o.thresholds.same_subject),
                "cross_domain": num(o.thresholds.cross_domain),
            },
            "cluster_on": o.cluster_on,
            "min_cluster": o.min_cluster,
            "max_cluster": o.max_cluster,
            "outlier_fraction": o.outlier_fraction,
            "max_listed": meta.max_listed,
            "against": o.against,
        },
        "work": {
            "graphs": inspection.graphs.iter().map(|(spec, w)| json!({
                "space": match spec.space { crate::Space::Image => "image", crate::Space::Caption => "caption" },
                "k": spec.k,
                "among": spec.among,
                "reused": w.reused,
                "computed": w.computed,
                "updated": w.updated,
                "new_candidates": w.new_candidates,
            })).collect::<Vec<_>>(),
            "seconds": {
                "images": inspection.timings.images_secs,
                "graphs": inspection.timings.graphs_secs,
                "analysis": inspection.timings.analysis_secs,
                "report": meta.report_secs,
            },
        },
        "counts": { "all": inspection.counts.all, "by_domain": inspection.counts.by_domain },
        "domain_matrix": inspection.counts.matrix,
        "histograms": { "nearest_image": h(&meta.nearest_image), "nearest_caption": h(&meta.nearest_caption) },
        "pairs": { "total": totals, "listed": listing.pairs.iter().map(|p| pair_json(inspection, p)).collect::<Vec<_>>() },
        "clusters": {
            "total": inspection.clustering.clusters.len(),
            "capped": inspection.clustering.capped,
            "unclustered": inspection.clustering.unclustered,
            "listed": clusters,
        },
        "outliers": {
            "weakest_neighbour": outlier(&inspection.outliers.weakest_neighbour),
            "caption_disagreement": outlier(&inspection.outliers.caption_disagreement),
        },
        "against": against,
        "images": listed_images,
    })
}
