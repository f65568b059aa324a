//! Exact search against brute-force expectations, and a store round trip.

mod common;

use capmatch_index::{dot, index_folders, Gallery, IndexOptions, NoObserver, Scoring, SqliteStore};
use common::rng::Rng;
use common::*;

struct Item {
    path: String,
    domain: String,
    captions: Vec<String>,
    image: Vec<f32>,
    caption_vecs: Vec<Vec<f32>>,
}

fn random_items(n: usize, dim: usize, seed: u64) -> Vec<Item> {
    let mut rng = Rng(seed);
    (0..n)
        .map(|i| {
            let ncap = 1 + i % 3;
            Item {
                path: format!("/g/{i:04}.png"),
                domain: ["photo", "cartoon", "sketch"][i % 3].into(),
                captions: (0..ncap).map(|c| format!("caption {c} of {i}")).collect(),
                image: rng.unit(dim),
                caption_vecs: (0..ncap).map(|_| rng.unit(dim)).collect(),
            }
        })
        .collect()
}

fn gallery_of(items: &[Item], dim: usize) -> Gallery {
    let mut g = Gallery::new(dim);
    for it in items {
        let flat: Vec<f32> = it.caption_vecs.concat();
        g.push(&it.path, &it.domain, it.captions.clone(), &it.image, &flat).unwrap();
    }
    g
}

fn naive_dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Brute force: score every item naively, stable sort by score descending.
fn brute_force(items: &[Item], q: &[f32], scoring: Scoring, k: usize, domain: Option<&str>) -> Vec<(usize, f32, String)> {
    let mut all: Vec<(usize, f32, String)> = items
        .iter()
        .enumerate()
        .filter(|(_, it)| domain.is_none_or(|d| it.domain == d))
        .map(|(i, it)| {
            let (best_c, cap) = it
                .caption_vecs
                .iter()
                .enumerate()
                .map(|(c, v)| (c, naive_dot(v, q)))
                .fold((0, f32::NEG_INFINITY), |acc, x| if x.1 > acc.1 { x } else { acc });
            let img = naive_dot(&it.image, q);
            let s = match scoring {
                Scoring::Caption => cap,
                Scoring::Image => img,
                Scoring::Fused { caption_weight: w } => w * cap + (1.0 - w) * img,
            };
            (i, s, it.captions[best_c].clone())
        })
        .collect();
    all.sort_by(|a, b| b.1.total_cmp(&a.1)); // stable: ties keep gallery order
    all.truncate(k);
    all
}

#[test]
fn every_mode_matches_brute_force() {
    let dim = 37; // not a multiple of the kernel's 16 lanes: exercises the remainder
    let items = random_items(500, dim, 0x9e3779b97f4a7c15);
    let g = gallery_of(&items, dim);
    let mut rng = Rng(42);
    for scoring in [Scoring::Caption, Scoring::Image, Scoring::Fused { caption_weight: 0.5 }, Scoring::Fused { caption_weight: 0.8 }] {
        for domain in [None, Some("cartoon")] {
            for k in [1, 10, 499, 1000] {
                let q = rng.unit(dim);
                let hits = g.search(&q, scoring, k, domain).unwrap();
                let want = brute_force(&items, &q, scoring, k, domain);
                let every = brute_force(&items, &q, scoring, usize::MAX, domain);
                assert_eq!(hits.len(), want.len(), "{scoring:?} {domain:?} k={k}");
                for (rank, (h, w)) in hits.iter().zip(&want).enumerate() {
                    assert_eq!(h.rank, rank + 1);
                    // Same score at each rank, and each hit's own score is right: the top-k
                    // is correct up to rounding-level near-ties.
                    assert!((h.score - w.1).abs() < 1e-5, "{scoring:?}: {} vs {}", h.score, w.1);
                    let own = every.iter().find(|e| e.0 == h.entry).expect("hit in the filtered gallery");
                    assert!((h.score - own.1).abs() < 1e-5);
                    assert_eq!(h.caption, own.2, "best caption reported");
                    assert_eq!(h.path, items[h.entry].path);
                    assert_eq!(h.domain, items[h.entry].domain);
                    if let Some(d) = domain {
                        assert_eq!(h.domain, d);
                    }
                }
                assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
            }
        }
    }
}

#[test]
fn several_captions_score_the_best_one_and_it_is_reported() {
    let dim = 4;
    let mut g = Gallery::new(dim);
    let e = |i: usize| {
        let mut v = vec![0.0; dim];
        v[i] = 1.0;
        v
    };
    // a: captions along axes 1 and 2; b: one caption along 0.7*(axis 0) + 0.7*(axis 2).
    g.push("/a.png", "d", vec!["one".into(), "two".into()], &e(3), &[e(1), e(2)].concat()).unwrap();
    let b = normalise(vec![0.7, 0.0, 0.7, 0.0]);
    g.push("/b.png", "d", vec!["mixed".into()], &e(3), &b).unwrap();
    let hits = g.search(&e(2), Scoring::Caption, 2, None).unwrap();
    assert_eq!(hits[0].path, "/a.png");
    assert!((hits[0].score - 1.0).abs() < 1e-6, "max over captions, not mean");
    assert_eq!(hits[0].caption, "two");
    assert_eq!(hits[1].path, "/b.png");
    assert!((hits[1].score - 0.70710677).abs() < 1e-5);
}

#[test]
fn ties_are_broken_by_gallery_order() {
    let dim = 3;
    let v = normalise(vec![1.0, 2.0, 3.0]);
    let mut g = Gallery::new(dim);
    for i in 0..50 {
        g.push(&format!("/{i:02}.png"), "d", vec!["same".into()], &v, &v).unwrap();
    }
    for scoring in [Scoring::Caption, Scoring::Image, Scoring::Fused { caption_weight: 0.3 }] {
        for k in [1, 7, 50] {
            let hits = g.search(&v, scoring, k, None).unwrap();
            let paths: Vec<String> = hits.iter().map(|h| h.path.clone()).collect();
            let want: Vec<String> = (0..k).map(|i| format!("/{i:02}.png")).collect();
            assert_eq!(paths, want, "{scoring:?} k={k}");
        }
    }
}

#[test]
fn edge_cases() {
    let dim = 5;
    let items = random_items(10, dim, 7);
    let g = gallery_of(&items, dim);
    let q = Rng(3).unit(dim);
    assert!(g.search(&q, Scoring::Caption, 0, None).unwrap().is_empty());
    assert!(g.search(&q, Scoring::Caption, 5, Some("no such domain")).unwrap().is_empty());
    assert!(g.search(&[1.0, 0.0], Scoring::Caption, 5, None).is_err(), "wrong dimension");
    assert!(g.search(&[0.0; 5], Scoring::Caption, 5, None).is_err(), "zero query");
    // An unnormalised query gives cosine scores all the same.
    let scaled: Vec<f32> = q.iter().map(|x| x * 10.0).collect();
    let a = g.search(&q, Scoring::Image, 3, None).unwrap();
    let b = g.search(&scaled, Scoring::Image, 3, None).unwrap();
    assert_eq!(a.iter().map(|h| h.entry).collect::<Vec<_>>(), b.iter().map(|h| h.entry).collect::<Vec<_>>());
    assert!(Gallery::new(dim).search(&q, Scoring::Image, 3, None).unwrap().is_empty());
    // scores() agrees with search().
    let all = g.scores(&q, Scoring::Fused { caption_weight: 0.5 }).unwrap();
    let top = g.search(&q, Scoring::Fused { caption_weight: 0.5 }, 1, None).unwrap();
    assert_eq!(all[top[0].entry], top[0].score);
}

#[test]
fn dot_kernel_matches_naive_sum() {
    let mut rng = Rng(11);
    for n in [0, 1, 15, 16, 17, 512, 768, 1000] {
        let a: Vec<f32> = (0..n).map(|_| rng.next()).collect();
        let b: Vec<f32> = (0..n).map(|_| rng.next()).collect();
        let naive: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
        assert!((dot(&a, &b) as f64 - naive).abs() < 1e-4, "n={n}");
    }
}

#[test]
fn gallery_loaded_from_an_index_searches_like_the_fake_models_predict() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("fruit");
    let files = copy_real_images(&root);
    let db = tmp.path().join("index.db");
    let mut models = FakeModels::new();
    models.two_captions = true;
    let mut store = SqliteStore::open(&db).unwrap();
    index_folders(&mut store, &mut models, &IndexOptions::new(vec![root.clone()]), &NoObserver).unwrap();
    drop(store);

    let store = SqliteStore::open_read_only(&db).unwrap();
    let g = Gallery::load(&store, None).unwrap();
    assert_eq!(g.len(), 6);
    assert_eq!(g.dim(), DIM);
    // Image mode: a query equal to a gallery image's embedding finds that image first.
    let img = capmatch_core::image_io::decode_file(&files[4], &Default::default()).unwrap();
    let q = fake_image_embedding(&img);
    let hits = g.search(&q, Scoring::Image, 3, None).unwrap();
    assert!(hits[0].path.ends_with(files[4].file_name().unwrap().to_str().unwrap()));
    assert!((hits[0].score - 1.0).abs() < 1e-5);
    // Caption/text mode: the embedding of a stored caption finds its image with score 1.
    let caption = &fake_captions(&img, true)[1]; // the size caption is unique per image
    let hits = g.search(&fake_text_embedding(caption), Scoring::Caption, 1, Some("fruit")).unwrap();
    assert_eq!(&hits[0].caption, caption);
    assert!((hits[0].score - 1.0).abs() < 1e-5);
    assert!(Gallery::load(&store, Some("other")).unwrap().is_empty());
}
