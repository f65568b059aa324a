//! The vectors and captions `capmatch index` stores do not depend on `--batch`: the same
//! folder indexed one image at a time and sixteen at a time gives bit-identical vectors and
//! identical captions for every file (so a benchmark's ties are ordered by the documented
//! gallery order, not by float noise).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use capmatch_engine::{Engine, QueryModels};
use common::{model_args, workspace};

fn index(gallery: &Path, db: &Path, batch: usize) {
    let out = Command::new(env!("CARGO_BIN_EXE_capmatch"))
        .arg("index")
        .arg(gallery)
        .arg("--db")
        .arg(db)
        .args(model_args())
        .args(["--batch", &batch.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "index --batch {batch}: {}", String::from_utf8_lossy(&out.stderr));
}

/// path → (captions, image vector bits, caption vector bits)
fn contents(db: &Path) -> BTreeMap<String, (Vec<String>, Vec<u32>, Vec<u32>)> {
    let engine = Engine::open_reader(db, QueryModels::default()).unwrap();
    let ids: Vec<_> = engine.ids().unwrap().into_iter().map(|(id, _)| id).collect();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    engine
        .entries(&ids)
        .unwrap()
        .into_iter()
        .flatten()
        .map(|e| {
            let v = engine.vectors(e.id).unwrap();
            (e.path.clone(), (e.captions.clone(), bits(&v.image), bits(&v.captions)))
        })
        .collect()
}

#[test]
fn index_batch_1_and_16_store_identical_vectors_and_captions() {
    let tmp = tempfile::tempdir().unwrap();
    let gallery = tmp.path().join("gallery");
    std::fs::create_dir_all(&gallery).unwrap();
    // 18 images of different sizes, so that a batch of 16 mixes them and leaves a remainder.
    let real = workspace().join("fixtures/images/real");
    for round in 0..3 {
        for entry in std::fs::read_dir(&real).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "png") {
                let img = image::open(&path).unwrap();
                let img = img.resize_exact(img.width() + 7 * round, img.height() + 3 * round, image::imageops::FilterType::Triangle);
                img.save(gallery.join(format!("{round}-{}", path.file_name().unwrap().to_string_lossy()))).unwrap();
            }
        }
    }
    let (one, sixteen) = (tmp.path().join("one.db"), tmp.path().join("sixteen.db"));
    index(&gallery, &one, 1);
    index(&gallery, &sixteen, 16);
    let (a, b) = (contents(&one), contents(&sixteen));
    assert_eq!(a.len(), 18, "{:?}", a.keys());
    for (path, (captions, image, caption_vectors)) in &a {
        let (c2, i2, v2) = &b[path];
        assert_eq!(captions, c2, "{path}: captions differ between --batch 1 and --batch 16");
        assert!(image == i2, "{path}: the image vector differs between --batch 1 and --batch 16");
        assert!(caption_vectors == v2, "{path}: the caption vectors differ between --batch 1 and --batch 16");
    }
}
