//! End to end: `capmatch eval` on a small Office-Home-shaped dataset with the tiny fixture
//! models, checked against metrics recomputed here from `capmatch embed --json` and
//! `capmatch caption --json`; a second run does no model work.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use capmatch_core::image_io::{decode_file, DecodeLimits};
use capmatch_core::RgbImage;
use serde_json::Value;

const DOMAINS: [&str; 4] = ["Art", "Clipart", "Product", "Real_World"];
const PER_CLASS: usize = 2;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn clip() -> String {
    workspace().join("fixtures/clip/tiny-quickgelu-p32").display().to_string()
}

fn captioner() -> String {
    workspace().join("fixtures/blip/tiny-a").display().to_string()
}

fn capmatch(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_capmatch")).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "capmatch {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("capmatch {args:?}: not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// A shape on a domain-coloured background; every file differs.
fn shape(class: &str, domain: usize, i: usize) -> RgbImage {
    let bg = [[250, 240, 220], [255, 255, 255], [235, 235, 235], [120, 160, 90]][domain];
    let fg = [[200, 30, 30], [30, 30, 200], [20, 140, 40], [90, 60, 20]][(domain + i) % 4];
    let (cx, cy, r) = (24.0 + 8.0 * i as f32, 30.0 + 3.0 * domain as f32, 14.0 + 2.0 * i as f32);
    let mut raw = Vec::with_capacity(64 * 64 * 3);
    for y in 0..64u32 {
        for x in 0..64u32 {
            let (dx, dy) = (x as f32 - cx, y as f32 - cy);
            let inside = match class {
                "circle" => dx * dx + dy * dy <= r * r,
                "square" => dx.abs() <= r && dy.abs() <= r,
                "stripes" => (x / 6 + y / 6 + i as u32).is_multiple_of(2),
                _ => unreachable!(),
            };
            raw.extend_from_slice(&if inside { fg } else { bg });
        }
    }
    RgbImage::from_raw(64, 64, raw).unwrap()
}

/// Fruit photos and cartoons of fixtures/images/real; past the 6 files, mirrored copies.
fn fruit(n: usize) -> RgbImage {
    let dir = workspace().join("fixtures/images/real");
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "png")).collect();
    files.sort();
    let img = decode_file(&files[n % files.len()], &DecodeLimits::default()).unwrap();
    if n < files.len() {
        img
    } else {
        let (w, h) = img.dimensions();
        let mut raw = Vec::with_capacity((w * h * 3) as usize);
        for y in 0..h {
            for x in (0..w).rev() {
                raw.extend_from_slice(&img.get_pixel(x, y).0);
            }
        }
        RgbImage::from_raw(w, h, raw).unwrap()
    }
}

/// ROOT/<domain>/<class>/<n>.png: circle, square and fruit in every domain, stripes only in
/// Art (its queries have nothing relevant elsewhere), 2 images each.
fn make_dataset(root: &Path) {
    for (d, domain) in DOMAINS.iter().enumerate() {
        let mut classes = vec!["circle", "square", "fruit"];
        if d == 0 {
            classes.push("stripes");
        }
        for class in classes {
            let dir = root.join(domain).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..PER_CLASS {
                let img = if class == "fruit" { fruit(d * PER_CLASS + i) } else { shape(class, d, i) };
                img.save(dir.join(format!("{i}.png"))).unwrap();
            }
        }
    }
}

struct Image {
    domain: String,
    class: String,
    embedding: Vec<f64>,
    caption_embedding: Vec<f64>,
}

fn unit(v: &Value) -> Vec<f64> {
    let v: Vec<f64> = v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    v.iter().map(|x| x / n).collect()
}

/// Every image of the dataset with embeddings from `capmatch embed` / `capmatch caption`,
/// in path order.
fn independent_embeddings(root: &Path) -> Vec<Image> {
    let mut paths = Vec::new();
    for d in DOMAINS {
        for class in std::fs::read_dir(root.join(d)).unwrap() {
            for f in std::fs::read_dir(class.unwrap().path()).unwrap() {
                paths.push(f.unwrap().path());
            }
        }
    }
    paths.sort();
    let path_args: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    let mut args = vec!["embed".to_string(), "--clip".into(), clip(), "--json".into(), "--image".into()];
    args.extend(path_args.iter().cloned());
    let embedded = capmatch(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let mut args = vec!["caption".to_string(), "--captioner".into(), captioner(), "--json".into()];
    args.extend(path_args.iter().cloned());
    let captioned = capmatch(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let captions: Vec<String> = captioned.as_array().unwrap().iter().map(|r| r["caption"].as_str().unwrap().to_string()).collect();
    assert_eq!(captions.len(), paths.len());
    let mut args = vec!["embed".to_string(), "--clip".into(), clip(), "--json".into(), "--text".into()];
    args.extend(captions.iter().cloned());
    let text = capmatch(&args.iter().map(String::as_str).collect::<Vec<_>>());

    paths
        .iter()
        .enumerate()
        .map(|(i, p)| {
            assert_eq!(embedded[i]["input"].as_str().unwrap(), path_args[i]);
            assert_eq!(captioned[i]["image"].as_str().unwrap(), path_args[i]);
            let rel = p.strip_prefix(root).unwrap();
            let mut parts = rel.iter().map(|s| s.to_str().unwrap().to_string());
            Image {
                domain: parts.next().unwrap(),
                class: parts.next().unwrap(),
                embedding: unit(&embedded[i]["embedding"]),
                caption_embedding: unit(&text[i]["embedding"]),
            }
        })
        .collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Figures of one (pair, mode), computed the plain way, and whether they are fragile: a
/// relevant and an irrelevant gallery image score within 1e-4 of each other for some query,
/// so float noise between batchings (a few 1e-7 here) could swap them.
struct Recomputed {
    values: BTreeMap<String, f64>,
    fragile: bool,
    n_queries: usize,
    n_gallery: usize,
}

fn recompute(images: &[Image], q: &str, g: &str, mode: &str, ks: &[usize], w: f64) -> Recomputed {
    let queries: Vec<&Image> = images.iter().filter(|i| i.domain == q).collect();
    let gallery: Vec<&Image> = images.iter().filter(|i| i.domain == g).collect();
    let mut fragile = false;
    let (mut hits, mut considered) = (vec![0usize; ks.len()], vec![0usize; ks.len()]);
    let mut recall = vec![0usize; ks.len()];
    let (mut ap_sum, mut with_relevant) = (0.0, 0usize);
    for qi in &queries {
        let scores: Vec<f64> = gallery
            .iter()
            .map(|gi| {
                let caption = dot(&qi.embedding, &gi.caption_embedding);
                let image = dot(&qi.embedding, &gi.embedding);
                match mode {
                    "caption" => caption,
                    "image" => image,
                    "fused" => w * caption + (1.0 - w) * image,
                    "caption-text" => dot(&qi.caption_embedding, &gi.caption_embedding),
                    _ => unreachable!(),
                }
            })
            .collect();
        let relevant: Vec<bool> = gallery.iter().map(|gi| gi.class == qi.class).collect();
        for a in 0..gallery.len() {
            for b in 0..gallery.len() {
                if relevant[a] && !relevant[b] && (scores[a] - scores[b]).abs() < 1e-4 {
                    fragile = true;
                }
            }
        }
        let mut order: Vec<usize> = (0..gallery.len()).collect();
        order.sort_by(|&a, &b| scores[b].partial_cmp(&scores[a]).unwrap().then(a.cmp(&b)));
        let ranked: Vec<bool> = order.iter().map(|&j| relevant[j]).collect();
        let n = ranked.iter().filter(|&&r| r).count();
        for (j, &k) in ks.iter().enumerate() {
            let m = k.min(n);
            considered[j] += m;
            hits[j] += ranked[..m].iter().filter(|&&r| r).count();
            if n > 0 && ranked[..k.min(ranked.len())].iter().any(|&r| r) {
                recall[j] += 1;
            }
        }
        if n > 0 {
            with_relevant += 1;
            let mut found = 0;
            let mut ap = 0.0;
            for (r, &rel) in ranked.iter().enumerate() {
                if rel {
                    found += 1;
                    ap += found as f64 / (r + 1) as f64;
                }
            }
            ap_sum += ap / n as f64;
        }
    }
    let mut values = BTreeMap::new();
    for (j, k) in ks.iter().enumerate() {
        values.insert(format!("p@{k}"), 100.0 * hits[j] as f64 / considered[j] as f64);
        values.insert(format!("r@{k}"), 100.0 * recall[j] as f64 / with_relevant as f64);
    }
    values.insert("map".into(), 100.0 * ap_sum / with_relevant as f64);
    Recomputed { values, fragile, n_queries: queries.len(), n_gallery: gallery.len() }
}

#[test]
fn eval_matches_independent_recomputation_and_reuses_the_index() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("officehome");
    make_dataset(&root);
    let root_s = root.display().to_string();
    let out = tmp.path().join("out");
    let out_s = out.display().to_string();
    let (clip, captioner) = (clip(), captioner());
    let eval_args = [
        "eval", &root_s, "--protocol", "office-home", "--clip", &clip, "--captioner", &captioner, "--json", "--out", &out_s,
    ];

    let first = capmatch(&eval_args);
    assert_eq!(first["protocol"], "office-home");
    assert_eq!(first["k"], serde_json::json!([1, 5, 15]));
    let n_images = 4 * 3 * PER_CLASS + PER_CLASS;
    assert_eq!(first["index"]["candidates"], n_images);
    assert!(first["index"]["model_batches"].as_u64().unwrap() > 0);
    assert!(root.join(".capmatch.db").is_file(), "default index is ROOT/.capmatch.db");
    for f in ["results.md", "results.csv", "results.json", "precision.svg", "precision.png"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let written: Value = serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(written["results"], first["results"]);

    let results = first["results"].as_array().unwrap();
    assert_eq!(results.len(), 12 * 4, "12 ordered pairs × 4 modes");

    let images = independent_embeddings(&root);
    assert_eq!(images.len(), n_images);
    let ks = [1, 5, 15];
    let mut checked = 0;
    for r in results {
        let (q, g, mode) = (r["query"].as_str().unwrap(), r["gallery"].as_str().unwrap(), r["mode"].as_str().unwrap());
        let want = recompute(&images, q, g, mode, &ks, 0.5);
        assert_eq!(r["n_queries"], want.n_queries, "{q}→{g}");
        assert_eq!(r["n_gallery"], want.n_gallery, "{q}→{g}");
        if q == "Art" {
            // The stripes queries have no relevant image in the gallery.
            assert_eq!(r["n_with_relevant"].as_u64().unwrap() as usize, want.n_queries - PER_CLASS);
        }
        if want.fragile {
            continue;
        }
        for (key, value) in &want.values {
            let got = r[key.as_str()].as_f64().unwrap_or_else(|| panic!("{key} missing in {r}"));
            assert!((got - value).abs() < 1e-9, "{q}→{g} {mode} {key}: eval {got}, recomputed {value}");
        }
        checked += 1;
    }
    eprintln!("{checked} of {} (pair, mode) results checked exactly; the rest had near-ties", results.len());
    assert!(checked >= results.len() / 2, "only {checked} of {} results were unambiguous enough to check", results.len());

    // Second run: everything is in the index, nothing goes through the models.
    let second = capmatch(&eval_args);
    assert_eq!(second["index"]["indexed"], 0);
    assert_eq!(second["index"]["model_batches"], 0);
    assert_eq!(second["index"]["unchanged"], n_images);
    assert_eq!(second["results"], first["results"]);
}

#[test]
fn explicit_flags_select_domains_classes_k_and_modes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    make_dataset(&root);
    let db = tmp.path().join("elsewhere.db");
    let classes = tmp.path().join("classes.txt");
    std::fs::write(&classes, "# shapes only\ncircle\nsquare\n").unwrap();
    let (root_s, db_s, classes_s, clip, captioner) =
        (root.display().to_string(), db.display().to_string(), classes.display().to_string(), clip(), captioner());
    let v = capmatch(&[
        "eval", &root_s, "--domains", "Product,Art", "--classes-file", &classes_s, "--k", "1,2", "--modes", "image,caption-text",
        "--db", &db_s, "--clip", &clip, "--captioner", &captioner, "--json",
    ]);
    assert!(db.is_file());
    assert!(!root.join(".capmatch.db").exists());
    assert_eq!(v["k"], serde_json::json!([1, 2]));
    // Only the selected classes were indexed.
    assert_eq!(v["index"]["candidates"], 2 * 2 * PER_CLASS);
    let results = v["results"].as_array().unwrap();
    let got: Vec<(String, String, String)> = results
        .iter()
        .map(|r| (r["query"].as_str().unwrap().into(), r["gallery"].as_str().unwrap().into(), r["mode"].as_str().unwrap().into()))
        .collect();
    let s = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
    assert_eq!(
        got,
        [s("Product", "Art", "image"), s("Product", "Art", "caption-text"), s("Art", "Product", "image"), s("Art", "Product", "caption-text")]
    );
    for r in results {
        assert_eq!(r["n_queries"], 2 * PER_CLASS);
        assert!(r.get("p@2").is_some() && r.get("r@2").is_some() && r.get("p@15").is_none());
    }

    // Unknown domain: a clear error.
    let out = Command::new(env!("CARGO_BIN_EXE_capmatch"))
        .args(["eval", &root_s, "--domains", "Art,Sketch", "--clip", &clip, "--captioner", &captioner])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Sketch") && err.contains("Real_World"), "{err}");
}
