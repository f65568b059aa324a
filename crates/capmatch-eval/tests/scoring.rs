//! The blockwise scorer against a naive implementation: full score vectors, full sort with
//! the tie rule, metrics on the resulting rankings.
//!
//! Embeddings are small integers (no normalisation), so every dot product is exact in f32
//! whatever the summation order, scores tie often, and the comparison can be exact.

use capmatch_eval::metrics::Accumulator;
use capmatch_eval::{evaluate, EvalConfig, EvalItem, Mode};

struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn small_vec(rng: &mut Lcg, dim: usize) -> Vec<f32> {
    (0..dim).map(|_| rng.below(5) as f32 - 2.0).collect()
}

/// Domains with the given sizes; classes `c0..c{n_classes}`; class `only_in_first` appears in
/// the first domain only (so its queries have no relevant item elsewhere).
fn dataset(seed: u64, sizes: &[usize], n_classes: u64, dim: usize, max_captions: u64) -> Vec<EvalItem> {
    let mut rng = Lcg(seed);
    let mut items = Vec::new();
    for (d, &n) in sizes.iter().enumerate() {
        for _ in 0..n {
            let mut class = rng.below(n_classes);
            if d > 0 && class == n_classes - 1 {
                class = 0; // the last class stays in the first domain only
            }
            let n_caps = rng.below(max_captions + 1);
            items.push(EvalItem {
                domain: format!("D{d}"),
                class: format!("c{class}"),
                image_embedding: small_vec(&mut rng, dim),
                caption_embeddings: (0..n_caps).map(|_| small_vec(&mut rng, dim)).collect(),
            });
        }
    }
    items
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn max_dot(qs: &[Vec<f32>], gs: &[Vec<f32>]) -> f32 {
    let mut best = f32::NEG_INFINITY;
    for q in qs {
        for g in gs {
            best = best.max(dot(q, g));
        }
    }
    best
}

fn naive_score(mode: Mode, q: &EvalItem, g: &EvalItem, w: f32) -> f32 {
    let caption = max_dot(std::slice::from_ref(&q.image_embedding), &g.caption_embeddings);
    let image = dot(&q.image_embedding, &g.image_embedding);
    match mode {
        Mode::Caption => caption,
        Mode::Image => image,
        // A component weighted 0 takes no part (an image without captions, caption score
        // −∞, still ranks by its image at w = 0).
        Mode::Fused if w == 0.0 => image,
        Mode::Fused if w == 1.0 => caption,
        Mode::Fused => w * caption + (1.0 - w) * image,
        Mode::CaptionText => max_dot(&q.caption_embeddings, &g.caption_embeddings),
        Mode::Text => unreachable!("not an evaluation mode"),
    }
}

/// Accumulators per (query domain, gallery domain, mode), the slow way.
fn naive(items: &[EvalItem], domains: &[&str], modes: &[Mode], ks: &[usize], w: f32) -> Vec<(String, String, Mode, Accumulator)> {
    let mut out = Vec::new();
    for qd in domains {
        for gd in domains {
            if qd == gd {
                continue;
            }
            let queries: Vec<&EvalItem> = items.iter().filter(|i| i.domain == *qd).collect();
            let gallery: Vec<&EvalItem> = items.iter().filter(|i| i.domain == *gd).collect();
            for &mode in modes {
                let mut acc = Accumulator::new(ks);
                for q in &queries {
                    let scores: Vec<f32> = gallery
                        .iter()
                        .map(|g| naive_score(mode, q, g, w))
                        .map(|s| if s.is_nan() { f32::NEG_INFINITY } else { s })
                        .collect();
                    let mut order: Vec<usize> = (0..gallery.len()).collect();
                    // Score descending; ties: gallery order. (Stable sort keeps index order.)
                    order.sort_by(|&a, &b| scores[b].partial_cmp(&scores[a]).unwrap());
                    let ranking: Vec<bool> = order.iter().map(|&j| gallery[j].class == q.class).collect();
                    acc.add_ranking(&ranking);
                }
                out.push((qd.to_string(), gd.to_string(), mode, acc));
            }
        }
    }
    out
}

fn check(items: &[EvalItem], domains: &[&str], ks: &[usize], w: f32, blocks: &[Option<usize>]) {
    let want = naive(items, domains, &capmatch_eval::EVAL_MODES, ks, w);
    for &block_rows in blocks {
        let config = EvalConfig {
            protocol: "test".into(),
            domains: domains.iter().map(|s| s.to_string()).collect(),
            modes: capmatch_eval::EVAL_MODES.to_vec(),
            ks: ks.to_vec(),
            weight: w,
            normalize: false,
            block_rows,
        };
        let seen = std::sync::atomic::AtomicUsize::new(0);
        let report = evaluate(items, &config, &|n| {
            seen.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        })
        .unwrap();
        assert_eq!(seen.into_inner(), capmatch_eval::total_queries(items, &config.domains));
        assert_eq!(report.results.len(), want.len());
        for (q, g, mode, acc) in &want {
            let got = report.get(q, g, *mode).unwrap();
            let m = acc.finish();
            let ctx = format!("{q}→{g} {mode} block {block_rows:?}");
            assert_eq!(got.n_queries, acc.n_queries, "{ctx}");
            assert_eq!(got.n_with_relevant, acc.n_with_relevant, "{ctx}");
            for (a, b) in got.metrics.precision.iter().zip(&m.precision) {
                assert!(a == b || (a.is_nan() && b.is_nan()), "{ctx}: P {a} vs {b}");
            }
            for (a, b) in got.metrics.recall.iter().zip(&m.recall) {
                assert!(a == b || (a.is_nan() && b.is_nan()), "{ctx}: R {a} vs {b}");
            }
            assert!((got.metrics.map - m.map).abs() < 1e-9 || (got.metrics.map.is_nan() && m.map.is_nan()), "{ctx}: mAP {} vs {}", got.metrics.map, m.map);
        }
    }
}

#[test]
fn blockwise_scoring_matches_naive_on_random_data() {
    let items = dataset(7, &[37, 50, 23], 5, 8, 3);
    // Blocks of 1, a size that divides no domain, a size equal to a domain, larger than all.
    check(&items, &["D0", "D1", "D2"], &[1, 5, 15], 0.5, &[Some(1), Some(7), Some(37), Some(64), None]);
}

#[test]
fn many_ties_and_k_beyond_gallery() {
    // dim 2 with values in -2..2: scores take few distinct values, so ties are everywhere.
    let items = dataset(11, &[40, 30], 3, 2, 2);
    check(&items, &["D1", "D0"], &[1, 3, 50, 100], 0.25, &[Some(4), Some(30)]);
}

#[test]
fn fused_extremes_equal_single_modes() {
    let items = dataset(3, &[20, 25], 4, 6, 1);
    let run = |mode: Mode, w: f32| {
        let config = EvalConfig { modes: vec![mode], ks: vec![1, 5], weight: w, normalize: false, ..EvalConfig::default() };
        evaluate(&items, &config, &|_| {}).unwrap()
    };
    // Images without captions are there (max_captions = 1 draws 0 or 1): at w = 0 they must
    // rank by their image score like everything else, not fall to the bottom as 0 × −∞.
    assert!(items.iter().filter(|i| i.caption_embeddings.is_empty()).count() >= 5);
    let image = run(Mode::Image, 0.5);
    let fused0 = run(Mode::Fused, 0.0);
    for (a, b) in image.results.iter().zip(&fused0.results) {
        assert_eq!(a.metrics, b.metrics, "fused at w = 0 is exactly the image mode");
    }
    let caption = run(Mode::Caption, 0.5);
    let fused1 = run(Mode::Fused, 1.0);
    for (a, b) in caption.results.iter().zip(&fused1.results) {
        assert_eq!(a.metrics, b.metrics);
    }
}

#[test]
fn perfect_embeddings_give_perfect_scores() {
    // One-hot class embeddings: every relevant item outranks every other one.
    let mut items = Vec::new();
    for d in ["A", "B"] {
        for i in 0..12 {
            let class = i % 3;
            let mut v = vec![0.0; 3];
            v[class] = 1.0;
            items.push(EvalItem {
                domain: d.into(),
                class: format!("c{class}"),
                image_embedding: v.clone(),
                caption_embeddings: vec![v],
            });
        }
    }
    let report = evaluate(&items, &EvalConfig { ks: vec![1, 4, 10], ..EvalConfig::default() }, &|_| {}).unwrap();
    for r in &report.results {
        assert_eq!(r.n_queries, 12);
        assert_eq!(r.n_gallery, 12);
        // k = 10 > 4 relevant: UCDIR's P@10 still 100 (top-min(k, n)).
        assert_eq!(r.metrics.precision, [100.0, 100.0, 100.0], "{r:?}");
        assert_eq!(r.metrics.map, 100.0);
        assert_eq!(r.metrics.recall, [100.0, 100.0, 100.0]);
    }
}

#[test]
fn normalisation_makes_scores_cosines() {
    // Same directions, different lengths: with normalisation the long off-class vector no
    // longer wins by length.
    let item = |d: &str, c: &str, v: Vec<f32>| EvalItem { domain: d.into(), class: c.into(), image_embedding: v.clone(), caption_embeddings: vec![v] };
    let items = vec![
        item("A", "x", vec![1.0, 0.2]),
        item("B", "y", vec![10.0, 10.0]),
        item("B", "x", vec![1.0, 0.0]),
    ];
    let cfg = |normalize| EvalConfig { domains: vec!["A".into(), "B".into()], modes: vec![Mode::Image], ks: vec![1], normalize, ..EvalConfig::default() };
    let raw = evaluate(&items, &cfg(false), &|_| {}).unwrap();
    let cos = evaluate(&items, &cfg(true), &|_| {}).unwrap();
    assert_eq!(raw.get("A", "B", Mode::Image).unwrap().metrics.precision, [0.0]);
    assert_eq!(cos.get("A", "B", Mode::Image).unwrap().metrics.precision, [100.0]);
}

#[test]
fn config_errors() {
    let items = dataset(1, &[3, 3], 2, 4, 1);
    let bad = |c: EvalConfig| evaluate(&items, &c, &|_| {}).unwrap_err().to_string();
    assert!(bad(EvalConfig { ks: vec![], ..EvalConfig::default() }).contains("no k"));
    assert!(bad(EvalConfig { ks: vec![0], ..EvalConfig::default() }).contains("at least 1"));
    assert!(bad(EvalConfig { weight: 1.5, ..EvalConfig::default() }).contains("weight"));
    assert!(bad(EvalConfig { domains: vec!["D0".into()], ..EvalConfig::default() }).contains("two domains"));
    assert!(bad(EvalConfig { domains: vec!["D0".into(), "X".into()], ..EvalConfig::default() }).contains("no images"));
    let mut ragged = items.clone();
    ragged[2].caption_embeddings = vec![vec![1.0; 3]];
    assert!(evaluate(&ragged, &EvalConfig::default(), &|_| {}).unwrap_err().to_string().contains("dimensions"));
}
