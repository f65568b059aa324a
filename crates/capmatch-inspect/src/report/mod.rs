//! The report: a self-contained static folder.
//!
//! | file | |
//! | --- | --- |
//! | `index.html` | overview: counts, figures, a preview of every gallery |
//! | `copies.html`, `cross-domain.html`, `same-subject.html`, `clusters.html`, `against-N.html`, `outliers.html` | the galleries, paginated (`copies-2.html`, …) |
//! | `style.css` | the pages' stylesheet |
//! | `nearest-image.svg`, `nearest-caption.svg`, `domains.svg` | the figures |
//! | `thumbs/` | small JPEG thumbnails, named by content hash, written once |
//! | `report.json` | everything, for programs (schema in [`json`]) |
//! | `pairs.csv`, `clusters.csv`, `outliers.csv`, `against.csv` | the lists, for spreadsheets |
//!
//! Links are relative, there is no script and nothing is fetched from elsewhere: the folder
//! opens from disk, and a server can serve it under any path (`capmatch serve` at
//! `/inspect`). Writing into a folder that holds an earlier report replaces its pages and
//! keeps its thumbnails.

pub mod csv;
pub mod html;
pub mod json;
pub mod plots;
pub mod thumbs;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::clusters::Cluster;
use crate::counts::Histogram;
use crate::error::{InspectError, Result};
use crate::tiers::{Pair, Tier};
use crate::{Inspection, ReferenceMatch};

/// How the report is written.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    /// Most items listed per gallery (pairs per tier, clusters, matches per reference
    /// domain), strongest first, in the pages, the JSON and the CSV files alike. Counts
    /// always cover everything.
    pub max_listed: usize,
    /// The catalog, as the report names it.
    pub db: String,
}

/// The listed part of an inspection.
pub struct Listing<'a> {
    /// At most `max_listed` pairs of each tier, in the inspection's order.
    pub pairs: Vec<&'a Pair>,
    pub clusters: &'a [Cluster],
    /// Per reference domain.
    pub against: Vec<&'a [ReferenceMatch]>,
}

impl<'a> Listing<'a> {
    pub fn of(inspection: &'a Inspection, max: usize) -> Self {
        let mut per_tier: HashMap<Tier, usize> = HashMap::new();
        let pairs = inspection
            .pairs
            .iter()
            .filter(|p| {
                let n = per_tier.entry(p.tier).or_default();
                *n += 1;
                *n <= max
            })
            .collect();
        let clusters = &inspection.clustering.clusters[..inspection.clustering.clusters.len().min(max)];
        let against = inspection.against.iter().map(|a| &a.matches[..a.matches.len().min(max)]).collect();
        Self { pairs, clusters, against }
    }

    /// The images the pages show (and the thumbnails they need).
    fn shown(&self, inspection: &Inspection) -> BTreeSet<usize> {
        let mut s = BTreeSet::new();
        for p in &self.pairs {
            s.extend([p.a, p.b]);
        }
        for c in self.clusters {
            s.insert(c.medoid);
            s.extend(c.members.iter().take(html::CLUSTER_THUMBS).map(|m| m.image));
        }
        for list in &self.against {
            for m in list.iter() {
                s.extend([m.image, m.reference]);
            }
        }
        let o = &inspection.outliers;
        for x in o.weakest_neighbour.iter().chain(&o.caption_disagreement) {
            s.insert(x.image);
            s.extend(x.neighbour);
        }
        s
    }
}

/// What the writers share besides the inspection.
pub struct ReportMeta {
    pub db: String,
    pub max_listed: usize,
    /// Per shown image, its thumbnail's relative path (`None`: none could be made).
    pub thumbnails: HashMap<usize, Option<String>>,
    pub nearest_image: Histogram,
    pub nearest_caption: Histogram,
    pub report_secs: f64,
}

/// What [`write`] made.
#[derive(Debug, Clone)]
pub struct Written {
    pub index: PathBuf,
    pub files: usize,
    pub thumbnails: usize,
    /// Shown images whose file could not be read for a thumbnail.
    pub missing_thumbnails: usize,
}

/// Bins of the nearest-neighbour histograms.
const BINS: usize = 40;

/// Writes the report of `inspection` into `dir` (created if needed).
pub fn write(inspection: &Inspection, dir: &Path, options: &ReportOptions) -> Result<Written> {
    let started = Instant::now();
    std::fs::create_dir_all(dir).map_err(|e| InspectError::io(dir, e))?;
    let listing = Listing::of(inspection, options.max_listed);
    let shown: Vec<usize> = listing.shown(inspection).into_iter().collect();
    let refs: Vec<&crate::Image> = shown.iter().map(|&i| &inspection.images[i]).collect();
    let made = thumbs::write_all(dir, &refs);
    let thumbnails: HashMap<usize, Option<String>> = shown
        .iter()
        .zip(&made)
        .map(|(&i, &ok)| (i, ok.then(|| thumbs::relative_path(&inspection.images[i]))))
        .collect();
    let mut meta = ReportMeta {
        db: options.db.clone(),
        max_listed: options.max_listed,
        nearest_image: Histogram::of(&inspection.nearest_image, BINS),
        nearest_caption: Histogram::of(&inspection.nearest_caption, BINS),
        thumbnails,
        report_secs: 0.0,
    };
    let t = &inspection.options.thresholds;
    let near = plots::Marker { value: t.near_duplicate, label: "near-duplicate".into() };
    let mut caption_markers = vec![plots::Marker { value: t.cross_domain, label: "cross-domain".into() }];
    let mut image_markers = vec![near];
    match inspection.options.mode {
        crate::MatchMode::Caption => caption_markers.push(plots::Marker { value: t.same_subject, label: "same subject".into() }),
        crate::MatchMode::Image => image_markers.push(plots::Marker { value: t.same_subject, label: "same subject".into() }),
        crate::MatchMode::Fused { .. } => {}
    }
    plots::histogram(&dir.join("nearest-image.svg"), "best match in image space", &meta.nearest_image, &image_markers)?;
    plots::histogram(&dir.join("nearest-caption.svg"), "best match in caption space", &meta.nearest_caption, &caption_markers)?;
    plots::heatmap(&dir.join("domains.svg"), &inspection.counts.matrix)?;
    let write_file = |name: &str, contents: &str| -> Result<()> {
        let path = dir.join(name);
        std::fs::write(&path, contents).map_err(|e| InspectError::io(&path, e))
    };
    let mut files = 3;
    write_file("style.css", html::STYLE)?;
    write_file("pairs.csv", &csv::pairs(inspection, &listing))?;
    write_file("clusters.csv", &csv::clusters(inspection, &listing))?;
    write_file("outliers.csv", &csv::outliers(inspection))?;
    files += 4;
    if !inspection.against.is_empty() {
        write_file("against.csv", &csv::against(inspection, &listing))?;
        files += 1;
    }
    // Pages of an earlier report that this one does not write would be stale: remove them.
    let pages = html::pages(inspection, &listing, &meta);
    remove_stale_pages(dir, &pages);
    for (name, contents) in &pages {
        write_file(name, contents)?;
    }
    files += pages.len();
    meta.report_secs = started.elapsed().as_secs_f64();
    let json = json::to_json(inspection, &listing, &meta);
    write_file("report.json", &(serde_json::to_string_pretty(&json).expect("JSON values serialise") + "\n"))?;
    files += 1;
    let thumbnails = made.iter().filter(|&&ok| ok).count();
    Ok(Written { index: dir.join("index.html"), files, thumbnails, missing_thumbnails: made.len() - thumbnails })
}

/// Removes the `.html` files of `dir` that `pages` does not name (the pages of an earlier,
/// larger report), so that the folder never links to stale results.
fn remove_stale_pages(dir: &Path, pages: &[(String, String)]) {
    let keep: BTreeSet<&str> = pages.iter().map(|(name, _)| name.as_str()).collect();
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".html") && !keep.contains(name.as_str()) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}
