//! Layers that keep their large weights in the checkpoint's storage dtype (bf16 by
//! default, half the memory of f32) and compute in a dtype the device can multiply in.
//!
//! candle's CPU backend has no bf16 matmul, so on the CPU a bf16 model computes in f32:
//! each projection widens its weight for the duration of one product, and the small
//! tensors (norms, biases, position tables) are widened once at load. On devices with bf16
//! kernels the compute dtype is the storage dtype.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{LayerNorm, VarBuilder};

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

/// `nn.Linear` over a weight kept in storage dtype.
#[derive(Clone)]
pub struct Lin {
    weight: Tensor,
    bias: Option<Tensor>,
    compute: DType,
}

impl Lin {
    pub fn load(in_dim: usize, out_dim: usize, bias: bool, vb: VarBuilder) -> Result<Self> {
        let compute = compute_of(&vb);
        let weight = vb.get((out_dim, in_dim), "weight")?;
        let bias = if bias { Some(vb.get(out_dim, "bias")?.to_dtype(compute)?) } else { None };
        Ok(Self { weight, bias, compute })
    }

    /// A bias-free projection on an existing `(out, in)` matrix (a tied LM head).
    pub fn from_weight(weight: Tensor, compute: DType) -> Self {
        Self { weight, bias: None, compute }
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
}

impl Module for Lin {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.to_dtype(self.compute)?;
        let dims = x.dims().to_vec();
        let in_dim = dims[dims.len() - 1];
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let x2 = x.reshape((rows, in_dim))?;
        let y = match bf16_small_matmul(&x2, &self.weight)? {
            Some(y) => y,
            None => x2.matmul(&widen(&self.weight, self.compute)?.t()?)?,
        };
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out_dims = dims;
        *out_dims.last_mut().unwrap() = self.weight.dim(0)?;
        y.reshape(out_dims)
    }
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
