//! The library comparison behind capmatch's approximate index: usearch against hnsw_rs on
//! clustered 512-d unit vectors, each graph's candidates re-ranked exactly as capmatch does
//! (k × 4 candidates), recall@1/@10 against brute force, build time, size, memory, latency.
//!
//! ```text
//! cd tools/ann-compare && cargo run --release -- 100000 [usearch|hnsw_rs|all] [SCRATCH_DIR]
//! ```
//!
//! Not part of the workspace or of CI; the figures are in BENCHMARKS.md.
use std::path::PathBuf;
use std::time::Instant;

use rayon::prelude::*;

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
    fn gauss(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

fn normalize(v: &mut [f32]) {
    let n = v.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>().sqrt();
    for x in v {
        *x = (*x as f64 / n) as f32;
    }
}

/// n vectors around n/100 centres, each centre + unit-norm gaussian noise, normalised.
fn clustered(n: usize, dim: usize, seed: u64, centres: &[f32]) -> Vec<f32> {
    let nc = centres.len() / dim;
    (0..n)
        .into_par_iter()
        .flat_map_iter(|i| {
            let mut rng = Rng((seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (i as u64).wrapping_mul(0xD1B5_4A32_D192_ED03)) | 1);
            for _ in 0..4 {
                rng.next();
            }
            let c = (rng.next() % nc as u64) as usize;
            let s = 1.0 / (dim as f64).sqrt();
            let mut v: Vec<f32> = (0..dim).map(|j| centres[c * dim + j] + (rng.gauss() * s) as f32).collect();
            normalize(&mut v);
            v
        })
        .collect()
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    for (x, y) in a.chunks_exact(16).zip(b.chunks_exact(16)) {
        for j in 0..16 {
            acc[j] += x[j] * y[j];
        }
    }
    acc.iter().sum()
}

fn truth(data: &[f32], queries: &[f32], dim: usize, k: usize) -> Vec<Vec<u64>> {
    queries
        .par_chunks(dim)
        .map(|q| {
            let mut s: Vec<(f32, u64)> = data.chunks(dim).enumerate().map(|(i, v)| (dot(q, v), i as u64)).collect();
            s.select_nth_unstable_by(k, |a, b| b.0.total_cmp(&a.0));
            s.truncate(k);
            s.sort_by(|a, b| b.0.total_cmp(&a.0));
            s.into_iter().map(|x| x.1).collect()
        })
        .collect()
}

fn rss_mib() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let l = s.lines().find(|l| l.starts_with("VmRSS")).unwrap();
    l.split_whitespace().nth(1).unwrap().parse::<f64>().unwrap() / 1024.0
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Recall@10 of re-ranked candidates: the graph returns `count` candidates, re-scored exactly.
fn evaluate(
    name: &str,
    data: &[f32],
    queries: &[f32],
    dim: usize,
    gt: &[Vec<u64>],
    count: usize,
    search: &dyn Fn(&[f32], usize) -> Vec<u64>,
) {
    let mut lat = Vec::new();
    let mut hit1 = 0;
    let mut hit10 = 0;
    for (q, want) in queries.chunks(dim).zip(gt) {
        let t = Instant::now();
        let cands = search(q, count);
        let mut s: Vec<(f32, u64)> = cands.iter().map(|&c| (dot(q, &data[c as usize * dim..(c as usize + 1) * dim]), c)).collect();
        s.sort_by(|a, b| b.0.total_cmp(&a.0));
        s.dedup_by_key(|x| x.1);
        s.truncate(10);
        lat.push(t.elapsed().as_secs_f64() * 1e3);
        hit1 += (s.first().map(|x| x.1) == Some(want[0])) as usize;
        hit10 += s.iter().filter(|x| want.contains(&x.1)).count();
    }
    let nq = gt.len();
    let p50 = percentile(&mut lat, 0.5);
    let p99 = percentile(&mut lat, 0.99);
    println!(
        "{name:<40} count {count:>4}  recall@1 {:.4}  recall@10 {:.4}  p50 {p50:.3} ms  p99 {p99:.3} ms",
        hit1 as f64 / nq as f64,
        hit10 as f64 / (10 * nq) as f64
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).map(|s| s.parse().unwrap()).unwrap_or(100_000);
    let which = args.get(2).cloned().unwrap_or("all".into());
    // Where the graphs are saved to measure their size and reload time.
    let scratch = args.get(3).map(PathBuf::from).unwrap_or_else(|| std::env::temp_dir().join("ann-compare"));
    std::fs::create_dir_all(&scratch).unwrap();
    let dim = 512;
    let mut rng = Rng(42);
    let centres: Vec<f32> = (0..(n / 100))
        .flat_map(|_| {
            let mut c: Vec<f32> = (0..dim).map(|_| rng.gauss() as f32).collect();
            normalize(&mut c);
            c
        })
        .collect();
    let data = clustered(n, dim, 1, &centres);
    let queries = clustered(500, dim, 2, &centres);
    let t = Instant::now();
    let gt = truth(&data, &queries, dim, 10);
    println!("n {n}, truth in {:.1?}, rss {:.0} MiB, threads {}", t.elapsed(), rss_mib(), rayon::current_num_threads());
    // neighbour cosines, for the record
    let q0 = &queries[..dim];
    let top: Vec<f32> = gt[0].iter().map(|&i| dot(q0, &data[i as usize * dim..(i as usize + 1) * dim])).collect();
    println!("query 0 top-10 cosines {:?}", top);

    if which == "all" || which == "usearch" {
        for (quant, m) in [(usearch::ScalarKind::BF16, 16), (usearch::ScalarKind::F16, 16), (usearch::ScalarKind::BF16, 32)] {
            let rss0 = rss_mib();
            let opts = usearch::IndexOptions {
                dimensions: dim,
                metric: usearch::MetricKind::IP,
                quantization: quant,
                connectivity: m,
                expansion_add: 128,
                expansion_search: 64,
                multi: false,
            };
            let index = usearch::Index::new(&opts).unwrap();
            index.reserve_capacity_and_threads(n, rayon::current_num_threads()).unwrap();
            let t = Instant::now();
            data.par_chunks(dim).enumerate().for_each(|(i, v)| index.add(i as u64, v).unwrap());
            let build = t.elapsed();
            let path = scratch.join(format!("u-{quant:?}-{m}.usearch")).to_string_lossy().into_owned();
            index.save(&path).unwrap();
            let size = std::fs::metadata(&path).unwrap().len();
            println!(
                "usearch {quant:?} M={m}: build {:.1?}, file {:.0} MiB, memory_usage {:.0} MiB, rss +{:.0} MiB",
                build,
                size as f64 / 1048576.0,
                index.memory_usage() as f64 / 1048576.0,
                rss_mib() - rss0
            );
            drop(index);
            let view = usearch::Index::new(&opts).unwrap();
            let t = Instant::now();
            view.view(&path).unwrap();
            println!("  view in {:.1?}", t.elapsed());
            for ef in [16, 32, 64, 128] {
                view.change_expansion_search(ef);
                for count in [10, 40] {
                    let f = |q: &[f32], c: usize| view.search(q, c).unwrap().keys;
                    evaluate(&format!("usearch {quant:?} M={m} ef={ef}"), &data, &queries, dim, &gt, count, &f);
                }
            }
        }
    }
    if which == "all" || which == "hnsw_rs" {
        use anndists::dist::DistDot;
        use hnsw_rs::prelude::*;
        for m in [16, 32] {
            let rss0 = rss_mib();
            let hnsw = Hnsw::<f32, DistDot>::new(m, n, 16, 128, DistDot {});
            let rows: Vec<(&[f32], usize)> = data.chunks(dim).enumerate().map(|(i, v)| (v, i)).collect();
            let t = Instant::now();
            hnsw.parallel_insert_slice(&rows);
            let build = t.elapsed();
            println!("hnsw_rs f32 M={m}: build {:.1?}, rss +{:.0} MiB", build, rss_mib() - rss0);
            let t = Instant::now();
            let dir = scratch.as_path();
            let name = format!("h{m}");
            let _ = hnsw.file_dump(dir, &name).unwrap();
            let size: u64 = std::fs::read_dir(dir)
                .unwrap()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(&name))
                .map(|e| e.metadata().unwrap().len())
                .sum();
            println!("  dump {:.1?}, files {:.0} MiB", t.elapsed(), size as f64 / 1048576.0);
            for ef in [16, 32, 64, 128] {
                for count in [10, 40] {
                    let f = |q: &[f32], c: usize| hnsw.search(q, c, ef.max(c)).into_iter().map(|x| x.d_id as u64).collect();
                    evaluate(&format!("hnsw_rs M={m} ef={ef}"), &data, &queries, dim, &gt, count, &f);
                }
            }
            drop(hnsw);
            let t = Instant::now();
            let mut io = HnswIo::new(dir, &name);
            let loaded: Hnsw<f32, DistDot> = io.load_hnsw().unwrap();
            println!("  reload {:.1?} ({} points)", t.elapsed(), loaded.get_nb_point());
        }
    }
}
