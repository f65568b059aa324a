//! The order every microkernel walks a product in, and the part of the output one call may
//! write.
//!
//! A product `dst (m, n) [+]= x (m, k) · wᵀ` is cut into column groups (one packed weight
//! panel each, processed in parallel), within a group into passes over k (so the panel's
//! block stays in cache), and within a pass into tiles of rows. The arithmetic of one output
//! element is the same whatever m is and whichever tile its row falls in: it starts from the
//! bias (plus dst when accumulating) and adds its k products in order, the partial sums
//! stored to dst and read back exactly between passes. That is what makes every product of
//! [`super`] batch-invariant.

use std::marker::PhantomData;

use rayon::prelude::*;

/// How a microkernel cuts a product: `group` output columns per panel, `kc` steps of k per
/// pass, `mr` rows per call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TileShape {
    pub group: usize,
    pub kc: usize,
    pub mr: usize,
}

/// One microkernel call's place in a product.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tile {
    /// Index of the column group (the weight panel).
    pub group: usize,
    /// Columns of the group that exist (the last group may be narrower).
    pub cols: usize,
    /// First step of k of this pass, and its length.
    pub k0: usize,
    pub kc: usize,
    /// First row, and how many rows (≤ `mr`).
    pub r: usize,
    pub rows: usize,
}

impl Tile {
    /// Whether this is the first pass over k (the accumulators start from the bias).
    pub fn first(&self) -> bool {
        self.k0 == 0
    }
}

/// The rows of dst a tile covers, restricted to the tile's columns: no other call of the
/// walk can write them while this one runs.
pub(crate) struct TileDst<'a> {
    /// Row 0, column 0 of the tile.
    ptr: *mut f32,
    stride: usize,
    cols: usize,
    rows: usize,
    _dst: PhantomData<&'a mut [f32]>,
}

impl TileDst<'_> {
    /// Row `i` of the tile (its `cols` columns).
    pub fn row(&mut self, i: usize) -> &mut [f32] {
        assert!(i < self.rows, "row {i} of a {}-row tile", self.rows);
        // SAFETY: `walk` checked that every row of the product lies inside dst; the tile's
        // columns of its rows are written by no other call while this one runs (groups are
        // disjoint column ranges, and the tiles of one group run one after the other).
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(i * self.stride), self.cols) }
    }
}

/// Lets the column groups of one product write their columns of dst from several threads.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: only used by `walk`, whose calls write disjoint parts of the buffer.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// A method (not `.0`) so that closures capture the whole `Sync` wrapper.
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Calls `kernel` on every tile of an (m × n) product with `k` steps, in the order described
/// in the module documentation: column groups in parallel (when `parallel`), then passes over
/// k, then row tiles. `dst` holds the m rows, `dst_stride` apart.
#[allow(clippy::too_many_arguments)]
pub(crate) fn walk(
    m: usize,
    n: usize,
    k: usize,
    shape: TileShape,
    dst: &mut [f32],
    dst_stride: usize,
    parallel: bool,
    kernel: impl Fn(&Tile, &mut TileDst) + Sync,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(n <= dst_stride && dst.len() >= (m - 1) * dst_stride + n, "dst too small for {m} rows of {n}");
    let base = SendPtr(dst.as_mut_ptr());
    let group = |g: usize| {
        let cols = (n - g * shape.group).min(shape.group);
        // At least one pass, so that k = 0 still writes the bias.
        for pass in 0..k.div_ceil(shape.kc).max(1) {
            let k0 = pass * shape.kc;
            let mut r = 0;
            while r < m {
                let rows = (m - r).min(shape.mr);
                let tile = Tile { group: g, cols, k0, kc: shape.kc.min(k - k0), r, rows };
                let mut out = TileDst {
                    ptr: base.get().wrapping_add(r * dst_stride + g * shape.group),
                    stride: dst_stride,
                    cols,
                    rows,
                    _dst: PhantomData,
                };
                kernel(&tile, &mut out);
                r += rows;
            }
        }
    };
    let groups = n.div_ceil(shape.group);
    if parallel && groups > 1 {
        (0..groups).into_par_iter().for_each(group);
    } else {
        (0..groups).for_each(group);
    }
}
