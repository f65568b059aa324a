//! The edges both AVX-512 microkernels share: which lanes of a tile's column vectors exist,
//! where its accumulators start, and how they are written back.

use std::arch::x86_64::*;

use crate::ops::tile::TileDst;

/// Lane masks of a tile's NB 16-column vectors when only its first `cols` columns exist.
#[inline(always)]
pub fn column_masks<const NB: usize>(cols: usize) -> [__mmask16; NB] {
    std::array::from_fn(|j| {
        let c = j * 16;
        if c >= cols {
            0
        } else if cols - c >= 16 {
            0xffff
        } else {
            (1u16 << (cols - c)) - 1
        }
    })
}

/// Accumulators of a tile: the bias (plus dst when `accumulate`) on the first pass over k,
/// dst's partial sums on later passes. `bias` starts at the tile's first column.
///
/// # Safety
/// AVX-512F must be available; `bias`, when given, holds the tile's columns.
#[target_feature(enable = "avx512f")]
#[inline]
pub unsafe fn start<const MR: usize, const NB: usize>(
    rows: usize,
    masks: &[__mmask16; NB],
    bias: Option<&[f32]>,
    dst: &mut TileDst,
    first: bool,
    accumulate: bool,
) -> [[__m512; NB]; MR] {
    let mut acc = [[_mm512_setzero_ps(); NB]; MR];
    for (r, accr) in acc.iter_mut().enumerate().take(rows) {
        let out = dst.row(r).as_ptr();
        for j in 0..NB {
            // Masked loads touch only the tile's columns (`row` and `bias` hold them).
            accr[j] = if first {
                let b = match bias {
                    Some(b) => _mm512_maskz_loadu_ps(masks[j], b.as_ptr().wrapping_add(j * 16)),
                    None => _mm512_setzero_ps(),
                };
                if accumulate { _mm512_add_ps(b, _mm512_maskz_loadu_ps(masks[j], out.wrapping_add(j * 16))) } else { b }
            } else {
                _mm512_maskz_loadu_ps(masks[j], out.wrapping_add(j * 16))
            };
        }
    }
    acc
}

/// Writes the first `rows` rows of accumulators back to the tile's columns of dst.
///
/// # Safety
/// AVX-512F must be available.
#[target_feature(enable = "avx512f")]
#[inline]
pub unsafe fn store<const MR: usize, const NB: usize>(acc: &[[__m512; NB]; MR], rows: usize, masks: &[__mmask16; NB], dst: &mut TileDst) {
    for (r, accr) in acc.iter().enumerate().take(rows) {
        let out = dst.row(r).as_mut_ptr();
        for (j, accv) in accr.iter().enumerate() {
            if masks[j] != 0 {
                // The mask keeps the store inside the row's `cols` columns.
                _mm512_mask_storeu_ps(out.wrapping_add(j * 16), masks[j], *accv);
            }
        }
    }
}
