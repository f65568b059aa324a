//! The microkernel in plain Rust, for CPUs without the x86 kernels (aarch64, old x86): the
//! same tile walk and per-element order as they, written so the compiler keeps the
//! accumulators in vector registers. Panels hold f32 or bf16 values; bf16 is widened exactly
//! as it is read.

use super::matmul::Product;
use super::panels::{PanelValue, Panels};
use super::tile::{self, Tile, TileDst, TileShape};

/// Rows per call.
pub(crate) const MR: usize = 4;
/// Columns per accumulator vector: the tile's 48 columns are done 8 at a time, each chunk
/// through all of the pass's steps of k, so its MR × 8 accumulators stay in registers.
const LANES: usize = 8;
/// Steps of k per pass.
pub(crate) const KC: usize = 256;

/// Whether the target has fused multiply-add, so that [`f32::mul_add`] is one instruction
/// (without it, it is a libm call: the kernel then multiplies and adds separately).
pub(crate) const TARGET_FMA: bool = cfg!(any(target_arch = "aarch64", target_feature = "fma"));

/// The product `p` with right operand `w`, rows of dst `dst_stride` apart.
pub(crate) fn matmul<T: PanelValue>(w: &Panels<T>, p: Product, dst: &mut [f32], dst_stride: usize) {
    let (n, k, group) = (w.n(), w.k(), w.group());
    assert!(group % LANES == 0, "panels of {group} columns");
    p.check(n, k);
    let x = p.x;
    tile::walk(x.rows, n, k, TileShape { group, kc: KC, mr: MR }, dst, dst_stride, p.parallel, |t, out| {
        let xs = &x.data[t.r * x.stride + t.k0..];
        tile::<T, TARGET_FMA>(xs, x.stride, t, w.block(t.group, t.k0), group, p.bias.map(|b| &b[t.group * group..]), out, p.accumulate)
    });
}

#[inline(always)]
fn madd<const FUSED: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FUSED {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// One tile: `t.rows` (≤ [`MR`]) rows of `x` (row `i` at `x[i·x_stride..]`, from this pass's
/// first step of k) times `t.kc` rows of the panel (`group` values each), into the tile's
/// `t.cols` columns of dst. The first pass starts from the bias (plus dst when accumulating);
/// later passes from the partial sums in dst.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn tile<T: PanelValue, const FUSED: bool>(
    x: &[f32],
    x_stride: usize,
    t: &Tile,
    panel: &[T],
    group: usize,
    bias: Option<&[f32]>,
    dst: &mut TileDst,
    accumulate: bool,
) {
    let xs: [&[f32]; MR] = std::array::from_fn(|r| if r < t.rows { &x[r * x_stride..][..t.kc] } else { &[][..] });
    for c0 in (0..t.cols).step_by(LANES) {
        let lanes = LANES.min(t.cols - c0);
        let mut acc = [[0f32; LANES]; MR];
        for (r, accr) in acc.iter_mut().enumerate().take(t.rows) {
            let out = &dst.row(r)[c0..c0 + lanes];
            for l in 0..lanes {
                accr[l] = if t.first() {
                    let b = bias.map_or(0.0, |b| b[c0 + l]);
                    if accumulate { b + out[l] } else { b }
                } else {
                    out[l]
                };
            }
        }
        for kk in 0..t.kc {
            let b: &[T; LANES] = panel[kk * group + c0..][..LANES].try_into().expect("a panel row");
            for (r, accr) in acc.iter_mut().enumerate().take(t.rows) {
                let a = xs[r][kk];
                for l in 0..LANES {
                    accr[l] = madd::<FUSED>(a, b[l].widen(), accr[l]);
                }
            }
        }
        for (r, accr) in acc.iter().enumerate().take(t.rows) {
            dst.row(r)[c0..c0 + lanes].copy_from_slice(&accr[..lanes]);
        }
    }
}
