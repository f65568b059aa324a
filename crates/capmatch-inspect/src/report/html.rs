//! The HTML pages: `index.html` (overview, figures, counts, a preview of every gallery) and
//! one paginated page per gallery (`copies.html`, `copies-2.html`, …). Static, with
//! relative links only, no script: the folder opens from disk and serves as is under any
//! path. The markup is well-formed XML (void elements closed, everything escaped), which the
//! tests check with a strict parser.

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::clusters::Cluster;
use crate::outliers::Outlier;
use crate::report::{Listing, ReportMeta};
use crate::tiers::{Pair, PairScores, Tier};
use crate::{Against, Inspection, MatchMode, ReferenceMatch};

/// Items per page of each gallery.
const PAIRS_PER_PAGE: usize = 30;
const CLUSTERS_PER_PAGE: usize = 12;
/// Members of a cluster shown as thumbnails (all of them are in clusters.csv).
pub const CLUSTER_THUMBS: usize = 11;
/// Items previewed on the overview.
const PREVIEW: usize = 3;

/// The pages of the report: (file name, contents).
pub fn pages(inspection: &Inspection, listing: &Listing<'_>, meta: &ReportMeta) -> Vec<(String, String)> {
    let ctx = Ctx { inspection, thumbs: &meta.thumbnails, meta, listing };
    let mut out = Vec::new();
    let galleries = ctx.galleries();
    for g in &galleries {
        let pages = g.items.len().div_ceil(g.per_page).max(1);
        for page in 1..=pages {
            let items = g.items.iter().skip((page - 1) * g.per_page).take(g.per_page);
            let mut body = String::new();
            write!(body, "<h2>{}{}</h2>", esc(&g.title), count_span(g.total, g.unit)).unwrap();
            write!(body, "<p class=\"lead\">{}</p>", g.lead).unwrap();
            if g.items.is_empty() {
                write!(body, "<p class=\"empty\">{}</p>", esc(g.empty)).unwrap();
            }
            body.push_str(&pager(&g.file, page, pages));
            write!(body, "<div class=\"{}\">", g.class).unwrap();
            for item in items {
                body.push_str(item);
            }
            body.push_str("</div>");
            body.push_str(&pager(&g.file, page, pages));
            if g.items.len() < g.total {
                write!(
                    body,
                    "<p class=\"note\">The {} strongest of {} are listed (<code>--max-pairs</code>); the counts cover all of them.</p>",
                    g.items.len(),
                    g.total
                )
                .unwrap();
            }
            out.push((page_file(&g.file, page), ctx.document(&g.title, &g.file, &body)));
        }
    }
    out.push(("index.html".into(), ctx.document("Overview", "index", &ctx.overview(&galleries))));
    out
}

/// `name.html`, `name-2.html`, …
fn page_file(base: &str, page: usize) -> String {
    if page == 1 {
        format!("{base}.html")
    } else {
        format!("{base}-{page}.html")
    }
}

/// Escapes text for an element or an attribute.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Control characters are not allowed in XML (a file name may hold them).
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

fn fmt_score(x: f32) -> String {
    if x.is_finite() {
        format!("{x:.3}")
    } else {
        "–".into()
    }
}

fn count_span(n: usize, unit: &str) -> String {
    format!(" <span class=\"count\">{} {unit}</span>", group(n))
}

/// 12345 → "12 345" (thin space), for reading large counts.
fn group(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push('\u{202F}');
        }
        out.push(c);
    }
    out
}

fn percent(part: usize, whole: usize) -> String {
    if whole == 0 {
        "–".into()
    } else {
        format!("{:.1}%", 100.0 * part as f64 / whole as f64)
    }
}

fn pager(base: &str, page: usize, pages: usize) -> String {
    if pages <= 1 {
        return String::new();
    }
    let mut s = String::from("<nav class=\"pager\">");
    if page > 1 {
        write!(s, "<a href=\"{}\">← previous</a>", page_file(base, page - 1)).unwrap();
    }
    for p in 1..=pages {
        if p == page {
            write!(s, "<span class=\"here\">{p}</span>").unwrap();
        } else if p == 1 || p == pages || p.abs_diff(page) <= 2 {
            write!(s, "<a href=\"{}\">{p}</a>", page_file(base, p)).unwrap();
        } else if p.abs_diff(page) == 3 {
            s.push_str("<span class=\"gap\">…</span>");
        }
    }
    if page < pages {
        write!(s, "<a href=\"{}\">next →</a>", page_file(base, page + 1)).unwrap();
    }
    s.push_str("</nav>");
    s
}

/// One gallery: its page, its items as HTML, and what the overview says of it.
struct Gallery {
    file: String,
    nav: String,
    title: String,
    lead: String,
    empty: &'static str,
    class: &'static str,
    per_page: usize,
    total: usize,
    /// What `total` counts ("pairs", "clusters", …).
    unit: &'static str,
    items: Vec<String>,
}

struct Ctx<'a> {
    inspection: &'a Inspection,
    thumbs: &'a HashMap<usize, Option<String>>,
    meta: &'a ReportMeta,
    listing: &'a Listing<'a>,
}

impl Ctx<'_> {
    fn mode_text(&self) -> String {
        match self.inspection.options.mode {
            MatchMode::Caption => "caption (an image against the other's captions)".into(),
            MatchMode::Image => "image (image vectors alone)".into(),
            MatchMode::Fused { weight } => format!("fused ({weight} × caption + {} × image)", 1.0 - weight),
        }
    }

    fn document(&self, title: &str, active: &str, body: &str) -> String {
        let i = self.inspection;
        let mut nav = String::new();
        let mut links = vec![("index".to_string(), "Overview".to_string())];
        links.extend(self.galleries_nav());
        for (file, label) in links {
            let class = if file == active { " class=\"on\"" } else { "" };
            write!(nav, "<a href=\"{file}.html\"{class}>{}</a>", esc(&label)).unwrap();
        }
        format!(
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\" /><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\" />\
             <title>{title} · capmatch inspect</title><link rel=\"stylesheet\" href=\"style.css\" /></head><body>\
             <header class=\"top\"><div class=\"wrap\"><h1>capmatch inspect</h1>\
             <p class=\"sub\">{db} · {n} images in {d} domains · match score: {mode} · k = {k}</p><nav class=\"tabs\">{nav}</nav></div></header>\
             <main>{body}</main><footer><div class=\"wrap\">Made by capmatch {version} · \
             <a href=\"report.json\">report.json</a> · <a href=\"pairs.csv\">pairs.csv</a> · <a href=\"clusters.csv\">clusters.csv</a> · \
             <a href=\"outliers.csv\">outliers.csv</a>{against_csv}</div></footer></body></html>\n",
            title = esc(title),
            db = esc(&self.meta.db),
            n = group(i.images.len()),
            d = i.counts.matrix.domains.len(),
            mode = esc(&self.mode_text()),
            k = i.options.k,
            version = env!("CARGO_PKG_VERSION"),
            against_csv = if i.against.is_empty() { "" } else { " · <a href=\"against.csv\">against.csv</a>" },
        )
    }

    fn galleries_nav(&self) -> Vec<(String, String)> {
        let mut v = vec![
            ("copies".to_string(), "Copies".to_string()),
            ("cross-domain".into(), "Cross-domain".into()),
            ("same-subject".into(), "Same subject".into()),
            ("clusters".into(), "Clusters".into()),
        ];
        for (n, a) in self.inspection.against.iter().enumerate() {
            v.push((format!("against-{}", n + 1), format!("Against {}", a.domain)));
        }
        v.push(("outliers".into(), "Outliers".into()));
        v
    }

    fn thumb(&self, i: usize, extra: &str) -> String {
        let img = &self.inspection.images[i];
        let name = img.path.rsplit(['/', '\\']).next().unwrap_or(&img.path);
        let caption = img.captions.first().map(String::as_str).unwrap_or("");
        let picture = match self.thumbs.get(&i) {
            Some(Some(src)) => format!("<img src=\"{}\" loading=\"lazy\" alt=\"{}\" />", esc(src), esc(caption)),
            _ => "<div class=\"noimg\">no preview</div>".into(),
        };
        format!(
            "<figure class=\"thumb\">{picture}{extra}<figcaption><span class=\"dom\">{}</span> <span class=\"name\" title=\"{}\">{}</span>\
             <span class=\"cap\" title=\"{}\">{}</span></figcaption></figure>",
            esc(&img.domain),
            esc(&img.path),
            esc(name),
            esc(&img.captions.join(" / ")),
            esc(caption)
        )
    }

    fn meter(label: &str, value: f32, title: &str) -> String {
        let width = if value.is_finite() { (value.clamp(0.0, 1.0) * 100.0).round() } else { 0.0 };
        format!(
            "<div class=\"meter\" title=\"{}\"><span class=\"ml\">{label}</span><span class=\"bar\"><i style=\"width:{width}%\"></i></span><b>{}</b></div>",
            esc(title),
            fmt_score(value)
        )
    }

    fn scores(s: &PairScores) -> String {
        format!(
            "{}{}",
            Self::meter("image", s.image, "cosine of the two image vectors"),
            Self::meter(
                "caption",
                s.caption(),
                &format!("better of: left image vs right caption {}, right image vs left caption {}", fmt_score(s.caption_ab), fmt_score(s.caption_ba))
            )
        )
    }

    fn tier_badge(t: Tier) -> String {
        format!("<span class=\"tier t-{0}\">{0}</span>", t.name())
    }

    fn pair_card(&self, p: &Pair) -> String {
        let k = self.inspection.options.k;
        let why = match (p.tier, p.image_rank) {
            (Tier::Identical, _) => "the same bytes".to_string(),
            (_, Some(r)) => format!("image space ranks it #{r}"),
            (_, None) => format!("<b>found by the captions</b>: not in the image-space top {k}"),
        };
        format!(
            "<article class=\"pair\"><div class=\"duo\">{}{}</div><div class=\"info\">{} <span class=\"why\">{why}</span>{}</div></article>",
            self.thumb(p.a, ""),
            self.thumb(p.b, ""),
            Self::tier_badge(p.tier),
            Self::scores(&p.scores)
        )
    }

    fn match_card(&self, m: &ReferenceMatch) -> String {
        let tier = m.tier.map(Self::tier_badge).unwrap_or_else(|| "<span class=\"tier t-none\">below the thresholds</span>".into());
        format!(
            "<article class=\"pair\"><div class=\"duo\">{}<span class=\"arrow\">→</span>{}</div><div class=\"info\">{tier} \
             <span class=\"why\">match #{} of this image</span>{}</div></article>",
            self.thumb(m.image, ""),
            self.thumb(m.reference, ""),
            m.rank,
            Self::scores(&m.scores)
        )
    }

    fn cluster_card(&self, n: usize, c: &Cluster) -> String {
        let (min, median, max) = c.spread();
        let mut s = format!(
            "<article class=\"cluster\"><header><b>Cluster {n}</b> <span class=\"size\">{} images</span> \
             <span class=\"spread\">scores to the medoid from {} to {}, median {}</span></header><div class=\"members\">",
            c.size(),
            fmt_score(min),
            fmt_score(max),
            fmt_score(median)
        );
        s.push_str(&self.thumb(c.medoid, "<span class=\"ribbon\">medoid</span>"));
        for m in c.members.iter().take(CLUSTER_THUMBS) {
            let what = match m.tier {
                Tier::Identical | Tier::NearDuplicate => "image score",
                Tier::CrossDomain => "caption score",
                Tier::SameSubject => "match score",
            };
            let chip = format!("<span class=\"chip t-{0}\" title=\"{0}: {what} with the medoid\">{1}</span>", m.tier.name(), fmt_score(m.score));
            s.push_str(&self.thumb(m.image, &chip));
        }
        s.push_str("</div>");
        if c.members.len() > CLUSTER_THUMBS {
            write!(s, "<p class=\"more\">and {} more (clusters.csv lists every member)</p>", c.members.len() - CLUSTER_THUMBS).unwrap();
        }
        s.push_str("</article>");
        s
    }

    fn outlier_card(&self, o: &Outlier, what: &str) -> String {
        let neighbour = match o.neighbour {
            Some(j) => format!("<div class=\"nn\"><span class=\"ml\">its nearest</span>{}</div>", self.thumb(j, "")),
            None => String::new(),
        };
        format!(
            "<article class=\"pair outlier\"><div class=\"duo\">{}{neighbour}</div><div class=\"info\">{}</div></article>",
            self.thumb(o.image, ""),
            Self::meter(what, o.score, what)
        )
    }

    fn galleries(&self) -> Vec<Gallery> {
        let i = self.inspection;
        let t = &i.options.thresholds;
        let total = |tiers: &[Tier]| i.pairs.iter().filter(|p| tiers.contains(&p.tier)).count();
        let cards = |tiers: &[Tier]| -> Vec<String> {
            self.listing.pairs.iter().filter(|p| tiers.contains(&p.tier)).map(|p| self.pair_card(p)).collect()
        };
        let mut v = vec![
            Gallery {
                file: "copies".into(),
                nav: "Copies".into(),
                title: "Identical files and near-duplicates".into(),
                lead: format!(
                    "Files with the same bytes, and images whose image vectors are at least {} alike (re-encoded, resized, lightly \
                     cropped copies). Identical files first, then by score.",
                    fmt_score(t.near_duplicate)
                ),
                empty: "No copies: every image is unique.",
                class: "grid",
                per_page: PAIRS_PER_PAGE,
                total: total(&[Tier::Identical, Tier::NearDuplicate]),
                unit: "pairs",
                items: cards(&[Tier::Identical, Tier::NearDuplicate]),
            },
            Gallery {
                file: "cross-domain".into(),
                nav: "Cross-domain".into(),
                title: "Cross-domain matches".into(),
                lead: format!(
                    "Images of different domains whose captions match (caption score ≥ {}): the same subject in another style. \
                     Each pair shows both scores; a pair that the image space does not rank among an image's {} nearest was found \
                     by the captions alone.",
                    fmt_score(t.cross_domain),
                    i.options.k
                ),
                empty: "No cross-domain match above the threshold.",
                class: "grid",
                per_page: PAIRS_PER_PAGE,
                total: total(&[Tier::CrossDomain]),
                unit: "pairs",
                items: cards(&[Tier::CrossDomain]),
            },
            Gallery {
                file: "same-subject".into(),
                nav: "Same subject".into(),
                title: "Same subject, same domain".into(),
                lead: format!(
                    "Images of one domain whose match score is at least {} but that are not copies of each other.",
                    fmt_score(t.same_subject)
                ),
                empty: "No same-subject pair above the threshold.",
                class: "grid",
                per_page: PAIRS_PER_PAGE,
                total: total(&[Tier::SameSubject]),
                unit: "pairs",
                items: cards(&[Tier::SameSubject]),
            },
            Gallery {
                file: "clusters".into(),
                nav: "Clusters".into(),
                title: "Clusters".into(),
                lead: format!(
                    "Largest first. A cluster is the image with the most matches (its medoid) and the images whose pair with the medoid \
                     is in a tier ({}): every member is above the threshold to the medoid, so clusters never chain. At most {} images \
                     each{}.",
                    match i.options.cluster_on {
                        crate::ClusterOn::Copies => "copies only",
                        crate::ClusterOn::Similar => "any tier",
                    },
                    i.options.max_cluster,
                    if i.clustering.capped > 0 {
                        format!("; <b>{} reached that cap</b>: the threshold may be too low for this collection", i.clustering.capped)
                    } else {
                        String::new()
                    }
                ),
                empty: "No cluster.",
                class: "stack",
                per_page: CLUSTERS_PER_PAGE,
                total: i.clustering.clusters.len(),
                unit: "clusters",
                items: self.listing.clusters.iter().enumerate().map(|(n, c)| self.cluster_card(n + 1, c)).collect(),
            },
        ];
        for (n, (a, listed)) in i.against.iter().zip(&self.listing.against).enumerate() {
            v.push(self.against_gallery(n + 1, a, listed));
        }
        let o = &i.outliers;
        // Two lists on one page, each under its own heading (a heading spans the grid).
        let mut items = Vec::new();
        for (list, heading, what) in [
            (&o.weakest_neighbour, "Weakest nearest neighbour", "nearest"),
            (&o.caption_disagreement, "Own caption disagrees with the image", "own caption"),
        ] {
            if !list.is_empty() {
                items.push(format!("<h3 class=\"sub\">{heading} <span class=\"count\">{} images</span></h3>", group(list.len())));
                items.extend(list.iter().map(|x| self.outlier_card(x, what)));
            }
        }
        v.push(Gallery {
            file: "outliers".into(),
            nav: "Outliers".into(),
            title: "Outliers".into(),
            lead: format!(
                "First the images whose nearest neighbour is weakest (the {:.0}% that nothing else resembles), then the images whose \
                 own caption matches them worst (a bad caption, or an image the captioner cannot describe).",
                i.options.outlier_fraction * 100.0
            ),
            empty: "Too few images for outliers.",
            class: "grid",
            per_page: PAIRS_PER_PAGE * 4,
            // An image in both lists counts once.
            total: i.counts.all.outliers,
            unit: "images",
            items,
        });
        v
    }

    fn against_gallery(&self, n: usize, a: &Against, listed: &[ReferenceMatch]) -> Gallery {
        Gallery {
            file: format!("against-{n}"),
            nav: format!("Against {}", a.domain),
            title: format!("The collection against {}", a.domain),
            lead: format!(
                "Each of the {} images outside <b>{}</b> matched against its {} reference images; the strongest matches first. {} \
                 images ({}) have a match in a tier.",
                group(a.collection),
                esc(&a.domain),
                group(a.references),
                group(a.images_with_match),
                percent(a.images_with_match, a.collection)
            ),
            empty: "No match.",
            class: "grid",
            per_page: PAIRS_PER_PAGE,
            total: a.matches.len(),
            unit: "matches",
            items: listed.iter().map(|m| self.match_card(m)).collect(),
        }
    }

    fn overview(&self, galleries: &[Gallery]) -> String {
        let i = self.inspection;
        let c = &i.counts.all;
        let n = c.images;
        let card = |value: usize, label: &str, sub: String| {
            format!("<div class=\"card\"><div class=\"l\">{label}</div><div class=\"n\">{}</div><div class=\"p\">{sub}</div></div>", group(value))
        };
        let mut s = String::from("<section class=\"cards\">");
        s.push_str(&card(n, "images", format!("{} domains", i.counts.matrix.domains.len())));
        s.push_str(&card(c.any_copy, "have a copy", format!("{} of the images", percent(c.any_copy, n))));
        s.push_str(&card(c.cross_domain, "match across domains", format!("{} of the images", percent(c.cross_domain, n))));
        s.push_str(&card(c.same_subject, "same subject in domain", format!("{} of the images", percent(c.same_subject, n))));
        s.push_str(&card(
            c.in_cluster,
            "in a cluster",
            format!("{} clusters", group(i.clustering.clusters.len())),
        ));
        s.push_str(&card(c.outliers, "outliers", format!("{} of the images", percent(c.outliers, n))));
        s.push_str("</section>");
        s.push_str(
            "<p class=\"lead counted\">Every figure counts images, not pairs: an image with ten copies counts once.</p>\
             <section class=\"figs\">\
             <figure><img src=\"nearest-image.svg\" alt=\"histogram of nearest-neighbour image scores\" /><figcaption>Each image's best \
             match in image space. Copies sit at the right end.</figcaption></figure>\
             <figure><img src=\"nearest-caption.svg\" alt=\"histogram of nearest-neighbour caption scores\" /><figcaption>Each image's \
             best match in caption space (its image against the others' captions).</figcaption></figure></section>\
             <section class=\"split\"><figure class=\"heat\"><img src=\"domains.svg\" alt=\"domain by domain match rates\" /><figcaption>Share \
             of each domain's images with a match (any tier) in each domain.</figcaption></figure><div>",
        );
        s.push_str("<h2 class=\"first\">By domain</h2><table><thead><tr><th>domain</th><th>images</th><th>with a copy</th><th>same subject</th>\
                    <th>cross-domain</th><th>any match</th><th>in a cluster</th><th>outliers</th></tr></thead><tbody>");
        let row = |name: &str, c: &crate::counts::ImageCounts, class: &str| {
            let cell = |x: usize| format!("<td>{} <small>{}</small></td>", group(x), percent(x, c.images));
            format!(
                "<tr{class}><td>{}</td><td>{}</td>{}{}{}{}{}{}</tr>",
                esc(name),
                group(c.images),
                cell(c.any_copy),
                cell(c.same_subject),
                cell(c.cross_domain),
                cell(c.any_match),
                cell(c.in_cluster),
                cell(c.outliers)
            )
        };
        for (d, counts) in &i.counts.by_domain {
            s.push_str(&row(d, counts, ""));
        }
        s.push_str(&row("all", c, " class=\"total\""));
        s.push_str("</tbody></table>");
        let t = &i.options.thresholds;
        write!(
            s,
            "<p class=\"lead small\">Thresholds: near-duplicate image score ≥ {}, same subject match score ≥ {}, cross-domain caption \
             score ≥ {}. Graphs: {}.</p>",
            fmt_score(t.near_duplicate),
            fmt_score(t.same_subject),
            fmt_score(t.cross_domain),
            esc(&self.work_text())
        )
        .unwrap();
        s.push_str("</div></section>");
        for g in galleries {
            write!(s, "<h2><a href=\"{}.html\">{}</a>{}</h2>", g.file, esc(&g.title), count_span(g.total, g.unit)).unwrap();
            if g.items.is_empty() {
                write!(s, "<p class=\"empty\">{}</p>", esc(g.empty)).unwrap();
                continue;
            }
            let preview = if g.class == "stack" { 1 } else { PREVIEW };
            write!(s, "<div class=\"{}\">", g.class).unwrap();
            for item in g.items.iter().take(preview) {
                s.push_str(item);
            }
            s.push_str("</div>");
            write!(s, "<p class=\"all\"><a href=\"{}.html\">See all {} →</a></p>", g.file, esc(&g.nav)).unwrap();
        }
        s
    }

    fn work_text(&self) -> String {
        let parts: Vec<String> = self
            .inspection
            .graphs
            .iter()
            .map(|(spec, w)| {
                let space = match spec.space {
                    crate::Space::Image => "image",
                    crate::Space::Caption => "caption",
                };
                let among = spec.among.as_deref().map(|d| format!(" against {d}")).unwrap_or_default();
                format!("{space}{among}: {} rows computed, {} updated, {} reused", w.computed, w.updated, w.reused)
            })
            .collect();
        format!("{} in {:.1} s", parts.join("; "), self.inspection.timings.graphs_secs)
    }
}

/// The report's stylesheet.
pub const STYLE: &str = r#":root { --accent: #2563eb; --ink: #1e293b; --muted: #64748b; --line: #e2e8f0; --bg: #f1f5f9; --card: #ffffff; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: var(--ink); background: var(--bg); }
a { color: var(--accent); }
.wrap, main { max-width: 1360px; margin: 0 auto; padding-left: 28px; padding-right: 28px; }
header.top { background: #0f172a; color: #e2e8f0; padding-top: 18px; }
header.top h1 { margin: 0; font-size: 21px; font-weight: 700; letter-spacing: -0.01em; }
header.top .sub { color: #94a3b8; margin: 4px 0 12px; font-size: 13px; overflow-wrap: anywhere; }
nav.tabs { display: flex; gap: 2px; flex-wrap: wrap; }
nav.tabs a { color: #cbd5e1; text-decoration: none; padding: 8px 13px; border-radius: 8px 8px 0 0; font-size: 13px; }
nav.tabs a:hover { background: #1e293b; }
nav.tabs a.on { background: var(--bg); color: var(--ink); font-weight: 600; }
main { padding-top: 22px; padding-bottom: 40px; }
footer { color: var(--muted); font-size: 12px; padding: 16px 0 28px; border-top: 1px solid var(--line); }
h2 { font-size: 18px; margin: 30px 0 4px; }
h2 a { color: var(--ink); text-decoration: none; }
h2 .count { color: var(--muted); font-weight: 500; margin-left: 4px; }
p.lead { color: var(--muted); margin: 0 0 12px; max-width: 980px; }
p.lead.small { font-size: 12px; margin-top: 10px; }
p.empty, p.note, p.more { color: var(--muted); font-style: italic; }
p.all { margin: 8px 0 0; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(200px, 1fr)); gap: 12px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 12px; padding: 12px 16px; }
.card .l { color: var(--muted); font-size: 11px; text-transform: uppercase; letter-spacing: 0.05em; font-weight: 600; }
.card .n { font-size: 28px; font-weight: 700; line-height: 1.2; font-variant-numeric: tabular-nums; }
.card .p { color: var(--muted); font-size: 12px; }
.counted { margin-top: 8px; font-size: 12px; }
.figs { display: grid; grid-template-columns: 1fr 1fr; gap: 12px; margin-top: 6px; }
.figs figure { margin: 0; background: var(--card); border: 1px solid var(--line); border-radius: 12px; padding: 10px; }
.figs img, .heat img { max-width: 100%; height: auto; display: block; }
.figs figcaption, .heat figcaption { color: var(--muted); font-size: 12px; margin-top: 4px; }
.split { display: grid; grid-template-columns: minmax(0, auto) 1fr; gap: 24px; margin-top: 12px; align-items: start; }
.heat { margin: 0; background: var(--card); border: 1px solid var(--line); border-radius: 12px; padding: 10px; max-width: 520px; }
h2.first { margin-top: 4px; }
table { border-collapse: separate; border-spacing: 0; background: var(--card); border: 1px solid var(--line); border-radius: 12px; overflow: hidden; font-variant-numeric: tabular-nums; }
th, td { padding: 7px 14px; text-align: right; border-bottom: 1px solid var(--line); }
th { background: #f8fafc; font-size: 12px; color: var(--muted); font-weight: 600; }
th:first-child, td:first-child { text-align: left; font-weight: 600; }
td small { color: var(--muted); margin-left: 2px; }
tr.total td { background: #f8fafc; font-weight: 700; border-bottom: 0; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(360px, 1fr)); gap: 12px; }
.stack { display: flex; flex-direction: column; gap: 12px; }
.pair, .cluster { background: var(--card); border: 1px solid var(--line); border-radius: 12px; padding: 10px; }
.pair { display: flex; flex-direction: column; gap: 8px; }
.duo { display: flex; gap: 10px; align-items: flex-start; }
.arrow { align-self: center; color: var(--muted); font-size: 20px; }
.thumb { margin: 0; width: 160px; position: relative; }
.thumb img, .noimg { width: 160px; height: 160px; object-fit: contain; background: #e9eef5; border-radius: 8px; display: block; }
.noimg { display: flex; align-items: center; justify-content: center; color: var(--muted); font-size: 12px; }
figcaption { font-size: 12px; margin-top: 4px; line-height: 1.35; }
.dom { display: inline-block; background: #e0e7ff; color: #3730a3; border-radius: 999px; padding: 0 7px; font-size: 11px; font-weight: 600; }
.name { color: var(--muted); overflow-wrap: anywhere; }
.cap { display: -webkit-box; -webkit-line-clamp: 2; -webkit-box-orient: vertical; overflow: hidden; font-style: italic; }
.info { display: flex; flex-wrap: wrap; gap: 6px 14px; align-items: center; border-top: 1px solid var(--line); padding-top: 8px; }
.why { color: var(--muted); font-size: 12px; }
.why b { color: #166534; }
.tier { border-radius: 6px; padding: 1px 8px; font-size: 12px; font-weight: 600; }
.t-identical { background: #fee2e2; color: #991b1b; }
.t-near-duplicate { background: #ffedd5; color: #9a3412; }
.t-cross-domain { background: #dcfce7; color: #166534; }
.t-same-subject { background: #dbeafe; color: #1e40af; }
.t-none { background: #f1f5f9; color: var(--muted); }
.meter { display: flex; align-items: center; gap: 6px; font-size: 12px; font-variant-numeric: tabular-nums; }
.meter .ml, .nn .ml { color: var(--muted); }
.meter .bar { width: 70px; height: 6px; background: #e2e8f0; border-radius: 3px; overflow: hidden; }
.meter .bar i { display: block; height: 100%; background: var(--accent); }
.cluster header { margin-bottom: 8px; display: flex; gap: 12px; align-items: baseline; flex-wrap: wrap; }
.cluster .size { background: #e0e7ff; color: #3730a3; border-radius: 999px; padding: 0 9px; font-size: 12px; font-weight: 600; }
.cluster .spread { color: var(--muted); font-size: 12px; }
.members { display: flex; flex-wrap: wrap; gap: 10px; }
.ribbon { position: absolute; top: 6px; left: 6px; background: var(--accent); color: #fff; font-size: 11px; font-weight: 600; padding: 1px 7px; border-radius: 999px; }
.chip { position: absolute; top: 6px; right: 6px; font-size: 11px; font-weight: 600; padding: 1px 6px; border-radius: 6px; font-variant-numeric: tabular-nums; }
.duo > .thumb { flex: 1 1 0; min-width: 0; width: auto; }
.duo > .thumb img, .duo > .thumb .noimg { width: 100%; height: 190px; }
h3.sub { grid-column: 1 / -1; font-size: 15px; margin: 10px 0 0; }
h3.sub .count { color: var(--muted); font-weight: 500; margin-left: 4px; }
.nn .thumb { width: 110px; }
.nn .thumb img, .nn .noimg { width: 110px; height: 110px; }
.nn .ml { font-size: 11px; display: block; margin-bottom: 2px; }
nav.pager { display: flex; gap: 4px; margin: 12px 0; flex-wrap: wrap; }
nav.pager a, nav.pager span { padding: 3px 10px; border-radius: 6px; border: 1px solid var(--line); background: var(--card); text-decoration: none; font-size: 13px; }
nav.pager .here { background: var(--accent); color: #fff; border-color: var(--accent); }
nav.pager .gap { border: 0; background: none; }
@media (max-width: 900px) { .figs, .split { grid-template-columns: 1fr; } }
"#;
