//! The kernel on AVX2 + FMA: the 16 lanes as two ymm registers per accumulator, tiles of
//! 2 queries × 3 rows (12 accumulator registers of 16).

use std::arch::x86_64::*;

pub(super) fn dots(queries: &[f32], rows: &[f32], dim: usize, out: &mut [f32]) {
    // SAFETY: the caller (`dots_with`) checked that the CPU has AVX2 and FMA and that the
    // lengths are whole rows of `dim` with `out` of m × n.
    unsafe { dots_avx2(queries, rows, dim, out) }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn dots_avx2(queries: &[f32], rows: &[f32], dim: usize, out: &mut [f32]) {
    let (m, n) = (queries.len() / dim, rows.len() / dim);
    let mut q0 = 0;
    while q0 < m {
        match m - q0 {
            1 => tile::<1, 4>(queries, rows, dim, q0, out, n),
            _ => tile::<2, 3>(queries, rows, dim, q0, out, n),
        }
        q0 += (m - q0).min(2);
    }
}

/// Loads 8 floats at `p + off`, zero past `len`.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn load8(p: *const f32, off: usize, len: usize) -> __m256 {
    if off + 8 <= len {
        _mm256_loadu_ps(p.add(off))
    } else {
        let mut buf = [0.0f32; 8];
        for (l, b) in buf.iter_mut().enumerate() {
            if off + l < len {
                *b = *p.add(off + l);
            }
        }
        _mm256_loadu_ps(buf.as_ptr())
    }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn tile<const Q: usize, const R: usize>(queries: &[f32], rows: &[f32], dim: usize, q0: usize, out: &mut [f32], n: usize) {
    let chunks = dim.div_ceil(16);
    let qp = queries.as_ptr();
    let rp = rows.as_ptr();
    let mut r0 = 0;
    while r0 < n {
        let real = (n - r0).min(R);
        let mut row_ptr = [rp; R];
        for (j, p) in row_ptr.iter_mut().enumerate() {
            *p = rp.add((r0 + j.min(real - 1)) * dim);
        }
        let mut q_ptr = [qp; Q];
        for (i, p) in q_ptr.iter_mut().enumerate() {
            *p = qp.add((q0 + i) * dim);
        }
        // acc[i][j][0] holds lanes 0..8, acc[i][j][1] lanes 8..16.
        let mut acc = [[[_mm256_setzero_ps(); 2]; R]; Q];
        for c in 0..chunks {
            for h in 0..2 {
                let off = c * 16 + h * 8;
                let mut qv = [_mm256_setzero_ps(); Q];
                for i in 0..Q {
                    qv[i] = load8(q_ptr[i], off, dim);
                }
                for j in 0..R {
                    let rv = load8(row_ptr[j], off, dim);
                    for i in 0..Q {
                        acc[i][j][h] = _mm256_fmadd_ps(qv[i], rv, acc[i][j][h]);
                    }
                }
            }
        }
        for i in 0..Q {
            let dst = out.as_mut_ptr().add((q0 + i) * n + r0);
            for j in 0..real {
                *dst.add(j) = reduce(acc[i][j][0], acc[i][j][1]);
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
