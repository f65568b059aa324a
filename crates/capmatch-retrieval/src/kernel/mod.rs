//! The dot-product kernel behind every score.
//!
//! **Batch invariance.** The score of a (query, gallery vector) pair is computed by the same
//! sequence of floating-point operations whatever else is scored with it: 16 lanes, lane `l`
//! accumulating `q[16c + l] × g[16c + l]` with a fused multiply-add chunk after chunk (a
//! partial last chunk is zero-padded), then the lanes summed by one fixed tree
//! (`l + l+8`, then `+4`, `+2`, `+1`). Every implementation below follows that sequence, and
//! tiling (how many queries and rows share registers) only changes which registers hold the
//! accumulators. So a single search, a batched evaluation and a neighbour graph give
//! bit-identical scores, on any machine, and the order of results never depends on how the
//! work was split.
//!
//! One file per instruction set, as the dispatch picks at run time: `x86_avx512.rs`,
//! `x86_avx2.rs` (both need FMA), and `portable.rs`, the reference the others are tested
//! against bit for bit.

mod portable;
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod x86_avx2;
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod x86_avx512;

/// Lanes of the accumulation (the order of the arithmetic depends on it, not the hardware).
pub const LANES: usize = 16;

/// The instruction sets the kernel can run on, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Avx512,
    Avx2Fma,
    Portable,
}

impl Isa {
    /// The best one this CPU supports.
    pub fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                return Isa::Avx2Fma;
            }
        }
        Isa::Portable
    }

    /// Whether this CPU can run `self`.
    pub fn available(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma => std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma"),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }
}

fn best() -> Isa {
    static BEST: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *BEST.get_or_init(Isa::detect)
}

/// `out[i * n + j] = q_i · r_j` for the `m = queries.len() / dim` query rows and the
/// `n = rows.len() / dim` gallery rows, all row-major.
///
/// # Panics
/// When a length is not a multiple of `dim` or `out` is not `m × n`.
pub fn dots(queries: &[f32], rows: &[f32], dim: usize, out: &mut [f32]) {
    dots_with(best(), queries, rows, dim, out)
}

/// [`dots`] on a chosen instruction set (for tests and benchmarks).
///
/// # Panics
/// As [`dots`], and when the CPU cannot run `isa`.
pub fn dots_with(isa: Isa, queries: &[f32], rows: &[f32], dim: usize, out: &mut [f32]) {
    assert!(dim > 0, "dimension 0");
    assert_eq!(queries.len() % dim, 0, "queries are not rows of {dim}");
    assert_eq!(rows.len() % dim, 0, "gallery rows are not rows of {dim}");
    let (m, n) = (queries.len() / dim, rows.len() / dim);
    assert_eq!(out.len(), m * n, "output is not {m} × {n}");
    if m == 0 || n == 0 {
        return;
    }
    assert!(isa.available(), "this CPU cannot run {isa:?}");
    match isa {
        Isa::Portable => portable::dots(queries, rows, dim, out),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => x86_avx512::dots(queries, rows, dim, out),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => x86_avx2::dots(queries, rows, dim, out),
        #[cfg(not(target_arch = "x86_64"))]
        _ => unreachable!("checked by available()"),
    }
}

/// The dot product of two vectors of equal length, as [`dots`] computes it.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot of vectors of different lengths");
    if a.is_empty() {
        return 0.0;
    }
    let mut out = [0.0f32];
    dots(a, b, a.len(), &mut out);
    out[0]
}

/// The fixed lane-summing tree, shared by the portable kernel and the tests.
#[inline]
pub(crate) fn reduce_lanes(a: &[f32; LANES]) -> f32 {
    let mut t = [0.0f32; 8];
    for l in 0..8 {
        t[l] = a[l] + a[l + 8];
    }
    let mut u = [0.0f32; 4];
    for l in 0..4 {
        u[l] = t[l] + t[l + 4];
    }
    let v = [u[0] + u[2], u[1] + u[3]];
    v[0] + v[1]
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Lcg(u64);
    impl Lcg {
        fn f32(&mut self) -> f32 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        }
        fn vec(&mut self, n: usize) -> Vec<f32> {
            (0..n).map(|_| self.f32()).collect()
        }
    }

    fn isas() -> Vec<Isa> {
        [Isa::Portable, Isa::Avx2Fma, Isa::Avx512].into_iter().filter(|i| i.available()).collect()
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn every_isa_and_every_batch_shape_gives_the_same_bits() {
        let mut rng = Lcg(1);
        for dim in [1, 7, 16, 17, 37, 64, 512, 515] {
            let (m, n) = (11, 29);
            let q = rng.vec(m * dim);
            let r = rng.vec(n * dim);
            let mut want = vec![0.0; m * n];
            dots_with(Isa::Portable, &q, &r, dim, &mut want);
            for isa in isas() {
                let mut all = vec![0.0; m * n];
                dots_with(isa, &q, &r, dim, &mut all);
                assert_eq!(bits(&all), bits(&want), "{isa:?} dim {dim}");
                // Every query alone against every row alone, and against a slice of rows.
                for i in 0..m {
                    let qi = &q[i * dim..(i + 1) * dim];
                    let mut row = vec![0.0; n];
                    dots_with(isa, qi, &r, dim, &mut row);
                    assert_eq!(bits(&row), bits(&want[i * n..(i + 1) * n]), "{isa:?} dim {dim} query {i}");
                    for j in [0, n / 2, n - 1] {
                        let mut one = [0.0];
                        dots_with(isa, qi, &r[j * dim..(j + 1) * dim], dim, &mut one);
                        assert_eq!(one[0].to_bits(), want[i * n + j].to_bits(), "{isa:?} dim {dim} ({i}, {j})");
                    }
                }
                // Queries in a block of 3 starting at an odd offset.
                let mut block = vec![0.0; 3 * n];
                dots_with(isa, &q[5 * dim..8 * dim], &r, dim, &mut block);
                assert_eq!(bits(&block), bits(&want[5 * n..8 * n]), "{isa:?} dim {dim} block");
            }
        }
    }

    #[test]
    fn the_kernel_is_accurate() {
        let mut rng = Lcg(2);
        let dim = 512;
        let a = rng.vec(dim);
        let b = rng.vec(dim);
        let exact: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
        let bound: f64 = a.iter().zip(&b).map(|(x, y)| (*x as f64 * *y as f64).abs()).sum::<f64>() * 64.0 * f32::EPSILON as f64;
        assert!((dot(&a, &b) as f64 - exact).abs() <= bound);
        assert_eq!(dot(&[3.0], &[4.0]), 12.0);
    }

    #[test]
    fn special_values_propagate() {
        let mut v = vec![0.5f32; 40];
        v[20] = f32::NAN;
        assert!(dot(&v, &[1.0; 40]).is_nan());
        v[20] = f32::INFINITY;
        assert_eq!(dot(&v, &[1.0; 40]), f32::INFINITY);
    }
}
