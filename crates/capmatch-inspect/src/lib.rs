//! capmatch-inspect: the similarity structure of a collection, as a report a person reads.
//!
//! The paper's stated use of Caption-Matching is to inspect collections of generated images:
//! which ones repeat one another, which ones reproduce a reference image in another style,
//! which ones stand alone. [`inspect`] answers that for a gallery, on the engine:
//!
//! 1. [`graph`]: every image's nearest neighbours in image space and in caption space,
//!    computed by the vector index (blockwise on the exact index) and kept beside the
//!    catalog, so that a re-run computes only what changed.
//! 2. [`tiers`]: each neighbouring pair in a tier of sameness (identical file,
//!    near-duplicate, cross-domain match, same subject), with both of its scores.
//! 3. [`clusters`]: stars around medoids, which do not chain.
//! 4. [`outliers`]: the weakest nearest neighbours and the captions that disagree with their
//!    image.
//! 5. [`counts`]: everything counted by image, per domain, and a domain × domain matrix.
//! 6. `--against`: each image's best matches in a reference domain.
//!
//! [`report::write`] turns the [`Inspection`] into a static folder (`index.html`,
//! `report.json`, CSV files, thumbnails).

#![forbid(unsafe_code)]

pub mod cache;
pub mod clusters;
pub mod counts;
pub mod error;
pub mod graph;
pub mod outliers;
pub mod report;
pub mod source;
pub mod tiers;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use capmatch_engine::GraphProgress;
use capmatch_store::VectorHit;
use serde::Serialize;

pub use error::{InspectError, Result};
pub use graph::{GraphSpec, GraphWork, Space};
pub use source::{Image, Source};
pub use tiers::{Judge, MatchMode, Pair, PairScores, Thresholds, Tier};

use clusters::{Clustering, Edge};
use counts::Counts;
use graph::Graph;
use outliers::Outliers;

/// Which pairs clusters are built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClusterOn {
    /// Identical files and near-duplicates: groups of copies.
    Copies,
    /// Every tier: groups of the same subject.
    Similar,
}

/// What to inspect and how.
#[derive(Debug, Clone, Serialize)]
pub struct InspectOptions {
    /// Neighbours per image in each graph.
    pub k: usize,
    pub mode: MatchMode,
    pub thresholds: Thresholds,
    /// Reference domains to match the rest of the collection against.
    pub against: Vec<String>,
    pub cluster_on: ClusterOn,
    /// Smallest cluster reported.
    pub min_cluster: usize,
    /// Largest cluster (a cluster reaching it is reported with a warning).
    pub max_cluster: usize,
    /// Fraction of the images in each outlier list.
    pub outlier_fraction: f64,
    /// Where the neighbour graphs are kept between runs (`None`: computed every time).
    #[serde(skip)]
    pub cache_dir: Option<PathBuf>,
}

impl InspectOptions {
    pub fn new(mode: MatchMode) -> Self {
        Self {
            k: 10,
            mode,
            thresholds: Thresholds::defaults(mode),
            against: Vec::new(),
            cluster_on: ClusterOn::Similar,
            min_cluster: 2,
            max_cluster: 500,
            outlier_fraction: 0.05,
            cache_dir: None,
        }
    }

    fn judge(&self) -> Judge {
        Judge { mode: self.mode, thresholds: self.thresholds }
    }

    fn validate(&self) -> Result<()> {
        if self.k == 0 || self.k > 1000 {
            return Err(InspectError::invalid(format!("k must be between 1 and 1000, not {}", self.k)));
        }
        if let MatchMode::Fused { weight } = self.mode {
            if !(0.0..=1.0).contains(&weight) {
                return Err(InspectError::invalid(format!("the fused weight must be between 0 and 1, not {weight}")));
            }
        }
        if self.max_cluster < 2 || self.min_cluster > self.max_cluster {
            return Err(InspectError::invalid(format!(
                "cluster sizes: the minimum ({}) must not exceed the maximum ({}), which must be at least 2",
                self.min_cluster, self.max_cluster
            )));
        }
        if !(0.0..=1.0).contains(&self.outlier_fraction) {
            return Err(InspectError::invalid(format!("the outlier fraction must be between 0 and 1, not {}", self.outlier_fraction)));
        }
        Ok(())
    }
}

/// What an inspection tells its caller as it goes.
pub trait Observer: GraphProgress {
    /// A new step begins (a graph, the analysis, writing the report).
    fn stage(&self, what: &str);
}

/// An [`Observer`] that ignores everything.
pub struct Quiet;

impl GraphProgress for Quiet {
    fn progressed(&self, _done: usize, _total: usize) {}
}

impl Observer for Quiet {
    fn stage(&self, _what: &str) {}
}

/// One image of the collection matched against a reference image.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReferenceMatch {
    /// The collection image (an index into the images).
    pub image: usize,
    /// The reference image.
    pub reference: usize,
    /// 1-based, among `image`'s matches in the reference domain.
    pub rank: u32,
    pub scores: PairScores,
    pub score: f32,
    pub tier: Option<Tier>,
}

/// The collection against one reference domain.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Against {
    pub domain: String,
    /// Images outside the domain (the collection) and in it (the references).
    pub collection: usize,
    pub references: usize,
    /// Collection images with a match in a tier.
    pub images_with_match: usize,
    /// Every collection image's `k` best matches, strongest first overall.
    pub matches: Vec<ReferenceMatch>,
}

/// Seconds spent per step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Timings {
    pub images_secs: f64,
    pub graphs_secs: f64,
    pub analysis_secs: f64,
}

/// Everything the report shows.
#[derive(Debug, Clone)]
pub struct Inspection {
    pub options: InspectOptions,
    pub images: Vec<Image>,
    /// Every pair in a tier, strongest tier first, then by match score.
    pub pairs: Vec<Pair>,
    pub clustering: Clustering,
    pub outliers: Outliers,
    pub counts: Counts,
    /// Each image's best image score against another image (−∞ without neighbours).
    pub nearest_image: Vec<f32>,
    /// Each image's best caption score against another image's captions.
    pub nearest_caption: Vec<f32>,
    pub against: Vec<Against>,
    /// The graphs and how much of each this run computed.
    pub graphs: Vec<(GraphSpec, GraphWork)>,
    pub generation: u64,
    pub timings: Timings,
}

/// Inspects the gallery of `source`. See the crate documentation.
pub fn inspect(source: &dyn Source, options: &InspectOptions, observer: &dyn Observer) -> Result<Inspection> {
    options.validate()?;
    let started = Instant::now();
    observer.stage("reading the catalog");
    let images = source.images()?;
    let generation = source.generation()?;
    for domain in &options.against {
        if !images.iter().any(|i| &i.domain == domain) {
            let known: Vec<&str> = {
                let mut d: Vec<&str> = images.iter().map(|i| i.domain.as_str()).collect();
                d.sort();
                d.dedup();
                d
            };
            return Err(InspectError::invalid(format!(
                "--against {domain}: no image of that domain in the gallery (its domains: {})",
                known.join(", ")
            )));
        }
    }
    let mut timings = Timings { images_secs: started.elapsed().as_secs_f64(), ..Default::default() };

    let graphs_started = Instant::now();
    let mut works = Vec::new();
    let mut build = |space: Space, among: Option<String>| -> Result<Graph> {
        let spec = GraphSpec { space, k: options.k, among };
        let what = match (&spec.among, space) {
            (None, Space::Image) => "neighbours in image space".to_string(),
            (None, Space::Caption) => "neighbours in caption space".to_string(),
            (Some(d), Space::Image) => format!("matches in {d}, image space"),
            (Some(d), Space::Caption) => format!("matches in {d}, caption space"),
        };
        observer.stage(&what);
        let (graph, work) = graph::build(source, &images, &spec, options.cache_dir.as_deref(), observer)?;
        works.push((spec, work));
        Ok(graph)
    };
    let image_graph = build(Space::Image, None)?;
    let caption_graph = build(Space::Caption, None)?;
    let mut against_graphs = Vec::new();
    for domain in &options.against {
        against_graphs.push((domain.clone(), build(Space::Image, Some(domain.clone()))?, build(Space::Caption, Some(domain.clone()))?));
    }
    timings.graphs_secs = graphs_started.elapsed().as_secs_f64();

    let analysis_started = Instant::now();
    observer.stage("tiers, clusters, outliers");
    let judge = options.judge();
    let pairs = tiers::collect_pairs(source, &images, &[&image_graph, &caption_graph], &image_graph, &judge)?;
    let clustering = cluster(source, &images, &pairs, options, &judge)?;
    if clustering.capped > 0 {
        tracing::warn!(
            "{} cluster(s) reached the size cap of {} images: the threshold may be too low for this collection",
            clustering.capped,
            options.max_cluster
        );
    }
    let index: HashMap<_, _> = images.iter().enumerate().map(|(i, img)| (img.id, i)).collect();
    let best = |graph: &Graph, score: &dyn Fn(&VectorHit) -> f32| -> Vec<Option<(usize, f32)>> {
        images
            .iter()
            .map(|img| {
                graph
                    .row(img.id)
                    .iter()
                    .filter_map(|h| index.get(&h.id).map(|&j| (j, score(h))))
                    .max_by(|x, y| x.1.total_cmp(&y.1).then(y.0.cmp(&x.0)))
            })
            .collect()
    };
    let nearest_image: Vec<f32> =
        best(&image_graph, &|h| h.components.image).iter().map(|b| b.map_or(f32::NEG_INFINITY, |x| x.1)).collect();
    let nearest_caption: Vec<f32> =
        best(&caption_graph, &|h| h.components.caption).iter().map(|b| b.map_or(f32::NEG_INFINITY, |x| x.1)).collect();
    let nearest_match: Vec<Option<(usize, f32)>> = {
        let mode = options.mode;
        let by_image = best(&image_graph, &|h| mode.score(h.components.caption, h.components.image));
        let by_caption = best(&caption_graph, &|h| mode.score(h.components.caption, h.components.image));
        by_image
            .into_iter()
            .zip(by_caption)
            .map(|(x, y)| match (x, y) {
                (Some(x), Some(y)) => Some(if y.1 > x.1 { y } else { x }),
                (x, y) => x.or(y),
            })
            .collect()
    };
    let self_pairs: Vec<_> = images.iter().map(|i| (i.id, i.id)).collect();
    let self_scores: Vec<f32> =
        source.score_pairs(&self_pairs)?.into_iter().map(|c| c.map_or(f32::NAN, |c| c.caption)).collect();
    let outliers = outliers::find(&nearest_match, &self_scores, options.outlier_fraction);
    let counts = counts::count(&images, &pairs, &clustering, &outliers);
    let mut against = Vec::new();
    for (domain, image_graph, caption_graph) in &against_graphs {
        against.push(match_against(source, &images, domain, &[image_graph, caption_graph], &judge, options.k)?);
    }
    timings.analysis_secs = analysis_started.elapsed().as_secs_f64();
    Ok(Inspection {
        options: options.clone(),
        images,
        pairs,
        clustering,
        outliers,
        counts,
        nearest_image,
        nearest_caption,
        against,
        graphs: works,
        generation,
        timings,
    })
}

/// The clusters over the pairs of the clustering tier, each member checked against its
/// medoid and the other members with the pairs' exact scores.
fn cluster(source: &dyn Source, images: &[Image], pairs: &[Pair], options: &InspectOptions, judge: &Judge) -> Result<Clustering> {
    let admits = |tier: Tier| match options.cluster_on {
        ClusterOn::Copies => tier.is_copy(),
        ClusterOn::Similar => true,
    };
    // Each pair is scored on what decided its tier: the pixels for a copy, the captions
    // across domains, the mode's match score within one.
    let member_score = |tier: Tier, s: &PairScores| match tier {
        Tier::Identical | Tier::NearDuplicate => s.image,
        Tier::CrossDomain => s.caption(),
        Tier::SameSubject => judge.match_score(s),
    };
    let edges: Vec<Edge> =
        pairs.iter().filter(|p| admits(p.tier)).map(|p| Edge { a: p.a, b: p.b, score: member_score(p.tier, &p.scores) }).collect();
    let mut judge_pairs = |asked: &[(usize, usize)]| -> Result<Vec<Option<(Tier, f32)>>> {
        let scored = tiers::score_pair_both_ways(source, images, asked)?;
        Ok(asked
            .iter()
            .zip(scored)
            .map(|(&(a, b), s)| {
                let s = s?;
                let tier = judge.tier_of(images, a, b, &s).filter(|t| admits(*t))?;
                Some((tier, member_score(tier, &s)))
            })
            .collect())
    };
    clusters::cluster(images.len(), &edges, &mut judge_pairs, options.min_cluster, options.max_cluster)
}

/// Each collection image's best matches in the reference `domain`.
fn match_against(source: &dyn Source, images: &[Image], domain: &str, graphs: &[&Graph], judge: &Judge, k: usize) -> Result<Against> {
    let index: HashMap<_, _> = images.iter().enumerate().map(|(i, img)| (img.id, i)).collect();
    let mut found: Vec<(usize, usize)> = Vec::new();
    let mut per_query: HashMap<usize, Vec<usize>> = HashMap::new();
    for graph in graphs {
        for (id, hits) in &graph.rows {
            let Some(&q) = index.get(id) else { continue };
            for h in hits {
                if let Some(&r) = index.get(&h.id) {
                    let list = per_query.entry(q).or_default();
                    if !list.contains(&r) {
                        list.push(r);
                        found.push((q, r));
                    }
                }
            }
        }
    }
    let scored = tiers::score_pair_both_ways(source, images, &found)?;
    let mut by_query: HashMap<usize, Vec<ReferenceMatch>> = HashMap::new();
    for (&(image, reference), s) in found.iter().zip(scored) {
        let Some(scores) = s else { continue };
        by_query.entry(image).or_default().push(ReferenceMatch {
            image,
            reference,
            rank: 0,
            score: judge.match_score(&scores),
            tier: judge.tier_of(images, image, reference, &scores),
            scores,
        });
    }
    let mut matches = Vec::new();
    let mut images_with_match = 0;
    for (_, mut list) in by_query {
        list.sort_by(|x, y| capmatch_retrieval::rank_key(x.score, 0).cmp(&capmatch_retrieval::rank_key(y.score, 0)).then(x.reference.cmp(&y.reference)));
        list.truncate(k);
        for (r, m) in list.iter_mut().enumerate() {
            m.rank = r as u32 + 1;
        }
        images_with_match += list.iter().any(|m| m.tier.is_some()) as usize;
        matches.extend(list);
    }
    matches.sort_by(|x, y| {
        capmatch_retrieval::rank_key(x.score, 0).cmp(&capmatch_retrieval::rank_key(y.score, 0)).then((x.image, x.reference).cmp(&(y.image, y.reference)))
    });
    Ok(Against {
        domain: domain.to_string(),
        collection: images.iter().filter(|i| i.domain != domain).count(),
        references: images.iter().filter(|i| i.domain == domain).count(),
        images_with_match,
        matches,
    })
}
