//! capmatch-eval: the cross-domain image retrieval benchmark protocol.
//!
//! For every ordered pair of domains (A, B), A ≠ B, each image of A queries all images of B;
//! a gallery image is relevant when it has the query's class. Figures per pair and mode:
//! P@k as UCDIR defines it, mAP and R@k (see [`metrics`]).
//!
//! The crate works on plain data ([`EvalItem`]: domain, class, embeddings); reading a dataset
//! folder is in [`dataset`], running models and storing embeddings is the caller's business.
//!
//! ```
//! use capmatch_eval::{evaluate, EvalConfig, EvalItem, Mode};
//! let item = |domain: &str, class: &str, v: [f32; 2]| EvalItem {
//!     domain: domain.into(), class: class.into(),
//!     image_embedding: v.to_vec(), caption_embeddings: vec![v.to_vec()],
//! };
//! let items = [item("A", "x", [1.0, 0.0]), item("A", "y", [0.0, 1.0]),
//!              item("B", "x", [0.9, 0.1]), item("B", "y", [0.1, 0.9])];
//! let config = EvalConfig { ks: vec![1], modes: vec![Mode::Image], ..EvalConfig::default() };
//! let report = evaluate(&items, &config, &|_| {}).unwrap();
//! assert_eq!(report.results.len(), 2); // A→B and B→A
//! assert_eq!(report.results[0].metrics.precision, [100.0]);
//! ```

#![forbid(unsafe_code)]

pub mod dataset;
pub mod metrics;
pub mod protocol;
pub mod report;
pub mod scoring;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use metrics::{Accumulator, Metrics, PrecisionAtK};
pub use protocol::{parse_modes, Mode, Protocol, EVAL_MODES};
pub use scoring::{DomainMatrix, ScoreOptions};

/// One image of the benchmark, as the scorer needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalItem {
    pub domain: String,
    pub class: String,
    /// CLIP image embedding (as a query: `caption`, `image`, `fused`; as a gallery item:
    /// `image`, `fused`).
    pub image_embedding: Vec<f32>,
    /// CLIP text embeddings of the image's captions (as a gallery item: `caption`, `fused`,
    /// `caption-text`; as a query: `caption-text`). Several captions: the max score counts.
    /// An image without captions scores −∞ where its captions are needed.
    pub caption_embeddings: Vec<Vec<f32>>,
}

/// What to evaluate.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalConfig {
    /// Protocol name carried into the report.
    pub protocol: String,
    /// Domains in order; empty: every domain of the items, in order of first appearance.
    pub domains: Vec<String>,
    pub modes: Vec<Mode>,
    pub ks: Vec<usize>,
    /// Weight of the caption score in `fused` mode.
    pub weight: f32,
    /// Scale every embedding to unit length first (cosine scores).
    pub normalize: bool,
    /// Queries per scoring block; `None`: chosen from the gallery size.
    pub block_rows: Option<usize>,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            protocol: "custom".into(),
            domains: Vec::new(),
            modes: EVAL_MODES.to_vec(),
            ks: vec![1, 5, 15],
            weight: 0.5,
            normalize: true,
            block_rows: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("no k given")]
    NoK,
    #[error("k must be at least 1")]
    ZeroK,
    #[error("no mode given")]
    NoMode,
    #[error("mode {0} is not a mode of the evaluation (its queries are images)")]
    Mode(Mode),
    #[error("weight {0} is not in [0, 1]")]
    Weight(f32),
    #[error("domain {0:?} has no images")]
    EmptyDomain(String),
    #[error("need at least two domains, got {0:?}")]
    TooFewDomains(Vec<String>),
    #[error("image of domain {domain:?}, class {class:?}: {message}")]
    Embedding { domain: String, class: String, message: String },
    #[error("no embeddings to evaluate")]
    NoItems,
}

/// The figures of one (query domain, gallery domain, mode).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairResult {
    pub query: String,
    pub gallery: String,
    pub mode: Mode,
    pub n_queries: usize,
    pub n_gallery: usize,
    /// Queries whose class occurs in the gallery (the ones mAP and R@k average over).
    pub n_with_relevant: usize,
    pub metrics: Metrics,
}

/// Everything `evaluate` measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub protocol: String,
    pub ks: Vec<usize>,
    pub modes: Vec<Mode>,
    pub weight: f32,
    pub domains: Vec<String>,
    /// Pair by pair (query domain major, in domain order), mode by mode within a pair.
    pub results: Vec<PairResult>,
}

impl EvalReport {
    /// Mean over pairs of each figure for `mode` (NaN pairs skipped); `None` if no pair.
    pub fn mean(&self, mode: Mode) -> Option<Metrics> {
        let rows: Vec<&Metrics> = self.results.iter().filter(|r| r.mode == mode).map(|r| &r.metrics).collect();
        if rows.is_empty() {
            return None;
        }
        let avg = |f: &dyn Fn(&Metrics) -> f64| -> f64 {
            let v: Vec<f64> = rows.iter().map(|m| f(m)).filter(|x| !x.is_nan()).collect();
            if v.is_empty() { f64::NAN } else { v.iter().sum::<f64>() / v.len() as f64 }
        };
        Some(Metrics {
            precision: (0..self.ks.len()).map(|j| avg(&|m: &Metrics| m.precision[j])).collect(),
            map: avg(&|m: &Metrics| m.map),
            recall: (0..self.ks.len()).map(|j| avg(&|m: &Metrics| m.recall[j])).collect(),
        })
    }

    /// The ordered domain pairs in report order.
    pub fn pairs(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for r in &self.results {
            if !out.iter().any(|(q, g)| *q == r.query && *g == r.gallery) {
                out.push((r.query.clone(), r.gallery.clone()));
            }
        }
        out
    }

    pub fn get(&self, query: &str, gallery: &str, mode: Mode) -> Option<&PairResult> {
        self.results.iter().find(|r| r.query == query && r.gallery == gallery && r.mode == mode)
    }
}

/// Number of (query, gallery) scorings `evaluate` will do: Σ over ordered pairs of the query
/// domain's size. `progress` in [`evaluate`] counts up to this.
pub fn total_queries(items: &[EvalItem], domains: &[String]) -> usize {
    let count = |d: &str| items.iter().filter(|i| i.domain == d).count();
    let domains = resolve_domains(items, domains);
    domains.iter().map(|d| count(d) * (domains.len().saturating_sub(1))).sum()
}

fn resolve_domains(items: &[EvalItem], domains: &[String]) -> Vec<String> {
    if !domains.is_empty() {
        return domains.to_vec();
    }
    let mut out: Vec<String> = Vec::new();
    for i in items {
        if !out.contains(&i.domain) {
            out.push(i.domain.clone());
        }
    }
    out
}

/// Runs the protocol over `items`. `progress(n)` is called as blocks of `n` queries finish
/// (from worker threads).
pub fn evaluate(items: &[EvalItem], config: &EvalConfig, progress: &(dyn Fn(usize) + Sync)) -> Result<EvalReport, EvalError> {
    if config.ks.is_empty() {
        return Err(EvalError::NoK);
    }
    if config.ks.contains(&0) {
        return Err(EvalError::ZeroK);
    }
    if config.modes.is_empty() {
        return Err(EvalError::NoMode);
    }
    if let Some(m) = config.modes.iter().find(|m| !EVAL_MODES.contains(m)) {
        return Err(EvalError::Mode(*m));
    }
    if !(0.0..=1.0).contains(&config.weight) {
        return Err(EvalError::Weight(config.weight));
    }
    if items.is_empty() {
        return Err(EvalError::NoItems);
    }
    let domains = resolve_domains(items, &config.domains);
    if domains.len() < 2 {
        return Err(EvalError::TooFewDomains(domains));
    }
    let dim = items[0].image_embedding.len();

    // Class ids shared by all domains.
    let mut class_ids: BTreeMap<&str, u32> = BTreeMap::new();
    for i in items {
        let next = class_ids.len() as u32;
        class_ids.entry(i.class.as_str()).or_insert(next);
    }
    let mut matrices = Vec::with_capacity(domains.len());
    for d in &domains {
        let members: Vec<&EvalItem> = items.iter().filter(|i| &i.domain == d).collect();
        if members.is_empty() {
            return Err(EvalError::EmptyDomain(d.clone()));
        }
        for m in &members {
            let bad = m.image_embedding.len() != dim || m.caption_embeddings.iter().any(|c| c.len() != dim);
            if bad {
                return Err(EvalError::Embedding {
                    domain: m.domain.clone(),
                    class: m.class.clone(),
                    message: format!("embedding dimensions differ from the first item's ({dim})"),
                });
            }
        }
        let matrix = DomainMatrix::new(
            dim,
            members.iter().map(|m| (class_ids[m.class.as_str()], m.image_embedding.as_slice(), m.caption_embeddings.as_slice())),
            config.normalize,
        )
        .map_err(|message| EvalError::Embedding { domain: d.clone(), class: String::new(), message })?;
        matrices.push(matrix);
    }

    let options = ScoreOptions { weight: config.weight, block_rows: config.block_rows };
    let mut results = Vec::new();
    for (qi, qd) in domains.iter().enumerate() {
        for (gi, gd) in domains.iter().enumerate() {
            if qi == gi {
                continue;
            }
            let accs = scoring::score_pair(&matrices[qi], &matrices[gi], &config.modes, &config.ks, &options, progress);
            for (mode, acc) in config.modes.iter().zip(accs) {
                results.push(PairResult {
                    query: qd.clone(),
                    gallery: gd.clone(),
                    mode: *mode,
                    n_queries: acc.n_queries,
                    n_gallery: matrices[gi].len(),
                    n_with_relevant: acc.n_with_relevant,
                    metrics: acc.finish(),
                });
            }
        }
    }
    Ok(EvalReport {
        protocol: config.protocol.clone(),
        ks: config.ks.clone(),
        modes: config.modes.clone(),
        weight: config.weight,
        domains,
        results,
    })
}
