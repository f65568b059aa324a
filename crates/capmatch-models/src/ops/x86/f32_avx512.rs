//! `dst (m, n) [+]= x (m, k) · wᵀ + b` in f32 with AVX-512F FMA, on weights packed once
//! into panels (`ops::panels`). `gemm` 0.19 packs its operands on every call; for CLIP at
//! batch 1 (50 rows) that packing was half of the tower's time.

use std::arch::x86_64::*;

use super::tile_edges;
use crate::ops::matmul::Product;
use crate::ops::panels::Panels;
use crate::ops::tile::{self, Tile, TileDst, TileShape};

/// Steps of k per pass: a 256 × 48 block of a panel (48 KiB) stays in cache while every row
/// tile goes through it.
const KC: usize = 256;

pub fn available() -> bool {
    is_x86_feature_detected!("avx512f")
}

/// The product `p` with right operand `w`, rows of dst `dst_stride` apart. Panels of 48
/// columns run as 8 rows × 3 vectors per call, panels of 64 as 6 × 4 (24 accumulators
/// either way).
pub fn matmul(w: &Panels<f32>, p: Product, dst: &mut [f32], dst_stride: usize) {
    assert!(available(), "AVX-512F kernel on a CPU without it");
    match w.group() {
        48 => run::<8, 3>(w, p, dst, dst_stride),
        64 => run::<6, 4>(w, p, dst, dst_stride),
        g => panic!("no AVX-512 kernel for panels of {g} columns"),
    }
}

fn run<const MR: usize, const NB: usize>(w: &Panels<f32>, p: Product, dst: &mut [f32], dst_stride: usize) {
    let (n, k) = (w.n(), w.k());
    p.check(n, k);
    let Product { x, bias, accumulate, parallel } = p;
    let group = 16 * NB;
    tile::walk(x.rows, n, k, TileShape { group, kc: KC, mr: MR }, dst, dst_stride, parallel, |t, out| {
        let xs = &x.data[t.r * x.stride + t.k0..];
        let panel = w.block(t.group, t.k0);
        // SAFETY: AVX-512F was checked by `matmul`; `p.check` and the panel layout bound the
        // reads (see `tile`).
        unsafe { tile::<MR, NB>(xs, x.stride, t, panel, bias.map(|b| &b[t.group * group..]), out, accumulate) }
    });
}

/// One tile: `t.rows` rows of `x` (row `i` at `x[i · x_stride..]`, from this pass's first
/// step of k) times `t.kc` rows of the panel. The first pass starts from the bias (plus dst
/// when accumulating); later passes from the partial sums in dst.
///
/// # Safety
/// AVX-512F must be available; `x` must hold `(t.rows − 1) · x_stride + t.kc` values and
/// `panel` `t.kc · 16 · NB` (as `Lhs::check` and `Panels::block` guarantee).
#[target_feature(enable = "avx512f")]
unsafe fn tile<const MR: usize, const NB: usize>(
    x: &[f32],
    x_stride: usize,
    t: &Tile,
    panel: &[f32],
    bias: Option<&[f32]>,
    dst: &mut TileDst,
    accumulate: bool,
) {
    let group = 16 * NB;
    debug_assert!(t.rows == 0 || x.len() >= (t.rows - 1) * x_stride + t.kc);
    debug_assert!(panel.len() >= t.kc * group);
    let masks = tile_edges::column_masks::<NB>(t.cols);
    let mut acc = tile_edges::start::<MR, NB>(t.rows, &masks, bias, dst, t.first(), accumulate);
    let (pb, pa) = (panel.as_ptr(), x.as_ptr());
    // The same instructions for every row whatever the tile's height: a full tile only lets
    // the compiler unroll the rows.
    if t.rows == MR {
        for kk in 0..t.kc {
            let b: [__m512; NB] = std::array::from_fn(|j| _mm512_loadu_ps(pb.add(kk * group + j * 16)));
            for (r, accr) in acc.iter_mut().enumerate() {
                let a = _mm512_set1_ps(*pa.add(r * x_stride + kk));
                for j in 0..NB {
                    accr[j] = _mm512_fmadd_ps(a, b[j], accr[j]);
                }
            }
        }
    } else {
        for kk in 0..t.kc {
            let b: [__m512; NB] = std::array::from_fn(|j| _mm512_loadu_ps(pb.add(kk * group + j * 16)));
            for (r, accr) in acc.iter_mut().enumerate().take(t.rows) {
                let a = _mm512_set1_ps(*pa.add(r * x_stride + kk));
                for j in 0..NB {
                    accr[j] = _mm512_fmadd_ps(a, b[j], accr[j]);
                }
            }
        }
    }
    tile_edges::store(&acc, t.rows, &masks, dst);
}
