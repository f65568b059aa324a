//! Report files are written and read back.

use capmatch_eval::report::{self, OUTPUT_FILES};
use capmatch_eval::{evaluate, EvalConfig, EvalItem, EvalReport, Mode};

/// Four Office-Home-like domains, three classes, embeddings that make captions better
/// than images (so the bars differ), and a class missing from one domain.
fn office_home_like() -> EvalReport {
    let mut items = Vec::new();
    let domains = ["Art", "Clipart", "Product", "Real_World"];
    for (d, domain) in domains.iter().enumerate() {
        for i in 0..9usize {
            let class = i % 3;
            if d == 3 && class == 2 {
                continue; // Real_World has no "c2"
            }
            let mut caption = vec![0.1f32; 4];
            caption[class] = 1.0;
            let mut image = caption.clone();
            image[3] = 0.8 + 0.3 * ((i * 7 + d * 3) % 5) as f32; // a domain/style direction
            image[(class + 1 + i % 2) % 3] += 0.6;
            items.push(EvalItem {
                domain: domain.to_string(),
                class: format!("c{class}"),
                image_embedding: image,
                caption_embeddings: vec![caption],
            });
        }
    }
    let config = EvalConfig {
        protocol: "office-home".into(),
        domains: domains.iter().map(|s| s.to_string()).collect(),
        ks: vec![1, 5, 15],
        ..EvalConfig::default()
    };
    evaluate(&items, &config, &|_| {}).unwrap()
}

#[test]
fn json_has_one_p_and_r_per_k() {
    let r = office_home_like();
    let v = report::to_json(&r);
    assert_eq!(v["protocol"], "office-home");
    assert_eq!(v["k"], serde_json::json!([1, 5, 15]));
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 12 * 4);
    let first = &results[0];
    for key in ["query", "gallery", "mode", "n_queries", "n_gallery", "p@1", "p@5", "p@15", "map", "r@1", "r@5", "r@15"] {
        assert!(first.get(key).is_some(), "missing {key} in {first}");
    }
    assert_eq!(first["query"], "Art");
    assert_eq!(first["gallery"], "Clipart");
    assert_eq!(first["mode"], "caption");
    assert_eq!(first["n_queries"], 9);
    // Queries of class c2 have nothing relevant in Real_World.
    let to_real = results.iter().find(|x| x["gallery"] == "Real_World").unwrap();
    assert_eq!(to_real["n_queries"], 9);
    assert_eq!(to_real["n_with_relevant"], 6);
    assert_eq!(v["mean"].as_array().unwrap().len(), 4);
}

#[test]
fn files_are_written_and_read_back() {
    let r = office_home_like();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let paths = report::write_all(&r, &out).unwrap();
    assert_eq!(paths.len(), OUTPUT_FILES.len());
    for p in &paths {
        assert!(std::fs::metadata(p).unwrap().len() > 0, "{} empty", p.display());
    }

    // JSON round trip: the numbers are the report's.
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let got = json["results"].as_array().unwrap();
    for (row, res) in got.iter().zip(&r.results) {
        assert_eq!(row["mode"], res.mode.as_str());
        assert!((row["p@5"].as_f64().unwrap() - res.metrics.precision[1]).abs() < 1e-12);
        assert!((row["map"].as_f64().unwrap() - res.metrics.map).abs() < 1e-12);
    }

    // CSV: header plus one line per result, same numbers to 6 decimals.
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "query,gallery,mode,n_queries,n_gallery,n_with_relevant,p@1,p@5,p@15,map,r@1,r@5,r@15");
    assert_eq!(lines.len(), 1 + r.results.len());
    for (line, res) in lines[1..].iter().zip(&r.results) {
        let f: Vec<&str> = line.split(',').collect();
        assert_eq!(f.len(), 13);
        assert_eq!((f[0], f[1], f[2]), (res.query.as_str(), res.gallery.as_str(), res.mode.as_str()));
        assert!((f[7].parse::<f64>().unwrap() - res.metrics.precision[1]).abs() < 1e-5);
        assert!((f[9].parse::<f64>().unwrap() - res.metrics.map).abs() < 1e-5);
    }

    // Markdown: a row per pair, a mean row, P@k columns per mode.
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert!(md.contains("| query → gallery | caption P@1 | caption P@5 | caption P@15 | image P@1 |"), "{md}");
    assert!(md.contains("| Art → Clipart |"));
    assert!(md.contains("| Real_World → Product |"));
    assert!(md.contains("| **mean** |"));
    let mean = r.mean(Mode::Caption).unwrap();
    assert!(md.contains(&format!("**{:.1}**", mean.precision[0])));

    // SVG: a complete document with one bar per (pair, mode, k) and the pair labels.
    let svg = std::fs::read_to_string(out.join("precision.svg")).unwrap();
    assert!(svg.trim_start().starts_with("<svg"), "{}", &svg[..100]);
    assert!(svg.trim_end().ends_with("</svg>"));
    let (w, h) = report::plot_size(&r);
    assert!(svg.contains(&format!("width=\"{w}\"")) && svg.contains(&format!("height=\"{h}\"")));
    let rects = svg.matches("<rect").count();
    assert!(rects >= 12 * 4 * 3, "only {rects} rects");
    assert!(svg.contains("Ar→Cl") && svg.contains("Re→Pr"));
    assert!(svg.contains("caption-text"));

    // PNG: decodes, has the plot's size, and is not blank.
    let png = image::open(out.join("precision.png")).unwrap().to_rgb8();
    assert_eq!(png.dimensions(), (w, h));
    let non_white = png.pixels().filter(|p| p.0 != [255, 255, 255]).count();
    assert!(non_white > (w * h / 50) as usize, "{non_white} non-white pixels");
    // The caption colour (first mode) is drawn.
    assert!(png.pixels().any(|p| p.0 == [31, 119, 180]));
}

#[test]
fn text_tables_list_every_pair_and_a_mean() {
    let r = office_home_like();
    let t = report::text_tables(&r);
    for mode in capmatch_eval::EVAL_MODES {
        assert!(t.contains(&format!("mode: {mode}")));
    }
    assert_eq!(t.matches("Art → Clipart").count(), 4);
    assert_eq!(t.matches("\nmean").count(), 4);
    assert!(t.contains("P@15") && t.contains("mAP") && t.contains("R@1"));
}

#[test]
fn undefined_figures_are_null_and_blank() {
    // Domain B holds only class y, so A's queries (class x) have nothing relevant.
    let item = |d: &str, c: &str, v: Vec<f32>| EvalItem { domain: d.into(), class: c.into(), image_embedding: v.clone(), caption_embeddings: vec![v] };
    let items = vec![item("A", "x", vec![1.0, 0.0]), item("B", "y", vec![0.0, 1.0])];
    let r = evaluate(&items, &EvalConfig { ks: vec![1], modes: vec![Mode::Image], ..EvalConfig::default() }, &|_| {}).unwrap();
    let v = report::to_json(&r);
    assert!(v["results"][0]["p@1"].is_null());
    assert!(v["results"][0]["map"].is_null());
    assert!(report::to_csv(&r).lines().nth(1).unwrap().ends_with(",,,"));
    assert!(report::to_markdown(&r).contains("| A → B | – |"));
    let dir = tempfile::tempdir().unwrap();
    report::write_all(&r, dir.path()).unwrap();
}

#[test]
fn short_names() {
    let s = |v: &[&str]| report::short_names(&v.iter().map(|x| x.to_string()).collect::<Vec<_>>());
    assert_eq!(s(&["Art", "Clipart", "Product", "Real_World"]), ["Ar", "Cl", "Pr", "Re"]);
    assert_eq!(s(&["clipart", "infograph", "painting", "quickdraw", "real", "sketch"]), ["Cl", "In", "Pa", "Qu", "Re", "Sk"]);
    assert_eq!(s(&["photo", "photo2"]), ["photo", "photo2"]);
}
