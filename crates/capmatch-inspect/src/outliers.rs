//! Outliers: the images that stand alone, and the images whose caption does not describe
//! them.
//!
//! - **Weakest nearest neighbour**: an image's nearest-neighbour score is its best match
//!   score against any other image (as a search from it sees the pair); the lowest ones are
//!   the images nothing else in the collection resembles.
//! - **Caption disagreement**: an image's own image vector against its own best caption.
//!   A low score is a caption that misses what the picture shows (a bad caption, or an
//!   image dominated by text or by something the captioner cannot name).
//!
//! Each list is the bottom `fraction` of the images (at least one image once there are two),
//! weakest first.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Outlier {
    pub image: usize,
    pub score: f32,
    /// The nearest neighbour, for the first kind.
    pub neighbour: Option<usize>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Outliers {
    pub weakest_neighbour: Vec<Outlier>,
    pub caption_disagreement: Vec<Outlier>,
}

/// How many images the bottom `fraction` of `n` is.
fn bottom(n: usize, fraction: f64) -> usize {
    if n < 2 {
        return 0;
    }
    ((n as f64 * fraction).ceil() as usize).clamp(1, n)
}

/// The bottom `fraction` of `scored` (image, score, neighbour) by score, lowest first; NaN
/// and −∞ (no score) count as lowest.
fn lowest(mut scored: Vec<Outlier>, n: usize, fraction: f64) -> Vec<Outlier> {
    let key = |o: &Outlier| if o.score.is_nan() { f32::NEG_INFINITY } else { o.score };
    scored.sort_by(|x, y| key(x).total_cmp(&key(y)).then(x.image.cmp(&y.image)));
    scored.truncate(bottom(n, fraction));
    scored
}

/// `nearest[i]`: image `i`'s nearest neighbour and its match score, if it has any.
/// `self_scores[i]`: image `i` against its own best caption.
pub fn find(nearest: &[Option<(usize, f32)>], self_scores: &[f32], fraction: f64) -> Outliers {
    let n = nearest.len();
    let weak = nearest
        .iter()
        .enumerate()
        .filter_map(|(image, nn)| nn.map(|(neighbour, score)| Outlier { image, score, neighbour: Some(neighbour) }))
        .collect();
    let disagree = self_scores.iter().enumerate().map(|(image, &score)| Outlier { image, score, neighbour: None }).collect();
    Outliers { weakest_neighbour: lowest(weak, n, fraction), caption_disagreement: lowest(disagree, n, fraction) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bottom_fraction_weakest_first() {
        let nearest: Vec<Option<(usize, f32)>> =
            (0..40).map(|i| Some(((i + 1) % 40, if i == 17 { 0.01 } else if i == 3 { 0.02 } else { 0.5 + i as f32 / 100.0 }))).collect();
        let selfs: Vec<f32> = (0..40).map(|i| if i == 9 { f32::NAN } else { 0.3 }).collect();
        let o = find(&nearest, &selfs, 0.05);
        assert_eq!(o.weakest_neighbour.iter().map(|x| x.image).collect::<Vec<_>>(), [17, 3], "5 % of 40 is 2");
        assert_eq!(o.weakest_neighbour[0].neighbour, Some(18));
        assert_eq!(o.caption_disagreement[0].image, 9, "no score is the weakest");
        assert!(find(&nearest[..1], &selfs[..1], 0.05).weakest_neighbour.is_empty(), "one image is no outlier");
        assert_eq!(find(&nearest[..5], &selfs[..5], 0.05).weakest_neighbour.len(), 1, "at least one");
    }
}
