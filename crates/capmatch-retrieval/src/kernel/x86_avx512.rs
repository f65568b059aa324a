//! The kernel on AVX-512F: one zmm register per (query, row) accumulator, tiles of up to
//! 4 queries × 6 rows (24 accumulators, so each loaded chunk feeds several FMAs), and a
//! single query against 8 rows at a time (memory-bound: 8 independent FMA chains hide the
//! latency).

use std::arch::x86_64::*;

pub(super) fn dots(queries: &[f32], rows: &[f32], dim: usize, out: &mut [f32]) {
    // SAFETY: the caller (`dots_with`) checked that the CPU has AVX-512F and that the
    // lengths are whole rows of `dim` with `out` of m × n.
    unsafe { dots_avx512(queries, rows, dim, out) }
}

#[target_feature(enable = "avx512f")]
unsafe fn dots_avx512(queries: &[f32], rows: &[f32], dim: usize, out: &mut [f32]) {
    let (m, n) = (queries.len() / dim, rows.len() / dim);
    // Rows in blocks that stay in the L2 cache while every query passes over them.
    let block = (ROW_BLOCK_BYTES / (dim * 4)).max(8);
    let mut r0 = 0;
    while r0 < n {
        let r1 = (r0 + block).min(n);
        let mut q0 = 0;
        while q0 < m {
            match m - q0 {
                1 => tile::<1, 8>(queries, rows, dim, q0, r0..r1, out, n),
                2 => tile::<2, 6>(queries, rows, dim, q0, r0..r1, out, n),
                3 => tile::<3, 6>(queries, rows, dim, q0, r0..r1, out, n),
                _ => tile::<4, 6>(queries, rows, dim, q0, r0..r1, out, n),
            }
            q0 += (m - q0).min(4);
        }
        r0 = r1;
    }
}

/// Bytes of gallery rows scored by every query before moving on.
const ROW_BLOCK_BYTES: usize = 128 * 1024;

/// Queries `q0..q0 + Q` against every row, `R` rows at a time. A last, partial group of rows
/// reuses its last row in the spare slots and stores only the real results.
#[target_feature(enable = "avx512f")]
unsafe fn tile<const Q: usize, const R: usize>(
    queries: &[f32],
    rows: &[f32],
    dim: usize,
    q0: usize,
    row_range: std::ops::Range<usize>,
    out: &mut [f32],
    n: usize,
) {
    let full = dim / 16;
    let tail = dim % 16;
    let tail_mask: __mmask16 = ((1u32 << tail) - 1) as __mmask16;
    let qp = queries.as_ptr();
    let rp = rows.as_ptr();
    let (mut r0, end) = (row_range.start, row_range.end);
    while r0 < end {
        let real = (end - r0).min(R);
        let mut row_ptr = [rp; R];
        for (j, p) in row_ptr.iter_mut().enumerate() {
            *p = rp.add((r0 + j.min(real - 1)) * dim);
        }
        let mut q_ptr = [qp; Q];
        for (i, p) in q_ptr.iter_mut().enumerate() {
            *p = qp.add((q0 + i) * dim);
        }
        let mut acc = [[_mm512_setzero_ps(); R]; Q];
        for c in 0..full {
            let mut qv = [_mm512_setzero_ps(); Q];
            for i in 0..Q {
                qv[i] = _mm512_loadu_ps(q_ptr[i].add(c * 16));
            }
            for j in 0..R {
                let rv = _mm512_loadu_ps(row_ptr[j].add(c * 16));
                for i in 0..Q {
                    acc[i][j] = _mm512_fmadd_ps(qv[i], rv, acc[i][j]);
                }
            }
        }
        if tail > 0 {
            let off = full * 16;
            let mut qv = [_mm512_setzero_ps(); Q];
            for i in 0..Q {
                qv[i] = _mm512_maskz_loadu_ps(tail_mask, q_ptr[i].add(off));
            }
            for j in 0..R {
                let rv = _mm512_maskz_loadu_ps(tail_mask, row_ptr[j].add(off));
                for i in 0..Q {
                    acc[i][j] = _mm512_fmadd_ps(qv[i], rv, acc[i][j]);
                }
            }
        }
        for i in 0..Q {
            let dst = out.as_mut_ptr().add((q0 + i) * n + r0);
            for j in 0..real {
                *dst.add(j) = reduce(acc[i][j]);
            }
        }
        r0 += R;
    }
}

/// The fixed lane-summing tree: `l + l+8`, then `+4`, `+2`, `+1`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn reduce(v: __m512) -> f32 {
    let lo = _mm512_castps512_ps256(v);
    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
    let s8 = _mm256_add_ps(lo, hi);
    let s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    let s1 = _mm_add_ss(s2, _mm_movehdup_ps(s2));
    _mm_cvtss_f32(s1)
}
