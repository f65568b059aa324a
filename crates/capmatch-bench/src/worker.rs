//! Our side of each workload, run as a child process (`capmatch-bench worker WORKLOAD ...`)
//! that speaks the same line protocol as `tools/reference/bench_reference.py --serve`:
//! one `{"event": "ready", ...}` line after loading and warm-up, then for every stdin line
//! `run N` one `{"event": "round", "secs": S, "items": I}` line timing N calls. With
//! `--outputs FILE`, the outputs of the first call (the inputs every call gets) are written
//! there for the harness to compare with the reference's.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use capmatch_core::RgbImage;
use serde_json::{json, Value};

use crate::agreement::Outputs;

/// The flags are the reference script's, so the harness passes one argument list to both.
#[derive(clap::Args, Debug, Clone)]
pub struct WorkerArgs {
    /// clip-image, clip-text, blip-caption, blip2-caption, search or index-models.
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
    /// The captioner of `index-models` (`--model` is then the CLIP checkpoint).
    #[arg(long)]
    pub captioner: Option<PathBuf>,
    /// Image files of `index-models`, in the order the indexer takes them.
    #[arg(long, num_args = 1..)]
    pub files: Vec<PathBuf>,
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
    /// Single-query searches per call (with --queries-per-call 1).
    #[arg(long, default_value_t = 20)]
    pub queries_per_round: usize,
    /// Queries per search call: 1 is the interactive case (Gallery::search, one query at a
    /// time); more are scored together by the batched scorer.
    #[arg(long, default_value_t = 1)]
    pub queries_per_call: usize,
    /// Where to write the first call's outputs (JSON, see `agreement::Outputs`).
    #[arg(long)]
    pub outputs: Option<PathBuf>,
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

/// What one call of a workload did: items processed and what it produced.
pub struct Call {
    pub items: usize,
    pub outputs: Outputs,
}

/// One call of a workload (the outputs are moved out, not copied: no cost to the timing).
pub type CallFn = Box<dyn FnMut() -> Result<Call>>;

pub fn run(args: WorkerArgs) -> Result<()> {
    let t0 = Instant::now();
    let (info, mut call): (Value, CallFn) = match args.workload.as_str() {
        "clip-image" => crate::models::clip_image(&args)?,
        "clip-text" => crate::models::clip_text(&args)?,
        // Captioner::load picks BLIP or BLIP-2 from the checkpoint's config.json.
        "blip-caption" | "blip2-caption" => crate::models::caption(&args)?,
        "index-models" => crate::models::index_models(&args)?,
        "search" => crate::search::worker(&args)?,
        other => bail!("unknown workload {other}"),
    };
    let load_secs = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let mut outputs_path = args.outputs.clone();
    let mut keep_outputs = |c: Call| -> Result<usize> {
        if let Some(path) = outputs_path.take() {
            c.outputs.write(&path)?;
        }
        Ok(c.items)
    };
    for _ in 0..args.warmup {
        keep_outputs(call()?)?;
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
                    items += keep_outputs(call()?)?;
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

/// Fields of `/proc/self/status`, in KiB (0 for a missing one).
fn status_kb<const N: usize>(names: [&str; N]) -> [u64; N] {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    names.map(|name| {
        status
            .lines()
            .find(|l| l.split(':').next() == Some(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    })
}

/// (VmRSS, VmHWM) of this process in KiB.
pub fn rss_kb() -> (u64, u64) {
    let [rss, hwm] = status_kb(["VmRSS", "VmHWM"]);
    (rss, hwm)
}

/// Resident memory split into the process's own pages and mapped file pages, in KiB.
/// Mapped files (the stores' vectors, a viewed graph) are page cache the kernel can drop
/// and share; a reader of the figures needs to see which kind a backend holds.
pub fn rss_split_kb() -> (u64, u64) {
    let [anon, file, shmem] = status_kb(["RssAnon", "RssFile", "RssShmem"]);
    (anon, file + shmem)
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
