//! capmatch-retrieval: what "retrieval" means in capmatch, defined once.
//!
//! Every front end (search, eval, the server, the inspection report) and every storage
//! backend ranks with this crate, so that the same gallery gives the same ranking whichever
//! path computed it:
//!
//! - [`Mode`]: how a query is compared with the gallery (`caption`, `image`, `fused`, `text`,
//!   `caption-text`), and the [`Target`] of the gallery it scores against.
//! - [`normalize`]: the one L2 normalisation.
//! - [`fuse`]: the fused formula, `W × caption + (1 − W) × image`, where a component with
//!   weight 0 does not take part (so an image without captions still ranks by its image at
//!   `W = 0`).
//! - [`rank`]: the order of results — score descending, NaN last, equal scores in gallery
//!   order — and top-k selection under that order.
//! - [`kernel`]: the dot-product kernel. Its arithmetic for one (query, gallery vector) pair
//!   does not depend on how many queries or rows are scored together, so a single search and
//!   a batched evaluation give bit-identical scores.
//! - [`gallery`]: scoring queries against a gallery's image and caption matrices (an image
//!   scores by its best caption), one query at a time or blockwise.

#![deny(unsafe_code)] // only the SIMD files of `kernel` opt out, each call with its SAFETY note

pub mod gallery;
pub mod kernel;
pub mod mode;
pub mod rank;

pub use gallery::{components, score_chunk, top_k as top_k_images, ComponentScores, GalleryVectors, QueryVectors, ScoreBlock};
pub use kernel::{dot, dots};
pub use mode::{fuse, Mode, Target, UnknownMode};
pub use rank::{rank_key, same_rank_score, top_k, top_k_of, top_k_with_ties, Ranked, TopK};

/// Why a vector cannot be used for cosine retrieval.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum VectorError {
    #[error("vector of dimension {found} where {expected} was expected")]
    Dimension { expected: usize, found: usize },
    #[error("vector is zero or not finite")]
    Degenerate,
}

/// Scales `v` to unit L2 norm in place, so that dot products are cosines.
///
/// The norm is accumulated in f64 and each element divided in f64, so the result does not
/// depend on the order of the elements' summation and re-normalising an already normalised
/// vector changes it by at most one ulp per element. A zero or non-finite vector is refused:
/// it has no direction.
pub fn normalize(v: &mut [f32]) -> Result<(), VectorError> {
    let norm = v.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>().sqrt();
    if !norm.is_finite() || norm == 0.0 {
        return Err(VectorError::Degenerate);
    }
    for x in v.iter_mut() {
        *x = (*x as f64 / norm) as f32;
    }
    Ok(())
}

/// [`normalize`] of a copy, after checking the dimension.
pub fn normalized(v: &[f32], dim: usize) -> Result<Vec<f32>, VectorError> {
    if v.len() != dim || dim == 0 {
        return Err(VectorError::Dimension { expected: dim, found: v.len() });
    }
    let mut out = v.to_vec();
    normalize(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_makes_unit_vectors_and_refuses_degenerate_ones() {
        let mut v = vec![3.0, 4.0];
        normalize(&mut v).unwrap();
        assert_eq!(v, [0.6, 0.8]);
        assert_eq!(normalize(&mut [0.0, 0.0]), Err(VectorError::Degenerate));
        assert_eq!(normalize(&mut [f32::NAN, 1.0]), Err(VectorError::Degenerate));
        assert_eq!(normalize(&mut [f32::INFINITY, 1.0]), Err(VectorError::Degenerate));
        assert_eq!(normalized(&[1.0], 2), Err(VectorError::Dimension { expected: 2, found: 1 }));
    }

    #[test]
    fn normalize_is_idempotent_up_to_an_ulp() {
        let mut v: Vec<f32> = (0..512).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
        normalize(&mut v).unwrap();
        let mut again = v.clone();
        normalize(&mut again).unwrap();
        for (a, b) in v.iter().zip(&again) {
            assert!((a.to_bits() as i64 - b.to_bits() as i64).abs() <= 1, "{a} {b}");
        }
    }
}
