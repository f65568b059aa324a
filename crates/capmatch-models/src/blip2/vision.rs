//! `Blip2VisionModel`: EVA ViT-g/14 as BLIP-2 uses it (pre-LN encoder layers, a fused `qkv`
//! projection whose bias is `[q_bias, 0, v_bias]`, a post-layernorm on every position).

use candle_core::{Module, Result, Tensor};
use candle_nn::LayerNorm;
use serde::Deserialize;

use super::{attention, merge_heads};
use crate::activation::HiddenAct;
use crate::blip::{load_cpu_vision_layers, load_patch_embedding, patches};
use crate::clip::layer_shape;
use crate::layers::{get_compute, layer_norm, Lin, Loader};
use crate::ops::CpuEncoder;

/// `Blip2VisionConfig`; defaults are transformers' (EVA ViT-g/14 at 224 px).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Blip2VisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub hidden_act: HiddenAct,
    pub layer_norm_eps: f64,
    pub qkv_bias: bool,
}

impl Default for Blip2VisionConfig {
    fn default() -> Self {
        Self {
            hidden_size: 1408,
            intermediate_size: 6144,
            num_hidden_layers: 39,
            num_attention_heads: 16,
            image_size: 224,
            patch_size: 14,
            hidden_act: HiddenAct::Gelu,
            layer_norm_eps: 1e-6,
            qkv_bias: true,
        }
    }
}

struct VisionEmbeddings {
    class_embedding: Tensor,
    /// The patch `Conv2d` (kernel = stride = patch) as a product over flattened patches.
    patch_embedding: Lin,
    patch_size: usize,
    position_embedding: Tensor,
}

impl VisionEmbeddings {
    fn load(vb: Loader, c: &Blip2VisionConfig) -> Result<Self> {
        let num_positions = (c.image_size / c.patch_size).pow(2) + 1;
        Ok(Self {
            class_embedding: get_compute(&vb, (1, 1, c.hidden_size), "class_embedding")?,
            patch_embedding: load_patch_embedding(c.hidden_size, 3, c.patch_size, vb.pp("patch_embedding"))?,
            patch_size: c.patch_size,
            position_embedding: get_compute(&vb, (1, num_positions, c.hidden_size), "position_embedding")?,
        })
    }

    fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let b = pixel_values.dim(0)?;
        // As a product rather than candle's conv2d, which folds the batch into its rows.
        let patches = self.patch_embedding.forward(&patches(pixel_values, self.patch_size)?)?;
        let d = self.class_embedding.dim(2)?;
        let class = self.class_embedding.broadcast_as((b, 1, d))?;
        let embeddings = Tensor::cat(&[&class.contiguous()?, &patches.contiguous()?], 1)?;
        let n = embeddings.dim(1)?;
        if n > self.position_embedding.dim(1)? {
            candle_core::bail!(
                "{} patches do not fit the {} positions of the checkpoint (wrong image size)",
                n - 1,
                self.position_embedding.dim(1)? - 1
            );
        }
        embeddings.broadcast_add(&self.position_embedding.narrow(1, 0, n)?)
    }
}

struct VisionAttention {
    qkv: Lin,
    projection: Lin,
    heads: usize,
    scale: f64,
}

impl VisionAttention {
    fn load(vb: Loader, c: &Blip2VisionConfig) -> Result<Self> {
        let d = c.hidden_size;
        // The checkpoint stores the fused bias `cat(q_bias, zeros, v_bias)` as `qkv.bias`.
        let qkv = Lin::load(d, 3 * d, c.qkv_bias, vb.pp("qkv"))?;
        Ok(Self {
            qkv,
            projection: Lin::load(d, d, true, vb.pp("projection"))?,
            heads: c.num_attention_heads,
            scale: ((d / c.num_attention_heads) as f64).powf(-0.5),
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        let qkv = self.qkv.forward(x)?.reshape((b, t, 3, self.heads, d / self.heads))?.permute((2, 0, 3, 1, 4))?;
        let q = qkv.get(0)?.contiguous()?;
        let k = qkv.get(1)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        let out = attention(&q, &k, &v, self.scale, None)?;
        self.projection.forward(&merge_heads(&out)?)
    }
}

struct VisionLayer {
    self_attn: VisionAttention,
    layer_norm1: LayerNorm,
    fc1: Lin,
    fc2: Lin,
    layer_norm2: LayerNorm,
    act: HiddenAct,
}

impl VisionLayer {
    fn load(vb: Loader, c: &Blip2VisionConfig) -> Result<Self> {
        let d = c.hidden_size;
        Ok(Self {
            self_attn: VisionAttention::load(vb.pp("self_attn"), c)?,
            layer_norm1: layer_norm(d, c.layer_norm_eps, vb.pp("layer_norm1"))?,
            fc1: Lin::load(d, c.intermediate_size, true, vb.pp("mlp.fc1"))?,
            fc2: Lin::load(c.intermediate_size, d, true, vb.pp("mlp.fc2"))?,
            layer_norm2: layer_norm(d, c.layer_norm_eps, vb.pp("layer_norm2"))?,
            act: c.hidden_act,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = (self.self_attn.forward(&self.layer_norm1.forward(x)?)? + x)?;
        let m = self.fc2.forward(&self.act.forward(&self.fc1.forward(&self.layer_norm2.forward(&h)?)?)?)?;
        m + h
    }
}

/// The encoder layers: the fused f32/bf16 kernels of [`crate::ops`] on the CPU, candle
/// ops elsewhere.
enum VisionEncoder {
    Candle(Vec<VisionLayer>),
    Cpu(CpuEncoder),
}

/// `Blip2VisionModel`.
pub struct Blip2VisionModel {
    embeddings: VisionEmbeddings,
    encoder: VisionEncoder,
    post_layernorm: LayerNorm,
}

impl Blip2VisionModel {
    /// `vb` at `vision_model`.
    pub fn load<'a>(vb: impl Into<Loader<'a>>, c: &Blip2VisionConfig) -> Result<Self> {
        let vb = vb.into();
        let encoder = if vb.fused() {
            VisionEncoder::Cpu(load_cpu_vision_layers(vb.pp("encoder.layers"), c.num_hidden_layers, layer_shape!(c), c.qkv_bias)?)
        } else {
            let layer_vb = |i: usize| vb.pp(format!("encoder.layers.{i}"));
            VisionEncoder::Candle((0..c.num_hidden_layers).map(|i| VisionLayer::load(layer_vb(i), c)).collect::<Result<_>>()?)
        };
        Ok(Self {
            embeddings: VisionEmbeddings::load(vb.pp("embeddings"), c)?,
            encoder,
            post_layernorm: layer_norm(c.hidden_size, c.layer_norm_eps, vb.pp("post_layernorm"))?,
        })
    }

    /// `last_hidden_state`: `(batch, 1 + patches, hidden)` from `(batch, 3, H, W)` pixels.
    pub fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let mut h = self.embeddings.forward(pixel_values)?;
        match &self.encoder {
            VisionEncoder::Candle(layers) => {
                for layer in layers {
                    h = layer.forward(&h)?;
                }
            }
            VisionEncoder::Cpu(encoder) => h = encoder.forward(&h)?,
        }
        self.post_layernorm.forward(&h)
    }
}
