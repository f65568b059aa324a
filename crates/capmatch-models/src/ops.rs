//! CPU kernels for transformer layers, on plain row-major `f32` buffers.
//!
//! Why not candle ops: on a small CPU the profile of CLIP through candle's tensor ops was
//! half gemm and half overhead — a fresh zeroed allocation per op (page faults), spin-waiting
//! in candle's elementwise thread barrier, `contiguous()` copies of the attention heads, and
//! for bf16 a widening of every weight matrix to f32 on every matmul (candle has no bf16 CPU
//! gemm). Here a [`CpuEncoderLayer`] keeps its weights packed once (QKV fused into one
//! matrix, the attention scale folded into Q), and a forward pass is a handful of matrix
//! products that add the bias and the residual in place (`dst = dst + x · wᵀ`), with layer
//! norm, softmax and the activation as single vectorised passes over rows, parallel with
//! rayon. `Dense` is the product, used by these layers and by `crate::layers::Lin`:
//!
//! - f32 weights: packed into 48-column panels for an AVX-512 FMA microkernel (`f32x86`),
//!   or, without AVX-512, `gemm` (and a streaming dot-product path for a few rows);
//! - bf16 weights on CPUs with AVX512_BF16: packed for `vdpbf16ps` (`bf16x86`), each
//!   product's activations rounded to bf16 as PyTorch's bf16 linear does, f32 accumulation;
//!   elsewhere widened to f32 once at load.
//!
//! Activations stay f32 between the products whatever the weights' dtype.

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use gemm::{gemm, Parallelism};
use rayon::prelude::*;

use crate::clip::HiddenAct;

/// Value added to masked attention scores (finite, so that a fully masked row stays finite).
const MASKED: f32 = -1e30;

fn parallelism() -> Parallelism {
    match rayon::current_num_threads() {
        0 | 1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    }
}

/// A weight tensor as an f32 vector, whatever dtype `vb` loads in.
fn get_f32(vb: &VarBuilder, shape: &[usize], name: &str) -> Result<Vec<f32>> {
    vb.get(shape, name)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
}

/// Whether bf16 weights are multiplied in bf16 on this CPU (AVX512_BF16): activations are
/// then rounded to bf16 at each product, as PyTorch's bf16 linear does. Where not, bf16
/// weights are widened to f32 (once at load, or per product where memory matters).
pub fn cpu_has_bf16_matmul() -> bool {
    #[cfg(target_arch = "x86_64")]
    return bf16x86::available();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `y = x · wᵀ + b`, with `w` (out, in) as stored by `nn.Linear`: f32 weights through
/// `gemm`, or bf16 weights packed for `vdpbf16ps` (see [`cpu_has_bf16_matmul`]).
#[derive(Debug, Clone)]
pub(crate) struct Dense {
    w: Vec<f32>,
    b: Vec<f32>,
    in_dim: usize,
    out_dim: usize,
    /// Set for bf16 checkpoints on CPUs with AVX512_BF16: the matmul then runs in bf16.
    #[cfg(target_arch = "x86_64")]
    bf16: Option<bf16x86::PackedWeight>,
    /// Set for f32 on CPUs with AVX-512 (`w` is then empty): packed once, so no call packs.
    #[cfg(target_arch = "x86_64")]
    f32_packed: Option<f32x86::PackedF32>,
}

impl Dense {
    fn load(vb: &VarBuilder, in_dim: usize, out_dim: usize) -> Result<Self> {
        Self::from_tensors(&vb.get((out_dim, in_dim), "weight")?, Some(&vb.get(out_dim, "bias")?), vb.dtype())
    }

    /// From a weight tensor `(out, in)` and an optional bias, computing in `dtype`'s way:
    /// bf16 (activations rounded to bf16, f32 accumulation, as PyTorch's bf16 linear) when
    /// `dtype` is bf16 and the CPU has the instructions, f32 otherwise.
    pub(crate) fn from_tensors(w: &Tensor, b: Option<&Tensor>, dtype: DType) -> Result<Self> {
        let (out_dim, in_dim) = w.dims2()?;
        let flat = |t: &Tensor| t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>();
        let b = match b {
            Some(b) => flat(b)?,
            None => vec![0.0; out_dim],
        };
        // bf16 weights for the bf16 kernel: packed straight from the tensor's storage.
        #[cfg(target_arch = "x86_64")]
        if dtype == DType::BF16 && w.dtype() == DType::BF16 && bf16x86::available() {
            let w = w.contiguous()?;
            let (storage, layout) = w.storage_and_layout();
            if let candle_core::Storage::Cpu(candle_core::CpuStorage::BF16(data)) = &*storage {
                let data = &data[layout.start_offset()..layout.start_offset() + out_dim * in_dim];
                let packed = bf16x86::PackedWeight::pack_bf16(data, out_dim, in_dim);
                return Ok(Self { w: Vec::new(), b, in_dim, out_dim, bf16: Some(packed), f32_packed: None });
            }
        }
        Ok(Self::new(flat(w)?, b, in_dim, out_dim, dtype))
    }

    pub(crate) fn in_dim(&self) -> usize {
        self.in_dim
    }

    pub(crate) fn out_dim(&self) -> usize {
        self.out_dim
    }

    fn new(w: Vec<f32>, b: Vec<f32>, in_dim: usize, out_dim: usize, dtype: DType) -> Self {
        Self::build(w, b, in_dim, out_dim, dtype, !no_f32_packing())
    }

    /// `pack_f32`: whether f32 weights may be packed for [`f32x86`] (else `gemm` / streaming).
    fn build(w: Vec<f32>, b: Vec<f32>, in_dim: usize, out_dim: usize, dtype: DType, pack_f32: bool) -> Self {
        #[cfg(target_arch = "x86_64")]
        let bf16 = (dtype == DType::BF16 && bf16x86::available()).then(|| bf16x86::PackedWeight::pack(&w, out_dim, in_dim));
        #[cfg(target_arch = "x86_64")]
        let f32_packed = (bf16.is_none() && f32x86::available() && pack_f32).then(|| f32x86::PackedF32::pack(&w, out_dim, in_dim));
        // The row-major copy is then unused: drop it.
        #[cfg(target_arch = "x86_64")]
        let w = if bf16.is_some() || f32_packed.is_some() { Vec::new() } else { w };
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (dtype, pack_f32);
        Self {
            w,
            b,
            in_dim,
            out_dim,
            #[cfg(target_arch = "x86_64")]
            bf16,
            #[cfg(target_arch = "x86_64")]
            f32_packed,
        }
    }

    /// `dst (m, out) = x (m, in) · wᵀ + b`, or `dst += x · wᵀ + b` when `accumulate`.
    pub(crate) fn forward_into(&self, x: &[f32], m: usize, dst: &mut [f32], accumulate: bool) {
        let (k, n) = (self.in_dim, self.out_dim);
        assert!(x.len() == m * k && dst.len() == m * n);
        #[cfg(target_arch = "x86_64")]
        if let Some(p) = &self.bf16 {
            return p.matmul_into(x, m, &self.b, dst, accumulate);
        }
        #[cfg(target_arch = "x86_64")]
        if let Some(p) = &self.f32_packed {
            return p.matmul_into(x, m, &self.b, dst, accumulate);
        }
        if m <= STREAM_ROWS {
            return stream_matmul(x, m, k, &self.w, n, &self.b, dst, accumulate);
        }
        // Seed dst with the bias (added to the residual when accumulating); gemm adds x · wᵀ.
        dst.par_chunks_mut(n).for_each(|row| {
            if accumulate {
                row.iter_mut().zip(&self.b).for_each(|(d, b)| *d += b);
            } else {
                row.copy_from_slice(&self.b);
            }
        });
        // SAFETY: dimensions and strides describe the slices checked above; rhs(k, n) = w(n, k)ᵀ.
        unsafe {
            gemm(
                m, n, k,
                dst.as_mut_ptr(), 1, n as isize, true,
                x.as_ptr(), 1, k as isize,
                self.w.as_ptr(), k as isize, 1,
                1.0, 1.0, false, false, false,
                parallelism(),
            )
        }
    }
}

/// Rows up to which [`Dense`] multiplies f32 weights by [`stream_matmul`] rather than
/// `gemm`: `gemm` packs the whole weight matrix on every call, which for a decoding step
/// (one row per sequence or beam) costs more than the product itself.
const STREAM_ROWS: usize = 16;

/// `dst (m, n) [+]= x (m, k) · wᵀ + b` reading each weight row once, straight from its
/// (out, in) storage: a task per block of output columns, `m` dot products per weight row
/// while the row is in L1. Memory-bound, as a decoding step is.
#[allow(clippy::too_many_arguments)]
fn stream_matmul(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, b: &[f32], dst: &mut [f32], accumulate: bool) {
    const COLS: usize = 32;
    #[inline(always)]
    fn block(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, b: &[f32], j0: usize, dst: SendPtr, accumulate: bool) {
        for (jj, wrow) in w.chunks_exact(k).enumerate() {
            let j = j0 + jj;
            for i in 0..m {
                let v = dot(&x[i * k..(i + 1) * k], wrow) + b[j];
                // SAFETY: column j of every row belongs to this task alone; i < m, j < n.
                unsafe {
                    let d = dst.get().add(i * n + j);
                    *d = if accumulate { *d + v } else { v };
                }
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn block_avx512(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, b: &[f32], j0: usize, dst: SendPtr, accumulate: bool) {
        block(x, m, k, w, n, b, j0, dst, accumulate)
    }
    let out = SendPtr(dst.as_mut_ptr());
    w.par_chunks(COLS * k).enumerate().for_each(|(c, wblock)| {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the feature was just detected.
            return unsafe { block_avx512(x, m, k, wblock, n, b, c * COLS, out, accumulate) };
        }
        block(x, m, k, wblock, n, b, c * COLS, out, accumulate)
    });
}

/// `r = softmax(r)`, vectorised (AVX-512 where the CPU has it).
fn softmax_in_place(r: &mut [f32]) {
    #[inline(always)]
    fn run(r: &mut [f32]) {
        const L: usize = 16;
        let mut lanes = [f32::NEG_INFINITY; L];
        let chunks = r.chunks_exact(L);
        let rest = chunks.remainder().iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        for c in chunks {
            for l in 0..L {
                lanes[l] = lanes[l].max(c[l]);
            }
        }
        let max = lanes.iter().cloned().fold(rest, f32::max);
        let mut sums = [0f32; L];
        let mut chunks = r.chunks_exact_mut(L);
        for c in &mut chunks {
            for l in 0..L {
                c[l] = exp(c[l] - max);
                sums[l] += c[l];
            }
        }
        let mut sum: f32 = 0.0;
        for v in chunks.into_remainder() {
            *v = exp(*v - max);
            sum += *v;
        }
        let inv = 1.0 / (sum + sums.iter().sum::<f32>());
        r.iter_mut().for_each(|v| *v *= inv);
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn run_avx512(r: &mut [f32]) {
        run(r)
    }
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx512f") {
        // SAFETY: the feature was just detected.
        return unsafe { run_avx512(r) };
    }
    run(r)
}

/// `Σ f(v)` over `row` in 16 independent lanes (then across them), so it vectorises.
#[inline(always)]
fn lanes_sum(row: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = row.chunks_exact(16);
    let rest: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
    for c in chunks {
        for l in 0..16 {
            acc[l] += f(c[l]);
        }
    }
    rest + acc.iter().sum::<f32>()
}

/// `Σ a[i]·b[i]` in 16 independent lanes, so the compiler vectorises it.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    const L: usize = 16;
    let mut acc = [0f32; L];
    let (ac, bc) = (a.chunks_exact(L), b.chunks_exact(L));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for l in 0..L {
            acc[l] += x[l] * y[l];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for (x, y) in ar.iter().zip(br) {
        sum += x * y;
    }
    sum
}

#[derive(Debug, Clone)]
struct LayerNormF32 {
    w: Vec<f32>,
    b: Vec<f32>,
    eps: f32,
}

impl LayerNormF32 {
    fn load(vb: &VarBuilder, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self { w: get_f32(vb, &[dim], "weight")?, b: get_f32(vb, &[dim], "bias")?, eps: eps as f32 })
    }

    /// Normalises each row of `x` into `dst` (two passes per row: mean, then variance of the
    /// centred values, as torch does, so no cancellation).
    fn forward_into(&self, x: &[f32], dst: &mut [f32]) {
        #[inline(always)]
        fn row_norm(row: &[f32], out: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
            let d = row.len() as f32;
            // Sums in 16 lanes so they vectorise (a sequential f32 sum cannot).
            let mean = lanes_sum(row, |v| v) / d;
            let var = lanes_sum(row, |v| (v - mean) * (v - mean)) / d;
            let inv = 1.0 / (var + eps).sqrt();
            for i in 0..row.len() {
                out[i] = (row[i] - mean) * inv * w[i] + b[i];
            }
        }
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f")]
        unsafe fn row_norm_avx512(row: &[f32], out: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
            row_norm(row, out, w, b, eps)
        }
        let d = self.w.len();
        #[cfg(target_arch = "x86_64")]
        let avx512 = is_x86_feature_detected!("avx512f");
        dst.par_chunks_mut(d).zip(x.par_chunks(d)).for_each(|(out, row)| {
            #[cfg(target_arch = "x86_64")]
            if avx512 {
                // SAFETY: the feature was detected above.
                return unsafe { row_norm_avx512(row, out, &self.w, &self.b, self.eps) };
            }
            row_norm(row, out, &self.w, &self.b, self.eps)
        });
    }
}

/// Applies the activation in place, parallel over rows. Everything here is written so the
/// compiler vectorises it ([`exp`] rather than libm's scalar `expf`).
pub(crate) fn activate(act: HiddenAct, x: &mut [f32], width: usize) -> Result<()> {
    match act {
        HiddenAct::QuickGelu => for_rows(x, width, |v| v / (1.0 + exp(-1.702 * v))),
        HiddenAct::Gelu => for_rows(x, width, |v| 0.5 * v * (1.0 + erf(v * std::f32::consts::FRAC_1_SQRT_2))),
        HiddenAct::Relu => for_rows(x, width, |v| v.max(0.0)),
        other => {
            let t = Tensor::from_slice(x, x.len(), &Device::Cpu)?;
            x.copy_from_slice(&other.forward(&t)?.to_vec1::<f32>()?);
        }
    }
    Ok(())
}

/// `v = f(v)` over `x`, in parallel chunks of whole rows, with the AVX-512 instantiation of
/// the loop where the CPU has it (the crate itself is built for baseline x86-64).
fn for_rows(x: &mut [f32], width: usize, f: impl Fn(f32) -> f32 + Sync + Copy) {
    #[inline(always)]
    fn apply(chunk: &mut [f32], f: impl Fn(f32) -> f32) {
        chunk.iter_mut().for_each(|v| *v = f(*v));
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn apply_avx512(chunk: &mut [f32], f: impl Fn(f32) -> f32) {
        apply(chunk, f)
    }
    let rows_per_task = (16384 / width.max(1)).max(1);
    x.par_chunks_mut(width * rows_per_task).for_each(|chunk| {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the feature was just detected.
            return unsafe { apply_avx512(chunk, f) };
        }
        apply(chunk, f)
    });
}

/// `e^x` in f32 without a libm call, so loops over it vectorise: `e^x = 2^i · e^r` with
/// `i` the nearest integer of `x·log2 e`, `r = x − i·ln 2` in two parts (Cody–Waite, so `r`
/// is exact enough at large |x|), and a degree-6 polynomial for `e^r`, `|r| ≤ ln2/2`.
/// Relative error ≤ 4e-7; under −87 it flushes to ≈ 0 (what softmax needs), over 88 it
/// saturates.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    // Plain `a * b + c` rather than `mul_add`: without FMA in the target that is a libm call.
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2^23: adding and subtracting it rounds to even.
    const LN2_HI: f32 = 0.693_359_4; // ln 2 with its low bits zero, so i·LN2_HI is exact
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 88.0);
    let i = (x * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let r = (x - i * LN2_HI) - i * LN2_LO;
    let p = 1.0 / 720.0f32;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    p * f32::from_bits(((i as i32 + 127) << 23) as u32)
}

/// `erf(x)` as PyTorch's vectorised CPU kernels compute it (Abramowitz & Stegun 7.1.26,
/// |error| ≤ 1.5e-7), which is what `nn.GELU()` runs on f32 CPU tensors.
#[inline(always)]
pub(crate) fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (0.327_591_1 * a + 1.0);
    let r = 1.061_405_4 * t - 1.453_152;
    let r = r * t + 1.421_413_8;
    let r = r * t - 0.284_496_74;
    let r = r * t + 0.254_829_6;
    let y = 1.0 - r * t * exp(-a * a);
    y.copysign(x)
}

/// Lets the per-(sequence, head) attention tasks write their disjoint column blocks of one
/// output buffer from several threads.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// A method (not `.0`) so that closures capture the whole `Sync` wrapper.
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Which keys each query may attend to (text tower); `None` in [`CpuEncoderLayer::forward`]
/// means full attention (vision tower).
pub struct AttentionMask {
    /// Queries attend only to keys at or before their own position.
    pub causal: bool,
    /// (B, L), false for padding keys.
    pub keep: Vec<bool>,
}

/// A pre-norm CLIP encoder layer (`x + attn(ln1(x))`, then `x + mlp(ln2(x))`) in f32.
#[derive(Debug, Clone)]
pub struct CpuEncoderLayer {
    /// q, k, v projections stacked into (3D, D); q's rows and bias scaled by head_dim^-0.5.
    qkv: Dense,
    out_proj: Dense,
    ln1: LayerNormF32,
    ln2: LayerNormF32,
    fc1: Dense,
    fc2: Dense,
    act: HiddenAct,
    heads: usize,
}

impl CpuEncoderLayer {
    /// `vb` at `encoder.layers.{i}`; tensor names as in transformers' `CLIPEncoderLayer`.
    pub fn load(vb: VarBuilder, hidden: usize, intermediate: usize, heads: usize, act: HiddenAct, eps: f64) -> Result<Self> {
        let attn = vb.pp("self_attn");
        let scale = ((hidden / heads) as f64).powf(-0.5) as f32;
        let mut w = Vec::with_capacity(3 * hidden * hidden);
        let mut b = Vec::with_capacity(3 * hidden);
        for (name, s) in [("q_proj", scale), ("k_proj", 1.0), ("v_proj", 1.0)] {
            let p = attn.pp(name);
            w.extend(get_f32(&p, &[hidden, hidden], "weight")?.into_iter().map(|v| v * s));
            b.extend(get_f32(&p, &[hidden], "bias")?.into_iter().map(|v| v * s));
        }
        let qkv = Dense::new(w, b, hidden, 3 * hidden, vb.dtype());
        Self::with_qkv(&vb, qkv, Dense::load(&attn.pp("out_proj"), hidden, hidden)?, intermediate, heads, act, eps)
    }

    /// A BLIP or BLIP-2 vision layer (`vb` at `encoder.layers.{i}`): the same block with one
    /// fused `self_attn.qkv` (3D, D) projection, whose bias (BLIP-2: `[q_bias, 0, v_bias]`)
    /// may be absent, and the output projection named `self_attn.projection`.
    pub fn load_fused_qkv(vb: VarBuilder, hidden: usize, intermediate: usize, heads: usize, act: HiddenAct, eps: f64, qkv_bias: bool) -> Result<Self> {
        let attn = vb.pp("self_attn");
        let scale = ((hidden / heads) as f64).powf(-0.5) as f32;
        let mut w = get_f32(&attn.pp("qkv"), &[3 * hidden, hidden], "weight")?;
        let mut b = if qkv_bias { get_f32(&attn.pp("qkv"), &[3 * hidden], "bias")? } else { vec![0.0; 3 * hidden] };
        w[..hidden * hidden].iter_mut().chain(&mut b[..hidden]).for_each(|v| *v *= scale);
        let qkv = Dense::new(w, b, hidden, 3 * hidden, vb.dtype());
        Self::with_qkv(&vb, qkv, Dense::load(&attn.pp("projection"), hidden, hidden)?, intermediate, heads, act, eps)
    }

    fn with_qkv(vb: &VarBuilder, qkv: Dense, out_proj: Dense, intermediate: usize, heads: usize, act: HiddenAct, eps: f64) -> Result<Self> {
        let hidden = qkv.in_dim;
        Ok(Self {
            qkv,
            out_proj,
            ln1: LayerNormF32::load(&vb.pp("layer_norm1"), hidden, eps)?,
            ln2: LayerNormF32::load(&vb.pp("layer_norm2"), hidden, eps)?,
            fc1: Dense::load(&vb.pp("mlp").pp("fc1"), hidden, intermediate)?,
            fc2: Dense::load(&vb.pp("mlp").pp("fc2"), intermediate, hidden)?,
            act,
            heads,
        })
    }

    /// Updates `x` (B·L rows of D) in place; `scratch` is reused between layers.
    pub fn forward(&self, x: &mut [f32], b: usize, len: usize, mask: Option<&AttentionMask>, scratch: &mut Scratch) -> Result<()> {
        let d = self.qkv.in_dim;
        let m = b * len;
        scratch.ensure(m, d, self.fc1.out_dim);
        let Scratch { normed, qkv, attn, hidden } = scratch;
        let (normed, qkv, attn, hidden) =
            (&mut normed[..m * d], &mut qkv[..m * 3 * d], &mut attn[..m * d], &mut hidden[..m * self.fc1.out_dim]);

        self.ln1.forward_into(x, normed);
        self.qkv.forward_into(normed, m, qkv, false);
        self.attention(qkv, attn, b, len, None, mask);
        self.out_proj.forward_into(attn, m, x, true);
        self.mlp(x, m, normed, hidden)
    }

    /// The layer's output at one position per sequence only (`pooled[s]`), as (B, D): what
    /// the last layer of a tower needs before pooling. Keys and values still come from every
    /// position, but the attention queries, `out_proj` and the MLP run on B rows, not B·L.
    pub fn forward_pooled(
        &self,
        x: &[f32],
        b: usize,
        len: usize,
        pooled: &[usize],
        mask: Option<&AttentionMask>,
        scratch: &mut Scratch,
    ) -> Result<Vec<f32>> {
        let d = self.qkv.in_dim;
        let m = b * len;
        scratch.ensure(m, d, self.fc1.out_dim);
        let Scratch { normed, qkv, attn, hidden } = scratch;
        let (normed, qkv) = (&mut normed[..m * d], &mut qkv[..m * 3 * d]);
        self.ln1.forward_into(x, normed);
        self.qkv.forward_into(normed, m, qkv, false);
        let attn = &mut attn[..b * d];
        self.attention(qkv, attn, b, len, Some(pooled), mask);
        let mut out: Vec<f32> = pooled.iter().enumerate().flat_map(|(s, &p)| x[(s * len + p) * d..][..d].iter().copied()).collect();
        self.out_proj.forward_into(attn, b, &mut out, true);
        self.mlp(&mut out, b, &mut normed[..b * d], &mut hidden[..b * self.fc1.out_dim])?;
        Ok(out)
    }

    /// `x += mlp(ln2(x))` on `m` rows.
    fn mlp(&self, x: &mut [f32], m: usize, normed: &mut [f32], hidden: &mut [f32]) -> Result<()> {
        self.ln2.forward_into(x, normed);
        self.fc1.forward_into(normed, m, hidden, false);
        activate(self.act, hidden, self.fc1.out_dim)?;
        self.fc2.forward_into(hidden, m, x, true);
        Ok(())
    }

    /// softmax(q kᵀ + mask) v for every (sequence, head), reading q/k/v in place from the
    /// (B·L, 3D) projections and writing each head's columns of `out` directly — no head
    /// transposes or copies. Queries are every position (`out` is (B·L, D)), or only
    /// `pooled[s]` of each sequence (`out` is (B, D)).
    fn attention(&self, qkv: &[f32], out: &mut [f32], b: usize, len: usize, pooled: Option<&[usize]>, mask: Option<&AttentionMask>) {
        let d = self.qkv.in_dim;
        let hd = d / self.heads;
        let row = 3 * d as isize;
        let nq = if pooled.is_some() { 1 } else { len };
        let out_ptr = SendPtr(out.as_mut_ptr());
        (0..b * self.heads).into_par_iter().for_each_init(
            || vec![0f32; nq * len],
            |scores, task| {
                let (s, h) = (task / self.heads, task % self.heads);
                let q0 = pooled.map_or(0, |p| p[s]);
                let base = s * len * 3 * d;
                let q = qkv[base + q0 * 3 * d + h * hd..].as_ptr();
                let k = qkv[base + d + h * hd..].as_ptr();
                let v = qkv[base + 2 * d + h * hd..].as_ptr();
                // SAFETY: q/k/v address rows of `qkv` inside this sequence; the output block
                // (nq rows × hd columns at h*hd of sequence s) is written by this task only.
                unsafe {
                    // scores (nq, len) = q (nq, hd) · kᵀ (hd, len); q is pre-scaled.
                    gemm(nq, len, hd, scores.as_mut_ptr(), 1, len as isize, false, q, 1, row, k, row, 1, 0.0, 1.0, false, false, false, Parallelism::None);
                }
                for i in 0..nq {
                    let r = &mut scores[i * len..(i + 1) * len];
                    if let Some(m) = mask {
                        let keep = &m.keep[s * len..(s + 1) * len];
                        for (j, v) in r.iter_mut().enumerate() {
                            if !keep[j] || (m.causal && j > q0 + i) {
                                *v += MASKED;
                            }
                        }
                    }
                    softmax_in_place(r);
                }
                unsafe {
                    let dst = out_ptr.get().add(s * nq * d + h * hd);
                    // out (nq, hd) = probs (nq, len) · v (len, hd).
                    gemm(nq, hd, len, dst, 1, d as isize, false, scores.as_ptr(), 1, len as isize, v, 1, row, 0.0, 1.0, false, false, false, Parallelism::None);
                }
            },
        );
    }
}

/// A vision tower's encoder layers in the BLIP / BLIP-2 layout (fused `qkv`,
/// `projection`), on these kernels, over candle tensors: every output position is kept
/// (the image tokens the text side attends to).
#[derive(Debug, Clone)]
pub struct CpuVisionEncoder {
    layers: Vec<CpuEncoderLayer>,
}

impl CpuVisionEncoder {
    /// `vb` at the tower's `encoder.layers`.
    #[allow(clippy::too_many_arguments)]
    pub fn load(vb: VarBuilder, n: usize, hidden: usize, intermediate: usize, heads: usize, act: HiddenAct, eps: f64, qkv_bias: bool) -> Result<Self> {
        let layers = (0..n).map(|i| CpuEncoderLayer::load_fused_qkv(vb.pp(i), hidden, intermediate, heads, act, eps, qkv_bias)).collect::<Result<_>>()?;
        Ok(Self { layers })
    }

    /// `xs` (B, N, D) in any dtype → the last layer's states, same shape and dtype.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, n, d) = xs.dims3()?;
        let mut x = xs.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let mut scratch = Scratch::default();
        for layer in &self.layers {
            layer.forward(&mut x, b, n, None, &mut scratch)?;
        }
        Tensor::from_vec(x, (b, n, d), xs.device())?.to_dtype(xs.dtype())
    }
}

/// Buffers reused across the layers of one forward pass.
#[derive(Default)]
pub struct Scratch {
    normed: Vec<f32>,
    qkv: Vec<f32>,
    attn: Vec<f32>,
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

/// `CAPMATCH_NO_F32_PACKING=1` keeps f32 weights row-major and multiplies through `gemm`
/// (the portable path), for comparing the two.
fn no_f32_packing() -> bool {
    std::env::var_os("CAPMATCH_NO_F32_PACKING").is_some_and(|v| v == "1")
}

// ------------------------------------------------------------------------ AVX-512 tiles

/// The edges both microkernels share: which lanes of a tile's column vectors exist, where
/// its accumulators start, and how they are written back.
#[cfg(target_arch = "x86_64")]
mod tile_io {
    use std::arch::x86_64::*;

    /// One microkernel call's place in a product: a column group, a pass over k, a row tile.
    pub struct Tile {
        pub group: usize,
        /// Columns of the group that exist (the last group may be narrower).
        pub cols: usize,
        pub k0: usize,
        pub kc: usize,
        pub r: usize,
        pub rows: usize,
    }

    /// The order both kernels walk an (m × n) product with `k` steps: column groups of
    /// `group` in parallel; within one, k in passes of `kc` (so the panel block stays in
    /// cache), and within a pass every row tile of `mr` rows.
    pub fn for_each_tile(m: usize, n: usize, k: usize, group: usize, kc: usize, mr: usize, f: impl Fn(Tile) + Sync) {
        use rayon::prelude::*;
        (0..n.div_ceil(group)).into_par_iter().for_each(|g| {
            let cols = (n - g * group).min(group);
            for k0 in (0..k).step_by(kc) {
                let mut r = 0;
                while r < m {
                    let rows = (m - r).min(mr);
                    f(Tile { group: g, cols, k0, kc: kc.min(k - k0), r, rows });
                    r += rows;
                }
            }
        });
    }

    /// Lane masks of a tile's NB 16-column vectors when only its first `cols` columns exist.
    #[inline(always)]
    pub fn column_masks<const NB: usize>(cols: usize) -> [__mmask16; NB] {
        std::array::from_fn(|j| {
            let c = j * 16;
            if c >= cols { 0 } else if cols - c >= 16 { 0xffff } else { (1u16 << (cols - c)) - 1 }
        })
    }

    /// Accumulators of a tile at (row 0, `col0`) of `dst` (row stride `n`): the bias (plus
    /// dst when `accumulate`) on a first pass over k, dst's partial sums on later passes.
    #[target_feature(enable = "avx512f")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn start<const MR: usize, const NB: usize>(
        rows: usize,
        masks: &[__mmask16; NB],
        bias: &[f32],
        col0: usize,
        dst: *const f32,
        n: usize,
        first: bool,
        accumulate: bool,
    ) -> [[__m512; NB]; MR] {
        let mut acc = [[_mm512_setzero_ps(); NB]; MR];
        for (r, accr) in acc.iter_mut().enumerate().take(rows) {
            for j in 0..NB {
                let out = dst.add(r * n + col0 + j * 16);
                accr[j] = if first {
                    let b = _mm512_maskz_loadu_ps(masks[j], bias.as_ptr().add(col0 + j * 16));
                    if accumulate { _mm512_add_ps(b, _mm512_maskz_loadu_ps(masks[j], out)) } else { b }
                } else {
                    _mm512_maskz_loadu_ps(masks[j], out)
                };
            }
        }
        acc
    }

    /// Writes the first `rows` rows of accumulators back to the tile's place in dst.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub unsafe fn store<const MR: usize, const NB: usize>(acc: &[[__m512; NB]; MR], rows: usize, masks: &[__mmask16; NB], col0: usize, dst: *mut f32, n: usize) {
        for (r, accr) in acc.iter().enumerate().take(rows) {
            for (j, accv) in accr.iter().enumerate() {
                if masks[j] != 0 {
                    _mm512_mask_storeu_ps(dst.add(r * n + col0 + j * 16), masks[j], *accv);
                }
            }
        }
    }
}

// ------------------------------------------------------------------------------- f32 gemm

/// `dst (m, n) [+]= x (m, k) · wᵀ + b` in f32 on CPUs with AVX-512, with the weights packed
/// once at load into panels of 48 output columns. `gemm` 0.19 packs its operands on every
/// call; for CLIP at batch 1 (50 rows) that packing was half of the tower's time.
#[cfg(target_arch = "x86_64")]
mod f32x86 {
    use std::arch::x86_64::*;

    use rayon::prelude::*;

    /// Output rows per microkernel call.
    const MR: usize = 8;
    /// 16-column vectors per microkernel call (MR × NB accumulators).
    const NB: usize = 3;
    const GROUP: usize = 16 * NB;
    /// Depth of one pass: a 256 × 48 block of a panel (48 KiB) stays in cache while every
    /// row tile goes through it.
    const KC: usize = 256;

    pub fn available() -> bool {
        is_x86_feature_detected!("avx512f")
    }

    /// Weights (n, k) as panels of 48 columns: `data[g][kk][c] = w[g·48 + c][kk]`, zero
    /// past n.
    #[derive(Debug, Clone)]
    pub struct PackedF32 {
        data: Vec<f32>,
        k: usize,
        n: usize,
    }

    impl PackedF32 {
        pub fn pack(w: &[f32], n: usize, k: usize) -> Self {
            let groups = n.div_ceil(GROUP);
            let mut data = vec![0f32; groups * k * GROUP];
            data.par_chunks_mut(k * GROUP).enumerate().for_each(|(g, panel)| {
                for c in 0..GROUP.min(n - g * GROUP) {
                    let row = &w[(g * GROUP + c) * k..][..k];
                    for (kk, &v) in row.iter().enumerate() {
                        panel[kk * GROUP + c] = v;
                    }
                }
            });
            Self { data, k, n }
        }

        /// `dst[r, :] = (accumulate ? dst[r, :] : 0) + bias + x[r, :] · wᵀ`.
        pub fn matmul_into(&self, x: &[f32], m: usize, bias: &[f32], dst: &mut [f32], accumulate: bool) {
            let (k, n) = (self.k, self.n);
            let dst_ptr = super::SendPtr(dst.as_mut_ptr());
            super::tile_io::for_each_tile(m, n, k, GROUP, KC, MR, |t| {
                let panel = &self.data[t.group * k * GROUP..][t.k0 * GROUP..];
                // SAFETY: AVX-512F was checked by `available`; this tile writes only its
                // columns of rows r..r+rows, and no other task writes them.
                unsafe {
                    let dst = dst_ptr.get().add(t.r * n);
                    tile(&x[t.r * k + t.k0..], k, t.rows, panel, t.kc, bias, t.group * GROUP, t.cols, dst, n, t.k0 == 0, accumulate);
                }
            });
        }
    }

    /// One MR × 48 block of dst over `kc` steps of k. The first pass starts from the bias
    /// (plus dst when accumulating); later passes from the partial sums in dst.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile(
        x: &[f32],
        k: usize,
        rows: usize,
        panel: &[f32],
        kc: usize,
        bias: &[f32],
        col0: usize,
        cols: usize,
        dst: *mut f32,
        n: usize,
        first: bool,
        accumulate: bool,
    ) {
        let masks = super::tile_io::column_masks::<NB>(cols);
        let mut acc = super::tile_io::start::<MR, NB>(rows, &masks, bias, col0, dst, n, first, accumulate);
        let (pb, pa) = (panel.as_ptr(), x.as_ptr());
        if rows == MR {
            for kk in 0..kc {
                let b: [__m512; NB] = std::array::from_fn(|j| _mm512_loadu_ps(pb.add(kk * GROUP + j * 16)));
                for (r, accr) in acc.iter_mut().enumerate() {
                    let a = _mm512_set1_ps(*pa.add(r * k + kk));
                    for j in 0..NB {
                        accr[j] = _mm512_fmadd_ps(a, b[j], accr[j]);
                    }
                }
            }
        } else {
            for kk in 0..kc {
                let b: [__m512; NB] = std::array::from_fn(|j| _mm512_loadu_ps(pb.add(kk * GROUP + j * 16)));
                for (r, accr) in acc.iter_mut().enumerate().take(rows) {
                    let a = _mm512_set1_ps(*pa.add(r * k + kk));
                    for j in 0..NB {
                        accr[j] = _mm512_fmadd_ps(a, b[j], accr[j]);
                    }
                }
            }
        }
        super::tile_io::store(&acc, rows, &masks, col0, dst, n);
    }
}

// ------------------------------------------------------------------------------ bf16 gemm

/// `dst (m, n) [+]= bf16(x) (m, k) · bf16(w)ᵀ + b` with f32 accumulation, on CPUs with
/// AVX512_BF16 (`vdpbf16ps`: 32 bf16 products per instruction, twice f32 FMA's rate on
/// Zen 4). `gemm` 0.19 has no bf16 kernel (candle widens bf16 matmuls to f32), hence this one.
/// The weights are packed once at load; activations are rounded to bf16 (nearest-even) per
/// call, as PyTorch's bf16 linear does.
#[cfg(target_arch = "x86_64")]
mod bf16x86 {
    use std::arch::x86_64::*;

    use rayon::prelude::*;

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
    pub struct PackedWeight {
        data: Vec<u16>,
        k: usize,
        n: usize,
    }

    fn bf16_bits(v: f32) -> u16 {
        half::bf16::from_f32(v).to_bits()
    }

    impl PackedWeight {
        pub fn pack(w: &[f32], n: usize, k: usize) -> Self {
            Self::pack_with(n, k, |i| bf16_bits(w[i]))
        }

        /// From weights already in bf16 (no rounding, no f32 copy).
        pub fn pack_bf16(w: &[half::bf16], n: usize, k: usize) -> Self {
            Self::pack_with(n, k, |i| w[i].to_bits())
        }

        /// `bits(i)`: the bf16 bits of the row-major weight element `i = col·k + kk`.
        fn pack_with(n: usize, k: usize, bits: impl Fn(usize) -> u16 + Sync) -> Self {
            let (k2, groups) = (k.div_ceil(2), n.div_ceil(GROUP));
            let mut data = vec![0u16; groups * k2 * GROUP * 2];
            // One panel of 64 columns per task, reading each weight row in order.
            data.par_chunks_mut(k2 * GROUP * 2).enumerate().for_each(|(g, panel)| {
                for c in 0..GROUP.min(n - g * GROUP) {
                    let row = (g * GROUP + c) * k;
                    for kk in 0..k {
                        panel[(kk / 2) * GROUP * 2 + 2 * c + kk % 2] = bits(row + kk);
                    }
                }
            });
            Self { data, k, n }
        }

        /// `dst[r, :] = (accumulate ? dst[r, :] : 0) + bias + x[r, :] · wᵀ`.
        pub fn matmul_into(&self, x: &[f32], m: usize, bias: &[f32], dst: &mut [f32], accumulate: bool) {
            let (k, n, k2) = (self.k, self.n, self.k.div_ceil(2));
            // Activations as bf16 pairs (one u32 per pair of k), row-major, in a buffer this
            // thread reuses: a fresh one per call was megabytes of page faults per layer.
            thread_local! {
                static BUF: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
            }
            let mut buf = BUF.with(|b| std::mem::take(&mut *b.borrow_mut()));
            buf.resize(m * k2, 0);
            let a = &mut buf[..m * k2];
            // (Little-endian: a pair is simply two consecutive bf16 values.)
            // SAFETY: feature checked by `available`; each row of `a` holds 2 * k2 >= k u16s,
            // and an odd k's pad is zeroed explicitly (the buffer is reused).
            a.par_chunks_mut(k2).zip(x.par_chunks(k)).for_each(|(ar, xr)| unsafe {
                if k % 2 == 1 {
                    ar[k2 - 1] = 0;
                }
                row_to_bf16(xr, ar.as_mut_ptr() as *mut u16)
            });
            let a = &*a;
            let dst_ptr = super::SendPtr(dst.as_mut_ptr());
            // Steps of k are pairs here (one u32 of `a`, two bf16 of a panel per column).
            super::tile_io::for_each_tile(m, n, k2, GROUP, KC2, MR, |t| {
                let block = &self.data[t.group * k2 * GROUP * 2..][t.k0 * GROUP * 2..];
                // SAFETY: the feature check is done by the caller (`available`); this tile
                // writes only its columns of rows r..r+rows, and no other task writes them.
                unsafe {
                    let dst = dst_ptr.get().add(t.r * n);
                    tile(&a[t.r * k2 + t.k0..], k2, t.rows, block, t.kc, bias, t.group * GROUP, t.cols, dst, n, t.k0 == 0, accumulate);
                }
            });
            BUF.with(|b| *b.borrow_mut() = buf);
        }
    }

    /// Rounds a row to bf16 (nearest-even, `vcvtneps2bf16`), 16 values per instruction;
    /// the pad after an odd k stays zero.
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

    /// One MR × 64 block of dst over `pc` pairs of k. The first pass starts from the bias
    /// (plus dst when accumulating); later passes from the partial sums in dst.
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile(
        a: &[u32],
        k2: usize,
        rows: usize,
        panel: &[u16],
        pc: usize,
        bias: &[f32],
        col0: usize,
        cols: usize,
        dst: *mut f32,
        n: usize,
        first: bool,
        accumulate: bool,
    ) {
        let masks = super::tile_io::column_masks::<NB>(cols);
        let mut acc = super::tile_io::start::<MR, NB>(rows, &masks, bias, col0, dst, n, first, accumulate);
        let pb = panel.as_ptr();
        let pa = a.as_ptr();
        if rows == MR {
            for kp in 0..pc {
                let b: [__m512bh; NB] =
                    std::array::from_fn(|j| std::mem::transmute(_mm512_loadu_si512(pb.add((kp * NB + j) * 32) as *const _)));
                for (r, accr) in acc.iter_mut().enumerate() {
                    let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(*pa.add(r * k2 + kp) as i32));
                    for j in 0..NB {
                        accr[j] = _mm512_dpbf16_ps(accr[j], av, b[j]);
                    }
                }
            }
        } else {
            for kp in 0..pc {
                let b: [__m512bh; NB] =
                    std::array::from_fn(|j| std::mem::transmute(_mm512_loadu_si512(pb.add((kp * NB + j) * 32) as *const _)));
                for (r, accr) in acc.iter_mut().enumerate().take(rows) {
                    let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(*pa.add(r * k2 + kp) as i32));
                    for j in 0..NB {
                        accr[j] = _mm512_dpbf16_ps(accr[j], av, b[j]);
                    }
                }
            }
        }
        super::tile_io::store(&acc, rows, &masks, col0, dst, n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random values in [-1, 1).
    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut x = seed.wrapping_mul(2654435761).wrapping_add(1);
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x % 2000) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    /// erf in f64 by its Maclaurin series (converges fast for |x| ≤ 4; beyond, erf = ±1 in f32).
    fn erf_f64(x: f64) -> f64 {
        if x.abs() > 4.0 {
            return x.signum();
        }
        let (mut term, mut sum, mut n) = (x, x, 0.0);
        while term.abs() > 1e-17 * sum.abs().max(1e-300) {
            n += 1.0;
            term *= -x * x / n;
            sum += term / (2.0 * n + 1.0);
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn exp_and_erf_are_accurate() {
        for i in -8000..=8000 {
            let x = i as f32 / 100.0;
            let (got, want) = (exp(x) as f64, (x as f64).exp());
            assert!((got - want).abs() <= 4e-7 * want, "exp({x}) = {got}, want {want}");
            let (got, want) = (erf(x) as f64, erf_f64(x as f64));
            // A&S bound 1.5e-7, plus f32 cancellation in 1 − r·t·e^(−x²) near 0.
            assert!((got - want).abs() <= 6e-7, "erf({x}) = {got}, want {want}");
        }
        assert_eq!(exp(-1000.0), exp(-87.0));
        assert!(exp(-87.0) < 1e-37 && exp(f32::NEG_INFINITY) < 1e-37);
    }

    /// The vectorised activations against candle's (exact erf GELU, quick GELU).
    #[test]
    fn activations_match_candle() {
        let x: Vec<f32> = values(3000, 7).iter().map(|v| v * 6.0).collect();
        for act in [HiddenAct::Gelu, HiddenAct::QuickGelu, HiddenAct::Relu] {
            let mut got = x.clone();
            activate(act, &mut got, 100).unwrap();
            let want = act.forward(&Tensor::from_slice(&x, x.len(), &Device::Cpu).unwrap()).unwrap().to_vec1::<f32>().unwrap();
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!((g - w).abs() <= 2e-6 * (1.0 + w.abs()), "{act:?}({}) = {g}, want {w}", x[i]);
            }
        }
    }

    /// A bf16 tensor packed straight from its storage gives the same products as its values
    /// widened to f32 and packed.
    #[test]
    fn bf16_tensors_pack_like_their_values() {
        let (m, k, n) = (5, 70, 50);
        let w = Tensor::from_vec(values(n * k, 9), (n, k), &Device::Cpu).unwrap().to_dtype(DType::BF16).unwrap();
        let x = values(m * k, 10);
        let direct = Dense::from_tensors(&w, None, DType::BF16).unwrap();
        let widened = w.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let via_f32 = Dense::new(widened, vec![0.0; n], k, n, DType::BF16);
        let (mut a, mut b) = (vec![0.0; m * n], vec![0.0; m * n]);
        direct.forward_into(&x, m, &mut a, false);
        via_f32.forward_into(&x, m, &mut b, false);
        assert_eq!(a, b);
        assert!(a.iter().any(|v| v.abs() > 0.1));
    }

    /// Sizes that exercise the kernels' edges: odd k, k over one 256-deep pass, n not a
    /// multiple of 48, 64 or 16, m not a multiple of 6 or 8.
    const DENSE_CASES: [(usize, usize, usize); 9] =
        [(13, 7, 40), (8, 64, 48), (21, 33, 100), (1, 2, 1), (3, 100, 70), (17, 40, 33), (9, 600, 50), (40, 300, 97), (11, 1100, 60)];

    /// The f32 dense paths (packed, row-major through gemm or streaming) against a scalar
    /// reference, with and without the residual accumulation.
    #[test]
    fn dense_matches_scalar_reference() {
        for (m, k, n) in DENSE_CASES {
            let (x, w, b, r) = (values(m * k, 1), values(n * k, 2), values(n, 3), values(m * n, 4));
            for (dtype, pack) in [(DType::F32, true), (DType::F32, false)] {
                let dense = Dense::build(w.clone(), b.clone(), k, n, dtype, pack);
                for accumulate in [false, true] {
                    let mut got = if accumulate { r.clone() } else { vec![f32::NAN; m * n] };
                    dense.forward_into(&x, m, &mut got, accumulate);
                    for i in 0..m {
                        for j in 0..n {
                            let dot: f32 = (0..k).map(|t| x[i * k + t] * w[j * k + t]).sum();
                            let want = dot + b[j] + if accumulate { r[i * n + j] } else { 0.0 };
                            let g = got[i * n + j];
                            assert!((g - want).abs() < 1e-4 * (1.0 + want.abs()), "{dtype:?} pack {pack} {m}x{k}x{n} [{i},{j}]: {g} vs {want}");
                        }
                    }
                }
            }
        }
    }

    /// bf16 dense products against exact ones (f64, inputs not rounded), within the error
    /// bf16 allows: rounding an activation and a weight to bf16 (8 significant bits, unit
    /// roundoff u = 2⁻⁸) moves each product by at most (2u + u²)·|x·w|, and summing k + 2
    /// terms in f32 adds at most (k + 2)·2⁻²⁴ of the sum of magnitudes (Higham, Thm 3.1, to
    /// first order). This holds on every CPU: with AVX512_BF16 the packed bf16 kernel runs,
    /// without it the weights are used in f32, which is within the same bound. Where the CPU
    /// has the instructions, the products must moreover be those of the inputs rounded to
    /// nearest-even (checked to f32 summation error), which pins the rounding mode (a
    /// truncating conversion stays inside the first bound).
    #[test]
    fn bf16_dense_is_within_bf16_precision_of_exact_products() {
        const U: f64 = 1.0 / 256.0;
        const F32_U: f64 = 1.0 / 16_777_216.0;
        let rne = |v: f32| half::bf16::from_f32(v).to_f32() as f64;
        for (m, k, n) in DENSE_CASES {
            let (x, w, b, r) = (values(m * k, 11), values(n * k, 12), values(n, 13), values(m * n, 14));
            let dense = Dense::build(w.clone(), b.clone(), k, n, DType::BF16, true);
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
                        assert!((g - exact).abs() <= bound, "{m}x{k}x{n} [{i},{j}] accumulate {accumulate}: {g} vs exact {exact}, bound {bound:e}");
                        if cpu_has_bf16_matmul() {
                            let rounded: f64 = xr.iter().zip(wr).map(|(&a, &c)| rne(a) * rne(c)).sum::<f64>() + rest;
                            assert!((g - rounded).abs() <= summing, "{m}x{k}x{n} [{i},{j}]: {g} vs nearest-even products {rounded}");
                        }
                    }
                }
            }
        }
    }
}
