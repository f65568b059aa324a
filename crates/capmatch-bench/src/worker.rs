//! Our side of each workload, run as a child process (`capmatch-bench worker WORKLOAD ...`)
//! that speaks the same line protocol as `tools/reference/bench_reference.py --serve`:
//! one `{"event": "ready", ...}` line after loading and warm-up, then for every stdin line
//! `run N` one `{"event": "round", "secs": S, "items": I}` line timing N calls.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use capmatch_core::RgbImage;
use serde_json::{json, Value};

use crate::npy;

/// The flags are the reference script's, so the harness passes one argument list to both.
#[derive(clap::Args, Debug, Clone)]
pub struct WorkerArgs {
    /// clip-image, clip-text, blip-caption, blip2-caption or search.
    pub workload: String,
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    #[arg(long)]
    pub images: Option<PathBuf>,
    #[arg(long)]
    pub captions: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    pub beams: usize,
    #[arg(long, default_value_t = 20)]
    pub new_tokens: usize,
    #[arg(long, default_value = "a picture of")]
    pub prompt: String,
    #[arg(long)]
    pub gallery: Option<PathBuf>,
    #[arg(long)]
    pub queries: Option<PathBuf>,
    #[arg(long, default_value_t = 10)]
    pub k: usize,
    #[arg(long, default_value_t = 20)]
    pub queries_per_round: usize,
    /// Accepted for symmetry with the reference; our thread count comes from
    /// RAYON_NUM_THREADS / CANDLE_NUM_THREADS, which the harness sets.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Always on for our worker (accepted for symmetry).
    #[arg(long)]
    pub serve: bool,
}

type RoundFn = Box<dyn FnMut() -> Result<usize>>;

pub fn run(args: WorkerArgs) -> Result<()> {
    let t0 = Instant::now();
    let (info, mut round_fn): (Value, RoundFn) = match args.workload.as_str() {
        "clip-image" => crate::models::clip_image(&args)?,
        "clip-text" => crate::models::clip_text(&args)?,
        // Captioner::load picks BLIP or BLIP-2 from the checkpoint's config.json.
        "blip-caption" | "blip2-caption" => crate::models::caption(&args)?,
        "search" => search(&args)?,
        other => bail!("unknown workload {other}"),
    };
    let load_secs = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    for _ in 0..args.warmup {
        round_fn()?;
    }
    let warmup_secs = t0.elapsed().as_secs_f64();
    let mut ready = json!({"event": "ready", "load_secs": load_secs, "warmup_secs": warmup_secs});
    merge(&mut ready, info);
    emit(&ready);

    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let mut words = line.split_whitespace();
        match words.next() {
            Some("run") => {
                let calls: usize = words.next().map(str::parse).transpose()?.unwrap_or(1);
                let t = Instant::now();
                let mut items = 0;
                for _ in 0..calls.max(1) {
                    items += round_fn()?;
                }
                let secs = t.elapsed().as_secs_f64();
                let (rss, hwm) = rss_kb();
                emit(&json!({"event": "round", "secs": secs, "items": items, "rss_kb": rss, "hwm_kb": hwm}));
            }
            Some("quit") => break,
            Some(other) => emit(&json!({"event": "error", "message": format!("unknown command {other:?}")})),
            None => {}
        }
    }
    Ok(())
}

fn merge(into: &mut Value, from: Value) {
    if let (Value::Object(a), Value::Object(b)) = (into, from) {
        a.extend(b);
    }
}

pub fn emit(v: &Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

/// (VmRSS, VmHWM) of this process in KiB.
pub fn rss_kb() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// `count` images of `folder` (sorted by name, cycled if there are fewer), decoded to RGB.
pub fn load_images(folder: &Path, count: usize) -> Result<Vec<RgbImage>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(folder)
        .with_context(|| format!("reading {}", folder.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("png" | "jpg" | "jpeg")))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("no images in {}", folder.display());
    }
    (0..count)
        .map(|i| {
            let path = &files[i % files.len()];
            Ok(image::open(path).with_context(|| format!("decoding {}", path.display()))?.to_rgb8())
        })
        .collect()
}

/// Exact search through the product's own path: the gallery is written once into an
/// `ExactIndex` (memory-mapped column files, cached next to the `.npy`), every vector being
/// both the image vector and the single caption vector of one image, then opened as
/// `capmatch search` opens it and queried in the default `caption` mode, one query per call
/// (the interactive case).
fn search(args: &WorkerArgs) -> Result<(Value, RoundFn)> {
    use capmatch_retrieval::Target;
    use capmatch_store::exact::Access;
    use capmatch_store::{ExactIndex, ImageId, VectorIndex, VectorQuery, VectorRecord};

    let gallery_path = args.gallery.as_deref().context("--gallery")?;
    let dir = gallery_path.with_extension("exact");
    let (n, dim) = {
        let m = npy::read(gallery_path)?;
        let cached = ExactIndex::open(&dir, Access::ReadOnly, None).map(|i| i.len() == m.rows).unwrap_or(false);
        if !cached {
            let _ = std::fs::remove_dir_all(&dir);
            let mut index = ExactIndex::open(&dir, Access::ReadWrite, Some("bench"))?;
            for start in (0..m.rows).step_by(50_000) {
                let records: Vec<VectorRecord> = (start..(start + 50_000).min(m.rows))
                    .map(|i| VectorRecord {
                        id: ImageId(i as u64 + 1),
                        domain: "bench".into(),
                        image: m.row(i).to_vec(),
                        captions: m.row(i).to_vec(),
                    })
                    .collect();
                index.upsert(&records)?;
            }
        }
        (m.rows, m.cols)
    };
    let (rss_before, _) = rss_kb();
    let opened = std::time::Instant::now();
    let index = ExactIndex::open(&dir, Access::ReadOnly, Some("bench"))?;
    let open_ms = opened.elapsed().as_secs_f64() * 1e3;
    let queries = npy::read(args.queries.as_deref().context("--queries")?)?;
    let (rss_after, _) = rss_kb();
    let (k, per_round) = (args.k, args.queries_per_round);
    let mut next = 0usize;
    let round: RoundFn = Box::new(move || {
        for _ in 0..per_round {
            let q = queries.row(next % queries.rows);
            next += 1;
            let hits = index.search(&VectorQuery { vectors: q, target: Target::Captions, k, domain: None })?;
            std::hint::black_box(hits);
        }
        Ok(per_round)
    });
    let info = json!({
        "n": n, "dim": dim, "k": k, "scoring": "caption", "open_ms": open_ms,
        "rss_before_load_kb": rss_before, "rss_after_build_kb": rss_after,
    });
    Ok((info, round))
}
