//! Multi-head self-attention on the packed microkernels, one task per (sequence, head).
//!
//! Batch invariance: a sequence attends over its own keys only. Its key count is its own
//! length (its last unmasked position + 1), never the batch's padded length; a query's
//! softmax runs over exactly the keys it may see, and the keys it may not see get a
//! probability of exactly 0, so they add exact zeros to its sum over values. Both products
//! go through the same microkernels as the dense layers (K and V packed per task), whose
//! per-row arithmetic does not depend on the number of rows. So a sequence's attention is
//! the same bits alone or in any batch, with any padding.

use rayon::prelude::*;

use super::elementwise::softmax_in_place;
use super::matmul::{matmul_f32, Lhs, Microkernel, Product, WEIGHT_GROUP};
use super::panels::Panels;

/// Which keys each query may attend to; `None` where a mask is taken means every key
/// (the vision towers).
#[derive(Debug, Clone)]
pub struct AttentionMask {
    /// Queries attend only to keys at or before their own position.
    pub causal: bool,
    /// (B, L), false for padding keys.
    pub keep: Vec<bool>,
}

/// Which positions of each sequence are queries.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Queries<'a> {
    /// Every position: the output is (B·L, D).
    All,
    /// One position per sequence (`pooled[s]`): the output is (B, D).
    Pooled(&'a [usize]),
}

/// The shape of one attention call over a (B·L, 3D) buffer of fused q, k, v projections
/// (q already scaled by head_dim^-0.5).
#[derive(Debug, Clone, Copy)]
pub(crate) struct AttentionShape {
    pub batch: usize,
    pub len: usize,
    pub hidden: usize,
    pub heads: usize,
}

/// Buffers one task reuses from one (sequence, head) to the next.
#[derive(Default)]
struct TaskScratch {
    keys: Panels<f32>,
    values: Panels<f32>,
    scores: Vec<f32>,
}

/// softmax(q kᵀ + mask) v for every (sequence, head), reading q, k and v from `qkv`, into
/// `out` ((B·L, D) or (B, D), see [`Queries`]). `ctx` is scratch of the same size as `out`.
pub(crate) fn self_attention(
    qkv: &[f32],
    shape: AttentionShape,
    queries: Queries,
    mask: Option<&AttentionMask>,
    ctx: &mut Vec<f32>,
    out: &mut [f32],
) {
    let AttentionShape { batch: b, len, hidden: d, heads } = shape;
    let hd = d / heads;
    let nq = match queries {
        Queries::All => len,
        Queries::Pooled(p) => {
            assert_eq!(p.len(), b);
            1
        }
    };
    assert!(qkv.len() >= b * len * 3 * d && out.len() >= b * nq * d);
    if let Some(m) = mask {
        assert_eq!(m.keep.len(), b * len, "attention mask of {} for {b} × {len}", m.keep.len());
    }
    let kernel = Microkernel::best();
    // P·V's panels are hd columns wide.
    let v_group = kernel.group_for(hd);
    ctx.clear();
    ctx.resize(b * heads * nq * hd, 0.0);
    // Each task writes its head's (nq, hd) block of `ctx`, head-major; merged into `out` below.
    ctx.par_chunks_mut(nq * hd).enumerate().for_each_init(TaskScratch::default, |scratch, (task, ctx)| {
        let (s, h) = (task / heads, task % heads);
        let keep = mask.map(|m| &m.keep[s * len..(s + 1) * len]);
        // The sequence's own length: nothing after its last kept position is a key.
        let keys = keep.map_or(len, |k| k.iter().rposition(|&kept| kept).map_or(0, |p| p + 1));
        let (q0, nq) = match queries {
            Queries::All => (0, len),
            Queries::Pooled(p) => (p[s], 1),
        };
        let row = |pos: usize| &qkv[(s * len + pos) * 3 * d..][..3 * d];
        let TaskScratch { keys: kp, values: vp, scores } = scratch;
        // scores (nq, keys) = q (nq, hd) · kᵀ: the keys are the "weights" (n = keys, k = hd).
        kp.repack_from_rows(keys, hd, WEIGHT_GROUP, |j| &row(j)[d + h * hd..][..hd]);
        scores.clear();
        scores.resize(nq * keys, 0.0);
        let q = Lhs { data: &qkv[(s * len + q0) * 3 * d + h * hd..], rows: nq, stride: 3 * d };
        matmul_f32(kernel, kp, Product { x: q, bias: None, accumulate: false, parallel: false }, scores, keys);
        for i in 0..nq {
            let r = &mut scores[i * keys..(i + 1) * keys];
            let causal_end = if mask.is_some_and(|m| m.causal) { (q0 + i + 1).min(keys) } else { keys };
            masked_softmax(r, causal_end, keep);
        }
        // ctx (nq, hd) = probs (nq, keys) · v (keys, hd): vᵀ is the "weights" (n = hd, k = keys).
        vp.repack_from_steps(hd, keys, v_group, |j| &row(j)[2 * d + h * hd..][..hd]);
        let probs = Lhs { data: scores, rows: nq, stride: keys };
        matmul_f32(kernel, vp, Product { x: probs, bias: None, accumulate: false, parallel: false }, ctx, hd);
    });
    // out[s, i, h·hd..] = ctx[s, h, i, ..]
    out[..b * nq * d].par_chunks_mut(d).enumerate().for_each(|(r, out_row)| {
        let (s, i) = (r / nq, r % nq);
        for h in 0..heads {
            out_row[h * hd..(h + 1) * hd].copy_from_slice(&ctx[((s * heads + h) * nq + i) * hd..][..hd]);
        }
    });
}

/// Softmax of a query's scores over the keys it may see — those before `end` that `keep`
/// (when given) keeps — with every other probability exactly 0. With no key to see, every
/// probability is 0 (the output is zero).
fn masked_softmax(r: &mut [f32], end: usize, keep: Option<&[bool]>) {
    let keep = keep.map(|k| &k[..end]);
    if keep.is_none_or(|k| k.iter().all(|&kept| kept)) {
        // The common case: the visible keys are a prefix.
        if end > 0 {
            softmax_in_place(&mut r[..end]);
        }
    } else if let Some(keep) = keep {
        let max = r[..end].iter().zip(keep).filter(|(_, &k)| k).map(|(&v, _)| v).fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f32;
        for (v, &k) in r[..end].iter_mut().zip(keep) {
            *v = if k { super::elementwise::exp(*v - max) } else { 0.0 };
            sum += *v;
        }
        if sum > 0.0 {
            let inv = 1.0 / sum;
            r[..end].iter_mut().for_each(|v| *v *= inv);
        }
    }
    r[end..].fill(0.0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::tests::values;

    /// softmax(q kᵀ) v in f64, straight from the definition, over the visible keys.
    fn reference(qkv: &[f32], shape: AttentionShape, s: usize, h: usize, qpos: usize, visible: impl Fn(usize) -> bool) -> Vec<f64> {
        let AttentionShape { len, hidden: d, heads, .. } = shape;
        let hd = d / heads;
        let at = |pos: usize, part: usize, c: usize| qkv[(s * len + pos) * 3 * d + part * d + h * hd + c] as f64;
        let keys: Vec<usize> = (0..len).filter(|&j| visible(j)).collect();
        let scores: Vec<f64> = keys.iter().map(|&j| (0..hd).map(|c| at(qpos, 0, c) * at(j, 1, c)).sum()).collect();
        let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = scores.iter().map(|v| (v - max).exp()).collect();
        let z: f64 = e.iter().sum();
        (0..hd).map(|c| keys.iter().zip(&e).map(|(&j, p)| p / z * at(j, 2, c)).sum()).collect()
    }

    #[test]
    fn matches_the_definition_with_causal_and_padding_masks() {
        // Head dims that take each panel width: 8 and 40 (48 columns), 64 (64 columns).
        for (hidden, heads) in [(16, 2), (80, 2), (128, 2)] {
            let shape = AttentionShape { batch: 2, len: 7, hidden, heads };
            let qkv = values(2 * 7 * 3 * hidden, 5);
            // Sequence 0 is 7 tokens, sequence 1 is 4 tokens then padding.
            let keep: Vec<bool> = (0..14).map(|i| i < 7 || i - 7 < 4).collect();
            for causal in [false, true] {
                let mask = AttentionMask { causal, keep: keep.clone() };
                let mut out = vec![f32::NAN; 2 * 7 * hidden];
                self_attention(&qkv, shape, Queries::All, Some(&mask), &mut Vec::new(), &mut out);
                for s in 0..2 {
                    for pos in 0..7 {
                        for h in 0..heads {
                            let want = reference(&qkv, shape, s, h, pos, |j| keep[s * 7 + j] && (!causal || j <= pos));
                            let hd = hidden / heads;
                            let got = &out[(s * 7 + pos) * hidden + h * hd..][..hd];
                            for (g, w) in got.iter().zip(&want) {
                                assert!((*g as f64 - w).abs() < 1e-5, "causal {causal} s {s} pos {pos} h {h}: {g} vs {w}");
                            }
                        }
                    }
                }
                // The pooled query gives the same bits as the same query among all of them.
                let pooled = [6, 3];
                let mut one = vec![f32::NAN; 2 * hidden];
                self_attention(&qkv, shape, Queries::Pooled(&pooled), Some(&mask), &mut Vec::new(), &mut one);
                for s in 0..2 {
                    let all = &out[(s * 7 + pooled[s]) * hidden..][..hidden];
                    assert_eq!(all.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), one[s * hidden..][..hidden].iter().map(|v| v.to_bits()).collect::<Vec<_>>());
                }
            }
        }
    }

    /// A sequence gives the same bits alone as inside a padded batch, at either position.
    #[test]
    fn a_sequence_is_the_same_alone_and_in_a_padded_batch() {
        let (hidden, heads, short, long) = (32, 2, 5, 11);
        let alone_qkv = values(short * 3 * hidden, 8);
        let other = values(long * 3 * hidden, 9);
        let run = |qkv: &[f32], batch: usize, len: usize, keep: Vec<bool>| {
            let mut out = vec![0f32; batch * len * hidden];
            let mask = AttentionMask { causal: true, keep };
            self_attention(qkv, AttentionShape { batch, len, hidden, heads }, Queries::All, Some(&mask), &mut Vec::new(), &mut out);
            out
        };
        let alone = run(&alone_qkv, 1, short, vec![true; short]);
        // Padded to `long` after `short` tokens (the padding rows hold arbitrary values).
        let mut padded = alone_qkv.clone();
        padded.extend(values((long - short) * 3 * hidden, 10));
        for first in [true, false] {
            let (qkv, keep) = if first {
                ([&padded[..], &other[..]].concat(), (0..2 * long).map(|i| i < short || i >= long).collect())
            } else {
                ([&other[..], &padded[..]].concat(), (0..2 * long).map(|i| i < long || i - long < short).collect())
            };
            let batch = run(&qkv, 2, long, keep);
            let at = if first { 0 } else { long * hidden };
            let got: Vec<u32> = batch[at..at + short * hidden].iter().map(|v| v.to_bits()).collect();
            let want: Vec<u32> = alone.iter().map(|v| v.to_bits()).collect();
            assert_eq!(got, want, "first {first}");
        }
    }
}
