//! Counts by image, never by pair: how many images have a copy, a match, a cluster; per
//! domain and in all; the distribution of nearest-neighbour scores; and the domain × domain
//! matrix of match rates.
//!
//! A collection with one image copied ten times has 45 near-duplicate *pairs* but 10
//! images with a near-duplicate; the second is what a person asks. Every figure here counts
//! an image once, however many pairs it is in.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::clusters::Clustering;
use crate::outliers::Outliers;
use crate::source::Image;
use crate::tiers::{Pair, Tier};

/// Images with at least one pair in each tier, and more, for one domain or all.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ImageCounts {
    pub images: usize,
    /// With an identical file.
    pub identical: usize,
    /// With a near-duplicate (a copy that is not byte-identical).
    pub near_duplicate: usize,
    /// With an identical file or a near-duplicate.
    pub any_copy: usize,
    /// With a same-subject match in its own domain.
    pub same_subject: usize,
    /// With a match in another domain.
    pub cross_domain: usize,
    /// With a pair in any tier.
    pub any_match: usize,
    /// In a reported cluster.
    pub in_cluster: usize,
    /// In either outlier list.
    pub outliers: usize,
}

/// A histogram over equal-width bins.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Histogram {
    /// Lower edge of the first bin.
    pub start: f32,
    pub bin_width: f32,
    pub counts: Vec<usize>,
    /// Images without a value (no neighbour).
    pub missing: usize,
}

impl Histogram {
    /// `bins` bins spanning the finite values (a unit-width range around a single value).
    pub fn of(values: &[f32], bins: usize) -> Self {
        let finite: Vec<f32> = values.iter().copied().filter(|v| v.is_finite()).collect();
        let missing = values.len() - finite.len();
        let (lo, hi) = finite.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        if finite.is_empty() {
            return Self { start: 0.0, bin_width: 1.0 / bins as f32, counts: vec![0; bins], missing };
        }
        // Round the range out to hundredths so that the axis reads well.
        let start = (lo * 100.0).floor() / 100.0;
        let end = ((hi * 100.0).ceil() / 100.0).max(start + 0.01);
        let bin_width = (end - start) / bins as f32;
        let mut counts = vec![0; bins];
        for v in finite {
            let b = (((v - start) / bin_width) as usize).min(bins - 1);
            counts[b] += 1;
        }
        Self { start, bin_width, counts, missing }
    }

    pub fn end(&self) -> f32 {
        self.start + self.bin_width * self.counts.len() as f32
    }
}

/// Rows: the domain of an image; columns: a domain it has a match in.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DomainMatrix {
    pub domains: Vec<String>,
    /// `images_with_match[i][j]`: images of domain `i` with a pair (any tier) whose other
    /// image is of domain `j`.
    pub images_with_match: Vec<Vec<usize>>,
    /// The same as a fraction of the images of domain `i`.
    pub rate: Vec<Vec<f64>>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Counts {
    pub all: ImageCounts,
    pub by_domain: BTreeMap<String, ImageCounts>,
    pub matrix: DomainMatrix,
}

/// Which tiers each image has a pair in, and the domains of its partners.
struct PerImage {
    tiers: [bool; 4],
    partner_domains: Vec<usize>,
}

pub fn count(images: &[Image], pairs: &[Pair], clustering: &Clustering, outliers: &Outliers) -> Counts {
    let mut domains: Vec<String> = images.iter().map(|i| i.domain.clone()).collect();
    domains.sort();
    domains.dedup();
    let domain_of: Vec<usize> = images.iter().map(|i| domains.binary_search(&i.domain).expect("listed")).collect();
    let mut per: Vec<PerImage> = images.iter().map(|_| PerImage { tiers: [false; 4], partner_domains: Vec::new() }).collect();
    for p in pairs {
        let t = Tier::ALL.iter().position(|t| *t == p.tier).expect("a tier");
        for (me, other) in [(p.a, p.b), (p.b, p.a)] {
            per[me].tiers[t] = true;
            let d = domain_of[other];
            if !per[me].partner_domains.contains(&d) {
                per[me].partner_domains.push(d);
            }
        }
    }
    let mut in_cluster = vec![false; images.len()];
    for c in &clustering.clusters {
        in_cluster[c.medoid] = true;
        for m in &c.members {
            in_cluster[m.image] = true;
        }
    }
    let mut is_outlier = vec![false; images.len()];
    for o in outliers.weakest_neighbour.iter().chain(&outliers.caption_disagreement) {
        is_outlier[o.image] = true;
    }
    let mut all = ImageCounts::default();
    let mut by_domain: BTreeMap<String, ImageCounts> = domains.iter().map(|d| (d.clone(), ImageCounts::default())).collect();
    let nd = domains.len();
    let mut with_match = vec![vec![0usize; nd]; nd];
    for (i, p) in per.iter().enumerate() {
        let [identical, near, cross, same] = p.tiers;
        let c = by_domain.get_mut(&images[i].domain).expect("listed");
        for counts in [&mut all, c] {
            counts.images += 1;
            counts.identical += identical as usize;
            counts.near_duplicate += near as usize;
            counts.any_copy += (identical || near) as usize;
            counts.same_subject += same as usize;
            counts.cross_domain += cross as usize;
            counts.any_match += p.tiers.contains(&true) as usize;
            counts.in_cluster += in_cluster[i] as usize;
            counts.outliers += is_outlier[i] as usize;
        }
        for &d in &p.partner_domains {
            with_match[domain_of[i]][d] += 1;
        }
    }
    let rate = with_match
        .iter()
        .zip(&domains)
        .map(|(row, d)| {
            let n = by_domain[d].images.max(1) as f64;
            row.iter().map(|&c| c as f64 / n).collect()
        })
        .collect();
    Counts { all, by_domain, matrix: DomainMatrix { domains, images_with_match: with_match, rate } }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clusters::{Cluster, Member};
    use crate::tiers::PairScores;
    use capmatch_store::ImageId;

    fn image(i: u64, domain: &str) -> Image {
        Image { id: ImageId(i), path: format!("/{domain}/{i}.png"), domain: domain.into(), hash: format!("h{i}"), captions: vec![] }
    }

    fn pair(a: usize, b: usize, tier: Tier) -> Pair {
        Pair { a, b, tier, scores: PairScores { image: 0.0, caption_ab: 0.0, caption_ba: 0.0 }, score: 0.0, image_rank: None }
    }

    #[test]
    fn images_are_counted_once_however_many_pairs_they_are_in() {
        // Ten copies of one photo (45 pairs), a drawing matching one of them, one loner.
        let mut images: Vec<Image> = (0..10).map(|i| image(i, "photo")).collect();
        images.push(image(10, "drawing"));
        images.push(image(11, "photo"));
        let mut pairs = Vec::new();
        for a in 0..10 {
            for b in a + 1..10 {
                pairs.push(pair(a, b, if b == a + 1 { Tier::Identical } else { Tier::NearDuplicate }));
            }
        }
        pairs.push(pair(3, 10, Tier::CrossDomain));
        let clustering = Clustering {
            clusters: vec![Cluster {
                medoid: 0,
                members: (1..10).map(|image| Member { image, tier: Tier::NearDuplicate, score: 0.99 }).collect(),
            }],
            ..Default::default()
        };
        let c = count(&images, &pairs, &clustering, &Outliers::default());
        assert_eq!(pairs.len(), 46);
        assert_eq!(c.all.images, 12);
        assert_eq!(c.all.any_copy, 10, "ten images have a copy, not 45");
        assert_eq!(c.all.identical, 10);
        assert_eq!(c.all.cross_domain, 2, "the photo and the drawing");
        assert_eq!(c.all.any_match, 11);
        assert_eq!(c.all.in_cluster, 10);
        let photo = &c.by_domain["photo"];
        assert_eq!((photo.images, photo.any_copy, photo.cross_domain), (11, 10, 1));
        let d = |name: &str| c.matrix.domains.iter().position(|x| x == name).unwrap();
        assert_eq!(c.matrix.images_with_match[d("photo")][d("photo")], 10);
        assert_eq!(c.matrix.images_with_match[d("photo")][d("drawing")], 1);
        assert_eq!(c.matrix.rate[d("drawing")][d("photo")], 1.0);
        assert!((c.matrix.rate[d("photo")][d("drawing")] - 1.0 / 11.0).abs() < 1e-12);
    }

    #[test]
    fn histograms_span_the_values() {
        let h = Histogram::of(&[0.2, 0.25, 0.9, f32::NEG_INFINITY, 0.9], 7);
        assert_eq!((h.start, h.missing, h.counts.iter().sum::<usize>()), (0.2, 1, 4));
        assert_eq!(h.counts[6], 2, "the top value lands in the last bin");
        assert!((h.end() - 0.9).abs() < 1e-6);
    }
}
