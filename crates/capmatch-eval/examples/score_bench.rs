//! Times the scoring of one domain pair: `cargo run --release -p capmatch-eval --example
//! score_bench -- [N_QUERIES] [N_GALLERY] [DIM] [MODES]` (defaults 20000 20000 512 all).
//! Random unit vectors, 1 caption per image, 7 classes.

use std::time::Instant;

use capmatch_eval::scoring::{score_pair, DomainMatrix, ScoreOptions};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, d: usize| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let (nq, ng, dim) = (arg(0, 20_000), arg(1, 20_000), arg(2, 512));
    let modes = capmatch_eval::parse_modes(&args.get(3).cloned().into_iter().collect::<Vec<_>>()).unwrap();
    let mut state = 0x9e3779b97f4a7c15u64;
    let mut rnd = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let mut make = |n: usize| {
        let rows: Vec<(u32, Vec<f32>, Vec<Vec<f32>>)> =
            (0..n).map(|i| ((i % 7) as u32, (0..dim).map(|_| rnd()).collect(), vec![(0..dim).map(|_| rnd()).collect()])).collect();
        DomainMatrix::new(dim, rows.iter().map(|(c, v, caps)| (*c, v.as_slice(), caps.as_slice())), true).unwrap()
    };
    let t = Instant::now();
    let q = make(nq);
    let g = make(ng);
    eprintln!("data: {:.2?}", t.elapsed());
    let t = Instant::now();
    let accs = score_pair(&q, &g, &modes, &[1, 5, 15, 50, 100, 200], &ScoreOptions::default(), &|_| {});
    let dt = t.elapsed();
    for (m, a) in modes.iter().zip(&accs) {
        let f = a.finish();
        println!("{m}: P@1 {:.2} P@200 {:.2} mAP {:.2}", f.precision[0], f.precision[5], f.map);
    }
    println!(
        "{nq} queries x {ng} gallery, dim {dim}, modes {:?}: {:.2?} on {} threads",
        modes.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
        dt,
        rayon::current_num_threads()
    );
}
