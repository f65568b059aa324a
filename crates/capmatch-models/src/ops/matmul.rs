//! Products with a packed right-hand operand, `dst = [dst +] bias + x · wᵀ`, dispatched to
//! the microkernel this CPU runs best. Every kernel computes a row of dst from that row of
//! x alone, in the same order whatever the number of rows (see [`super::tile`]).

use super::panels::{Bf16Bits, Panels};
use super::portable;

/// The left operand: `rows` rows of k values, row `i` at `data[i · stride..]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lhs<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub stride: usize,
}

impl<'a> Lhs<'a> {
    /// Panics unless every row holds `k` values.
    pub fn check(&self, k: usize) {
        assert!(
            self.rows == 0 || (self.stride >= k && self.data.len() >= (self.rows - 1) * self.stride + k),
            "{} rows of {k} values (stride {}) do not fit in {}",
            self.rows,
            self.stride,
            self.data.len()
        );
    }
}

/// A product `dst[r] = (accumulate ? dst[r] : 0) + bias + x[r] · wᵀ` but for its packed
/// right operand `w` and its destination.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Product<'a> {
    pub x: Lhs<'a>,
    pub bias: Option<&'a [f32]>,
    /// Add to dst (a residual) rather than overwrite it.
    pub accumulate: bool,
    /// Column groups on the thread pool (dense layers) or on this thread (attention's
    /// per-head tasks).
    pub parallel: bool,
}

impl Product<'_> {
    /// Panics unless every row of x holds `k` values and the bias `n`.
    pub fn check(&self, n: usize, k: usize) {
        self.x.check(k);
        if let Some(b) = self.bias {
            assert!(b.len() >= n, "bias of {} for {n} columns", b.len());
        }
    }
}

/// The microkernels of f32 (and widened bf16) panels, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Microkernel {
    /// AVX-512F FMA intrinsics (`super::x86::f32_avx512`): f32 panels only.
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// AVX2 FMA intrinsics (`super::x86::f32_avx2`): f32 and widened bf16 panels.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// The portable kernel as the crate is built.
    Portable,
}

impl Microkernel {
    /// The fastest this CPU runs for f32 panels.
    pub fn best() -> Self {
        #[cfg(target_arch = "x86_64")]
        if super::x86::f32_avx512::available() {
            return Self::Avx512;
        }
        Self::best_widening()
    }

    /// The fastest this CPU runs for widened bf16 panels (which have no AVX-512 kernel).
    pub fn best_widening() -> Self {
        #[cfg(target_arch = "x86_64")]
        if super::x86::f32_avx2::available() {
            return Self::Avx2;
        }
        Self::Portable
    }

    /// Every kernel this CPU can run (for tests).
    #[cfg(test)]
    pub fn all_available() -> Vec<Self> {
        let mut all = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if super::x86::f32_avx512::available() {
                all.push(Self::Avx512);
            }
            if super::x86::f32_avx2::available() {
                all.push(Self::Avx2);
            }
        }
        all.push(Self::Portable);
        all
    }
}

/// Output columns per panel of packed weights (48: three AVX-512 vectors, six AVX2 ones).
pub(crate) const WEIGHT_GROUP: usize = 48;

impl Microkernel {
    /// The panel width for a product with `n` output columns: 48, or where the kernel also
    /// takes 64-column panels (AVX-512), 64 when that wastes fewer lanes (n = 64: attention's
    /// head dimension).
    pub fn group_for(self, n: usize) -> usize {
        #[cfg(target_arch = "x86_64")]
        if self == Self::Avx512 && n.div_ceil(64) * 64 < n.div_ceil(WEIGHT_GROUP) * WEIGHT_GROUP {
            return 64;
        }
        let _ = n;
        WEIGHT_GROUP
    }
}

/// Computes `dst` with the given right operand `w`, rows of dst `dst_stride` apart.
pub(crate) fn matmul_f32(kernel: Microkernel, w: &Panels<f32>, p: Product, dst: &mut [f32], dst_stride: usize) {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Microkernel::Avx512 => super::x86::f32_avx512::matmul(w, p, dst, dst_stride),
        #[cfg(target_arch = "x86_64")]
        Microkernel::Avx2 => super::x86::f32_avx2::matmul(w, p, dst, dst_stride),
        Microkernel::Portable => portable::matmul(w, p, dst, dst_stride),
    }
}

/// [`matmul_f32`] for bf16 panels, widened to f32 as they are read (`Avx512` is not a
/// kernel of these and runs as `Avx2`).
pub(crate) fn matmul_widened(kernel: Microkernel, w: &Panels<Bf16Bits>, p: Product, dst: &mut [f32], dst_stride: usize) {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Microkernel::Avx512 | Microkernel::Avx2 if super::x86::f32_avx2::available() => super::x86::f32_avx2::matmul(w, p, dst, dst_stride),
        _ => portable::matmul(w, p, dst, dst_stride),
    }
}
