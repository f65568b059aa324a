//! Open time and memory of a large gallery, as `capmatch search` sees it:
//! `cargo run --release -p capmatch-engine --example open_bench -- N [DIM] [DIR]`
//! (defaults: 100000, 512, target/open-bench-N).
//!
//! Builds (once, cached in DIR) a gallery of N images with one caption each — random unit
//! vectors written through the catalog and the exact index, with paths and captions like a
//! real gallery's — then measures in a fresh process: `Engine::open_reader`, the first and
//! later caption-mode searches (k = 10), and the resident memory after them (VmRSS, VmHWM)
//! against the bytes of the vectors a caption-mode search scans. Prints one JSON line;
//! asserts nothing about time.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use capmatch_engine::store::exact::Access;
use capmatch_engine::store::{
    Catalog, CatalogBatch, ContentRecord, ExactIndex, FileRecord, ImageId, ModelIdentity, SqliteCatalog, VectorIndex, VectorRecord,
};
use capmatch_engine::{Engine, Mode, Query, QueryModels, SearchRequest};

struct Rng(u64);
impl Rng {
    fn unit(&mut self, dim: usize) -> Vec<f32> {
        let mut v: Vec<f32> = (0..dim)
            .map(|_| {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                (self.0 >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect();
        capmatch_engine::retrieval::normalize(&mut v).expect("non-zero");
        v
    }
}

fn identity() -> ModelIdentity {
    ModelIdentity {
        clip: "bench".into(),
        clip_config: "0".into(),
        captioner: "bench".into(),
        captioner_config: "0".into(),
        prompt: "a picture of".into(),
    }
}

fn build(db: &Path, n: usize, dim: usize) -> anyhow::Result<()> {
    if db.exists() {
        let engine = Engine::open_reader(db, QueryModels::default())?;
        if engine.len()? == n {
            return Ok(());
        }
    }
    let _ = std::fs::remove_file(db);
    let _ = std::fs::remove_dir_all(ExactIndex::dir_for(db));
    let t = Instant::now();
    let mut catalog = SqliteCatalog::open(db)?;
    catalog.bind_models(&identity())?;
    let mut index = ExactIndex::open(&ExactIndex::dir_for(db), Access::ReadWrite, Some(&identity().vector_fingerprint()))?;
    let mut rng = Rng(0x2545F4914F6CDD1D);
    let domains = ["photo", "cartoon", "sketch", "painting"];
    for start in (0..n).step_by(50_000) {
        let end = (start + 50_000).min(n);
        let mut batch = CatalogBatch { dim: Some(dim), ..Default::default() };
        let mut vectors = Vec::new();
        for i in start..end {
            let path = format!("/gallery/{}/{i:07}.jpg", domains[i % 4]);
            let id = ImageId::for_path(&path);
            let hash = format!("{i:064x}");
            batch.contents.push(ContentRecord { hash: hash.clone(), width: 640, height: 480, captions: vec![format!("a picture of thing {i}")] });
            batch.files.push(FileRecord { id, path, hash, size: 100_000, mtime_ns: 0, domain: domains[i % 4].into(), checked_at_ns: 0 });
            vectors.push(VectorRecord { id, domain: domains[i % 4].into(), image: rng.unit(dim), captions: rng.unit(dim) });
        }
        index.upsert(&vectors)?;
        batch.vector_generation = Some(index.generation());
        catalog.apply(&batch)?;
    }
    eprintln!("built {n} images in {:.1?}", t.elapsed());
    Ok(())
}

fn status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

fn measure(db: &Path, dim: usize) -> anyhow::Result<()> {
    let rss_start = status_kb("VmRSS:");
    let t = Instant::now();
    let engine = Engine::open_reader(db, QueryModels::default())?;
    let n = engine.len()?;
    let open_ms = t.elapsed().as_secs_f64() * 1e3;
    let rss_open = status_kb("VmRSS:");
    let mut rng = Rng(42);
    let mut times = Vec::new();
    for _ in 0..11 {
        let q = rng.unit(dim);
        let t = Instant::now();
        let hits = engine.search(&SearchRequest::new(Query::Vector(q), Mode::Caption, 10))?.hits;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(hits.len(), 10);
    }
    let first_ms = times[0];
    let mut rest = times[1..].to_vec();
    rest.sort_by(f64::total_cmp);
    let scanned_bytes = (n * dim * 4) as u64;
    let rss = status_kb("VmRSS:") * 1024;
    let hwm = status_kb("VmHWM:") * 1024;
    println!(
        "{}",
        serde_json::json!({
            "images": n, "dim": dim, "open_ms": open_ms, "first_search_ms": first_ms, "search_ms_median": rest[rest.len() / 2],
            "rss_start_bytes": rss_start * 1024, "rss_after_open_bytes": rss_open * 1024, "rss_after_search_bytes": rss,
            "peak_rss_bytes": hwm, "scanned_vector_bytes": scanned_bytes,
            "rss_over_scanned": rss as f64 / scanned_bytes as f64,
        })
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--measure") {
        return measure(Path::new(&args[1]), args[2].parse()?);
    }
    let n: usize = args.first().map(|a| a.parse()).transpose()?.unwrap_or(100_000);
    let dim: usize = args.get(1).map(|a| a.parse()).transpose()?.unwrap_or(512);
    let dir = args.get(2).map(PathBuf::from).unwrap_or_else(|| PathBuf::from(format!("target/open-bench-{n}")));
    std::fs::create_dir_all(&dir)?;
    let db = dir.join("gallery.db");
    build(&db, n, dim)?;
    // Cold: drop the page cache if allowed (root on Linux), so the first search reads from disk.
    let dropped = std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok();
    eprintln!("page cache dropped: {dropped}");
    let status = Command::new(std::env::current_exe()?).arg("--measure").arg(&db).arg(dim.to_string()).status()?;
    anyhow::ensure!(status.success(), "measurement failed");
    Ok(())
}
