//! `capmatch-bench ann`: the approximate index against faiss `IndexHNSWFlat`.
//!
//! ```text
//! cargo run --release -p capmatch-bench -- ann --sizes 100k,1M --out BENCHMARKS.md
//! ```
//!
//! For each gallery size: clustered random unit vectors (not uniform ones, whose nearest
//! neighbours are all alike), written once as `.npy` files both sides read; our side builds
//! the exact store and the approximate index over it and tunes it (`capmatch ann tune`) in
//! one child process, then opens it in a second one, as a search process would, and times
//! one query at a time (caption mode, top 10). The exact top 10 of every query is the truth
//! for both sides. faiss (`tools/reference/bench_reference.py ann-hnsw`) builds
//! `IndexHNSWFlat` (M = 32, the same efConstruction) and takes the smallest efSearch that
//! reaches our recall@10, then is timed the same way. Build time, size on disk, resident
//! memory, recall@1/@10 and p50/p99 latency go into a Markdown section, written between
//! the `<!-- ann:begin -->` and `<!-- ann:end -->` lines of `--out` (below the generated
//! part of BENCHMARKS.md, which the main harness keeps).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use capmatch_retrieval::{normalize, Target};
use capmatch_store::ann::{GraphParams, TuneOptions};
use capmatch_store::exact::Access;
use capmatch_store::{AnnIndex, AnnOptions, ExactIndex, ImageId, VectorIndex, VectorQuery, VectorRecord};
use serde_json::{json, Value};

use crate::{npy, proc, worker};

const DIM: usize = 512;
const K: usize = 10;
const BEGIN: &str = "<!-- ann:begin -->";
const END: &str = "<!-- ann:end -->";

#[derive(clap::Args, Debug)]
pub struct AnnArgs {
    /// Comma-separated gallery sizes (k and M suffixes allowed).
    #[arg(long, value_delimiter = ',', default_value = "100k,1M")]
    pub sizes: Vec<String>,
    /// Queries timed per side (drawn like the gallery, not from it).
    #[arg(long, default_value_t = 1000)]
    pub queries: usize,
    /// The recall@10 `capmatch ann tune` is asked for.
    #[arg(long, default_value_t = 0.98)]
    pub target_recall: f64,
    /// Gallery images `capmatch ann tune` measures recall on (`--sample`): more narrow the
    /// confidence interval the target is checked against, so a smaller breadth can qualify.
    #[arg(long, default_value_t = 1000)]
    pub tune_sample: usize,
    /// Threads for building (both sides); queries run one at a time.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    #[command(flatten)]
    pub reference: crate::ReferenceArgs,
    /// Write the section into this file (between its ann markers, else appended).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// (internal) our side: `build` or `search`.
#[derive(clap::Args, Debug)]
pub struct AnnWorkerArgs {
    pub step: String,
    #[arg(long)]
    pub gallery: Option<PathBuf>,
    #[arg(long)]
    pub queries: Option<PathBuf>,
    #[arg(long)]
    pub dir: PathBuf,
    #[arg(long)]
    pub truth_out: Option<PathBuf>,
    #[arg(long, default_value_t = 0.98)]
    pub target_recall: f64,
    #[arg(long, default_value_t = 1000)]
    pub tune_sample: usize,
}

pub(crate) fn parse_size(s: &str) -> Result<usize> {
    let s = s.trim();
    let (digits, scale) = match s.chars().last() {
        Some('k' | 'K') => (&s[..s.len() - 1], 1_000),
        Some('m' | 'M') => (&s[..s.len() - 1], 1_000_000),
        _ => (s, 1),
    };
    Ok(digits.parse::<usize>().with_context(|| format!("gallery size {s:?}"))? * scale)
}

/// A seeded xorshift generator with normal draws.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn uniform(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        (-2.0 * self.uniform().ln()).sqrt() * (std::f64::consts::TAU * self.uniform()).cos()
    }
}

/// `n` unit vectors around `n / 100` random centres: each is its centre plus gaussian noise
/// of the same norm, normalised (cosine ≈ 0.7 to its centre, ≈ 0.5 between two of a
/// cluster). Queries come from the same centres with other noise.
fn clustered(n: usize, clusters: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let centres: Vec<f32> = (0..clusters)
        .flat_map(|_| {
            let mut c: Vec<f32> = (0..DIM).map(|_| rng.normal() as f32).collect();
            normalize(&mut c).expect("non-zero");
            c
        })
        .collect();
    let mut rng = Rng(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1);
    let scale = 1.0 / (DIM as f64).sqrt();
    let mut out = Vec::with_capacity(n * DIM);
    for _ in 0..n {
        let c = (rng.next() % clusters as u64) as usize;
        let mut v: Vec<f32> = (0..DIM).map(|j| centres[c * DIM + j] + (rng.normal() * scale) as f32).collect();
        normalize(&mut v).expect("non-zero");
        out.extend(v);
    }
    out
}

/// The gallery and query files for `n`, made once.
pub(crate) fn ensure_vectors(root: &Path, n: usize, queries: usize) -> Result<(PathBuf, PathBuf)> {
    let dir = root.join("vectors");
    std::fs::create_dir_all(&dir)?;
    let gallery = dir.join(format!("clustered-{n}x{DIM}.npy"));
    let query_file = dir.join(format!("clustered-{n}x{DIM}-queries-{queries}.npy"));
    let clusters = (n / 100).max(1);
    for (path, rows, seed) in [(&gallery, n, 1), (&query_file, queries, 2)] {
        if !path.is_file() {
            eprintln!("making {}", path.display());
            let tmp = path.with_extension("partial.npy");
            npy::write_f32(&tmp, rows, DIM, &clustered(rows, clusters, seed))?;
            std::fs::rename(tmp, path)?;
        }
    }
    Ok((gallery, query_file))
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map(|e| e.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum()).unwrap_or(0)
}

/// Our build step: the exact store, then the approximate index, then tuning.
fn build(args: &AnnWorkerArgs) -> Result<Value> {
    let gallery = npy::read(args.gallery.as_deref().context("--gallery")?)?;
    let _ = std::fs::remove_dir_all(&args.dir);
    let t = Instant::now();
    let mut exact = ExactIndex::open(&args.dir.join("vectors"), Access::ReadWrite, Some("bench"))?;
    for start in (0..gallery.rows).step_by(65_536) {
        let records: Vec<VectorRecord> = (start..(start + 65_536).min(gallery.rows))
            .map(|i| VectorRecord {
                id: ImageId(i as u64 + 1),
                domain: "bench".into(),
                image: gallery.row(i).to_vec(),
                captions: gallery.row(i).to_vec(),
            })
            .collect();
        exact.upsert(&records)?;
    }
    let exact_secs = t.elapsed().as_secs_f64();
    drop(gallery);
    let mut ann = AnnIndex::open(exact, &args.dir.join("ann"), AnnOptions::default());
    let t = Instant::now();
    ann.build(GraphParams::default())?;
    let build_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let tuned = ann.tune(&TuneOptions { target_recall: args.target_recall, sample: args.tune_sample, k: K })?;
    let tune_secs = t.elapsed().as_secs_f64();
    let status = ann.status();
    Ok(json!({
        "exact_secs": exact_secs,
        "build_secs": build_secs,
        "tune_secs": tune_secs,
        "tuning": tuned.tuning,
        "curve": tuned.curve,
        "params": status.params,
        "ann_bytes": dir_bytes(&args.dir.join("ann")),
        "exact_bytes": dir_bytes(&args.dir.join("vectors")),
        "hwm_kb": worker::rss_kb().1,
    }))
}

/// Our search step, in a fresh process: open, time every query alone, then the exact truth.
fn search(args: &AnnWorkerArgs) -> Result<Value> {
    let queries = npy::read(args.queries.as_deref().context("--queries")?)?;
    let t = Instant::now();
    let exact = ExactIndex::open(&args.dir.join("vectors"), Access::ReadOnly, Some("bench"))?;
    let ann = AnnIndex::open(exact, &args.dir.join("ann"), AnnOptions::default());
    let open_ms = t.elapsed().as_secs_f64() * 1e3;
    if !ann.is_usable() {
        bail!("the approximate index is not usable: {:?}", ann.status().problem);
    }
    let query = |i: usize| VectorQuery { vectors: queries.row(i), target: Target::Captions, k: K, domain: None };
    // One warm-up pass over a few queries (first-touch page faults of the graph), untimed.
    for i in 0..queries.rows.min(20) {
        ann.search(&query(i))?;
    }
    let mut latencies = Vec::with_capacity(queries.rows);
    let mut found = Vec::with_capacity(queries.rows);
    for i in 0..queries.rows {
        let t = Instant::now();
        let hits = ann.search(&query(i))?;
        latencies.push(t.elapsed().as_secs_f64() * 1e3);
        found.push(hits.into_iter().take(K).map(|h| h.id.0 as i64 - 1).collect::<Vec<i64>>());
    }
    let (rss_kb, hwm_kb) = worker::rss_kb();
    let (anon_kb, file_kb) = worker::rss_split_kb();
    // The truth, by the exact path (this maps every vector: resident memory is read above).
    let mut exact_ms = Vec::new();
    let mut truth = Vec::with_capacity(queries.rows * K);
    for i in 0..queries.rows {
        let t = Instant::now();
        let hits = ann.search_many_exact(&[query(i)])?.pop().unwrap_or_default();
        exact_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let mut rows: Vec<i64> = hits.into_iter().take(K).map(|h| h.id.0 as i64 - 1).collect();
        rows.resize(K, -1);
        truth.extend(rows);
    }
    if let Some(out) = &args.truth_out {
        npy::write_i64(out, queries.rows, K, &truth)?;
    }
    let (mut r1, mut r10) = (0usize, 0usize);
    for (i, got) in found.iter().enumerate() {
        let want = &truth[i * K..(i + 1) * K];
        r1 += (got.first() == want.first()) as usize;
        r10 += got.iter().filter(|g| want.contains(g)).count();
    }
    latencies.sort_by(f64::total_cmp);
    exact_ms.sort_by(f64::total_cmp);
    let n = queries.rows as f64;
    Ok(json!({
        "open_ms": open_ms,
        "p50_ms": crate::stats::percentile(&latencies, 0.5),
        "p99_ms": crate::stats::percentile(&latencies, 0.99),
        "recall_at_1": r1 as f64 / n,
        "recall_at_10": r10 as f64 / (n * K as f64),
        "rss_kb": rss_kb,
        "hwm_kb": hwm_kb,
        "anon_kb": anon_kb,
        "file_kb": file_kb,
        "exact_p50_ms": crate::stats::percentile(&exact_ms, 0.5),
        "breadth": ann.status().breadth,
    }))
}

pub fn worker(args: AnnWorkerArgs) -> Result<()> {
    let out = match args.step.as_str() {
        "build" => build(&args)?,
        "search" => search(&args)?,
        other => bail!("unknown step {other} (build or search)"),
    };
    worker::emit(&out);
    Ok(())
}

/// Runs `cmd` (output to `log`) and returns its last JSON line, with the child's peak RSS
/// from wait4.
fn run_json(cmd: Command, log: &Path) -> Result<(Value, u64)> {
    let exit = proc::run_measured(cmd, log)?;
    if !exit.success {
        bail!("{} failed:\n{}", log.display(), proc::log_tail(log, 20));
    }
    let text = std::fs::read_to_string(log)?;
    let line = text.lines().rev().find(|l| l.trim_start().starts_with('{')).context("no JSON line")?;
    Ok((serde_json::from_str(line)?, exit.max_rss_kb))
}

pub fn run(args: AnnArgs, repo: &Path) -> Result<()> {
    let root = args.reference.models_root(repo);
    let logs = root.join("logs");
    std::fs::create_dir_all(&logs)?;
    let me = std::env::current_exe()?;
    let mut rows = Vec::new();
    for size in &args.sizes {
        let n = parse_size(size)?;
        let label = crate::human(n);
        let (gallery, queries) = ensure_vectors(&root, n, args.queries)?;
        let dir = root.join("ann").join(&label);
        let truth = root.join("vectors").join(format!("clustered-{n}x{DIM}-truth-{}.npy", args.queries));
        let ours = |step: &str| {
            let mut cmd = Command::new(&me);
            cmd.args(["ann-worker", step, "--dir"]).arg(&dir);
            cmd.env("RAYON_NUM_THREADS", args.threads.to_string());
            cmd
        };
        eprintln!("{label}: building ours");
        let mut cmd = ours("build");
        cmd.arg("--gallery").arg(&gallery).arg("--target-recall").arg(args.target_recall.to_string());
        cmd.arg("--tune-sample").arg(args.tune_sample.to_string());
        let (built, build_peak) = run_json(cmd, &logs.join(format!("ann-{label}-build.log")))?;
        eprintln!("{label}: searching ours");
        let mut cmd = ours("search");
        cmd.arg("--queries").arg(&queries).arg("--truth-out").arg(&truth);
        cmd.env("RAYON_NUM_THREADS", "1");
        let (searched, _) = run_json(cmd, &logs.join(format!("ann-{label}-search.log")))?;
        let recall = searched["recall_at_10"].as_f64().context("recall")?;
        eprintln!("{label}: faiss");
        let mut cmd = Command::new(&args.reference.python);
        cmd.arg(repo.join("tools/reference/bench_reference.py"))
            .args(["ann-hnsw", "--gallery"])
            .arg(&gallery)
            .arg("--queries")
            .arg(&queries)
            .arg("--truth")
            .arg(&truth)
            .args(["--m", "32", "--ef-construction"])
            .arg(built["params"]["expansion_add"].as_u64().context("params")?.to_string())
            .arg("--recall")
            .arg(recall.to_string())
            .arg("--threads")
            .arg(args.threads.to_string())
            .arg("--out")
            .arg(root.join("ann").join(format!("faiss-{label}.index")));
        let (faiss, faiss_peak) = run_json(cmd, &logs.join(format!("ann-{label}-faiss.log")))?;
        rows.push(json!({"n": n, "label": label, "ours": {"build": built, "build_peak_kb": build_peak, "search": searched}, "faiss": faiss, "faiss_peak_kb": faiss_peak}));
    }
    let section = report(&args, &rows);
    println!("{section}");
    if let Some(out) = &args.out {
        crate::report::replace_section(out, &section, BEGIN, END)?;
    }
    Ok(())
}

fn mib(kb: f64) -> String {
    format!("{:.0} MiB", kb / 1024.0)
}

fn report(args: &AnnArgs, rows: &[Value]) -> String {
    let load = proc::capture("cat", &["/proc/loadavg"]).unwrap_or_default();
    let cpu_flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let has = |flag: &str| cpu_flags.split_whitespace().any(|w| w == flag);
    let mut s = String::new();
    s += &format!("{BEGIN}\n## Approximate search (issue 14): capmatch `ann` vs faiss `IndexHNSWFlat`\n\n");
    s += "_Generated by `cargo run --release -p capmatch-bench -- ann --out BENCHMARKS.md`; do not edit by hand._\n\n";
    s += &format!(
        "Conditions: {} CPUs, AVX-512 {}, graph distance kernel {}, load average at the end `{}`, build threads {} per side, one query at a time, caption mode, top {K}. \
         Clustered 512-d unit vectors ({} queries drawn like the gallery, not from it); every image has one caption (the same vector), \
         so our index holds two graphs of N vectors each and faiss one. Truth = our exact search. \
         Resident memory is split into the process's own pages and pages of files it maps (our graphs and the exact \
         store's vectors, read for re-ranking: clean page cache the kernel can drop or share between processes).\n\n",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        if has("avx512f") { "on" } else { "**off**" },
        capmatch_store::ann::distance_kernel(),
        load.trim(),
        args.threads,
        args.queries
    );
    s += "| N | side | build | on disk | RSS after the queries (own + mapped files) | recall@1 | recall@10 | p50 | p99 | settings |\n";
    s += "|---|---|---:|---:|---:|---:|---:|---:|---:|---|\n";
    for r in rows {
        let o = &r["ours"];
        let b = &o["build"];
        let q = &o["search"];
        let f = &r["faiss"];
        let num = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
        s += &format!(
            "| {} | capmatch (usearch bf16, M {}, efC {}) | {:.1} s (+ tune {:.1} s) | {} (+ exact store {}) | {} ({} + {}; exact store {}) | {:.4} | {:.4} | {:.3} ms | {:.3} ms | breadth {} ({}× re-ranked); exact path p50 {:.1} ms |\n",
            r["label"].as_str().unwrap_or(""),
            b["params"]["connectivity"],
            b["params"]["expansion_add"],
            num(&b["build_secs"]),
            num(&b["tune_secs"]),
            mib(num(&b["ann_bytes"]) / 1024.0),
            mib(num(&b["exact_bytes"]) / 1024.0),
            mib(num(&q["rss_kb"])),
            mib(num(&q["anon_kb"])),
            mib(num(&q["file_kb"])),
            mib(num(&b["exact_bytes"]) / 1024.0),
            num(&q["recall_at_1"]),
            num(&q["recall_at_10"]),
            num(&q["p50_ms"]),
            num(&q["p99_ms"]),
            q["breadth"],
            capmatch_store::ann::OVERSAMPLE,
            num(&q["exact_p50_ms"]),
        );
        s += &format!(
            "| {} | faiss {} HNSWFlat (M 32, efC {}) | {:.1} s | {} | {} ({} + {}) | {:.4} | {:.4} | {:.3} ms | {:.3} ms | efSearch {} (smallest with recall@10 ≥ ours) |\n",
            r["label"].as_str().unwrap_or(""),
            f["faiss"].as_str().unwrap_or("?"),
            f["ef_construction"],
            num(&f["build_secs"]),
            mib(num(&f["bytes"]) / 1024.0),
            mib(num(&f["rss_kb"])),
            mib(num(&f["anon_kb"])),
            mib(num(&f["file_kb"])),
            num(&f["recall_at_1"]),
            num(&f["recall_at_10"]),
            num(&f["p50_ms"]),
            num(&f["p99_ms"]),
            f["ef_search"],
        );
    }
    s += "\nTuning (`capmatch ann tune --target-recall ";
    s += &format!("{}`, {} gallery images as queries): ", args.target_recall, args.tune_sample);
    let curves: Vec<String> = rows
        .iter()
        .map(|r| {
            let t = &r["ours"]["build"]["tuning"];
            format!(
                "{}: breadth {} → recall@10 {:.4} caption / {:.4} image",
                r["label"].as_str().unwrap_or(""),
                t["breadth"],
                t["caption_recall"].as_f64().unwrap_or(f64::NAN),
                t["image_recall"].as_f64().unwrap_or(f64::NAN)
            )
        })
        .collect();
    s += &curves.join("; ");
    s += ".\n";
    s += END;
    s
}
