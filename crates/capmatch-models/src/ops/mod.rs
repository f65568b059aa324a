//! CPU kernels for transformer layers, on plain row-major `f32` buffers. They know nothing
//! about models or checkpoints: the models' loaders hand them weights.
//!
//! Why not candle ops: on a small CPU the profile of CLIP through candle's tensor ops was
//! half gemm and half overhead — a fresh zeroed allocation per op (page faults), spin-waiting
//! in candle's elementwise thread barrier, `contiguous()` copies of the attention heads, and
//! for bf16 a widening of every weight matrix to f32 on every matmul (candle has no bf16 CPU
//! gemm). Here a [`CpuEncoderLayer`] keeps its weights packed once (QKV fused into one
//! matrix, the attention scale folded into Q), and a forward pass is a handful of matrix
//! products that add the bias and the residual in place (`dst = dst + x · wᵀ`), with layer
//! norm, softmax and the activation as single vectorised passes over rows, parallel with
//! rayon. Activations stay f32 between the products whatever the weights' dtype.
//!
//! - `dense`: the dense layer (`Dense`) on packed weights;
//! - `attention`: multi-head self-attention, per sequence over its own keys;
//! - `elementwise`: `exp`, `erf`, activations, softmax, layer norm;
//! - `encoder`: the pre-norm encoder layer built from them;
//! - `matmul`, `panels`, `tile`, `portable` and `x86/`: the products, their packed operands,
//!   the order tiles are walked in, and the microkernels (`portable` for any CPU; in `x86/`
//!   one file per instruction set: AVX2 FMA, AVX-512 FMA, AVX512_BF16).
//!
//! **Batch invariance.** Every kernel computes a row (one token of one sequence) from that
//! row's inputs alone, in an order that depends neither on how many rows there are nor on
//! where the row sits, and attention runs per sequence over that sequence's own keys. So an
//! input gives the same bits alone or in any batch. Tests check each kernel for it
//! (`dense`, `attention`) and the models end to end (`capmatch-core/tests/batch_invariance.rs`).

pub(crate) mod attention;
pub(crate) mod dense;
pub(crate) mod elementwise;
pub(crate) mod encoder;
pub(crate) mod matmul;
pub(crate) mod panels;
pub(crate) mod portable;
#[allow(unsafe_code)]
pub(crate) mod tile;
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
pub(crate) mod x86;

pub use attention::AttentionMask;
pub use dense::cpu_has_bf16_matmul;
pub(crate) use dense::Dense;
pub(crate) use elementwise::LayerNormF32;
pub use encoder::{CpuEncoder, CpuEncoderLayer, Scratch};
pub(crate) use encoder::EncoderLayerWeights;

/// Runs `f` with the widest vectors this CPU has for element-wise loops (`f` should be a
/// closure over `#[inline(always)]` code, so it is compiled for them).
#[inline(always)]
fn vectorised<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    return x86::with_avx512(f);
    #[cfg(not(target_arch = "x86_64"))]
    f()
}

#[cfg(test)]
pub(crate) mod tests {
    /// Deterministic pseudo-random values in [-1, 1).
    pub fn values(n: usize, seed: u32) -> Vec<f32> {
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
}
