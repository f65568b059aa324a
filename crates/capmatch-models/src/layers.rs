//! Layers for the BLIP and BLIP-2 models that keep their large weights in the checkpoint's
//! storage dtype (bf16 halves the memory of f32) and compute in a dtype the device can
//! multiply in.
//!
//! On the CPU activations are f32 whatever the storage dtype (candle's CPU backend has no
//! bf16 kernels): a [`Lin`] multiplies through `ops::Dense` — f32 weights packed for an
//! AVX-512 kernel (`gemm` on other CPUs), bf16 weights packed once for AVX512_BF16 dot
//! products — and the small tensors (norms, biases, position tables) are widened to f32 once
//! at load. Where the CPU lacks bf16 instructions, bf16 weights stay bf16 and are widened per
//! product. On other devices the compute dtype is the storage dtype.

use std::sync::Arc;

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{LayerNorm, VarBuilder};

use crate::ops::{cpu_has_bf16_matmul, Dense};

/// The dtype activations use for weights stored as `storage` on `device`.
pub fn compute_dtype(storage: DType, device: &Device) -> DType {
    if device.is_cpu() && matches!(storage, DType::BF16 | DType::F16) {
        DType::F32
    } else {
        storage
    }
}

fn compute_of(vb: &VarBuilder) -> DType {
    compute_dtype(vb.dtype(), vb.device())
}

/// `nn.Linear`. On the CPU its weight lives in a `Dense`: f32 (packed, or `gemm`), or bf16
/// packed once for AVX512_BF16's dot product (activations rounded to bf16 per product, f32
/// accumulation, as PyTorch's bf16 linear). Elsewhere, and for bf16/f16 on CPUs without
/// bf16 instructions, the weight stays in its storage dtype and is widened per product.
#[derive(Clone)]
pub struct Lin {
    kind: LinKind,
    out_dim: usize,
}

#[derive(Clone)]
enum LinKind {
    /// Shared, not copied, when a model is cloned.
    Cpu(Arc<Dense>),
    Stored { weight: Tensor, bias: Option<Tensor>, compute: DType },
}

impl Lin {
    pub fn load(in_dim: usize, out_dim: usize, bias: bool, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        let bias = if bias { Some(vb.get(out_dim, "bias")?) } else { None };
        Self::new(weight, bias)
    }

    /// A bias-free projection on an existing `(out, in)` matrix (a tied LM head).
    pub fn from_weight(weight: Tensor) -> Result<Self> {
        Self::new(weight, None)
    }

    /// From an `(out, in)` weight and an optional bias, in their storage dtype.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        let (storage, device) = (weight.dtype(), weight.device().clone());
        let out_dim = weight.dim(0)?;
        let kind = if device.is_cpu() && (storage == DType::F32 || (storage == DType::BF16 && cpu_has_bf16_matmul())) {
            LinKind::Cpu(Arc::new(Dense::from_tensors(&weight, bias.as_ref(), storage)?))
        } else {
            let compute = compute_dtype(storage, &device);
            LinKind::Stored { bias: bias.map(|b| b.to_dtype(compute)).transpose()?, weight, compute }
        };
        Ok(Self { kind, out_dim })
    }
}

impl Module for Lin {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let in_dim = dims[dims.len() - 1];
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let mut out_dims = dims;
        *out_dims.last_mut().unwrap() = self.out_dim;
        match &self.kind {
            LinKind::Cpu(dense) => {
                if in_dim != dense.in_dim() {
                    candle_core::bail!("linear layer expects {} inputs, got {in_dim}", dense.in_dim());
                }
                let mut out = vec![0f32; rows * dense.out_dim()];
                with_f32_slice(x, |xs| dense.forward_into(xs, rows, &mut out, false))?;
                Tensor::from_vec(out, out_dims, x.device())
            }
            LinKind::Stored { weight, bias, compute } => {
                let x2 = x.to_dtype(*compute)?.reshape((rows, in_dim))?;
                let y = match bf16_small_matmul(&x2, weight)? {
                    Some(y) => y,
                    None => x2.matmul(&widen(weight, *compute)?.t()?)?,
                };
                let y = match bias {
                    Some(b) => y.broadcast_add(b)?,
                    None => y,
                };
                y.reshape(out_dims)
            }
        }
    }
}

/// Calls `f` on `x`'s values as one contiguous f32 slice (a CPU tensor), copying only if
/// `x` is not already contiguous f32.
fn with_f32_slice<R>(x: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let x = x.to_dtype(DType::F32)?.contiguous()?;
    let (storage, layout) = x.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("a CPU linear layer was given a tensor on another device");
    };
    let data = cpu.as_slice::<f32>()?;
    Ok(f(&data[layout.start_offset()..layout.start_offset() + x.elem_count()]))
}

/// `w.to_dtype(dtype)`, with bf16 → f32 on the CPU split over threads (candle's
/// conversion is single-threaded, and a prefill widens every weight of the model).
fn widen(w: &Tensor, dtype: DType) -> Result<Tensor> {
    if w.dtype() != DType::BF16 || dtype != DType::F32 || !w.device().is_cpu() || !w.is_contiguous() {
        return w.to_dtype(dtype);
    }
    let (storage, layout) = w.storage_and_layout();
    let candle_core::Storage::Cpu(candle_core::CpuStorage::BF16(data)) = &*storage else {
        return w.to_dtype(dtype);
    };
    let len = w.elem_count();
    let src = &data[layout.start_offset()..layout.start_offset() + len];
    let mut out = vec![0f32; len];
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get()).min(len.div_ceil(1 << 16)).max(1);
    let per = len.div_ceil(threads);
    std::thread::scope(|scope| {
        for (dst, src) in out.chunks_mut(per).zip(src.chunks(per)) {
            scope.spawn(move || {
                for (d, s) in dst.iter_mut().zip(src) {
                    *d = f32::from_bits((s.to_bits() as u32) << 16);
                }
            });
        }
    });
    drop(storage);
    Tensor::from_vec(out, w.shape(), w.device())
}

/// Rows of activations up to which [`bf16_small_matmul`] beats widening the whole weight.
const SMALL_ROWS: usize = 16;

/// `x (m, k) f32 · wᵀ` for a contiguous bf16 CPU weight `w (n, k)` and few rows `m` (a
/// decoding step): reads each weight row once, widening it on the fly, split over threads.
/// `None` when the fast path does not apply.
fn bf16_small_matmul(x: &Tensor, w: &Tensor) -> Result<Option<Tensor>> {
    let (m, k) = x.dims2()?;
    if m > SMALL_ROWS || w.dtype() != DType::BF16 || x.dtype() != DType::F32 || !w.device().is_cpu() || !w.is_contiguous() {
        return Ok(None);
    }
    let n = w.dim(0)?;
    let xs = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
    let (storage, layout) = w.storage_and_layout();
    let candle_core::Storage::Cpu(candle_core::CpuStorage::BF16(data)) = &*storage else {
        return Ok(None);
    };
    let ws = &data[layout.start_offset()..layout.start_offset() + n * k];
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get()).min(n.div_ceil(64)).max(1);
    let per = n.div_ceil(threads);
    // Each thread fills out[j * m + i] for its weight rows j (transposed below).
    let mut out_t = vec![0f32; n * m];
    std::thread::scope(|scope| {
        for (t, chunk) in out_t.chunks_mut(per * m).enumerate() {
            let xs = &xs;
            scope.spawn(move || {
                for (jj, out_row) in chunk.chunks_mut(m).enumerate() {
                    let j = t * per + jj;
                    let wrow = &ws[j * k..(j + 1) * k];
                    for (i, o) in out_row.iter_mut().enumerate() {
                        *o = dot_bf16(&xs[i * k..(i + 1) * k], wrow);
                    }
                }
            });
        }
    });
    drop(storage);
    let y = Tensor::from_vec(out_t, (n, m), x.device())?.t()?.contiguous()?;
    Ok(Some(y))
}

/// `Σ x[i] · w[i]` with `w` widened from bf16, in 16 independent lanes (vectorisable).
#[inline]
fn dot_bf16(x: &[f32], w: &[half::bf16]) -> f32 {
    const L: usize = 16;
    let mut acc = [0f32; L];
    let full = x.len() / L * L;
    for (xc, wc) in x[..full].chunks_exact(L).zip(w[..full].chunks_exact(L)) {
        for l in 0..L {
            acc[l] += xc[l] * f32::from_bits((wc[l].to_bits() as u32) << 16);
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for (a, b) in x[full..].iter().zip(&w[full..]) {
        sum += a * b.to_f32();
    }
    sum
}

/// `nn.LayerNorm` with its parameters in the compute dtype.
pub fn layer_norm(dim: usize, eps: f64, vb: VarBuilder) -> Result<LayerNorm> {
    let compute = compute_of(&vb);
    let weight = vb.get(dim, "weight")?.to_dtype(compute)?;
    let bias = vb.get(dim, "bias")?.to_dtype(compute)?;
    Ok(LayerNorm::new(weight, bias, eps))
}

/// A tensor needed whole in the compute dtype (position tables, class token, small biases).
pub fn get_compute<S: Into<candle_core::Shape>>(vb: &VarBuilder, shape: S, name: &str) -> Result<Tensor> {
    vb.get(shape, name)?.to_dtype(compute_of(vb))
}

/// `nn.Embedding` whose table stays in storage dtype; looked-up rows come out in compute dtype.
#[derive(Clone)]
pub struct Emb {
    table: Tensor,
    compute: DType,
}

impl Emb {
    pub fn load(count: usize, dim: usize, vb: VarBuilder) -> Result<Self> {
        let compute = compute_of(&vb);
        Ok(Self { table: vb.get((count, dim), "weight")?, compute })
    }

    pub fn table(&self) -> &Tensor {
        &self.table
    }

    pub fn compute_dtype(&self) -> DType {
        self.compute
    }
}

impl Module for Emb {
    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let dims = ids.dims().to_vec();
        let flat = ids.flatten_all()?;
        let rows = self.table.index_select(&flat, 0)?.to_dtype(self.compute)?;
        let mut out = dims;
        out.push(self.table.dim(1)?);
        rows.reshape(out)
    }
}
