//! Report formats: text tables for the terminal, `results.md` (paper-style), `results.csv`,
//! `results.json`, and `precision.svg` / `precision.png` (grouped bars of P@k by domain
//! pair and mode).
//!
//! Figures are percentages. A figure with no defined value (every query of the pair lacks a
//! relevant gallery image) is NaN in memory, `null` in JSON, empty in CSV and `–` in tables.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor;
use serde_json::{json, Map, Value};

use crate::{EvalReport, Metrics, Mode};

/// DejaVu Sans (Bitstream Vera licence, see `assets/DejaVuSans-LICENSE.txt`), for PNG text.
pub static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
const FONT_FAMILY: &str = "sans-serif";

fn num(x: f64) -> Value {
    if x.is_finite() {
        json!(x)
    } else {
        Value::Null
    }
}

fn cell(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.1}")
    } else {
        "–".into()
    }
}

fn metric_object(m: &Metrics, ks: &[usize], obj: &mut Map<String, Value>) {
    for (j, k) in ks.iter().enumerate() {
        obj.insert(format!("p@{k}"), num(m.precision[j]));
    }
    obj.insert("map".into(), num(m.map));
    for (j, k) in ks.iter().enumerate() {
        obj.insert(format!("r@{k}"), num(m.recall[j]));
    }
}

/// `{"protocol", "k", "weight", "modes", "domains", "results": [...], "mean": [...]}`; each
/// result has `query`, `gallery`, `mode`, `n_queries`, `n_gallery`, `n_with_relevant`, one
/// `p@K` and `r@K` per k, and `map`.
pub fn to_json(report: &EvalReport) -> Value {
    let results: Vec<Value> = report
        .results
        .iter()
        .map(|r| {
            let mut o = Map::new();
            o.insert("query".into(), json!(r.query));
            o.insert("gallery".into(), json!(r.gallery));
            o.insert("mode".into(), json!(r.mode.as_str()));
            o.insert("n_queries".into(), json!(r.n_queries));
            o.insert("n_gallery".into(), json!(r.n_gallery));
            o.insert("n_with_relevant".into(), json!(r.n_with_relevant));
            metric_object(&r.metrics, &report.ks, &mut o);
            Value::Object(o)
        })
        .collect();
    let means: Vec<Value> = report
        .modes
        .iter()
        .filter_map(|&mode| {
            let m = report.mean(mode)?;
            let mut o = Map::new();
            o.insert("mode".into(), json!(mode.as_str()));
            metric_object(&m, &report.ks, &mut o);
            Some(Value::Object(o))
        })
        .collect();
    json!({
        "protocol": report.protocol,
        "k": report.ks,
        "weight": report.weight,
        "modes": report.modes.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
        "domains": report.domains,
        "results": results,
        "mean": means,
    })
}

/// One line per (pair, mode): `query,gallery,mode,n_queries,n_gallery,n_with_relevant,p@K…,map,r@K…`.
pub fn to_csv(report: &EvalReport) -> String {
    let mut s = String::from("query,gallery,mode,n_queries,n_gallery,n_with_relevant");
    for k in &report.ks {
        write!(s, ",p@{k}").unwrap();
    }
    s.push_str(",map");
    for k in &report.ks {
        write!(s, ",r@{k}").unwrap();
    }
    s.push('\n');
    let f = |x: f64| if x.is_finite() { format!("{x:.6}") } else { String::new() };
    let quote = |t: &str| {
        if t.contains([',', '"', '\n']) {
            format!("\"{}\"", t.replace('"', "\"\""))
        } else {
            t.to_string()
        }
    };
    for r in &report.results {
        write!(
            s,
            "{},{},{},{},{},{}",
            quote(&r.query),
            quote(&r.gallery),
            r.mode,
            r.n_queries,
            r.n_gallery,
            r.n_with_relevant
        )
        .unwrap();
        for x in &r.metrics.precision {
            write!(s, ",{}", f(*x)).unwrap();
        }
        write!(s, ",{}", f(r.metrics.map)).unwrap();
        for x in &r.metrics.recall {
            write!(s, ",{}", f(*x)).unwrap();
        }
        s.push('\n');
    }
    s
}

/// Short names for the plot: the first two letters when they tell the domains apart
/// (Office-Home: Ar, Cl, Pr, Re; DomainNet: Cl, In, Pa, Qu, Re, Sk), else the full names.
pub fn short_names(domains: &[String]) -> Vec<String> {
    let short: Vec<String> = domains
        .iter()
        .map(|d| {
            let mut c = d.chars();
            let first: String = c.next().map(|x| x.to_uppercase().collect()).unwrap_or_default();
            first + &c.take(1).collect::<String>()
        })
        .collect();
    let mut sorted = short.clone();
    sorted.sort();
    sorted.dedup();
    if sorted.len() == short.len() {
        short
    } else {
        domains.to_vec()
    }
}

fn pad_table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let width: Vec<usize> =
        (0..cols).map(|c| rows.iter().filter_map(|r| r.get(c)).map(|x| x.chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        let cells: Vec<String> = (0..cols)
            .map(|c| {
                let t = row.get(c).map(String::as_str).unwrap_or("");
                let pad = width[c] - t.chars().count();
                if c == 0 {
                    format!("{t}{}", " ".repeat(pad))
                } else {
                    format!("{}{t}", " ".repeat(pad))
                }
            })
            .collect();
        writeln!(out, "{}", cells.join("  ").trim_end()).unwrap();
        if i == 0 {
            writeln!(out, "{}", width.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("  ")).unwrap();
        }
    }
    out
}

/// Terminal tables: one per mode, rows = pairs (+ mean), columns = P@k, mAP, R@k.
pub fn text_tables(report: &EvalReport) -> String {
    let mut out = String::new();
    for &mode in &report.modes {
        let mut rows = Vec::new();
        let mut head = vec!["query → gallery".to_string(), "queries".into(), "gallery".into()];
        head.extend(report.ks.iter().map(|k| format!("P@{k}")));
        head.push("mAP".into());
        head.extend(report.ks.iter().map(|k| format!("R@{k}")));
        rows.push(head);
        let line = |label: String, q: String, g: String, m: &Metrics| {
            let mut row = vec![label, q, g];
            row.extend(m.precision.iter().map(|x| cell(*x)));
            row.push(cell(m.map));
            row.extend(m.recall.iter().map(|x| cell(*x)));
            row
        };
        for r in report.results.iter().filter(|r| r.mode == mode) {
            rows.push(line(
                format!("{} → {}", r.query, r.gallery),
                r.n_queries.to_string(),
                r.n_gallery.to_string(),
                &r.metrics,
            ));
        }
        if let Some(mean) = report.mean(mode) {
            rows.push(line("mean".into(), String::new(), String::new(), &mean));
        }
        let extra = if mode == Mode::Fused { format!(", W = {}", report.weight) } else { String::new() };
        writeln!(out, "mode: {mode}{extra} (protocol {}, %)", report.protocol).unwrap();
        out.push_str(&pad_table(&rows));
        out.push('\n');
    }
    out
}

fn md_table(rows: &[Vec<String>]) -> String {
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        writeln!(out, "| {} |", row.join(" | ")).unwrap();
        if i == 0 {
            let rule: Vec<&str> = (0..row.len()).map(|c| if c == 0 { "---" } else { "---:" }).collect();
            writeln!(out, "| {} |", rule.join(" | ")).unwrap();
        }
    }
    out
}

/// `results.md`: a paper-style table (rows = domain pairs, columns = P@k per mode, mean
/// row), then mAP and R@k per mode.
pub fn to_markdown(report: &EvalReport) -> String {
    let mut out = String::new();
    writeln!(out, "# Cross-domain retrieval: {}\n", report.protocol).unwrap();
    writeln!(
        out,
        "Domains: {}. Modes: {}. Fused weight W = {}. Figures in %. P@k as UCDIR computes it \
         (Σ relevant in top-min(k, n) / Σ min(k, n)); mAP and R@k over queries whose class is \
         in the gallery.\n",
        report.domains.join(", "),
        report.modes.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(", "),
        report.weight
    )
    .unwrap();

    let pairs = report.pairs();
    let mut head = vec!["query → gallery".to_string()];
    for mode in &report.modes {
        for k in &report.ks {
            head.push(format!("{mode} P@{k}"));
        }
    }
    let mut rows = vec![head];
    for (q, g) in &pairs {
        let mut row = vec![format!("{q} → {g}")];
        for &mode in &report.modes {
            let r = report.get(q, g, mode);
            for j in 0..report.ks.len() {
                row.push(r.map(|r| cell(r.metrics.precision[j])).unwrap_or_default());
            }
        }
        rows.push(row);
    }
    let mut mean_row = vec!["**mean**".to_string()];
    for &mode in &report.modes {
        let m = report.mean(mode);
        for j in 0..report.ks.len() {
            mean_row.push(m.as_ref().map(|m| format!("**{}**", cell(m.precision[j]))).unwrap_or_default());
        }
    }
    rows.push(mean_row);
    writeln!(out, "## Precision\n").unwrap();
    out.push_str(&md_table(&rows));

    writeln!(out, "\n## mAP and recall\n").unwrap();
    let mut head = vec!["query → gallery".to_string()];
    for mode in &report.modes {
        head.push(format!("{mode} mAP"));
        for k in &report.ks {
            head.push(format!("{mode} R@{k}"));
        }
    }
    let mut rows = vec![head];
    for (q, g) in &pairs {
        let mut row = vec![format!("{q} → {g}")];
        for &mode in &report.modes {
            let r = report.get(q, g, mode);
            row.push(r.map(|r| cell(r.metrics.map)).unwrap_or_default());
            for j in 0..report.ks.len() {
                row.push(r.map(|r| cell(r.metrics.recall[j])).unwrap_or_default());
            }
        }
        rows.push(row);
    }
    let mut mean_row = vec!["**mean**".to_string()];
    for &mode in &report.modes {
        let m = report.mean(mode);
        mean_row.push(m.as_ref().map(|m| format!("**{}**", cell(m.map))).unwrap_or_default());
        for j in 0..report.ks.len() {
            mean_row.push(m.as_ref().map(|m| format!("**{}**", cell(m.recall[j]))).unwrap_or_default());
        }
    }
    rows.push(mean_row);
    out.push_str(&md_table(&rows));

    writeln!(out, "\n## Sizes\n").unwrap();
    let mut rows = vec![vec!["query → gallery".to_string(), "queries".into(), "with a relevant item".into(), "gallery".into()]];
    for (q, g) in &pairs {
        if let Some(r) = report.results.iter().find(|r| &r.query == q && &r.gallery == g) {
            rows.push(vec![
                format!("{q} → {g}"),
                r.n_queries.to_string(),
                r.n_with_relevant.to_string(),
                r.n_gallery.to_string(),
            ]);
        }
    }
    out.push_str(&md_table(&rows));
    out
}

fn mode_color(mode: Mode) -> RGBColor {
    match mode {
        Mode::Caption => RGBColor(31, 119, 180),
        Mode::Image => RGBColor(255, 127, 14),
        Mode::Fused => RGBColor(44, 160, 44),
        Mode::CaptionText => RGBColor(148, 103, 189),
        Mode::Text => RGBColor(214, 39, 40),
    }
}

/// Pixel size of the plot for a report.
pub fn plot_size(report: &EvalReport) -> (u32, u32) {
    let pairs = report.pairs().len().max(1) as u32;
    let modes = report.modes.len().max(1) as u32;
    let width = (120 + pairs * (modes * 12 + 22)).max(900);
    let height = 94 + 300 * report.ks.len().max(1) as u32;
    (width, height)
}

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, report: &EvalReport) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let e = |x: DrawingAreaErrorKind<DB::ErrorType>| x.to_string();
    root.fill(&WHITE).map_err(e)?;
    let pairs = report.pairs();
    let short = short_names(&report.domains);
    let name = |d: &str| report.domains.iter().position(|x| x == d).map(|i| short[i].clone()).unwrap_or_else(|| d.into());
    let labels: Vec<String> = pairs.iter().map(|(q, g)| format!("{}→{}", name(q), name(g))).collect();
    let n = pairs.len().max(1) as f64;
    let n_modes = report.modes.len().max(1);

    let (title_area, body) = root.split_vertically(64);
    title_area
        .draw_text(
            &format!("{}: P@k by query → gallery pair and mode (%)", report.protocol),
            &(FONT_FAMILY, 20).into_font().color(&BLACK),
            (70, 8),
        )
        .map_err(e)?;
    // Legend in the header, clear of the bars.
    let legend_font = (FONT_FAMILY, 14).into_font().color(&BLACK);
    let mut x = 70i32;
    for &mode in &report.modes {
        title_area.draw(&Rectangle::new([(x, 40), (x + 14, 54)], mode_color(mode).filled())).map_err(e)?;
        title_area.draw_text(mode.as_str(), &legend_font, (x + 20, 40)).map_err(e)?;
        x += 40 + 9 * mode.as_str().len() as i32;
    }
    let panels = body.split_evenly((report.ks.len().max(1), 1));
    let tick = (FONT_FAMILY, 13).into_font().color(&BLACK);
    for (j, (k, panel)) in report.ks.iter().zip(panels.iter()).enumerate() {
        let mut chart = ChartBuilder::on(panel)
            .margin_left(10)
            .margin_right(20)
            .margin_top(10)
            .x_label_area_size(30)
            .y_label_area_size(55)
            .caption(format!("P@{k}"), (FONT_FAMILY, 16))
            .build_cartesian_2d(0f64..n, 0f64..100f64)
            .map_err(e)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_labels(6)
            .y_label_formatter(&|v| format!("{v:.0}"))
            .y_desc("%")
            .label_style(tick.clone())
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(e)?;
        let bw = 0.8 / n_modes as f64;
        for (mi, &mode) in report.modes.iter().enumerate() {
            let color = mode_color(mode);
            let bars: Vec<Rectangle<(f64, f64)>> = pairs
                .iter()
                .enumerate()
                .filter_map(|(p, (q, g))| {
                    let v = report.get(q, g, mode)?.metrics.precision[j];
                    let v = if v.is_finite() { v } else { 0.0 };
                    let x0 = p as f64 + 0.1 + mi as f64 * bw;
                    Some(Rectangle::new([(x0, 0.0), (x0 + bw * 0.92, v)], color.filled()))
                })
                .collect();
            chart.draw_series(bars).map_err(e)?;
        }
        // Pair labels under each group, centred.
        let style = tick.clone().pos(text_anchor::Pos::new(text_anchor::HPos::Center, text_anchor::VPos::Top));
        for (p, label) in labels.iter().enumerate() {
            let (x, y) = chart.backend_coord(&(p as f64 + 0.5, 0.0));
            root.draw_text(label, &style, (x, y + 6)).map_err(e)?;
        }
    }
    root.present().map_err(e)?;
    Ok(())
}

fn register_font() -> Result<(), String> {
    plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, FONT).map_err(|_| "invalid embedded font".to_string())
}

/// Writes the grouped bar chart as SVG.
pub fn write_svg(report: &EvalReport, path: &Path) -> Result<(), String> {
    register_font()?;
    let root = SVGBackend::new(path, plot_size(report)).into_drawing_area();
    draw(&root, report)
}

/// Writes the grouped bar chart as PNG (text drawn with the embedded DejaVu Sans).
pub fn write_png(report: &EvalReport, path: &Path) -> Result<(), String> {
    register_font()?;
    let root = BitMapBackend::new(path, plot_size(report)).into_drawing_area();
    draw(&root, report)
}

/// The files [`write_all`] creates, in order.
pub const OUTPUT_FILES: [&str; 5] = ["results.md", "results.csv", "results.json", "precision.svg", "precision.png"];

/// Writes `results.md`, `results.csv`, `results.json`, `precision.svg` and `precision.png`
/// into `dir` (created if needed); returns their paths.
pub fn write_all(report: &EvalReport, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    use anyhow::Context;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let paths: Vec<PathBuf> = OUTPUT_FILES.iter().map(|f| dir.join(f)).collect();
    let write = |p: &Path, s: String| std::fs::write(p, s).with_context(|| format!("cannot write {}", p.display()));
    write(&paths[0], to_markdown(report))?;
    write(&paths[1], to_csv(report))?;
    write(&paths[2], serde_json::to_string_pretty(&to_json(report))? + "\n")?;
    write_svg(report, &paths[3]).map_err(anyhow::Error::msg).with_context(|| format!("cannot draw {}", paths[3].display()))?;
    write_png(report, &paths[4]).map_err(anyhow::Error::msg).with_context(|| format!("cannot draw {}", paths[4].display()))?;
    Ok(paths)
}
