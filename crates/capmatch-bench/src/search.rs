//! Our side of the search workload, through the product's own path: the gallery is written
//! once into an [`ExactIndex`] (memory-mapped column files, cached next to the `.npy`), every
//! vector being both the image vector and the single caption vector of one image, then opened
//! as `capmatch search` opens it and queried in the default `caption` mode. One query per call
//! is the interactive case ([`VectorIndex::search`]); more queries per call go through
//! [`VectorIndex::search_many`], which scores a batch against the gallery together (the eval
//! and inspect case).

use anyhow::{bail, Context, Result};
use capmatch_retrieval::Target;
use capmatch_store::exact::Access;
use capmatch_store::{ExactIndex, ImageId, VectorHit, VectorIndex, VectorQuery, VectorRecord};
use serde_json::{json, Value};

use crate::agreement::Outputs;
use crate::npy::{self, Matrix};
use crate::worker::{rss_kb, Call, CallFn, WorkerArgs};

/// Queries whose results are written for the comparison with faiss (the first ones of the
/// first call; more would add seconds per 1M-row case).
const CHECKED_QUERIES: usize = 64;

/// Rows written per upsert while building the cached index.
const BUILD_ROWS: usize = 50_000;

pub fn worker(args: &WorkerArgs) -> Result<(Value, CallFn)> {
    let gallery_path = args.gallery.as_deref().context("--gallery")?;
    let (n, dim) = build_cached(gallery_path)?;
    let (rss_before, _) = rss_kb();
    let opened = std::time::Instant::now();
    let index = ExactIndex::open(&gallery_path.with_extension("exact"), Access::ReadOnly, Some("bench"))?;
    let open_ms = opened.elapsed().as_secs_f64() * 1e3;
    let queries = npy::read(args.queries.as_deref().context("--queries")?)?;
    if queries.cols != dim {
        bail!("queries of dimension {} for a gallery of dimension {dim}", queries.cols);
    }
    let k = args.k;
    let per_call = args.queries_per_call.max(1);
    let per_round = if per_call == 1 { args.queries_per_round.max(1) } else { 1 };
    let checked = CHECKED_QUERIES.min(queries.rows).min(per_call * per_round);
    let mut first = true;
    let mut next = 0usize;
    let call: CallFn = Box::new(move || {
        let mut rows: Vec<Vec<u32>> = Vec::new();
        for _ in 0..per_round {
            let batch: Vec<&[f32]> = (0..per_call).map(|i| queries.row((next + i) % queries.rows)).collect();
            next += per_call;
            let requests: Vec<VectorQuery> =
                batch.iter().map(|q| VectorQuery { vectors: q, target: Target::Captions, k, domain: None }).collect();
            let hits = if per_call == 1 { vec![index.search(&requests[0])?] } else { index.search_many(&requests)? };
            if first && rows.len() < checked {
                rows.extend(hits.iter().take(checked - rows.len()).map(|h| positions(h, k)));
            }
            std::hint::black_box(hits);
        }
        first = false;
        Ok(Call { items: per_call * per_round, outputs: Outputs::Topk(rows) })
    });
    let (rss_after, _) = rss_kb();
    let info = json!({
        "n": n, "dim": dim, "k": k, "scoring": "caption", "queries_per_call": per_call, "open_ms": open_ms,
        "rss_before_load_kb": rss_before, "rss_after_build_kb": rss_after,
    });
    Ok((info, call))
}

/// Gallery rows of the hits (ids are row + 1), the best `k` (ties past k left out, as faiss
/// returns exactly k).
fn positions(hits: &[VectorHit], k: usize) -> Vec<u32> {
    hits.iter().take(k).map(|h| (h.id.0 - 1) as u32).collect()
}

/// Writes the `.npy` gallery into an `ExactIndex` beside it unless one of the same length is
/// there already; returns (rows, dimension).
fn build_cached(gallery_path: &std::path::Path) -> Result<(usize, usize)> {
    let dir = gallery_path.with_extension("exact");
    let m: Matrix = npy::read(gallery_path)?;
    let cached = ExactIndex::open(&dir, Access::ReadOnly, None).map(|i| i.len() == m.rows).unwrap_or(false);
    if !cached {
        let _ = std::fs::remove_dir_all(&dir);
        let mut index = ExactIndex::open(&dir, Access::ReadWrite, Some("bench"))?;
        for start in (0..m.rows).step_by(BUILD_ROWS) {
            let records: Vec<VectorRecord> = (start..(start + BUILD_ROWS).min(m.rows))
                .map(|i| VectorRecord {
                    id: ImageId(i as u64 + 1),
                    domain: "bench".into(),
                    image: m.row(i).to_vec(),
                    captions: m.row(i).to_vec(),
                })
                .collect();
            index.upsert(&records)?;
        }
        index.flush()?;
    }
    Ok((m.rows, m.cols))
}
