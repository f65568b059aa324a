//! The graph's distance between two bf16 vectors: 1 − their inner product.
//!
//! usearch computes it itself when built with NumKong, whose SIMD kernels take about 20
//! minutes of CPU to compile (too much for CI on 2 cores); without them its bf16 inner
//! product is a plain loop that the compiler vectorises for the SSE2 baseline only, and
//! building and searching a graph spend most of their time in it. So the graphs are given
//! this one instead (usearch's stateful metric), picked once at run time for the CPU: the
//! same arithmetic on 8 lanes with fused multiply-adds. It only orders candidates; every
//! candidate is re-scored from the f32 vectors, so results do not depend on which kernel ran.
//!
//! One file per instruction set, as in `capmatch_retrieval::kernel`: `x86_avx2.rs` and
//! `portable.rs`, the reference the others are tested against.

mod portable;
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod x86_avx2;

/// A bf16 value's bits as the f32 it stands for (bf16 is the upper half of an f32).
#[inline(always)]
pub(crate) fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

/// `1 − a · b` for two bf16 vectors of equal length, on the best kernel this CPU has.
pub(crate) type Bf16Distance = fn(&[u16], &[u16]) -> f32;

/// The kernel for this CPU and its name: AVX2 + FMA where available, else the portable loop.
fn best() -> (&'static str, Bf16Distance) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        return ("avx2+fma", x86_avx2::ip_distance);
    }
    ("portable", portable::ip_distance)
}

/// The kernel the graphs use on this CPU.
pub(crate) fn bf16_ip_distance() -> Bf16Distance {
    best().1
}

/// Which kernel [`bf16_ip_distance`] picks, for benchmarks.
pub(crate) fn kernel_name() -> &'static str {
    best().0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to_bf16(x: f32) -> u16 {
        (x.to_bits() >> 16) as u16
    }

    /// Vectors of every length around the kernels' block sizes (32, 16, 8 lanes), with
    /// values of both signs and several magnitudes.
    fn pair(len: usize, seed: u32) -> (Vec<u16>, Vec<u16>) {
        let mut s = seed.wrapping_mul(2_654_435_761).max(1);
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32 - 0.5) * if s % 7 == 0 { 8.0 } else { 0.25 }
        };
        let a = (0..len).map(|_| to_bf16(next())).collect();
        let b = (0..len).map(|_| to_bf16(next())).collect();
        (a, b)
    }

    /// The sum in f64 from the bf16 values: what every kernel approximates in f32.
    fn reference(a: &[u16], b: &[u16]) -> f64 {
        1.0 - a.iter().zip(b).map(|(&x, &y)| f64::from(bf16_to_f32(x)) * f64::from(bf16_to_f32(y))).sum::<f64>()
    }

    fn check(kernel: Bf16Distance) {
        for len in (0..=80).chain([127, 128, 129, 511, 512, 768, 1024]) {
            for seed in 1..4 {
                let (a, b) = pair(len, seed + len as u32 * 31);
                let want = reference(&a, &b);
                let scale: f64 = a.iter().zip(&b).map(|(&x, &y)| (f64::from(bf16_to_f32(x)) * f64::from(bf16_to_f32(y))).abs()).sum();
                let got = f64::from(kernel(&a, &b));
                assert!((got - want).abs() <= 1e-5 * (1.0 + scale), "len {len} seed {seed}: {got} where {want}");
            }
        }
    }

    #[test]
    fn bf16_bits_are_the_upper_half_of_an_f32() {
        assert_eq!(bf16_to_f32(to_bf16(1.0)), 1.0);
        assert_eq!(bf16_to_f32(to_bf16(-0.5)), -0.5);
        assert_eq!(bf16_to_f32(0), 0.0);
    }

    #[test]
    fn the_portable_kernel_is_one_minus_the_inner_product() {
        check(portable::ip_distance);
        // Unit vectors: identical ones are at distance 0, opposite ones at 2.
        let one = vec![to_bf16(0.5); 4];
        let minus: Vec<u16> = vec![to_bf16(-0.5); 4];
        assert_eq!(portable::ip_distance(&one, &one), 0.0);
        assert_eq!(portable::ip_distance(&one, &minus), 2.0);
    }

    #[test]
    fn the_chosen_kernel_agrees_with_the_portable_one() {
        check(bf16_ip_distance());
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_avx2_kernel_agrees_with_the_portable_one() {
        if !(std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")) {
            eprintln!("skipped: this CPU has no AVX2 + FMA");
            return;
        }
        check(x86_avx2::ip_distance);
    }
}
