//! `capmatch-bench milvus`: the Milvus store (issue 13) against the exact in-process store
//! and faiss, and sharded indexing into it.
//!
//! ```text
//! cargo run --release -p capmatch-bench -- milvus --sizes 100k --out BENCHMARKS.md
//! ```
//!
//! Starts the real Milvus standalone server from PyPI (`scripts/milvus.sh start server
//! PORT`, installed by `scripts/milvus.sh install`), fresh (an empty data folder) for each
//! size and again for the indexing runs. For each size:
//! the clustered vectors of the `ann` benchmark (one caption per image, the same vector) are
//! upserted into a collection through `MilvusIndex`, then each query is timed alone (caption
//! mode, top 10; `MilvusIndex` answers exactly: Milvus' candidates re-scored from the stored
//! vectors), against the truth of the exact store; the exact in-process store and faiss
//! `IndexFlatIP` are timed on the same queries. Memory: the server's resident set (with its
//! child processes) after the queries, against the in-process sides'. Then `capmatch index`
//! with the real models over the real-image folder: into the local store, into Milvus as
//! one shard, and as two shards at once. Written between `<!-- milvus:begin -->` and
//! `<!-- milvus:end -->` of `--out`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use capmatch_milvus::{MilvusAddress, MilvusIndex, MilvusOptions};
use capmatch_retrieval::Target;
use capmatch_store::exact::Access;
use capmatch_store::{ExactIndex, ImageId, VectorIndex, VectorQuery, VectorRecord};
use serde_json::{json, Value};

use crate::{ann, npy, proc, worker};

const K: usize = 10;
/// The query file of the `ann` benchmark, whose truth it wrote.
const ANN_QUERIES: usize = 1000;
const BEGIN: &str = "<!-- milvus:begin -->";
const END: &str = "<!-- milvus:end -->";

#[derive(clap::Args, Debug)]
pub struct MilvusArgs {
    /// Comma-separated gallery sizes (k and M suffixes allowed).
    #[arg(long, value_delimiter = ',', default_value = "100k")]
    pub sizes: Vec<String>,
    /// Queries timed per side (the first of the `ann` benchmark's 1000).
    #[arg(long, default_value_t = 200)]
    pub queries: usize,
    /// Loopback port of the Milvus server this run starts.
    #[arg(long, default_value_t = 19731)]
    pub port: u16,
    /// The server's time tick (`proxy.timeTickInterval`), which a strongly consistent read
    /// waits for: 200 ms is Milvus' default, the tests run at 20.
    #[arg(long, default_value_t = 200)]
    pub tick_ms: u32,
    /// Images indexed by the throughput runs (from the real-image folder).
    #[arg(long, default_value_t = 16)]
    pub images: usize,
    #[command(flatten)]
    pub reference: crate::ReferenceArgs,
    /// Write the section into this file (between its milvus markers, else appended).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// (internal) one side's measurement in its own process.
#[derive(clap::Args, Debug)]
pub struct MilvusWorkerArgs {
    /// `milvus` (load, then search) or `exact`.
    pub step: String,
    #[arg(long)]
    pub gallery: Option<PathBuf>,
    #[arg(long)]
    pub queries: PathBuf,
    #[arg(long)]
    pub truth: PathBuf,
    /// Queries timed.
    #[arg(long)]
    pub count: usize,
    #[arg(long)]
    pub addr: Option<String>,
    #[arg(long)]
    pub collection: Option<String>,
    /// The exact store's folder (`exact`).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// Times each query alone and scores recall@10 against `truth` (gallery row numbers).
fn time_queries(index: &dyn VectorIndex, queries: &npy::Matrix, truth: &[i64], count: usize) -> Result<Value> {
    let query = |i: usize| VectorQuery { vectors: queries.row(i), target: Target::Captions, k: K, domain: None };
    for i in 0..count.min(5) {
        index.search(&query(i))?;
    }
    let mut latencies = Vec::with_capacity(count);
    let mut found = 0usize;
    for i in 0..count {
        let t = Instant::now();
        let hits = index.search(&query(i))?;
        latencies.push(t.elapsed().as_secs_f64() * 1e3);
        let want = &truth[i * K..(i + 1) * K];
        found += hits.iter().take(K).filter(|h| want.contains(&(h.id.0 as i64 - 1))).count();
    }
    latencies.sort_by(f64::total_cmp);
    let (rss_kb, _) = worker::rss_kb();
    Ok(json!({
        "p50_ms": crate::stats::percentile(&latencies, 0.5),
        "p99_ms": crate::stats::percentile(&latencies, 0.99),
        "recall_at_10": found as f64 / (count * K) as f64,
        "rss_kb": rss_kb,
    }))
}

pub fn worker(args: MilvusWorkerArgs) -> Result<()> {
    let queries = npy::read(&args.queries)?;
    let truth = npy::read_i64(&args.truth)?;
    let count = args.count.min(queries.rows);
    let out = match args.step.as_str() {
        "milvus" => {
            let gallery = npy::read(args.gallery.as_deref().context("--gallery")?)?;
            let addr = args.addr.context("--addr")?;
            let collection = args.collection.context("--collection")?;
            let address = MilvusAddress::parse(&format!("milvus://{addr}/{collection}"), None)?;
            let options = MilvusOptions { fingerprint: Some("bench".into()), shard: "0/1".into(), writable: true };
            let mut index = MilvusIndex::open(&address, options)?;
            let t = Instant::now();
            for start in (0..gallery.rows).step_by(4096) {
                let records: Vec<VectorRecord> = (start..(start + 4096).min(gallery.rows))
                    .map(|i| VectorRecord {
                        id: ImageId(i as u64 + 1),
                        domain: "bench".into(),
                        image: gallery.row(i).to_vec(),
                        captions: gallery.row(i).to_vec(),
                    })
                    .collect();
                index.upsert(&records)?;
            }
            let load_secs = t.elapsed().as_secs_f64();
            drop(gallery);
            let mut v = time_queries(&index, &queries, &truth, count)?;
            v["load_secs"] = json!(load_secs);
            v
        }
        "exact" => {
            let dir = args.dir.context("--dir")?;
            let index = ExactIndex::open(&dir, Access::ReadOnly, Some("bench"))?;
            time_queries(&index, &queries, &truth, count)?
        }
        other => bail!("unknown step {other} (milvus or exact)"),
    };
    worker::emit(&out);
    Ok(())
}

/// Resident memory of `pid` and every process below it, in KiB.
fn tree_rss_kb(pid: u32) -> u64 {
    let mut total = 0;
    let mut todo = vec![pid];
    let all: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter_map(|p| {
                    let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
                    let after = stat.rsplit_once(')')?.1;
                    let ppid = after.split_whitespace().nth(1)?.parse().ok()?;
                    Some((p, ppid))
                })
                .collect()
        })
        .unwrap_or_default();
    while let Some(p) = todo.pop() {
        let status = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
        total += status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        todo.extend(all.iter().filter(|(_, parent)| *parent == p).map(|(child, _)| *child));
    }
    total
}

fn run_json(cmd: Command, log: &Path) -> Result<Value> {
    let exit = proc::run_measured(cmd, log)?;
    if !exit.success {
        bail!("{} failed:\n{}", log.display(), proc::log_tail(log, 20));
    }
    let text = std::fs::read_to_string(log)?;
    let line = text.lines().rev().find(|l| l.trim_start().starts_with('{')).context("no JSON line")?;
    let mut v: Value = serde_json::from_str(line)?;
    v["peak_rss_kb"] = json!(exit.max_rss_kb);
    Ok(v)
}

/// Starts `capmatch index` over `dir` with the real models.
fn index_run(repo: &Path, root: &Path, db: &Path, extra: &[String], dir: &Path, log: &Path) -> Result<std::process::Child> {
    let mut cmd = Command::new(repo.join("target/release/capmatch"));
    cmd.arg("index")
        .arg(dir)
        .arg("--db")
        .arg(db)
        .arg("--clip")
        .arg(root.join("clip-vit-base-patch32"))
        .arg("--captioner")
        .arg(root.join("blip-image-captioning-base"))
        .args(extra)
        .stdout(std::fs::File::create(log)?)
        .stderr(std::fs::File::create(log.with_extension("err"))?);
    Ok(cmd.spawn().with_context(|| format!("running {cmd:?} (build the capmatch binary first)"))?)
}

pub fn run(args: MilvusArgs, repo: &Path) -> Result<()> {
    let root = args.reference.models_root(repo);
    let logs = root.join("logs");
    std::fs::create_dir_all(&logs)?;
    let me = std::env::current_exe()?;
    let script = repo.join("scripts/milvus.sh");
    let status = Command::new(&script).arg("install").status()?;
    if !status.success() {
        bail!("scripts/milvus.sh install failed");
    }
    let port = args.port.to_string();
    // A fresh server (empty data folder) for each size and for the indexing runs: Milvus
    // keeps a dropped collection's files for a day and its message log besides, so one
    // server through 100k and 1M filled this machine's 24 GB of free disk.
    let fresh_server = || -> Result<u32> {
        let _ = Command::new(&script).args(["wipe", "server", &port]).status();
        let started = Command::new(&script).args(["start", "server", &port]).env("CAPMATCH_MILVUS_TICK_MS", args.tick_ms.to_string()).output()?;
        if !started.status.success() {
            bail!("starting the Milvus server failed: {}", String::from_utf8_lossy(&started.stderr));
        }
        String::from_utf8_lossy(&started.stdout).trim().parse().context("the server's pid")
    };
    let addr = format!("127.0.0.1:{port}");
    let version = proc::capture(repo.join(".milvus/venv-server/bin/pip").to_str().unwrap_or("pip"), &["show", "milvus"])
        .and_then(|s| s.lines().find(|l| l.starts_with("Version:")).map(|l| l[8..].trim().to_owned()))
        .unwrap_or_else(|| "?".into());
    let result = (|| -> Result<(Vec<Value>, Value)> {
        let mut rows = Vec::new();
        for size in &args.sizes {
            let n = ann::parse_size(size)?;
            let label = crate::human(n);
            let (gallery, queries) = ann::ensure_vectors(&root, n, ANN_QUERIES)?;
            let truth = root.join("vectors").join(format!("clustered-{n}x512-truth-{ANN_QUERIES}.npy"));
            let exact_dir = root.join("ann").join(&label).join("vectors");
            if !truth.is_file() || !exact_dir.is_dir() {
                bail!("run `capmatch-bench ann --sizes {label}` first (it builds the exact store and the truth)");
            }
            let server_pid = fresh_server()?;
            let idle = tree_rss_kb(server_pid);
            eprintln!("{label}: Milvus");
            let mut cmd = Command::new(&me);
            cmd.args(["milvus-worker", "milvus", "--addr", &addr, "--collection", &format!("bench_{label}")])
                .arg("--gallery")
                .arg(&gallery)
                .arg("--queries")
                .arg(&queries)
                .arg("--truth")
                .arg(&truth)
                .args(["--count", &args.queries.to_string()]);
            let milvus = run_json(cmd, &logs.join(format!("milvus-{label}.log")))?;
            let server_rss = tree_rss_kb(server_pid);
            eprintln!("{label}: exact");
            let mut cmd = Command::new(&me);
            cmd.args(["milvus-worker", "exact", "--dir"]).arg(&exact_dir).arg("--queries").arg(&queries).arg("--truth").arg(&truth);
            cmd.args(["--count", &args.queries.to_string()]);
            cmd.env("RAYON_NUM_THREADS", "2");
            let exact = run_json(cmd, &logs.join(format!("milvus-{label}-exact.log")))?;
            eprintln!("{label}: faiss");
            let mut cmd = Command::new(&args.reference.python);
            cmd.arg(repo.join("tools/reference/bench_reference.py"))
                .args(["flat-latency", "--gallery"])
                .arg(&gallery)
                .arg("--queries")
                .arg(&queries)
                .arg("--truth")
                .arg(&truth)
                .args(["--threads", "2", "--count", &args.queries.to_string()]);
            let faiss = run_json(cmd, &logs.join(format!("milvus-{label}-faiss.log")))?;
            rows.push(json!({"n": n, "label": label, "milvus": milvus, "server_idle_kb": idle, "server_kb": server_rss, "exact": exact, "faiss": faiss}));
        }
        // Indexing throughput: the same images into the local store, one Milvus shard, two.
        // The real photos and drawings the main harness's index workload uses.
        let source = root.join("index-images/real-40/photos");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&source)
            .with_context(|| format!("{} (run the main harness once: it prepares it)", source.display()))?
            .flatten()
            .map(|e| e.path())
            .collect();
        files.sort();
        files.truncate(args.images);
        let dir = root.join("milvus-index-images");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("photos"))?;
        for f in &files {
            std::fs::copy(f, dir.join("photos").join(f.file_name().context("a file name")?))?;
        }
        let work = root.join("milvus-index-dbs");
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work)?;
        fresh_server()?;
        let mut throughput = serde_json::Map::new();
        for (name, shards) in [("local", 0u32), ("milvus, 1 shard", 1), ("milvus, 2 shards at once", 2)] {
            eprintln!("indexing: {name}");
            let t = Instant::now();
            let mut children = Vec::new();
            for s in 0..shards.max(1) {
                let db = work.join(format!("{}-{s}.db", shards));
                let mut extra = Vec::new();
                if shards > 0 {
                    extra.extend(["--store".to_owned(), format!("milvus://{addr}/index_{shards}")]);
                    extra.extend(["--shard".to_owned(), format!("{s}/{shards}")]);
                }
                children.push(index_run(repo, &root, &db, &extra, &dir, &logs.join(format!("milvus-index-{shards}-{s}.log")))?);
            }
            for mut c in children {
                if !c.wait()?.success() {
                    bail!("an index run failed (logs in {})", logs.display());
                }
            }
            let secs = t.elapsed().as_secs_f64();
            throughput.insert(name.into(), json!({"secs": secs, "images_per_sec": files.len() as f64 / secs}));
        }
        Ok((rows, json!({"images": files.len(), "runs": throughput})))
    })();
    let _ = Command::new(&script).args(["wipe", "server", &port]).status();
    let (rows, throughput) = result?;
    let section = report(&args, &version, &rows, &throughput);
    println!("{section}");
    if let Some(out) = &args.out {
        crate::report::replace_section(out, &section, BEGIN, END)?;
    }
    Ok(())
}

fn mib(kb: f64) -> String {
    format!("{:.0} MiB", kb / 1024.0)
}

fn report(args: &MilvusArgs, version: &str, rows: &[Value], throughput: &Value) -> String {
    let load = proc::capture("cat", &["/proc/loadavg"]).unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    let num = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let mut s = format!("{BEGIN}\n## The Milvus store (issue 13): search, memory and sharded indexing\n\n");
    s += "_Generated by `cargo run --release -p capmatch-bench -- milvus --out BENCHMARKS.md`; do not edit by hand._\n\n";
    s += &format!(
        "Conditions: {cpu}, {} CPUs, load average at the end `{}`. Milvus {version} standalone (PyPI `milvus`, \
         the real server, started by `scripts/milvus.sh`) on this machine, over loopback, time tick {} ms (every read is \
         strongly consistent, so waits for the next tick); collections with a FLAT (exact) inner-product index. Clustered 512-d unit vectors of the `ann` benchmark, one caption per image, \
         {} queries one at a time, caption mode, top {K}; truth = the exact store.\n\n",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        load.trim(),
        args.tick_ms,
        args.queries
    );
    s += "| N | side | load | p50 | p99 | recall@10 | resident memory |\n|---|---|---:|---:|---:|---:|---:|\n";
    for r in rows {
        let (m, e, f) = (&r["milvus"], &r["exact"], &r["faiss"]);
        let label = r["label"].as_str().unwrap_or("");
        s += &format!(
            "| {label} | capmatch → Milvus (`--store milvus://`) | {:.1} s | {:.2} ms | {:.2} ms | {:.4} | server {} (idle before: {}) + client {} |\n",
            num(&m["load_secs"]),
            num(&m["p50_ms"]),
            num(&m["p99_ms"]),
            num(&m["recall_at_10"]),
            mib(num(&r["server_kb"])),
            mib(num(&r["server_idle_kb"])),
            mib(num(&m["rss_kb"])),
        );
        s += &format!(
            "| {label} | capmatch exact store (in process) | — | {:.2} ms | {:.2} ms | {:.4} | {} (mapped files) |\n",
            num(&e["p50_ms"]),
            num(&e["p99_ms"]),
            num(&e["recall_at_10"]),
            mib(num(&e["rss_kb"])),
        );
        s += &format!(
            "| {label} | faiss {} IndexFlatIP (in process) | {:.1} s | {:.2} ms | {:.2} ms | {:.4} | {} |\n",
            f["faiss"].as_str().unwrap_or("?"),
            num(&f["build_secs"]),
            num(&f["p50_ms"]),
            num(&f["p99_ms"]),
            num(&f["recall_at_10"]),
            mib(num(&f["rss_kb"])),
        );
    }
    s += &format!(
        "\nIndexing throughput, `capmatch index` with CLIP ViT-B/32 and BLIP base (f32) over {} real images:\n\n",
        throughput["images"]
    );
    s += "| run | wall time | images/s |\n|---|---:|---:|\n";
    if let Some(runs) = throughput["runs"].as_object() {
        for (name, v) in runs {
            s += &format!("| {name} | {:.1} s | {:.3} |\n", num(&v["secs"]), num(&v["images_per_sec"]));
        }
    }
    s += "\nTwo shards at once share this machine's 2 cores, so they show the store taking concurrent writers, not a speed-up; \
          on N machines each shard has its own cores.\n";
    s += END;
    s
}
