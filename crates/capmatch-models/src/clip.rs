//! CLIP (Radford et al. 2021) as transformers' `CLIPModel`, loaded from its checkpoints.
//!
//! Works for openai/clip-vit-{base-patch32,base-patch16,large-patch14,large-patch14-336} and
//! OpenCLIP models saved as `CLIPModel` (laion/CLIP-ViT-*): the architecture is read from
//! `config.json` (activation, layer-norm eps, sizes), tensor names are the checkpoint's own.
//!
//! The two entry points mirror transformers:
//! - [`ClipModel::get_image_features`] is `visual_projection(post_layernorm(vision(x)[:, 0]))`;
//! - [`ClipModel::get_text_features`] is `text_projection(final_layer_norm(text(ids))[eos])`.
//!
//! Both return un-normalised projections in the compute dtype (f32 on the CPU, see
//! [`crate::layers`]); L2-normalise them for cosine similarity. Attention scores, the mask
//! and the softmax are computed in f32 whatever the weights' dtype (as transformers' eager
//! attention does with `softmax(dtype=float32)`).
//!
//! On the fused CPU kernels ([`crate::layers::Kernels::Fused`], the default) a text or an
//! image gives the same bits alone or in any batch: every layer computes a row from that row
//! alone, and attention runs per sequence over its own tokens (see [`crate::ops`]).

pub use crate::TokenIds;
use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::LayerNorm;
use serde::Deserialize;

use crate::activation::HiddenAct;
use crate::layers::{dense, get_compute, layer_norm, layer_norm_f32, Emb, Lin, Loader};
use crate::ops::{AttentionMask, CpuEncoder, CpuEncoderLayer, Dense, EncoderLayerWeights};

// ------------------------------------------------------------------------------------ config

fn d_vocab() -> usize { 49408 }
fn d_text_hidden() -> usize { 512 }
fn d_text_intermediate() -> usize { 2048 }
fn d_projection() -> usize { 512 }
fn d_sub_projection() -> Option<usize> { Some(512) }
fn d_layers() -> usize { 12 }
fn d_text_heads() -> usize { 8 }
fn d_max_pos() -> usize { 77 }
fn d_eps() -> f64 { 1e-5 }
fn d_pad() -> Option<u32> { Some(1) }
fn d_bos() -> Option<u32> { Some(49406) }
fn d_eos() -> Option<TokenIds> { Some(TokenIds::One(49407)) }
fn d_vision_hidden() -> usize { 768 }
fn d_vision_intermediate() -> usize { 3072 }
fn d_vision_heads() -> usize { 12 }
fn d_channels() -> usize { 3 }
fn d_image_size() -> usize { 224 }
fn d_patch_size() -> usize { 32 }
fn d_logit_scale() -> f64 { 2.6592 }

/// transformers' `CLIPTextConfig`; every default is transformers' own (config.json files
/// written by `to_diff_dict` omit fields equal to them).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ClipTextConfig {
    #[serde(default = "d_vocab")]
    pub vocab_size: usize,
    #[serde(default = "d_text_hidden")]
    pub hidden_size: usize,
    #[serde(default = "d_text_intermediate")]
    pub intermediate_size: usize,
    /// Unused by `CLIPModel` (which takes the top-level `projection_dim`).
    #[serde(default = "d_sub_projection")]
    pub projection_dim: Option<usize>,
    #[serde(default = "d_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "d_text_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "d_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub hidden_act: HiddenAct,
    #[serde(default = "d_eps", deserialize_with = "eps_or_default")]
    pub layer_norm_eps: f64,
    #[serde(default = "d_pad")]
    pub pad_token_id: Option<u32>,
    #[serde(default = "d_bos")]
    pub bos_token_id: Option<u32>,
    #[serde(default = "d_eos")]
    pub eos_token_id: Option<TokenIds>,
}

/// transformers' `CLIPVisionConfig`, with its defaults.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ClipVisionConfig {
    #[serde(default = "d_vision_hidden")]
    pub hidden_size: usize,
    #[serde(default = "d_vision_intermediate")]
    pub intermediate_size: usize,
    #[serde(default = "d_sub_projection")]
    pub projection_dim: Option<usize>,
    #[serde(default = "d_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "d_vision_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "d_channels")]
    pub num_channels: usize,
    #[serde(default = "d_image_size")]
    pub image_size: usize,
    #[serde(default = "d_patch_size")]
    pub patch_size: usize,
    #[serde(default)]
    pub hidden_act: HiddenAct,
    #[serde(default = "d_eps", deserialize_with = "eps_or_default")]
    pub layer_norm_eps: f64,
}

fn eps_or_default<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or_else(d_eps))
}

impl Default for ClipTextConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("defaults")
    }
}

impl Default for ClipVisionConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("defaults")
    }
}

impl ClipVisionConfig {
    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }
    /// Patches + the class token.
    pub fn num_positions(&self) -> usize {
        self.grid() * self.grid() + 1
    }
}

/// transformers' `CLIPConfig`. Legacy `text_config_dict` / `vision_config_dict` (old hub
/// configs) override `text_config` / `vision_config` as transformers does.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "RawClipConfig")]
pub struct ClipConfig {
    pub text_config: ClipTextConfig,
    pub vision_config: ClipVisionConfig,
    /// Size of the shared embedding space (the top-level value, as `CLIPModel` uses).
    pub projection_dim: usize,
    pub logit_scale_init_value: f64,
}

#[derive(Deserialize)]
struct RawClipConfig {
    #[serde(default)]
    text_config: Option<serde_json::Value>,
    #[serde(default)]
    text_config_dict: Option<serde_json::Value>,
    #[serde(default)]
    vision_config: Option<serde_json::Value>,
    #[serde(default)]
    vision_config_dict: Option<serde_json::Value>,
    #[serde(default = "d_projection")]
    projection_dim: usize,
    #[serde(default = "d_logit_scale")]
    logit_scale_init_value: f64,
}

fn merge_sub(base: Option<serde_json::Value>, legacy: Option<serde_json::Value>) -> serde_json::Value {
    let mut out = match base {
        Some(serde_json::Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };
    if let Some(serde_json::Value::Object(m)) = legacy {
        out.extend(m);
    }
    serde_json::Value::Object(out)
}

impl TryFrom<RawClipConfig> for ClipConfig {
    type Error = String;
    fn try_from(raw: RawClipConfig) -> std::result::Result<Self, String> {
        let text_config: ClipTextConfig = serde_json::from_value(merge_sub(raw.text_config, raw.text_config_dict))
            .map_err(|e| format!("text_config: {e}"))?;
        let vision_config: ClipVisionConfig =
            serde_json::from_value(merge_sub(raw.vision_config, raw.vision_config_dict))
                .map_err(|e| format!("vision_config: {e}"))?;
        let cfg = Self {
            text_config,
            vision_config,
            projection_dim: raw.projection_dim,
            logit_scale_init_value: raw.logit_scale_init_value,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

impl Default for ClipConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("defaults")
    }
}

impl ClipConfig {
    pub fn from_json_str(text: &str) -> serde_json::Result<Self> {
        serde_json::from_str(text)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        let (t, v) = (&self.text_config, &self.vision_config);
        if t.num_attention_heads == 0 || t.hidden_size % t.num_attention_heads != 0 {
            return Err(format!("text hidden_size {} not divisible by {} heads", t.hidden_size, t.num_attention_heads));
        }
        if v.num_attention_heads == 0 || v.hidden_size % v.num_attention_heads != 0 {
            return Err(format!("vision hidden_size {} not divisible by {} heads", v.hidden_size, v.num_attention_heads));
        }
        if v.patch_size == 0 || v.image_size % v.patch_size != 0 {
            return Err(format!("image_size {} is not a multiple of patch_size {}", v.image_size, v.patch_size));
        }
        Ok(())
    }
}

// ------------------------------------------------------------------------------------ layers

/// Value added to masked attention scores on the candle path (finite, so that a fully masked
/// row stays finite; its exponential is exactly 0).
const MASKED: f32 = -1e30;

#[derive(Debug, Clone)]
struct Attention {
    q_proj: Lin,
    k_proj: Lin,
    v_proj: Lin,
    out_proj: Lin,
    num_heads: usize,
    head_dim: usize,
    scale: f64,
}

impl Attention {
    fn new(vb: Loader, hidden: usize, num_heads: usize) -> Result<Self> {
        let head_dim = hidden / num_heads;
        Ok(Self {
            q_proj: Lin::load(hidden, hidden, true, vb.pp("q_proj"))?,
            k_proj: Lin::load(hidden, hidden, true, vb.pp("k_proj"))?,
            v_proj: Lin::load(hidden, hidden, true, vb.pp("v_proj"))?,
            out_proj: Lin::load(hidden, hidden, true, vb.pp("out_proj"))?,
            num_heads,
            head_dim,
            scale: (head_dim as f64).powf(-0.5),
        })
    }

    /// `xs`: (B, N, D); `mask`: additive f32, broadcastable to (B, H, N, N).
    fn forward(&self, xs: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, n, d) = xs.dims3()?;
        let heads = |t: Tensor| -> Result<Tensor> {
            t.reshape((b, n, self.num_heads, self.head_dim))?.transpose(1, 2)?.contiguous()
        };
        let q = heads(self.q_proj.forward(xs)?)?;
        let k = heads(self.k_proj.forward(xs)?)?;
        let v = heads(self.v_proj.forward(xs)?)?;

        let scores = (q.matmul(&k.t()?)?.to_dtype(DType::F32)? * self.scale)?;
        let scores = match mask {
            Some(m) => scores.broadcast_add(m)?,
            None => scores,
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(v.dtype())?;
        let out = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, n, d))?;
        self.out_proj.forward(&out)
    }
}

#[derive(Debug, Clone)]
struct Mlp {
    fc1: Lin,
    fc2: Lin,
    act: HiddenAct,
}

impl Mlp {
    fn new(vb: Loader, hidden: usize, intermediate: usize, act: HiddenAct) -> Result<Self> {
        Ok(Self { fc1: Lin::load(hidden, intermediate, true, vb.pp("fc1"))?, fc2: Lin::load(intermediate, hidden, true, vb.pp("fc2"))?, act })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.fc2.forward(&self.act.forward(&self.fc1.forward(xs)?)?)
    }
}

/// The geometry of a tower's encoder layers (CLIP's, and the BLIP / BLIP-2 vision towers').
#[derive(Debug, Clone, Copy)]
pub(crate) struct LayerShape {
    pub hidden: usize,
    pub intermediate: usize,
    pub heads: usize,
    pub act: HiddenAct,
    pub eps: f64,
}

/// The [`LayerShape`] of a tower config (every one of them names these fields alike).
macro_rules! layer_shape {
    ($c:expr) => {
        $crate::clip::LayerShape {
            hidden: $c.hidden_size,
            intermediate: $c.intermediate_size,
            heads: $c.num_attention_heads,
            act: $c.hidden_act,
            eps: $c.layer_norm_eps,
        }
    };
}
pub(crate) use layer_shape;

/// Pre-norm transformer block on candle ops: `x + attn(ln1(x))`, then `x + mlp(ln2(x))`.
#[derive(Debug, Clone)]
struct EncoderLayer {
    self_attn: Attention,
    layer_norm1: LayerNorm,
    mlp: Mlp,
    layer_norm2: LayerNorm,
}

impl EncoderLayer {
    fn new(vb: Loader, s: LayerShape) -> Result<Self> {
        Ok(Self {
            self_attn: Attention::new(vb.pp("self_attn"), s.hidden, s.heads)?,
            layer_norm1: layer_norm(s.hidden, s.eps, vb.pp("layer_norm1"))?,
            mlp: Mlp::new(vb.pp("mlp"), s.hidden, s.intermediate, s.act)?,
            layer_norm2: layer_norm(s.hidden, s.eps, vb.pp("layer_norm2"))?,
        })
    }

    fn forward(&self, xs: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let h = self.self_attn.forward(&self.layer_norm1.forward(xs)?, mask)?;
        let xs = (xs + h)?;
        let h = self.mlp.forward(&self.layer_norm2.forward(&xs)?)?;
        xs + h
    }
}

/// `CLIPEncoderLayer`'s weights (`vb` at `encoder.layers.{i}`) for the fused CPU kernels: the
/// q, k and v projections stacked into one, the attention scale folded into q.
fn load_cpu_layer(vb: Loader, s: LayerShape) -> Result<CpuEncoderLayer> {
    let (d, attn) = (s.hidden, vb.pp("self_attn"));
    let scale = ((d / s.heads) as f64).powf(-0.5) as f32;
    let mut w = Vec::with_capacity(3 * d * d);
    let mut b = Vec::with_capacity(3 * d);
    for (name, factor) in [("q_proj", scale), ("k_proj", 1.0), ("v_proj", 1.0)] {
        let p = attn.pp(name);
        w.extend(p.get_f32((d, d), "weight")?.into_iter().map(|v| v * factor));
        b.extend(p.get_f32(d, "bias")?.into_iter().map(|v| v * factor));
    }
    let qkv = Dense::from_f32(w, b, d, 3 * d, vb.dtype());
    cpu_layer(&vb, s, qkv, dense(d, d, attn.pp("out_proj"))?)
}

/// A layer for the fused CPU kernels whose attention projections are loaded, the rest under
/// the names CLIP's layers and the BLIP / BLIP-2 vision layers share (`layer_norm1`,
/// `layer_norm2`, `mlp.fc1`, `mlp.fc2` under `vb`).
pub(crate) fn cpu_layer(vb: &Loader, s: LayerShape, qkv: Dense, out_proj: Dense) -> Result<CpuEncoderLayer> {
    let d = s.hidden;
    let weights = EncoderLayerWeights {
        qkv,
        out_proj,
        ln1: layer_norm_f32(d, s.eps, vb.pp("layer_norm1"))?,
        ln2: layer_norm_f32(d, s.eps, vb.pp("layer_norm2"))?,
        fc1: dense(d, s.intermediate, vb.pp("mlp.fc1"))?,
        fc2: dense(s.intermediate, d, vb.pp("mlp.fc2"))?,
    };
    Ok(CpuEncoderLayer::new(weights, s.act, s.heads))
}

/// The layers, on the fused CPU kernels of [`crate::ops`] (batch-invariant, several times
/// faster on the CPU; see that module for why) or on candle ops (other devices, or
/// [`Kernels::Candle`](crate::layers::Kernels::Candle)).
#[derive(Debug, Clone)]
enum Encoder {
    Candle(Vec<EncoderLayer>),
    Cpu(CpuEncoder),
}

impl Encoder {
    fn new(vb: Loader, n: usize, shape: LayerShape) -> Result<Self> {
        let vb = vb.pp("layers");
        Ok(if vb.fused() {
            Self::Cpu(CpuEncoder::new((0..n).map(|i| load_cpu_layer(vb.pp(i), shape)).collect::<Result<_>>()?))
        } else {
            Self::Candle((0..n).map(|i| EncoderLayer::new(vb.pp(i), shape)).collect::<Result<_>>()?)
        })
    }

    /// `xs`: (B, N, D) in the compute dtype; returns the final states at position
    /// `pooled[s]` of each sequence, (B, D) in the same dtype (all the towers use).
    fn forward(&self, xs: &Tensor, mask: Option<&AttentionMask>, pooled: &[usize]) -> Result<Tensor> {
        let (b, n, d) = xs.dims3()?;
        match self {
            Self::Candle(layers) => {
                let mask = mask.map(|m| causal_padding_mask(b, n, m, xs.device())).transpose()?;
                let mut xs = xs.clone();
                for layer in layers {
                    xs = layer.forward(&xs, mask.as_ref())?;
                }
                let index: Vec<u32> = pooled.iter().enumerate().map(|(s, &p)| (s * n + p) as u32).collect();
                xs.reshape((b * n, d))?.index_select(&Tensor::from_vec(index, b, xs.device())?, 0)
            }
            Self::Cpu(encoder) => encoder.forward_pooled(xs, mask, pooled),
        }
    }
}

// ------------------------------------------------------------------------------------ towers

/// `CLIPTextTransformer` (`text_model.*`): token + position embeddings, causal encoder,
/// final layer norm, pooled at the end-of-text token.
#[derive(Debug, Clone)]
pub struct ClipTextTransformer {
    token_embedding: Emb,
    position_embedding: Emb,
    encoder: Encoder,
    final_layer_norm: LayerNorm,
    max_position_embeddings: usize,
    eos_token_id: Option<TokenIds>,
}

impl ClipTextTransformer {
    pub fn new<'a>(vb: impl Into<Loader<'a>>, c: &ClipTextConfig) -> Result<Self> {
        let vb = vb.into();
        let emb = vb.pp("embeddings");
        Ok(Self {
            token_embedding: Emb::load(c.vocab_size, c.hidden_size, emb.pp("token_embedding"))?,
            position_embedding: Emb::load(c.max_position_embeddings, c.hidden_size, emb.pp("position_embedding"))?,
            encoder: Encoder::new(vb.pp("encoder"), c.num_hidden_layers, layer_shape!(c))?,
            final_layer_norm: layer_norm(c.hidden_size, c.layer_norm_eps, vb.pp("final_layer_norm"))?,
            max_position_embeddings: c.max_position_embeddings,
            eos_token_id: c.eos_token_id.clone(),
        })
    }

    /// The position pooled for each sequence, exactly as transformers picks it:
    /// legacy configs (`eos_token_id == 2`, e.g. openai/*) take the argmax of the ids (the
    /// end-of-text token has the largest id); others the first `eos_token_id` (0 if none).
    pub fn pooled_positions(&self, ids: &[Vec<u32>]) -> Vec<usize> {
        let argmax = |row: &Vec<u32>| {
            // torch.argmax returns the first maximal index.
            let mut best = 0;
            for (i, &v) in row.iter().enumerate() {
                if v > row[best] {
                    best = i;
                }
            }
            best
        };
        ids.iter()
            .map(|row| match &self.eos_token_id {
                Some(TokenIds::One(2)) | None => argmax(row),
                Some(eos) => row.iter().position(|&t| eos.contains(t)).unwrap_or(0),
            })
            .collect()
    }

    /// `input_ids`: (B, L) u32/i64; `attention_mask`: optional (B, L), 1 = token, 0 = padding.
    /// Returns the pooled (B, hidden) states after `final_layer_norm`.
    pub fn forward(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, len) = input_ids.dims2()?;
        if len > self.max_position_embeddings {
            candle_core::bail!("sequence of {len} tokens exceeds max_position_embeddings {}", self.max_position_embeddings);
        }
        let input_ids = input_ids.to_dtype(DType::U32)?;
        let keep: Vec<bool> = match attention_mask {
            Some(m) => {
                if m.dims2()? != (b, len) {
                    candle_core::bail!("attention_mask of shape {:?}, input_ids ({b}, {len})", m.dims());
                }
                m.to_dtype(DType::U32)?.flatten_all()?.to_vec1::<u32>()?.into_iter().map(|k| k != 0).collect()
            }
            None => vec![true; b * len],
        };
        let pooled = self.pooled_positions(&input_ids.to_vec2::<u32>()?);

        // Attention is causal, so positions after the last pooled one cannot change any pooled
        // state: drop them (padding of the longest captions) before running the encoder.
        let used = pooled.iter().max().map_or(len, |&p| p + 1);
        let input_ids = input_ids.narrow(1, 0, used)?;
        let keep: Vec<bool> = keep.chunks(len).flat_map(|row| row[..used].iter().copied()).collect();

        let positions = Tensor::arange(0u32, used as u32, input_ids.device())?;
        let xs = self
            .token_embedding
            .forward(&input_ids)?
            .broadcast_add(&self.position_embedding.forward(&positions)?)?;

        // Causal mask combined with the padding mask on keys, as `create_causal_mask` does.
        let mask = AttentionMask { causal: true, keep };
        let xs = self.encoder.forward(&xs, Some(&mask), &pooled)?;
        self.final_layer_norm.forward(&xs)
    }
}

/// Additive f32 mask (B, 1, L, L): 0 where query i may attend key j, for the candle path.
fn causal_padding_mask(b: usize, len: usize, mask: &AttentionMask, device: &candle_core::Device) -> Result<Tensor> {
    let mut data = Vec::with_capacity(b * len * len);
    for row in mask.keep.chunks(len) {
        for i in 0..len {
            for (j, &k) in row.iter().enumerate() {
                data.push(if (j <= i || !mask.causal) && k { 0f32 } else { MASKED });
            }
        }
    }
    Tensor::from_vec(data, (b, 1, len, len), device)
}

/// `CLIPVisionTransformer` (`vision_model.*`): patch embedding (a stride-`patch` convolution
/// without bias, computed as one product over flattened patches), class token, positions,
/// `pre_layrnorm`, encoder, and `post_layernorm` of the class token.
#[derive(Debug, Clone)]
pub struct ClipVisionTransformer {
    /// The conv weight flattened to (hidden, channels * patch * patch).
    patch_embedding: Lin,
    class_embedding: Tensor,
    position_embedding: Tensor,
    pre_layrnorm: LayerNorm,
    encoder: Encoder,
    post_layernorm: LayerNorm,
    num_channels: usize,
    image_size: usize,
    patch_size: usize,
    dtype: DType,
}

impl ClipVisionTransformer {
    pub fn new<'a>(vb: impl Into<Loader<'a>>, c: &ClipVisionConfig) -> Result<Self> {
        let vb = vb.into();
        let emb = vb.pp("embeddings");
        let patch_weight = emb
            .get((c.hidden_size, c.num_channels, c.patch_size, c.patch_size), "patch_embedding.weight")?
            .reshape((c.hidden_size, ()))?;
        Ok(Self {
            patch_embedding: Lin::new(patch_weight, None, vb.kernels())?,
            class_embedding: get_compute(&emb, c.hidden_size, "class_embedding")?,
            position_embedding: get_compute(&emb, (c.num_positions(), c.hidden_size), "position_embedding.weight")?,
            pre_layrnorm: layer_norm(c.hidden_size, c.layer_norm_eps, vb.pp("pre_layrnorm"))?,
            encoder: Encoder::new(vb.pp("encoder"), c.num_hidden_layers, layer_shape!(c))?,
            post_layernorm: layer_norm(c.hidden_size, c.layer_norm_eps, vb.pp("post_layernorm"))?,
            num_channels: c.num_channels,
            image_size: c.image_size,
            patch_size: c.patch_size,
            dtype: vb.compute_dtype(),
        })
    }

    /// `pixel_values`: (B, C, S, S) with S = `image_size`, any float dtype. Returns pooled
    /// (B, hidden) in the compute dtype.
    pub fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = pixel_values.dims4()?;
        if c != self.num_channels || h != self.image_size || w != self.image_size {
            candle_core::bail!(
                "pixel_values of shape {:?}, the model takes ({}, {s}, {s})",
                pixel_values.dims(),
                self.num_channels,
                s = self.image_size
            );
        }
        let (p, g) = (self.patch_size, self.image_size / self.patch_size);
        let x = pixel_values.to_dtype(self.dtype)?;
        // (B, C, g, p, g, p) -> (B, g, g, C, p, p) -> (B, g*g, C*p*p): row-major patches,
        // each flattened in the conv weight's (C, kh, kw) order.
        let patches = x.reshape((b, c, g, p, g, p))?.permute((0, 2, 4, 1, 3, 5))?.contiguous()?.reshape((b, g * g, c * p * p))?;
        let patch_embeds = self.patch_embedding.forward(&patches)?;
        let hidden = self.class_embedding.dim(0)?;
        let class = self.class_embedding.reshape((1, 1, hidden))?.broadcast_as((b, 1, hidden))?;
        let xs = Tensor::cat(&[&class, &patch_embeds], 1)?.broadcast_add(&self.position_embedding.unsqueeze(0)?)?;

        let xs = self.pre_layrnorm.forward(&xs)?;
        // Pooled at the class token.
        let xs = self.encoder.forward(&xs, None, &vec![0; b])?;
        self.post_layernorm.forward(&xs)
    }
}

// ------------------------------------------------------------------------------------ model

/// The text half of `CLIPModel`: `text_model.*` and `text_projection`. Built on its own so
/// that a process that only embeds texts (a text-search server) never reads the vision
/// weights, and the other way round.
#[derive(Debug, Clone)]
pub struct ClipTextTower {
    pub text_model: ClipTextTransformer,
    text_projection: Lin,
}

impl ClipTextTower {
    /// `vb` at the checkpoint's root, as for [`ClipModel::new`].
    pub fn new<'a>(vb: impl Into<Loader<'a>>, cfg: &ClipConfig) -> Result<Self> {
        let vb = vb.into();
        Ok(Self {
            text_model: ClipTextTransformer::new(vb.pp("text_model"), &cfg.text_config)?,
            text_projection: Lin::load(cfg.text_config.hidden_size, cfg.projection_dim, false, vb.pp("text_projection"))?,
        })
    }

    /// (B, L) ids -> (B, projection_dim), not normalised.
    pub fn get_text_features(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>) -> Result<Tensor> {
        self.text_projection.forward(&self.text_model.forward(input_ids, attention_mask)?)
    }
}

/// The vision half of `CLIPModel`: `vision_model.*` and `visual_projection`.
#[derive(Debug, Clone)]
pub struct ClipVisionTower {
    pub vision_model: ClipVisionTransformer,
    visual_projection: Lin,
}

impl ClipVisionTower {
    /// `vb` at the checkpoint's root, as for [`ClipModel::new`].
    pub fn new<'a>(vb: impl Into<Loader<'a>>, cfg: &ClipConfig) -> Result<Self> {
        let vb = vb.into();
        Ok(Self {
            vision_model: ClipVisionTransformer::new(vb.pp("vision_model"), &cfg.vision_config)?,
            visual_projection: Lin::load(cfg.vision_config.hidden_size, cfg.projection_dim, false, vb.pp("visual_projection"))?,
        })
    }

    /// (B, C, S, S) pixels (any float dtype) -> (B, projection_dim), not normalised.
    pub fn get_image_features(&self, pixel_values: &Tensor) -> Result<Tensor> {
        self.visual_projection.forward(&self.vision_model.forward(pixel_values)?)
    }
}

/// transformers' `CLIPModel`: both towers and their projections.
#[derive(Debug, Clone)]
pub struct ClipModel {
    pub text: ClipTextTower,
    pub vision: ClipVisionTower,
    projection_dim: usize,
}

impl ClipModel {
    /// `vb` at the checkpoint's root (tensors `text_model.*`, `vision_model.*`,
    /// `visual_projection.weight`, `text_projection.weight`): a `VarBuilder` (the fused CPU
    /// kernels on the CPU) or a [`Loader`] that says which kernels to use. The weights stay
    /// in `vb`'s dtype; activations are in [`crate::layers::compute_dtype`] of it.
    pub fn new<'a>(vb: impl Into<Loader<'a>>, cfg: &ClipConfig) -> Result<Self> {
        let vb = vb.into();
        Ok(Self {
            text: ClipTextTower::new(vb.clone(), cfg)?,
            vision: ClipVisionTower::new(vb, cfg)?,
            projection_dim: cfg.projection_dim,
        })
    }

    pub fn projection_dim(&self) -> usize {
        self.projection_dim
    }

    /// (B, C, S, S) pixels (any float dtype) -> (B, projection_dim), not normalised.
    pub fn get_image_features(&self, pixel_values: &Tensor) -> Result<Tensor> {
        self.vision.get_image_features(pixel_values)
    }

    /// (B, L) ids -> (B, projection_dim), not normalised.
    pub fn get_text_features(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>) -> Result<Tensor> {
        self.text.get_text_features(input_ids, attention_mask)
    }
}

/// Divides each row of a (B, D) tensor by its L2 norm.
pub fn l2_normalize(xs: &Tensor) -> Result<Tensor> {
    xs.broadcast_div(&xs.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// openai/clip-vit-base-patch32's config.json as published on the hub (abridged of the
    /// generation fields, which do not matter here).
    const OPENAI_B32: &str = r#"{
      "_name_or_path": "openai/clip-vit-base-patch32",
      "architectures": ["CLIPModel"],
      "initializer_factor": 1.0,
      "logit_scale_init_value": 2.6592,
      "model_type": "clip",
      "projection_dim": 512,
      "text_config": {
        "_name_or_path": "", "add_cross_attention": false, "architectures": null,
        "attention_dropout": 0.0, "bad_words_ids": null, "bos_token_id": 0,
        "chunk_size_feed_forward": 0, "dropout": 0.0, "eos_token_id": 2,
        "hidden_act": "quick_gelu", "hidden_size": 512, "initializer_factor": 1.0,
        "initializer_range": 0.02, "intermediate_size": 2048, "layer_norm_eps": 1e-05,
        "max_position_embeddings": 77, "model_type": "clip_text_model",
        "num_attention_heads": 8, "num_hidden_layers": 12, "pad_token_id": 1,
        "projection_dim": 512, "torch_dtype": null, "vocab_size": 49408
      },
      "text_config_dict": null,
      "torch_dtype": "float32",
      "transformers_version": null,
      "vision_config": {
        "attention_dropout": 0.0, "dropout": 0.0, "hidden_act": "quick_gelu",
        "hidden_size": 768, "image_size": 224, "initializer_factor": 1.0,
        "initializer_range": 0.02, "intermediate_size": 3072, "layer_norm_eps": 1e-05,
        "model_type": "clip_vision_model", "num_attention_heads": 12, "num_channels": 3,
        "num_hidden_layers": 12, "patch_size": 32, "projection_dim": 512
      },
      "vision_config_dict": null
    }"#;

    #[test]
    fn openai_base_patch32_config() {
        let c = ClipConfig::from_json_str(OPENAI_B32).unwrap();
        assert_eq!(c.projection_dim, 512);
        assert_eq!(c.text_config.hidden_size, 512);
        assert_eq!(c.text_config.eos_token_id, Some(TokenIds::One(2)));
        assert_eq!(c.text_config.hidden_act, HiddenAct::QuickGelu);
        assert_eq!(c.vision_config.hidden_size, 768);
        assert_eq!(c.vision_config.grid(), 7);
        assert_eq!(c.vision_config.num_positions(), 50);
        assert_eq!(c.vision_config.layer_norm_eps, 1e-5);
        // Those values are exactly transformers' defaults: an empty config is the same model.
        let d = ClipConfig::default();
        assert_eq!(d.vision_config, c.vision_config);
        assert_eq!(d.projection_dim, 512);
        assert_eq!(d.text_config.eos_token_id, Some(TokenIds::One(49407)));
        assert_eq!(d.text_config.bos_token_id, Some(49406));
        assert_eq!(d.text_config.pad_token_id, Some(1));
        assert_eq!(d.text_config.max_position_embeddings, 77);
        assert_eq!(d.text_config.vocab_size, 49408);
        assert_eq!((d.text_config.hidden_size, d.text_config.num_attention_heads), (512, 8));
    }

    #[test]
    fn large_patch14_336_and_openclip_style_configs() {
        // openai/clip-vit-large-patch14-336 (fields equal to defaults omitted, as diff dicts do).
        let c = ClipConfig::from_json_str(
            r#"{"projection_dim": 768,
                "text_config": {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
                                "projection_dim": 768, "eos_token_id": 2, "bos_token_id": 0},
                "vision_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16,
                                  "num_hidden_layers": 24, "patch_size": 14, "image_size": 336,
                                  "projection_dim": 768}}"#,
        )
        .unwrap();
        assert_eq!(c.vision_config.grid(), 24);
        assert_eq!(c.vision_config.num_positions(), 577);
        assert_eq!(c.text_config.num_hidden_layers, 12);
        // laion/CLIP-ViT-H-14 style: gelu, eos 49407, list-valued eos accepted.
        let c = ClipConfig::from_json_str(
            r#"{"projection_dim": 1024,
                "text_config": {"hidden_act": "gelu", "hidden_size": 1024, "num_attention_heads": 16,
                                "num_hidden_layers": 24, "eos_token_id": [49407]},
                "vision_config": {"hidden_act": "gelu", "hidden_size": 1280, "num_attention_heads": 16,
                                  "num_hidden_layers": 32, "patch_size": 14, "layer_norm_eps": null}}"#,
        )
        .unwrap();
        assert_eq!(c.text_config.hidden_act, HiddenAct::Gelu);
        assert_eq!(c.vision_config.layer_norm_eps, 1e-5);
        assert!(c.text_config.eos_token_id.as_ref().unwrap().contains(49407));
        assert_eq!(serde_json::from_str::<HiddenAct>("\"gelu_pytorch_tanh\"").unwrap(), HiddenAct::GeluTanh);
        assert!(ClipConfig::from_json_str(r#"{"vision_config": {"image_size": 100, "patch_size": 32}}"#).is_err());
    }

    #[test]
    fn legacy_config_dicts_override() {
        let c = ClipConfig::from_json_str(
            r#"{"text_config": {"hidden_size": 64, "num_attention_heads": 4},
                "text_config_dict": {"hidden_size": 32},
                "vision_config": null, "vision_config_dict": {"patch_size": 16}}"#,
        )
        .unwrap();
        assert_eq!((c.text_config.hidden_size, c.text_config.num_attention_heads), (32, 4));
        assert_eq!(c.vision_config.patch_size, 16);
    }

    #[test]
    fn pooling_follows_transformers() {
        let vb = candle_nn::VarBuilder::zeros(DType::F32, &candle_core::Device::Cpu);
        let small = |eos: &str| -> ClipTextTransformer {
            let c: ClipTextConfig = serde_json::from_str(&format!(
                r#"{{"hidden_size": 8, "num_attention_heads": 2, "num_hidden_layers": 1, "vocab_size": 50000, "eos_token_id": {eos}}}"#
            ))
            .unwrap();
            ClipTextTransformer::new(vb.clone(), &c).unwrap()
        };
        let ids = vec![vec![49406, 320, 49407, 49407], vec![49406, 7, 9, 5]];
        // Legacy: argmax (first maximum) whatever the tokens are.
        assert_eq!(small("2").pooled_positions(&ids), vec![2, 0]);
        assert_eq!(small("2").pooled_positions(&[vec![3, 9, 9, 1]]), vec![1]);
        // New style: first eos; none -> 0.
        assert_eq!(small("49407").pooled_positions(&ids), vec![2, 0]);
        assert_eq!(small("9").pooled_positions(&ids), vec![0, 2]);
    }
}
