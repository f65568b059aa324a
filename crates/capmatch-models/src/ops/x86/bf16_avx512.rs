//! `dst (m, n) [+]= bf16(x) (m, k) · bf16(w)ᵀ + b` with f32 accumulation, on CPUs with
//! AVX512_BF16 (`vdpbf16ps`: 32 bf16 products per instruction, twice f32 FMA's rate on
//! Zen 4). `gemm` 0.19 has no bf16 kernel (candle widens bf16 matmuls to f32), hence this one.
//! The weights are packed once at load; activations are rounded to bf16 (nearest-even) per
//! call, each row on its own, as PyTorch's bf16 linear does.

use std::arch::x86_64::*;

use rayon::prelude::*;

use super::tile_edges;
use crate::ops::matmul::Product;
use crate::ops::tile::{self, Tile, TileDst, TileShape};

/// Output rows per microkernel call (6 × 4 accumulators measured a few % faster than
/// 8 × 3 on Zen 4: fewer loads per dot product).
const MR: usize = 6;
/// 16-column blocks per microkernel call (MR × NB accumulators of 32).
const NB: usize = 4;
const GROUP: usize = 16 * NB;
/// Pairs of k per pass: a 256 × 64 block of bf16 pairs (64 KiB) stays in cache while
/// every row tile goes through it.
const KC2: usize = 256;

pub fn available() -> bool {
    is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16")
}

/// Weights (n, k) packed for `vdpbf16ps`: per group of 64 output columns, per pair of k,
/// NB vectors of 16 columns × (k even, k odd). Columns past n and an odd k are zero.
#[derive(Debug, Clone)]
pub struct PackedBf16 {
    data: Vec<u16>,
    k: usize,
    n: usize,
}

fn bf16_bits(v: f32) -> u16 {
    half::bf16::from_f32(v).to_bits()
}

impl PackedBf16 {
    /// From weights already in bf16 (no rounding, no f32 copy).
    pub fn pack_bf16(w: &[half::bf16], n: usize, k: usize) -> Self {
        Self::pack_with(n, k, |i| w[i].to_bits())
    }

    /// `bits(i)`: the bf16 bits of the row-major weight element `i = col·k + kk`.
    fn pack_with(n: usize, k: usize, bits: impl Fn(usize) -> u16 + Sync) -> Self {
        let (k2, groups) = (k.div_ceil(2), n.div_ceil(GROUP));
        let mut data = vec![0u16; groups * k2 * GROUP * 2];
        if !data.is_empty() {
            // One panel of 64 columns per task, reading each weight row in order.
            data.par_chunks_mut(k2 * GROUP * 2).enumerate().for_each(|(g, panel)| {
                for c in 0..GROUP.min(n - g * GROUP) {
                    let row = (g * GROUP + c) * k;
                    for kk in 0..k {
                        panel[(kk / 2) * GROUP * 2 + 2 * c + kk % 2] = bits(row + kk);
                    }
                }
            });
        }
        Self { data, k, n }
    }

    /// Row `c` of the weight (`w[c][..k]`), widened to f32.
    pub fn row(&self, c: usize, out: &mut [f32]) {
        assert!(c < self.n && out.len() == self.k, "row {c} of {} into {} values", self.n, out.len());
        let (g, lane, k2) = (c / GROUP, c % GROUP, self.k.div_ceil(2));
        let panel = &self.data[g * k2 * GROUP * 2..(g + 1) * k2 * GROUP * 2];
        for (kk, v) in out.iter_mut().enumerate() {
            *v = f32::from_bits(u32::from(panel[(kk / 2) * GROUP * 2 + 2 * lane + kk % 2]) << 16);
        }
    }

    /// The product `p` with these weights, rows of dst `dst_stride` apart.
    pub fn matmul(&self, p: Product, dst: &mut [f32], dst_stride: usize) {
        assert!(available(), "AVX512_BF16 kernel on a CPU without it");
        let (k, n, k2, m) = (self.k, self.n, self.k.div_ceil(2), p.x.rows);
        p.check(n, k);
        let Product { x, bias, accumulate, parallel } = p;
        // Activations as bf16 pairs (one u32 per pair of k), row-major, in a buffer this
        // thread reuses: a fresh one per call was megabytes of page faults per layer.
        thread_local! {
            static BUF: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let mut buf = BUF.with(|b| std::mem::take(&mut *b.borrow_mut()));
        buf.resize(m * k2, 0);
        let pairs = &mut buf[..m * k2];
        pairs.par_chunks_mut(k2.max(1)).enumerate().for_each(|(r, row)| {
            if k % 2 == 1 {
                // The buffer is reused: an odd k's pad must be zeroed explicitly.
                row[k2 - 1] = 0;
            }
            let src = &x.data[r * x.stride..][..k];
            // SAFETY: the features were checked above; `row` holds 2·k2 ≥ k bf16 values.
            unsafe { row_to_bf16(src, row.as_mut_ptr() as *mut u16) }
        });
        let pairs = &*pairs;
        // Steps of k are pairs here (one u32 of `pairs`, two bf16 of a panel per column).
        tile::walk(m, n, k2, TileShape { group: GROUP, kc: KC2, mr: MR }, dst, dst_stride, parallel, |t, out| {
            let block = &self.data[t.group * k2 * GROUP * 2 + t.k0 * GROUP * 2..];
            let a = &pairs[t.r * k2 + t.k0..];
            // SAFETY: the features were checked above; the buffers hold the tile (see `tile`).
            unsafe { tile(a, k2, t, block, bias.map(|b| &b[t.group * GROUP..]), out, accumulate) }
        });
        BUF.with(|b| *b.borrow_mut() = buf);
    }
}

/// Rounds a row to bf16 (nearest-even, `vcvtneps2bf16`), 16 values per instruction.
///
/// # Safety
/// AVX512F and AVX512_BF16 must be available; `out` must hold `x.len()` values.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn row_to_bf16(x: &[f32], out: *mut u16) {
    let mut i = 0;
    while i + 16 <= x.len() {
        let h: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(_mm512_loadu_ps(x.as_ptr().add(i))));
        _mm256_storeu_si256(out.add(i) as *mut __m256i, h);
        i += 16;
    }
    for (j, &v) in x.iter().enumerate().skip(i) {
        *out.add(j) = bf16_bits(v);
    }
}

/// One MR × 64 block of dst over `t.kc` pairs of k. The first pass starts from the bias
/// (plus dst when accumulating); later passes from the partial sums in dst.
///
/// # Safety
/// AVX512F and AVX512_BF16 must be available; `a` must hold `(t.rows − 1) · k2 + t.kc`
/// pairs and `panel` `t.kc · 128` values.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn tile(a: &[u32], k2: usize, t: &Tile, panel: &[u16], bias: Option<&[f32]>, dst: &mut TileDst, accumulate: bool) {
    debug_assert!(t.rows == 0 || a.len() >= (t.rows - 1) * k2 + t.kc);
    debug_assert!(panel.len() >= t.kc * GROUP * 2);
    let masks = tile_edges::column_masks::<NB>(t.cols);
    let mut acc = tile_edges::start::<MR, NB>(t.rows, &masks, bias, dst, t.first(), accumulate);
    let (pb, pa) = (panel.as_ptr(), a.as_ptr());
    if t.rows == MR {
        for kp in 0..t.kc {
            let b: [__m512bh; NB] = std::array::from_fn(|j| std::mem::transmute(_mm512_loadu_si512(pb.add((kp * NB + j) * 32) as *const _)));
            for (r, accr) in acc.iter_mut().enumerate() {
                let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(*pa.add(r * k2 + kp) as i32));
                for j in 0..NB {
                    accr[j] = _mm512_dpbf16_ps(accr[j], av, b[j]);
                }
            }
        }
    } else {
        for kp in 0..t.kc {
            let b: [__m512bh; NB] = std::array::from_fn(|j| std::mem::transmute(_mm512_loadu_si512(pb.add((kp * NB + j) * 32) as *const _)));
            for (r, accr) in acc.iter_mut().enumerate().take(t.rows) {
                let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(*pa.add(r * k2 + kp) as i32));
                for j in 0..NB {
                    accr[j] = _mm512_dpbf16_ps(accr[j], av, b[j]);
                }
            }
        }
    }
    tile_edges::store(&acc, t.rows, &masks, dst);
}
