//! An evaluation ranks exactly as a search of the same gallery: for every query image,
//! domain pair and mode, the ranks of its relevant images computed by `capmatch_eval`'s
//! blockwise scorer equal their positions in `Engine::search`'s results — ties included,
//! of which this dataset has many (identical captions, duplicated files).

mod common;

use capmatch_engine::{IndexOptions, Mode, NoObserver, Query, SearchRequest};
use capmatch_eval::dataset::{self, Selection};
use capmatch_eval::scoring::{relevant_ranks, DomainMatrix};
use capmatch_eval::EVAL_MODES;
use common::*;

#[test]
fn eval_and_search_rank_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    let real = copy_real_images(&tmp.path().join("real"));
    // Three domains × three classes. Class "lemon" uses real images; "red" and "blue" are
    // solid colours of several sizes, so the fake captioner gives many identical captions
    // (caption-mode ties) and the copies give identical vectors (ties in every mode).
    for (d, domain) in ["photo", "sketch", "clipart"].iter().enumerate() {
        for class in ["lemon", "red", "blue"] {
            let dir = root.join(domain).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..4usize {
                let path = dir.join(format!("{i}.png"));
                match class {
                    "lemon" => {
                        std::fs::copy(&real[(d + i) % real.len()], &path).unwrap();
                    }
                    "red" => write_solid_png(&path, 4 + (i % 2) as u32, 6, [240, (10 * d) as u8, 0]),
                    // A mislabelled image: the same pixels as red/0.png of every other
                    // domain, so scores tie across classes and the tie order decides ranks.
                    _ if i == 3 => write_solid_png(&path, 4, 6, [240, (10 * ((d + 1) % 3)) as u8, 0]),
                    _ => write_solid_png(&path, 5, 3 + i as u32, [0, 0, 230 - (i % 2) as u8]),
                }
            }
        }
    }
    let db = tmp.path().join("index.db");
    let models = FakeModels::new();
    let engine = writer(&db, &models).unwrap();
    let data = dataset::walk(&root.canonicalize().unwrap(), &Selection::default()).unwrap();
    for (domain, folder) in &data.domains {
        let mut options = IndexOptions::new(vec![folder.clone()]);
        options.domain = Some(domain.clone());
        options.batch_size = 5;
        engine.index_folders(&options, &NoObserver).unwrap();
    }
    let class_of: std::collections::HashMap<String, String> =
        data.images.iter().map(|i| (i.path.display().to_string(), i.class.clone())).collect();
    let classes: Vec<&String> = data.classes.iter().collect();
    let class_id = |c: &str| classes.iter().position(|x| *x == c).unwrap() as u32;
    let matrix = |domain: &str| -> (DomainMatrix, Vec<capmatch_engine::ImageId>) {
        let imgs: Vec<_> = data.images.iter().filter(|i| i.domain == domain).collect();
        let mut ids = Vec::new();
        let mut vectors = Vec::new();
        for img in &imgs {
            let e = engine.entry_by_path(&img.path.display().to_string()).unwrap().unwrap();
            ids.push(e.id);
            vectors.push((class_id(&img.class), engine.vectors(e.id).unwrap()));
        }
        let captions: Vec<Vec<Vec<f32>>> =
            vectors.iter().map(|(_, v)| v.captions.chunks(DIM).map(<[f32]>::to_vec).collect()).collect();
        let m = DomainMatrix::new(
            DIM,
            vectors.iter().zip(&captions).map(|((c, v), caps)| (*c, v.image.as_slice(), caps.as_slice())),
            false,
        )
        .unwrap();
        (m, ids)
    };
    let mut compared = 0;
    for (qd, _) in &data.domains {
        let (queries, query_ids) = matrix(qd);
        for (gd, _) in &data.domains {
            if qd == gd {
                continue;
            }
            let (gallery, _) = matrix(gd);
            for mode in EVAL_MODES {
                let weight = 0.4;
                let from_eval = relevant_ranks(&queries, &gallery, mode, weight);
                for (q, id) in query_ids.iter().enumerate() {
                    let mut request = SearchRequest::new(Query::ImageId(*id), mode, gallery.len());
                    request.domain = Some(gd.clone());
                    request.weight = weight;
                    let hits = engine.search(&request).unwrap().hits;
                    assert_eq!(hits.len(), gallery.len());
                    let query_class = &class_of[&engine.entry(*id).unwrap().path];
                    let from_search: Vec<usize> =
                        hits.iter().enumerate().filter(|(_, h)| &class_of[&h.path] == query_class).map(|(r, _)| r).collect();
                    assert_eq!(from_eval[q], from_search, "{qd}→{gd} {mode} query {q}");
                    compared += 1;
                }
            }
        }
    }
    assert_eq!(compared, 3 * 2 * 4 * 12);
    // The dataset does exercise ties: many equal caption scores in caption mode.
    let (queries, ids) = matrix("photo");
    let _ = queries;
    let mut request = SearchRequest::new(Query::ImageId(ids[5]), Mode::Caption, 12);
    request.domain = Some("sketch".into());
    let hits = engine.search(&request).unwrap().hits;
    assert!(hits.windows(2).filter(|w| w[0].score == w[1].score).count() >= 3, "{hits:?}");
}
