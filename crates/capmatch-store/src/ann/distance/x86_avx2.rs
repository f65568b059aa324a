//! The kernel on AVX2 + FMA. A bf16 is the upper half of an f32, so interleaving 16-bit
//! zeros below the loaded values (`unpacklo/hi_epi16(0, x)`) turns 16 bf16 values into two
//! registers of 8 f32s in one instruction each. The interleave permutes the elements inside
//! each 128-bit lane, but it permutes both vectors alike, so the products pair up correctly.

use std::arch::x86_64::*;

use super::bf16_to_f32;

pub(super) fn ip_distance(a: &[u16], b: &[u16]) -> f32 {
    assert_eq!(a.len(), b.len());
    // SAFETY: `bf16_ip_distance` hands this kernel out only on a CPU with AVX2 and FMA, and
    // the two slices have the same length (checked above).
    unsafe { ip_distance_avx2(a, b) }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn ip_distance_avx2(a: &[u16], b: &[u16]) -> f32 {
    let len = a.len();
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let zero = _mm256_setzero_si256();
    // Four accumulators: an FMA's latency is four times its issue interval.
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= len {
        for half in 0..2 {
            let x = _mm256_loadu_si256(pa.add(i + 16 * half).cast());
            let y = _mm256_loadu_si256(pb.add(i + 16 * half).cast());
            let (x_lo, x_hi) = (_mm256_unpacklo_epi16(zero, x), _mm256_unpackhi_epi16(zero, x));
            let (y_lo, y_hi) = (_mm256_unpacklo_epi16(zero, y), _mm256_unpackhi_epi16(zero, y));
            acc[2 * half] = _mm256_fmadd_ps(_mm256_castsi256_ps(x_lo), _mm256_castsi256_ps(y_lo), acc[2 * half]);
            acc[2 * half + 1] = _mm256_fmadd_ps(_mm256_castsi256_ps(x_hi), _mm256_castsi256_ps(y_hi), acc[2 * half + 1]);
        }
        i += 32;
    }
    while i + 16 <= len {
        let x = _mm256_loadu_si256(pa.add(i).cast());
        let y = _mm256_loadu_si256(pb.add(i).cast());
        let (x_lo, x_hi) = (_mm256_unpacklo_epi16(zero, x), _mm256_unpackhi_epi16(zero, x));
        let (y_lo, y_hi) = (_mm256_unpacklo_epi16(zero, y), _mm256_unpackhi_epi16(zero, y));
        acc[0] = _mm256_fmadd_ps(_mm256_castsi256_ps(x_lo), _mm256_castsi256_ps(y_lo), acc[0]);
        acc[1] = _mm256_fmadd_ps(_mm256_castsi256_ps(x_hi), _mm256_castsi256_ps(y_hi), acc[1]);
        i += 16;
    }
    let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let quad = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps(sum, 1));
    let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
    let mut dot = _mm_cvtss_f32(_mm_add_ss(pair, _mm_shuffle_ps(pair, pair, 1)));
    while i < len {
        dot += bf16_to_f32(*pa.add(i)) * bf16_to_f32(*pb.add(i));
        i += 1;
    }
    1.0 - dot
}
