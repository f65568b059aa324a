//! `y = x · wᵀ + b` for a weight `w (out, in)` as stored by `nn.Linear`, packed once at load
//! for the best microkernel of this CPU:
//!
//! - f32 (and f16, widened at load) weights: 48-column f32 panels, AVX-512 FMA
//!   (`x86::f32_avx512`), else AVX2 FMA (`x86::f32_avx2`), else the portable kernel;
//! - bf16 weights on CPUs with AVX512_BF16: packed for `vdpbf16ps` (`x86::bf16_avx512`), each
//!   product's activations rounded to bf16 as PyTorch's bf16 linear does, f32 accumulation;
//! - bf16 weights elsewhere: 48-column bf16 panels, widened exactly as the AVX2 (or
//!   portable) kernel reads them (activations stay f32; the memory stays half of f32's).
//!
//! Every path computes each row of y from that row of x alone, in an order that does not
//! depend on the number of rows: y is the same whatever batch a row is in.

use candle_core::{DType, Result, Tensor};

use super::matmul::{matmul_f32, matmul_widened, Lhs, Microkernel, Product, WEIGHT_GROUP};
use super::panels::{Bf16Bits, PanelValue, Panels};

/// Whether bf16 weights are multiplied in bf16 on this CPU (AVX512_BF16): activations are
/// then rounded to bf16 at each product, as PyTorch's bf16 linear does. Where not, bf16
/// weights are widened to f32 as they are read.
pub fn cpu_has_bf16_matmul() -> bool {
    #[cfg(target_arch = "x86_64")]
    return super::x86::bf16_avx512::available();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The packed weight and the kernel that multiplies by it.
#[derive(Debug, Clone)]
enum Packed {
    F32(Panels<f32>, Microkernel),
    /// bf16 panels widened as they are read.
    Bf16(Panels<Bf16Bits>, Microkernel),
    #[cfg(target_arch = "x86_64")]
    Bf16Dot(super::x86::bf16_avx512::PackedBf16),
}

/// A dense layer on the CPU kernels (see the module documentation).
#[derive(Debug, Clone)]
pub struct Dense {
    packed: Packed,
    bias: Vec<f32>,
    in_dim: usize,
    out_dim: usize,
}

impl Dense {
    /// From a weight tensor `(out, in)` and an optional bias, computing in `dtype`'s way:
    /// bf16 when `dtype` is bf16 (see the module documentation), f32 otherwise.
    pub(crate) fn from_tensors(w: &Tensor, b: Option<&Tensor>, dtype: DType) -> Result<Self> {
        let (out_dim, in_dim) = w.dims2()?;
        let flat = |t: &Tensor| t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>();
        let bias = match b {
            Some(b) => flat(b)?,
            None => vec![0.0; out_dim],
        };
        if dtype == DType::BF16 && w.dtype() == DType::BF16 {
            // Packed straight from the tensor's storage: no f32 copy of a large weight.
            let w = w.contiguous()?;
            let (storage, layout) = w.storage_and_layout();
            if let candle_core::Storage::Cpu(candle_core::CpuStorage::BF16(data)) = &*storage {
                let data = &data[layout.start_offset()..layout.start_offset() + out_dim * in_dim];
                let packed = Self::pack_bf16(data, out_dim, in_dim);
                return Ok(Self { packed, bias, in_dim, out_dim });
            }
        }
        Ok(Self::from_f32(flat(w)?, bias, in_dim, out_dim, dtype))
    }

    /// From row-major f32 weights `(out, in)` and a bias, computing in `dtype`'s way: bf16
    /// products where the CPU has them (the weights are rounded to bf16), else f32 (these
    /// weights may not be bf16 values: a query projection scaled at load, for one).
    pub(crate) fn from_f32(w: Vec<f32>, bias: Vec<f32>, in_dim: usize, out_dim: usize, dtype: DType) -> Self {
        let bf16_dot = dtype == DType::BF16 && cpu_has_bf16_matmul();
        Self::with_kernel(w, bias, in_dim, out_dim, (!bf16_dot).then(Microkernel::best))
    }

    /// `kernel`: the f32 microkernel, or `None` for bf16 (rounding the weights). Tests use
    /// it to run every kernel this CPU has.
    pub(crate) fn with_kernel(w: Vec<f32>, bias: Vec<f32>, in_dim: usize, out_dim: usize, kernel: Option<Microkernel>) -> Self {
        assert_eq!(w.len(), in_dim * out_dim);
        assert_eq!(bias.len(), out_dim);
        let packed = match kernel {
            Some(kernel) => Packed::F32(Panels::pack(out_dim, in_dim, WEIGHT_GROUP, |c, kk| w[c * in_dim + kk]), kernel),
            None => {
                let bf16: Vec<half::bf16> = w.iter().map(|&v| half::bf16::from_f32(v)).collect();
                Self::pack_bf16(&bf16, out_dim, in_dim)
            }
        };
        Self { packed, bias, in_dim, out_dim }
    }

    fn pack_bf16(w: &[half::bf16], n: usize, k: usize) -> Packed {
        #[cfg(target_arch = "x86_64")]
        if cpu_has_bf16_matmul() {
            return Packed::Bf16Dot(super::x86::bf16_avx512::PackedBf16::pack_bf16(w, n, k));
        }
        Packed::Bf16(Panels::pack(n, k, WEIGHT_GROUP, |c, kk| Bf16Bits(w[c * k + kk].to_bits())), Microkernel::best_widening())
    }

    /// The widened-bf16 packing on any CPU (tests compare it with the bf16 dot product).
    #[cfg(test)]
    pub(crate) fn widened_bf16(w: &[f32], bias: Vec<f32>, in_dim: usize, out_dim: usize, kernel: Microkernel) -> Self {
        let panels = Panels::pack(out_dim, in_dim, WEIGHT_GROUP, |c, kk| Bf16Bits(half::bf16::from_f32(w[c * in_dim + kk]).to_bits()));
        Self { packed: Packed::Bf16(panels, kernel), bias, in_dim, out_dim }
    }

    /// Row `r` of the weight (`w[r][..in_dim]`) as f32, read back from the packing: a tied
    /// embedding table looks its rows up here instead of keeping a second copy of itself.
    /// The values are the stored ones widened, exactly what the table gives.
    pub(crate) fn weight_row(&self, r: usize, out: &mut [f32]) {
        assert!(r < self.out_dim && out.len() == self.in_dim, "row {r} of {} into {} values", self.out_dim, out.len());
        match &self.packed {
            Packed::F32(w, _) => out.iter_mut().zip(w.column(r)).for_each(|(o, v)| *o = v),
            Packed::Bf16(w, _) => out.iter_mut().zip(w.column(r)).for_each(|(o, v)| *o = v.widen()),
            #[cfg(target_arch = "x86_64")]
            Packed::Bf16Dot(w) => w.row(r, out),
        }
    }

    pub(crate) fn in_dim(&self) -> usize {
        self.in_dim
    }

    pub(crate) fn out_dim(&self) -> usize {
        self.out_dim
    }

    /// `dst (m, out) = x (m, in) · wᵀ + b`, or `dst += x · wᵀ + b` when `accumulate`.
    pub(crate) fn forward_into(&self, x: &[f32], m: usize, dst: &mut [f32], accumulate: bool) {
        let (k, n) = (self.in_dim, self.out_dim);
        assert!(x.len() == m * k && dst.len() == m * n, "{m} rows: x of {} for {k} inputs, dst of {} for {n} outputs", x.len(), dst.len());
        let p = Product { x: Lhs { data: x, rows: m, stride: k }, bias: Some(&self.bias), accumulate, parallel: true };
        match &self.packed {
            Packed::F32(w, kernel) => matmul_f32(*kernel, w, p, dst, n),
            Packed::Bf16(w, kernel) => matmul_widened(*kernel, w, p, dst, n),
            #[cfg(target_arch = "x86_64")]
            Packed::Bf16Dot(w) => w.matmul(p, dst, n),
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::ops::tests::values;

    /// A bf16 tensor packed straight from its storage gives the same products as its values
    /// widened to f32 and packed.
    #[test]
    fn bf16_tensors_pack_like_their_values() {
        let (m, k, n) = (5, 70, 50);
        let w = Tensor::from_vec(values(n * k, 9), (n, k), &Device::Cpu).unwrap().to_dtype(DType::BF16).unwrap();
        let x = values(m * k, 10);
        let direct = Dense::from_tensors(&w, None, DType::BF16).unwrap();
        let widened = w.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let via_f32 = Dense::from_f32(widened, vec![0.0; n], k, n, DType::BF16);
        let (mut a, mut b) = (vec![0.0; m * n], vec![0.0; m * n]);
        direct.forward_into(&x, m, &mut a, false);
        via_f32.forward_into(&x, m, &mut b, false);
        assert_eq!(a, b);
        assert!(a.iter().any(|v| v.abs() > 0.1));
    }

    /// `weight_row` reads back exactly the stored weights (widened) from every packing,
    /// including the AVX512_BF16 one, whose layout can be built and read on any CPU.
    #[test]
    fn weight_rows_read_back_the_stored_values() {
        for (k, n) in [(7, 40), (70, 50), (33, 100), (1, 1), (2, 65)] {
            let w = values(n * k, 21);
            let as_bf16: Vec<half::bf16> = w.iter().map(|&v| half::bf16::from_f32(v)).collect();
            let widened: Vec<f32> = as_bf16.iter().map(|v| v.to_f32()).collect();
            let mut packings = vec![
                ("f32", Dense::with_kernel(w.clone(), vec![0.0; n], k, n, Some(Microkernel::best())), w.clone()),
                ("widened bf16", Dense::widened_bf16(&w, vec![0.0; n], k, n, Microkernel::best()), widened.clone()),
            ];
            #[cfg(target_arch = "x86_64")]
            packings.push((
                "bf16 dot",
                Dense {
                    packed: Packed::Bf16Dot(super::super::x86::bf16_avx512::PackedBf16::pack_bf16(&as_bf16, n, k)),
                    bias: vec![0.0; n],
                    in_dim: k,
                    out_dim: n,
                },
                widened.clone(),
            ));
            for (name, dense, want) in packings {
                let mut row = vec![f32::NAN; k];
                for r in 0..n {
                    dense.weight_row(r, &mut row);
                    assert_eq!(row, want[r * k..(r + 1) * k], "{name}: row {r} of ({n}, {k})");
                }
            }
        }
    }

    /// Every kernel this CPU has: f32 on each microkernel, bf16 dot products (AVX512_BF16) and
    /// widened bf16 panels.
    fn every_dense(w: &[f32], b: &[f32], k: usize, n: usize) -> Vec<(String, Dense, bool)> {
        let mut all = Vec::new();
        for kernel in Microkernel::all_available() {
            all.push((format!("f32 {kernel:?}"), Dense::with_kernel(w.to_vec(), b.to_vec(), k, n, Some(kernel)), false));
            all.push((format!("widened bf16 {kernel:?}"), Dense::widened_bf16(w, b.to_vec(), k, n, kernel), true));
        }
        if cpu_has_bf16_matmul() {
            all.push(("bf16 dot".into(), Dense::with_kernel(w.to_vec(), b.to_vec(), k, n, None), true));
        }
        all
    }

    /// Sizes that exercise the kernels' edges: odd k, k over one 256-deep pass, n not a
    /// multiple of 48, 64 or 16, m not a multiple of the tile heights.
    const DENSE_CASES: [(usize, usize, usize); 9] =
        [(13, 7, 40), (8, 64, 48), (21, 33, 100), (1, 2, 1), (3, 100, 70), (17, 40, 33), (9, 600, 50), (40, 300, 97), (11, 1100, 60)];

    /// Every dense path against a scalar reference that rounds as that path does, with and
    /// without the residual accumulation.
    #[test]
    fn dense_matches_scalar_reference() {
        for (m, k, n) in DENSE_CASES {
            let (x, w, b, r) = (values(m * k, 1), values(n * k, 2), values(n, 3), values(m * n, 4));
            for (name, dense, bf16) in every_dense(&w, &b, k, n) {
                let bf16_dot = name == "bf16 dot";
                // The bf16 dot product rounds the activations too; widened panels only the weights.
                let round_w = |v: f32| if bf16 { half::bf16::from_f32(v).to_f32() } else { v };
                let round_x = |v: f32| if bf16_dot { half::bf16::from_f32(v).to_f32() } else { v };
                for accumulate in [false, true] {
                    let mut got = if accumulate { r.clone() } else { vec![f32::NAN; m * n] };
                    dense.forward_into(&x, m, &mut got, accumulate);
                    for i in 0..m {
                        for j in 0..n {
                            let dot: f32 = (0..k).map(|t| round_x(x[i * k + t]) * round_w(w[j * k + t])).sum();
                            let want = dot + b[j] + if accumulate { r[i * n + j] } else { 0.0 };
                            let g = got[i * n + j];
                            assert!((g - want).abs() < 1e-4 * (1.0 + want.abs()), "{name} {m}x{k}x{n} [{i},{j}]: {g} vs {want}");
                        }
                    }
                }
            }
        }
    }

    /// Every bf16 path against exact products (f64, inputs not rounded), within the error
    /// bf16 allows: rounding an activation and a weight to bf16 (8 significant bits, unit
    /// roundoff u = 2⁻⁸) moves each product by at most (2u + u²)·|x·w|, and summing k + 2
    /// terms in f32 adds at most (k + 2)·2⁻²⁴ of the sum of magnitudes (Higham, Thm 3.1, to
    /// first order). Unlike the test above, the reference does not share the kernel's idea
    /// of rounding, so a kernel that rounds wrongly (or not at all where it should) still
    /// has to be within bf16's precision of the true value. Where the CPU has AVX512_BF16,
    /// the bf16 dot product must moreover equal the products of inputs rounded to nearest
    /// even, to f32 summation error: that pins the rounding mode (a truncating conversion
    /// stays inside the first bound).
    #[test]
    fn bf16_dense_is_within_bf16_precision_of_exact_products() {
        const U: f64 = 1.0 / 256.0;
        const F32_U: f64 = 1.0 / 16_777_216.0;
        let rne = |v: f32| half::bf16::from_f32(v).to_f32() as f64;
        for (m, k, n) in DENSE_CASES {
            let (x, w, b, r) = (values(m * k, 11), values(n * k, 12), values(n, 13), values(m * n, 14));
            let bf16_paths: Vec<(String, Dense)> = every_dense(&w, &b, k, n).into_iter().filter(|d| d.2).map(|(name, d, _)| (name, d)).collect();
            assert!(!bf16_paths.is_empty(), "every CPU has a bf16 path");
            for (name, dense) in bf16_paths {
                for accumulate in [false, true] {
                    let mut got = if accumulate { r.clone() } else { vec![f32::NAN; m * n] };
                    dense.forward_into(&x, m, &mut got, accumulate);
                    for i in 0..m {
                        for j in 0..n {
                            let (xr, wr) = (&x[i * k..(i + 1) * k], &w[j * k..(j + 1) * k]);
                            let residual = if accumulate { r[i * n + j] as f64 } else { 0.0 };
                            let rest = b[j] as f64 + residual;
                            let exact: f64 = xr.iter().zip(wr).map(|(&a, &c)| a as f64 * c as f64).sum::<f64>() + rest;
                            let magnitude: f64 = xr.iter().zip(wr).map(|(&a, &c)| (a as f64 * c as f64).abs()).sum::<f64>();
                            // (1 + u)² ≤ 1 + 3u bounds a rounded product; 1.01 covers γ's higher orders.
                            let summing = 1.01 * (k + 2) as f64 * F32_U * (magnitude * (1.0 + 3.0 * U) + (b[j] as f64).abs() + residual.abs());
                            let bound = (2.0 * U + U * U) * magnitude + summing;
                            let g = got[i * n + j] as f64;
                            assert!((g - exact).abs() <= bound, "{name} {m}x{k}x{n} [{i},{j}] accumulate {accumulate}: {g} vs exact {exact}, bound {bound:e}");
                            if name == "bf16 dot" {
                                let rounded: f64 = xr.iter().zip(wr).map(|(&a, &c)| rne(a) * rne(c)).sum::<f64>() + rest;
                                assert!((g - rounded).abs() <= summing, "{name} {m}x{k}x{n} [{i},{j}]: {g} vs nearest-even products {rounded}");
                            }
                        }
                    }
                }
            }
        }
    }

    /// A row gives the same bits whatever the number of rows and its place among them, on
    /// every kernel: what makes the models batch-invariant.
    #[test]
    fn each_row_is_independent_of_the_others() {
        let (k, n) = (300, 100);
        let (w, b) = (values(n * k, 11), values(n, 12));
        for (name, dense, _) in every_dense(&w, &b, k, n) {
            let single = values(k, 13);
            let mut alone = vec![0.0; n];
            dense.forward_into(&single, 1, &mut alone, false);
            for (m, at) in [(2, 0), (2, 1), (7, 6), (9, 3), (17, 16), (40, 21)] {
                let mut x = values(m * k, 14 + m as u32);
                x[at * k..(at + 1) * k].copy_from_slice(&single);
                let mut out = vec![0.0; m * n];
                dense.forward_into(&x, m, &mut out, false);
                let got: Vec<u32> = out[at * n..(at + 1) * n].iter().map(|v| v.to_bits()).collect();
                let want: Vec<u32> = alone.iter().map(|v| v.to_bits()).collect();
                assert_eq!(got, want, "{name}: row {at} of {m}");
            }
        }
    }
}
