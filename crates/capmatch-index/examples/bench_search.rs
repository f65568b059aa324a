//! Open + query figures at gallery scale: `cargo run --release -p capmatch-index --example
//! bench_search [N] [DIM] [CAPTIONS_PER_IMAGE]` (defaults 100000, 512, 1).
//!
//! Builds a temporary index of N random unit vectors (through the real `SqliteStore`),
//! then times: opening the file and loading every vector into a `Gallery`, and exact top-10
//! queries in each scoring mode. Prints figures; asserts nothing about time.

use std::time::Instant;

use capmatch_index::store::{FileRecord, ImageRecord, WriteBatch};
use capmatch_index::{Gallery, ModelIdentity, Scoring, SqliteStore, Store};

#[path = "../tests/common/rng.rs"]
mod rng;
use rng::Rng;

fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("numbers")).collect();
    let n = args.first().copied().unwrap_or(100_000);
    let dim = args.get(1).copied().unwrap_or(512);
    let captions = args.get(2).copied().unwrap_or(1).max(1);
    let tmp = tempfile::tempdir()?;
    let db = tmp.path().join("bench.db");

    let t = Instant::now();
    let mut store = SqliteStore::open(&db)?;
    store.bind_models(&ModelIdentity {
        clip: "bench".into(),
        clip_config: "0".into(),
        captioner: "bench".into(),
        captioner_config: "0".into(),
        prompt: "a picture of".into(),
    })?;
    let mut rng = Rng(0x2545F4914F6CDD1D);
    let mut batch = WriteBatch::default();
    for i in 0..n {
        let hash = format!("{i:064x}");
        batch.images.push(ImageRecord {
            hash: hash.clone(),
            width: 224,
            height: 224,
            captions: (0..captions).map(|c| format!("a picture of thing {i} number {c}")).collect(),
            image_embedding: rng.unit(dim),
            caption_embeddings: (0..captions).flat_map(|_| rng.unit(dim)).collect(),
        });
        batch.files.push(FileRecord {
            path: format!("/gallery/{}/{i:07}.jpg", ["photo", "cartoon", "sketch", "painting"][i % 4]),
            hash,
            size: 1000,
            mtime_ns: 0,
            domain: ["photo", "cartoon", "sketch", "painting"][i % 4].into(),
            checked_at_ns: 0,
        });
        if batch.files.len() == 1000 || i + 1 == n {
            store.apply(&batch)?;
            batch = WriteBatch::default();
        }
    }
    drop(store);
    let bytes = std::fs::metadata(&db)?.len() + std::fs::metadata(tmp.path().join("bench.db-wal")).map(|m| m.len()).unwrap_or(0);
    println!("built {n} images × {dim} dims × {captions} caption(s) in {:.2?} ({:.1} MiB)", t.elapsed(), bytes as f64 / 1048576.0);

    for round in 0..3 {
        let t = Instant::now();
        let store = SqliteStore::open_read_only(&db)?;
        let gallery = Gallery::load(&store, None)?;
        let load = t.elapsed();
        let q = rng.unit(dim);
        let t = Instant::now();
        let hits = gallery.search(&q, Scoring::Caption, 10, None)?;
        let first = t.elapsed();
        println!(
            "round {round}: open+load {:.1?} ({} images), first caption query {:.2?}, open+load+query {:.1?}; top score {:.4}",
            load,
            gallery.len(),
            first,
            load + first,
            hits[0].score
        );
    }
    let store = SqliteStore::open_read_only(&db)?;
    let gallery = Gallery::load(&store, None)?;
    for (name, scoring, domain) in [
        ("caption", Scoring::Caption, None),
        ("image", Scoring::Image, None),
        ("fused", Scoring::Fused { caption_weight: 0.5 }, None),
        ("caption, one domain", Scoring::Caption, Some("sketch")),
    ] {
        let queries: Vec<Vec<f32>> = (0..20).map(|_| rng.unit(dim)).collect();
        let t = Instant::now();
        for q in &queries {
            std::hint::black_box(gallery.search(q, scoring, 10, domain)?);
        }
        println!("query {name:<20} k=10: {:.2?} per query (mean of 20)", t.elapsed() / 20);
    }
    Ok(())
}
