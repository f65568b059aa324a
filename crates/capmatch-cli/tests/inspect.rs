//! End to end: `capmatch inspect` with the real binary and the tiny fixture models, on a
//! collection of real photos and drawings with planted copies (byte-identical, re-encoded
//! as JPEG and WebP, resized, lightly cropped) and unrelated images: every planted copy is
//! found in its tier, no unrelated pair is called a copy, the report's pages parse and
//! link only to files that exist, a re-run after new files computes only what changed, and
//! `--against` a folder indexes it and matches the collection against it. A screenshot of
//! the report in headless Chromium is saved under target/ (skipped without Chromium unless
//! CAPMATCH_REQUIRE_CHROMIUM=1).
//!
//! The fixture CLIP has random weights, so its *caption* space means nothing and only the
//! copy tiers are checked here (the others are checked on hand-built vectors in
//! capmatch-inspect's tests). Its image space still sees copies: a resized or re-encoded
//! copy goes through the same 96-pixel preprocessing to nearly the same input. Measured
//! with this collection (`near_duplicate_margin` prints it): planted copies score 0.968 and
//! up, pairs of different subjects 0.937 at most, so the default threshold (0.95) separates
//! them. What the random encoder cannot do is tell a copy from the same subject in another
//! style: it sees mostly colour, and the lemon photo and the lemon drawing (yellow on white)
//! score 0.96–0.99, as high as copies. So pairs of one subject are allowed in the copy
//! tiers here; with a trained CLIP they score far lower.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use image::{ImageFormat, Rgb, RgbImage};
use serde_json::Value;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn fixture(dir: &str) -> String {
    workspace().join(dir).display().to_string()
}

fn capmatch(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_capmatch")).args(args).env("RUST_LOG", "capmatch=info").output().unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = capmatch(args);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(out.status.success(), "capmatch {args:?} failed:\n{stdout}\n{stderr}");
    stdout
}

fn index(db: &str, dirs: &[&Path]) {
    let mut args = vec!["index"];
    let dirs: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    args.extend(dirs.iter().map(String::as_str));
    let (clip, blip) = (fixture("fixtures/clip/tiny-quickgelu-p32"), fixture("fixtures/blip/tiny-a"));
    args.extend(["--db", db, "--clip", &clip, "--captioner", &blip, "--batch", "8"]);
    ok(&args);
}

/// A real image as capmatch sees it (its transparent parts over white), so that a copy
/// made from it is a copy of what the original shows.
fn load(name: &str) -> RgbImage {
    let path = workspace().join("fixtures/images/real").join(format!("{name}.png"));
    capmatch_core::image_io::decode_file(&path, &Default::default()).unwrap()
}

fn save_jpeg(img: &RgbImage, path: &Path, quality: u8) {
    std::fs::write(path, capmatch_inspect::report::thumbs::encode_jpeg(img, f32::from(quality)).unwrap()).unwrap();
}

fn crop(img: &RgbImage, fraction: f64) -> RgbImage {
    let (w, h) = img.dimensions();
    let (dx, dy) = ((w as f64 * fraction) as u32, (h as f64 * fraction) as u32);
    image::imageops::crop_imm(img, dx, dy, w - 2 * dx, h - 2 * dy).to_image()
}

fn resize(img: &RgbImage, scale: f64) -> RgbImage {
    let (w, h) = img.dimensions();
    image::imageops::resize(img, (w as f64 * scale) as u32, (h as f64 * scale) as u32, image::imageops::FilterType::Lanczos3)
}

/// Synthetic images unlike the photos and unlike each other.
fn unrelated(i: usize) -> RgbImage {
    let (w, h) = (200 + 17 * i as u32, 160 + 11 * i as u32);
    let mut seed = 0x9e3779b97f4a7c15u64.wrapping_mul(i as u64 + 1);
    RgbImage::from_fn(w, h, |x, y| match i {
        0 => if (x / 12) % 2 == 0 { Rgb([220, 30, 40]) } else { Rgb([250, 250, 250]) },
        1 => if (y / 20) % 2 == 0 { Rgb([20, 40, 200]) } else { Rgb([250, 220, 30]) },
        2 => if (x / 16 + y / 16) % 2 == 0 { Rgb([0, 0, 0]) } else { Rgb([255, 255, 255]) },
        3 => {
            let d = ((x as f64 - w as f64 / 2.0).hypot(y as f64 - h as f64 / 2.0) * 2.0) as u32;
            Rgb([0, (255 - d.min(255)) as u8, 60])
        }
        4 => Rgb([(x * 255 / w) as u8, 40, (y * 255 / h) as u8]),
        5 => {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            Rgb([seed as u8, (seed >> 8) as u8, (seed >> 16) as u8])
        }
        6 => if ((x as i64 - 60).pow(2) + (y as i64 - 60).pow(2)) < 1600 { Rgb([240, 120, 0]) } else { Rgb([90, 90, 100]) },
        _ => if (x + 2 * y) % 23 < 4 { Rgb([10, 120, 110]) } else { Rgb([235, 225, 200]) },
    })
}

/// The collection: `photo/` and `cartoon/` hold the six real images (and one exact copy);
/// `reposts/` holds copies of them; `other/` holds unrelated images. Returns the subject of
/// every file (a pair of different subjects is unrelated) and the planted (original, copy,
/// expected tier) triples.
struct Collection {
    roots: Vec<PathBuf>,
    subject_of: HashMap<PathBuf, String>,
    planted: Vec<(PathBuf, PathBuf, &'static str)>,
}

/// "photo_lemon" → "lemon".
fn subject(name: &str) -> String {
    name.split('_').nth(1).unwrap_or(name).to_string()
}

fn plant(root: &Path) -> Collection {
    for d in ["photo", "cartoon", "reposts", "other"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    let mut subject_of = HashMap::new();
    let mut planted = Vec::new();
    let names = ["photo_grapes", "photo_lemon", "photo_pineapple", "cartoon_apple", "cartoon_grapes", "cartoon_lemon"];
    let mut originals = HashMap::new();
    for name in names {
        let dir = if name.starts_with("photo") { "photo" } else { "cartoon" };
        let path = root.join(dir).join(format!("{name}.png"));
        std::fs::copy(workspace().join("fixtures/images/real").join(format!("{name}.png")), &path).unwrap();
        subject_of.insert(path.clone(), subject(name));
        originals.insert(name, path);
    }
    let mut add = |original: &str, copy: PathBuf, tier: &'static str, subject_of: &mut HashMap<PathBuf, String>| {
        subject_of.insert(copy.clone(), subject(original));
        planted.push((originals[original].clone(), copy, tier));
    };
    // Byte-identical copies, in the same domain and in another.
    for copy in [root.join("photo/photo_lemon (copy).png"), root.join("reposts/lemon.png")] {
        std::fs::copy(&originals["photo_lemon"], &copy).unwrap();
        add("photo_lemon", copy, "identical", &mut subject_of);
    }
    let r = root.join("reposts");
    save_jpeg(&load("photo_grapes"), &r.join("grapes-q85.jpg"), 85);
    add("photo_grapes", r.join("grapes-q85.jpg"), "near-duplicate", &mut subject_of);
    load("photo_pineapple").save_with_format(r.join("pineapple.webp"), ImageFormat::WebP).unwrap();
    add("photo_pineapple", r.join("pineapple.webp"), "near-duplicate", &mut subject_of);
    resize(&load("cartoon_apple"), 0.7).save(r.join("apple-small.png")).unwrap();
    add("cartoon_apple", r.join("apple-small.png"), "near-duplicate", &mut subject_of);
    crop(&load("photo_lemon"), 0.04).save(r.join("lemon-cropped.png")).unwrap();
    add("photo_lemon", r.join("lemon-cropped.png"), "near-duplicate", &mut subject_of);
    save_jpeg(&load("cartoon_grapes"), &r.join("cartoon-grapes-q75.jpg"), 75);
    add("cartoon_grapes", r.join("cartoon-grapes-q75.jpg"), "near-duplicate", &mut subject_of);
    save_jpeg(&resize(&crop(&load("cartoon_lemon"), 0.03), 0.8), &r.join("cartoon-lemon-edit.jpg"), 90);
    add("cartoon_lemon", r.join("cartoon-lemon-edit.jpg"), "near-duplicate", &mut subject_of);
    for i in 0..8 {
        let path = root.join("other").join(format!("pattern-{i}.png"));
        unrelated(i).save(&path).unwrap();
        subject_of.insert(path, format!("pattern {i}"));
    }
    let subject_of = subject_of.into_iter().map(|(p, g)| (p.canonicalize().unwrap(), g)).collect();
    let planted = planted.into_iter().map(|(a, b, t)| (a.canonicalize().unwrap(), b.canonicalize().unwrap(), t)).collect();
    Collection { roots: ["photo", "cartoon", "reposts", "other"].iter().map(|d| root.join(d)).collect(), subject_of, planted }
}

/// The planted collection under `root/collection`, indexed into `root/c.db` (returned).
fn planted_and_indexed(root: &Path) -> (Collection, String) {
    let collection = plant(&root.join("collection"));
    let db = root.join("c.db").display().to_string();
    let roots: Vec<&Path> = collection.roots.iter().map(PathBuf::as_path).collect();
    index(&db, &roots);
    (collection, db)
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// (path a, path b) → (tier, image score), from report.json.
fn pairs_of(report: &Value) -> HashMap<(PathBuf, PathBuf), (String, f64)> {
    let path_of = |id: &Value| PathBuf::from(report["images"][id.to_string()]["path"].as_str().unwrap());
    report["pairs"]["listed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let (a, b) = (path_of(&p["a"]), path_of(&p["b"]));
            let key = if a < b { (a, b) } else { (b, a) };
            (key, (p["tier"].as_str().unwrap().to_string(), p["image"].as_f64().unwrap_or(f64::NAN)))
        })
        .collect()
}

/// Every page parses as well-formed markup, and every relative `src` and `href` names a
/// file of the report. Returns the pages' file names.
fn check_pages(dir: &Path) -> BTreeSet<String> {
    let mut pages = BTreeSet::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "html") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let doc = roxmltree::Document::parse_with_options(&text, roxmltree::ParsingOptions { allow_dtd: true, ..Default::default() })
            .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()));
        for node in doc.descendants().filter(|n| n.is_element()) {
            for attr in ["src", "href"] {
                if let Some(target) = node.attribute(attr) {
                    assert!(!target.contains("://") && !target.starts_with('/'), "{}: not a relative link: {target}", path.display());
                    let file = target.split('#').next().unwrap();
                    assert!(dir.join(file).is_file(), "{}: {attr}={target} names no file of the report", path.display());
                }
            }
        }
        pages.insert(path.file_name().unwrap().to_string_lossy().into_owned());
    }
    pages
}

#[test]
fn planted_copies_are_found_and_the_report_holds_together() {
    let tmp = tempfile::tempdir().unwrap();
    let (collection, db) = planted_and_indexed(tmp.path());
    let out = tmp.path().join("report");
    let out_s = out.display().to_string();
    let summary: Value = serde_json::from_str(&ok(&["inspect", "--db", &db, "--out", &out_s, "--json"])).unwrap();
    let report = read_json(&out.join("report.json"));
    assert_eq!(report["schema"], "capmatch-inspect-report");
    assert_eq!(report["version"], 1);
    assert_eq!(report["gallery"]["images"], 6 + 1 + 7 + 8);
    assert_eq!(summary["images"], report["gallery"]["images"]);

    // Recall 1.0: every planted copy, in its tier.
    let pairs = pairs_of(&report);
    for (original, copy, tier) in &collection.planted {
        let key = if original < copy { (original.clone(), copy.clone()) } else { (copy.clone(), original.clone()) };
        let found = pairs.get(&key).unwrap_or_else(|| panic!("planted copy {} of {} not found", copy.display(), original.display()));
        assert_eq!(found.0, *tier, "{} of {}: image score {}", copy.display(), original.display(), found.1);
    }
    // No unrelated pair among the copies.
    let mut with_copy = BTreeSet::new();
    for ((a, b), (tier, score)) in &pairs {
        if tier == "identical" || tier == "near-duplicate" {
            assert_eq!(collection.subject_of[a], collection.subject_of[b], "{} and {} are no copies (image score {score})", a.display(), b.display());
            with_copy.extend([a.clone(), b.clone()]);
        }
    }
    // Counts are by image, never by pair: the three lemon files are 3 pairs but 3 images.
    let counts = &report["counts"]["all"];
    assert_eq!(counts["identical"], 3);
    assert_eq!(counts["any_copy"].as_u64(), Some(with_copy.len() as u64));
    assert!(with_copy.len() >= 6 + 7 + 1, "every original and every copy");
    assert_eq!(report["counts"]["by_domain"]["other"]["any_copy"], 0);

    // The report: pages that parse and link only to existing files, every figure and list.
    let pages = check_pages(&out);
    for page in ["index.html", "copies.html", "cross-domain.html", "same-subject.html", "clusters.html", "outliers.html"] {
        assert!(pages.contains(page), "{page} missing: {pages:?}");
    }
    for file in ["style.css", "nearest-image.svg", "nearest-caption.svg", "domains.svg", "pairs.csv", "clusters.csv", "outliers.csv"] {
        assert!(out.join(file).is_file(), "{file}");
    }
    let thumbs = std::fs::read_dir(out.join("thumbs")).unwrap().count();
    assert!(thumbs >= 10, "{thumbs} thumbnails");
    let copies_page = std::fs::read_to_string(out.join("copies.html")).unwrap();
    assert!(copies_page.contains("grapes-q85.jpg") && copies_page.contains("t-identical"));
    let csv = std::fs::read_to_string(out.join("pairs.csv")).unwrap();
    assert!(csv.starts_with("tier,score,image,caption,"));
    assert_eq!(csv.lines().count(), 1 + report["pairs"]["listed"].as_array().unwrap().len());
    let clusters_csv = std::fs::read_to_string(out.join("clusters.csv")).unwrap();
    assert!(clusters_csv.lines().any(|l| l.contains(",medoid,")), "{clusters_csv}");

    // A re-run with nothing new computes no neighbours.
    ok(&["inspect", "--db", &db, "--out", &out_s, "--json"]);
    let again = read_json(&out.join("report.json"));
    for g in again["work"]["graphs"].as_array().unwrap() {
        assert_eq!((g["computed"].as_u64(), g["updated"].as_u64()), (Some(0), Some(0)), "{g}");
        assert_eq!(g["reused"], 22);
    }

    // New files: only their rows are computed, and the others are updated with them.
    let more = tmp.path().join("collection/reposts");
    let new_copy = more.join("pineapple-q70.jpg");
    save_jpeg(&load("photo_pineapple"), &new_copy, 70);
    let roots: Vec<&Path> = collection.roots.iter().map(PathBuf::as_path).collect();
    index(&db, &roots);
    ok(&["inspect", "--db", &db, "--out", &out_s]);
    let third = read_json(&out.join("report.json"));
    for g in third["work"]["graphs"].as_array().unwrap() {
        assert_eq!(g["computed"], 1, "{g}");
        assert_eq!((g["updated"].as_u64(), g["new_candidates"].as_u64()), (Some(22), Some(1)), "{g}");
    }
    let pairs = pairs_of(&third);
    let original = collection.planted.iter().find(|p| p.0.ends_with("photo_pineapple.png")).unwrap().0.clone();
    let key = (original.clone().min(new_copy.canonicalize().unwrap()), original.max(new_copy.canonicalize().unwrap()));
    assert_eq!(pairs.get(&key).map(|p| p.0.as_str()), Some("near-duplicate"), "the new copy is found");
    check_pages(&out);
}

#[test]
fn against_a_folder_indexes_it_and_matches_the_collection() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("collection");
    std::fs::create_dir_all(root.join("generated")).unwrap();
    std::fs::create_dir_all(tmp.path().join("references")).unwrap();
    for name in ["photo_grapes", "cartoon_lemon", "photo_pineapple"] {
        // The "generated" images: re-encoded copies of two references, and one original.
        save_jpeg(&load(name), &root.join("generated").join(format!("{name}.jpg")), 80);
    }
    unrelated(3).save(root.join("generated/pattern.png")).unwrap();
    for name in ["photo_grapes", "cartoon_lemon", "cartoon_apple"] {
        std::fs::copy(workspace().join("fixtures/images/real").join(format!("{name}.png")), tmp.path().join("references").join(format!("{name}.png")))
            .unwrap();
    }
    let db = tmp.path().join("g.db").display().to_string();
    index(&db, &[&root.join("generated")]);
    let out = tmp.path().join("report").display().to_string();
    let references = tmp.path().join("references").display().to_string();
    let stdout = ok(&["inspect", "--db", &db, "--out", &out, "--against", &references]);
    assert!(stdout.contains("have a match in references"), "{stdout}");
    let report = read_json(&Path::new(&out).join("report.json"));
    let a = &report["against"][0];
    assert_eq!(a["domain"], "references");
    assert_eq!((a["collection"].as_u64(), a["references"].as_u64()), (Some(4), Some(3)));
    let path = |id: &Value| report["images"][id.to_string()]["path"].as_str().unwrap().to_string();
    let copies: BTreeMap<String, String> = a["listed"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["tier"] == "near-duplicate")
        .map(|m| (path(&m["image"]), path(&m["reference"])))
        .collect();
    let stem = |p: &str| Path::new(p).file_stem().unwrap().to_string_lossy().into_owned();
    assert_eq!(copies.len(), 2, "{copies:?}");
    for (image, reference) in &copies {
        assert_eq!(stem(image), stem(reference), "{image} reproduces {reference}");
    }
    assert!(Path::new(&out).join("against-1.html").is_file());
    assert!(std::fs::read_to_string(Path::new(&out).join("against.csv")).unwrap().lines().count() > 2);
    check_pages(Path::new(&out));
    // A reference that is neither a folder nor a domain is refused, naming the domains.
    let err = capmatch(&["inspect", "--db", &db, "--out", &out, "--against", "sculptures"]);
    assert!(!err.status.success());
    let stderr = String::from_utf8_lossy(&err.stderr);
    assert!(stderr.contains("sculptures") && stderr.contains("generated"), "{stderr}");
}

/// One of the six real images (not a copy).
fn is_original(path: &Path) -> bool {
    let name = path.file_name().unwrap().to_string_lossy();
    (name.starts_with("photo_") || name.starts_with("cartoon_")) && name.ends_with(".png") && !name.contains("copy")
}

/// The image scores of planted copies and of pairs of different subjects with the tiny
/// CLIP, printed (run with `--nocapture` to see them): the margin the default near-duplicate
/// threshold sits in.
#[test]
fn near_duplicate_margin() {
    let tmp = tempfile::tempdir().unwrap();
    let (collection, db) = planted_and_indexed(tmp.path());
    let out = tmp.path().join("report");
    // With `near=-1` every neighbouring pair lands in a copy tier: all their scores come back.
    ok(&["inspect", "--db", &db, "--out", &out.display().to_string(), "--thresholds", "near=-1", "-k", "30", "--max-pairs", "100000"]);
    let pairs = pairs_of(&read_json(&out.join("report.json")));
    let planted: HashMap<(PathBuf, PathBuf), f64> = collection
        .planted
        .iter()
        .map(|(a, b, _)| {
            let key = if a < b { (a.clone(), b.clone()) } else { (b.clone(), a.clone()) };
            let score = pairs[&key].1;
            (key, score)
        })
        .collect();
    let lowest_copy = planted.values().copied().fold(f64::INFINITY, f64::min);
    let (mut different, mut same_subject) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    for ((a, b), (_, score)) in &pairs {
        if collection.subject_of[a] != collection.subject_of[b] {
            different = different.max(*score);
        } else if is_original(a) && is_original(b) {
            same_subject = same_subject.max(*score);
        }
    }
    println!(
        "image scores with the tiny CLIP: planted copies ≥ {lowest_copy:.4}; different subjects ≤ {different:.4}; \
         the photo and the drawing of one subject ≤ {same_subject:.4}"
    );
    let near = capmatch_inspect::tiers::NEAR_DUPLICATE as f64;
    assert!(lowest_copy >= near && different < near, "the default near-duplicate threshold {near} does not separate them");
}

/// Headless Chromium, if installed (`scripts/install-chromium.sh`).
fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser"].iter().find_map(|name| {
        let out = Command::new("sh").arg("-c").arg(format!("command -v {name}")).output().ok()?;
        let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (out.status.success() && !path.is_empty()).then(|| PathBuf::from(path))
    })
}

/// A screenshot of the report's overview in headless Chromium, saved as
/// target/inspect-report.png (the report itself is copied to target/inspect-report/), for a
/// person to look at. Without Chromium the test says so and passes, unless
/// CAPMATCH_REQUIRE_CHROMIUM=1 (CI installs it and sets that).
#[test]
fn report_screenshot() {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var("CAPMATCH_REQUIRE_CHROMIUM").as_deref() != Ok("1"),
            "CAPMATCH_REQUIRE_CHROMIUM=1 but no chromium on PATH (run scripts/install-chromium.sh)"
        );
        eprintln!("SKIPPED report_screenshot: no chromium on PATH (scripts/install-chromium.sh installs it)");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (_, db) = planted_and_indexed(tmp.path());
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().to_path_buf();
    let report = target.join("inspect-report");
    let _ = std::fs::remove_dir_all(&report);
    ok(&["inspect", "--db", &db, "--out", &report.display().to_string(), "--against", "cartoon"]);
    let shot = target.join("inspect-report.png");
    let _ = std::fs::remove_file(&shot);
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(&browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            &format!("--user-data-dir={}", profile.path().display()),
            &format!("--screenshot={}", shot.display()),
            "--window-size=1400,2000",
            &format!("file://{}", report.join("index.html").display()),
        ])
        .output()
        .unwrap();
    assert!(shot.is_file(), "no screenshot from {}:\n{}", browser.display(), String::from_utf8_lossy(&out.stderr));
    // Not a blank page: the thumbnails and figures make many distinct colours.
    let png = image::open(&shot).unwrap().to_rgb8();
    assert_eq!(png.dimensions(), (1400, 2000));
    let colours: BTreeSet<[u8; 3]> = png.pixels().step_by(7).map(|p| p.0).collect();
    assert!(colours.len() > 500, "the screenshot looks blank ({} colours)", colours.len());
    eprintln!("screenshot of the report: {}", shot.display());
}
