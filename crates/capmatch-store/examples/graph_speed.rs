//! Times the exact index's neighbour graph on random vectors:
//! `cargo run --release -p capmatch-store --example graph_speed -- N [DIM] [K]`.

use std::time::Instant;

use capmatch_retrieval::Target;
use capmatch_store::contract::random_records;
use capmatch_store::exact::Access;
use capmatch_store::{Among, ExactIndex, NeighbourQuery, NoProgress, VectorIndex};

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("a number")).collect();
    let n = args.first().copied().unwrap_or(20_000);
    let dim = args.get(1).copied().unwrap_or(512);
    let k = args.get(2).copied().unwrap_or(10);
    let dir = tempfile::tempdir().expect("a temporary folder");
    let mut index = ExactIndex::open(&dir.path().join("v"), Access::ReadWrite, None).expect("an index");
    let mut records = random_records(n, dim, 7);
    for r in &mut records {
        r.captions.truncate(dim); // one caption each, as BLIP gives
    }
    for chunk in records.chunks(10_000) {
        index.upsert(chunk).expect("upsert");
    }
    drop(records);
    for target in [Target::Image, Target::Captions] {
        let t = Instant::now();
        let graph = index.neighbours(&NeighbourQuery { target, k, of: None, among: Among::All }, &NoProgress).expect("graph");
        let secs = t.elapsed().as_secs_f64();
        let flops = 2.0 * (n as f64) * (n as f64) * dim as f64;
        println!("{target:?}: {n} × {n} × {dim}, k = {k}: {secs:.2} s ({:.1} GFLOP/s), {} rows", flops / secs / 1e9, graph.len());
    }
}
