//! `dst (m, n) [+]= x (m, k) · wᵀ + b` in f32 with AVX2 FMA (x86 CPUs without AVX-512), on
//! 48-column panels of f32 weights, or of bf16 weights widened exactly as they are read (bf16
//! checkpoints on CPUs without AVX512_BF16: half the memory of f32, f32 arithmetic).

use std::arch::x86_64::*;
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;

use crate::ops::matmul::{Lhs, Product};
use crate::ops::panels::{Bf16Bits, PanelValue, Panels};
use crate::ops::tile::{self, Tile, TileDst, TileShape};

/// Rows per call.
const MR: usize = 6;
/// 8-column vectors per panel row.
const NB: usize = 6;
const GROUP: usize = 8 * NB;
/// A call covers its rows' 48 columns as three sub-tiles of 2 vectors: 6 rows × 2 vectors =
/// 12 accumulators, with 2 weight vectors and a broadcast activation: 15 of AVX2's 16
/// registers. 12 independent FMAs in flight leave slack over Zen 3's FMA latency (4 cycles,
/// 2 per cycle: 8 needed); with 8 (4 × 16) every late load stalled the pipes. This shape
/// used to spill an accumulator to the stack (LLVM, with six row addresses to keep in
/// general registers); since the rows are packed (see [`pack_rows`]) the loop needs one
/// address and has no spill (checked in the disassembly). Every output element still adds
/// its k products in order from the bias, so the results are the same bits whatever the
/// shape.
const SUB: usize = 2;
const SUB_COLS: usize = 8 * SUB;
/// Steps of k per pass: a 256 × 48 block of an f32 panel (48 KiB, in L2) is read by every
/// row tile before the next; on Zen 2 (CPU time, one thread) 128 and 256 measured within
/// noise of each other, one pass over all of k was 15–40 % slower.
const KC: usize = 128;

pub fn available() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

/// A panel value type this kernel reads eight at a time.
pub(crate) trait Avx2Panel: PanelValue {
    /// Eight consecutive values from `p`, as f32.
    ///
    /// # Safety
    /// AVX2 must be available and `p` must point to eight readable values.
    unsafe fn load8(p: *const Self) -> __m256;
}

impl Avx2Panel for f32 {
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> __m256 {
        _mm256_loadu_ps(p)
    }
}

impl Avx2Panel for Bf16Bits {
    /// bf16 → f32 is exact: the bits shifted into the high half.
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> __m256 {
        let h = _mm_loadu_si128(p as *const __m128i);
        _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
    }
}

/// Distinguishes the products, so a thread's copied block is never taken for another's.
static PRODUCTS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// The block this thread last copied in tile order: (product, group, k0) and the values.
    /// The tiles of one group run on one thread, one pass after the other.
    static TILE_BLOCK: RefCell<((u64, usize, usize), Vec<f32>)> = const { RefCell::new(((u64::MAX, 0, 0), Vec::new())) };
}

/// The product `p` with right operand `w`, rows of dst `dst_stride` apart.
pub fn matmul<T: Avx2Panel>(w: &Panels<T>, p: Product, dst: &mut [f32], dst_stride: usize) {
    assert!(available(), "AVX2 + FMA kernel on a CPU without them");
    assert_eq!(w.group(), GROUP, "the AVX2 kernel takes panels of {GROUP} columns");
    let (n, k) = (w.n(), w.k());
    p.check(n, k);
    let Product { x, bias, accumulate, parallel } = p;
    // A block read by several row tiles is copied once (per thread) into the order the
    // tiles read it, sub-tile after sub-tile, and widened on the way when the panel is bf16
    // (which needs the copy anyway). In the panel's own order a sub-tile's 16 columns are 64
    // bytes of every 192-byte row of the block; read in order, BLIP's captioning took about
    // 3 % less time (near the noise). The values are the same, so are the bits.
    let relayout = x.rows > MR;
    let product = PRODUCTS.fetch_add(1, Ordering::Relaxed);
    let packed = pack_rows(x, k, parallel);
    tile::walk(x.rows, n, k, TileShape { group: GROUP, kc: KC, mr: MR }, dst, dst_stride, parallel, |t, out| {
        // The tile's rows from this pass's first step of k (tiles start at multiples of MR).
        let xs = &packed[(t.r / MR) * k * MR + t.k0 * MR..];
        let bias = bias.map(|b| &b[t.group * GROUP..]);
        let block = &w.block(t.group, t.k0)[..t.kc * GROUP];
        if !relayout {
            // SAFETY: the features were checked above; `p.check` and the panel layout bound
            // the reads (see `tile`).
            return unsafe { tile(xs, t, block, PanelOrder::AS_STORED, bias, out, accumulate) };
        }
        TILE_BLOCK.with(|copy| {
            let (key, values) = &mut *copy.borrow_mut();
            if *key != (product, t.group, t.k0) {
                values.clear();
                values.resize(t.kc * GROUP, 0.0);
                for (kk, row) in block.chunks_exact(GROUP).enumerate() {
                    for (sub, cols) in row.chunks_exact(SUB_COLS).enumerate() {
                        let at = sub * t.kc * SUB_COLS + kk * SUB_COLS;
                        for (v, c) in values[at..at + SUB_COLS].iter_mut().zip(cols) {
                            *v = c.widen();
                        }
                    }
                }
                *key = (product, t.group, t.k0);
            }
            // SAFETY: as above; `values` holds the block's `t.kc · 48` values.
            unsafe { tile(xs, t, &values[..], PanelOrder::by_sub_tile(t.kc), bias, out, accumulate) }
        })
    });
}

/// Where a tile finds the 16 columns of sub-tile `s` at step `kk` of its block: at
/// `s · sub + kk · step`.
#[derive(Clone, Copy)]
struct PanelOrder {
    sub: usize,
    step: usize,
}

impl PanelOrder {
    /// The panel's own order: rows of 48 columns.
    const AS_STORED: Self = Self { sub: SUB_COLS, step: GROUP };

    /// A block of `kc` steps copied sub-tile after sub-tile.
    fn by_sub_tile(kc: usize) -> Self {
        Self { sub: kc * SUB_COLS, step: SUB_COLS }
    }
}

/// One tile: `t.rows` (≤ MR) rows of the packed `x` (see [`pack_rows`], from this pass's
/// first step of k) times `t.kc` rows of the panel. The first pass starts from the bias (plus
/// dst when accumulating); later passes from the partial sums in dst.
///
/// # Safety
/// AVX2 and FMA must be available; `x` must hold `t.kc · MR` values and `panel` `t.kc · 48`
/// (as `pack_rows`, `Lhs::check` and `Panels::block` guarantee).
#[target_feature(enable = "avx2,fma")]
unsafe fn tile<T: Avx2Panel>(x: &[f32], t: &Tile, panel: &[T], order: PanelOrder, bias: Option<&[f32]>, dst: &mut TileDst, accumulate: bool) {
    debug_assert!(x.len() >= t.kc * MR);
    debug_assert!(panel.len() >= t.kc * GROUP);
    let (pb, pa) = (panel.as_ptr(), x.as_ptr());
    for (sub, c0) in [0, SUB_COLS, 2 * SUB_COLS].into_iter().enumerate() {
        if c0 >= t.cols {
            break;
        }
        let pb = pb.add(sub * order.sub);
        let mut acc = start(t, c0, bias, dst, accumulate);
        // The same instructions for every row whatever the tile's height: a full tile only
        // lets the compiler unroll the rows.
        if t.rows == MR {
            for kk in 0..t.kc {
                let b: [__m256; SUB] = [T::load8(pb.add(kk * order.step)), T::load8(pb.add(kk * order.step + 8))];
                for (r, accr) in acc.iter_mut().enumerate() {
                    let a = _mm256_set1_ps(*pa.add(kk * MR + r));
                    for j in 0..SUB {
                        accr[j] = _mm256_fmadd_ps(a, b[j], accr[j]);
                    }
                }
            }
        } else {
            for kk in 0..t.kc {
                let b: [__m256; SUB] = [T::load8(pb.add(kk * order.step)), T::load8(pb.add(kk * order.step + 8))];
                for (r, accr) in acc.iter_mut().enumerate().take(t.rows) {
                    let a = _mm256_set1_ps(*pa.add(kk * MR + r));
                    for j in 0..SUB {
                        accr[j] = _mm256_fmadd_ps(a, b[j], accr[j]);
                    }
                }
            }
        }
        store(&acc, t, c0, dst);
    }
}

/// The rows of `x` in the order the tiles read them: for each tile of MR rows, for each step
/// of k, its MR values (rows past the last are zeros, never stored). Read from the rows in
/// place, a tile took its MR activations from MR places a row apart, one address register
/// each: the loop ran out of general registers and reloaded row addresses from the stack,
/// and the MR streams competed with the panel for L1. Packed, a tile reads one stream.
/// The values and the order of each element's sums are unchanged (the same bits).
fn pack_rows(x: Lhs<'_>, k: usize, parallel: bool) -> Vec<f32> {
    let mut packed = vec![0f32; x.rows.div_ceil(MR) * MR * k];
    let pack = |(tile, out): (usize, &mut [f32])| {
        for r in 0..MR.min(x.rows - tile * MR) {
            let row = &x.data[(tile * MR + r) * x.stride..][..k];
            for (kk, &v) in row.iter().enumerate() {
                out[kk * MR + r] = v;
            }
        }
    };
    if parallel && x.rows > 64 {
        packed.par_chunks_mut(MR * k.max(1)).enumerate().for_each(pack);
    } else {
        packed.chunks_mut(MR * k.max(1)).enumerate().for_each(pack);
    }
    packed
}

/// The accumulators of the tile's columns `c0..c0 + 16`: the bias (plus dst when
/// accumulating) on the first pass over k, dst's partial sums on later passes. Lanes past
/// `t.cols` are zero. (Not a `target_feature` function, so that it is inlined into `tile`,
/// which has them; no closures around intrinsics either, which would not be.)
#[inline(always)]
unsafe fn start(t: &Tile, c0: usize, bias: Option<&[f32]>, dst: &mut TileDst, accumulate: bool) -> [[__m256; SUB]; MR] {
    let cols = t.cols.min(c0 + SUB_COLS) - c0;
    let mut acc = [[_mm256_setzero_ps(); SUB]; MR];
    for (r, accr) in acc.iter_mut().enumerate().take(t.rows) {
        let out = &dst.row(r)[c0..c0 + cols];
        // At the tile's edge, through zero-padded copies of the bias and dst columns.
        let (mut bias_row, mut out_row) = ([0f32; SUB_COLS], [0f32; SUB_COLS]);
        let (b, o) = if cols == SUB_COLS {
            (bias.map(|b| b[c0..].as_ptr()), out.as_ptr())
        } else {
            if let Some(bias) = bias {
                bias_row[..cols].copy_from_slice(&bias[c0..c0 + cols]);
            }
            out_row[..cols].copy_from_slice(out);
            (bias.map(|_| bias_row.as_ptr()), out_row.as_ptr())
        };
        for (j, v) in accr.iter_mut().enumerate() {
            let from_dst = _mm256_loadu_ps(o.add(8 * j));
            *v = if t.first() {
                let b = match b {
                    Some(b) => _mm256_loadu_ps(b.add(8 * j)),
                    None => _mm256_setzero_ps(),
                };
                if accumulate { _mm256_add_ps(b, from_dst) } else { b }
            } else {
                from_dst
            };
        }
    }
    acc
}

/// Writes the first `t.rows` rows of accumulators back to the tile's columns `c0..`.
#[inline(always)]
unsafe fn store(acc: &[[__m256; SUB]; MR], t: &Tile, c0: usize, dst: &mut TileDst) {
    let cols = t.cols.min(c0 + SUB_COLS) - c0;
    for (r, accr) in acc.iter().enumerate().take(t.rows) {
        let out = &mut dst.row(r)[c0..c0 + cols];
        if cols == SUB_COLS {
            for (j, v) in accr.iter().enumerate() {
                _mm256_storeu_ps(out.as_mut_ptr().add(8 * j), *v);
            }
        } else {
            let mut row = [0f32; SUB_COLS];
            for (j, v) in accr.iter().enumerate() {
                _mm256_storeu_ps(row.as_mut_ptr().add(8 * j), *v);
            }
            out.copy_from_slice(&row[..cols]);
        }
    }
}
