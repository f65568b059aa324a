//! BLIP image captioning (`BlipForConditionalGeneration`, e.g. Salesforce/blip-image-captioning-base
//! and -large), following transformers 5.23's `modeling_blip.py` / `modeling_blip_text.py`.
//!
//! - [`BlipVisionModel`]: a ViT (conv patch embedding + class token + learned positions,
//!   pre-LN encoder layers with a fused `qkv`, `post_layernorm` on every token).
//! - [`BlipTextLMHeadModel`]: a BERT decoder (post-LN) whose layers run causal
//!   self-attention (KV-cached), cross-attention to the image tokens, and an MLP; the LM head
//!   is BERT's prediction head, its decoder weight tied to the word embeddings when the
//!   checkpoint omits it.
//! - [`BlipForConditionalGeneration`]: both, plus [`BlipCaptionDecoder`], the
//!   [`StepDecoder`] that `generation::generate` drives (the
//!   image keys/values of every cross-attention layer are computed once per image and
//!   reordered, never recomputed).
//!
//! Tensor names are the checkpoint's own (`vision_model.…`, `text_decoder.bert.…`,
//! `text_decoder.cls.…`).

use candle_core::{DType, Device, IndexOp, Module, Result, Tensor, D};
use candle_nn::LayerNorm;
use serde::Deserialize;

use crate::activation::HiddenAct;
use crate::generation::{StepDecoder, TokenIds};
use crate::clip::{cpu_layer, layer_shape, LayerShape};
use crate::layers::{dense, get_compute, layer_norm, Emb, Lin, Loader};
use crate::ops::{CpuEncoder, Dense};

/// An `int` or a `[height, width]` pair (BlipVisionConfig's `image_size` / `patch_size`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Size2 {
    Square(usize),
    Pair([usize; 2]),
}

impl Size2 {
    pub fn hw(&self) -> (usize, usize) {
        match *self {
            Self::Square(s) => (s, s),
            Self::Pair([h, w]) => (h, w),
        }
    }
}

fn d_vision_hidden() -> usize { 768 }
fn d_3072() -> usize { 3072 }
fn d_512() -> usize { 512 }
fn d_768() -> usize { 768 }
fn d_12() -> usize { 12 }
fn d_8() -> usize { 8 }
fn d_image_size() -> Size2 { Size2::Square(384) }
fn d_patch_size() -> Size2 { Size2::Square(16) }
fn d_gelu() -> HiddenAct { HiddenAct::Gelu }
fn d_eps_vision() -> f64 { 1e-5 }
fn d_eps_text() -> f64 { 1e-12 }
fn d_vocab() -> usize { 30524 }
fn d_true() -> bool { true }
fn d_bos() -> Option<u32> { Some(30522) }
fn d_eos() -> Option<TokenIds> { Some(TokenIds::One(2)) }
fn d_pad() -> Option<u32> { Some(0) }
fn d_sep() -> Option<u32> { Some(102) }

/// transformers' `BlipVisionConfig` (defaults are transformers' defaults).
#[derive(Debug, Clone, Deserialize)]
pub struct BlipVisionConfig {
    #[serde(default = "d_vision_hidden")]
    pub hidden_size: usize,
    #[serde(default = "d_3072")]
    pub intermediate_size: usize,
    #[serde(default = "d_512")]
    pub projection_dim: usize,
    #[serde(default = "d_12")]
    pub num_hidden_layers: usize,
    #[serde(default = "d_12")]
    pub num_attention_heads: usize,
    #[serde(default = "d_image_size")]
    pub image_size: Size2,
    #[serde(default = "d_patch_size")]
    pub patch_size: Size2,
    #[serde(default = "d_gelu")]
    pub hidden_act: HiddenAct,
    #[serde(default = "d_eps_vision")]
    pub layer_norm_eps: f64,
}

impl Default for BlipVisionConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("defaults")
    }
}

/// transformers' `BlipTextConfig` (defaults are transformers' defaults; note the default
/// `num_attention_heads` is 8, while the Salesforce checkpoints say 12).
#[derive(Debug, Clone, Deserialize)]
pub struct BlipTextConfig {
    #[serde(default = "d_vocab")]
    pub vocab_size: usize,
    #[serde(default = "d_768")]
    pub hidden_size: usize,
    /// Overwritten with the vision hidden size by [`BlipConfig`] (as transformers does).
    #[serde(default = "d_768")]
    pub encoder_hidden_size: usize,
    #[serde(default = "d_3072")]
    pub intermediate_size: usize,
    #[serde(default = "d_768")]
    pub projection_dim: usize,
    #[serde(default = "d_12")]
    pub num_hidden_layers: usize,
    #[serde(default = "d_8")]
    pub num_attention_heads: usize,
    #[serde(default = "d_512")]
    pub max_position_embeddings: usize,
    #[serde(default = "d_gelu")]
    pub hidden_act: HiddenAct,
    #[serde(default = "d_eps_text")]
    pub layer_norm_eps: f64,
    #[serde(default = "d_bos")]
    pub bos_token_id: Option<u32>,
    #[serde(default = "d_eos")]
    pub eos_token_id: Option<TokenIds>,
    #[serde(default = "d_pad")]
    pub pad_token_id: Option<u32>,
    #[serde(default = "d_sep")]
    pub sep_token_id: Option<u32>,
    #[serde(default = "d_true")]
    pub is_decoder: bool,
    #[serde(default = "d_true")]
    pub tie_word_embeddings: bool,
}

impl Default for BlipTextConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("defaults")
    }
}

/// transformers' `BlipConfig`: the checkpoint's `config.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct BlipConfig {
    #[serde(default)]
    pub architectures: Option<Vec<String>>,
    #[serde(default)]
    pub model_type: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub text_config: BlipTextConfig,
    #[serde(default, deserialize_with = "null_as_default")]
    pub vision_config: BlipVisionConfig,
    #[serde(default = "d_512")]
    pub projection_dim: usize,
    #[serde(default = "d_true")]
    pub tie_word_embeddings: bool,
}

fn null_as_default<'de, D, T>(d: D) -> std::result::Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

impl BlipConfig {
    /// Parses `config.json` and applies `BlipConfig.__post_init__`
    /// (`text_config.encoder_hidden_size = vision_config.hidden_size`).
    pub fn from_json(text: &str) -> serde_json::Result<Self> {
        let mut cfg: Self = serde_json::from_str(text)?;
        cfg.text_config.encoder_hidden_size = cfg.vision_config.hidden_size;
        Ok(cfg)
    }
}

/// `(b, t, heads*hd)` → `(b, heads, t, hd)`, contiguous.
fn split_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, t, c) = x.dims3()?;
    x.reshape((b, t, heads, c / heads))?.transpose(1, 2)?.contiguous()
}

/// `(b, heads, t, hd)` → `(b, t, heads*hd)`.
fn merge_heads(x: &Tensor) -> Result<Tensor> {
    let (b, h, t, d) = x.dims4()?;
    x.transpose(1, 2)?.contiguous()?.reshape((b, t, h * d))
}

/// softmax(q kᵀ · scale + mask) v, eager, as transformers computes it.
fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, mask: Option<&Tensor>) -> Result<Tensor> {
    // kᵀ as a strided view: gemm reads it in place (a copy here would transpose every
    // cross-attention's image keys at every decoding step).
    let scores = (q.matmul(&k.t()?)? * scale)?;
    let scores = match mask {
        Some(m) => scores.broadcast_add(&m.to_dtype(scores.dtype())?)?,
        None => scores,
    };
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
    probs.matmul(v)
}

// ---------------------------------------------------------------------------------------
// Vision
// ---------------------------------------------------------------------------------------

struct VisionLayer {
    qkv: Lin,
    projection: Lin,
    layer_norm1: LayerNorm,
    fc1: Lin,
    fc2: Lin,
    layer_norm2: LayerNorm,
    heads: usize,
    act: HiddenAct,
}

impl VisionLayer {
    fn load(cfg: &BlipVisionConfig, vb: Loader) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Self {
            qkv: Lin::load(h, 3 * h, true, vb.pp("self_attn.qkv"))?,
            projection: Lin::load(h, h, true, vb.pp("self_attn.projection"))?,
            layer_norm1: layer_norm(h, cfg.layer_norm_eps, vb.pp("layer_norm1"))?,
            fc1: Lin::load(h, cfg.intermediate_size, true, vb.pp("mlp.fc1"))?,
            fc2: Lin::load(cfg.intermediate_size, h, true, vb.pp("mlp.fc2"))?,
            layer_norm2: layer_norm(h, cfg.layer_norm_eps, vb.pp("layer_norm2"))?,
            heads: cfg.num_attention_heads,
            act: cfg.hidden_act,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, t, c) = xs.dims3()?;
        let hd = c / self.heads;
        let residual = xs;
        let h = self.layer_norm1.forward(xs)?;
        let qkv = self.qkv.forward(&h)?.reshape((b, t, 3, self.heads, hd))?.permute((2, 0, 3, 1, 4))?;
        let q = qkv.i(0)?.contiguous()?;
        let k = qkv.i(1)?.contiguous()?;
        let v = qkv.i(2)?.contiguous()?;
        let ctx = attention(&q, &k, &v, (hd as f64).powf(-0.5), None)?;
        let h = self.projection.forward(&merge_heads(&ctx)?)?;
        let xs = (h + residual)?;
        let residual = &xs;
        let h = self.layer_norm2.forward(&xs)?;
        let h = self.fc2.forward(&self.act.forward(&self.fc1.forward(&h)?)?)?;
        h + residual
    }
}

/// `BlipVisionModel`: pixels `(b, 3, H, W)` → `last_hidden_state` `(b, 1 + patches, hidden)`.
pub struct BlipVisionModel {
    class_embedding: Tensor,
    /// The patch `Conv2d` (kernel = stride = patch) as a linear map over flattened
    /// `(channel, row, column)` patches: `(hidden, 3·p·p)` weight and bias.
    patch_embedding: Lin,
    patch: usize,
    position_embedding: Tensor,
    encoder: VisionEncoder,
    post_layernorm: LayerNorm,
    config: BlipVisionConfig,
}

/// The encoder layers: the fused f32/bf16 kernels of [`crate::ops`] on the CPU, candle
/// ops elsewhere.
enum VisionEncoder {
    Candle(Vec<VisionLayer>),
    Cpu(CpuEncoder),
}

/// The `n` vision encoder layers of BLIP or BLIP-2 (`vb` at the tower's `encoder.layers`;
/// the two share their layout: CLIP's, but with a fused `self_attn.qkv`, whose bias BLIP-2
/// stores as `[q_bias, 0, v_bias]` or omits (`qkv_bias`), and the output projection named
/// `self_attn.projection`) for the fused CPU kernels, the attention scale folded into q.
pub(crate) fn load_cpu_vision_layers(vb: Loader, n: usize, s: LayerShape, qkv_bias: bool) -> Result<CpuEncoder> {
    let d = s.hidden;
    let scale = ((d / s.heads) as f64).powf(-0.5) as f32;
    let layer = |i: usize| {
        let (vb, attn) = (vb.pp(i), vb.pp(i).pp("self_attn"));
        let mut w = attn.pp("qkv").get_f32((3 * d, d), "weight")?;
        let mut b = if qkv_bias { attn.pp("qkv").get_f32(3 * d, "bias")? } else { vec![0.0; 3 * d] };
        w[..d * d].iter_mut().chain(&mut b[..d]).for_each(|v| *v *= scale);
        cpu_layer(&vb, s, Dense::from_f32(w, b, d, 3 * d, vb.dtype()), dense(d, d, attn.pp("projection"))?)
    };
    Ok(CpuEncoder::new((0..n).map(layer).collect::<Result<_>>()?))
}

/// The patch `Conv2d` of a ViT (kernel = stride = `p`, with bias) as a linear map over
/// flattened `(channel, row, column)` patches (`vb` at `patch_embedding`).
pub(crate) fn load_patch_embedding(hidden: usize, channels: usize, p: usize, vb: Loader) -> Result<Lin> {
    let weight = vb.get((hidden, channels, p, p), "weight")?.reshape((hidden, channels * p * p))?;
    Lin::new(weight, Some(vb.get(hidden, "bias")?), vb.kernels())
}

/// Pixels `(b, c, h, w)` as rows of flattened `p × p` patches, `(b, (h/p)·(w/p), c·p·p)`,
/// row-major over the grid, each in the conv weight's `(channel, row, column)` order.
pub(crate) fn patches(pixel_values: &Tensor, p: usize) -> Result<Tensor> {
    let (b, c, h, w) = pixel_values.dims4()?;
    let (gh, gw) = (h / p, w / p);
    pixel_values.reshape((b, c, gh, p, gw, p))?.permute((0, 2, 4, 1, 3, 5))?.contiguous()?.reshape((b, gh * gw, c * p * p))
}

impl BlipVisionModel {
    /// `vb` at `vision_model`.
    pub fn load<'a>(cfg: &BlipVisionConfig, vb: impl Into<Loader<'a>>) -> Result<Self> {
        let vb = vb.into();
        let h = cfg.hidden_size;
        let (ih, iw) = cfg.image_size.hw();
        let (ph, pw) = cfg.patch_size.hw();
        if ph != pw {
            candle_core::bail!("non-square patches ({ph}x{pw}) are not supported");
        }
        let num_positions = (ih / ph) * (iw / pw) + 1;
        let emb = vb.pp("embeddings");
        let encoder = if vb.fused() {
            VisionEncoder::Cpu(load_cpu_vision_layers(vb.pp("encoder.layers"), cfg.num_hidden_layers, layer_shape!(cfg), true)?)
        } else {
            let layer_vb = |i: usize| vb.pp(format!("encoder.layers.{i}"));
            VisionEncoder::Candle((0..cfg.num_hidden_layers).map(|i| VisionLayer::load(cfg, layer_vb(i))).collect::<Result<_>>()?)
        };
        Ok(Self {
            class_embedding: get_compute(&emb, (1, 1, h), "class_embedding")?,
            patch_embedding: load_patch_embedding(h, 3, ph, emb.pp("patch_embedding"))?,
            patch: ph,
            position_embedding: get_compute(&emb, (1, num_positions, h), "position_embedding")?,
            encoder,
            post_layernorm: layer_norm(h, cfg.layer_norm_eps, vb.pp("post_layernorm"))?,
            config: cfg.clone(),
        })
    }

    pub fn config(&self) -> &BlipVisionConfig {
        &self.config
    }

    /// The dtype activations compute in (pixels are converted to it): the weights' dtype,
    /// except bf16/f16 weights on the CPU, which compute in f32 (see [`crate::layers`]).
    pub fn dtype(&self) -> DType {
        self.class_embedding.dtype()
    }

    pub fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let (b, _, h, w) = pixel_values.dims4()?;
        let (ih, iw) = self.config.image_size.hw();
        if (h, w) != (ih, iw) {
            candle_core::bail!("pixel values are {h}x{w}, the model expects {ih}x{iw} (position interpolation is not supported)");
        }
        // Conv2d with kernel = stride = p, as a product over the unfolded patches (the CPU
        // conv2d of candle has no bf16 kernel, and folds the batch into its product's rows).
        let patch_embeds = self.patch_embedding.forward(&patches(&pixel_values.to_dtype(self.dtype())?, self.patch)?)?; // (b, n, hidden)
        let class = self.class_embedding.broadcast_as((b, 1, self.config.hidden_size))?;
        let mut xs = Tensor::cat(&[&class, &patch_embeds], 1)?.broadcast_add(&self.position_embedding)?;
        match &self.encoder {
            VisionEncoder::Candle(layers) => {
                for layer in layers {
                    xs = layer.forward(&xs)?;
                }
            }
            VisionEncoder::Cpu(encoder) => xs = encoder.forward(&xs)?,
        }
        self.post_layernorm.forward(&xs)
    }
}

// ---------------------------------------------------------------------------------------
// Text decoder
// ---------------------------------------------------------------------------------------

struct BertAttention {
    query: Lin,
    key: Lin,
    value: Lin,
    dense: Lin,
    layer_norm: LayerNorm,
    heads: usize,
}

impl BertAttention {
    fn load(cfg: &BlipTextConfig, kv_in: usize, vb: Loader) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Self {
            query: Lin::load(h, h, true, vb.pp("self.query"))?,
            key: Lin::load(kv_in, h, true, vb.pp("self.key"))?,
            value: Lin::load(kv_in, h, true, vb.pp("self.value"))?,
            dense: Lin::load(h, h, true, vb.pp("output.dense"))?,
            layer_norm: layer_norm(h, cfg.layer_norm_eps, vb.pp("output.LayerNorm"))?,
            heads: cfg.num_attention_heads,
        })
    }

    fn keys_values(&self, states: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok((
            split_heads(&self.key.forward(states)?, self.heads)?,
            split_heads(&self.value.forward(states)?, self.heads)?,
        ))
    }

    /// Attention over `(k, v)`, then the BERT output block (dense + residual + LayerNorm).
    fn forward(&self, xs: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let q = split_heads(&self.query.forward(xs)?, self.heads)?;
        let hd = q.dim(D::Minus1)?;
        let ctx = attention(&q, k, v, 1.0 / (hd as f64).sqrt(), mask)?;
        self.output(&ctx, xs)
    }

    /// Cross-attention of the rows to the keys/values of their images (unmasked).
    fn forward_images(&self, xs: &Tensor, k: &Tensor, v: &Tensor, rows: &RowImages) -> Result<Tensor> {
        let q = split_heads(&self.query.forward(xs)?, self.heads)?; // (rows, heads, n, hd)
        let (r, h, n, hd) = q.dims4()?;
        let scale = 1.0 / (hd as f64).sqrt();
        let ctx = match rows {
            RowImages::Identity => attention(&q, k, v, scale, None)?,
            RowImages::Gather(idx) => attention(&q, &k.index_select(idx, 0)?, &v.index_select(idx, 0)?, scale, None)?,
            // The `per` rows of an image become `per · n` queries of that image: (images,
            // heads, per · n, hd), one product per image and head over its shared keys.
            RowImages::Blocks(per) => {
                let images = r / per;
                let q = q.reshape((images, *per, h, n, hd))?.permute((0, 2, 1, 3, 4))?.contiguous()?.reshape((images, h, per * n, hd))?;
                let ctx = attention(&q, k, v, scale, None)?;
                ctx.reshape((images, h, *per, n, hd))?.permute((0, 2, 1, 3, 4))?.contiguous()?.reshape((r, h, n, hd))?
            }
        };
        self.output(&ctx, xs)
    }

    /// BERT's output block: dense, residual, LayerNorm.
    fn output(&self, ctx: &Tensor, xs: &Tensor) -> Result<Tensor> {
        let out = self.dense.forward(&merge_heads(ctx)?)?;
        self.layer_norm.forward(&(out + xs)?)
    }
}

struct TextLayer {
    attention: BertAttention,
    crossattention: BertAttention,
    intermediate: Lin,
    output: Lin,
    output_norm: LayerNorm,
    act: HiddenAct,
}

impl TextLayer {
    fn load(cfg: &BlipTextConfig, vb: Loader) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Self {
            attention: BertAttention::load(cfg, h, vb.pp("attention"))?,
            crossattention: BertAttention::load(cfg, cfg.encoder_hidden_size, vb.pp("crossattention"))?,
            intermediate: Lin::load(h, cfg.intermediate_size, true, vb.pp("intermediate.dense"))?,
            output: Lin::load(cfg.intermediate_size, h, true, vb.pp("output.dense"))?,
            output_norm: layer_norm(h, cfg.layer_norm_eps, vb.pp("output.LayerNorm"))?,
            act: cfg.hidden_act,
        })
    }
}

/// Per-layer decoder state for a set of rows (sequences or beams): the self-attention KV
/// cache, and the image keys/values of every cross-attention, kept once per *image*: the
/// beams of an image share them, so a beam reorder never copies them (for BLIP base at 4
/// images × 3 beams that copy was 0.5 GB per step).
#[derive(Clone)]
pub struct TextDecoderState {
    self_kv: Vec<Option<(Tensor, Tensor)>>,
    /// Per layer, `(images, heads, tokens, head_dim)`.
    cross_kv: Vec<(Tensor, Tensor)>,
    /// The image (row of `cross_kv`) each row attends to.
    row_image: Vec<u32>,
    past_len: usize,
}

/// How the rows map onto the images of the cross-attention keys/values.
enum RowImages {
    /// Row i is image i.
    Identity,
    /// Rows are image-major blocks of this many rows each (beam search).
    Blocks(usize),
    /// Anything else: the keys/values are gathered per row.
    Gather(Tensor),
}

impl TextDecoderState {
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.row_image.len()
    }

    /// New row `i` = old row `rows[i]` (duplicates allowed).
    pub fn reorder(&mut self, rows: &[u32]) -> Result<()> {
        let Some((k0, _)) = self.cross_kv.first() else { return Ok(()) };
        let idx = Tensor::from_slice(rows, rows.len(), k0.device())?;
        let sel = |t: &Tensor| t.index_select(&idx, 0);
        for kv in self.self_kv.iter_mut().flatten() {
            *kv = (sel(&kv.0)?, sel(&kv.1)?);
        }
        self.row_image = rows.iter().map(|&r| self.row_image[r as usize]).collect();
        Ok(())
    }

    fn row_images(&self) -> Result<RowImages> {
        let images = self.cross_kv.first().map_or(Ok(0), |(k, _)| k.dim(0))?;
        let rows = self.row_image.len();
        if images == 0 || !rows.is_multiple_of(images) {
            return self.gather();
        }
        let per = rows / images;
        if self.row_image.iter().enumerate().all(|(r, &i)| i as usize == r / per) {
            Ok(if per == 1 { RowImages::Identity } else { RowImages::Blocks(per) })
        } else {
            self.gather()
        }
    }

    fn gather(&self) -> Result<RowImages> {
        let device = self.cross_kv.first().map_or(Device::Cpu, |(k, _)| k.device().clone());
        Ok(RowImages::Gather(Tensor::from_slice(&self.row_image, self.row_image.len(), &device)?))
    }
}

/// `BlipTextLMHeadModel`: the BERT decoder + LM head (`text_decoder.*`).
pub struct BlipTextLMHeadModel {
    word_embeddings: Emb,
    position_embeddings: Emb,
    embeddings_norm: LayerNorm,
    layers: Vec<TextLayer>,
    transform_dense: Lin,
    transform_norm: LayerNorm,
    decoder: Lin,
    config: BlipTextConfig,
}

impl BlipTextLMHeadModel {
    /// `vb` at `text_decoder`.
    pub fn load<'a>(cfg: &BlipTextConfig, vb: impl Into<Loader<'a>>) -> Result<Self> {
        let vb = vb.into();
        let h = cfg.hidden_size;
        let bert = vb.pp("bert");
        let emb = bert.pp("embeddings");
        let word_embeddings = Emb::load(cfg.vocab_size, h, emb.pp("word_embeddings"))?;
        let pred = vb.pp("cls.predictions");
        // Tied weights (`_tied_weights_keys`): saved checkpoints omit `decoder.weight` / `decoder.bias`.
        let bias = if pred.contains_tensor("bias") {
            pred.get(cfg.vocab_size, "bias")?
        } else {
            pred.get(cfg.vocab_size, "decoder.bias")?
        };
        let (word_embeddings, decoder) = if pred.contains_tensor("decoder.weight") {
            (word_embeddings, Lin::new(pred.get((cfg.vocab_size, h), "decoder.weight")?, Some(bias), vb.kernels())?)
        } else {
            word_embeddings.tie_head(Some(bias), vb.kernels())?
        };
        Ok(Self {
            word_embeddings,
            position_embeddings: Emb::load(cfg.max_position_embeddings, h, emb.pp("position_embeddings"))?,
            embeddings_norm: layer_norm(h, cfg.layer_norm_eps, emb.pp("LayerNorm"))?,
            layers: (0..cfg.num_hidden_layers)
                .map(|i| TextLayer::load(cfg, bert.pp(format!("encoder.layer.{i}"))))
                .collect::<Result<_>>()?,
            transform_dense: Lin::load(h, h, true, pred.pp("transform.dense"))?,
            transform_norm: layer_norm(h, cfg.layer_norm_eps, pred.pp("transform.LayerNorm"))?,
            decoder,
            config: cfg.clone(),
        })
    }

    pub fn config(&self) -> &BlipTextConfig {
        &self.config
    }

    /// A fresh state for `image_embeds` `(rows, tokens, encoder_hidden)`: the cross-attention
    /// keys/values of every layer, computed once here.
    pub fn start(&self, image_embeds: &Tensor) -> Result<TextDecoderState> {
        Ok(TextDecoderState {
            self_kv: vec![None; self.layers.len()],
            row_image: (0..image_embeds.dim(0)? as u32).collect(),
            cross_kv: self
                .layers
                .iter()
                .map(|l| l.crossattention.keys_values(image_embeds))
                .collect::<Result<_>>()?,
            past_len: 0,
        })
    }

    /// Runs `input_ids` `(rows, n)` after the cached positions; returns the last hidden
    /// states `(rows, n, hidden)` and extends the cache.
    pub fn forward_hidden(&self, input_ids: &Tensor, state: &mut TextDecoderState) -> Result<Tensor> {
        let (_, n) = input_ids.dims2()?;
        let past = state.past_len;
        if past + n > self.config.max_position_embeddings {
            candle_core::bail!("sequence of {} tokens exceeds max_position_embeddings {}", past + n, self.config.max_position_embeddings);
        }
        let device = input_ids.device();
        let positions = Tensor::arange(past as u32, (past + n) as u32, device)?;
        let xs = self.word_embeddings.forward(input_ids)?.broadcast_add(&self.position_embeddings.forward(&positions)?)?;
        let mut xs = self.embeddings_norm.forward(&xs)?;
        let dtype = xs.dtype();
        // Causal mask over [past | new]: new token i sees positions ≤ past + i.
        let mask = if n > 1 {
            let m: Vec<f32> = (0..n)
                .flat_map(|i| (0..past + n).map(move |j| if j <= past + i { 0.0 } else { f32::NEG_INFINITY }))
                .collect();
            Some(Tensor::from_vec(m, (1, 1, n, past + n), device)?.to_dtype(dtype)?)
        } else {
            None
        };
        let rows = state.row_images()?;
        for (i, layer) in self.layers.iter().enumerate() {
            let (k, v) = layer.attention.keys_values(&xs)?;
            let (k, v) = match &state.self_kv[i] {
                Some((pk, pv)) => (Tensor::cat(&[pk, &k], 2)?, Tensor::cat(&[pv, &v], 2)?),
                None => (k, v),
            };
            let h = layer.attention.forward(&xs, &k, &v, mask.as_ref())?;
            state.self_kv[i] = Some((k, v));
            let (ck, cv) = &state.cross_kv[i];
            let h = layer.crossattention.forward_images(&h, ck, cv, &rows)?;
            let inter = layer.act.forward(&layer.intermediate.forward(&h)?)?;
            xs = layer.output_norm.forward(&(layer.output.forward(&inter)? + &h)?)?;
        }
        state.past_len += n;
        Ok(xs)
    }

    /// The LM head: hidden states `(…, hidden)` → logits `(…, vocab)`.
    pub fn lm_head(&self, hidden: &Tensor) -> Result<Tensor> {
        let h = self.transform_dense.forward(hidden)?;
        let h = self.transform_norm.forward(&self.config.hidden_act.forward(&h)?)?;
        self.decoder.forward(&h)
    }

    /// Next-token logits `(rows, vocab)` (of the last position) for `input_ids` `(rows, n)`.
    pub fn next_logits(&self, input_ids: &Tensor, state: &mut TextDecoderState) -> Result<Tensor> {
        let hidden = self.forward_hidden(input_ids, state)?;
        let n = hidden.dim(1)?;
        self.lm_head(&hidden.i((.., n - 1, ..))?.contiguous()?)
    }
}

// ---------------------------------------------------------------------------------------
// Captioning model
// ---------------------------------------------------------------------------------------

/// `BlipForConditionalGeneration` (the captioning model).
pub struct BlipForConditionalGeneration {
    pub vision_model: BlipVisionModel,
    pub text_decoder: BlipTextLMHeadModel,
    config: BlipConfig,
}

impl BlipForConditionalGeneration {
    /// `vb` at the checkpoint root: a `VarBuilder` (the fused CPU kernels on the CPU) or a
    /// [`Loader`] that says which kernels to use.
    pub fn load<'a>(cfg: &BlipConfig, vb: impl Into<Loader<'a>>) -> Result<Self> {
        let vb = vb.into();
        let mut cfg = cfg.clone();
        cfg.text_config.encoder_hidden_size = cfg.vision_config.hidden_size;
        Ok(Self {
            vision_model: BlipVisionModel::load(&cfg.vision_config, vb.pp("vision_model"))?,
            text_decoder: BlipTextLMHeadModel::load(&cfg.text_config, vb.pp("text_decoder"))?,
            config: cfg,
        })
    }

    pub fn config(&self) -> &BlipConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        self.vision_model.class_embedding.device()
    }

    /// Vision `last_hidden_state` (the `image_embeds` the decoder attends to).
    pub fn image_embeds(&self, pixel_values: &Tensor) -> Result<Tensor> {
        self.vision_model.forward(pixel_values)
    }

    /// A [`StepDecoder`] over these images (one row per image).
    pub fn caption_decoder(&self, pixel_values: &Tensor) -> Result<BlipCaptionDecoder<'_>> {
        let embeds = self.image_embeds(pixel_values)?;
        Ok(BlipCaptionDecoder { model: &self.text_decoder, state: self.text_decoder.start(&embeds)? })
    }

    /// The `input_ids` that `BlipForConditionalGeneration.generate` gives the text decoder
    /// for a prompt tokenized with special tokens (`[CLS] … [SEP]`): `[CLS]` replaced by BOS,
    /// the final token dropped. `None` (no prompt) gives `[BOS]`.
    pub fn decoder_prompt(&self, prompt_ids: Option<&[u32]>) -> Result<Vec<u32>> {
        let bos = self.config.text_config.bos_token_id.ok_or_else(|| candle_core::Error::Msg("text_config.bos_token_id is not set".into()))?;
        match prompt_ids {
            None => Ok(vec![bos]),
            Some(ids) if ids.len() < 2 => candle_core::bail!("a tokenized prompt has at least [CLS] and [SEP]"),
            Some(ids) => {
                let mut v = ids[..ids.len() - 1].to_vec();
                v[0] = bos;
                Ok(v)
            }
        }
    }
}

/// The [`StepDecoder`] of BLIP captioning: the text decoder attending to fixed image tokens.
pub struct BlipCaptionDecoder<'a> {
    model: &'a BlipTextLMHeadModel,
    state: TextDecoderState,
}

impl StepDecoder for BlipCaptionDecoder<'_> {
    fn forward(&mut self, tokens: &Tensor) -> Result<Tensor> {
        self.model.next_logits(tokens, &mut self.state)
    }

    fn reorder(&mut self, rows: &[u32]) -> Result<()> {
        self.state.reorder(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_match_transformers() {
        let c = BlipConfig::from_json(r#"{"vision_config": {"hidden_size": 32, "image_size": [48, 64]}}"#).unwrap();
        assert_eq!(c.text_config.encoder_hidden_size, 32);
        assert_eq!(c.text_config.num_attention_heads, 8);
        assert_eq!(c.text_config.vocab_size, 30524);
        assert_eq!(c.text_config.bos_token_id, Some(30522));
        assert_eq!(c.text_config.sep_token_id, Some(102));
        assert_eq!(c.vision_config.image_size.hw(), (48, 64));
        assert_eq!(c.vision_config.patch_size.hw(), (16, 16));
        assert_eq!(c.vision_config.layer_norm_eps, 1e-5);
        assert_eq!(c.text_config.layer_norm_eps, 1e-12);
        let c = BlipConfig::from_json(r#"{"text_config": null, "vision_config": null}"#).unwrap();
        assert_eq!(c.vision_config.hidden_size, 768);
    }
}
