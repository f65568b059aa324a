//! Tiers of sameness: which pairs of images are the same file, copies of one another, the
//! same subject in one domain, or the same subject across domains.
//!
//! A pair's scores come from the neighbour graphs (each hit carries both components): its
//! **image** score is the cosine of the two image vectors (symmetric); its **caption**
//! score is the better of its two directions — the image of either against the captions of
//! the other — since the paper's score is asymmetric (a photo's vector against a drawing's
//! caption is not the drawing's vector against the photo's caption). The mode's **match
//! score** is the caption score, the image score, or `W × caption + (1 − W) × image`.
//!
//! Each pair lands in the first tier it qualifies for:
//!
//! | tier | rule | default threshold |
//! | --- | --- | --- |
//! | `identical` | the same content hash (identical bytes) | — |
//! | `near-duplicate` | image score ≥ `near` (re-encoded, resized, lightly cropped copies) | 0.95 |
//! | `cross-domain` | different domains and caption score ≥ `cross` | 0.28 |
//! | `same-subject` | the same domain and match score ≥ `same` | caption 0.28, image 0.85, fused the blend |
//!
//! The defaults are for CLIP ViT-B/32 with BLIP captions, where a caption that describes an
//! image scores about 0.25–0.35 against it and an unrelated one under 0.2, and re-encoded or
//! resized copies of an image keep an image cosine above 0.97. Other models need their own
//! values (`--thresholds near=…,same=…,cross=…`); the report's histograms show where a
//! collection's scores fall.

use std::collections::HashMap;

use capmatch_retrieval::{fuse, ComponentScores};
use capmatch_store::{ImageId, VectorHit};
use serde::Serialize;

use crate::error::{InspectError, Result};
use crate::graph::Graph;
use crate::source::{Image, Source};

/// What "similar" means for the same-subject tier, the clusters and the outliers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "mode", rename_all = "kebab-case")]
pub enum MatchMode {
    /// The caption score (the paper's Caption-Matching).
    Caption,
    /// The image score (CLIP image embeddings alone).
    Image,
    /// `weight × caption + (1 − weight) × image`.
    Fused { weight: f32 },
}

impl MatchMode {
    pub fn score(self, caption: f32, image: f32) -> f32 {
        match self {
            MatchMode::Caption => caption,
            MatchMode::Image => image,
            MatchMode::Fused { weight } => fuse(weight, caption, image),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            MatchMode::Caption => "caption",
            MatchMode::Image => "image",
            MatchMode::Fused { .. } => "fused",
        }
    }
}

/// The thresholds of the tiers (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Thresholds {
    /// Image score from which two different files are near-duplicates.
    pub near_duplicate: f32,
    /// Match score from which two images of one domain show the same subject.
    pub same_subject: f32,
    /// Caption score from which two images of different domains show the same subject.
    pub cross_domain: f32,
}

/// Default near-duplicate threshold (image cosine).
pub const NEAR_DUPLICATE: f32 = 0.95;
/// Default caption-score threshold of a match.
pub const CAPTION_MATCH: f32 = 0.28;
/// Default image-score threshold of a same-subject match in image mode.
pub const IMAGE_MATCH: f32 = 0.85;

impl Thresholds {
    pub fn defaults(mode: MatchMode) -> Self {
        Self {
            near_duplicate: NEAR_DUPLICATE,
            same_subject: mode.score(CAPTION_MATCH, IMAGE_MATCH),
            cross_domain: CAPTION_MATCH,
        }
    }

    /// Applies `near=X,same=Y,cross=Z` (any subset, in any order) to `self`.
    pub fn with_overrides(mut self, spec: &str) -> Result<Self> {
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| InspectError::invalid(format!("threshold {part:?}: expected NAME=VALUE (near, same, cross)")))?;
            let value: f32 = value
                .trim()
                .parse()
                .ok()
                .filter(|v: &f32| v.is_finite() && (-1.0..=1.0).contains(v))
                .ok_or_else(|| InspectError::invalid(format!("threshold {part:?}: the value must be a number in [-1, 1]")))?;
            match key.trim() {
                "near" | "near-duplicate" => self.near_duplicate = value,
                "same" | "same-subject" => self.same_subject = value,
                "cross" | "cross-domain" => self.cross_domain = value,
                other => {
                    return Err(InspectError::invalid(format!(
                        "unknown threshold {other:?} (expected near, same or cross)"
                    )))
                }
            }
        }
        Ok(self)
    }
}

/// The tiers, strongest first (the derived order is that order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tier {
    Identical,
    NearDuplicate,
    CrossDomain,
    SameSubject,
}

impl Tier {
    pub const ALL: [Tier; 4] = [Tier::Identical, Tier::NearDuplicate, Tier::CrossDomain, Tier::SameSubject];

    pub fn name(self) -> &'static str {
        match self {
            Tier::Identical => "identical",
            Tier::NearDuplicate => "near-duplicate",
            Tier::CrossDomain => "cross-domain",
            Tier::SameSubject => "same-subject",
        }
    }

    /// Whether the tier is a copy of the file (identical or near-duplicate).
    pub fn is_copy(self) -> bool {
        matches!(self, Tier::Identical | Tier::NearDuplicate)
    }
}

/// The scores of a pair `(a, b)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PairScores {
    /// Cosine of the two image vectors.
    pub image: f32,
    /// `a`'s image vector against `b`'s best caption.
    pub caption_ab: f32,
    /// `b`'s image vector against `a`'s best caption.
    pub caption_ba: f32,
}

impl PairScores {
    /// The pair's caption score: the better direction.
    pub fn caption(&self) -> f32 {
        if self.caption_ba > self.caption_ab { self.caption_ba } else { self.caption_ab }
    }
}

/// Decides tiers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Judge {
    pub mode: MatchMode,
    pub thresholds: Thresholds,
}

impl Judge {
    pub fn match_score(&self, s: &PairScores) -> f32 {
        self.mode.score(s.caption(), s.image)
    }

    /// The tier of a pair, if any.
    pub fn tier(&self, same_file: bool, same_domain: bool, s: &PairScores) -> Option<Tier> {
        let t = &self.thresholds;
        if same_file {
            Some(Tier::Identical)
        } else if s.image >= t.near_duplicate {
            Some(Tier::NearDuplicate)
        } else if !same_domain && s.caption() >= t.cross_domain {
            Some(Tier::CrossDomain)
        } else if same_domain && self.match_score(s) >= t.same_subject {
            Some(Tier::SameSubject)
        } else {
            None
        }
    }

    /// The tier of the pair of `images[a]` and `images[b]`.
    pub fn tier_of(&self, images: &[Image], a: usize, b: usize, s: &PairScores) -> Option<Tier> {
        self.tier(images[a].hash == images[b].hash, images[a].domain == images[b].domain, s)
    }
}

/// A pair of images in some tier (indices into the inspection's images, `a < b`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Pair {
    pub a: usize,
    pub b: usize,
    pub tier: Tier,
    pub scores: PairScores,
    /// The mode's match score.
    pub score: f32,
    /// Where image space ranks the pair: the better of `b`'s rank among `a`'s image-space
    /// neighbours and `a`'s among `b`'s (1-based); `None` when neither lists the other, i.e.
    /// the pixels alone would not have found the pair.
    pub image_rank: Option<u32>,
}

/// What the graphs say about one pair, before the missing directions are scored.
#[derive(Default)]
struct Seen {
    image: Option<f32>,
    caption_ab: Option<f32>,
    caption_ba: Option<f32>,
    image_rank: Option<u32>,
}

/// Every pair of the graphs (and every pair of identical files) that lands in a tier,
/// strongest tier first, then by match score.
pub fn collect_pairs(source: &dyn Source, images: &[Image], graphs: &[&Graph], image_graph: &Graph, judge: &Judge) -> Result<Vec<Pair>> {
    let index: HashMap<ImageId, usize> = images.iter().enumerate().map(|(i, img)| (img.id, i)).collect();
    let mut seen: HashMap<(usize, usize), Seen> = HashMap::new();
    let mut note = |a: usize, b: usize, hit: &VectorHit| {
        let (lo, hi) = if a < b { (a, b) } else { (b, a) };
        let entry = seen.entry((lo, hi)).or_default();
        entry.image = Some(hit.components.image);
        if a == lo {
            entry.caption_ab = Some(hit.components.caption);
        } else {
            entry.caption_ba = Some(hit.components.caption);
        }
    };
    for graph in graphs {
        for (id, hits) in &graph.rows {
            let Some(&a) = index.get(id) else { continue };
            for hit in hits {
                if let Some(&b) = index.get(&hit.id) {
                    if a != b {
                        note(a, b, hit);
                    }
                }
            }
        }
    }
    for (id, hits) in &image_graph.rows {
        let Some(&a) = index.get(id) else { continue };
        for (rank, hit) in hits.iter().enumerate() {
            let Some(&b) = index.get(&hit.id) else { continue };
            if let Some(entry) = seen.get_mut(&(a.min(b), a.max(b))) {
                let rank = rank as u32 + 1;
                entry.image_rank = Some(entry.image_rank.map_or(rank, |r| r.min(rank)));
            }
        }
    }
    // Identical files: each copy paired with the first file of its content (so a content
    // held by n files gives n − 1 pairs, and every copy is counted).
    let mut first_of: HashMap<&str, usize> = HashMap::new();
    for (i, img) in images.iter().enumerate() {
        match first_of.get(img.hash.as_str()) {
            Some(&first) => {
                seen.entry((first, i)).or_default();
            }
            None => {
                first_of.insert(&img.hash, i);
            }
        }
    }
    // The directions no graph gave, scored exactly.
    let mut missing: Vec<(usize, usize)> = Vec::new();
    for (&(a, b), s) in &seen {
        if s.image.is_none() || s.caption_ab.is_none() {
            missing.push((a, b));
        }
        if s.caption_ba.is_none() {
            missing.push((b, a));
        }
    }
    let ids: Vec<(ImageId, ImageId)> = missing.iter().map(|&(a, b)| (images[a].id, images[b].id)).collect();
    let scored = source.score_pairs(&ids)?;
    for (&(a, b), c) in missing.iter().zip(scored) {
        let Some(c) = c else { continue };
        let entry = seen.get_mut(&(a.min(b), a.max(b))).expect("a pair asked for");
        entry.image.get_or_insert(c.image);
        if a < b {
            entry.caption_ab.get_or_insert(c.caption);
        } else {
            entry.caption_ba.get_or_insert(c.caption);
        }
    }
    let mut pairs: Vec<Pair> = seen
        .into_iter()
        .filter_map(|((a, b), s)| {
            let scores = PairScores { image: s.image?, caption_ab: s.caption_ab?, caption_ba: s.caption_ba? };
            let tier = judge.tier_of(images, a, b, &scores)?;
            Some(Pair { a, b, tier, score: judge.match_score(&scores), scores, image_rank: s.image_rank })
        })
        .collect();
    sort_pairs(&mut pairs);
    Ok(pairs)
}

/// Strongest tier first, then the highest match score, then gallery order.
pub fn sort_pairs(pairs: &mut [Pair]) {
    pairs.sort_by(|x, y| {
        x.tier
            .cmp(&y.tier)
            .then_with(|| capmatch_retrieval::rank_key(x.score, 0).cmp(&capmatch_retrieval::rank_key(y.score, 0)))
            .then_with(|| (x.a, x.b).cmp(&(y.a, y.b)))
    });
}

/// The scores of `(a, b)` from the gallery, both directions.
pub fn score_pair_both_ways(source: &dyn Source, images: &[Image], pairs: &[(usize, usize)]) -> Result<Vec<Option<PairScores>>> {
    let mut ids = Vec::with_capacity(pairs.len() * 2);
    for &(a, b) in pairs {
        ids.push((images[a].id, images[b].id));
        ids.push((images[b].id, images[a].id));
    }
    let scored = source.score_pairs(&ids)?;
    Ok(scored
        .chunks(2)
        .map(|two| match (two[0], two[1]) {
            (Some(ab), Some(ba)) => Some(PairScores { image: ab.image, caption_ab: ab.caption, caption_ba: ba.caption }),
            _ => None,
        })
        .collect())
}

/// A hit's scores as a pair `(query, hit)`, with the reverse caption direction unknown
/// taken as the forward one (for ranking a query's matches as a search would).
pub fn forward_scores(c: &ComponentScores) -> PairScores {
    PairScores { image: c.image, caption_ab: c.caption, caption_ba: c.caption }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(image: f32, ab: f32, ba: f32) -> PairScores {
        PairScores { image, caption_ab: ab, caption_ba: ba }
    }

    #[test]
    fn tiers_are_decided_strongest_first() {
        let judge = Judge { mode: MatchMode::Caption, thresholds: Thresholds::defaults(MatchMode::Caption) };
        // Identical bytes win over everything, even over scores that say otherwise.
        assert_eq!(judge.tier(true, false, &s(0.1, 0.0, 0.0)), Some(Tier::Identical));
        assert_eq!(judge.tier(false, false, &s(0.97, 0.1, 0.1)), Some(Tier::NearDuplicate));
        assert_eq!(judge.tier(false, true, &s(0.97, 0.1, 0.1)), Some(Tier::NearDuplicate));
        // Captions match across domains, in either direction.
        assert_eq!(judge.tier(false, false, &s(0.5, 0.1, 0.3)), Some(Tier::CrossDomain));
        assert_eq!(judge.tier(false, false, &s(0.5, 0.3, 0.1)), Some(Tier::CrossDomain));
        assert_eq!(judge.tier(false, true, &s(0.5, 0.3, 0.1)), Some(Tier::SameSubject));
        assert_eq!(judge.tier(false, true, &s(0.9, 0.2, 0.2)), None, "image mode would call it the same subject, caption mode not");
        let image = Judge { mode: MatchMode::Image, thresholds: Thresholds::defaults(MatchMode::Image) };
        assert_eq!(image.tier(false, true, &s(0.9, 0.2, 0.2)), Some(Tier::SameSubject));
        // The cross-domain tier is the captions' by definition, whatever the mode.
        assert_eq!(image.tier(false, false, &s(0.9, 0.2, 0.2)), None);
        assert_eq!(image.tier(false, false, &s(0.3, 0.29, 0.0)), Some(Tier::CrossDomain));
        let fused = MatchMode::Fused { weight: 0.5 };
        assert_eq!(Thresholds::defaults(fused).same_subject, 0.5 * CAPTION_MATCH + 0.5 * IMAGE_MATCH);
    }

    #[test]
    fn thresholds_parse_and_refuse_nonsense() {
        let t = Thresholds::defaults(MatchMode::Caption).with_overrides("near=0.9, cross=0.2").unwrap();
        assert_eq!((t.near_duplicate, t.same_subject, t.cross_domain), (0.9, CAPTION_MATCH, 0.2));
        for bad in ["near", "near=x", "near=2", "far=0.5", "near=NaN"] {
            assert!(Thresholds::defaults(MatchMode::Caption).with_overrides(bad).is_err(), "{bad}");
        }
    }
}
