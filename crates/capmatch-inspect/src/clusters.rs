//! Clusters that do not chain.
//!
//! Connected components of a similarity graph chain unrelated images together: a lemon
//! photo matches a lemon-and-grapes photo, which matches a grape drawing, and all three
//! end up in one group. Here a cluster grows around a **medoid**, the unclustered image with
//! the most matches (ties: the higher sum of match scores, then gallery order):
//!
//! 1. the candidates are the unclustered images within two matches of the medoid (so a
//!    cluster stays inside one connected component of the tier);
//! 2. a candidate qualifies if its pair with the medoid is in the clustering tier, judged
//!    on the pair's exact scores (the medoid guard);
//! 3. qualified candidates join best score first, each only if its pair with every member
//!    already in is in the tier too.
//!
//! So every member is above the threshold to the medoid, and any two members are a pair of
//! the tier: a chain A ~ B ~ C whose ends A and C do not match is never one cluster,
//! whichever image is the medoid. An image left out starts or joins a later cluster.
//!
//! A cluster is capped at `max_size` images (the best-scoring candidates are tried first);
//! the caller is told how many clusters hit the cap, a sign that the threshold is too low
//! for the collection.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};

use serde::Serialize;

use crate::error::Result;
use crate::tiers::Tier;

/// A cluster: its medoid and members (indices of images), each member with its tier and
/// score against the medoid, best first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cluster {
    pub medoid: usize,
    pub members: Vec<Member>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Member {
    pub image: usize,
    /// The tier of its pair with the medoid.
    pub tier: Tier,
    /// The score that tier is decided on (the image score of a copy, the caption score
    /// across domains, the match score within one).
    pub score: f32,
}

impl Cluster {
    /// Images in the cluster, the medoid included.
    pub fn size(&self) -> usize {
        self.members.len() + 1
    }

    /// Lowest, median and highest member-to-medoid score.
    pub fn spread(&self) -> (f32, f32, f32) {
        let mut s: Vec<f32> = self.members.iter().map(|m| m.score).collect();
        s.sort_by(f32::total_cmp);
        match s.len() {
            0 => (f32::NAN, f32::NAN, f32::NAN),
            n => (s[0], s[n / 2], s[n - 1]),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Clustering {
    /// Largest first.
    pub clusters: Vec<Cluster>,
    /// Clusters that reached the size cap.
    pub capped: usize,
    /// Images that matched something but ended in no cluster of at least `min_size`.
    pub unclustered: usize,
}

/// An edge of the clustering graph: two images and their match score.
#[derive(Debug, Clone, Copy)]
pub struct Edge {
    pub a: usize,
    pub b: usize,
    pub score: f32,
}

/// Judges pairs of images `(a, b)`: the pair's tier and score if the pair is in the
/// clustering tier, else `None`.
pub type Judge<'a> = dyn FnMut(&[(usize, usize)]) -> Result<Vec<Option<(Tier, f32)>>> + 'a;

/// Clusters of `n` images over `edges` (see the module documentation).
pub fn cluster(n: usize, edges: &[Edge], judge: &mut Judge<'_>, min_size: usize, max_size: usize) -> Result<Clustering> {
    let mut adjacency: Vec<Vec<(usize, f32)>> = vec![Vec::new(); n];
    for e in edges {
        if e.a != e.b {
            adjacency[e.a].push((e.b, e.score));
            adjacency[e.b].push((e.a, e.score));
        }
    }
    for list in &mut adjacency {
        list.sort_by_key(|x| x.0);
        list.dedup_by_key(|x| x.0);
    }
    let mut alive: Vec<bool> = adjacency.iter().map(|l| !l.is_empty()).collect();
    let matched = alive.iter().filter(|&&a| a).count();
    let mut degree: Vec<usize> = adjacency.iter().map(Vec::len).collect();
    let strength = |v: usize, alive: &[bool]| -> f32 { adjacency[v].iter().filter(|(u, _)| alive[*u]).map(|(_, s)| *s).sum() };
    // Max-heap of (degree, strength, earliest index); entries go stale as images are
    // clustered and are checked when popped.
    let key = |v: usize, d: usize, s: f32| (d, OrdF32(s), Reverse(v));
    let mut heap: BinaryHeap<(usize, OrdF32, Reverse<usize>)> =
        (0..n).filter(|&v| alive[v]).map(|v| key(v, degree[v], strength(v, &alive))).collect();
    let mut out = Clustering::default();
    let mut clustered = 0;
    while let Some((d, _, Reverse(medoid))) = heap.pop() {
        if !alive[medoid] || d != degree[medoid] {
            continue;
        }
        if d == 0 {
            alive[medoid] = false;
            continue;
        }
        // Unclustered images within two matches.
        let mut near: Vec<usize> = Vec::new();
        let mut seen: HashSet<usize> = HashSet::from([medoid]);
        for &(u, _) in &adjacency[medoid] {
            if alive[u] && seen.insert(u) {
                near.push(u);
            }
        }
        for i in 0..near.len() {
            for &(w, _) in &adjacency[near[i]] {
                if alive[w] && seen.insert(w) {
                    near.push(w);
                }
            }
        }
        let asked: Vec<(usize, usize)> = near.iter().map(|&c| (medoid, c)).collect();
        let mut qualified: Vec<Member> = near
            .iter()
            .zip(judge(&asked)?)
            .filter_map(|(&image, v)| v.map(|(tier, score)| Member { image, tier, score }))
            .collect();
        qualified.sort_by(|x, y| y.score.total_cmp(&x.score).then(x.image.cmp(&y.image)));
        let truncated = qualified.len() + 1 > max_size;
        qualified.truncate(max_size.saturating_sub(1));
        let members = mutually_matching(&qualified, judge)?;
        if truncated && members.len() + 1 == max_size {
            out.capped += 1;
        }
        let mut taken = vec![medoid];
        taken.extend(members.iter().map(|m| m.image));
        if members.is_empty() {
            // Nothing passes the guard with this medoid (its edges were judged on other
            // scores): it leaves the pool alone.
            taken.truncate(1);
        }
        for &v in &taken {
            alive[v] = false;
        }
        for &v in &taken {
            for &(u, _) in &adjacency[v] {
                if alive[u] {
                    degree[u] -= 1;
                    heap.push(key(u, degree[u], strength(u, &alive)));
                }
            }
        }
        let c = Cluster { medoid, members };
        if c.size() >= min_size.max(2) {
            clustered += c.size();
            out.clusters.push(c);
        }
    }
    out.clusters.sort_by(|x, y| y.size().cmp(&x.size()).then(x.medoid.cmp(&y.medoid)));
    out.unclustered = matched - clustered;
    Ok(out)
}

/// The members, best first, that match the medoid (all of `qualified` do) and every member
/// before them.
fn mutually_matching(qualified: &[Member], judge: &mut Judge<'_>) -> Result<Vec<Member>> {
    let q = qualified.len();
    let asked: Vec<(usize, usize)> =
        (0..q).flat_map(|i| (i + 1..q).map(move |j| (i, j))).map(|(i, j)| (qualified[i].image, qualified[j].image)).collect();
    let verdicts = judge(&asked)?;
    // matches[i][j] for i < j, in the order asked.
    let row_start = |i: usize| i * q - i * (i + 1) / 2;
    let matches = |i: usize, j: usize| verdicts[row_start(i) + (j - i - 1)].is_some();
    let mut taken: Vec<usize> = Vec::new();
    for j in 0..q {
        if taken.iter().all(|&i| matches(i, j)) {
            taken.push(j);
        }
    }
    Ok(taken.into_iter().map(|i| qualified[i]).collect())
}

/// An f32 ordered totally, for the heap.
#[derive(Debug, Clone, Copy, PartialEq)]
struct OrdF32(f32);

impl Eq for OrdF32 {}

impl PartialOrd for OrdF32 {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for OrdF32 {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unit vectors at the given angles (degrees) in a plane: cosines are easy to reason about.
    fn at(degrees: &[f64]) -> Vec<[f64; 2]> {
        degrees.iter().map(|d| [d.to_radians().cos(), d.to_radians().sin()]).collect()
    }

    /// Clusters `points` with every pair of cosine ≥ `threshold` as an edge, judged by the
    /// same rule.
    fn run(points: &[[f64; 2]], threshold: f64, max_size: usize) -> Clustering {
        let cos = |a: usize, b: usize| points[a][0] * points[b][0] + points[a][1] * points[b][1];
        let mut edges = Vec::new();
        for a in 0..points.len() {
            for b in a + 1..points.len() {
                if cos(a, b) >= threshold {
                    edges.push(Edge { a, b, score: cos(a, b) as f32 });
                }
            }
        }
        let mut judge = |pairs: &[(usize, usize)]| -> Result<Vec<Option<(Tier, f32)>>> {
            Ok(pairs.iter().map(|&(a, b)| (cos(a, b) >= threshold).then_some((Tier::NearDuplicate, cos(a, b) as f32))).collect())
        };
        cluster(points.len(), &edges, &mut judge, 2, max_size).unwrap()
    }

    fn sets(c: &Clustering) -> Vec<Vec<usize>> {
        c.clusters
            .iter()
            .map(|c| {
                let mut v: Vec<usize> = std::iter::once(c.medoid).chain(c.members.iter().map(|m| m.image)).collect();
                v.sort();
                v
            })
            .collect()
    }

    #[test]
    fn a_chain_whose_ends_do_not_match_is_not_one_cluster() {
        // A ~ B ~ C at 10° steps with a threshold of cos 15°: A and C (20° apart) do not
        // match. Connected components would give {A, B, C}.
        let c = run(&at(&[0.0, 10.0, 20.0]), 15f64.to_radians().cos(), 100);
        let s = sets(&c);
        assert!(s.iter().all(|set| !(set.contains(&0) && set.contains(&2))), "A and C together: {s:?}");
        assert_eq!(s, [vec![0, 1]], "B, the medoid, keeps its best match; C has no one left");
        assert_eq!(c.clusters[0].medoid, 1);
        assert_eq!(c.unclustered, 1);
    }

    #[test]
    fn a_long_chain_splits_and_a_dense_group_keeps_its_medoid() {
        // Five copies of one image (0°–1°), then a chain walking away 8° a step.
        let points = at(&[0.0, 0.2, 0.4, 0.6, 1.0, 9.0, 17.0, 25.0, 33.0]);
        let threshold = 10f64.to_radians().cos();
        let c = run(&points, threshold, 100);
        let cos = |a: usize, b: usize| points[a][0] * points[b][0] + points[a][1] * points[b][1];
        for set in sets(&c) {
            for (i, &a) in set.iter().enumerate() {
                for &b in &set[i + 1..] {
                    assert!(cos(a, b) >= threshold, "{a} and {b} share a cluster without matching");
                }
            }
        }
        let s = sets(&c);
        assert_eq!(s[0], [0, 1, 2, 3, 4, 5], "the copies and the first link, around the densest image");
        assert_eq!(c.clusters[0].size(), 6);
        assert!(s.contains(&vec![6, 7]) || s.contains(&vec![7, 8]), "{s:?}");
        assert!(c.clusters.windows(2).all(|w| w[0].size() >= w[1].size()), "largest first");
    }

    #[test]
    fn the_size_cap_is_reported() {
        let points = at(&[0.0, 0.1, 0.2, 0.3, 0.4, 0.5]);
        let c = run(&points, 0.99, 4);
        assert_eq!(c.clusters[0].size(), 4);
        assert_eq!(c.capped, 1);
        assert_eq!(sets(&c)[1].len(), 2, "the rest forms its own cluster");
    }
}
