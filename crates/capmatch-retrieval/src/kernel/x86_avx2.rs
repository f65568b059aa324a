//! The kernel on AVX2 + FMA: the 16 lanes as two ymm registers (low and high half) per
//! accumulator; tiles of 1 query × 4 rows or 2 queries × 2 rows, so that accumulators,
//! query halves and row halves fit the 16 ymm registers without spilling.

use std::arch::x86_64::*;

pub(super) fn dots(queries: &[f32], rows: &[f32], dim: usize, out: &mut [f32]) {
    // SAFETY: the caller (`dots_with`) checked that the CPU has AVX2 and FMA and that the
    // lengths are whole rows of `dim` with `out` of m × n.
    unsafe { dots_avx2(queries, rows, dim, out) }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn dots_avx2(queries: &[f32], rows: &[f32], dim: usize, out: &mut [f32]) {
    let (m, n) = (queries.len() / dim, rows.len() / dim);
    // A partial last chunk is computed from zero-padded copies (as a masked load would give).
    let tail = dim % 16;
    // Rows in blocks that stay in the L2 cache while every query passes over them.
    let block = (ROW_BLOCK_BYTES / (dim * 4)).max(4);
    let mut r0 = 0;
    while r0 < n {
        let r1 = (r0 + block).min(n);
        let mut q0 = 0;
        while q0 < m {
            if m - q0 >= 2 {
                tile::<2, 2>(queries, rows, dim, q0, r0..r1, out, n, tail);
                q0 += 2;
            } else {
                tile::<1, 4>(queries, rows, dim, q0, r0..r1, out, n, tail);
                q0 += 1;
            }
        }
        r0 = r1;
    }
}

/// Bytes of gallery rows scored by every query before moving on.
const ROW_BLOCK_BYTES: usize = 128 * 1024;

#[inline(always)]
unsafe fn padded(src: *const f32, len: usize) -> [f32; 16] {
    let mut buf = [0.0f32; 16];
    std::ptr::copy_nonoverlapping(src, buf.as_mut_ptr(), len);
    buf
}

#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile<const Q: usize, const R: usize>(
    queries: &[f32],
    rows: &[f32],
    dim: usize,
    q0: usize,
    row_range: std::ops::Range<usize>,
    out: &mut [f32],
    n: usize,
    tail: usize,
) {
    let full = dim / 16;
    let qp = queries.as_ptr();
    let rp = rows.as_ptr();
    let mut q_ptr = [qp; Q];
    for (i, p) in q_ptr.iter_mut().enumerate() {
        *p = qp.add((q0 + i) * dim);
    }
    let (mut r0, end) = (row_range.start, row_range.end);
    while r0 < end {
        let real = (end - r0).min(R);
        let mut row_ptr = [rp; R];
        for (j, p) in row_ptr.iter_mut().enumerate() {
            *p = rp.add((r0 + j.min(real - 1)) * dim);
        }
        let mut lo = [[_mm256_setzero_ps(); R]; Q];
        let mut hi = [[_mm256_setzero_ps(); R]; Q];
        for c in 0..full {
            let off = c * 16;
            let mut qlo = [_mm256_setzero_ps(); Q];
            let mut qhi = [_mm256_setzero_ps(); Q];
            for i in 0..Q {
                qlo[i] = _mm256_loadu_ps(q_ptr[i].add(off));
                qhi[i] = _mm256_loadu_ps(q_ptr[i].add(off + 8));
            }
            for j in 0..R {
                let rlo = _mm256_loadu_ps(row_ptr[j].add(off));
                let rhi = _mm256_loadu_ps(row_ptr[j].add(off + 8));
                for i in 0..Q {
                    lo[i][j] = _mm256_fmadd_ps(qlo[i], rlo, lo[i][j]);
                    hi[i][j] = _mm256_fmadd_ps(qhi[i], rhi, hi[i][j]);
                }
            }
        }
        if tail > 0 {
            let off = full * 16;
            for i in 0..Q {
                let qb = padded(q_ptr[i].add(off), tail);
                let (qlo, qhi) = (_mm256_loadu_ps(qb.as_ptr()), _mm256_loadu_ps(qb.as_ptr().add(8)));
                for j in 0..R {
                    let rb = padded(row_ptr[j].add(off), tail);
                    let (rlo, rhi) = (_mm256_loadu_ps(rb.as_ptr()), _mm256_loadu_ps(rb.as_ptr().add(8)));
                    lo[i][j] = _mm256_fmadd_ps(qlo, rlo, lo[i][j]);
                    hi[i][j] = _mm256_fmadd_ps(qhi, rhi, hi[i][j]);
                }
            }
        }
        for i in 0..Q {
            let dst = out.as_mut_ptr().add((q0 + i) * n + r0);
            for j in 0..real {
                *dst.add(j) = reduce(lo[i][j], hi[i][j]);
            }
        }
        r0 += R;
    }
}

/// The same tree as the other kernels: lanes `l` (low half) + `l+8` (high half), then
/// `+4`, `+2`, `+1`.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn reduce(lo: __m256, hi: __m256) -> f32 {
    let s8 = _mm256_add_ps(lo, hi);
    let s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    let s1 = _mm_add_ss(s2, _mm_movehdup_ps(s2));
    _mm_cvtss_f32(s1)
}
