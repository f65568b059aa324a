//! Throughput of the dot kernel on this CPU, per instruction set:
//! `cargo run --release -p capmatch-retrieval --example kernel_speed [ROWS] [DIM] [QUERIES]`.
//! Prints figures; asserts nothing about time.

use std::time::Instant;

use capmatch_retrieval::kernel::{dots_with, Isa};

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("numbers")).collect();
    let rows = args.first().copied().unwrap_or(100_000);
    let dim = args.get(1).copied().unwrap_or(512);
    let nq = args.get(2).copied().unwrap_or(1);
    let gallery: Vec<f32> = (0..rows * dim).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
    let queries: Vec<f32> = (0..nq * dim).map(|i| ((i * 104729) % 997) as f32 / 997.0 - 0.5).collect();
    let mut out = vec![0.0f32; nq * rows];
    for isa in [Isa::Portable, Isa::Avx2Fma, Isa::Avx512] {
        if !isa.available() {
            continue;
        }
        dots_with(isa, &queries, &gallery, dim, &mut out);
        let reps = 5;
        let t = Instant::now();
        for _ in 0..reps {
            dots_with(isa, &queries, &gallery, dim, &mut out);
        }
        let s = t.elapsed().as_secs_f64() / reps as f64;
        let flops = 2.0 * (nq * rows * dim) as f64;
        println!(
            "{isa:?}: {rows} rows × {dim} × {nq} queries, one thread: {:.2} ms, {:.1} GFLOP/s, {:.1} GB/s of gallery",
            s * 1e3,
            flops / s / 1e9,
            (rows * dim * 4) as f64 / s / 1e9
        );
    }
}
