//! How models load: a [`Loader`] (a candle `VarBuilder` plus the [`Kernels`] the layers run
//! on), and the layers that keep their large weights in the checkpoint's storage dtype (bf16
//! halves the memory of f32) while computing in a dtype the device can multiply in.
//!
//! With [`Kernels::Fused`] on the CPU, activations are f32 whatever the storage dtype and a
//! [`Lin`] multiplies through the CPU kernels of [`crate::ops`] (weights packed once at
//! load); the small tensors (norms, biases, position tables) are widened to f32 once at load.
//! Elsewhere — other devices, or [`Kernels::Candle`] — layers are candle ops in the compute
//! dtype, the code a GPU runs.

use std::sync::Arc;

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{LayerNorm, VarBuilder};

use crate::ops::{Dense, LayerNormF32};

/// Which code runs a model's layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kernels {
    /// On the CPU the fused kernels of [`crate::ops`] (batch-invariant); candle ops on other
    /// devices.
    #[default]
    Fused,
    /// candle ops on every device: on the CPU, the code path a GPU runs (for testing it).
    Candle,
}

impl std::str::FromStr for Kernels {
    type Err = String;

    /// `fused` or `candle`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "fused" => Ok(Self::Fused),
            "candle" => Ok(Self::Candle),
            other => Err(format!("unknown kernels {other:?}: expected \"fused\" or \"candle\"")),
        }
    }
}

impl std::fmt::Display for Kernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Fused => "fused",
            Self::Candle => "candle",
        })
    }
}

/// A `VarBuilder` (the checkpoint's tensors, in its dtype, on its device) and the kernels
/// the layers it loads will run on. Dereferences to the `VarBuilder`.
#[derive(Clone)]
pub struct Loader<'a> {
    vb: VarBuilder<'a>,
    kernels: Kernels,
}

impl<'a> Loader<'a> {
    pub fn new(vb: VarBuilder<'a>, kernels: Kernels) -> Self {
        Self { vb, kernels }
    }

    /// The tensors under `prefix`.
    pub fn pp<S: ToString>(&self, prefix: S) -> Self {
        Self { vb: self.vb.pp(prefix), kernels: self.kernels }
    }

    /// The same tensors converted to `dtype` as they are taken.
    pub fn set_dtype(&self, dtype: DType) -> Self {
        Self { vb: self.vb.clone().set_dtype(dtype), kernels: self.kernels }
    }

    pub fn kernels(&self) -> Kernels {
        self.kernels
    }

    /// Whether layers run on the fused CPU kernels ([`Kernels::Fused`] on the CPU).
    pub fn fused(&self) -> bool {
        self.kernels == Kernels::Fused && self.vb.device().is_cpu()
    }

    /// The activations' dtype for this loader's weights (see [`compute_dtype`]).
    pub fn compute_dtype(&self) -> DType {
        compute_dtype(self.vb.dtype(), self.vb.device())
    }

    /// A weight as an f32 vector, whatever dtype it is stored in.
    pub fn get_f32<S: Into<candle_core::Shape>>(&self, shape: S, name: &str) -> Result<Vec<f32>> {
        self.vb.get(shape, name)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
    }
}

impl<'a> std::ops::Deref for Loader<'a> {
    type Target = VarBuilder<'a>;

    fn deref(&self) -> &VarBuilder<'a> {
        &self.vb
    }
}

/// The fused CPU kernels where the device is the CPU, candle ops elsewhere.
impl<'a> From<VarBuilder<'a>> for Loader<'a> {
    fn from(vb: VarBuilder<'a>) -> Self {
        Self::new(vb, Kernels::Fused)
    }
}

/// The dtype activations use for weights stored as `storage` on `device`: f32 on the CPU
/// (candle's CPU backend has no bf16 matmul), the storage dtype elsewhere.
pub fn compute_dtype(storage: DType, device: &Device) -> DType {
    if device.is_cpu() && matches!(storage, DType::BF16 | DType::F16) {
        DType::F32
    } else {
        storage
    }
}

/// `nn.Linear`. On the fused CPU kernels its weight lives in a packed `Dense` (bf16 weights
/// stay bf16: see `ops::dense`); otherwise the weight stays in its storage dtype and the
/// product is candle's, in the compute dtype.
#[derive(Debug, Clone)]
pub struct Lin {
    kind: LinKind,
    out_dim: usize,
}

#[derive(Debug, Clone)]
enum LinKind {
    /// Shared, not copied, when a model is cloned.
    Cpu(Arc<Dense>),
    Stored { weight: Tensor, bias: Option<Tensor>, compute: DType },
}

impl Lin {
    pub fn load(in_dim: usize, out_dim: usize, bias: bool, vb: Loader) -> Result<Self> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        let bias = if bias { Some(vb.get(out_dim, "bias")?) } else { None };
        Self::new(weight, bias, vb.kernels())
    }

    /// From an `(out, in)` weight and an optional bias, in their storage dtype.
    pub fn new(weight: Tensor, bias: Option<Tensor>, kernels: Kernels) -> Result<Self> {
        let (storage, device) = (weight.dtype(), weight.device().clone());
        let out_dim = weight.dim(0)?;
        let kind = if device.is_cpu() && kernels == Kernels::Fused {
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
                let y = x2.matmul(&weight.to_dtype(*compute)?.t()?)?;
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

/// `nn.LayerNorm` with its parameters in the compute dtype.
pub fn layer_norm(dim: usize, eps: f64, vb: Loader) -> Result<LayerNorm> {
    let compute = vb.compute_dtype();
    let weight = vb.get(dim, "weight")?.to_dtype(compute)?;
    let bias = vb.get(dim, "bias")?.to_dtype(compute)?;
    Ok(LayerNorm::new(weight, bias, eps))
}

/// `nn.Linear` (`weight`, `bias`) for the fused CPU kernels, computing in the loader's
/// dtype's way (bf16 products for bf16 weights).
pub(crate) fn dense(in_dim: usize, out_dim: usize, vb: Loader) -> Result<Dense> {
    Dense::from_tensors(&vb.get((out_dim, in_dim), "weight")?, Some(&vb.get(out_dim, "bias")?), vb.dtype())
}

/// `nn.LayerNorm` for the fused CPU kernels.
pub(crate) fn layer_norm_f32(dim: usize, eps: f64, vb: Loader) -> Result<LayerNormF32> {
    Ok(LayerNormF32::new(vb.get_f32(dim, "weight")?, vb.get_f32(dim, "bias")?, eps))
}

/// A tensor needed whole in the compute dtype (position tables, class token, small biases).
pub fn get_compute<S: Into<candle_core::Shape>>(vb: &Loader, shape: S, name: &str) -> Result<Tensor> {
    vb.get(shape, name)?.to_dtype(vb.compute_dtype())
}

/// `nn.Embedding` whose table stays in storage dtype; looked-up rows come out in compute dtype.
#[derive(Debug, Clone)]
pub struct Emb {
    rows: EmbRows,
    dim: usize,
    compute: DType,
}

/// Where an embedding's rows are read from.
#[derive(Debug, Clone)]
enum EmbRows {
    Table(Tensor),
    /// The packed weight of the LM head tied to this table (see [`Emb::tie_head`]).
    Head(Arc<Dense>),
}

impl Emb {
    pub fn load(count: usize, dim: usize, vb: Loader) -> Result<Self> {
        Ok(Self { rows: EmbRows::Table(vb.get((count, dim), "weight")?), dim, compute: vb.compute_dtype() })
    }

    /// An LM head tied to this table (`logits = h · tableᵀ + bias`, the same matrix, as
    /// checkpoints that omit the head's weight mean), and the table, keeping one copy of the
    /// matrix. On the fused CPU kernels the head packs the matrix and the lookups read it
    /// back from there, so the table itself is dropped (for OPT-2.7b, 257 MB of bf16);
    /// elsewhere both share the one tensor.
    pub fn tie_head(self, bias: Option<Tensor>, kernels: Kernels) -> Result<(Self, Lin)> {
        let EmbRows::Table(table) = &self.rows else {
            candle_core::bail!("this embedding is already tied to a head");
        };
        let head = Lin::new(table.clone(), bias, kernels)?;
        let emb = match &head.kind {
            LinKind::Cpu(dense) => Self { rows: EmbRows::Head(dense.clone()), ..self },
            LinKind::Stored { .. } => self,
        };
        Ok((emb, head))
    }

    pub fn compute_dtype(&self) -> DType {
        self.compute
    }
}

impl Module for Emb {
    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let mut out = ids.dims().to_vec();
        out.push(self.dim);
        let rows = match &self.rows {
            EmbRows::Table(table) => table.index_select(&ids.flatten_all()?, 0)?.to_dtype(self.compute)?,
            EmbRows::Head(dense) => {
                let ids = ids.flatten_all()?.to_dtype(DType::U32)?.to_vec1::<u32>()?;
                let mut rows = vec![0f32; ids.len() * self.dim];
                for (&id, row) in ids.iter().zip(rows.chunks_exact_mut(self.dim)) {
                    if id as usize >= dense.out_dim() {
                        candle_core::bail!("token id {id} is outside the vocabulary of {}", dense.out_dim());
                    }
                    dense.weight_row(id as usize, row);
                }
                Tensor::from_vec(rows, (ids.len(), self.dim), &Device::Cpu)?.to_dtype(self.compute)?
            }
        };
        rows.reshape(out)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Module, Tensor};
    use candle_nn::VarBuilder;

    use super::*;

    /// A tied embedding looks up the same rows as the table it came from, and its head gives
    /// the same logits as a head built on a copy of the table, in f32 and bf16, on the fused
    /// kernels (where the table is dropped) and on candle's.
    #[test]
    fn a_tied_embedding_and_head_match_the_untied_pair() {
        let (vocab, dim) = (37, 24);
        let table: Vec<f32> = (0..vocab * dim).map(|i| ((i * 7919) % 113) as f32 / 56.0 - 1.0).collect();
        let ids = Tensor::new(&[[3u32, 0, 36], [5, 5, 17]], &Device::Cpu).unwrap();
        let hidden = Tensor::from_vec((0..2 * dim).map(|i| (i % 11) as f32 / 10.0 - 0.5).collect::<Vec<_>>(), (2, dim), &Device::Cpu).unwrap();
        for dtype in [DType::F32, DType::BF16] {
            for kernels in [Kernels::Fused, Kernels::Candle] {
                let mut tensors = std::collections::HashMap::new();
                tensors.insert("weight".to_string(), Tensor::from_vec(table.clone(), (vocab, dim), &Device::Cpu).unwrap().to_dtype(dtype).unwrap());
                let vb = Loader::new(VarBuilder::from_tensors(tensors, dtype, &Device::Cpu), kernels);
                let untied = Emb::load(vocab, dim, vb.clone()).unwrap();
                let EmbRows::Table(weight) = &untied.rows else { panic!("a loaded embedding has its table") };
                let untied_head = Lin::new(weight.clone(), None, kernels).unwrap();
                let (tied, head) = Emb::load(vocab, dim, vb).unwrap().tie_head(None, kernels).unwrap();
                assert_eq!(matches!(tied.rows, EmbRows::Head(_)), kernels == Kernels::Fused, "{dtype:?} {kernels:?}: which rows");
                let rows = |e: &Emb| e.forward(&ids).unwrap().to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                assert_eq!(rows(&tied), rows(&untied), "{dtype:?} {kernels:?}: looked-up rows");
                let logits = |l: &Lin| l.forward(&hidden).unwrap().to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                assert_eq!(logits(&head), logits(&untied_head), "{dtype:?} {kernels:?}: logits");
                let outside = Tensor::new(&[vocab as u32], &Device::Cpu).unwrap();
                assert!(tied.forward(&outside).is_err(), "{dtype:?} {kernels:?}: an id outside the vocabulary");
            }
        }
    }
}
