//! The pre-norm transformer encoder layer of CLIP and of the BLIP / BLIP-2 vision towers
//! (`x + attn(ln1(x))`, then `x + mlp(ln2(x))`) on these kernels. The weights come from the
//! models' loaders (`clip.rs`, `blip.rs`), which know the checkpoints' tensor names.

use candle_core::{DType, Result, Tensor};

use super::attention::{self_attention, AttentionMask, AttentionShape, Queries};
use super::dense::Dense;
use super::elementwise::{activate, LayerNormF32};
use crate::activation::HiddenAct;

/// The weights of one encoder layer.
#[derive(Debug, Clone)]
pub struct EncoderLayerWeights {
    /// q, k, v projections stacked into (3D, D); q's rows and bias scaled by head_dim^-0.5.
    pub(crate) qkv: Dense,
    pub(crate) out_proj: Dense,
    pub(crate) ln1: LayerNormF32,
    pub(crate) ln2: LayerNormF32,
    pub(crate) fc1: Dense,
    pub(crate) fc2: Dense,
}

/// A pre-norm encoder layer in f32.
#[derive(Debug, Clone)]
pub struct CpuEncoderLayer {
    w: EncoderLayerWeights,
    act: HiddenAct,
    heads: usize,
}

/// Buffers reused across the layers of one forward pass.
#[derive(Default)]
pub struct Scratch {
    normed: Vec<f32>,
    qkv: Vec<f32>,
    attn: Vec<f32>,
    ctx: Vec<f32>,
    hidden: Vec<f32>,
}

impl Scratch {
    fn ensure(&mut self, m: usize, d: usize, inter: usize) {
        for (buf, n) in [(&mut self.normed, m * d), (&mut self.qkv, 3 * m * d), (&mut self.attn, m * d), (&mut self.hidden, m * inter)] {
            if buf.len() < n {
                buf.resize(n, 0.0);
            }
        }
    }
}

impl CpuEncoderLayer {
    pub(crate) fn new(weights: EncoderLayerWeights, act: HiddenAct, heads: usize) -> Self {
        Self { w: weights, act, heads }
    }

    fn shape(&self, batch: usize, len: usize) -> AttentionShape {
        AttentionShape { batch, len, hidden: self.w.qkv.in_dim(), heads: self.heads }
    }

    /// Updates `x` (B·L rows of D) in place; `scratch` is reused between layers.
    pub fn forward(&self, x: &mut [f32], b: usize, len: usize, mask: Option<&AttentionMask>, scratch: &mut Scratch) {
        let d = self.w.qkv.in_dim();
        let (m, inter) = (b * len, self.w.fc1.out_dim());
        scratch.ensure(m, d, inter);
        let Scratch { normed, qkv, attn, ctx, hidden } = scratch;
        let (normed, qkv, attn, hidden) = (&mut normed[..m * d], &mut qkv[..m * 3 * d], &mut attn[..m * d], &mut hidden[..m * inter]);
        self.w.ln1.forward_into(x, normed);
        self.w.qkv.forward_into(normed, m, qkv, false);
        self_attention(qkv, self.shape(b, len), Queries::All, mask, ctx, attn);
        self.w.out_proj.forward_into(attn, m, x, true);
        self.mlp(x, m, normed, hidden);
    }

    /// The layer's output at one position per sequence only (`pooled[s]`), as (B, D): what
    /// the last layer of a tower needs before pooling. Keys and values still come from every
    /// position, but the attention queries, `out_proj` and the MLP run on B rows, not B·L.
    pub fn forward_pooled(&self, x: &[f32], b: usize, len: usize, pooled: &[usize], mask: Option<&AttentionMask>, scratch: &mut Scratch) -> Vec<f32> {
        let d = self.w.qkv.in_dim();
        let (m, inter) = (b * len, self.w.fc1.out_dim());
        scratch.ensure(m, d, inter);
        let Scratch { normed, qkv, attn, ctx, hidden } = scratch;
        let (normed, qkv) = (&mut normed[..m * d], &mut qkv[..m * 3 * d]);
        self.w.ln1.forward_into(x, normed);
        self.w.qkv.forward_into(normed, m, qkv, false);
        let attn = &mut attn[..b * d];
        self_attention(qkv, self.shape(b, len), Queries::Pooled(pooled), mask, ctx, attn);
        let mut out: Vec<f32> = pooled.iter().enumerate().flat_map(|(s, &p)| x[(s * len + p) * d..][..d].iter().copied()).collect();
        self.w.out_proj.forward_into(attn, b, &mut out, true);
        self.mlp(&mut out, b, &mut normed[..b * d], &mut hidden[..b * inter]);
        out
    }

    /// `x += mlp(ln2(x))` on `m` rows.
    fn mlp(&self, x: &mut [f32], m: usize, normed: &mut [f32], hidden: &mut [f32]) {
        self.w.ln2.forward_into(x, normed);
        self.w.fc1.forward_into(normed, m, hidden, false);
        activate(self.act, hidden, self.w.fc1.out_dim());
        self.w.fc2.forward_into(hidden, m, x, true);
    }
}

/// A stack of [`CpuEncoderLayer`]s over candle tensors.
#[derive(Debug, Clone)]
pub struct CpuEncoder {
    layers: Vec<CpuEncoderLayer>,
}

impl CpuEncoder {
    pub fn new(layers: Vec<CpuEncoderLayer>) -> Self {
        Self { layers }
    }

    /// `xs` (B, N, D) in any dtype → the last layer's states at every position, same shape
    /// and dtype (the image tokens a captioner's text side attends to).
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, n, d) = xs.dims3()?;
        let mut x = xs.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let mut scratch = Scratch::default();
        for layer in &self.layers {
            layer.forward(&mut x, b, n, None, &mut scratch);
        }
        Tensor::from_vec(x, (b, n, d), xs.device())?.to_dtype(xs.dtype())
    }

    /// `xs` (B, N, D) → the final states at position `pooled[s]` of each sequence, (B, D) in
    /// `xs`'s dtype. The last layer runs its queries, `out_proj` and MLP on those rows only.
    pub fn forward_pooled(&self, xs: &Tensor, mask: Option<&AttentionMask>, pooled: &[usize]) -> Result<Tensor> {
        let (b, n, d) = xs.dims3()?;
        let Some((last, rest)) = self.layers.split_last() else {
            let index: Vec<u32> = pooled.iter().enumerate().map(|(s, &p)| (s * n + p) as u32).collect();
            return xs.reshape((b * n, d))?.index_select(&Tensor::from_vec(index, b, xs.device())?, 0);
        };
        let mut x = xs.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let mut scratch = Scratch::default();
        for layer in rest {
            layer.forward(&mut x, b, n, mask, &mut scratch);
        }
        let out = last.forward_pooled(&x, b, n, pooled, mask, &mut scratch);
        Tensor::from_vec(out, (b, d), xs.device())?.to_dtype(xs.dtype())
    }
}
