//! `dst (m, n) [+]= x (m, k) · wᵀ + b` in f32 with AVX2 FMA (x86 CPUs without AVX-512), on
//! 48-column panels of f32 weights, or of bf16 weights widened exactly as they are read (bf16
//! checkpoints on CPUs without AVX512_BF16: half the memory of f32, f32 arithmetic).

use std::arch::x86_64::*;
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::ops::matmul::Product;
use crate::ops::panels::{Bf16Bits, PanelValue, Panels};
use crate::ops::tile::{self, Tile, TileDst, TileShape};

/// Rows per call.
const MR: usize = 4;
/// 8-column vectors per panel row.
const NB: usize = 6;
const GROUP: usize = 8 * NB;
/// A call covers its rows' 48 columns as three sub-tiles of 2 vectors: 4 rows × 2 vectors =
/// 8 accumulators, with 2 weight vectors and a broadcast activation: 11 of AVX2's 16
/// registers, and 8 independent FMAs in flight cover Zen 3's FMA latency (4 cycles, 2 per
/// cycle). The earlier 4 × 24 sub-tile needed all 16 registers, and 6 × 16 needs 15; in both
/// LLVM kept one accumulator on the stack (a store and a reload in the inner loop: a
/// loop-carried dependency through memory, seen in the disassembly), and the f32 CLIP rows
/// ran at about 30 % of the FMA peak on Zen 3. This shape's inner loop has no vector spill.
/// Every output element still adds its k products in order from the bias, so the results
/// are the same bits as before.
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
    /// Whether values are widened as they are read (then a block read by many row tiles is
    /// widened once instead).
    const WIDENED: bool;

    /// Eight consecutive values from `p`, as f32.
    ///
    /// # Safety
    /// AVX2 must be available and `p` must point to eight readable values.
    unsafe fn load8(p: *const Self) -> __m256;
}

impl Avx2Panel for f32 {
    const WIDENED: bool = false;

    #[inline(always)]
    unsafe fn load8(p: *const Self) -> __m256 {
        _mm256_loadu_ps(p)
    }
}

impl Avx2Panel for Bf16Bits {
    const WIDENED: bool = true;

    /// bf16 → f32 is exact: the bits shifted into the high half.
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> __m256 {
        let h = _mm_loadu_si128(p as *const __m128i);
        _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
    }
}

/// Distinguishes the products, so a thread's widened block is never taken for another's.
static PRODUCTS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// The block of a widened panel this thread last widened: (product, group, k0) and the
    /// values. The tiles of one group run on one thread, one pass after the other.
    static WIDE_BLOCK: RefCell<((u64, usize, usize), Vec<f32>)> = const { RefCell::new(((u64::MAX, 0, 0), Vec::new())) };
}

/// The product `p` with right operand `w`, rows of dst `dst_stride` apart.
pub fn matmul<T: Avx2Panel>(w: &Panels<T>, p: Product, dst: &mut [f32], dst_stride: usize) {
    assert!(available(), "AVX2 + FMA kernel on a CPU without them");
    assert_eq!(w.group(), GROUP, "the AVX2 kernel takes panels of {GROUP} columns");
    let (n, k) = (w.n(), w.k());
    p.check(n, k);
    let Product { x, bias, accumulate, parallel } = p;
    // Widened panels read by several row tiles are widened a block at a time (exactly: the
    // products are the same bits either way).
    let widen_blocks = T::WIDENED && x.rows > MR;
    let product = PRODUCTS.fetch_add(1, Ordering::Relaxed);
    tile::walk(x.rows, n, k, TileShape { group: GROUP, kc: KC, mr: MR }, dst, dst_stride, parallel, |t, out| {
        let xs = &x.data[t.r * x.stride + t.k0..];
        let bias = bias.map(|b| &b[t.group * GROUP..]);
        let block = &w.block(t.group, t.k0)[..t.kc * GROUP];
        if !widen_blocks {
            // SAFETY: the features were checked above; `p.check` and the panel layout bound
            // the reads (see `tile`).
            return unsafe { tile(xs, x.stride, t, block, bias, out, accumulate) };
        }
        WIDE_BLOCK.with(|wide| {
            let (key, values) = &mut *wide.borrow_mut();
            if *key != (product, t.group, t.k0) {
                values.clear();
                values.extend(block.iter().map(|v| v.widen()));
                *key = (product, t.group, t.k0);
            }
            // SAFETY: as above; `values` holds the block's `t.kc · 48` values.
            unsafe { tile(xs, x.stride, t, &values[..], bias, out, accumulate) }
        })
    });
}

/// One tile: `t.rows` (≤ 4) rows of `x` (row `i` at `x[i · x_stride..]`, from this pass's
/// first step of k) times `t.kc` rows of the panel. The first pass starts from the bias (plus
/// dst when accumulating); later passes from the partial sums in dst.
///
/// # Safety
/// AVX2 and FMA must be available; `x` must hold `(t.rows − 1) · x_stride + t.kc` values and
/// `panel` `t.kc · 48` (as `Lhs::check` and `Panels::block` guarantee).
#[target_feature(enable = "avx2,fma")]
unsafe fn tile<T: Avx2Panel>(x: &[f32], x_stride: usize, t: &Tile, panel: &[T], bias: Option<&[f32]>, dst: &mut TileDst, accumulate: bool) {
    debug_assert!(t.rows == 0 || x.len() >= (t.rows - 1) * x_stride + t.kc);
    debug_assert!(panel.len() >= t.kc * GROUP);
    let (pb, pa) = (panel.as_ptr(), x.as_ptr());
    for c0 in [0, SUB_COLS, 2 * SUB_COLS] {
        if c0 >= t.cols {
            break;
        }
        let mut acc = start(t, c0, bias, dst, accumulate);
        // The same instructions for every row whatever the tile's height: a full tile only
        // lets the compiler unroll the rows.
        if t.rows == MR {
            for kk in 0..t.kc {
                let b: [__m256; SUB] = [T::load8(pb.add(kk * GROUP + c0)), T::load8(pb.add(kk * GROUP + c0 + 8))];
                for (r, accr) in acc.iter_mut().enumerate() {
                    let a = _mm256_set1_ps(*pa.add(r * x_stride + kk));
                    for j in 0..SUB {
                        accr[j] = _mm256_fmadd_ps(a, b[j], accr[j]);
                    }
                }
            }
        } else {
            for kk in 0..t.kc {
                let b: [__m256; SUB] = [T::load8(pb.add(kk * GROUP + c0)), T::load8(pb.add(kk * GROUP + c0 + 8))];
                for (r, accr) in acc.iter_mut().enumerate().take(t.rows) {
                    let a = _mm256_set1_ps(*pa.add(r * x_stride + kk));
                    for j in 0..SUB {
                        accr[j] = _mm256_fmadd_ps(a, b[j], accr[j]);
                    }
                }
            }
        }
        store(&acc, t, c0, dst);
    }
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
