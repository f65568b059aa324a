//! `capmatch-bench inspect`: the time and peak memory of `capmatch inspect` at 10k, 30k and
//! 100k images against faiss computing the same neighbour graphs, interleaved.
//!
//! ```text
//! cargo run --release -p capmatch-bench -- inspect --out BENCHMARKS.md
//! ```
//!
//! For each size, clustered random 512-d vectors (one caption per image, made by
//! `tools/reference/inspect_graph_reference.py make`) are written straight into a gallery
//! through the store's APIs (catalog and exact index; the image files do not exist, so the
//! report shows placeholders instead of thumbnails). Then, round after round, our side runs
//! the real `capmatch inspect` binary from scratch (its graph cache removed) and the
//! reference runs `inspect_graph_reference.py graph` (faiss `IndexFlatIP`: every image's k
//! nearest in image space and in caption space), each as its own process measured with
//! `wait4` (wall time, peak RSS). Our graph is then compared with faiss's, and an
//! incremental run is timed after 1 % more images are added. The results replace the
//! section between the `inspect benchmark` markers of `--out`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use capmatch_inspect::{cache, GraphSpec, Space};
use capmatch_store::exact::Access;
use capmatch_store::{Catalog, CatalogBatch, ContentRecord, ExactIndex, FileRecord, ImageId, ModelIdentity, SqliteCatalog, VectorIndex, VectorRecord};

use crate::{median, npy, proc};

#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// Gallery sizes.
    #[arg(long, value_delimiter = ',', default_value = "10000,30000,100000")]
    pub sizes: Vec<usize>,
    /// Interleaved rounds per size (ours, faiss, ours, faiss, ...).
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// Neighbours per image.
    #[arg(long, default_value_t = 10)]
    pub k: usize,
    /// Rewrite the inspect section of this file (BENCHMARKS.md).
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub reference: crate::ReferenceArgs,
    /// The `capmatch` binary (default: build it with cargo).
    #[arg(long)]
    pub capmatch_bin: Option<PathBuf>,
    /// Threads for both sides (default: all CPUs).
    #[arg(long)]
    pub threads: Option<usize>,
    /// A remark printed above the table (e.g. that the machine was shared).
    #[arg(long)]
    pub note: Option<String>,
}

const DIM: usize = 512;
const BEGIN: &str = "<!-- inspect benchmark: begin (rewritten by `capmatch-bench inspect`) -->";
const END: &str = "<!-- inspect benchmark: end -->";

/// One size's measurements.
#[derive(Debug, Default)]
struct Row {
    n: usize,
    ours_wall: Vec<f64>,
    ours_graph: Vec<f64>,
    ours_rss_kb: Vec<u64>,
    ref_wall: Vec<f64>,
    ref_graph: Vec<f64>,
    ref_rss_kb: Vec<u64>,
    load: Option<f64>,
    /// Rows whose k neighbours are the same set as faiss's, per space.
    same_rows: Vec<(String, f64)>,
    incremental: Option<(usize, f64, f64)>,
}

fn script(repo: &Path) -> PathBuf {
    repo.join("tools/reference/inspect_graph_reference.py")
}

pub fn run(args: InspectArgs, repo: &Path) -> Result<()> {
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    let root = args.reference.models_root(repo);
    let base = root.join("inspect");
    std::fs::create_dir_all(base.join("logs"))?;
    let bin = match &args.capmatch_bin {
        Some(b) => b.clone(),
        None => crate::build_capmatch()?,
    };
    let mut rows = Vec::new();
    for &n in &args.sizes {
        let dir = base.join(format!("n{n}"));
        prepare(&args, repo, &dir, n)?;
        let mut row = Row { n, load: crate::loadavg(), ..Default::default() };
        let db = dir.join("gallery.db");
        for round in 0..args.rounds {
            eprintln!("[bench] inspect · {n} images · round {} · capmatch ...", round + 1);
            let _ = std::fs::remove_dir_all(cache::dir_for(&db));
            let report = dir.join("report");
            let mut cmd = Command::new(&bin);
            cmd.args(["inspect", "--db"]).arg(&db).arg("--out").arg(&report).args(["-k", &args.k.to_string(), "--json"]);
            cmd.env("RAYON_NUM_THREADS", threads.to_string());
            let exit = proc::run_measured(cmd, &base.join("logs").join(format!("ours-{n}-{round}.log")))?;
            if !exit.success {
                bail!("capmatch inspect failed: {}", proc::log_tail(&base.join("logs").join(format!("ours-{n}-{round}.log")), 10));
            }
            let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(report.join("report.json"))?)?;
            row.ours_wall.push(exit.wall_secs);
            row.ours_graph.push(json["work"]["seconds"]["graphs"].as_f64().unwrap_or(f64::NAN));
            row.ours_rss_kb.push(exit.max_rss_kb);

            eprintln!("[bench] inspect · {n} images · round {} · faiss ...", round + 1);
            let log = base.join("logs").join(format!("ref-{n}-{round}.log"));
            let mut cmd = Command::new(&args.reference.python);
            cmd.arg(script(repo)).args(["graph", "--dir"]).arg(&dir).args(["--k", &args.k.to_string(), "--threads", &threads.to_string()]);
            cmd.env("OMP_NUM_THREADS", threads.to_string());
            let exit = proc::run_measured(cmd, &log)?;
            if !exit.success {
                bail!("the faiss side failed: {}", proc::log_tail(&log, 10));
            }
            let line = std::fs::read_to_string(&log)?.lines().rev().find(|l| l.starts_with('{')).map(str::to_string).context("no result line")?;
            let out: serde_json::Value = serde_json::from_str(&line)?;
            let secs = out["seconds"]["image"].as_f64().unwrap_or(f64::NAN) + out["seconds"]["caption"].as_f64().unwrap_or(f64::NAN);
            row.ref_wall.push(exit.wall_secs);
            row.ref_graph.push(secs);
            row.ref_rss_kb.push(exit.max_rss_kb);
        }
        row.same_rows = agreement(&dir, &db, n, args.k)?;
        row.incremental = Some(incremental(&bin, &dir, &db, n, args.k, threads, &base)?);
        eprintln!("[bench] inspect · {n} images: {row:?}");
        rows.push(row);
    }
    let section = markdown(&rows, &args, threads);
    println!("{section}");
    if let Some(out) = &args.out {
        write_section(out, &section)?;
        eprintln!("[bench] wrote the inspect section of {}", out.display());
    }
    Ok(())
}

/// The vectors (once) and the gallery (once).
fn prepare(args: &InspectArgs, repo: &Path, dir: &Path, n: usize) -> Result<()> {
    if !dir.join("captions.npy").is_file() {
        eprintln!("[bench] making {n} clustered vectors ...");
        let status = Command::new(&args.reference.python)
            .arg(script(repo))
            .args(["make", "--n", &n.to_string(), "--dim", &DIM.to_string(), "--seed", "1", "--out"])
            .arg(dir)
            .status()?;
        if !status.success() {
            bail!("inspect_graph_reference.py make failed");
        }
    }
    let ready = dir.join("gallery.ready");
    if !ready.is_file() {
        eprintln!("[bench] writing a gallery of {n} images through the store ...");
        let db = dir.join("gallery.db");
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
        }
        let _ = std::fs::remove_dir_all(ExactIndex::dir_for(&db));
        let images = npy::read(&dir.join("images.npy"))?;
        let captions = npy::read(&dir.join("captions.npy"))?;
        let records: Vec<(String, VectorRecord)> = (0..n).map(|i| record(i, images.row(i).to_vec(), captions.row(i).to_vec())).collect();
        add(&db, &records)?;
        std::fs::write(&ready, "")?;
    }
    Ok(())
}

fn path_of(i: usize) -> String {
    format!("/bench/inspect/{}/{i:07}.png", ["photo", "sketch", "painting"][i % 3])
}

/// Image `i`'s (path, vectors); its id is derived from its path, as the indexer does.
fn record(i: usize, image: Vec<f32>, captions: Vec<f32>) -> (String, VectorRecord) {
    let path = path_of(i);
    let id = ImageId::for_path(&path);
    (path, VectorRecord { id, domain: ["photo", "sketch", "painting"][i % 3].into(), image, captions })
}

fn identity() -> ModelIdentity {
    ModelIdentity {
        clip: "bench/random-512".into(),
        clip_config: "random".into(),
        captioner: "bench/random".into(),
        captioner_config: "random".into(),
        prompt: String::new(),
    }
}

/// Writes images as `capmatch index` would commit them: vectors first, then the catalog.
fn add(db: &Path, records: &[(String, VectorRecord)]) -> Result<()> {
    let mut catalog = SqliteCatalog::open(db)?;
    catalog.bind_models(&identity())?;
    let mut index = ExactIndex::open(&ExactIndex::dir_for(db), Access::ReadWrite, Some(&identity().vector_fingerprint()))?;
    for chunk in records.chunks(10_000) {
        index.upsert(&chunk.iter().map(|(_, r)| r.clone()).collect::<Vec<_>>())?;
    }
    let mut batch = CatalogBatch { dim: Some(DIM), vector_generation: Some(index.generation()), ..Default::default() };
    for (path, r) in records {
        let path = path.clone();
        let hash = blake3_hex(&path);
        batch.contents.push(ContentRecord { hash: hash.clone(), width: 1, height: 1, captions: vec![format!("caption of {path}")] });
        batch.files.push(FileRecord { id: r.id, path, hash, size: 1, mtime_ns: 0, domain: r.domain.clone(), checked_at_ns: 0 });
    }
    catalog.apply(&batch)?;
    Ok(())
}

fn blake3_hex(s: &str) -> String {
    blake3::hash(s.as_bytes()).to_hex().to_string()
}

/// Per space, the share of images whose k neighbours (ties at the cut aside) are the same
/// set as faiss's.
fn agreement(dir: &Path, db: &Path, n: usize, k: usize) -> Result<Vec<(String, f64)>> {
    let mut out = Vec::new();
    for (space, name) in [(Space::Image, "image"), (Space::Caption, "caption")] {
        let ours = cache::load(&cache::dir_for(db), &GraphSpec { space, k, among: None }).context("our graph was not kept")?;
        let theirs = npy_ids(&dir.join(format!("faiss-{name}.npy")), n, k)?;
        let row_of: std::collections::HashMap<ImageId, usize> = (0..n).map(|i| (ImageId::for_path(&path_of(i)), i)).collect();
        let mut same = 0;
        for (id, hits) in &ours.rows {
            let i = row_of[id];
            let mut a: Vec<usize> = hits.iter().take(k).map(|h| row_of[&h.id]).collect();
            let mut b: Vec<usize> = theirs[i * k..(i + 1) * k].iter().map(|&x| x as usize).collect();
            a.sort_unstable();
            b.sort_unstable();
            same += (a == b) as usize;
        }
        out.push((name.to_string(), same as f64 / n as f64));
    }
    Ok(out)
}

/// faiss's neighbour ids (int64 `.npy`, n × k).
fn npy_ids(path: &Path, n: usize, k: usize) -> Result<Vec<i64>> {
    let bytes = std::fs::read(path)?;
    let header_len = match bytes.get(6) {
        Some(1) => 10 + u16::from_le_bytes([bytes[8], bytes[9]]) as usize,
        _ => 12 + u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
    };
    let body = &bytes[header_len..];
    if body.len() != n * k * 8 {
        bail!("{}: {} bytes of ids, expected {n} × {k}", path.display(), body.len());
    }
    Ok(body.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes"))).collect())
}

/// Adds 1 % new images (near-copies of existing ones, so they enter many rows), times an
/// inspection that updates the graph kept by the last round, then removes them again.
/// Returns (new images, wall seconds, graph seconds).
fn incremental(bin: &Path, dir: &Path, db: &Path, n: usize, k: usize, threads: usize, base: &Path) -> Result<(usize, f64, f64)> {
    let m = (n / 100).max(1);
    let images = npy::read(&dir.join("images.npy"))?;
    let captions = npy::read(&dir.join("captions.npy"))?;
    let mut state = 0x2545f4914f6cdd1du64;
    let mut jitter = |v: &[f32]| -> Vec<f32> {
        let mut out: Vec<f32> = v
            .iter()
            .map(|x| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                x + ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.02
            })
            .collect();
        capmatch_retrieval::normalize(&mut out).expect("non-zero");
        out
    };
    let added: Vec<(String, VectorRecord)> = (0..m).map(|j| record(n + j, jitter(images.row(j * 97 % n)), jitter(captions.row(j * 97 % n)))).collect();
    add(db, &added)?;
    let report = dir.join("report");
    let mut cmd = Command::new(bin);
    cmd.args(["inspect", "--db"]).arg(db).arg("--out").arg(&report).args(["-k", &k.to_string(), "--json"]);
    cmd.env("RAYON_NUM_THREADS", threads.to_string());
    let log = base.join("logs").join(format!("ours-{n}-incremental.log"));
    let exit = proc::run_measured(cmd, &log)?;
    // Back to the n images, whatever happened.
    let mut catalog = SqliteCatalog::open(db)?;
    let mut index = ExactIndex::open(&ExactIndex::dir_for(db), Access::ReadWrite, Some(&identity().vector_fingerprint()))?;
    index.remove(&added.iter().map(|(_, r)| r.id).collect::<Vec<_>>())?;
    index.compact()?;
    catalog.apply(&CatalogBatch {
        forget: added.iter().map(|(path, _)| path.clone()).collect(),
        vector_generation: Some(index.generation()),
        ..Default::default()
    })?;
    if !exit.success {
        bail!("the incremental capmatch inspect failed: {}", proc::log_tail(&log, 10));
    }
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(report.join("report.json"))?)?;
    Ok((m, exit.wall_secs, json["work"]["seconds"]["graphs"].as_f64().unwrap_or(f64::NAN)))
}

fn mib(kb: &[u64]) -> String {
    format!("{:.0} MiB", kb.iter().copied().max().unwrap_or(0) as f64 / 1024.0)
}

fn markdown(rows: &[Row], args: &InspectArgs, threads: usize) -> String {
    let mut s = String::new();
    s.push_str(BEGIN);
    s.push_str("\n\n## `capmatch inspect`: the neighbour graphs at 10k–100k images\n\n");
    s.push_str(&format!(
        "Reproduce with `cargo run --release -p capmatch-bench -- inspect --out BENCHMARKS.md` (sizes {}, interleaved rounds: {}, \
         k = {}, {threads} threads both sides; reference: `tools/reference/inspect_graph_reference.py`, faiss `IndexFlatIP`).\n\n",
        args.sizes.iter().map(|n| crate::human(*n)).collect::<Vec<_>>().join(", "),
        args.rounds,
        args.k
    ));
    if let Some(note) = &args.note {
        s.push_str(&format!("**{note}**\n\n"));
    }
    s.push_str(
        "| images | capmatch inspect, whole run | of which the two graphs | peak RSS | faiss, the two graphs | faiss process | faiss peak RSS | graph time ratio (faiss ÷ ours) | rows equal to faiss (image / caption) | +1 % images, incremental re-run | load |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let ratios: Vec<f64> = r.ref_graph.iter().zip(&r.ours_graph).map(|(a, b)| a / b).collect();
        let same = r.same_rows.iter().map(|(_, x)| format!("{:.2} %", x * 100.0)).collect::<Vec<_>>().join(" / ");
        let inc = r.incremental.map(|(m, wall, graph)| format!("{m} new: {wall:.1} s ({graph:.1} s graphs)")).unwrap_or_default();
        s.push_str(&format!(
            "| {} | {:.1} s | {:.1} s | {} | {:.1} s | {:.1} s | {} | {:.2}× | {same} | {inc} | {} |\n",
            crate::human(r.n),
            median(&r.ours_wall),
            median(&r.ours_graph),
            mib(&r.ours_rss_kb),
            median(&r.ref_graph),
            median(&r.ref_wall),
            mib(&r.ref_rss_kb),
            median(&ratios),
            r.load.map(|l| format!("{l:.1}")).unwrap_or_default(),
        ));
    }
    s.push_str(
        "\nMedians over the rounds; the ratio is the median of the per-round ratios of graph time. Ours: the real binary on a \
         gallery of random clustered 512-d vectors (n / 20 centres, three domains, one caption each) written through the store, \
         its graph cache removed before each round: it reads the catalog, computes both graphs blockwise (a `gemm` product \
         screens the candidates, the retrieval kernel scores the few kept, so the graph is bit-identical to a search per \
         image), classifies, clusters and writes the whole report (the image files do not exist, so no thumbnail is decoded). \
         faiss: load the same vectors, build `IndexFlatIP` over images and over captions, search every image for k + 1, drop \
         itself. \"Rows equal to faiss\": images whose k neighbours are the same set in both (faiss sums in another order, so a \
         near-tie at the k-th place may differ). The incremental re-run adds 1 % near-copies of existing images and runs \
         `capmatch inspect` with the graph the last round kept: only the new rows are computed, the others searched among the \
         new images.\n\n",
    );
    s.push_str(END);
    s.push('\n');
    s
}

/// Replaces the section between the markers in `out` (appends it when there is none).
fn write_section(out: &Path, section: &str) -> Result<()> {
    let old = std::fs::read_to_string(out).unwrap_or_default();
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(b), Some(e)) if e > b => format!("{}{}{}", &old[..b], section.trim_end(), &old[e + END.len()..]),
        _ => format!("{}\n{section}", old.trim_end()),
    };
    std::fs::write(out, new).with_context(|| format!("cannot write {}", out.display()))
}
