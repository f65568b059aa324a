//! The report's figures, as SVG drawn with plotters (text set in the embedded DejaVu Sans
//! of `capmatch-eval`, which the browser renders as its sans-serif): the histograms of
//! nearest-neighbour scores with the thresholds marked, and the domain × domain heatmap of
//! match rates.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::counts::{DomainMatrix, Histogram};
use crate::error::{InspectError, Result};

const FONT_FAMILY: &str = "sans-serif";
/// The report's accent colour (the same as its CSS).
const ACCENT: RGBColor = RGBColor(37, 99, 235);
const INK: RGBColor = RGBColor(30, 41, 59);
const MUTED: RGBColor = RGBColor(100, 116, 139);
const GRID: RGBColor = RGBColor(226, 232, 240);

fn register_font() -> Result<()> {
    plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, capmatch_eval::report::FONT)
        .map_err(|_| InspectError::Plot { path: "font".into(), message: "the embedded font is invalid".into() })
}

fn plot_error(path: &Path) -> impl Fn(String) -> InspectError + '_ {
    move |message| InspectError::Plot { path: path.to_path_buf(), message }
}

/// A vertical line on a histogram: a threshold and its name.
pub struct Marker {
    pub value: f32,
    pub label: String,
}

/// A histogram of scores with the thresholds marked.
pub fn histogram(path: &Path, title: &str, h: &Histogram, markers: &[Marker]) -> Result<()> {
    register_font()?;
    let root = SVGBackend::new(path, (560, 300)).into_drawing_area();
    draw_histogram(&root, title, h, markers).map_err(plot_error(path))
}

fn draw_histogram<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, title: &str, h: &Histogram, markers: &[Marker]) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let e = |x: DrawingAreaErrorKind<DB::ErrorType>| x.to_string();
    root.fill(&WHITE).map_err(e)?;
    let top = h.counts.iter().copied().max().unwrap_or(0).max(1) as f64 * 1.15;
    // The axis covers the values and every threshold.
    let (mut lo, mut hi) = (h.start as f64, h.end() as f64);
    for m in markers.iter().filter(|m| m.value.is_finite()) {
        lo = lo.min(m.value as f64 - 0.01);
        hi = hi.max(m.value as f64 + 0.01);
    }
    let mut chart = ChartBuilder::on(root)
        .margin(12)
        .margin_right(24)
        .caption(title, (FONT_FAMILY, 16).into_font().color(&INK))
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d(lo..hi, 0f64..top)
        .map_err(e)?;
    let label = (FONT_FAMILY, 12).into_font().color(&MUTED);
    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(GRID)
        .bold_line_style(GRID)
        .axis_style(MUTED)
        .x_labels(8)
        .y_labels(5)
        .x_label_formatter(&|v| if v.abs() < 0.005 { "0.00".into() } else { format!("{v:.2}") })
        .y_label_formatter(&|v| format!("{v:.0}"))
        .x_desc("score")
        .y_desc("images")
        .label_style(label.clone())
        .axis_desc_style(label.clone())
        .draw()
        .map_err(e)?;
    let w = h.bin_width as f64;
    chart
        .draw_series(h.counts.iter().enumerate().filter(|(_, &c)| c > 0).map(|(i, &c)| {
            let x0 = h.start as f64 + i as f64 * w;
            Rectangle::new([(x0 + w * 0.06, 0.0), (x0 + w * 0.94, c as f64)], ACCENT.mix(0.85).filled())
        }))
        .map_err(e)?;
    // The thresholds as vertical lines, named in a legend at the top left of the plot (a
    // label beside a line near the right edge would be cut off).
    let (left, plot_top) = chart.backend_coord(&(lo, top));
    for (i, m) in markers.iter().filter(|m| m.value.is_finite()).enumerate() {
        let x = m.value as f64;
        let colour = [RGBColor(220, 38, 38), RGBColor(217, 119, 6), RGBColor(5, 150, 105)][i % 3];
        chart.draw_series(std::iter::once(PathElement::new(vec![(x, 0.0), (x, top)], colour.stroke_width(2)))).map_err(e)?;
        let y = plot_top + 8 + 16 * i as i32;
        root.draw(&PathElement::new(vec![(left + 10, y), (left + 26, y)], colour.stroke_width(2))).map_err(e)?;
        let style = (FONT_FAMILY, 12).into_font().color(&colour).pos(Pos::new(HPos::Left, VPos::Center));
        root.draw_text(&format!("{} ≥ {:.2}", m.label, m.value), &style, (left + 32, y)).map_err(e)?;
    }
    root.present().map_err(e)
}

/// The domain × domain matrix of match rates: row = the images' domain, column = the
/// domain of a match; each cell's colour and text give the share of the row's images.
pub fn heatmap(path: &Path, matrix: &DomainMatrix) -> Result<()> {
    register_font()?;
    let n = matrix.domains.len().max(1) as u32;
    let label_width = matrix.domains.iter().map(|d| d.chars().count()).max().unwrap_or(4).clamp(4, 24) as u32 * 8 + 24;
    let cell = (320 / n).clamp(40, 64);
    let size = (label_width + cell * n + 30, 70 + cell * n + 40);
    let root = SVGBackend::new(path, size).into_drawing_area();
    draw_heatmap(&root, matrix, label_width as i32, cell as i32).map_err(plot_error(path))
}

fn draw_heatmap<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, m: &DomainMatrix, left: i32, cell: i32) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let e = |x: DrawingAreaErrorKind<DB::ErrorType>| x.to_string();
    root.fill(&WHITE).map_err(e)?;
    let top = 70;
    let title = (FONT_FAMILY, 15).into_font().color(&INK);
    root.draw_text("images with a match in …", &title, (left, 10)).map_err(e)?;
    let small = (FONT_FAMILY, 12).into_font().color(&MUTED);
    for (j, d) in m.domains.iter().enumerate() {
        let style = small.clone().pos(Pos::new(HPos::Center, VPos::Bottom));
        root.draw_text(&shorten(d, (cell / 7) as usize), &style, (left + j as i32 * cell + cell / 2, top - 8)).map_err(e)?;
    }
    for (i, d) in m.domains.iter().enumerate() {
        let style = small.clone().pos(Pos::new(HPos::Right, VPos::Center));
        root.draw_text(&shorten(d, 24), &style, (left - 10, top + i as i32 * cell + cell / 2)).map_err(e)?;
        for j in 0..m.domains.len() {
            let rate = m.rate[i][j];
            let (x0, y0) = (left + j as i32 * cell, top + i as i32 * cell);
            let colour = shade(rate);
            root.draw(&Rectangle::new([(x0 + 1, y0 + 1), (x0 + cell - 1, y0 + cell - 1)], colour.filled())).map_err(e)?;
            let ink = if rate > 0.55 { WHITE } else { INK };
            let style = (FONT_FAMILY, 13).into_font().color(&ink).pos(Pos::new(HPos::Center, VPos::Center));
            root.draw_text(&format!("{:.0}%", rate * 100.0), &style, (x0 + cell / 2, y0 + cell / 2)).map_err(e)?;
        }
    }
    let foot = small.pos(Pos::new(HPos::Left, VPos::Top));
    root.draw_text("row: an image's domain · column: the domain of its match", &foot, (left, top + m.domains.len() as i32 * cell + 12))
        .map_err(e)?;
    root.present().map_err(e)
}

/// White to the accent colour.
fn shade(rate: f64) -> RGBColor {
    let t = rate.clamp(0.0, 1.0);
    let mix = |a: u8, b: u8| (a as f64 + (b as f64 - a as f64) * t).round() as u8;
    RGBColor(mix(241, ACCENT.0), mix(245, ACCENT.1), mix(249, ACCENT.2))
}

fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max.max(2) {
        s.to_string()
    } else {
        s.chars().take(max.max(2) - 1).collect::<String>() + "…"
    }
}
