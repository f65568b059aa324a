//! The reference implementation of the kernel's arithmetic (see the module above): plain
//! Rust, one (query, row) pair at a time. `f32::mul_add` is a fused multiply-add with one
//! rounding, exactly as the SIMD FMA instructions compute it.

use super::{reduce_lanes, LANES};

pub(super) fn dots(queries: &[f32], rows: &[f32], dim: usize, out: &mut [f32]) {
    let n = rows.len() / dim;
    for (q, out_row) in queries.chunks_exact(dim).zip(out.chunks_exact_mut(n)) {
        for (r, o) in rows.chunks_exact(dim).zip(out_row.iter_mut()) {
            *o = dot(q, r);
        }
    }
}

fn dot(q: &[f32], r: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut chunks = q.chunks(LANES).zip(r.chunks(LANES));
    for (qc, rc) in &mut chunks {
        // A partial last chunk is zero-padded: 0 × 0 + acc, as the masked SIMD load does.
        for l in 0..LANES {
            let (x, y) = (qc.get(l).copied().unwrap_or(0.0), rc.get(l).copied().unwrap_or(0.0));
            acc[l] = x.mul_add(y, acc[l]);
        }
    }
    reduce_lanes(&acc)
}
