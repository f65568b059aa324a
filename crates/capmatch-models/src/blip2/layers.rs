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
        let w = self.weight.to_dtype(self.compute)?;
        let x = x.to_dtype(self.compute)?;
        let dims = x.dims().to_vec();
        let in_dim = dims[dims.len() - 1];
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let y = x.reshape((rows, in_dim))?.matmul(&w.t()?)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out_dims = dims;
        *out_dims.last_mut().unwrap() = w.dim(0)?;
        y.reshape(out_dims)
    }
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
